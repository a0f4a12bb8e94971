"""benchmarks/vs_pytorch.py runs: a smoke run of the student step (~10 s; timings are not
tested, only that both sides ran and a ratio came out)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

pytest.importorskip("torch")

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_quick_student_step_prints_both_sides_and_a_ratio(tmp_path):
    """``--quick --only a``: the twin converted, parity checked, one interleaved round, a
    time for each side and their ratio (on the one real CPU device, not the tests' 8)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                                if not f.startswith("--xla_force_host_platform_device_count"))
    out = tmp_path / "vs.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "vs_pytorch.py"), "--quick",
                           "--only", "a", "--json", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "first step's loss" in proc.stdout and "round 1/1: student ur_jax" in proc.stdout
    summary = json.loads(out.read_text())
    student = summary["results"]["student"]
    assert set(summary["results"]) == {"student"}
    assert student["ms"]["ur_jax"] > 0 and student["ms"]["torch"] > 0
    assert student["speed_ratio"] == pytest.approx(student["ms"]["torch"] / student["ms"]["ur_jax"])
    assert summary["machine"]["torch_threads"] >= 1
