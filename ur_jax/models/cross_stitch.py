"""Cross-stitch networks on MTAN's SegNet: one SegNet column per task, mixed by learned units.

Cross-stitch networks (Misra, Shrivastava, Gupta & Hebert, "Cross-stitch Networks for
Multi-task Learning", CVPR 2016) give every task a network of its own and, between chosen
layers, replace each task's activation by a learned linear combination of all tasks'
activations at that point. For tasks ``i, j`` and channel ``c``::

    x~_i[..., c] = sum_j alpha[i, j, c] * x_j[..., c]

Channel-wise units (one ``alpha[i, j]`` per channel) are this module's default, a choice of
ours; ``per_channel=False`` gives the paper's scalar unit, one ``alpha[i, j]`` for all
channels. The NYU-v2 baselines differ from both: LibMTL's ``Cross_stitch`` uses scalar
``(T, T)`` units initialised to ones, and MTAN's ``model_segnet_cross.py`` one scalar per
*sending* task shared by every receiving column (all columns get the same mix), initialised
to ones; neither is reproduced exactly here. Units start at the paper's recommended
"(0.9, 0.1)" initialisation: ``alpha_same`` (0.9) on the diagonal and
``(1 - alpha_same) / (T - 1)`` off it, so every row sums to one (for two tasks exactly the
paper's (0.9, 0.1)). The paper trains the alphas with a learning rate 10^2-10^3 times
the network's; here they are ordinary parameters (partition the optimizer to scale them).

Architecture (:class:`CrossStitchSegNet`). Each column is exactly the encoder-decoder of
:class:`ur_jax.models.segnet.SegNetBackbone` (same layers, same parameter names, built from
its :class:`~ur_jax.models.segnet.ConvBNReLU`), and each task's head is the
:class:`~ur_jax.models.segnet.DenseHead` that :class:`~ur_jax.models.segnet.DenseHeads`
would give it, applied to *its own* column's decoder output. With ``L = len(filters)``
levels (5 for MTAN's SegNet), the cross-stitch units sit at every block boundary, as in
MTAN's ``model_segnet_cross.py`` (which has 4 + 5 = 9 units):

* ``encoder_<i>``, ``i = 0 .. L-1``: after encoder level ``i``'s convolutions *and* its 2x2
  max-pool, i.e. on the input of encoder level ``i + 1``; ``encoder_<L-1>`` mixes the
  bottleneck, the decoder's input. ``C = f_i`` channels.
* ``decoder_<i>``, ``i = L-1 .. 1``: after decoder level ``i`` (unpool, ``decoder_block_i``,
  ``conv_block_dec_i_*``), i.e. on the input of decoder level ``i - 1``. ``C = f_{i-1}``.
* none after decoder level 0: its output is each column's final feature, read by that
  task's head only.

That is ``2L - 1`` units. Each column pools with its own indices (of its own unmixed
activation) and unpools the mixed tensor with them, as MTAN's baseline does. With
``T == 1`` there are no units and the model is a plain SegNet column with one head.
With every alpha the identity matrix the model is ``T`` independent single-task SegNets.

Parameter layout::

    {'params': {'columns': {<task>: <SegNetBackbone's tree: 'encoder_block_0': {'conv',
                                     'bn'}, 'conv_block_enc_0_0', ..., 'conv_block_dec_4_1'>},
                'cross_stitch': {'encoder_0': alpha, ..., 'encoder_<L-1>': alpha,
                                 'decoder_<L-1>': alpha, ..., 'decoder_1': alpha},  # T > 1
                'heads': {<task>: {'conv3x3': {...}, 'conv1x1': {...}}}},
     'batch_stats': {'columns': {<task>: {...: {'bn': {'mean', 'var'}}}}}}

Each ``alpha`` is float32 ``(T, T, C)`` (``(T, T)`` when ``per_channel=False``), rows indexed by
the receiving task and columns by the sending task, both in ``tasks`` order. A column's
subtree is a :class:`~ur_jax.models.segnet.SegNet`'s ``'backbone'`` subtree and a head's
its ``'heads'/<task>`` subtree, so single-task SegNets initialise the columns (the paper
starts from one-task networks): :func:`from_single_task`.

Parameters at width 1, NYU-v2's three tasks (semantic 13, depth 1, normal 3): 3 x
24,943,296 (columns) + 111,889 (heads) + 9 x 2,432 = 21,888 (channel-wise alphas; 81 when
scalar) = **74,963,665** (74,941,858 with scalar units), about 3x SegNet's 25,055,185.

Features (``(predictions, features)``, as :class:`~ur_jax.models.segnet.SegNet`). There is
no feature shared by all tasks, so the named features are the columns' features
*concatenated over channels in task order* (the columns' own, before mixing):
``'encoder<i>'`` ``(B, H/2^i, W/2^i, T f_i)``, ``'bottleneck'`` ``(B, H/2^L, W/2^L, T f_{L-1})``
and ``'decoder'`` ``(B, H, W, T f_0)`` (the heads' inputs); the per-column ones are also
there as ``'<feature>/<task>'``. For ``T == 1`` they are exactly a SegNet's. URL's dense
stage (:func:`ur_jax.dense_steps.make_dense_distill_step`) reads ``'bottleneck'`` and
``'decoder'`` through a 1x1 adapter per (task, feature) sized from the feature's channel
count, so each task's adapter sees every column and can learn to read its own (a mean over
columns would instead force one projection of all columns onto every teacher). The
feature-space gradient step needs one shared feature and a ``'backbone'`` submodule:
:meth:`CrossStitchSegNet.parts` refuses (use ``space='params'``, where the shared
parameters are the columns and the units: every task's loss reaches every column through
the units).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ur_jax.models.resnet import scaled_width
from ur_jax.models.segnet import (
    NYU_TASKS,
    ConvBNReLU,
    DenseHead,
    _check_nhwc,
    _check_tasks,
    l2_normalize,
    max_pool_with_indices,
    max_unpool,
)

Array = Any


def cross_stitch_init(num_tasks: int, alpha_same: float = 0.9, channels: int | None = None
                      ) -> jax.Array:
    """The initial alphas: ``alpha_same`` on the diagonal, ``(1 - alpha_same) / (T - 1)``
    off it; ``(T, T, channels)`` float32, or ``(T, T)`` when ``channels`` is None."""
    t = int(num_tasks)
    off = (1.0 - alpha_same) / (t - 1) if t > 1 else 0.0
    eye = jnp.eye(t, dtype=jnp.float32)
    alpha = eye * alpha_same + (1.0 - eye) * off
    if channels is not None:
        alpha = jnp.broadcast_to(alpha[:, :, None], (t, t, channels))
    return alpha


def cross_stitch(alpha: Array, xs: Sequence[Array]) -> list[Array]:
    """Applies one cross-stitch unit: ``out[i] = sum_j alpha[i, j] * xs[j]``.

    Args:
      alpha: ``(T, T, C)`` (channel-wise) or ``(T, T)`` (scalar) weights, rows the
        receiving task.
      xs: ``T`` arrays of the same shape ``(..., C)``.

    Returns:
      The ``T`` mixed arrays, in ``xs``'s dtype. Written as elementwise products and sums
      (no matrix unit), so an identity ``alpha`` returns ``xs`` exactly.
    """
    t = len(xs)
    if alpha.shape[:2] != (t, t):
        raise ValueError(f"cross_stitch: alpha of shape {alpha.shape} for {t} inputs; "
                         f"expected ({t}, {t}[, C]).")
    dtype = xs[0].dtype
    a = alpha.astype(dtype)
    out = []
    for i in range(t):
        y = a[i, 0] * xs[0]
        for j in range(1, t):
            y = y + a[i, j] * xs[j]
        out.append(y)
    return out


class SegNetColumn(nn.Module):
    """One task's column: :class:`~ur_jax.models.segnet.SegNetBackbone`'s layers, run level
    by level (:meth:`encode`, :meth:`decode`) so that units can sit between the levels.

    Parameter names are exactly :class:`~ur_jax.models.segnet.SegNetBackbone`'s.
    """

    filters: Sequence[int] = (64, 128, 256, 512, 512)
    width: float = 1.0
    dtype: Any = jnp.float32
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5

    def setup(self):
        f = tuple(scaled_width(c, self.width) for c in self.filters)
        layer = functools.partial(ConvBNReLU, dtype=self.dtype, bn_momentum=self.bn_momentum,
                                  bn_epsilon=self.bn_epsilon, parent=self)
        enc, dec = [], []
        for i in range(len(f)):
            out = f[max(i - 1, 0)]
            reps = 1 if i < 2 else 2
            enc.append((layer(f[i], name=f"encoder_block_{i}"),)
                       + tuple(layer(f[i], name=f"conv_block_enc_{i}_{k}") for k in range(reps)))
            dec.append((layer(out, name=f"decoder_block_{i}"),)
                       + tuple(layer(out, name=f"conv_block_dec_{i}_{k}") for k in range(reps)))
        self._enc, self._dec = tuple(enc), tuple(dec)

    def encode(self, level: int, x: Array, train: bool = False) -> Array:
        """Encoder level ``level``'s convolutions (before its max-pool)."""
        for layer in self._enc[level]:
            x = layer(x, train)
        return x

    def decode(self, level: int, x: Array, train: bool = False) -> Array:
        """Decoder level ``level``'s convolutions (on the already unpooled input)."""
        for layer in self._dec[level]:
            x = layer(x, train)
        return x


class _Columns(nn.Module):
    """The T columns, named by task (``'columns'/<task>``)."""

    tasks: Sequence[str]
    filters: Sequence[int]
    width: float
    dtype: Any
    bn_momentum: float
    bn_epsilon: float

    def setup(self):
        self._columns = tuple(
            SegNetColumn(self.filters, self.width, self.dtype, self.bn_momentum,
                         self.bn_epsilon, name=t, parent=self) for t in self.tasks)

    def encode(self, level: int, xs: Sequence[Array], train: bool) -> list[Array]:
        return [c.encode(level, x, train) for c, x in zip(self._columns, xs)]

    def decode(self, level: int, xs: Sequence[Array], train: bool) -> list[Array]:
        return [c.decode(level, x, train) for c, x in zip(self._columns, xs)]


class _CrossStitchUnits(nn.Module):
    """The units' alphas (``'cross_stitch'/<unit>``); ``units``: ``(name, C)``."""

    num_tasks: int
    units: Sequence[tuple[str, int]]
    per_channel: bool = True
    alpha_same: float = 0.9

    def setup(self):
        alphas = {}
        for name, channels in self.units:
            init = functools.partial(cross_stitch_init, self.num_tasks, self.alpha_same,
                                     channels if self.per_channel else None)
            alphas[name] = self.param(name, lambda _rng, fn=init: fn())
        self._alphas = alphas

    def __call__(self, unit: str, xs: Sequence[Array]) -> list[Array]:
        return cross_stitch(self._alphas[unit], xs)


class _ColumnHeads(nn.Module):
    """One :class:`DenseHead` per task, each on its own column's feature (``'heads'/<task>``,
    the layout of :class:`~ur_jax.models.segnet.DenseHeads`)."""

    tasks: Sequence[tuple[str, int]]
    normalize_tasks: Sequence[str] = ("normal",)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, xs: Sequence[Array]) -> dict[str, Array]:
        preds = {}
        for (name, out), x in zip(self.tasks, xs):
            y = DenseHead(out, dtype=self.dtype, name=name)(x).astype(jnp.float32)
            preds[name] = l2_normalize(y, axis=-1) if name in self.normalize_tasks else y
        return preds


class CrossStitchSegNet(nn.Module):
    """Cross-stitch network of ``T`` SegNet columns (see the module doc for the layout).

    ``__call__(x, train=False) -> (predictions, features)``, as
    :class:`~ur_jax.models.segnet.SegNet`:

    * ``x``: ``(B, H, W, C_in)`` images, H and W multiples of ``2 ** len(filters)`` (32).
    * ``predictions[task]``: float32 ``(B, H, W, out_channels)`` from task's own column
      (tasks in ``normalize_tasks`` unit length over channels).
    * ``features``: ``'encoder<i>'``, ``'bottleneck'``, ``'decoder'``: the columns'
      features concatenated over channels in task order; ``'<feature>/<task>'``: one
      column's.

    BatchNorm as in SegNet (``mutable=['batch_stats']`` when ``train``).

    Attributes:
      tasks: ``((name, out_channels), ...)``, one column and head each; any ``T >= 1``.
      width, filters, dtype, bn_momentum, bn_epsilon, normalize_tasks: as for
        :class:`~ur_jax.models.segnet.SegNet`.
      per_channel: channel-wise alphas ``(T, T, C)`` (this module's choice) or the paper's
        scalar ``(T, T)``.
      alpha_same: initial diagonal alpha (paper: 0.9); the rest of each row is split evenly.
    """

    tasks: Sequence[tuple[str, int]] = NYU_TASKS
    width: float = 1.0
    filters: Sequence[int] = (64, 128, 256, 512, 512)
    per_channel: bool = True
    alpha_same: float = 0.9
    dtype: Any = jnp.float32
    normalize_tasks: Sequence[str] = ("normal",)
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5

    @property
    def task_names(self) -> tuple[str, ...]:
        """Task names in column and head order."""
        return tuple(t for t, _ in self.tasks)

    @property
    def channels(self) -> tuple[int, ...]:
        """The scaled channel count of each level."""
        return tuple(scaled_width(f, self.width) for f in self.filters)

    @property
    def units(self) -> tuple[tuple[str, int], ...]:
        """``(name, channels)`` of every cross-stitch unit in forward order (none for T == 1)."""
        if len(self.tasks) < 2:
            return ()
        f, levels = self.channels, len(self.filters)
        return (tuple((f"encoder_{i}", f[i]) for i in range(levels))
                + tuple((f"decoder_{i}", f[i - 1]) for i in reversed(range(1, levels))))

    @nn.nowrap
    def parts(self):
        """Refused: there is no shared backbone / shared feature to split at."""
        raise ValueError(
            "CrossStitchSegNet has no shared feature: each task has its own column (mixed by "
            "cross-stitch units) and its head reads that column, so feature-space gradients "
            "(model.parts()) do not apply. Use space='params' (gradient methods then see "
            "the per-task gradients of the columns and units).")

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> tuple[dict[str, Array],
                                                                dict[str, Array]]:
        _check_tasks(self.tasks)
        _check_nhwc(x, "CrossStitchSegNet")
        levels = len(self.filters)
        if not 1 <= levels <= 5:
            raise ValueError(f"CrossStitchSegNet's columns have 1 to 5 levels (MTAN's SegNet "
                             f"has 5); filters must have 1-5 entries, found "
                             f"{tuple(self.filters)}.")
        if not 0.0 <= self.alpha_same <= 1.0:
            raise ValueError(f"alpha_same must be in [0, 1]; found {self.alpha_same}.")
        stride = 2 ** levels
        _, h, w, _ = x.shape
        if h % stride or w % stride or h == 0 or w == 0:
            raise ValueError(
                f"CrossStitchSegNet needs input height and width divisible by {stride} "
                f"({levels} 2x2 poolings); found H={h}, W={w}. Resize or crop the input, e.g. "
                f"to {max(1, round(h / stride)) * stride}x{max(1, round(w / stride)) * stride}.")
        names = self.task_names
        t = len(names)
        columns = _Columns(names, tuple(self.filters), self.width, self.dtype, self.bn_momentum,
                           self.bn_epsilon, name="columns")
        units = (_CrossStitchUnits(t, self.units, self.per_channel, self.alpha_same,
                                   name="cross_stitch") if t > 1 else None)

        def mix(unit: str, xs: list[Array]) -> list[Array]:
            return units(unit, xs) if units is not None else xs

        feats: dict[str, Array] = {}

        def record(key: str, xs: list[Array]) -> None:
            for name, v in zip(names, xs):
                feats[f"{key}/{name}"] = v
            feats[key] = xs[0] if t == 1 else jnp.concatenate(xs, axis=-1)

        xs = [jnp.asarray(x, self.dtype)] * t
        indices = []
        for i in range(levels):
            xs = columns.encode(i, xs, train)
            record(f"encoder{i}", xs)
            pooled = [max_pool_with_indices(v) for v in xs]
            xs, idx = [p for p, _ in pooled], [k for _, k in pooled]
            indices.append(idx)
            if i == levels - 1:
                record("bottleneck", xs)
            xs = mix(f"encoder_{i}", xs)
        for i in reversed(range(levels)):
            xs = [max_unpool(v, k) for v, k in zip(xs, indices[i])]
            xs = columns.decode(i, xs, train)
            if i > 0:
                xs = mix(f"decoder_{i}", xs)
        record("decoder", xs)
        heads = _ColumnHeads(tuple(self.tasks), normalize_tasks=tuple(self.normalize_tasks),
                             dtype=self.dtype, name="heads")
        return heads(xs), feats


def from_single_task(variables: Mapping[str, Any], single_task: Mapping[str, Mapping[str, Any]],
                     heads: bool = True) -> dict[str, Any]:
    """``variables`` of a :class:`CrossStitchSegNet` with columns (and heads) copied from
    single-task :class:`~ur_jax.models.segnet.SegNet` variables (the paper starts from
    one-task networks).

    Args:
      variables: the cross-stitch model's ``{'params', 'batch_stats'}``.
      single_task: ``{task: SegNet variables}`` for some of its tasks; each SegNet's
        ``'backbone'`` becomes ``columns/<task>`` (same filters and width required) and,
        when ``heads``, its head ``heads/<task>`` becomes this model's.

    Raises:
      KeyError / ValueError: an unknown task, or a tree or shape that does not match.
    """
    params = {k: dict(v) if isinstance(v, Mapping) else v
              for k, v in variables["params"].items()}
    stats = {k: dict(v) for k, v in variables.get("batch_stats", {}).items()}
    for task, src in single_task.items():
        if task not in params["columns"]:
            raise KeyError(f"Task {task!r} has no column; columns: {sorted(params['columns'])}.")
        pairs = [(params["columns"], src["params"]["backbone"], "params")]
        if "batch_stats" in src:
            pairs.append((stats["columns"], src["batch_stats"]["backbone"], "batch_stats"))
        if heads:
            pairs.append((params["heads"], src["params"]["heads"][task], "heads"))
        for target, new, what in pairs:
            old = target[task]
            if (jax.tree.structure(old) != jax.tree.structure(new)
                    or any(a.shape != b.shape for a, b in zip(jax.tree.leaves(old),
                                                              jax.tree.leaves(new)))):
                raise ValueError(f"from_single_task: {task!r}'s {what} do not match the "
                                 f"column's tree or shapes (same filters and width needed).")
            target[task] = new
    out = dict(variables)
    out["params"] = params
    if stats:
        out["batch_stats"] = stats
    return out


__all__ = ["CrossStitchSegNet", "SegNetColumn", "cross_stitch", "cross_stitch_init",
           "from_single_task"]
