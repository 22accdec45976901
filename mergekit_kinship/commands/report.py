"""``mergekit-kinship report RUN_DIR``: one self-contained HTML report of an evolution run."""

from __future__ import annotations

import click


@click.command("report")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--out", "out_path", type=click.Path(dir_okay=False),
              help="Where to write the HTML file [default: RUN_DIR/report.html].")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object instead of text.")
def report_cmd(run_dir, out_path, as_json):
    """Write an HTML report of RUN_DIR: fitness per generation, kinship heatmaps of the pool and of
    the final top-k, the family tree, kinship (the run's metric, PCC and sign conflict) against
    merge gain (Pearson r, p) and a saturation warning. Images are embedded: the file stands
    alone."""
    import json

    from mergekit_kinship.errors import UserError
    from mergekit_kinship.findings import kinship_gain_statistics, kinship_gain_study, saturation
    from mergekit_kinship.report import write_report
    from mergekit_kinship.summary import load_summary

    try:
        written = write_report(run_dir, out_path)
    except OSError as err:
        where = f"--out {out_path}" if out_path else f"{run_dir}/report.html"
        raise UserError(f"{where}: cannot write the report ({err.strerror or err})") from None
    summary = load_summary(run_dir)
    stats = kinship_gain_statistics(summary)
    study = kinship_gain_study(summary)
    sat = saturation(summary)
    if as_json:
        click.echo(json.dumps({
            "report": str(written),
            "merges": stats["n"],
            "kinship_vs_gain": _correlation(stats, "gain"),
            "kinship_vs_abs_gain": _correlation(stats, "abs_gain"),
            # the run's metric, PCC and sign conflict, each against gain and |gain|
            "gain_study": {s["metric"]: {"merges": s["n"], **{
                key: _correlation(s, key) for key in ("gain", "abs_gain")}} for s in study},
            "saturated": sat["saturated"],
            "top_k_mutual_pcc": sat["last"],
        }))
        return
    click.echo(f"report written to {written}")
    for entry in study:
        for key, label in (("gain", "gain"), ("abs_gain", "|gain|")):
            if entry[key]:
                r, p = entry[key]
                ci = entry[f"{key}_ci"]
                interval = f", 95% CI [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else ""
                click.echo(f"{entry['metric']} vs {label} over {entry['n']} merges: r = {r:+.3f}"
                           f"{interval}, p = {p:.3g}")
    if sat["saturated"]:
        click.echo(f"warning: the top-k's mutual PCC {sat['last']:.3f} is above {sat['threshold']:.2f}: "
                   f"the family is saturated", err=True)


def _correlation(stats: dict, key: str):
    """{"r", "p", "ci"} of one correlation of the gain study (None without one)."""
    if not stats[key]:
        return None
    ci = stats[f"{key}_ci"]
    return {"r": stats[key][0], "p": stats[key][1], "ci": list(ci) if ci else None}
