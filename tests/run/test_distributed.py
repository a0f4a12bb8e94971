"""Starting a multi-process run (ur_jax.distributed) and what a non-writing process does.
The runs of two real processes are in test_multiprocess.py (slow)."""

import json
import os
import subprocess
import sys

import pytest

from ur_jax import distributed
from ur_jax.config import load_config
from ur_jax.run.workdir import CONFIG_FILE, WorkdirError, prepare_workdir

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))


_SRUN = {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n[1-2]", "SLURM_PROCID": "1",
         "SLURM_LOCALID": "0"}


@pytest.mark.parametrize("env, found", [
    ({}, None),
    ({**_SRUN, "SLURM_STEP_NUM_TASKS": "1"}, None),  # one task: one process
    ({**_SRUN, "SLURM_STEP_NUM_TASKS": "8"}, "SLURM"),
    # an sbatch script without srun: tasks allocated, but this is one process
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4", "SLURM_PROCID": "0", "SLURM_LOCALID": "0"},
     None),
    ({"OMPI_COMM_WORLD_SIZE": "2"}, None),  # Open MPI without the variable JAX reads
    ({"OMPI_COMM_WORLD_SIZE": "2", "OMPI_MCA_orte_hnp_uri": "1.0;tcp://10.0.0.1:3"}, "Open MPI"),
    ({"TPU_WORKER_HOSTNAMES": "t0"}, None),  # a single TPU VM
    ({"TPU_WORKER_HOSTNAMES": "t0,t1,t2,t3"}, "Cloud TPU pod"),
    ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"}, "JAX_COORDINATOR_ADDRESS"),
])
def test_cluster_detection_reads_only_the_environment(env, found):
    got = distributed.detected_cluster(env)
    assert (got is None) if found is None else (found in got), got


def test_initialize_refuses_incomplete_arguments(monkeypatch):
    for name in ("JAX_COORDINATOR_ADDRESS", "SLURM_STEP_NUM_TASKS", "OMPI_MCA_orte_hnp_uri",
                 "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.initialize() is False  # nothing given, nothing detected: one process
    assert distributed.initialize(num_processes=1) is False
    with pytest.raises(ValueError, match="missing --num_processes, --process_id"):
        distributed.initialize(coordinator_address="127.0.0.1:1234")
    with pytest.raises(ValueError, match=r"--process_id must lie in \[0, --num_processes=2\)"):
        distributed.initialize("127.0.0.1:1234", 2, 2)


def test_single_process_helpers():
    assert distributed.is_primary()
    distributed.barrier("nothing to wait for")
    assert distributed.agree(True) and not distributed.agree(False)
    assert distributed.gather_parts([3, 4]).tolist() == [3, 4]
    assert distributed.on_primary(lambda: 5, "give five") == 5
    assert distributed.on_every(lambda: 6, "give six") == 6

    def fail():
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):  # the original error where it happened
        distributed.on_every(fail, "write")


def test_cli_refuses_part_of_the_process_flags(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "ur_jax.main", "--config", "configs/default.py:smoke",
         "--workdir", str(tmp_path), "--num_processes=2"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "missing --coordinator_address, --process_id" in proc.stderr
    assert not os.listdir(tmp_path)


def test_non_primary_process_checks_the_workdir_but_writes_nothing(tmp_path):
    config = load_config(os.path.join(ROOT, "configs", "default.py") + ":smoke")
    fresh = tmp_path / "fresh"
    assert prepare_workdir(str(fresh), config, primary=False) == str(fresh)
    assert not fresh.exists()  # process 0 creates it
    workdir = tmp_path / "run"
    prepare_workdir(str(workdir), config)
    (workdir / "results.json").write_text("{}")
    other = load_config(os.path.join(ROOT, "configs", "default.py") + ":smoke", seed=1)
    with pytest.raises(WorkdirError, match="seed: 0 -> 1"):  # every process refuses alike
        prepare_workdir(str(workdir), other, primary=False)
    prepare_workdir(str(workdir), other, overwrite=True, primary=False)
    assert (workdir / "results.json").exists()  # only process 0 deletes
    with open(workdir / CONFIG_FILE) as f:
        assert json.load(f)["seed"] == 0
