"""The run report: statistics checked against independent references, rendered from a real run."""

import base64
import html
import io
import json
import math
import random
import re
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from test_card import finished_run, synthetic_summary

from mergekit_kinship.cli import main
from mergekit_kinship.findings import kinship_gain_statistics, kinship_gain_study, saturation
from mergekit_kinship.report import render_report
from mergekit_kinship.statistics import pearson, t_two_sided_p
from mergekit_kinship.summary import load_summary


@pytest.mark.parametrize(
    "t, df, p",
    [(2.228139, 10, 0.05), (12.706205, 1, 0.05), (2.085963, 20, 0.05), (3.169273, 10, 0.01),
     (1.0, 1, 0.5), (0.0, 7, 1.0), (1.959964, 10**6, 0.05)],
)
def test_t_distribution_matches_the_tables(t, df, p):
    assert t_two_sided_p(t, df) == pytest.approx(p, rel=1e-5, abs=1e-12)


def test_pearson_matches_numpy_and_scipy():
    rng = random.Random(3)
    for n in (3, 5, 12, 40):
        x = [rng.gauss(0, 1) for _ in range(n)]
        y = [0.4 * a + rng.gauss(0, 1) for a in x]
        r, p = pearson(x, y)
        assert r == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-12)
        try:
            from scipy import stats
        except ImportError:  # scipy is not a dependency; the t tables above still hold
            continue
        assert p == pytest.approx(stats.pearsonr(x, y).pvalue, rel=1e-8)
    assert pearson([1.0, 2.0], [3.0, 1.0]) is None  # too few pairs
    assert pearson([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]) is None  # no variance
    r, p = pearson([1.0, 2.0, 3.0], [2.0, 4.0, 6.0])
    assert r == pytest.approx(1.0) and p == 0.0


def embedded_images(document: str) -> list[np.ndarray]:
    import matplotlib.image

    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', document)
    return [matplotlib.image.imread(io.BytesIO(base64.b64decode(data)), format="png") for data in images]


def test_report_renders_from_a_finished_run(tmp_path_factory):
    run_dir = finished_run(tmp_path_factory)
    result = CliRunner().invoke(main, ["report", str(run_dir)])
    assert result.exit_code == 0, result.output
    document = (run_dir / "report.html").read_text()
    summary = load_summary(run_dir)

    # Self-contained: five real PNG figures, nothing fetched from elsewhere.
    images = embedded_images(document)
    assert len(images) == 5  # fitness, pool heatmap, top-k heatmap, family tree, kinship vs gain
    assert all(image.ndim == 3 and min(image.shape[:2]) > 150 for image in images)
    assert not re.search(r'(src|href)="(http|/|file:)', document)

    # Kinship against gain, as numpy computes it from the summary's merges.
    merges = [summary.models[m] for m in summary.child_ids()]
    kinship = [m.parents_kinship["pcc"] for m in merges]
    gains = [m.gain for m in merges]
    r_signed = np.corrcoef(kinship, gains)[0, 1]
    r_abs = np.corrcoef(kinship, np.abs(gains))[0, 1]
    stats = kinship_gain_statistics(summary)
    assert stats["n"] == len(merges) >= 6
    assert stats["gain"][0] == pytest.approx(r_signed) and stats["abs_gain"][0] == pytest.approx(r_abs)
    assert f"{r_signed:+.4f}" in document and f"{r_abs:+.4f}" in document
    assert f"r = {r_signed:+.3f}" in result.output
    # Sign conflict beside PCC: measured for every merge's parents, in the table and the study.
    conflict = [m.parents_kinship["sign_conflict"] for m in merges]
    assert all(0.0 < c < 0.5 for c in conflict)
    study = {s["metric"]: s for s in kinship_gain_study(summary)}
    assert list(study) == ["pcc", "sign_conflict"]
    assert study["sign_conflict"]["abs_gain"][0] == pytest.approx(np.corrcoef(conflict, np.abs(gains))[0, 1])
    assert "parents&#x27; kinship (pcc)</th><th>parents&#x27; kinship (sign_conflict)" in document
    assert f"{study['sign_conflict']['abs_gain'][0]:+.4f}" in document
    assert "sign_conflict vs |gain| over" in result.output
    best = max(study.values(), key=lambda s: abs(s["abs_gain"][0]))
    assert f"|gain| follows the parents&#x27; {best['metric']} most closely" in document

    # One row per generation, every model listed.
    generations = re.search(r"<th>top-k mutual PCC</th></tr></thead><tbody>(.*?)</tbody>", document).group(1)
    assert generations.count("<tr>") == len(summary.generations)
    for model_id in summary.models:
        assert f"<code>{model_id}</code>" in document


def test_saturation_warning_follows_the_threshold(tmp_path_factory):
    summary = load_summary(finished_run(tmp_path_factory))
    last = summary.generations[-1].top_k_mutual_pcc
    summary.saturation_threshold = last - 0.01
    assert saturation(summary)["saturated"]
    assert "<b>Saturation:</b> the final top-k's mutual PCC is" in render_report(summary)
    highest = max(g.top_k_mutual_pcc for g in summary.generations)
    summary.saturation_threshold = min(highest + 0.01, 1.0)
    assert not saturation(summary)["saturated"]
    document = render_report(summary)
    assert "<b>Saturation:</b>" not in document and "No saturation" in document
    # Without a threshold in the recipe, the paper's 0.9 is the yardstick.
    summary.saturation_threshold = None
    assert saturation(summary)["threshold"] == 0.9


def test_report_needs_only_the_summary(tmp_path_factory, tmp_path):
    run_dir = finished_run(tmp_path_factory)
    alone = tmp_path / "copy"
    alone.mkdir()
    shutil.copy(run_dir / "summary.json", alone / "summary.json")
    out = tmp_path / "elsewhere" / "r.html"
    result = CliRunner().invoke(main, ["report", str(alone), "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert payload["report"] == str(out) and out.is_file()
    assert math.isclose(payload["top_k_mutual_pcc"], load_summary(alone).generations[-1].top_k_mutual_pcc)
    assert list(payload["gain_study"]) == ["pcc", "sign_conflict"]
    assert payload["gain_study"]["pcc"]["abs_gain"] == payload["kinship_vs_abs_gain"]


def test_report_of_a_folder_without_a_run_is_a_user_error(tmp_path):
    result = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert result.exit_code == 2
    assert "summary.json not found" in result.output
    (tmp_path / "summary.json").write_text("{not json")
    result = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "not valid JSON" in result.output


def test_report_out_that_cannot_be_written_is_a_user_error(tmp_path):
    synthetic_summary(tmp_path)
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    result = CliRunner().invoke(main, ["report", str(tmp_path), "--out", str(blocked / "report.html")])
    assert result.exit_code == 2, result.output
    assert "Error: --out" in result.output and "cannot write the report" in result.output


# ---------------------------------------------------------------------------------- what a new user saw


def wide_summary(run_dir, n_children: int = 12, metric: str = "pcc", strategy: str = "kinship",
                 base_hub: str | None = None) -> dict:
    """A format-1 summary.json (written as evolve writes it today) of a run whose first
    generation has ``n_children`` children with hash ids, whose alphabetical order is not the
    run's, under foundation models with long names. Returns the dict."""
    import hashlib

    rng = random.Random(n_children)
    foundations = ["Llama-3.1-8B-Instruct-math-sft", "Llama-3.1-8B-code-dpo", "chat", "Llama-3.1-8B-tool-use"]
    models = {f: {"name": f, "path": f"/models/{f}", "kind": "foundation", "hub_id": None,
                  "generation": 0, "parents": [], "scores": {"t": 0.5 + 0.1 * i},
                  "fitness": 0.5 + 0.1 * i} for i, f in enumerate(foundations)}
    generations = []
    for generation, count in ((1, n_children), (2, 3)):
        pool = list(models)
        children = []
        for index in range(1, count + 1):
            model_id = "c-" + hashlib.sha256(f"{generation}-{index}".encode()).hexdigest()[:12]
            a, b = rng.sample(pool, 2)
            fitness = round(rng.uniform(0.4, 0.9), 4)
            models[model_id] = {
                "name": f"g{generation}-{index}", "path": None, "kind": "child", "hub_id": None,
                "generation": generation, "parents": [a, b], "exploration": index == count,
                "method": "slerp", "yaml": "merge_method: slerp\n", "parents_kinship": {metric: rng.uniform(0.1, 0.9)},
                "scores": {"t": fitness}, "fitness": fitness,
                "gain": fitness - (models[a]["fitness"] + models[b]["fitness"]) / 2}
            children.append(model_id)
        ranked = sorted(models, key=lambda m: -models[m]["fitness"])
        generations.append({"index": generation, "children": children, "top_k": ranked[:3],
                            "best": ranked[0], "best_fitness": models[ranked[0]]["fitness"],
                            "mean_fitness": 0.6, "top_k_mutual_pcc": 0.5})
    ids = list(models)
    matrix = [[1.0 if i == j else None for j in ids] for i in ids]
    for i in range(len(ids)):
        for j in range(i + 1, len(ids)):
            matrix[i][j] = matrix[j][i] = round(rng.uniform(0.0, 5.0 if metric == "ed" else 0.95), 3)
    summary = {"format": 1, "recipe": {}, "strategy": strategy, "top_k": 3, "metric": metric,
               "base": {"name": "base-8b", "path": "/models/base", "hub_id": base_hub},
               "evaluation": {"tasks": ["t"]}, "models": models, "generations": generations,
               "pool_kinship": {"names": ids, metric: matrix}, "saturation_threshold": None,
               "stopped": "max_generations", "merges": len(ids) - 4,
               "best": generations[-1]["best"], "failed": {}}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def test_report_title_says_what_the_run_is(tmp_path_factory, tmp_path):
    run_dir = finished_run(tmp_path_factory)
    out = tmp_path / "report.html"
    assert CliRunner().invoke(main, ["report", str(run_dir), "--out", str(out)]).exit_code == 0
    document = out.read_text()
    summary = load_summary(run_dir)
    title = (f"Kinship-guided merging of 3 fine-tunes of {summary.base.name} "
             f"(strategy kinship, k = {summary.top_k})")
    assert f"<h1>{title}</h1>" in document and f"<title>{title}</title>" in document
    assert f'<p class="subtitle">Run directory: {run_dir.resolve()}</p>' in document
    # Another strategy, a hub base, no base.
    wide_summary(tmp_path, strategy="greedy", base_hub="org/base-8b")
    greedy = load_summary(tmp_path)
    assert "<h1>Top-k greedy merging of 4 fine-tunes of org/base-8b (strategy greedy, k = 3)</h1>" \
        in render_report(greedy)
    greedy.base = None
    assert "<h1>Top-k greedy merging of 4 foundation models (strategy greedy, k = 3)</h1>" \
        in render_report(greedy)


def test_every_column_has_a_header(tmp_path_factory):
    summary = load_summary(finished_run(tmp_path_factory))
    document = render_report(summary)
    headers = re.findall(r"<th[^>]*>(.*?)</th>", document)
    assert headers and all(h.strip() for h in headers)
    table = document.split("<h2>All models</h2>")[1]
    header = re.findall(r"<th>(.*?)</th>", table.split("</thead>")[0])
    best_row = next(row for row in re.findall(r"<tr>(.*?)</tr>", table)
                    if f"<code>{summary.best}</code>" in row)
    cells = re.findall(r"<td[^>]*>(.*?)</td>", best_row)
    assert "best" in cells[header.index("notes")].split(", ")


def test_all_models_in_the_order_the_run_made_them(tmp_path):
    written = wide_summary(tmp_path, n_children=12)
    summary = load_summary(tmp_path)
    table = render_report(summary).split("<h2>All models</h2>")[1]
    names = [re.findall(r"<td[^>]*>(.*?)</td>", row)[1] for row in re.findall(r"<tr>(.*?)</tr>", table)[1:]]
    expected = [*[m for m in written["models"] if written["models"][m]["kind"] == "foundation"],
                *(f"g1-{i}" for i in range(1, 13)), "g2-1", "g2-2", "g2-3"]
    assert names == [html.escape(n) for n in expected]
    # The ids' own order would put g1-10 (or another) out of place: the test can fail.
    by_id = sorted((m for m in written["models"] if written["models"][m]["generation"] == 1))
    assert [written["models"][m]["name"] for m in by_id] != [f"g1-{i}" for i in range(1, 13)]


def _displayed_font_px(fig, page_width: int) -> tuple[float, int]:
    """(smallest text of ``fig`` in screen pixels once the report shows its PNG at
    ``max-width: 100%`` of ``page_width``, PNG width)."""
    from matplotlib.text import Text
    from PIL import Image

    from mergekit_kinship.report_figures import png_bytes

    image = Image.open(io.BytesIO(png_bytes(fig)))
    dpi = image.info["dpi"][0]  # what the PNG says it was drawn at
    scale = min(1.0, page_width / image.width)
    texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
    assert texts
    return min(t.get_fontsize() * dpi / 72 * scale for t in texts), image.width


def _page_width(document: str) -> int:
    return int(re.search(r"body\{[^}]*max-width:(\d+)px", document).group(1))


@pytest.mark.parametrize("children", [None, 12, 30])
def test_family_tree_labels_are_readable_on_the_page(children, tmp_path_factory, tmp_path):
    from mergekit_kinship.family_tree import family_tree_figure

    if children is None:
        summary = load_summary(finished_run(tmp_path_factory))
    else:
        wide_summary(tmp_path, n_children=children)
        summary = load_summary(tmp_path)
    page = _page_width(render_report(summary))
    fig = family_tree_figure(summary)
    smallest, width = _displayed_font_px(fig, page)
    assert smallest >= 10, (smallest, width)
    # No two model labels overlap (a wide generation is staggered, not squeezed).
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in fig.axes[0].texts if t.get_text()]
    assert len(boxes) == len(summary.models)
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not a.overlaps(b), (a, b)


def test_every_report_figure_is_readable_on_the_page(tmp_path_factory):
    from mergekit_kinship.report_figures import (fitness_figure, heatmap_figure,
                                                 kinship_gain_figure, pool_limits)

    summary = load_summary(finished_run(tmp_path_factory))
    page = _page_width(render_report(summary))
    figures = [fitness_figure(summary), kinship_gain_figure(summary),
               heatmap_figure(summary, summary.pool_kinship.names, "pool", pool_limits(summary)),
               heatmap_figure(summary, summary.final_top_k(), "top-k", pool_limits(summary))]
    for fig in figures:
        assert _displayed_font_px(fig, page)[0] >= 10


@pytest.mark.parametrize("metric, colour_map", [("pcc", "viridis"), ("ed", "viridis_r")])
def test_matrix_plot_and_report_draw_heatmaps_alike(metric, colour_map, tmp_path):
    from mergekit_kinship.heatmap import GREY, matrix_figure
    from mergekit_kinship.report_figures import heatmap_figure, pool_limits
    from mergekit_kinship.streaming_kinship import KinshipMatrix
    from matplotlib.colors import to_rgba

    wide_summary(tmp_path, n_children=5, metric=metric)
    summary = load_summary(tmp_path)
    pool = summary.pool_kinship
    matrix = KinshipMatrix(names=pool.names, base="base", metrics=[pool.metric],
                           values={pool.metric: pool.values}, n_params=0, n_tensors=0)
    cli = matrix_figure(matrix).axes[0].images[0]
    report = heatmap_figure(summary, pool.names, "pool", pool_limits(summary)).axes[0].images[0]
    off_diagonal = [v for i, row in enumerate(pool.values) for j, v in enumerate(row) if i != j]
    for image in (cli, report):
        assert image.get_cmap().name == colour_map
        assert image.get_clim() == (min(off_diagonal), max(off_diagonal))
    colours = [image.to_rgba(image.get_array()) for image in (cli, report)]
    assert np.array_equal(colours[0], colours[1])
    assert tuple(colours[0][0, 0]) == pytest.approx(to_rgba(GREY))  # the diagonal is grey
    # The final top-k is drawn on the pool's scale.
    top = heatmap_figure(summary, summary.final_top_k(), "top-k", pool_limits(summary))
    assert top.axes[0].images[0].get_clim() == report.get_clim()


def test_summary_with_the_papers_metric_names_reads_them_as_canonical(tmp_path):
    # Summaries of recipes written with cs/ed keep those names in parents_kinship.
    wide_summary(tmp_path, n_children=4, metric="cs")
    summary = load_summary(tmp_path)
    assert summary.metric == "cosine"
    stats = kinship_gain_statistics(summary)
    assert stats["metric"] == "cosine" and stats["n"] == len(summary.child_ids())
    document = render_report(summary)
    assert "parents&#x27; kinship (cosine)" in document
