#!/usr/bin/env bash
# GPU check: run `evolve` on the built-in family with merges and evaluation on CUDA (and with
# lm-eval's vllm backend where vllm installs), and append what was seen to BENCHMARKS.md.
#
#   bash benchmarks/gpu_check.sh            # on a machine with an NVIDIA GPU, after pip install -e .
#
# Nothing else in the project depends on a GPU; this script is how the GPU path is checked.
# It proves the device was really used: mergekit merges with cuda=True (MergeOptions), lm-eval's
# hf backend gets device=cuda, and the peak CUDA memory of the evolve process is reported.
# Work goes to benchmarks/_work/gpu (gitignored). Exit status is non-zero if the hf run fails.
set -uo pipefail
cd "$(dirname "$0")/.."
WORK=benchmarks/_work/gpu
mkdir -p "$WORK"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: torch sees no CUDA device; nothing to check" >&2
    exit 1
fi

# One Python driver per backend: builds (or reuses) the family, writes a recipe pointing at it,
# runs evolve in-process, prints one JSON line with what it saw.
run_backend() {
    local backend="$1"
    python - "$backend" "$WORK" <<'PY'
import json, shutil, sys, time
from pathlib import Path

import torch
import yaml

backend, work = sys.argv[1], Path(sys.argv[2]).resolve()
from mergekit_kinship.evolution import evolve
from mergekit_kinship.evaluation.runner import resolve_device
from mergekit_kinship.evaluation.tasks import validate_evaluation
from mergekit_kinship.recipe import parse_recipe
from mergekit_kinship.zoo import build_family, builtin_recipe

family = build_family(work / "family", progress=False)
data = builtin_recipe(family)  # the demo's recipe, with this family's paths
data["evaluation"]["backend"] = backend
data["evaluation"]["device"] = "cuda"
if backend == "vllm":
    # vLLM wants its own memory budget and dtype spelling; the tiny models need very little.
    data["evaluation"]["model_args"] = {"dtype": "float32", "gpu_memory_utilization": 0.2,
                                        "enforce_eager": True}
    data["evaluation"]["batch_size"] = "auto"
recipe = parse_recipe(data, Path.cwd(), f"builtin-family ({backend})")
validate_evaluation(recipe.evaluation)
run_dir = work / f"run-{backend}"
shutil.rmtree(run_dir, ignore_errors=True)
torch.cuda.reset_peak_memory_stats()
t = time.perf_counter()
summary = evolve(recipe, run_dir, progress=False).to_json()
seconds = time.perf_counter() - t
models = summary["models"]
best = models[summary["best"]]
foundation = max(m["fitness"] for m in models.values() if m["kind"] == "foundation")
print(json.dumps({
    "backend": backend, "device": resolve_device(recipe.evaluation),
    "gpu": torch.cuda.get_device_name(0), "seconds": round(seconds, 1),
    "peak_cuda_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1),
    "generations": len(summary["generations"]), "merges": summary["merges"],
    "stopped": summary["stopped"], "best": best["name"], "best_fitness": best["fitness"],
    "best_foundation_fitness": foundation,
    "best_beats_foundation": best["fitness"] > foundation}))
PY
}

versions=$(python -c "import importlib.metadata as m; print(', '.join(f'{p} {m.version(p)}' for p in ('torch','mergekit','lm_eval','transformers')))")
hf_json=$(run_backend hf 2> "$WORK/hf.log" | tail -n 1)
hf_status=$?
if python -c "import vllm" 2>/dev/null; then
    vllm_json=$(run_backend vllm 2> "$WORK/vllm.log" | tail -n 1) || vllm_json="failed: $(tail -n 3 "$WORK/vllm.log" | tr '\n' ' ')"
else
    vllm_json="skipped: vllm is not installed (pip install vllm)"
fi
[ -n "$hf_json" ] || hf_json="failed: $(tail -n 3 "$WORK/hf.log" | tr '\n' ' ')"

{
    echo
    echo "## GPU check ($(date -u +%Y-%m-%dT%H:%MZ))"
    echo
    echo "$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -n 1); $versions"
    echo
    echo "- evolve, hf backend (merges and evaluation on CUDA): \`$hf_json\`"
    echo "- evolve, vllm backend: \`$vllm_json\`"
} >> BENCHMARKS.md
echo "gpu_check: appended to BENCHMARKS.md" >&2
tail -n 8 BENCHMARKS.md
case "$hf_json" in failed*) exit 1 ;; esac
exit $hf_status
