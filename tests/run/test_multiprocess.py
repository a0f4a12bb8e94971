"""Several processes in one run (issue 16): two local processes with 4 CPU devices each form
one 8-device mesh through jax.distributed and JAX's gloo CPU collectives, as the hosts of a
pod slice do.

Each case starts ``python -m ur_jax.main ... --coordinator_address=127.0.0.1:PORT
--num_processes=2 --process_id=I`` twice, as README's "Several hosts" says, and compares
with a one-process 8-device run: the global batches are the same (tests/data/
test_process_parts.py checks that bitwise), so the numbers differ only by the order of
floating-point sums across devices.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from ur_jax import checkpointing
from ur_jax import run as run_lib
from ur_jax.config import load_config

pytestmark = pytest.mark.slow

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
_CACHE = run_lib.CompiledCache()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(config: str, workdir: str, overrides=()) -> list[subprocess.Popen]:
    """The two processes of one run, each with 4 fake CPU devices; logs in workdir.p<i>.log."""
    port = _free_port()
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu")
    procs = []
    for i in range(2):
        log = open(f"{workdir}.p{i}.log", "w")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "ur_jax.main", "--config", config, "--workdir", workdir,
             f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
             f"--process_id={i}", *overrides],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
    return procs


def _log(workdir: str, i: int) -> str:
    with open(f"{workdir}.p{i}.log") as f:
        return f.read()


def _run_two(config: str, workdir: str, overrides=()) -> dict:
    procs = _start(config, workdir, overrides)
    for i, p in enumerate(procs):
        assert p.wait(timeout=900) == 0, _log(workdir, i)[-4000:]
    with open(os.path.join(workdir, "results.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def two_process_run(data_dir, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("two") / "run")
    return workdir, _run_two("configs/default.py:smoke", workdir,
                             [f"--config.data_dir={data_dir}"])


def _metrics(results):
    return {k: results[k] for k in ("teachers", "mdl", "url", "fewshot")}


def test_two_processes_match_one_process_on_eight_devices(two_process_run, data_dir, tmp_path,
                                                          devices):
    """default.py:smoke within the tolerance of the 1-vs-8-device test (test_runner.py), and
    only process 0 writes the run's files."""
    workdir, two = two_process_run
    config = load_config(os.path.join(ROOT, "configs", "default.py") + ":smoke",
                         data_dir=data_dir)
    one = run_lib.run(config, str(tmp_path / "one"), cache=_CACHE)
    for name in ("teachers", "mdl", "url"):
        for d in config.domains:
            a, b = two[name][d], one[name][d]
            assert a["examples"] == b["examples"] == config.eval_limit  # each example once
            assert a["loss"] == pytest.approx(b["loss"], rel=2e-3, abs=2e-3), (name, d)
            assert abs(a["accuracy"] - b["accuracy"]) <= 100.0 / a["examples"] + 1e-9, (name, d)
    for model in ("mdl", "url"):
        for method in ("ncc", "pa"):
            for d in config.fewshot.domains:
                assert two["fewshot"][model][method][d]["accuracy"] == pytest.approx(
                    one["fewshot"][model][method][d]["accuracy"], abs=1.0)
    # one writer: one event file, the results, one saved model per teacher and student
    assert len(os.listdir(os.path.join(workdir, "tensorboard"))) == 1
    with open(os.path.join(workdir, "timing.json")) as f:
        assert json.load(f)["processes"] == 2
    for d in config.domains:
        model, _ = checkpointing.load_model(os.path.join(workdir, "teachers", d, "model"))
        assert model.domains == (d,)
    data_files = os.listdir(os.path.join(workdir, "checkpoints", "url", "6", "data"))
    assert {"process_0-of-2.json", "process_1-of-2.json"} <= set(data_files)
    for i in range(2):
        log = _log(workdir, i)
        assert f"Process {i} of 2; 4 local and 8 global devices" in log
        assert ("Test accuracy (%)" in log) == (i == 0)  # only process 0 prints the table


def _damage(step_dir: str) -> None:
    """Cuts every file of a checkpoint's state to 10 bytes, as a pre-empted job can leave it."""
    for root, _, files in os.walk(os.path.join(step_dir, "state")):
        for name in files:
            with open(os.path.join(root, name), "r+b") as f:
                f.truncate(10)


def test_killed_processes_restart_past_a_damaged_checkpoint(two_process_run, data_dir,
                                                            tmp_path):
    """Both processes killed during distillation, the latest checkpoint then damaged (as a
    pre-empted pod leaves it): the restart warns, falls back to the previous checkpoint and
    ends with the numbers of the uninterrupted two-process run."""
    _, reference = two_process_run
    workdir = str(tmp_path / "killed")
    overrides = [f"--config.data_dir={data_dir}"]
    url_dir = os.path.join(workdir, "checkpoints", "url")
    procs = _start("configs/default.py:smoke", workdir, overrides)
    deadline = time.time() + 600
    while not os.path.exists(os.path.join(url_dir, "4", "commit_success.txt")):
        assert all(p.poll() is None for p in procs), _log(workdir, 0)[-3000:]
        assert time.time() < deadline, "distillation did not reach step 4"
        time.sleep(0.05)
    for p in procs:
        p.send_signal(signal.SIGKILL)
    for p in procs:
        p.wait(timeout=60)
    assert not os.path.exists(os.path.join(workdir, "results.json"))
    steps = checkpointing.Checkpointer(url_dir).all_steps()
    # keep_checkpoints=2: steps 2 and 4. A kill that lands while orbax is still deleting step 1
    # leaves its half-removed directory behind; the restart must skip it like any other.
    assert steps[-2:] == [2, 4], steps
    _damage(os.path.join(url_dir, str(steps[-1])))
    resumed = _run_two("configs/default.py:smoke", workdir, overrides)
    for i in range(2):
        log = _log(workdir, i)
        assert f"The checkpoint at step {steps[-1]}" in log and "cannot be restored" in log
    assert _metrics(resumed) == _metrics(reference)


def test_dense_two_processes_match_one_process(data_dir, tmp_path, devices):
    """dense_default.py:smoke. The losses follow the 1-vs-8-device tolerance; the metrics of
    a two-step model are looser: its predicted normals are near-zero vectors whose
    directions (and so the angle metrics and Delta_MTL) move with the order of float sums,
    as much between 1 and 8 devices of one process."""
    workdir = str(tmp_path / "dense2")
    overrides = [f"--config.data_dir={tmp_path / 'tfds'}"]
    two = _run_two("configs/dense_default.py:smoke", workdir, overrides)
    config = load_config(os.path.join(ROOT, "configs", "dense_default.py") + ":smoke",
                         data_dir=str(tmp_path / "tfds"))
    one = run_lib.run(config, str(tmp_path / "dense1"), cache=_CACHE)
    for row in ("stl", "mtl", "url"):
        for metric in ("abs_err", "rel_err", "rmse"):
            assert two[row]["depth"][metric] == pytest.approx(one[row]["depth"][metric],
                                                              rel=2e-3), (row, metric)
        for metric in ("miou", "pixel_acc"):
            assert two[row]["semantic"][metric] == pytest.approx(
                one[row]["semantic"][metric], abs=1.5), (row, metric)
        for metric in ("angle_mean", "rmse"):
            assert two[row]["normal"][metric] == pytest.approx(one[row]["normal"][metric],
                                                               abs=1.5), (row, metric)
    assert len(os.listdir(os.path.join(workdir, "tensorboard"))) == 1


def test_metadataset_two_processes_match_one_process(tmp_path, devices):
    """metadataset_url.py:smoke: process 0 builds the TFDS records while the other waits;
    episodic model selection and few-shot evaluation (NCC, PA) sample the same episodes on
    every process and fetch features computed over both processes' devices."""
    from ur_jax.suites.metadataset.fake import write_fake_records

    records = write_fake_records(str(tmp_path / "records"))
    data = str(tmp_path / "tfds")
    overrides = [f"--config.metadataset.records_dir={records}", f"--config.data_dir={data}"]
    two = _run_two("configs/metadataset_url.py:smoke", str(tmp_path / "two"), overrides)
    config = load_config(os.path.join(ROOT, "configs", "metadataset_url.py") + ":smoke",
                         **{"metadataset.records_dir": records, "data_dir": data})
    one = run_lib.run(config, str(tmp_path / "one"), cache=_CACHE)
    rows = one["fewshot"]["rows"]
    assert rows and two["fewshot"]["rows"].keys() == rows.keys()
    for row, per_source in rows.items():
        for source, value in per_source.items():
            if isinstance(value, dict) and "accuracy" in value:
                assert two["fewshot"]["rows"][row][source]["accuracy"] == pytest.approx(
                    value["accuracy"], abs=1.0), (row, source)


_CHECKPOINT_WORKER = """
import json, os, sys
index, count, port, directory, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
from ur_jax import distributed
distributed.initialize(f"127.0.0.1:{port}", count, index)
import flax.struct, grain, jax.numpy as jnp
from ur_jax import checkpointing, sharding

@flax.struct.dataclass
class State:
    step: jnp.ndarray
    params: dict
    batch_stats: dict
    opt_state: dict

mesh = sharding.make_mesh()
def state(step):
    return sharding.replicate(State(jnp.int32(step), {"w": jnp.full((4,), float(step))}, {}, {}), mesh)
iterator = iter(grain.MapDataset.range(100).batch(2).to_iter_dataset())
ckpt = checkpointing.Checkpointer(directory, keep=3, every=1)
if mode == "save":
    for step in (1, 2, 3):
        next(iterator)
        ckpt.save(step, state(step), iterator, force=True)
else:
    restored = ckpt.restore(state(0), iterator)
    print("RESTORED", json.dumps({"step": int(restored.step), "w": float(restored.params["w"][0]),
                                  "next": next(iterator).tolist()}), flush=True)
ckpt.close()
"""


def _checkpoint_run(tmp_path, count: int, mode: str) -> list[str]:
    script = tmp_path / "worker.py"
    script.write_text(_CHECKPOINT_WORKER)
    port = _free_port()
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_PLATFORMS="cpu")
    procs = [subprocess.Popen([sys.executable, str(script), str(i), str(count), str(port),
                               str(tmp_path / "ckpt"), mode], cwd=ROOT, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for i in range(count)]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]
    return logs


def test_checkpoint_damaged_on_one_process_and_another_process_count(tmp_path):
    """Damage to one process's data-iterator file: both processes fall back together (a
    restore decided per process would leave them in different collectives). Then one
    process continues the two-process checkpoint from the same global batch."""
    _checkpoint_run(tmp_path, 2, "save")
    with open(tmp_path / "ckpt" / "3" / "data" / "process_1-of-2.json", "r+b") as f:
        f.truncate(3)
    logs = _checkpoint_run(tmp_path, 2, "restore")
    want = 'RESTORED {"step": 2, "w": 2.0, "next": [4, 5]}'
    for log in logs:
        assert want in log, log[-3000:]
        assert "The checkpoint at step 3" in log and "cannot be restored" in log
    (log,) = _checkpoint_run(tmp_path, 1, "restore")
    assert want in log and "saved by 2 processes; this run has 1" in log
