"""Metric writing with clu, without TensorFlow.

``clu.metric_writers`` imports its TensorFlow summary writer when the package is
imported, and TensorFlow is not a run-time dependency of ur_jax. This module provides
:class:`SummaryWriter`, a clu ``MetricWriter`` that writes TensorBoard event files with
TensorBoard's own pure-Python event writer, and installs it as
``clu.metric_writers.summary_writer`` before clu is imported; clu's
``create_default_writer`` (TensorBoard events + readable log lines),
``periodic_actions`` and ``parameter_overview`` then work unchanged.

Import this module before anything imports ``clu.metric_writers`` (``ur_jax.train``
does so at import time).
"""

from __future__ import annotations

import io
import os
import sys
import time
import types
from collections.abc import Mapping
from typing import Any

import numpy as np
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter


class SummaryWriter:
    """A clu ``MetricWriter`` writing TensorBoard event files (scalars, images, texts,
    histograms, hparams as text) into ``logdir``, with no TensorFlow."""

    def __init__(self, logdir: str):
        os.makedirs(logdir, exist_ok=True)
        self._writer = EventFileWriter(logdir)

    def _write(self, step: int, values: list[summary_pb2.Summary.Value]) -> None:
        if values:
            self._writer.add_event(event_pb2.Event(
                wall_time=time.time(), step=int(step), summary=summary_pb2.Summary(value=values)))

    def write_summaries(self, step: int, values: Mapping[str, Any],
                        metadata: Mapping[str, Any] | None = None) -> None:
        del metadata
        self.write_scalars(step, {k: v for k, v in values.items() if np.ndim(v) == 0})

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        self._write(step, [summary_pb2.Summary.Value(tag=k, simple_value=float(np.asarray(v)))
                           for k, v in scalars.items()])

    def write_images(self, step: int, images: Mapping[str, Any]) -> None:
        from PIL import Image  # pillow is a run-time dependency; imported on use only

        values = []
        for tag, batch in images.items():
            batch = np.asarray(batch)
            if batch.ndim == 3:
                batch = batch[None]
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

    def write_videos(self, step: int, videos: Mapping[str, Any]) -> None:
        del step, videos  # not used by ur_jax

    def write_audios(self, step: int, audios: Mapping[str, Any], *, sample_rate: int) -> None:
        del step, audios, sample_rate  # not used by ur_jax

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
            counts, edges = np.histogram(a, bins=(num_buckets or {}).get(tag, 30))
            values.append(summary_pb2.Summary.Value(tag=tag, histo=summary_pb2.HistogramProto(
                min=float(a.min()), max=float(a.max()), num=float(a.size), sum=float(a.sum()),
                sum_squares=float(np.sum(a * a)), bucket_limit=edges[1:].tolist(),
                bucket=counts.astype(float).tolist())))
        self._write(step, values)

    def write_pointcloud(self, step: int, *args: Any, **kwargs: Any) -> None:
        del step, args, kwargs  # not used by ur_jax

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        self.write_texts(0, {"hparams": "\n".join(f"    {k}: {v}" for k, v in
                                                  sorted(hparams.items()))})

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def _install() -> None:
    name = "clu.metric_writers.summary_writer"
    if name in sys.modules:
        return
    module = types.ModuleType(name, "TF-free TensorBoard writer provided by ur_jax.writers.")
    module.SummaryWriter = SummaryWriter
    sys.modules[name] = module


_install()

from clu import metric_writers  # noqa: E402  (after the install above)

# Make it a real subclass of clu's interface for isinstance checks and documentation.
metric_writers.interface.MetricWriter.register(SummaryWriter)


def create_writer(logdir: str | None, collection: str | None = None,
                  asynchronous: bool = True) -> metric_writers.MetricWriter:
    """clu's default writer: readable log lines plus, with ``logdir``, TensorBoard events
    under ``logdir/collection``."""
    return metric_writers.create_default_writer(logdir, collection=collection,
                                                asynchronous=asynchronous)


def read_scalars(logdir: str) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value), ...]}`` from the event files in ``logdir`` (for plots).

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
