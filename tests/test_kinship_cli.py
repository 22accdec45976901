"""``mergekit-kinship kinship`` / ``matrix`` on tiny models: tables, --json, --csv, --plot, stderr."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest
from click.testing import CliRunner

from mergekit_kinship.cli import main
from mergekit_kinship.metrics import DEFAULT_METRICS
from mergekit_kinship.streaming_kinship import kinship, kinship_matrix
from tiny_models import build_base, dense_kinship, make_child


@pytest.fixture(scope="module")
def fam(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    base = build_base(root / "base")
    fam = {"root": root, "base": base}
    for name, seed, shared in (("math", 1, 9), ("code", 2, 9), ("chat", 3, None)):
        fam[name] = make_child(base, root / name, seed=seed, shared_seed=shared)
    return fam


def invoke(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def test_kinship_table_and_json_agree_with_the_api(fam):
    api = kinship(fam["math"], fam["code"], fam["base"], metrics="all", progress=False)
    table = invoke("kinship", fam["math"], fam["code"], "--base", fam["base"], "-q", "-m", "all").stdout
    assert table.splitlines()[0] == (
        f"kinship of math and code (deltas from base): {api.n_params:,} parameters in {api.n_tensors} tensors"
    )
    for metric, fmt in (("pcc", "{:.4f}"), ("cosine", "{:.4f}"), ("euclidean", "{:.4g}"),
                        ("sign_conflict", "{:.4f}")):
        line = next(l for l in table.splitlines() if l.startswith(metric))
        assert line.split()[1] == fmt.format(api.values[metric])
    data = json.loads(invoke("kinship", fam["math"], fam["code"], "--base", fam["base"], "--json", "-q", "-m", "all").stdout)
    assert data == json.loads(json.dumps(api.to_dict()))
    for metric, ref in dense_kinship(fam["base"], fam["math"], fam["code"]).items():
        assert data["values"][metric] == pytest.approx(ref, rel=1e-9)


def test_kinship_breakdown_table(fam):
    out = invoke("kinship", fam["math"], fam["code"], "--base", fam["base"], "--breakdown", "layer", "-q",
                 "--metric", "pcc").stdout
    api = kinship(fam["math"], fam["code"], fam["base"], metrics="pcc", breakdown="layer", progress=False)
    lines = out.splitlines()
    head = next(i for i, line in enumerate(lines) if line.split()[:3] == ["layer", "params", "pcc"])
    rows = [re.split(r"\s{2,}", line.strip()) for line in lines[head + 1 :]]
    assert [r[0] for r in rows] == ["embeddings", "layer 0", "layer 1", "norm", "head"]
    for group, params, pcc in rows:
        assert params == f"{api.breakdown[group]['params']:,}" and pcc == f"{api.breakdown[group]['pcc']:.4f}"


def test_matrix_outputs_json_csv_and_a_heatmap(fam, tmp_path):
    models = [fam["math"], fam["code"], fam["chat"]]
    csv_path, png = tmp_path / "k.csv", tmp_path / "k.png"
    result = invoke("matrix", *models, "--base", fam["base"], "--json", "-q", "--csv", csv_path, "--plot", png)
    data = json.loads(result.stdout)
    api = kinship_matrix(models, fam["base"], progress=False)
    assert data == json.loads(json.dumps(api.to_dict()))
    assert data["names"] == ["math", "code", "chat"]
    with open(csv_path, newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["metric", "model", "math", "code", "chat"]
    assert len(rows) == 1 + len(DEFAULT_METRICS) * 3
    for metric, model, *cells in rows[1:]:
        i = data["names"].index(model)
        assert [float(c) for c in cells] == data["values"][metric][i]
    import matplotlib.image

    image = matplotlib.image.imread(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and image.shape[0] > 300 and image.shape[1] > 600
    assert f"wrote heatmap to {png}" in result.stderr


def test_matrix_table_shows_every_metric_and_the_mean(fam):
    out = invoke("matrix", fam["math"], fam["code"], fam["chat"], "--base", fam["base"], "-q", "--metric", "pcc,ed").stdout
    api = kinship_matrix([fam["math"], fam["code"], fam["chat"]], fam["base"], metrics="pcc,ed", progress=False)
    assert f"pcc  (mean over pairs {api.mean('pcc'):.4f})" in out
    assert "euclidean  (mean over pairs" in out and "cosine" not in out
    line = next(l for l in out.splitlines() if l.startswith("math"))
    assert line.split()[1:] == [f"{v:.4f}" for v in api.values["pcc"][0]]


def test_added_vocabulary_warning_goes_to_stderr(fam):
    bigger = make_child(fam["base"], fam["root"] / "bigger", seed=5, extra_vocab=3)
    result = invoke("kinship", fam["math"], bigger, "--base", fam["base"], "-q")
    warnings = [l for l in result.stderr.splitlines() if l.startswith("Warning: ")]
    assert len(warnings) == 1 and "leaving out 3 rows" in warnings[0]
    assert "Warning" not in result.stdout


def test_plot_needs_an_image_file_name(fam, tmp_path):
    result = CliRunner().invoke(main, ["matrix", str(fam["math"]), str(fam["code"]), "--base", str(fam["base"]),
                                       "--plot", str(tmp_path / "k.txt")])
    assert result.exit_code == 2 and "give a .png" in result.stderr


def test_cli_process_streams_progress_to_stderr_and_imports_only_what_it_uses(fam):
    """A real process: the table on stdout, the progress bar on stderr, and the kinship command
    never imports mergekit.merge or transformers (they cost seconds of start-up)."""
    script = textwrap.dedent(f"""
        import sys
        import mergekit_kinship.commands.kinship
        assert "torch" not in sys.modules, "the command module imported torch at import time"
        from mergekit_kinship.cli import main
        try:
            main(["kinship", {str(fam['math'])!r}, {str(fam['code'])!r}, "--base", {str(fam['base'])!r}])
        except SystemExit as exit:
            assert not exit.code, exit.code
        heavy = [m for m in ("mergekit.merge", "mergekit.io", "transformers", "lm_eval") if m in sys.modules]
        assert not heavy, heavy
    """)
    env = {k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("kinship of math and code")
    assert "kinship:" in proc.stderr and "B/s" in proc.stderr
    assert "B/s" not in proc.stdout


@pytest.mark.parametrize("command", ["kinship", "matrix"])
def test_help_names_every_metric_and_shows_each_pattern_option_itself(command):
    from mergekit_kinship.metrics import ALIASES, METRICS

    text = " ".join(CliRunner().invoke(main, [command, "--help"]).stdout.split())
    for name in (*METRICS, *ALIASES):
        assert re.search(rf"\b{name}\b", text), name
    from mergekit_kinship.commands.kinship import kinship_cmd, matrix_cmd

    options = {p.opts[0]: p.help for p in (kinship_cmd if command == "kinship" else matrix_cmd).params}
    for option in ("--include", "--exclude"):
        assert f"E.g. {option} '" in options[option], options[option]
        assert f"{'--exclude' if option == '--include' else '--include'}" not in options[option]
