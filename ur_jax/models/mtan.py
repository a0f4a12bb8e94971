"""MTAN: SegNet with per-task attention (Liu, Johns & Davison, CVPR 2019), in Flax Linen.

The model of MTAN's ``im2im_pred/model_segnet_mtan.py`` (lorenmt/mtan): the shared SegNet of
:mod:`ur_jax.models.segnet` (the *global* network, unchanged) plus, for every task, soft
attention masks that select features of the shared network level by level, and one
prediction head per task on that task's attended decoder output.

With filters ``f = (f_0..f_{L-1})`` (MTAN: ``(64, 128, 256, 512, 512)``, ``L = 5``),
``conv_layer(c)`` = 3x3 conv (padding 1, bias) + BatchNorm + ReLU (:class:`ConvBNReLU`) and
``att_layer(c_mid, c_out)`` = 1x1 conv (bias) + BatchNorm + ReLU + 1x1 conv (bias) +
BatchNorm + sigmoid (:class:`AttentionLayer`):

=============================  ==============================================================
part                           layers (level ``j``; ``g_j^0`` / ``g_j^1``: the shared
                               encoder's output after ``encoder_block_j`` / after
                               ``conv_block_enc_j``; ``u_j``: the shared decoder's unpooled
                               input at level ``j`` (``f_j`` channels); ``d_j``: the shared
                               decoder's output at level ``j`` (``f_{max(j-1,0)}`` channels))
=============================  ==============================================================
shared SegNet (``backbone``)   exactly :class:`~ur_jax.models.segnet.SegNetBackbone`
``encoder_att_j`` (per task)   ``att_layer(f_j, f_j)`` on ``g_0^0`` (``j = 0``) or on
                               ``concat(g_j^0, e_{j-1})`` (``2 f_j`` channels); the mask
                               multiplies ``g_j^1``
``encoder_block_att_j``        ``conv_layer(f_{min(j+1, L-1)})`` on the masked feature, then
(shared by the tasks)          2x2/2 max-pool (no indices): ``e_j``
``decoder_block_att_j``        ``conv_layer(f_{max(j-1, 0)})`` on the bilinear x2 upsampling
(shared by the tasks)          (``align_corners=True``) of ``e_{L-1}`` (``j = L-1``) or of
                               the attended decoder feature ``a_{j+1}``
``decoder_att_j`` (per task)   ``att_layer(f_{max(j-1,0)}, f_{max(j-1,0)})`` on
                               ``concat(u_j, decoder_block_att_j(...))``; the mask
                               multiplies ``d_j``: ``a_j``
head (per task, ``pred_task``) 3x3 conv ``f_0 -> f_0`` then 1x1 conv ``f_0 -> out`` on
                               ``a_0`` (:class:`~ur_jax.models.segnet.DenseHead`)
=============================  ==============================================================

The decoder attention runs from level ``L-1`` up to level 0, as the shared decoder does.
At MTAN's filters ``decoder_block_att_4`` maps 512 -> 512 channels; MTAN writes it as
``f_4 -> f_4`` and ``decoder_att_4``'s input as ``f_4 + f_3``, which agree only because
``f_3 = f_4``: here it is ``f_4 -> f_3`` so that any ``filters`` compose (identical shapes
at MTAN's). ``encoder_block_att_{L-1}`` maps ``f_{L-1} -> f_{L-1}`` as in MTAN.

Outputs follow :class:`~ur_jax.models.segnet.SegNet`: raw head outputs (semantic *logits*,
MTAN applies ``log_softmax`` in the model; depth as is), tasks in ``normalize_tasks``
(``('normal',)``) L2-normalised over channels as ``y / max(|y|, 1e-12)`` (MTAN divides by
the norm without eps), all predictions float32.

Parameter layout (the ``backbone`` subtree is exactly :class:`~ur_jax.models.segnet.SegNet`'s,
so a SegNet's shared network initialises MTAN's and vice versa; each ``heads/<task>`` holds
the SegNet head's ``conv3x3`` / ``conv1x1`` plus the task's attention modules)::

    {'params': {'backbone': {'encoder_block_0': {'conv': {'kernel', 'bias'},
                                                 'bn': {'scale', 'bias'}}, ...},
                'encoder_block_att_0' .. 'encoder_block_att_<L-1>': {'conv', 'bn'},
                'decoder_block_att_0' .. 'decoder_block_att_<L-1>': {'conv', 'bn'},
                'heads': {<task>: {'encoder_att_0' .. 'encoder_att_<L-1>':
                                       {'conv0', 'bn0', 'conv1', 'bn1'},
                                   'decoder_att_0' .. 'decoder_att_<L-1>': {...},
                                   'conv3x3': {...}, 'conv1x1': {...}}}},
     'batch_stats': {'backbone': {...}, 'encoder_block_att_<j>': {'bn': {'mean', 'var'}},
                     'decoder_block_att_<j>': {...},
                     'heads': {<task>: {'encoder_att_<j>': {'bn0': ..., 'bn1': ...}, ...}}}}

PyTorch names (``model_segnet_mtan.py``): ``encoder_att.<task index>.<j>.{0,1,3,4}`` ->
``heads/<task>/encoder_att_<j>/{conv0,bn0,conv1,bn1}``, likewise ``decoder_att``;
``encoder_block_att.<j>.{0,1}`` -> ``encoder_block_att_<j>/{conv,bn}``; ``pred_task<k>``
(k = 1, 2, 3) -> ``heads/<task k>/{conv3x3,conv1x1}``; the shared network as for SegNet
(:func:`ur_jax.convert.segnet.torch_names`). The task-specific attention modules live under
``'heads'`` so that :func:`ur_jax.dense_steps.make_mtl_step`'s parameter-space gradient
methods treat them as task-specific (each gets its own task's gradient, like a head); the
shared network and the shared ``*_block_att_*`` convs are what the methods combine.

**Parameter count.** At width 1 with NYU-v2's three tasks (13 semantic classes, depth 1,
normal 3) the model has **44,229,073** parameters: 24,943,296 in the shared SegNet,
10,220,160 in the shared attention conv blocks (``encoder_block_att_*``,
``decoder_block_att_*``), 2,984,576 in each task's attention modules and
``36,928 + 65 * out`` in each head (:func:`mtan_parameter_count` gives it in closed form
for any tasks, filters and width). MTAN's script prints 44,229,076 (the paper's 44.229M,
1.77x the single-task SegNet's 24,981,069): its count includes the three ``logsigma``
uncertainty loss weights, which are a training variable, not part of the network.

**Features** (``__call__``'s second output, for :mod:`ur_jax.dense_steps`' URL
distillation): ``'encoder0'..``, ``'bottleneck'`` ``(B, H/32, W/32, f_4)`` (the shared
encoder after its last max-pool) and ``'decoder'`` ``(B, H, W, f_0)`` (the shared decoder's
output ``d_0``, before any task's mask), exactly as :class:`~ur_jax.models.segnet.SegNet`
names them (the shared network is SegNet's), and ``'decoder_<task>'``: the task's attended
decoder output ``a_0`` that its head reads. The attention masks are sown into the
``'intermediates'`` collection (``heads/<task>/{encoder,decoder}_mask_<j>``; apply with
``mutable=['intermediates']`` to read them).

BatchNorm: as in MTAN, the shared ``*_block_att_*`` layers are applied once per task (in
task order, encoder levels then decoder levels) and, when training, normalise each call
with its own batch statistics and update their running averages once per call.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from ur_jax.adapters import xavier_normal
from ur_jax.models.conv import Conv
from ur_jax.models.resnet import BatchNorm, scaled_width
from ur_jax.models.segnet import (
    NYU_TASKS,
    ConvBNReLU,
    _check_nhwc,
    _check_tasks,
    l2_normalize,
    max_pool_with_indices,
    max_unpool,
)

Array = Any

#: MTAN's SegNet channels per level at width 1.
MTAN_FILTERS = (64, 128, 256, 512, 512)

#: Parameters of the width-1 MTAN with NYU-v2's three tasks (13 classes, depth, normal).
MTAN_NYU_PARAMETERS = 44_229_073

__all__ = ["MTAN_FILTERS", "MTAN_NYU_PARAMETERS", "AttentionLayer", "MTANSegNet",
           "MTANSharedNetwork", "mtan_parameter_count", "upsample2x_align_corners"]


def upsample2x_align_corners(x: Array) -> Array:
    """Bilinear x2 upsampling of ``(B, h, w, C)`` with ``align_corners=True``.

    PyTorch's ``F.interpolate(x, scale_factor=2, mode='bilinear', align_corners=True)``:
    output pixel ``i`` reads the input at ``i * (n - 1) / (2n - 1)`` (corners on corners),
    separably along height and width. Returns ``(B, 2h, 2w, C)`` in ``x``'s dtype.
    """
    _check_nhwc(x, "upsample2x_align_corners")

    def along(y: Array, axis: int) -> Array:
        n = y.shape[axis]
        if n == 1:
            return jnp.repeat(y, 2, axis=axis)
        src = np.arange(2 * n, dtype=np.float64) * ((n - 1) / (2 * n - 1))
        lo = np.minimum(np.floor(src).astype(np.int64), n - 1)
        hi = np.minimum(lo + 1, n - 1)
        frac = (src - lo).astype(np.float32)
        shape = [1] * y.ndim
        shape[axis] = 2 * n
        t = jnp.asarray(frac.reshape(shape), y.dtype)
        a, b = jnp.take(y, lo, axis=axis), jnp.take(y, hi, axis=axis)
        return a + (b - a) * t

    return along(along(x, 1), 2)


class AttentionLayer(nn.Module):
    """MTAN's ``att_layer``: 1x1 conv + BN + ReLU, 1x1 conv + BN + sigmoid -> a mask in (0, 1).

    ``(B, H, W, C_in) -> (B, H, W, features)``; both convs biased (PyTorch's default),
    Xavier-normal kernels and zero biases (MTAN's initialisation).

    Attributes:
      features: channels of the hidden layer and of the mask (MTAN: equal).
      dtype, bn_momentum, bn_epsilon: as :class:`~ur_jax.models.segnet.ConvBNReLU`'s.
    """

    features: int
    dtype: Any = jnp.float32
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        conv = functools.partial(Conv, self.features, (1, 1), padding="VALID", use_bias=True,
                                 kernel_init=xavier_normal, bias_init=nn.initializers.zeros,
                                 dtype=self.dtype)
        norm = functools.partial(BatchNorm, use_running_average=not train,
                                 momentum=self.bn_momentum, epsilon=self.bn_epsilon,
                                 dtype=self.dtype)
        x = nn.relu(norm(name="bn0")(conv(name="conv0")(x)))
        return nn.sigmoid(norm(name="bn1")(conv(name="conv1")(x)))


class MTANSharedNetwork(nn.Module):
    """MTAN's global network: :class:`~ur_jax.models.segnet.SegNetBackbone`'s layers and
    parameter names, returning every intermediate the attention modules read.

    ``__call__(x, train=False)`` -> ``(features, taps)``: ``features`` as SegNetBackbone's
    (``'encoder<i>'``, ``'bottleneck'``, ``'decoder'``); ``taps`` ``{'enc_first': [g_j^0],
    'enc_last': [g_j^1], 'unpooled': [u_j], 'dec_last': [d_j]}``, lists indexed by level
    ``j`` (see the module docstring). Same attributes as SegNetBackbone.
    """

    filters: Sequence[int] = MTAN_FILTERS
    width: float = 1.0
    dtype: Any = jnp.float32
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5

    @property
    def channels(self) -> tuple[int, ...]:
        """The scaled channel count of each level."""
        return tuple(scaled_width(f, self.width) for f in self.filters)

    @nn.compact
    def __call__(self, x: Array, train: bool = False
                 ) -> tuple[dict[str, Array], dict[str, list[Array]]]:
        _check_nhwc(x, "MTANSegNet")
        levels = len(self.filters)
        if not 1 <= levels <= 5:
            raise ValueError(f"MTANSegNet has 1 to 5 levels (MTAN's has 5); filters must have "
                             f"1-5 entries, found {tuple(self.filters)}.")
        stride = 2 ** levels
        _, h, w, _ = x.shape
        if h % stride or w % stride or h == 0 or w == 0:
            raise ValueError(
                f"MTANSegNet needs input height and width divisible by {stride} ({levels} 2x2 "
                f"poolings); found H={h}, W={w}. Resize or crop the input, e.g. to "
                f"{max(1, round(h / stride)) * stride}x"
                f"{max(1, round(w / stride)) * stride}.")
        f = self.channels
        layer = functools.partial(ConvBNReLU, dtype=self.dtype, bn_momentum=self.bn_momentum,
                                  bn_epsilon=self.bn_epsilon)
        feats: dict[str, Array] = {}
        taps: dict[str, list[Array]] = {"enc_first": [], "enc_last": [],
                                        "unpooled": [None] * levels,
                                        "dec_last": [None] * levels}
        x = jnp.asarray(x, self.dtype)
        indices = []
        for i in range(levels):
            x = layer(f[i], name=f"encoder_block_{i}")(x, train)
            taps["enc_first"].append(x)
            for k in range(1 if i < 2 else 2):
                x = layer(f[i], name=f"conv_block_enc_{i}_{k}")(x, train)
            taps["enc_last"].append(x)
            feats[f"encoder{i}"] = x
            x, idx = max_pool_with_indices(x)
            indices.append(idx)
        feats["bottleneck"] = x
        for i in reversed(range(levels)):
            x = max_unpool(x, indices[i])
            taps["unpooled"][i] = x
            out = f[max(i - 1, 0)]
            x = layer(out, name=f"decoder_block_{i}")(x, train)
            for k in range(1 if i < 2 else 2):
                x = layer(out, name=f"conv_block_dec_{i}_{k}")(x, train)
            taps["dec_last"][i] = x
        feats["decoder"] = x
        return feats, taps


class MTANTask(nn.Module):
    """One task's attention branch and head (MTAN's ``encoder_att[t]``, ``decoder_att[t]``,
    ``pred_task``); the shared attention conv blocks are passed in (their parameters live
    in :class:`MTANSegNet`'s top level).

    ``__call__(taps, enc_blocks, dec_blocks, train)`` -> ``(prediction (B, H, W, out),
    attended decoder feature (B, H, W, f_0))``; masks are sown as ``encoder_mask_<j>`` /
    ``decoder_mask_<j>`` into ``'intermediates'``.
    """

    out_channels: int
    channels: Sequence[int]
    normalize: bool = False
    dtype: Any = jnp.float32
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5

    @nn.compact
    def __call__(self, taps: dict[str, list[Array]], enc_blocks: Sequence[nn.Module],
                 dec_blocks: Sequence[nn.Module], train: bool = False) -> tuple[Array, Array]:
        f = tuple(self.channels)
        levels = len(f)
        att = functools.partial(AttentionLayer, dtype=self.dtype, bn_momentum=self.bn_momentum,
                                bn_epsilon=self.bn_epsilon)
        prev = None
        for j in range(levels):
            first = taps["enc_first"][j]
            inp = first if j == 0 else jnp.concatenate([first, prev], axis=-1)
            mask = att(f[j], name=f"encoder_att_{j}")(inp, train)
            self.sow("intermediates", f"encoder_mask_{j}", mask)
            y = enc_blocks[j](mask * taps["enc_last"][j], train)
            prev = nn.max_pool(y, (2, 2), strides=(2, 2))
        for j in reversed(range(levels)):
            y = dec_blocks[j](upsample2x_align_corners(prev), train)
            inp = jnp.concatenate([taps["unpooled"][j], y], axis=-1)
            mask = att(f[max(j - 1, 0)], name=f"decoder_att_{j}")(inp, train)
            self.sow("intermediates", f"decoder_mask_{j}", mask)
            prev = mask * taps["dec_last"][j]
        # MTAN's pred_task, with DenseHead's layers and names (conv3x3, conv1x1).
        conv = functools.partial(Conv, use_bias=True, kernel_init=xavier_normal,
                                 bias_init=nn.initializers.zeros, dtype=self.dtype)
        y = conv(f[0], (3, 3), padding=((1, 1), (1, 1)), name="conv3x3")(prev)
        y = conv(self.out_channels, (1, 1), padding="VALID", name="conv1x1")(y)
        y = y.astype(jnp.float32)
        return (l2_normalize(y, axis=-1) if self.normalize else y), prev


class MTANHeads(nn.Module):
    """Every task's :class:`MTANTask`, under the task's name (the ``'heads'`` subtree)."""

    tasks: Sequence[tuple[str, int]]
    channels: Sequence[int]
    normalize_tasks: Sequence[str] = ("normal",)
    dtype: Any = jnp.float32
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5

    @nn.compact
    def __call__(self, taps: dict[str, list[Array]], enc_blocks: Sequence[nn.Module],
                 dec_blocks: Sequence[nn.Module], train: bool = False
                 ) -> tuple[dict[str, Array], dict[str, Array]]:
        preds, attended = {}, {}
        for name, out in self.tasks:  # task order: the order of MTAN's BatchNorm updates
            preds[name], attended[name] = MTANTask(
                out, tuple(self.channels), name in self.normalize_tasks, dtype=self.dtype,
                bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon,
                name=name)(taps, enc_blocks, dec_blocks, train)
        return preds, attended


class MTANSegNet(nn.Module):
    """MTAN's attention SegNet with one attention branch and head per task.

    ``__call__(x, train=False) -> (predictions, features)``, the interface of
    :class:`~ur_jax.models.segnet.SegNet`:

    * ``x``: ``(B, H, W, C_in)`` images, H and W multiples of ``2 ** len(filters)`` (32).
    * ``predictions[task]``: float32 ``(B, H, W, out_channels)``; semantic logits, raw
      depth, unit-length outputs for tasks in ``normalize_tasks``.
    * ``features``: the shared network's ``'encoder<i>'``, ``'bottleneck'``
      ``(B, H/32, W/32, f_4)`` and ``'decoder'`` ``(B, H, W, f_0)`` (SegNet's names and
      meaning), and ``'decoder_<task>'``, the task's attended decoder output (its head's
      input).

    BatchNorm uses batch statistics and updates ``'batch_stats'`` when ``train`` (apply with
    ``mutable=['batch_stats']``), running averages otherwise. See the module docstring for
    the architecture, the parameter layout and the parameter count.

    Attributes:
      tasks: ``((name, out_channels), ...)``, any number >= 1 (MTAN: NYU-v2's three).
      width: multiplier on every channel count (rounded, at least 1).
      filters: channels per level before ``width`` (1 to 5 levels; MTAN's
        ``(64, 128, 256, 512, 512)``).
      dtype: computation dtype; parameters stay float32, predictions are float32.
      normalize_tasks: tasks whose output is L2-normalised over channels.
      bn_momentum, bn_epsilon: BatchNorm decay (PyTorch momentum 0.1) and epsilon.
    """

    tasks: Sequence[tuple[str, int]] = NYU_TASKS
    width: float = 1.0
    filters: Sequence[int] = MTAN_FILTERS
    dtype: Any = jnp.float32
    normalize_tasks: Sequence[str] = ("normal",)
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5

    @property
    def task_names(self) -> tuple[str, ...]:
        """Task names in head order."""
        return tuple(t for t, _ in self.tasks)

    @property
    def channels(self) -> tuple[int, ...]:
        """The scaled channel count of each level."""
        return tuple(scaled_width(f, self.width) for f in self.filters)

    @nn.nowrap
    def parts(self):
        """Refused: MTAN has no split into a shared network and heads on one shared feature.

        Each task's attention modules read the shared encoder and decoder at every level, so
        the predictions are not a function of one shared feature map; feature-space
        gradient methods (``space='features'``, LibMTL's ``rep_grad``) cannot be applied.

        Raises:
          ValueError: always, saying to use ``space='params'``.
        """
        raise ValueError(
            "MTANSegNet cannot be split into a shared network and task heads on one shared "
            "feature: each task's attention modules read the shared encoder and decoder at "
            "every level, so gradients with respect to the shared 'decoder' feature "
            "(space='features') are not defined for it. Use space='params' "
            "(make_mtl_step(..., space='params'); in a run: --config.mtl.space=params).")

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> tuple[dict[str, Array],
                                                                dict[str, Array]]:
        _check_tasks(self.tasks)
        f = self.channels
        levels = len(f)
        shared = MTANSharedNetwork(self.filters, self.width, dtype=self.dtype,
                                   bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon,
                                   name="backbone")
        feats, taps = shared(x, train)
        layer = functools.partial(ConvBNReLU, dtype=self.dtype, bn_momentum=self.bn_momentum,
                                  bn_epsilon=self.bn_epsilon)
        enc_blocks = [layer(f[min(j + 1, levels - 1)], name=f"encoder_block_att_{j}")
                      for j in range(levels)]
        dec_blocks = [layer(f[max(j - 1, 0)], name=f"decoder_block_att_{j}")
                      for j in range(levels)]
        preds, attended = MTANHeads(self.tasks, f, self.normalize_tasks, dtype=self.dtype,
                                    bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon,
                                    name="heads")(taps, enc_blocks, dec_blocks, train)
        feats = dict(feats)
        for name, a in attended.items():
            feats[f"decoder_{name}"] = a
        return preds, feats


def mtan_parameter_count(tasks: Sequence[tuple[str, int]] = NYU_TASKS,
                         filters: Sequence[int] = MTAN_FILTERS, width: float = 1.0) -> int:
    """The number of parameters of ``MTANSegNet(tasks, width, filters)``, in closed form
    (no initialisation): shared SegNet + shared attention conv blocks + per-task attention
    modules and heads. ``mtan_parameter_count() == MTAN_NYU_PARAMETERS``."""
    f = [scaled_width(c, width) for c in filters]
    levels = len(f)

    def conv_bn(cin: int, cout: int, k: int = 3) -> int:  # conv (bias) + BN scale/bias
        return k * k * cin * cout + cout + 2 * cout

    def att(cin: int, c: int) -> int:
        return conv_bn(cin, c, 1) + conv_bn(c, c, 1)

    shared = 0
    for i in range(levels):
        out = f[max(i - 1, 0)]
        shared += conv_bn(3 if i == 0 else f[i - 1], f[i]) + conv_bn(f[i], out)
        n = 1 if i < 2 else 2
        shared += n * (conv_bn(f[i], f[i]) + conv_bn(out, out))
    blocks = sum(conv_bn(f[j], f[min(j + 1, levels - 1)]) for j in range(levels))
    # decoder_block_att_j reads f_j channels (j = L-1: the last encoder block's output,
    # f_{L-1} channels) and writes f_{max(j-1, 0)}.
    blocks += sum(conv_bn(f[j], f[max(j - 1, 0)]) for j in range(levels))
    per_task = sum(att(f[j] if j == 0 else 2 * f[j], f[j]) for j in range(levels))
    per_task += sum(att(f[j] + f[max(j - 1, 0)], f[max(j - 1, 0)]) for j in range(levels))
    heads = sum(9 * f[0] * f[0] + f[0] + f[0] * out + out for _, out in tasks)
    return shared + blocks + len(tuple(tasks)) * per_task + heads
