"""Metric writing without TensorFlow: TensorBoard event files, readable log lines, progress.

:func:`create_writer` returns one :class:`MetricWriter` that writes every metric twice:
as TensorBoard event files (:class:`EventWriter`, over TensorBoard's own pure-Python
``EventFileWriter``) and as absl log lines (:class:`LoggingWriter`, in the format of clu's
``LoggingWriter``: ``[step] tag=value, tag=value``). :class:`ReportProgress` is the
training loop's progress hook (steps/s, percent done, ETA), replacing
``clu.periodic_actions.ReportProgress``. :func:`read_scalars` reads the events back.

Nothing here imports ``clu.metric_writers`` (it imports TensorFlow, which is not a run-time
dependency of ur_jax), nor patches any other package's modules. Writing is synchronous:
the event file writer buffers and writes in its own thread.

Example::

    with writers.create_writer(os.path.join(workdir, "tensorboard")) as writer:
        report = writers.ReportProgress(num_steps, writer, every_steps=100)
        for step in range(1, num_steps + 1):
            ...
            report(step)
            writer.write_scalars(step, {"train/loss": loss})
"""

from __future__ import annotations

import abc
import io
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from absl import logging
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter

#: Histogram buckets when ``num_buckets`` names none for a tag (TensorBoard's default).
DEFAULT_HISTOGRAM_BUCKETS = 30


class MetricWriter(abc.ABC):
    """The writer interface of the runner: what a metric sink must implement.

    ``step`` is the training step (an ``int``). Values may be Python numbers, NumPy or JAX
    arrays; the writer converts them (which waits for a JAX value to be computed). A writer
    is a context manager that closes itself on exit.
    """

    @abc.abstractmethod
    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        """Writes ``{tag: scalar}`` (each value a number or a one-element array) at ``step``."""

    @abc.abstractmethod
    def write_images(self, step: int, images: Mapping[str, Any]) -> None:
        """Writes ``{tag: images}`` at ``step``; images ``(H, W, C)`` or ``(N, H, W, C)`` with
        ``C`` in {1, 3, 4}, uint8 in [0, 255] or float in [0, 1] (clipped)."""

    @abc.abstractmethod
    def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
        """Writes ``{tag: text}`` at ``step`` (TensorBoard renders the text as markdown)."""

    @abc.abstractmethod
    def write_histograms(self, step: int, arrays: Mapping[str, Any],
                         num_buckets: Mapping[str, int] | None = None) -> None:
        """Writes a histogram of each flattened array of ``{tag: array}`` at ``step`` with
        ``num_buckets[tag]`` equal-width buckets (default :data:`DEFAULT_HISTOGRAM_BUCKETS`);
        empty arrays are skipped."""

    @abc.abstractmethod
    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        """Records the run's hyperparameters ``{name: value}`` (flat; values printable)."""

    @abc.abstractmethod
    def flush(self) -> None:
        """Makes everything written so far visible (on disk, in the log)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Flushes and releases the writer; it must not be written to afterwards."""

    def __enter__(self) -> MetricWriter:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def _scalar(value: Any) -> float:
    """``value`` (a number or a one-element array) as a Python float."""
    array = np.asarray(value)
    if array.size != 1:
        raise ValueError(f"A scalar metric must hold one value; found shape {array.shape}. "
                         "Reduce it first (e.g. its mean) or write it as a histogram.")
    return float(array.reshape(()))


def _log_histogram(array: Any, num_buckets: int) -> tuple[np.ndarray, np.ndarray] | None:
    """``(counts, edges)`` of the flattened ``array`` as clu's log lines computed them (a
    constant array gets one bucket of width 1 centred on its value), None when it is empty."""
    a = np.asarray(array, np.float64).ravel()
    if not a.size:
        return None
    lo, hi = float(a.min()), float(a.max())
    if lo == hi:
        return np.asarray([a.size]), np.asarray([lo - 0.5, hi + 0.5])
    counts, edges = np.histogram(a, bins=max(int(num_buckets), 2), range=(lo, hi))
    return counts, edges


class EventWriter(MetricWriter):
    """TensorBoard event files in ``logdir`` (created if missing), with no TensorFlow.

    Scalars are ``simple_value`` summaries (read by :func:`read_scalars` and TensorBoard's
    scalar dashboard); images PNG-encoded image summaries (a batch of N > 1 gets the tags
    ``tag/0 .. tag/N-1``); texts tensor summaries of TensorBoard's text plugin; histograms
    ``HistogramProto`` s; hyperparameters one text ``hparams`` at step 0, a line
    ``    name: value`` per hyperparameter in sorted order.
    """

    def __init__(self, logdir: str):
        os.makedirs(logdir, exist_ok=True)
        self.logdir = logdir
        self._writer = EventFileWriter(logdir)

    def _write(self, step: int, values: list[summary_pb2.Summary.Value]) -> None:
        if values:
            self._writer.add_event(event_pb2.Event(
                wall_time=time.time(), step=int(step), summary=summary_pb2.Summary(value=values)))

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        self._write(step, [summary_pb2.Summary.Value(tag=k, simple_value=_scalar(v))
                           for k, v in scalars.items()])

    def write_images(self, step: int, images: Mapping[str, Any]) -> None:
        from PIL import Image  # pillow is a run-time dependency; imported on use only

        values = []
        for tag, batch in images.items():
            batch = np.asarray(batch)
            if batch.ndim == 3:
                batch = batch[None]
            if batch.ndim != 4 or batch.shape[-1] not in (1, 3, 4):
                raise ValueError(f"Images {tag!r}: expected (H, W, C) or (N, H, W, C) with C "
                                 f"in {{1, 3, 4}}; found shape {batch.shape}.")
            if batch.dtype != np.uint8:
                batch = np.clip(np.round(batch * 255.0), 0, 255).astype(np.uint8)
            for i, img in enumerate(batch):
                buf = io.BytesIO()
                Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(buf, "PNG")
                values.append(summary_pb2.Summary.Value(
                    tag=tag if len(batch) == 1 else f"{tag}/{i}",
                    image=summary_pb2.Summary.Image(height=img.shape[0], width=img.shape[1],
                                                    colorspace=img.shape[-1],
                                                    encoded_image_string=buf.getvalue())))
        self._write(step, values)

    def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
        from tensorboard.plugins.text import metadata as text_metadata
        from tensorboard.util import tensor_util

        meta = text_metadata.create_summary_metadata(display_name=None, description=None)
        self._write(step, [summary_pb2.Summary.Value(
            tag=k, metadata=meta, tensor=tensor_util.make_tensor_proto(np.array(v, dtype=object)))
            for k, v in texts.items()])

    def write_histograms(self, step: int, arrays: Mapping[str, Any],
                         num_buckets: Mapping[str, int] | None = None) -> None:
        values = []
        for tag, a in arrays.items():
            a = np.asarray(a, np.float64).ravel()
            if not a.size:
                continue
            counts, edges = np.histogram(a, bins=(num_buckets or {}).get(tag)
                                         or DEFAULT_HISTOGRAM_BUCKETS)
            values.append(summary_pb2.Summary.Value(tag=tag, histo=summary_pb2.HistogramProto(
                min=float(a.min()), max=float(a.max()), num=float(a.size), sum=float(a.sum()),
                sum_squares=float(np.sum(a * a)), bucket_limit=edges[1:].tolist(),
                bucket=counts.astype(float).tolist())))
        self._write(step, values)

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        self.write_texts(0, {"hparams": "\n".join(f"    {k}: {v}" for k, v in
                                                  sorted(hparams.items()))})

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class LoggingWriter(MetricWriter):
    """Readable absl INFO log lines, in the format of clu's ``LoggingWriter``.

    Scalars: ``[step] tag=value, tag=value`` (tags sorted, values ``%.6g``); images and
    histograms are summarised (shapes; bucket counts); texts and hyperparameters logged
    as they are.
    """

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        if scalars:
            logging.info("[%d] %s", step, ", ".join(
                f"{k}={_scalar(v):.6g}" for k, v in sorted(scalars.items())))

    def write_images(self, step: int, images: Mapping[str, Any]) -> None:
        logging.info("[%d] Got images: %s.", step,
                     {k: np.shape(v) for k, v in images.items()})

    def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
        logging.info("[%d] Got texts: %s.", step, dict(texts))

    def write_histograms(self, step: int, arrays: Mapping[str, Any],
                         num_buckets: Mapping[str, int] | None = None) -> None:
        for tag, a in arrays.items():
            hist = _log_histogram(a, (num_buckets or {}).get(tag) or DEFAULT_HISTOGRAM_BUCKETS)
            if hist is None:
                continue
            counts, edges = hist
            items = [f"[{edges[i]:.3g}, {edges[i + 1]:.3g}): {c}" for i, c in
                     enumerate(counts[:-1])]
            items.append(f"[{edges[-2]:.3g}, {edges[-1]:.3g}]: {counts[-1]}")
            logging.info("[%d] Histogram for %r = {%s}", step, tag, ", ".join(items))

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        logging.info("[Hyperparameters] %s", dict(hparams))

    def flush(self) -> None:
        logging.flush()

    def close(self) -> None:
        self.flush()


class MultiWriter(MetricWriter):
    """Writes everything to each of ``writers``, in order."""

    def __init__(self, writers: Sequence[MetricWriter]):
        self.writers = tuple(writers)

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        for w in self.writers:
            w.write_scalars(step, scalars)

    def write_images(self, step: int, images: Mapping[str, Any]) -> None:
        for w in self.writers:
            w.write_images(step, images)

    def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
        for w in self.writers:
            w.write_texts(step, texts)

    def write_histograms(self, step: int, arrays: Mapping[str, Any],
                         num_buckets: Mapping[str, int] | None = None) -> None:
        for w in self.writers:
            w.write_histograms(step, arrays, num_buckets)

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        for w in self.writers:
            w.write_hparams(hparams)

    def flush(self) -> None:
        for w in self.writers:
            w.flush()

    def close(self) -> None:
        for w in self.writers:
            w.close()


def create_writer(logdir: str | None) -> MetricWriter:
    """The runner's writer: log lines (:class:`LoggingWriter`) plus, when ``logdir`` is
    given, TensorBoard event files in ``logdir`` (:class:`EventWriter`; the directory is
    created). Pass ``logdir=None`` on processes that must not write files (all but process 0
    of a multi-host run)."""
    writers: list[MetricWriter] = [LoggingWriter()]
    if logdir is not None:
        writers.append(EventWriter(logdir))
    return MultiWriter(writers)


def format_duration(seconds: float) -> str:
    """``seconds`` as clu formatted durations: ``123456.7`` -> ``'1d10h17m'``, ``59`` -> ``'0m'``."""
    days, rest = divmod(max(float(seconds), 0.0), 86400.0)
    hours, rest = divmod(rest, 3600.0)
    text = f"{int(days)}d" if days else ""
    text += f"{int(hours)}h" if hours else ""
    return text + f"{int(rest // 60)}m"


class ReportProgress:
    """Progress hook of a training loop: call ``report(step)`` after every step.

    Reports at every step that is a multiple of ``every_steps`` and at ``num_train_steps``,
    except on the first call (it only starts the clock: a resumed run measures from where
    it resumed). A report logs ``[name] 12.3 steps/s, 40.0% (400/1000), ETA: 1m`` and writes
    the scalars ``steps_per_sec`` (steps since the previous report over the seconds since
    then) and ``uptime`` (seconds since this object was made) at ``step``, the tags clu's
    ``ReportProgress`` wrote, prefixed ``<name>/`` when ``name`` is given (so that the
    stages of one run do not overwrite each other's values). It replaces clu's
    ``periodic_actions.ReportProgress``, which imports ``clu.metric_writers`` and so
    TensorFlow.

    Args:
      num_train_steps: the step training ends at (> 0).
      writer: a :class:`MetricWriter`, or None to log only.
      every_steps: report period in steps (> 0).
      name: prefix of the log line (e.g. the stage), none when empty.

    Raises:
      ValueError: ``num_train_steps`` or ``every_steps`` not positive.
    """

    def __init__(self, num_train_steps: int, writer: MetricWriter | None, every_steps: int,
                 name: str = ""):
        if num_train_steps <= 0 or every_steps <= 0:
            raise ValueError(f"ReportProgress needs num_train_steps > 0 and every_steps > 0; "
                             f"found {num_train_steps} and {every_steps}.")
        self.num_train_steps, self.every_steps = int(num_train_steps), int(every_steps)
        self.writer, self.name = writer, name
        self._t0 = time.monotonic()
        self._previous: tuple[int, float] | None = None  # (step, time) of the last report

    def __call__(self, step: int, t: float | None = None) -> bool:
        """Reports progress at ``step`` if it is due; ``t`` is the time now in
        ``time.monotonic()`` seconds (read when None). Returns whether it reported."""
        t = time.monotonic() if t is None else float(t)
        step = int(step)
        if self._previous is None:
            self._previous = (step, t)
            return False
        previous_step, previous_t = self._previous
        if step == previous_step or not (step % self.every_steps == 0
                                         or step == self.num_train_steps):
            return False
        steps_per_sec = (step - previous_step) / max(t - previous_t, 1e-9)
        eta = max(self.num_train_steps - step, 0) / max(steps_per_sec, 1e-9)
        logging.info("%s%.1f steps/s, %.1f%% (%d/%d), ETA: %s",
                     f"[{self.name}] " if self.name else "", steps_per_sec,
                     100.0 * step / self.num_train_steps, step, self.num_train_steps,
                     format_duration(eta))
        if self.writer is not None:
            prefix = f"{self.name}/" if self.name else ""  # stages must not share a tag
            self.writer.write_scalars(step, {f"{prefix}steps_per_sec": steps_per_sec,
                                             f"{prefix}uptime": time.monotonic() - self._t0})
        self._previous = (step, t)
        return True


def read_scalars(logdir: str) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value), ...]}`` (steps ascending) from the event files in ``logdir``
    (for plots and tests).

    A step written more than once (a resumed run repeats the steps after its last
    checkpoint) keeps its last value.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(logdir, size_guidance={"scalars": 0})
    acc.Reload()
    out = {}
    for tag in acc.Tags()["scalars"]:
        by_step = {}
        for ev in acc.Scalars(tag):
            by_step[ev.step] = ev.value
        out[tag] = sorted(by_step.items())
    return out
