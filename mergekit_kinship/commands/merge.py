"""``mergekit-kinship merge CONFIG OUT_DIR``: ``mergekit-yaml`` plus the merge's kinship.

The same config file, the same options (mergekit's merge options, spelled as ``mergekit-yaml``
spells them) and the same output folder, plus ``OUT_DIR/kinship.json``: the kinship of the input
models as deltas from their ancestor and each input's kinship with the output, computed from the
tensors the merge loads anyway (:mod:`mergekit_kinship.merge_kinship`).

mergekit's own option decorator (``mergekit.options.add_merge_options``) imports torch and
transformers, so the options are declared here from :data:`MERGE_OPTIONS` and ``--help`` stays
light; tests/test_merge_command.py checks the list against the installed ``MergeOptions``. An
option that is not given keeps mergekit's default.
"""

from __future__ import annotations

import contextlib
import json

import click

from mergekit_kinship.errors import UserError

# (MergeOptions field, click declarations, type, help). Booleans are --name/--no-name like
# mergekit-yaml's; type "size" takes mergekit's K/M/B suffixes.
MERGE_OPTIONS = (
    ("allow_crimes", ("--allow-crimes/--no-allow-crimes",), bool, "Allow mixing architectures."),
    ("unsafe_truncate_embeddings", ("--unsafe-truncate-embeddings/--no-unsafe-truncate-embeddings",),
     bool, "UNSAFE: cut embedding rows to the smallest vocabulary (use a tokenizer section)."),
    ("transformers_cache", ("--transformers-cache",), str, "Where downloaded models are stored."),
    ("lora_merge_cache", ("--lora-merge-cache",), str, "Where LoRA-merged models are stored."),
    ("lora_merge_dtype", ("--lora-merge-dtype",), str, "dtype used when applying LoRAs."),
    ("cuda", ("--cuda/--no-cuda",), bool, "Merge on the GPU (the kinship reduction too)."),
    ("device", ("--device",), str, "Device for the merge arithmetic (cpu, cuda, auto, ...)."),
    ("low_cpu_memory", ("--low-cpu-memory/--no-low-cpu-memory",), bool,
     "Keep results and intermediate values on the accelerator."),
    ("out_shard_size", ("--out-shard-size",), "size",
     "Parameters per output shard, e.g. 500M  [default: 5B]."),
    ("copy_tokenizer", ("--copy-tokenizer/--no-copy-tokenizer",), bool,
     "Copy a tokenizer to the output  [default: copy]."),
    ("clone_tensors", ("--clone-tensors/--no-clone-tensors",), bool,
     "Clone tensors before saving (a layer used twice)."),
    ("trust_remote_code", ("--trust-remote-code/--no-trust-remote-code",), bool,
     "Trust remote code from hub repos (danger)."),
    ("random_seed", ("--random-seed",), int, "Seed for randomized methods (dare_*, della)."),
    ("lazy_unpickle", ("--lazy-unpickle/--no-lazy-unpickle",), bool,
     "Experimental lazy unpickler for lower memory use."),
    ("write_model_card", ("--write-model-card/--no-write-model-card",), bool,
     "Write README.md with the details of the merge  [default: write]."),
    ("safe_serialization", ("--safe-serialization/--no-safe-serialization",), bool,
     "Save the output as safetensors  [default: yes]."),
    ("verbosity", ("-v", "verbosity"), "count", "Verbose logging (repeat for more)."),
    ("quiet", ("--quiet/--no-quiet", "-q"), bool, "No progress bars."),
    ("read_to_gpu", ("--read-to-gpu/--no-read-to-gpu",), bool, "Read weights straight to the GPU."),
    ("multi_gpu", ("--multi-gpu/--no-multi-gpu",), bool, "Use mergekit's multi-GPU executor."),
    ("num_threads", ("--num-threads", "-j"), int, "Threads for parallel CPU operations."),
    ("gpu_rich", ("--gpu-rich",), "flag", "Alias for --cuda --low-cpu-memory --read-to-gpu --multi-gpu."),
    ("async_write", ("--async-write/--no-async-write",), bool,
     "Write output shards asynchronously (faster, more memory)."),
    ("write_threads", ("--write-threads",), int, "Threads for asynchronous writes."),
)


def merge_options(fn):
    """mergekit's merge options as click options; each is None unless given."""
    for _name, decls, kind, text in reversed(MERGE_OPTIONS):
        extra = {}
        if kind == "count":
            extra = {"count": True}
        elif kind == "flag":
            extra = {"is_flag": True}
        elif kind in (int, str):
            extra = {"type": kind}
        elif kind == "size":
            extra = {"type": str, "metavar": "SIZE"}
        fn = click.option(*decls, default=None, help=text, **extra)(fn)
    return fn


@click.command("merge")
@click.argument("config_file", metavar="CONFIG")
@click.argument("out_path", metavar="OUT_DIR")
@click.option("--base", "-b", metavar="BASE",
              help="The inputs' shared ancestor (folder or hub id). Default: the config's "
                   "base_model when the method takes task vectors from it (ties, "
                   "task_arithmetic, dare_*, ...); slerp and linear need it.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the kinship as JSON (what OUT_DIR/kinship.json holds).")
@merge_options
def merge_cmd(config_file, out_path, base, as_json, **options):
    """Merge CONFIG into OUT_DIR exactly as mergekit-yaml does, and write OUT_DIR/kinship.json.

    The kinship of the merged models (pcc, cosine, euclidean and sign conflict of their deltas
    from BASE) and each model's kinship with the merged output are computed during the merge,
    from the tensors it loads anyway: no second read of the models. mergekit's model card
    (README.md) gets a kinship section, as `mergekit-kinship card OUT_DIR` writes it.
    """
    from mergekit_kinship.commands.common import no_progress_bars

    quiet = bool(options.get("quiet"))
    with no_progress_bars() if quiet else contextlib.nullcontext():
        result = run(config_file, out_path, base, options)
        card = None
        if options.get("write_model_card") is not False:  # mergekit's card, with our section
            from mergekit_kinship.merged_card import write_merged_card

            card = write_merged_card(out_path, base)  # reads the kinship.json just written
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=1))
        return
    click.echo(result.table())
    click.echo(f"\nwrote {out_path}, its kinship.json" + (f" and its model card {card}" if card else ""))


def run(config_file: str, out_path: str, base, options: dict):
    """Read the config and the options as mergekit-yaml does, then merge with kinship."""
    import yaml
    from pydantic import ValidationError

    from mergekit_kinship.merge_kinship import merge_with_kinship
    from mergekit_kinship.recipe import yaml_error_text

    try:
        with open(config_file, encoding="utf-8") as fh:
            source = fh.read()
    except OSError as err:
        raise UserError(f"{config_file}: cannot read the config ({err.strerror or err})") from None
    try:
        data = yaml.safe_load(source)
    except yaml.YAMLError as err:
        raise UserError(f"{config_file}: {yaml_error_text(err)}") from None
    from mergekit.config import MergeConfiguration
    from mergekit.options import MergeOptions

    try:
        config = MergeConfiguration.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "config"
        raise UserError(f"{config_file}: {where}: {first['msg']} (mergekit's config schema)") from None
    except (RuntimeError, ValueError, TypeError) as err:  # mergekit's own validators raise these
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UserError(f"{config_file}: {first} (mergekit's config schema)") from None
    given = {k: v for k, v in options.items() if v is not None}
    if "out_shard_size" in given:
        given["out_shard_size"] = _shard_size(given["out_shard_size"])
    try:
        merge_options = MergeOptions(**given)
    except ValidationError as err:
        raise UserError(f"merge options: {err.errors()[0]['msg']}") from None
    merge_options.apply_global_options()
    return merge_with_kinship(config, out_path, merge_options, config_source=source, ancestor=base)


def _shard_size(text: str) -> int:
    from mergekit.common import parse_kmb

    try:
        return parse_kmb(text)
    except ValueError:
        raise UserError(f"--out-shard-size {text}: give a number of parameters, e.g. 500M or 5B") from None
