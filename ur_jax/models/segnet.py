"""SegNet for dense prediction as used by MTAN and URL (NYU-v2, Cityscapes), in Flax Linen.

The network is MTAN's SegNet (Liu et al., CVPR 2019; ``model_segnet_split.py`` /
``model_segnet_single.py``), the backbone of the paper's dense experiments (PAPER.md
section 1). With filters ``f = (64, 128, 256, 512, 512)`` and ``conv_layer(c)`` = 3x3
conv (padding 1, with bias) + BatchNorm + ReLU:

==========  ===============================================  ============================
level i     encoder (then 2x2/2 max-pool with indices)        decoder (after unpool i)
==========  ===============================================  ============================
0           ``f0``: 1 + 1 conv_layer (3 -> f0 -> f0)          f0 -> f0, then 1 x (f0)
1           ``f1``: 1 + 1 conv_layer (f0 -> f1 -> f1)         f1 -> f0, then 1 x (f0)
2           ``f2``: 1 + 2 conv_layer (f1 -> f2 -> f2 -> f2)   f2 -> f1, then 2 x (f1)
3           ``f3``: 1 + 2 conv_layer                          f3 -> f2, then 2 x (f2)
4           ``f4``: 1 + 2 conv_layer                          f4 -> f3, then 2 x (f3)
==========  ===============================================  ============================

The decoder runs from level 4 up to level 0: unpool with the indices of encoder pool
``i`` (back to the pre-pool size), ``decoder_block_i``, then ``conv_block_dec_i``. These
per-level counts are those of MTAN's ``model_segnet_split.py`` (``conv_block_dec[i]`` has
one conv_layer for ``i <= 1`` and two otherwise, at ``f[i-1]`` channels, ``f0`` for
``i = 0``), which the URL code reuses unchanged.

Each task has a head (MTAN's ``pred_task``): 3x3 conv ``f0 -> f0`` (bias, no BN, no ReLU)
then 1x1 conv ``f0 -> out_channels``. The model returns raw head outputs, except that
tasks listed in ``normalize_tasks`` (``('normal',)`` by default) are L2-normalised over
channels as ``y / max(|y|, 1e-12)`` (PyTorch's ``F.normalize``; zero vectors stay zero,
no NaN). Semantic outputs are *logits* (MTAN applies ``log_softmax`` in the model; here
the loss does). All predictions are float32.

Parameter layout::

    {'params': {'backbone': {'encoder_block_0': {'conv': {'kernel', 'bias'},
                                                 'bn': {'scale', 'bias'}},
                             'conv_block_enc_0_0': ..., 'conv_block_enc_2_1': ...,
                             'decoder_block_4': ..., 'conv_block_dec_4_1': ...},
                'heads': {<task>: {'conv3x3': {...}, 'conv1x1': {...}}}},
     'batch_stats': {'backbone': {...: {'bn': {'mean', 'var'}}}}}

``conv_block_{enc,dec}_<level>_<k>`` is the k-th conv_layer of that level's block
(PyTorch: ``conv_block_enc.<level>`` when the block has one layer, else
``conv_block_enc.<level>.<k>``). A single-task (STL) model is the same module with one
task, so a teacher's ``backbone`` subtree initialises a student's.

Max-pooling indices are stored as the position of the maximum inside its 2x2 window,
``dy * 2 + dx`` in ``{0, 1, 2, 3}`` (row-major; ties go to the first maximum, as in
PyTorch), as int8 arrays of the pooled shape. :func:`to_torch_indices` converts them to
PyTorch's flat per-channel indices ``h * W + w`` and :func:`from_torch_indices` back.

At width 1 the single-task semantic SegNet (13 classes) has 24,981,069 parameters, the
reference count MTAN's scripts print; the three-task NYU-v2 model 25,055,185.
``SegNet.parts()`` returns the backbone and the heads as modules of their own (to
differentiate w.r.t. the shared ``'decoder'`` feature). BatchNorm follows Flax: the
running variance is updated with the biased batch variance (PyTorch: unbiased, a factor
``n / (n - 1)`` with ``n = B * H * W`` pixels, negligible at these sizes).

Also here (a stretch beyond the paper's SegNet): :class:`DeepLabV3ResNet50`, a dilated
ResNet-50 (output stride 8, built from :mod:`ur_jax.models.resnet`'s blocks and parameter
names) with one DeepLabv3 ASPP head per task, in the same ``(predictions, features)``
interface.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ur_jax.adapters import xavier_normal  # the conv initialiser of MTAN's SegNet
from ur_jax.models.conv import Conv
from ur_jax.models.resnet import BatchNorm, Bottleneck, conv_init, scaled_width

Array = Any


#: Height and width of SegNet inputs must be multiples of this (five 2x2 poolings).
SEGNET_STRIDE = 32

NYU_TASKS: tuple[tuple[str, int], ...] = (("semantic", 13), ("depth", 1), ("normal", 3))


# --------------------------------------------------------------------------------------------
# Max-pooling with indices and max-unpooling (pure functions)
# --------------------------------------------------------------------------------------------

def _check_nhwc(x: Array, what: str) -> None:
    if getattr(x, "ndim", None) != 4:
        raise ValueError(f"{what} expects an NHWC array of rank 4; found shape "
                         f"{getattr(x, 'shape', None)}.")


def max_pool_with_indices(x: Array) -> tuple[Array, Array]:
    """2x2 stride-2 max-pooling that also returns where each maximum was.

    Args:
      x: ``(B, H, W, C)`` array. Odd trailing rows/columns are dropped (PyTorch's floor
        mode), so the output is ``(B, H // 2, W // 2, C)``; ``H, W >= 2``.

    Returns:
      ``(pooled, indices)``: ``pooled`` has ``x``'s dtype; ``indices`` is int8 of the same
      shape holding the position of the maximum inside its window, ``dy * 2 + dx`` (0: top
      left, 1: top right, 2: bottom left, 3: bottom right). Ties go to the first maximum
      in that row-major order; a NaN counts as the maximum (the first NaN of a window).

    Differentiable: the gradient of ``pooled`` flows to the argmax position of each
    window only (never split between tied entries). Works under ``jit``/``vmap``.
    """
    _check_nhwc(x, "max_pool_with_indices")
    b, h, w, c = x.shape
    if h < 2 or w < 2:
        raise ValueError(f"max_pool_with_indices needs H, W >= 2; found H={h}, W={w}.")
    ho, wo = h // 2, w // 2
    win = x[:, :2 * ho, :2 * wo].reshape(b, ho, 2, wo, 2, c)
    # The four window positions, in row-major order.
    cands = [win[:, :, dy, :, dx, :] for dy in (0, 1) for dx in (0, 1)]
    pooled, idx = cands[0], jnp.zeros((b, ho, wo, c), jnp.int8)
    for k in (1, 2, 3):
        # Strictly greater keeps the first maximum; a NaN wins as in PyTorch's kernels.
        take = (cands[k] > pooled) | (jnp.isnan(cands[k]) & ~jnp.isnan(pooled))
        pooled = jnp.where(take, cands[k], pooled)
        idx = jnp.where(take, jnp.int8(k), idx)
    return pooled, idx


def max_unpool(x: Array, indices: Array,
               output_hw: tuple[int, int] | None = None) -> Array:
    """Inverse placement of :func:`max_pool_with_indices` (PyTorch ``MaxUnpool2d(2, 2)``).

    Args:
      x: ``(B, h, w, C)`` values to place.
      indices: ``(B, h, w, C)`` window positions ``dy * 2 + dx`` in ``{0..3}`` (any
        integer dtype), as returned by :func:`max_pool_with_indices`.
      output_hw: ``(H, W)`` of the result, ``2h <= H <= 2h + 1`` and likewise ``W``
        (give the pre-pool size when it was odd); default ``(2h, 2w)``.

    Returns:
      ``(B, H, W, C)`` with ``x[b, i, j, c]`` at row ``2i + dy``, column ``2j + dx`` of
      its window and zeros everywhere else (an extra odd row/column is all zeros).
      Differentiable in ``x``: the gradient at ``x[b, i, j, c]`` is the output gradient
      at the position it was placed.
    """
    _check_nhwc(x, "max_unpool")
    if tuple(indices.shape) != tuple(x.shape):
        raise ValueError(f"max_unpool: indices shape {tuple(indices.shape)} must equal the "
                         f"values' shape {tuple(x.shape)}.")
    if not jnp.issubdtype(indices.dtype, jnp.integer):
        raise TypeError(f"max_unpool: indices must be integers (window positions 0..3); "
                        f"found dtype {indices.dtype}.")
    b, h, w, c = x.shape
    out_h, out_w = (2 * h, 2 * w) if output_hw is None else tuple(output_hw)
    if not (2 * h <= out_h <= 2 * h + 1 and 2 * w <= out_w <= 2 * w + 1):
        raise ValueError(f"max_unpool: output_hw {(out_h, out_w)} is incompatible with input "
                         f"{(h, w)}; expected H in [{2 * h}, {2 * h + 1}] and W in "
                         f"[{2 * w}, {2 * w + 1}] (the size before pooling).")
    zero = jnp.zeros((), x.dtype)
    placed = [jnp.where(indices == k, x, zero) for k in range(4)]
    rows = [jnp.stack(placed[2 * dy:2 * dy + 2], axis=3).reshape(b, h, 2 * w, c)
            for dy in (0, 1)]
    y = jnp.stack(rows, axis=2).reshape(b, 2 * h, 2 * w, c)
    if (out_h, out_w) != (2 * h, 2 * w):
        y = jnp.pad(y, ((0, 0), (0, out_h - 2 * h), (0, out_w - 2 * w), (0, 0)))
    return y


def to_torch_indices(indices: Array, input_width: int) -> Array:
    """Window positions -> PyTorch ``MaxPool2d(2, 2, return_indices=True)`` indices.

    Args:
      indices: ``(B, h, w, C)`` positions ``dy * 2 + dx`` from :func:`max_pool_with_indices`.
      input_width: ``W`` of the array that was pooled (before pooling).

    Returns:
      int32 ``(B, h, w, C)``: the flat per-channel index ``(2i + dy) * W + (2j + dx)`` of
      each maximum in the pre-pool ``H x W`` plane (PyTorch's layout after moving channels
      last: ``torch_idx.permute(0, 2, 3, 1)``).
    """
    _check_nhwc(indices, "to_torch_indices")
    _, h, w, _ = indices.shape
    if input_width < 2 * w:
        raise ValueError(f"to_torch_indices: input_width={input_width} is too small for "
                         f"{w} pooled columns; expected the pre-pool width (>= {2 * w}).")
    idx = indices.astype(jnp.int32)
    rows = 2 * jnp.arange(h, dtype=jnp.int32)[None, :, None, None] + idx // 2
    cols = 2 * jnp.arange(w, dtype=jnp.int32)[None, None, :, None] + idx % 2
    return rows * input_width + cols


def from_torch_indices(torch_indices: Array, input_width: int) -> Array:
    """PyTorch flat per-channel max-pool indices (channels last) -> window positions (int8).

    The inverse of :func:`to_torch_indices`; the indices must come from a 2x2 stride-2
    pooling over an input of width ``input_width``.
    """
    _check_nhwc(torch_indices, "from_torch_indices")
    t = jnp.asarray(torch_indices).astype(jnp.int32)
    dy = (t // input_width) % 2
    dx = (t % input_width) % 2
    return (dy * 2 + dx).astype(jnp.int8)


# --------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------

class ConvBNReLU(nn.Module):
    """MTAN's ``conv_layer``: 3x3 conv (pad 1, bias) -> BatchNorm -> ReLU; (B,H,W,*) -> C.

    Attributes:
      features: output channels.
      dtype: computation dtype; parameters stay float32.
      bn_momentum, bn_epsilon: BatchNorm decay (PyTorch momentum 0.1 = 0.9 here) and eps.
    """

    features: int
    dtype: Any = jnp.float32
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        x = Conv(self.features, (3, 3), padding=((1, 1), (1, 1)), use_bias=True,
                    kernel_init=xavier_normal, bias_init=nn.initializers.zeros,
                    dtype=self.dtype, name="conv")(x)
        x = BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                         epsilon=self.bn_epsilon, dtype=self.dtype, name="bn")(x)
        return nn.relu(x)


class SegNetBackbone(nn.Module):
    """MTAN's shared SegNet encoder-decoder, returning named features.

    ``__call__(x, train=False)`` maps ``(B, H, W, C_in)`` images (H, W multiples of 32) to::

        {'encoder0'..'encoder4': (B, H/2^i, W/2^i, f_i)  level i's output before pooling,
         'bottleneck': (B, H/32, W/32, f4)                after the fifth max-pool,
         'decoder': (B, H, W, f0)                         the decoder output}

    URL aligns ``'bottleneck'`` and ``'decoder'`` (PAPER.md section 1).

    Attributes:
      filters: channels per level before ``width``; MTAN's ``(64, 128, 256, 512, 512)``.
        Fewer entries give a shallower network (L levels, input sides multiples of 2^L,
        the bottleneck at H / 2^L): not MTAN's SegNet, but it compiles in a fraction of
        the time, which the tests use.
      width: multiplier on every channel count (rounded, at least 1), for small runs.
      dtype: computation dtype (e.g. ``jnp.bfloat16``); parameters stay float32.
      bn_momentum, bn_epsilon: BatchNorm decay and epsilon (PyTorch defaults).
    """

    filters: Sequence[int] = (64, 128, 256, 512, 512)
    width: float = 1.0
    dtype: Any = jnp.float32
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5

    @property
    def channels(self) -> tuple[int, ...]:
        """The scaled channel count of each level."""
        return tuple(scaled_width(f, self.width) for f in self.filters)

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> dict[str, Array]:
        _check_nhwc(x, "SegNet")
        levels = len(self.filters)
        if not 1 <= levels <= 5:
            raise ValueError(f"SegNet has 1 to 5 levels (MTAN's has 5); filters must have 1-5 "
                             f"entries, found {tuple(self.filters)}.")
        stride = 2 ** levels
        _, h, w, _ = x.shape
        if h % stride or w % stride or h == 0 or w == 0:
            raise ValueError(
                f"SegNet needs input height and width divisible by {stride} ({levels} 2x2 "
                f"poolings); found H={h}, W={w}. Resize or crop the input, e.g. to "
                f"{max(1, round(h / stride)) * stride}x"
                f"{max(1, round(w / stride)) * stride}.")
        f = self.channels
        layer = functools.partial(ConvBNReLU, dtype=self.dtype, bn_momentum=self.bn_momentum,
                                  bn_epsilon=self.bn_epsilon)
        feats: dict[str, Array] = {}
        x = jnp.asarray(x, self.dtype)
        indices = []
        for i in range(levels):
            x = layer(f[i], name=f"encoder_block_{i}")(x, train)
            for k in range(1 if i < 2 else 2):
                x = layer(f[i], name=f"conv_block_enc_{i}_{k}")(x, train)
            feats[f"encoder{i}"] = x
            x, idx = max_pool_with_indices(x)
            indices.append(idx)
        feats["bottleneck"] = x
        for i in reversed(range(levels)):
            x = max_unpool(x, indices[i])
            out = f[max(i - 1, 0)]
            x = layer(out, name=f"decoder_block_{i}")(x, train)
            for k in range(1 if i < 2 else 2):
                x = layer(out, name=f"conv_block_dec_{i}_{k}")(x, train)
        feats["decoder"] = x
        return feats


class DenseHead(nn.Module):
    """MTAN's prediction layer: 3x3 conv (C -> C, bias) then 1x1 conv (C -> out_channels).

    No BatchNorm and no activation in between. ``(B, H, W, C) -> (B, H, W, out_channels)``.
    """

    out_channels: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        conv = functools.partial(Conv, use_bias=True, kernel_init=xavier_normal,
                                 bias_init=nn.initializers.zeros, dtype=self.dtype)
        x = conv(x.shape[-1], (3, 3), padding=((1, 1), (1, 1)), name="conv3x3")(x)
        return conv(self.out_channels, (1, 1), padding="VALID", name="conv1x1")(x)


def l2_normalize(x: Array, axis: int = -1, eps: float = 1e-12) -> Array:
    """``x / max(||x||_2, eps)`` along ``axis`` (PyTorch ``F.normalize``); zeros stay zero.

    Gradients are finite everywhere (no NaN at the zero vector).
    """
    sq = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
    return x * jnp.reciprocal(jnp.sqrt(jnp.maximum(sq, eps * eps)))


def _check_tasks(tasks: Sequence[tuple[str, int]]) -> None:
    names = [t for t, _ in tasks]
    if not names:
        raise ValueError("A dense model needs at least one task, e.g. tasks=(('semantic', 13),).")
    if len(set(names)) != len(names):
        raise ValueError(f"Task names must be unique; found {names}.")
    for name, out in tasks:
        if not isinstance(out, int) or isinstance(out, bool) or out < 1:
            raise ValueError(f"Task {name!r} needs a positive integer out_channels; "
                             f"found {out!r}.")


class DenseHeads(nn.Module):
    """One :class:`DenseHead` per task on a shared feature map.

    ``__call__(x)`` maps ``(B, H, W, C)`` to ``{task: float32 (B, H, W, out_channels)}``;
    outputs of tasks in ``normalize_tasks`` are L2-normalised over channels.

    Attributes:
      tasks: ``((name, out_channels), ...)``; a head's parameters live under its name.
      normalize_tasks: task names whose outputs are unit vectors (``('normal',)``).
      dtype: computation dtype; outputs are cast to float32.
    """

    tasks: Sequence[tuple[str, int]]
    normalize_tasks: Sequence[str] = ("normal",)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> dict[str, Array]:
        preds = {}
        for name, out in self.tasks:
            y = DenseHead(out, dtype=self.dtype, name=name)(x).astype(jnp.float32)
            preds[name] = l2_normalize(y, axis=-1) if name in self.normalize_tasks else y
        return preds


class SegNet(nn.Module):
    """MTAN's SegNet with one head per task (multi-task, or single-task with one task).

    ``__call__(x, train=False) -> (predictions, features)``:

    * ``x``: ``(B, H, W, C_in)`` images, H and W multiples of 32 (else ``ValueError``).
    * ``predictions[task]``: float32 ``(B, H, W, out_channels)``; raw outputs (semantic
      logits, depth) except tasks in ``normalize_tasks``, which are unit vectors over
      channels (zero vectors stay zero).
    * ``features``: the backbone's named features (:class:`SegNetBackbone`), including
      ``'bottleneck'`` ``(B, H/32, W/32, f4)`` and ``'decoder'`` ``(B, H, W, f0)``.

    BatchNorm uses batch statistics and updates ``'batch_stats'`` when ``train`` (apply
    with ``mutable=['batch_stats']``), running averages otherwise.

    Attributes:
      tasks: ``((name, out_channels), ...)``; NYU-v2: ``(('semantic', 13), ('depth', 1),
        ('normal', 3))``, Cityscapes: ``(('semantic', 7), ('depth', 1))``.
      width, filters, dtype, bn_momentum, bn_epsilon: as in :class:`SegNetBackbone`.
      normalize_tasks: names of the tasks whose output is L2-normalised over channels.
    """

    tasks: Sequence[tuple[str, int]] = NYU_TASKS
    width: float = 1.0
    filters: Sequence[int] = (64, 128, 256, 512, 512)
    dtype: Any = jnp.float32
    normalize_tasks: Sequence[str] = ("normal",)
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5

    @property
    def task_names(self) -> tuple[str, ...]:
        """Task names in head order."""
        return tuple(t for t, _ in self.tasks)

    @nn.nowrap
    def _parts(self, backbone_kw: dict[str, Any], heads_kw: dict[str, Any]
               ) -> tuple[SegNetBackbone, DenseHeads]:
        """The two submodules, built with extra constructor arguments (name or parent)."""
        _check_tasks(self.tasks)
        backbone = SegNetBackbone(filters=self.filters, width=self.width, dtype=self.dtype,
                                  bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon,
                                  **backbone_kw)
        heads = DenseHeads(self.tasks, normalize_tasks=self.normalize_tasks, dtype=self.dtype,
                           **heads_kw)
        return backbone, heads

    @nn.nowrap
    def parts(self) -> tuple[SegNetBackbone, DenseHeads]:
        """``(backbone, heads)`` as unbound modules of their own.

        ``backbone.apply({'params': p['backbone'], 'batch_stats': s['backbone']}, x, train)``
        gives the features and ``heads.apply({'params': p['heads']}, features['decoder'])``
        the predictions, exactly as ``__call__`` computes them (``p``, ``s``: this model's
        ``params`` and ``batch_stats``). Used to differentiate w.r.t. the shared feature.
        """
        return self._parts({"parent": None}, {"parent": None})

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> tuple[dict[str, Array],
                                                                dict[str, Array]]:
        backbone, heads = self._parts({"name": "backbone"}, {"name": "heads"})
        feats = backbone(x, train)
        preds = heads(feats["decoder"])
        return preds, feats


# --------------------------------------------------------------------------------------------
# Stretch: dilated ResNet-50 (output stride 8) + DeepLabv3 ASPP heads, the same interface
# --------------------------------------------------------------------------------------------

#: PyTorch's default ``nn.Conv2d`` kernel init (kaiming uniform, a = sqrt(5)), used by
#: torchvision's DeepLab heads.
torch_default_conv_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def _dilated_conv(conv: Any, dilation: int) -> Any:
    """A conv factory like ``conv`` whose 3x3 convs use ``dilation`` (and padding = dilation).

    Lets :class:`ur_jax.models.resnet.Bottleneck` run dilated without changing its
    parameter names or shapes; 1x1 convs are unchanged.
    """
    if dilation == 1:
        return conv

    def make(features: int, kernel_size: Sequence[int], strides: Any = 1, *args: Any,
             **kwargs: Any) -> nn.Module:
        if tuple(kernel_size) == (3, 3):
            kwargs["padding"] = ((dilation, dilation), (dilation, dilation))
            kwargs["kernel_dilation"] = (dilation, dilation)
        return conv(features, kernel_size, strides, *args, **kwargs)

    return make


class DilatedResNet50(nn.Module):
    """ResNet-50 whose last stages trade stride for dilation (DeepLab / MTAN's ResnetDilated).

    ``output_stride`` 8: layer3 and layer4 keep stride 1 and dilate their 3x3 convs by
    2 and 4 (the first block of each by half, 1 and 2, as torchvision's
    ``replace_stride_with_dilation=[False, True, True]``); 16: only layer4 (2, first
    block 1); 32: the plain ResNet-50. Parameter names and shapes are exactly those of
    :data:`ur_jax.models.resnet.ResNet50` (``stem_conv``, ``layer{i}_{j}``...), so an
    ImageNet ResNet-50 tree loads unchanged.

    ``__call__(x, train=False)`` -> ``{'stem', 'layer1'..'layer4'}`` with ``layer4`` of
    shape ``(B, ceil(H / s), ceil(W / s), 2048 * width)``, ``s = output_stride``.

    Attributes:
      width: multiplier on every channel count (rounded, at least 1).
      output_stride: 8, 16 or 32.
      dtype: computation dtype; parameters stay float32.
      bn_momentum, bn_epsilon: BatchNorm decay and epsilon (PyTorch defaults).
    """

    width: float = 1.0
    output_stride: int = 8
    dtype: Any = jnp.float32
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> dict[str, Array]:
        _check_nhwc(x, "DilatedResNet50")
        # Whether layer2, layer3, layer4 replace their stride by dilation.
        dilate = {8: (False, True, True), 16: (False, False, True),
                  32: (False, False, False)}.get(self.output_stride)
        if dilate is None:
            raise ValueError(f"output_stride must be 8, 16 or 32; found {self.output_stride}.")
        conv = functools.partial(Conv, use_bias=False, dtype=self.dtype, kernel_init=conv_init)
        norm = functools.partial(BatchNorm, use_running_average=not train,
                                 momentum=self.bn_momentum, epsilon=self.bn_epsilon,
                                 dtype=self.dtype)
        feats: dict[str, Array] = {}
        x = jnp.asarray(x, self.dtype)
        x = conv(scaled_width(64, self.width), (7, 7), (2, 2), padding=((3, 3), (3, 3)),
                 name="stem_conv")(x)
        x = nn.relu(norm(name="stem_bn")(x))
        x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
        feats["stem"] = x
        dilation = 1
        for i, (blocks, base) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512))):
            strides, previous = (2 if i > 0 else 1), dilation
            if i > 0 and dilate[i - 1]:
                dilation, strides = dilation * 2, 1
            for j in range(blocks):
                d = previous if j == 0 else dilation
                x = Bottleneck(scaled_width(base, self.width), strides if j == 0 else 1,
                               conv=_dilated_conv(conv, d), norm=norm,
                               name=f"layer{i + 1}_{j}")(x)
            feats[f"layer{i + 1}"] = x
        return feats


class ASPP(nn.Module):
    """DeepLabv3 atrous spatial pyramid pooling (torchvision's ``ASPP``).

    Five branches on ``(B, h, w, C)``: a 1x1 conv, one 3x3 conv per rate (dilation =
    padding = rate) and image pooling (global mean, 1x1 conv, broadcast back); each
    bias-free conv + BatchNorm + ReLU with ``features`` channels. They are concatenated
    and projected by a 1x1 conv + BatchNorm + ReLU (+ dropout when ``dropout > 0`` and
    training, which needs ``rngs={'dropout': key}``). Output ``(B, h, w, features)``.
    """

    rates: Sequence[int] = (12, 24, 36)
    features: int = 256
    dropout: float = 0.0
    dtype: Any = jnp.float32
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        conv = functools.partial(Conv, self.features, use_bias=False, dtype=self.dtype,
                                 kernel_init=torch_default_conv_init)
        norm = functools.partial(BatchNorm, use_running_average=not train,
                                 momentum=self.bn_momentum, epsilon=self.bn_epsilon,
                                 dtype=self.dtype)
        branches = [nn.relu(norm(name="b0_bn")(conv((1, 1), name="b0_conv")(x)))]
        for k, r in enumerate(self.rates, start=1):
            y = conv((3, 3), padding=((r, r), (r, r)), kernel_dilation=(r, r),
                     name=f"b{k}_conv")(x)
            branches.append(nn.relu(norm(name=f"b{k}_bn")(y)))
        k = len(self.rates) + 1
        pooled = jnp.mean(x, axis=(1, 2), keepdims=True)
        pooled = nn.relu(norm(name=f"b{k}_bn")(conv((1, 1), name=f"b{k}_conv")(pooled)))
        branches.append(jnp.broadcast_to(pooled, x.shape[:3] + (self.features,)))
        y = conv((1, 1), name="project_conv")(jnp.concatenate(branches, axis=-1))
        y = nn.relu(norm(name="project_bn")(y))
        if self.dropout > 0:
            y = nn.Dropout(self.dropout, deterministic=not train)(y)
        return y


class DeepLabHead(nn.Module):
    """torchvision's ``DeepLabHead``: ASPP -> 3x3 conv + BN + ReLU -> 1x1 conv (bias).

    ``(B, h, w, C) -> (B, h, w, out_channels)``; no upsampling (see :class:`DeepLabHeads`).
    """

    out_channels: int
    rates: Sequence[int] = (12, 24, 36)
    features: int = 256
    dropout: float = 0.0
    dtype: Any = jnp.float32
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        x = ASPP(self.rates, self.features, self.dropout, dtype=self.dtype,
                 bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon, name="aspp")(x, train)
        x = Conv(self.features, (3, 3), padding=((1, 1), (1, 1)), use_bias=False,
                    dtype=self.dtype, kernel_init=torch_default_conv_init, name="conv")(x)
        x = BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                         epsilon=self.bn_epsilon, dtype=self.dtype, name="bn")(x)
        x = nn.relu(x)
        return Conv(self.out_channels, (1, 1), dtype=self.dtype,
                       kernel_init=torch_default_conv_init, name="classifier")(x)


class DeepLabHeads(nn.Module):
    """One :class:`DeepLabHead` per task, each upsampled bilinearly by ``upsample``.

    ``__call__(x, train=False)`` maps the ``(B, h, w, C)`` shared feature to
    ``{task: float32 (B, h * upsample, w * upsample, out_channels)}`` (bilinear with half-pixel
    centres, as PyTorch's ``F.interpolate(align_corners=False)``); tasks in
    ``normalize_tasks`` are L2-normalised over channels after upsampling.
    """

    tasks: Sequence[tuple[str, int]]
    upsample: int = 8
    rates: Sequence[int] = (12, 24, 36)
    features: int = 256
    dropout: float = 0.0
    normalize_tasks: Sequence[str] = ("normal",)
    dtype: Any = jnp.float32
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> dict[str, Array]:
        b, h, w, _ = x.shape
        preds = {}
        for name, out in self.tasks:
            y = DeepLabHead(out, self.rates, self.features, self.dropout, dtype=self.dtype,
                            bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon,
                            name=name)(x, train).astype(jnp.float32)
            y = jax.image.resize(y, (b, h * self.upsample, w * self.upsample, out), "bilinear")
            preds[name] = l2_normalize(y, axis=-1) if name in self.normalize_tasks else y
        return preds


class DeepLabV3ResNet50(nn.Module):
    """Dilated ResNet-50 + one DeepLabv3 (ASPP) head per task, with :class:`SegNet`'s interface.

    The model of MTAN's ResNet experiments (``resnet_mtan.py`` without attention:
    ResnetDilated(ResNet-50) + a torchvision ``DeepLabHead`` per task, predictions resized
    bilinearly to the input size).

    ``__call__(x, train=False) -> (predictions, features)``: ``x`` is ``(B, H, W, C_in)``
    with H and W multiples of ``output_stride``; ``predictions[task]`` float32
    ``(B, H, W, out_channels)`` (normal-like tasks unit length); ``features`` has the
    backbone's ``'stem'``, ``'layer1'..'layer4'`` and, for the URL distillation,
    ``'bottleneck'`` and ``'decoder'``, both the last shared feature ``layer4``
    ``(B, H/s, W/s, 2048 * width)`` (the ASPP decoders are task-specific, so there is no
    shared decoder output). Parameters: ``{'backbone': <ResNet-50 tree>, 'heads': {task:
    ...}}``; :meth:`parts` as for :class:`SegNet`, except that the heads take ``train``.

    Attributes:
      tasks, width, dtype, normalize_tasks, bn_momentum, bn_epsilon: as for :class:`SegNet`.
      output_stride: 8 (MTAN, DeepLab), 16 or 32.
      aspp_rates: ASPP dilation rates (torchvision: ``(12, 24, 36)``).
      aspp_features: ASPP / head channels before ``width`` (256).
      aspp_dropout: dropout after the ASPP projection when training (torchvision: 0.5; here
        0 by default so that training needs no dropout rng).
    """

    tasks: Sequence[tuple[str, int]] = NYU_TASKS
    width: float = 1.0
    output_stride: int = 8
    aspp_rates: Sequence[int] = (12, 24, 36)
    aspp_features: int = 256
    aspp_dropout: float = 0.0
    dtype: Any = jnp.float32
    normalize_tasks: Sequence[str] = ("normal",)
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5

    @nn.nowrap
    def _parts(self, backbone_kw: dict[str, Any], heads_kw: dict[str, Any]
               ) -> tuple[DilatedResNet50, DeepLabHeads]:
        """The two submodules, built with extra constructor arguments (name or parent)."""
        _check_tasks(self.tasks)
        backbone = DilatedResNet50(self.width, self.output_stride, dtype=self.dtype,
                                   bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon,
                                   **backbone_kw)
        heads = DeepLabHeads(self.tasks, self.output_stride, self.aspp_rates,
                             scaled_width(self.aspp_features, self.width), self.aspp_dropout,
                             self.normalize_tasks, dtype=self.dtype,
                             bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon,
                             **heads_kw)
        return backbone, heads

    @nn.nowrap
    def parts(self) -> tuple[DilatedResNet50, DeepLabHeads]:
        """``(backbone, heads)`` as unbound modules (see :meth:`SegNet.parts`)."""
        return self._parts({"parent": None}, {"parent": None})

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> tuple[dict[str, Array],
                                                                dict[str, Array]]:
        _check_nhwc(x, "DeepLabV3ResNet50")
        _, h, w, _ = x.shape
        s = self.output_stride
        if h % s or w % s or h == 0 or w == 0:
            raise ValueError(f"DeepLabV3ResNet50 needs input height and width divisible by "
                             f"output_stride={s}; found H={h}, W={w}. Resize or crop the input.")
        backbone, heads = self._parts({"name": "backbone"}, {"name": "heads"})
        feats = dict(backbone(x, train))
        feats["bottleneck"] = feats["decoder"] = feats["layer4"]
        return heads(feats["layer4"], train), feats


__all__ = ["ASPP", "NYU_TASKS", "SEGNET_STRIDE", "ConvBNReLU", "DeepLabHead", "DeepLabHeads",
           "DeepLabV3ResNet50", "DenseHead", "DenseHeads", "DilatedResNet50", "SegNet",
           "SegNetBackbone", "from_torch_indices", "l2_normalize", "max_pool_with_indices",
           "max_unpool", "to_torch_indices", "torch_default_conv_init", "xavier_normal"]
