"""The run report: statistics checked against independent references, rendered from a real run."""

import base64
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
from mergekit_kinship.findings import kinship_gain_statistics, saturation
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
