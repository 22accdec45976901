"""The GPU path, checked: kinship, the merge hook and evolve on a CUDA device, against the CPU.

    python benchmarks/gpu_check.py --device cuda          # what benchmarks/gpu_check.sh runs
    python benchmarks/gpu_check.py --device cpu --quick   # the same steps on the CPU (a test runs it)

Each step prints one JSON line (and the script a final summary line):

1. ``kinship``: the built-in family's kinship matrix (every metric, sign conflict included) on
   the device, against the CPU's: every value equal to 1e-9 relative (float64 both ways);
2. ``merge``: ``mergekit-kinship merge`` (the kinship hook inside mergekit's merge) of two
   children with mergekit on the device (``--cuda``): its kinship.json against the CPU engine
   over the same inputs and the written output, to 1e-9;
3. ``evolve``: the built-in recipe, merges and lm-eval on the device (hf backend; vllm too when
   it is installed and the device is CUDA), peak CUDA memory, and whether the best child beats
   the best foundation model. ``--quick``: a budget of 2 merges and 8 items per task.

Exit status 1 when a step fails or a value differs. Work goes to benchmarks/_work/gpu (gitignored).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

WORK = Path(__file__).resolve().parent / "_work" / "gpu"


def _close(a, b) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def check_kinship(family, device: str) -> dict:
    from mergekit_kinship.streaming_kinship import kinship_matrix

    models = [str(p) for p in family.models.values()]
    started = time.perf_counter()
    here = kinship_matrix(models, str(family.base), metrics="all", device=device, progress=False)
    seconds = time.perf_counter() - started
    cpu = kinship_matrix(models, str(family.base), metrics="all", device="cpu", progress=False)
    worst = max((abs(a - b) / max(abs(b), 1e-12)
                 for m in cpu.metrics for ra, rb in zip(here.values[m], cpu.values[m])
                 for a, b in zip(ra, rb) if a is not None and b is not None), default=0.0)
    same = all(_close(a, b) for m in cpu.metrics
               for ra, rb in zip(here.values[m], cpu.values[m]) for a, b in zip(ra, rb))
    return {"step": "kinship", "device": device, "models": len(models), "seconds": round(seconds, 2),
            "metrics": list(cpu.metrics), "max_relative_difference": worst, "ok": same}


def check_merge(family, device: str) -> dict:
    import yaml
    from click.testing import CliRunner

    from mergekit_kinship.cli import main
    from mergekit_kinship.merge_kinship import read_merge_kinship
    from mergekit_kinship.streaming_kinship import kinship_matrix

    a, b = str(family.children["reverse"]), str(family.children["rotate"])
    config = WORK / "ties.yml"
    config.write_text(yaml.safe_dump({
        "merge_method": "ties", "base_model": str(family.base),
        "models": [{"model": m, "parameters": {"weight": 0.5, "density": 0.5}} for m in (a, b)],
        "dtype": "float32"}))
    out = WORK / f"merged-{device}"
    shutil.rmtree(out, ignore_errors=True)
    args = ["merge", str(config), str(out), "-q", "--json"] + (["--cuda"] if device != "cpu" else [])
    started = time.perf_counter()
    result = CliRunner().invoke(main, args)
    seconds = time.perf_counter() - started
    if result.exit_code != 0:
        return {"step": "merge", "device": device, "ok": False, "error": result.output[-500:]}
    hook = read_merge_kinship(out)
    engine = kinship_matrix([a, b, str(out)], str(family.base), metrics="all", progress=False)
    same = all(_close(hook.models_kinship[m][0][1], engine.values[m][0][1]) and
               all(_close(hook.output_kinship[m][i], engine.values[m][i][2]) for i in (0, 1))
               for m in hook.metrics)
    return {"step": "merge", "device": device, "seconds": round(seconds, 2),
            "pcc_inputs": hook.models_kinship["pcc"][0][1], "ok": same}


def check_evolve(family, device: str, backend: str, quick: bool) -> dict:
    import torch

    from mergekit_kinship.evaluation.runner import resolve_device
    from mergekit_kinship.evolution import evolve
    from mergekit_kinship.recipe import parse_recipe
    from mergekit_kinship.zoo import builtin_recipe

    data = builtin_recipe(family)  # the demo's recipe, with this family's paths
    data["evaluation"].update(backend=backend, device=device)
    if quick:
        data["evaluation"]["limit"] = 8
        data["stopping"].update(max_merges=2, max_generations=1)
    if backend == "vllm":  # vLLM wants its own memory budget; the tiny models need very little
        data["evaluation"]["model_args"] = {"dtype": "float32", "gpu_memory_utilization": 0.2,
                                            "enforce_eager": True}
        data["evaluation"]["batch_size"] = "auto"
    recipe = parse_recipe(data, Path.cwd(), f"built-in recipe ({backend}, {device})")
    run_dir = WORK / f"run-{backend}-{device}"
    shutil.rmtree(run_dir, ignore_errors=True)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    summary = evolve(recipe, run_dir, progress=False)
    seconds = time.perf_counter() - started
    best = summary.models[summary.best]
    foundation = summary.best_foundation_fitness()
    return {"step": "evolve", "backend": backend, "device": resolve_device(recipe.evaluation),
            "gpu": torch.cuda.get_device_name(0) if cuda else None,
            "peak_cuda_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1) if cuda else None,
            "seconds": round(seconds, 1), "generations": len(summary.generations),
            "merges": summary.merges, "stopped": summary.stopped, "best": best.name,
            "best_fitness": best.fitness, "best_foundation_fitness": foundation,
            "best_beats_foundation": best.fitness > foundation, "ok": True}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--quick", action="store_true", help="2 merges, 8 items per task")
    args = parser.parse_args(argv)
    import importlib.util

    import torch

    from mergekit_kinship.zoo import build_family

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: torch sees no CUDA device; nothing to check", file=sys.stderr)
        return 1
    WORK.mkdir(parents=True, exist_ok=True)
    family = build_family(WORK / "family", progress=False)
    steps = [lambda: check_kinship(family, args.device), lambda: check_merge(family, args.device),
             lambda: check_evolve(family, args.device, "hf", args.quick)]
    if args.device.startswith("cuda") and importlib.util.find_spec("vllm") is not None:
        steps.append(lambda: check_evolve(family, args.device, "vllm", args.quick))
    ok = True
    for step in steps:
        try:
            line = step()
        except Exception as err:  # report and go on: each step says what it saw
            line = {"ok": False, "error": f"{type(err).__name__}: {str(err)[:300]}"}
        ok &= bool(line.get("ok"))
        print(json.dumps(line), flush=True)
    print(json.dumps({"gpu_check": "passed" if ok else "FAILED", "device": args.device}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
