"""Input pipelines with grain: multi-domain training batches and padded evaluation batches.

Sources are random-access (``tfds.data_source`` / ``builder.as_data_source``), each
record a dict ``{'image': uint8 (H, W, C), 'label': int}``.

* :func:`train_batches`: an infinite :class:`grain.MapDataset` whose element ``i`` is the
  ``i``-th multi-domain batch ``{domain: {'image': float32 (B_d, H, W, C), 'label': int32
  (B_d,)}}``, with a per-domain batch size. Every domain is shuffled with its own seed,
  reshuffled every epoch, and (optionally) augmented with per-record random numbers that
  grain derives from the seed and the record's position; so element ``i`` is a pure
  function of ``(seed, i)``, and the iterator's state (one index) is what makes resume
  exact (:mod:`ur_jax.checkpointing`).
* :func:`eval_batches`: the whole split once, in fixed-size batches with a ``'mask'``
  (1 = real example) so that the last, padded batch reuses the compiled step.

Several processes (:mod:`ur_jax.distributed`): with ``process_index`` / ``process_count``
both pipelines give each process only its part of every global batch, the
``process_index``-th of ``process_count`` equal contiguous parts, and decode only those
records. Every process follows the same seeded global order, so the global batches that
:func:`ur_jax.sharding.global_batch` assembles from the parts hold the same examples in the
same order as on one process, the iterator's state is still one index, and evaluation sees
every example once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import grain
import numpy as np

Source = Any


@dataclasses.dataclass(frozen=True)
class Normalization:
    """``image = (uint8 / 255 - mean) / std`` per channel."""

    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        x = np.asarray(images, np.float32) / 255.0
        return (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)


AUGMENTATIONS = ("none", "crop", "crop_flip")


def _augment(kind: str, pad: int):
    if kind not in AUGMENTATIONS:
        raise ValueError(f"Unknown augmentation {kind!r}; expected one of {AUGMENTATIONS}.")

    def augment(record: Mapping[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        image = np.asarray(record["image"])
        if kind in ("crop", "crop_flip") and pad:
            h, w = image.shape[:2]
            padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
            dy, dx = rng.integers(0, 2 * pad + 1, size=2)
            image = padded[dy:dy + h, dx:dx + w]
        if kind == "crop_flip" and rng.random() < 0.5:
            image = image[:, ::-1]
        return {"image": image, "label": record["label"]}

    return augment


def _check_sources(sources: Mapping[str, Source], batch_sizes: Mapping[str, int]) -> None:
    if not sources:
        raise ValueError("No data sources given.")
    missing = sorted(set(sources) - set(batch_sizes))
    if missing:
        raise ValueError(f"No batch size for domain(s) {missing}; batch sizes are given for "
                         f"{sorted(batch_sizes)}.")
    for d, src in sources.items():
        if len(src) < 1:
            raise ValueError(f"Data source for domain {d!r} is empty.")
        if int(batch_sizes[d]) < 1:
            raise ValueError(f"Batch size for domain {d!r} must be positive; found "
                             f"{batch_sizes[d]}.")


def _to_arrays(normalize: Normalization):
    def convert(batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
        return {"image": normalize(batch["image"]), "label": np.asarray(batch["label"], np.int32)}

    return convert


def _per_domain(value: Any, domain: str, what: str) -> Any:
    if isinstance(value, Mapping):
        if domain not in value:
            raise ValueError(f"No {what} for domain {domain!r}; given for {sorted(value)}.")
        return value[domain]
    return value


def process_batch_size(batch_size: int, process_count: int, what: str = "batch size") -> int:
    """``batch_size // process_count``: the examples of each global batch one process reads.

    Raises:
      ValueError: ``process_count`` does not divide ``batch_size`` (the message names
        ``what``, e.g. the config key).
    """
    batch_size, process_count = int(batch_size), int(process_count)
    if process_count < 1:
        raise ValueError(f"process_count must be positive; found {process_count}.")
    if batch_size % process_count:
        raise ValueError(f"The {what} {batch_size} does not divide over the {process_count} "
                         f"processes of this run: each process reads an equal part of every "
                         f"batch. Choose a multiple of {process_count}.")
    return batch_size // process_count


def _check_process(process_index: int, process_count: int) -> None:
    if not 0 <= int(process_index) < int(process_count):
        raise ValueError(f"process_index must lie in [0, {process_count}); found "
                         f"{process_index}.")


def process_part(records: grain.MapDataset, batch_size: int, process_index: int,
                 process_count: int) -> grain.MapDataset:
    """The records of ``records`` that one process reads when they are batched by
    ``batch_size``: of every ``batch_size`` consecutive records, the ``process_index``-th of
    ``process_count`` equal contiguous parts. Batching the result by ``batch_size //
    process_count`` gives this process's part of each global batch; only those records are
    read (and so decoded and augmented, with the random numbers of their global position).

    Raises:
      ValueError: ``process_count`` does not divide ``batch_size``; a bad ``process_index``.
    """
    _check_process(process_index, process_count)
    local = process_batch_size(batch_size, process_count)
    if process_count == 1:
        return records
    offset = int(process_index) * local
    batch_size = int(batch_size)

    def read(j: int) -> Any:
        block, k = divmod(int(j), local)
        return records[block * batch_size + offset + k]

    return grain.MapDataset.range(len(records) // batch_size * local).map(read)


def train_batches(sources: Mapping[str, Source], batch_sizes: Mapping[str, int], seed: int,
                  augment: str | Mapping[str, Callable[..., Any]] = "none", pad: int = 2,
                  normalize: Normalization | Mapping[str, Normalization] = Normalization(),
                  process_index: int = 0, process_count: int = 1) -> grain.MapDataset:
    """Infinite multi-domain training batches (see the module docstring).

    Args:
      sources: ``{domain: random-access source}``; the batch dict keeps this order.
      batch_sizes: ``{domain: examples per step}``.
      seed: shuffling and augmentation seed (each domain derives its own).
      augment: one of :data:`AUGMENTATIONS` (random ``pad``-pixel translation by
        reflect-padding and cropping; optionally horizontal flips), or per domain a
        function ``(record, rng: np.random.Generator) -> {'image': uint8 (H, W, C),
        'label'}`` (e.g. the Decathlon's decode, resize, crop and flip).
      normalize: how uint8 images become float32: one :class:`Normalization`, or one per
        domain.
      process_index, process_count: this process's part of every batch
        (:func:`process_part`): ``batch_sizes[d] // process_count`` examples of domain ``d``.

    Raises:
      ValueError: no sources, a missing or non-positive batch size, an empty source, or a
        batch size ``process_count`` does not divide.
    """
    _check_sources(sources, batch_sizes)
    _check_process(process_index, process_count)
    for d in sources:
        process_batch_size(batch_sizes[d], process_count, f"batch size of domain {d!r}")
    per_domain = []
    for i, (d, src) in enumerate(sources.items()):
        ds = grain.MapDataset.source(src).seed(int(seed) * 1009 + i).shuffle().repeat()
        transform = _per_domain(augment, d, "augmentation")
        if callable(transform):
            ds = ds.random_map(transform)
        elif transform != "none":
            ds = ds.random_map(_augment(transform, pad))
        ds = process_part(ds, batch_sizes[d], process_index, process_count)
        ds = ds.batch(int(batch_sizes[d]) // int(process_count), drop_remainder=True).map(
            _to_arrays(_per_domain(normalize, d, "normalization")))
        per_domain.append(ds)
    names = list(sources)
    # "Infinite" datasets have length sys.maxsize // batch size, which differs between
    # domains with different batch sizes; zipping needs equal lengths.
    length = min(len(ds) for ds in per_domain)
    per_domain = [ds.slice(slice(0, length)) for ds in per_domain]
    return grain.experimental.ZipMapDataset(per_domain).map(
        lambda batches: dict(zip(names, batches)))


def iterate(dataset: grain.MapDataset, num_threads: int = 2,
            prefetch: int = 4) -> grain.DatasetIterator:
    """A checkpointable iterator over ``dataset`` with background prefetching.

    ``iterator.get_state()`` / ``set_state()`` (or :mod:`ur_jax.checkpointing`) save and
    restore its position exactly, prefetched elements included.
    """
    options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)
    return iter(dataset.to_iter_dataset(options))


def process_eval_indices(n: int, batch_size: int, process_index: int = 0,
                         process_count: int = 1) -> list[np.ndarray]:
    """For each of the ``ceil(n / batch_size)`` global evaluation batches over records
    ``0 .. n - 1``, the record indices this process reads: its contiguous
    ``batch_size // process_count`` part of the batch, cut at ``n`` (so the last batches'
    parts may be short or empty; together the processes read every record once).

    Raises:
      ValueError: ``process_count`` does not divide ``batch_size``; a bad ``process_index``.
    """
    _check_process(process_index, process_count)
    local = process_batch_size(batch_size, process_count, "evaluation batch size")
    n, batch_size = int(n), int(batch_size)
    first = int(process_index) * local
    return [np.arange(b * batch_size + first, min(b * batch_size + first + local, n))
            for b in range(-(-n // batch_size))]


def eval_batches(source: Source, batch_size: int,
                 normalize: Normalization = Normalization(),
                 limit: int | None = None,
                 transform: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None,
                 process_index: int = 0, process_count: int = 1
                 ) -> Iterator[dict[str, np.ndarray]]:
    """The split once, in order, in batches of exactly ``batch_size``.

    Each batch has ``'image'``, ``'label'`` and ``'mask'`` (float32, 1 for real
    examples); the last batch is padded with copies of its first example (mask 0,
    label -1). ``limit``: use only the first ``limit`` examples. ``transform``: a
    per-record function applied first (e.g. decode and centre-crop); an ``'image_id'``
    it or the source provides is passed through (padding: -1).

    ``process_index`` / ``process_count``: yield only this process's part of each batch
    (:func:`process_eval_indices`), ``batch_size // process_count`` examples padded the same
    way; every process yields the same number of batches (a part past the end of the split
    is all padding, copies of the split's first example).

    Raises:
      ValueError: an empty split, a non-positive batch size, or one ``process_count`` does
        not divide.
    """
    n = len(source) if limit is None else min(int(limit), len(source))
    if n < 1:
        raise ValueError("Cannot evaluate on an empty split.")
    if batch_size < 1:
        raise ValueError(f"Evaluation batch size must be positive; found {batch_size}.")
    ds = grain.MapDataset.source(source).slice(slice(0, n))
    if transform is not None:
        ds = ds.map(transform)
    if process_count == 1:
        batches: Iterator[Any] = iter(ds.batch(batch_size))
        size = batch_size
    else:
        size = process_batch_size(batch_size, process_count, "evaluation batch size")
        batches = (_stack([ds[int(i)] for i in (idx if len(idx) else [0])], bool(len(idx)))
                   for idx in process_eval_indices(n, batch_size, process_index, process_count))
    for batch in batches:
        k = len(batch["label"]) if batch.pop("_real", True) else 0
        images = normalize(batch["image"])
        labels = np.asarray(batch["label"], np.int32)[:k]
        mask = np.zeros(size, np.float32)
        mask[:k] = 1.0
        if k < size:
            images = np.concatenate([images[:k], np.repeat(images[:1], size - k, 0)])
            labels = np.concatenate([labels, np.full(size - k, -1, np.int32)])
        out = {"image": images, "label": labels, "mask": mask}
        if "image_id" in batch:
            ids = np.asarray(batch["image_id"], np.int64)[:k]
            out["image_id"] = np.concatenate([ids, np.full(size - k, -1, np.int64)])
        yield out


def _stack(records: Sequence[Mapping[str, Any]], real: bool) -> dict[str, Any]:
    """Records stacked into one batch dict (what grain's ``batch`` makes); ``real=False``
    marks a batch that only carries a padding example."""
    out: dict[str, Any] = {k: np.stack([np.asarray(r[k]) for r in records]) for k in records[0]}
    out["_real"] = real
    return out


def load_split(source: Source, normalize: Normalization = Normalization(),
               limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """All (or the first ``limit``) examples of a split as ``(images float32, labels int32)``."""
    n = len(source) if limit is None else min(int(limit), len(source))
    images, labels = [], []
    for batch in grain.MapDataset.source(source).slice(slice(0, n)).batch(512):
        images.append(normalize(batch["image"]))
        labels.append(np.asarray(batch["label"], np.int32))
    return np.concatenate(images), np.concatenate(labels)


def image_shape(sources: Mapping[str, Source]) -> dict[str, tuple[int, ...]]:
    """``{domain: image shape}`` read from each source's first record."""
    return {d: tuple(np.shape(src[0]["image"])) for d, src in sources.items()}


def domain_subset(mapping: Mapping[str, Any], domains: Sequence[str]) -> dict[str, Any]:
    """``mapping`` restricted to ``domains`` (in that order), with a clear error for a
    missing one."""
    missing = [d for d in domains if d not in mapping]
    if missing:
        raise KeyError(f"Domain(s) {missing} missing; available: {sorted(mapping)}.")
    return {d: mapping[d] for d in domains}


class Subset:
    """The records ``indices`` of a random-access ``source``, as a random-access source
    (``len``, ``[i]``) that :func:`train_batches` and :func:`eval_batches` read like any other.

    Raises:
      IndexError: when an index is outside ``[0, len(source))``.
    """

    def __init__(self, source: Source, indices: Sequence[int]):
        self.source = source
        self.indices = np.asarray(indices, np.int64).reshape(-1)
        if self.indices.size and (self.indices.min() < 0 or self.indices.max() >= len(source)):
            raise IndexError(f"Subset indices must lie in [0, {len(source)}); found "
                             f"[{self.indices.min()}, {self.indices.max()}].")

    def __len__(self) -> int:
        return int(self.indices.size)

    def __getitem__(self, index: int) -> Any:
        return self.source[int(self.indices[index])]

    def __repr__(self) -> str:
        return f"Subset({len(self)} of {len(self.source)} records)"


def holdout_split(source: Source, per_class: int, seed: int = 0) -> tuple[Subset, Subset]:
    """Carves a class-balanced validation split out of a labelled training ``source``.

    For each label, ``per_class`` of its records (chosen with ``numpy.random.
    default_rng(seed)``) go to the validation part; the rest stay for training, in their
    original order. The same ``(source, per_class, seed)`` always gives the same split.
    The labels are read record by record (each record is decoded once): cheap for the
    embedded data, a full pass over a large source.

    Returns:
      ``(train, val)``: two :class:`Subset` of ``source`` that partition it.

    Raises:
      ValueError: if ``per_class < 1`` or some class has no more than ``per_class`` records
        (it would leave no training example of that class).
    """
    if per_class < 1:
        raise ValueError(f"holdout_split needs per_class >= 1; found {per_class}.")
    labels = np.asarray([int(source[i]["label"]) for i in range(len(source))])
    classes, counts = np.unique(labels, return_counts=True)
    small = {int(c): int(n) for c, n in zip(classes, counts) if n <= per_class}
    if small:
        raise ValueError(f"Cannot hold out {per_class} examples per class: class(es) {small} "
                         f"(label: count) would keep no training example. Use a smaller number.")
    rng = np.random.default_rng(seed)
    held = np.concatenate([rng.choice(np.flatnonzero(labels == c), per_class, replace=False)
                           for c in classes])
    is_val = np.zeros(len(labels), bool)
    is_val[held] = True
    return Subset(source, np.flatnonzero(~is_val)), Subset(source, np.flatnonzero(is_val))


class ConcatSource:
    """Random-access concatenation of sources (``len``, ``[i]``): ``parts[0]``'s records,
    then ``parts[1]``'s, ... Records are returned unchanged. (:mod:`ur_jax.suites.decathlon`'s
    train + val split is one.)

    Raises:
      ValueError: for no parts.
      IndexError: for an index outside ``[-len, len)``.
    """

    def __init__(self, *parts: Any, name: str = "concatenation"):
        if not parts:
            raise ValueError("ConcatSource needs at least one source.")
        self.parts, self.name = parts, name
        self._ends = np.cumsum([len(p) for p in parts])

    def __len__(self) -> int:
        return int(self._ends[-1])

    def __getitem__(self, index: int) -> Any:
        n = len(self)
        i = int(index)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"Index {index} out of range for {self.name} ({n} records).")
        part = int(np.searchsorted(self._ends, i, side="right"))
        start = int(self._ends[part - 1]) if part else 0
        return self.parts[part][i - start]

    def __repr__(self) -> str:
        return f"ConcatSource({self.name}, {len(self)} records)"
