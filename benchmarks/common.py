"""Helpers shared by the benchmark scripts (``distill_step.py``, ``fewshot_eval.py``,
``mtl_step.py``), and the merge step of ``accelerator.sh``.

* :func:`add_common_args`: the options every script has (``--precision``, ``--json``,
  ``--budget``, ``--compile-threads``).
* :func:`compile_all`: lower and compile the timed functions ahead of timing (optionally in
  threads: XLA compiles with the GIL released), recording each one's compile time and the
  FLOPs per call of XLA's cost analysis (:func:`xla_flops`).
* :func:`measure`: interleaved timing rounds (slow drifts of a shared machine hit every
  function alike), stopping early at a time budget.
* :data:`PEAK_FLOPS`, :func:`peak_flops`, :func:`throughput`: achieved FLOP/s and model
  FLOP utilisation (MFU = achieved / the chip's dense peak, ``None`` where the peak is not
  known, e.g. on CPU).
* :func:`dense_batch`: a random NYU-v2-shaped batch for the dense steps.
* :class:`CompileClock`: compilations and their seconds while active (jax.monitoring).
* :class:`Report`: the run's JSON (settings, device, results), rewritten after every result
  so that a run killed at its time limit still leaves what it measured.
* ``python benchmarks/common.py merge OUT.json PARTS_DIR``: ``accelerator.sh``'s merge of
  its parts' JSON files, exit codes, wall times and logs into one JSON (:func:`merge_parts`).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from ur_jax.models.precision import PRECISIONS

#: Dense (no sparsity) peak FLOP/s of one chip per precision, by ``device_kind``: the first
#: entry whose pattern occurs in the lowercased ``jax.Device.device_kind`` wins. ``'fp32'`` is
#: what float32 matrix work runs at under JAX's default matmul precision: TF32 tensor cores
#: on Ampere and Hopper GPUs (XLA's default there), bfloat16 passes of the MXU on TPUs (so
#: the bf16 peak). NVIDIA's datasheets give tensor-core figures "with sparsity": dense is half.
PEAK_FLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    # NVIDIA H100 Tensor Core GPU datasheet: H100 PCIe BF16 1,513 / TF32 756 TFLOPS (sparse).
    ("h100 pcie", {"bf16": 756e12, "fp32": 378e12}),
    # Same datasheet: H100 NVL BF16 1,671 / TF32 835 TFLOPS (sparse).
    ("h100 nvl", {"bf16": 835e12, "fp32": 417e12}),
    # Same datasheet: H100 SXM BF16 1,979 / TF32 989 TFLOPS (sparse); device_kind
    # 'NVIDIA H100 80GB HBM3'.
    ("h100", {"bf16": 989e12, "fp32": 494e12}),
    # NVIDIA H200 Tensor Core GPU datasheet: H200 NVL BF16 1,671 / TF32 835 TFLOPS (sparse).
    ("h200 nvl", {"bf16": 835e12, "fp32": 417e12}),
    # Same datasheet: H200 SXM BF16 1,979 / TF32 989 TFLOPS (sparse); device_kind 'NVIDIA H200'.
    ("h200", {"bf16": 989e12, "fp32": 494e12}),
    # NVIDIA A100 Tensor Core GPU datasheet: BF16 312, TF32 156 TFLOPS (dense), SXM and PCIe.
    ("a100", {"bf16": 312e12, "fp32": 156e12}),
    # Google Cloud TPU documentation, system architecture pages: v5e ('TPU v5 lite') 197,
    # v5p ('TPU v5') 459, v4 275 bf16 TFLOPS per chip.
    ("tpu v5 lite", {"bf16": 197e12, "fp32": 197e12}),
    ("tpu v5e", {"bf16": 197e12, "fp32": 197e12}),
    ("tpu v5", {"bf16": 459e12, "fp32": 459e12}),
    ("tpu v4", {"bf16": 275e12, "fp32": 275e12}),
)


def peak_flops(device_kind: str, precision: str) -> float | None:
    """The dense peak FLOP/s of one ``device_kind`` chip at ``precision`` ('fp32' or
    'bf16'), from :data:`PEAK_FLOPS`; ``None`` for a chip not in the table (CPUs).

    Raises:
      ValueError: an unknown precision.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}; expected one of {list(PRECISIONS)}.")
    kind = device_kind.lower()
    for pattern, peaks in PEAK_FLOPS:
        if pattern in kind:
            return peaks[precision]
    return None


def throughput(seconds: float, items: float, unit: str, flops: float | None,
               peak: float | None) -> dict[str, Any]:
    """The numbers of one timed function: ``seconds`` per call, ``{unit}_per_s`` (``items``
    per call), ``flops_per_call``, achieved ``flops_per_s`` and ``mfu`` (achieved / ``peak``;
    ``None`` when either is unknown)."""
    achieved = flops / seconds if flops else None
    return {"seconds": seconds, f"{unit}_per_s": items / seconds, "flops_per_call": flops,
            "flops_per_s": achieved,
            "mfu": achieved / peak if achieved is not None and peak else None}


def xla_flops(stage: Any) -> float | None:
    """FLOPs per call from XLA's cost analysis of a ``Lowered`` or ``Compiled`` stage
    (``jitted.lower(*args)[.compile()]``); ``None`` where the backend gives none.

    The program is the per-device one (SPMD), so compare it with one chip's peak. XLA
    counts a loop's body once (``lax.map``, ``fori_loop`` with a traced trip count):
    loops are under-counted.
    """
    cost = stage.cost_analysis()
    if isinstance(cost, Sequence):  # older JAX: one dict per module
        cost = cost[0] if cost else None
    flops = (cost or {}).get("flops")
    return float(flops) if flops and flops > 0 else None


# ----------------------------------------------------------------------------- command line


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """Adds ``--precision``, ``--json``, ``--budget`` and ``--compile-threads``."""
    parser.add_argument("--precision", choices=list(PRECISIONS), default="fp32",
                        help="computation dtype (ur_jax.models.precision): fp32, or bf16 with "
                             "float32 parameters, BatchNorm statistics and losses")
    parser.add_argument("--json", help="also write the results to this file (rewritten after "
                                       "every result)")
    parser.add_argument("--budget", type=float,
                        help="seconds since start after which timing stops early (compilation "
                             "is never cut short; at least one round or chunk is timed)")
    parser.add_argument("--compile-threads", type=int, default=1,
                        help="functions compiled at once (XLA compiles without the GIL)")


class Deadline:
    """``budget`` seconds from now (``None``: never)."""

    def __init__(self, budget: float | None) -> None:
        self.end = None if budget is None else time.perf_counter() + budget

    def left(self) -> float:
        """Seconds left (``inf`` without a budget; negative once passed)."""
        return float("inf") if self.end is None else self.end - time.perf_counter()


# ----------------------------------------------------------------------------- compile, time


class CompileClock:
    """While active, counts XLA compilations and sums the seconds of tracing, lowering and
    compiling that jax reports through :mod:`jax.monitoring`."""

    EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
              "/jax/core/compile/jaxpr_to_mlir_module_duration",
              "/jax/core/compile/backend_compile_duration")

    def __init__(self) -> None:
        self.count, self.seconds = 0, 0.0

    def _listen(self, event: str, duration: float, **kwargs: Any) -> None:
        del kwargs
        if event in self.EVENTS:
            self.seconds += duration
            self.count += event == self.EVENTS[-1]

    def __enter__(self) -> CompileClock:
        jax.monitoring.register_event_duration_secs_listener(self._listen)
        return self

    def __exit__(self, *exc: object) -> None:
        jax.monitoring.unregister_event_duration_listener(self._listen)


def compile_all(functions: Mapping[str, tuple[Any, tuple]], threads: int = 1,
                report: Report | None = None) -> dict[str, dict[str, Any]]:
    """Lowers and compiles ``{name: (jitted, args)}`` (``jitted`` has ``.lower``, as
    ``jax.jit`` and :func:`ur_jax.sharding.jit_data_parallel` functions do); later calls
    with arguments of the same shapes reuse the compiled executable from jax's cache.

    Returns ``{name: {'compile_s', 'xla_flops'}}``: seconds of lowering + compiling (with
    ``threads > 1`` they overlap, and each includes waiting for the others' CPU time) and
    :func:`xla_flops` of the compiled program. Each entry also goes to
    ``report.data['compiled']`` (written) as soon as it is known, and the whole phase's
    wall time to ``report.data['compile_wall_s']``.
    """
    done: dict[str, dict[str, Any]] = {}
    if report is not None:
        report.data["compiled"] = done

    def one(item):
        name, (fn, args) = item
        t0 = time.perf_counter()
        compiled = fn.lower(*args).compile()
        seconds = time.perf_counter() - t0
        print(f"compiled {name} in {seconds:.1f} s", flush=True)
        done[name] = {"compile_s": seconds, "xla_flops": xla_flops(compiled)}
        if report is not None:
            report.write()

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max(1, threads)) as pool:
        list(pool.map(one, functions.items()))
    if report is not None:
        report.data["compile_wall_s"] = time.perf_counter() - t0
        report.write()
    return {name: done[name] for name in functions}


def stateful(fn: Callable[..., Any], state: Any, *rest: Any) -> Callable[[], Any]:
    """A closure calling ``fn(state, *rest) -> (state, metrics)`` that carries the (donated)
    state forward and returns the metrics, not blocked on (so calls queue up)."""
    box = [state]

    def call():
        box[0], metrics = fn(box[0], *rest)
        return metrics

    return call


def measure(calls: Mapping[str, Callable[[], Any]], rounds: int, deadline: Deadline,
            min_round_s: float = 0.2) -> tuple[dict[str, list[float]], int]:
    """Seconds per call of every (compiled) function in ``calls``, one sample per round,
    and the number of compilations that happened while timing (0 unless a function
    recompiles, e.g. for arguments that differ from those it was compiled for).

    A round calls each function ``n`` times back to back and then blocks on its last result
    (``n`` makes a round last about ``min_round_s``, from two untimed calls, so that fast
    steps are timed above the timer's noise and dispatch overlaps execution as in training).
    Rounds interleave the functions and stop after ``rounds``, or once ``deadline`` has
    passed (after at least one round).
    """
    repeats = {}
    for name, call in calls.items():
        jax.block_until_ready(call())  # the first call may still transfer host arguments
        t0 = time.perf_counter()
        jax.block_until_ready(call())
        repeats[name] = max(1, int(min_round_s / max(time.perf_counter() - t0, 1e-6)))
    samples: dict[str, list[float]] = {name: [] for name in calls}
    with CompileClock() as clock:
        for r in range(rounds):
            for name, call in calls.items():
                t0 = time.perf_counter()
                for _ in range(repeats[name]):
                    out = call()
                jax.block_until_ready(out)
                samples[name].append((time.perf_counter() - t0) / repeats[name])
            print(f"round {r + 1}/{rounds}: " + ", ".join(
                f"{k} {v[-1] * 1e3:.1f} ms" for k, v in samples.items()), flush=True)
            if deadline.left() <= 0 and r + 1 < rounds:
                print(f"time budget reached: stopping after {r + 1} rounds", flush=True)
                break
    if clock.count:
        print(f"WARNING: {clock.count} compilations while timing", flush=True)
    return samples, clock.count


def timed_rows(samples: Mapping[str, list[float]], compiled: Mapping[str, Mapping[str, Any]],
               items: Mapping[str, float], unit: str, peak: float | None,
               flops: Mapping[str, float | None] | None = None) -> dict[str, dict[str, Any]]:
    """One result row per function of :func:`measure`: :func:`throughput` of the median
    seconds (FLOPs from ``flops`` where given, else from the compile), plus ``min_seconds``,
    ``rounds`` and :func:`compile_all`'s entries."""
    rows = {}
    for name, v in samples.items():
        f = (flops or {}).get(name, compiled[name]["xla_flops"])
        rows[name] = {**throughput(statistics.median(v), items[name], unit, f, peak),
                      "min_seconds": min(v), "rounds": len(v), **compiled[name]}
    return rows


def print_table(rows: Mapping[str, Mapping[str, Any]], unit: str) -> None:
    """Prints rows of :func:`throughput` (and compile seconds where present)."""
    print(f"{'':<24}{'ms':>10}{unit + '/s':>14}{'compile s':>11}{'GFLOP':>10}{'TFLOP/s':>9}"
          f"{'MFU':>7}")
    for name, r in rows.items():
        flops, achieved, mfu = r.get("flops_per_call"), r.get("flops_per_s"), r.get("mfu")
        compile_s = r.get("compile_s")
        print(f"{name:<24}{r['seconds'] * 1e3:>10.2f}{r[unit + '_per_s']:>14.1f}"
              + (f"{compile_s:>11.1f}" if compile_s is not None else f"{'-':>11}")
              + (f"{flops / 1e9:>10.1f}{achieved / 1e12:>9.2f}" if flops else f"{'-':>10}{'-':>9}")
              + (f"{100 * mfu:>6.1f}%" if mfu is not None else f"{'-':>7}"))


def dense_batch(batch: int, height: int, width: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A random NYU-v2-shaped dense batch (NumPy): ``image`` in [0, 1], ``semantic`` in
    -1 (ignored) .. 12, ``depth`` in [0.5, 5], unit ``normal`` vectors."""
    rng = np.random.default_rng(seed)
    normal = rng.normal(size=(batch, height, width, 3)).astype(np.float32)
    return {"image": rng.uniform(size=(batch, height, width, 3)).astype(np.float32),
            "semantic": rng.integers(-1, 13, (batch, height, width)).astype(np.int32),
            "depth": rng.uniform(0.5, 5.0, (batch, height, width, 1)).astype(np.float32),
            "normal": normal / np.linalg.norm(normal, axis=-1, keepdims=True)}


# ----------------------------------------------------------------------------- JSON


def device_info() -> dict[str, Any]:
    """The device (kind, count, backend, dense peaks) and library versions of this run."""
    kind = jax.devices()[0].device_kind
    return {"device_kind": kind, "device_count": jax.device_count(),
            "backend": jax.default_backend(), "jax": jax.__version__,
            "jaxlib": _version("jaxlib"),
            "python": platform.python_version(),
            "default_matmul_precision": jax.config.jax_default_matmul_precision,
            "peak_flops_per_device": {p: peak_flops(kind, p) for p in PRECISIONS}}


def _version(package: str) -> str | None:
    from importlib import metadata
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


class Report:
    """A benchmark's JSON: ``{'benchmark', 'args', 'device', 'results', 'complete', ...}``,
    written to ``path`` (if any) by every :meth:`write`, atomically."""

    def __init__(self, benchmark: str, args: argparse.Namespace) -> None:
        self.path = args.json
        self.data: dict[str, Any] = {"benchmark": benchmark, "args": vars(args),
                                     "device": device_info(), "complete": False,
                                     "results": {}}
        self.peak = self.data["device"]["peak_flops_per_device"][args.precision]
        self._lock = threading.Lock()  # compile_all writes from its threads
        self.write()

    def write(self, complete: bool = False) -> None:
        """Writes the JSON now; ``complete`` marks the run finished."""
        with self._lock:
            self.data["complete"] = complete
            if self.path:
                tmp = f"{self.path}.tmp"
                with open(tmp, "w") as f:
                    json.dump(self.data, f, indent=1)
                os.replace(tmp, self.path)


# ----------------------------------------------------------------------------- accelerator.sh


def merge_parts(out: str, parts_dir: str, run: Mapping[str, Any] | None = None
                ) -> dict[str, Any]:
    """``accelerator.sh``'s merged JSON: ``run`` (its settings and total wall time, as given)
    and, for each part listed in ``parts_dir/parts.tsv``
    (``name, exit code, wall seconds, timeout seconds, command`` per line, tab-separated)
    its status (``ok``, ``timed out``, ``failed``), wall time, command, the part's own JSON
    (``name.json``, partial when it was stopped) and, unless ok, the end of its log
    (``name.log``); plus the device and versions (from the parts, else asked of jax here).
    Writes ``out`` and returns the dict."""
    parts, device = {}, None
    with open(os.path.join(parts_dir, "parts.tsv")) as f:
        lines = [line.rstrip("\n").split("\t") for line in f if line.strip()]
    for name, rc, wall, limit, command in lines:
        rc = int(rc)
        entry: dict[str, Any] = {
            "status": "ok" if rc == 0 else "timed out" if rc in (124, 137) else "failed",
            "exit_code": rc, "wall_s": float(wall), "timeout_s": float(limit),
            "command": command}
        try:
            with open(os.path.join(parts_dir, f"{name}.json")) as f:
                entry["result"] = json.load(f)
            device = device or entry["result"].get("device")
        except (OSError, ValueError) as e:
            entry["result"] = None
            entry["error"] = f"no JSON from the part: {e}"
        if rc != 0:
            try:
                with open(os.path.join(parts_dir, f"{name}.log"), errors="replace") as f:
                    entry["error"] = (entry.get("error", "") + "\n" + f.read()[-3000:]).strip()
            except OSError:
                pass
        parts[name] = entry
    if device is None:
        try:
            device = device_info()
        except Exception as e:  # noqa: BLE001 (a broken backend is worth recording, not raising)
            device = {"error": f"{type(e).__name__}: {e}"}
    merged = {"device": device, "run": dict(run or {}), "parts": parts,
              "summary": _summary(parts)}
    with open(out, "w") as f:
        json.dump(merged, f, indent=1)
    return merged


def _summary(parts: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """``{'part/function': {'seconds', 'per_s', 'unit', 'compile_s', 'mfu'}}`` over every
    part's results."""
    out = {}
    for part, entry in parts.items():
        results = ((entry.get("result") or {}).get("results")) or {}
        for name, row in results.items():
            rate = next(k for k in row if k.endswith("_per_s") and k != "flops_per_s")
            out[f"{part}/{name}"] = {"seconds": row["seconds"], "per_s": row[rate],
                                     "unit": rate[:-len("_per_s")],
                                     "compile_s": row.get("compile_s"), "mfu": row["mfu"]}
    return out


def _number(text: str) -> int | float | str:
    """``text`` as an int or float where it is one."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _main(argv: Sequence[str]) -> None:
    if len(argv) < 3 or argv[0] != "merge" or not all("=" in a for a in argv[3:]):
        raise SystemExit("usage: python benchmarks/common.py merge OUT.json PARTS_DIR "
                         "[KEY=VALUE ...]")
    run = {k: _number(v) for k, v in (a.split("=", 1) for a in argv[3:])}
    merged = merge_parts(argv[1], argv[2], run)
    print(f"{'part':<14}{'status':>10}{'wall s':>8}")
    for name, p in merged["parts"].items():
        print(f"{name:<14}{p['status']:>10}{p['wall_s']:>8.0f}")
    for name, row in merged["summary"].items():
        mfu = f"  MFU {100 * row['mfu']:.1f}%" if row["mfu"] is not None else ""
        print(f"  {name:<34}{row['seconds'] * 1e3:>10.2f} ms {row['per_s']:>10.1f} "
              f"{row['unit']}/s  compile {row['compile_s'] or 0:.1f} s{mfu}")
    print(f"wrote {argv[1]}")


if __name__ == "__main__":
    _main(sys.argv[1:])
