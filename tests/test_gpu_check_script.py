"""benchmarks/gpu_check.py, the script a GPU session runs, keeps working: its steps run here on
the CPU (--device cpu --quick) and every check passes (kinship, the merge hook, evolve)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_gpu_check_steps_pass_on_the_cpu():
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"),
                             "--device", "cpu", "--quick"], capture_output=True, text=True,
                            timeout=900, cwd=REPO)
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-2000:])
    steps = {line["step"]: line for line in lines if "step" in line}
    assert set(steps) >= {"kinship", "merge", "evolve"}
    assert all(line["ok"] for line in steps.values())
    assert steps["kinship"]["metrics"] == ["pcc", "cosine", "euclidean", "sign_conflict"]
    assert steps["evolve"]["merges"] == 2
    assert lines[-1] == {"gpu_check": "passed", "device": "cpu"}
