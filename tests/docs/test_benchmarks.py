"""benchmarks/accelerator.sh and the helpers of benchmarks/common.py: the chips' peak FLOP/s
and MFU, the merge of the parts (a failed or killed part is recorded, not fatal), and a
``--quick`` run of every part on CPU (slow: minutes; the numbers are not tested, only that
each part ran and reported them)."""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
PARTS = ("distill_bf16", "distill_fp32", "mtl_bf16", "fewshot_bf16", "mtl_fp32", "fewshot_fp32")


def _common():
    spec = importlib.util.spec_from_file_location("benchmarks_common",
                                                  ROOT / "benchmarks" / "common.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


common = _common()


@pytest.mark.parametrize("kind,precision,peak", [
    ("NVIDIA H200", "bf16", 989e12),
    ("NVIDIA H200", "fp32", 494e12),  # TF32
    ("NVIDIA H100 80GB HBM3", "bf16", 989e12),
    ("NVIDIA H100 PCIe", "bf16", 756e12),
    ("NVIDIA A100-SXM4-80GB", "fp32", 156e12),
    ("TPU v4", "bf16", 275e12),
    ("TPU v5 lite", "bf16", 197e12),
    ("TPU v5", "bf16", 459e12),
])
def test_peak_of_a_known_chip(kind, precision, peak):
    assert common.peak_flops(kind, precision) == peak


def test_unknown_chip_has_no_peak_and_no_mfu():
    assert common.peak_flops("cpu", "bf16") is None
    assert common.peak_flops("Some Future Chip", "fp32") is None
    row = common.throughput(0.5, 64, "images", 1e12, common.peak_flops("cpu", "fp32"))
    assert row == {"seconds": 0.5, "images_per_s": 128.0, "flops_per_call": 1e12,
                   "flops_per_s": 2e12, "mfu": None}
    with pytest.raises(ValueError, match="precision"):
        common.peak_flops("NVIDIA H200", "fp16")


def test_mfu_is_achieved_over_peak():
    row = common.throughput(0.01, 896, "images", 2.0e12, common.peak_flops("NVIDIA H200", "bf16"))
    assert row["flops_per_s"] == pytest.approx(2.0e14)
    assert row["mfu"] == pytest.approx(2.0e14 / 989e12)
    assert common.throughput(1.0, 1, "episodes", None, 989e12)["mfu"] is None


def test_merge_records_failed_and_killed_parts(tmp_path):
    """One part ok, one killed by timeout after writing partial results, one that crashed
    before writing any JSON: all three are in the merged JSON with their status, and the
    log's end explains the crash."""
    row = {"seconds": 0.1, "images_per_s": 10.0, "flops_per_call": None, "flops_per_s": None,
           "mfu": None, "compile_s": 1.0}
    for name, complete in (("a", True), ("b", False)):
        (tmp_path / f"{name}.json").write_text(json.dumps(
            {"device": {"device_kind": "cpu"}, "complete": complete, "results": {"step": row}}))
    (tmp_path / "c.log").write_text("Traceback ...\nImportError: no module named grain\n")
    (tmp_path / "parts.tsv").write_text("a\t0\t5\t60\tpython a.py\nb\t124\t60\t60\tpython b.py\n"
                                        "c\t1\t2\t60\tpython c.py\n")
    merged = common.merge_parts(str(tmp_path / "out.json"), str(tmp_path), {"quick": 1})
    assert json.loads((tmp_path / "out.json").read_text()) == merged
    assert merged["device"] == {"device_kind": "cpu"} and merged["run"] == {"quick": 1}
    parts = merged["parts"]
    assert [parts[n]["status"] for n in "abc"] == ["ok", "timed out", "failed"]
    assert parts["b"]["result"]["complete"] is False and "error" not in parts["a"]
    assert parts["c"]["result"] is None and "no module named grain" in parts["c"]["error"]
    assert merged["summary"] == {
        f"{n}/step": {"seconds": 0.1, "per_s": 10.0, "unit": "images", "compile_s": 1.0,
                      "mfu": None} for n in "ab"}


@pytest.mark.slow
def test_accelerator_sh_quick_runs_every_part_on_cpu(tmp_path):
    """``bash benchmarks/accelerator.sh --quick OUT``: every part ok, with timings, compile
    times and FLOPs in the merged JSON, and the parts' logs beside it (on the one real CPU
    device, not the tests' 8)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHON=sys.executable)
    env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                                if not f.startswith("--xla_force_host_platform_device_count"))
    out = tmp_path / "accelerator.json"
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "accelerator.sh"), "--quick",
                           str(out)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    merged = json.loads(out.read_text())
    assert merged["device"]["device_kind"] == "cpu" and merged["device"]["jax"]
    assert merged["run"]["quick"] == 1 and merged["run"]["total_wall_s"] > 0
    assert tuple(merged["parts"]) == PARTS
    expected = {"distill": {"student", "teachers[vmap]", "distill[vmap]", "teachers[map]",
                            "distill[map]", "teachers[unstacked]", "distill[unstacked]"},
                "mtl": {"uniform", "graddrop", "pcgrad"}, "fewshot": {"ncc", "pa", "tsa"}}
    for name, part in merged["parts"].items():
        assert part["status"] == "ok", part.get("error")
        assert part["wall_s"] <= part["timeout_s"]
        result = part["result"]
        assert result["complete"] and result["args"]["precision"] == name.split("_")[1]
        assert set(result["results"]) == expected[name.split("_")[0]]
        for row in result["results"].values():
            assert row["seconds"] > 0 and row["flops_per_call"] > 0 and row["compile_s"] > 0
            assert row["mfu"] is None  # no known peak on a CPU
    assert len(merged["summary"]) == sum(len(expected[n.split("_")[0]]) for n in PARTS)
    assert "===== fewshot_fp32" in out.with_suffix(".log").read_text()
