#!/usr/bin/env bash
# GPU check: kinship, the merge hook and evolve on the CUDA device, against the CPU, and what was
# seen appended to BENCHMARKS.md (see benchmarks/gpu_check.py for the steps and what each asserts).
#
#   bash benchmarks/gpu_check.sh            # on a machine with an NVIDIA GPU, after pip install -e .
#
# Nothing else in the project depends on a GPU; this script is how the GPU path is checked.
# tests/test_gpu_check_script.py runs the same steps on the CPU (--device cpu --quick), so the
# script cannot rot unseen. Work goes to benchmarks/_work/gpu (gitignored).
set -uo pipefail
cd "$(dirname "$0")/.."
WORK=benchmarks/_work/gpu
mkdir -p "$WORK"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

versions=$(python -c "import importlib.metadata as m; print(', '.join(f'{p} {m.version(p)}' for p in ('torch','mergekit','lm_eval','transformers')))")
python benchmarks/gpu_check.py --device "${GPU_CHECK_DEVICE:-cuda}" > "$WORK/gpu_check.jsonl" 2> "$WORK/gpu_check.log"
status=$?
{
    echo
    echo "## GPU check ($(date -u +%Y-%m-%dT%H:%MZ))"
    echo
    echo "$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -n 1); $versions"
    echo
    sed 's/^/- `/; s/$/`/' "$WORK/gpu_check.jsonl"
    [ $status -eq 0 ] || echo "- exit status $status; last lines of the log: \`$(tail -n 3 "$WORK/gpu_check.log" | tr '\n' ' ')\`"
} >> BENCHMARKS.md
echo "gpu_check: appended to BENCHMARKS.md" >&2
tail -n 8 BENCHMARKS.md
exit $status
