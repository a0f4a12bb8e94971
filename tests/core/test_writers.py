"""ur_jax.writers: TensorBoard events and log lines without TensorFlow or a clu patch."""

import logging
import os
import subprocess
import sys

import numpy as np
import pytest

from ur_jax import writers


@pytest.fixture
def absl_info(caplog):
    """Captures absl's INFO log lines."""
    with caplog.at_level(logging.INFO, logger="absl"):
        yield caplog


def _events(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(logdir, size_guidance={"scalars": 0, "images": 0, "tensors": 0,
                                                  "histograms": 0})
    acc.Reload()
    return acc


def test_import_leaves_no_clu_metric_writers_module():
    """The patch is gone: importing ur_jax.writers neither installs nor imports any
    ``clu.metric_writers`` module (which would need TensorFlow)."""
    code = ("import sys, ur_jax.writers\n"
            "bad = sorted(m for m in sys.modules if m.startswith('clu.metric_writers'))\n"
            "assert not bad, bad\n"
            "assert 'tensorflow' not in sys.modules\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr


def test_scalars_round_trip_through_events_and_log(tmp_path, absl_info):
    logdir = str(tmp_path / "tb")
    with writers.create_writer(logdir) as writer:
        assert isinstance(writer, writers.MetricWriter)
        for step in (1, 2, 5):
            writer.write_scalars(step, {"train/loss": np.float32(1.0 / step),
                                        "train/acc": np.array([10.0 * step])})
        writer.write_scalars(5, {"train/loss": 0.125})  # a repeated step keeps its last value
    scalars = writers.read_scalars(logdir)
    assert set(scalars) == {"train/loss", "train/acc"}
    assert [s for s, _ in scalars["train/loss"]] == [1, 2, 5]
    np.testing.assert_allclose([v for _, v in scalars["train/loss"]], [1.0, 0.5, 0.125])
    np.testing.assert_allclose([v for _, v in scalars["train/acc"]], [10.0, 20.0, 50.0])
    lines = [r.getMessage() for r in absl_info.records]
    assert "[2] train/acc=20, train/loss=0.5" in lines  # clu's LoggingWriter format
    assert "[5] train/loss=0.125" in lines


def test_scalar_with_many_values_is_refused(tmp_path):
    with writers.create_writer(str(tmp_path)) as writer:
        with pytest.raises(ValueError, match="one value"):
            writer.write_scalars(1, {"x": np.ones(3)})


def test_images_texts_histograms_hparams(tmp_path, absl_info):
    logdir = str(tmp_path)
    with writers.create_writer(logdir) as writer:
        writer.write_images(3, {"one": np.zeros((4, 5, 3), np.float32),
                                "batch": np.full((2, 4, 5, 1), 255, np.uint8)})
        writer.write_texts(3, {"note": "hello"})
        writer.write_histograms(3, {"w": np.arange(100.0), "empty": np.zeros(0)},
                                num_buckets={"w": 10})
        writer.write_hparams({"lr": 0.1, "name": "url"})
    acc = _events(logdir)
    tags = acc.Tags()
    assert set(tags["images"]) == {"one", "batch/0", "batch/1"}
    img = acc.Images("one")[0]
    assert (img.step, img.width, img.height) == (3, 5, 4)
    assert tags["histograms"] == ["w"]
    histo = acc.Histograms("w")[0].histogram_value
    assert histo.num == 100 and len(histo.bucket) == 10 and sum(histo.bucket) == 100
    assert set(tags["tensors"]) == {"note", "hparams"}
    assert acc.Tensors("note")[0].tensor_proto.string_val == [b"hello"]
    hparams = acc.Tensors("hparams")[0]
    assert hparams.step == 0
    assert hparams.tensor_proto.string_val == [b"    lr: 0.1\n    name: url"]
    text = absl_info.text
    assert "Histogram for 'w'" in text and "[Hyperparameters]" in text and "hello" in text


def test_writer_without_logdir_only_logs(tmp_path, absl_info):
    with writers.create_writer(None) as writer:
        writer.write_scalars(7, {"a": 1.5})
    assert "[7] a=1.5" in [r.getMessage() for r in absl_info.records]


def test_report_progress_writes_steps_per_sec_at_the_right_steps(tmp_path, absl_info):
    logdir = str(tmp_path)
    with writers.create_writer(logdir) as writer:
        report = writers.ReportProgress(num_train_steps=25, writer=writer, every_steps=10,
                                        name="url")
        # A resumed run: the first call (step 3) only starts the clock; 2 s per step.
        reported = [step for step in range(3, 26) if report(step, t=2.0 * step)]
    assert reported == [10, 20, 25]
    scalars = writers.read_scalars(logdir)
    assert "steps_per_sec" not in scalars  # tagged per stage: stages do not collide
    assert [s for s, _ in scalars["url/steps_per_sec"]] == [10, 20, 25]
    np.testing.assert_allclose([v for _, v in scalars["url/steps_per_sec"]], [0.5, 0.5, 0.5])
    assert [s for s, _ in scalars["url/uptime"]] == [10, 20, 25]
    lines = [r.getMessage() for r in absl_info.records]
    # 5 steps left at 0.5 steps/s: 10 s, shown in whole minutes as clu did.
    assert "[url] 0.5 steps/s, 80.0% (20/25), ETA: 0m" in lines


def test_report_progress_eta_format_and_arguments():
    assert writers.format_duration(123456.7) == "1d10h17m"
    assert writers.format_duration(3 * 3600 + 61) == "3h1m"
    assert writers.format_duration(59) == "0m"
    report = writers.ReportProgress(1000, None, every_steps=100)
    assert not report(0, t=0.0) and report(100, t=10.0)  # no writer: logs only
    with pytest.raises(ValueError, match="every_steps > 0"):
        writers.ReportProgress(10, None, every_steps=0)
