"""PyTorch twins of the architectures the converter reads (:mod:`ur_jax.convert`).

Written from the architectures' descriptions and with the released parameter names, for
parity checks of converted models (``tests/convert``) and speed comparisons with the same
weights (``benchmarks/vs_pytorch.py``). Needs PyTorch, like the converter; nothing in
:mod:`ur_jax` imports this module (``import ur_jax.convert`` does not).

* **Meta-Dataset ResNet-18** (VICO-UoE/URL ``models/resnet18.py`` and ``resnet18_mdl.py``):
  :class:`ResNet18MetaDataset`, 5x5/2 stem padded by 1, no max-pool, basic blocks
  (:class:`ResNet18Block`) with 1x1 projection shortcuts, global average pooling, linear
  ``cls_fn`` heads; TSA's residual adapters on the blocks' 3x3 convs (``alphas``).
  :func:`resnet18_metadataset` builds one with random weights.
* **Decathlon ResNet-26**: VICO-UoE/UniversalRepresentations ``VisualDecathlon/models.py``
  (:class:`URLResNet26`; after ``attach_ad.attach_ads`` per-domain BatchNorm
  :class:`DomainBN` and parallel adapters :class:`ConvAd`) and srebuffi/residual_adapters
  ``models.py`` (:class:`RebuffiResNet26`, modes ``'none'`` / ``'parallel'`` /
  ``'series'``). :func:`randomize_resnet26` fills one.
* **SegNet** (MTAN's, as DensePred uses it): :class:`SegNetBackbone` with one
  :class:`SegNetHead` (``pred_task``) per task, as :class:`SingleTaskSegNet` (an STL
  teacher, ``decoder``) or :class:`MultiTaskSegNet` (the URL / MTL model, ``decoders``).
  :func:`randomize_segnet` fills one.
* **MTAN's attention SegNet** (lorenmt/mtan ``model_segnet_mtan.py``): :class:`MTANTwin`,
  the same shared SegNet at the top level with per-task attention modules and
  ``pred_task<k>`` heads; :func:`randomize_segnet` fills it too.

Every ``randomize*`` / builder sets random weights and non-trivial BatchNorm statistics
and returns the network in eval mode.
"""

from __future__ import annotations

import math
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "SEGNET_FILTERS",
    "SEGNET_OUTPUTS",
    "Conv1x1",
    "ConvAd",
    "ConvTask",
    "DomainBN",
    "MTANTwin",
    "MultiTaskSegNet",
    "RebuffiBlock",
    "RebuffiResNet26",
    "ResNet18Block",
    "ResNet18MetaDataset",
    "SegNetBackbone",
    "SegNetHead",
    "SeriesConv1x1",
    "SingleTaskSegNet",
    "URLBlock",
    "URLResNet26",
    "numpy_state",
    "randomize_resnet26",
    "randomize_segnet",
    "resnet18_metadataset",
    "segnet_conv_layer",
]


def numpy_state(net: nn.Module) -> dict[str, np.ndarray]:
    """``net``'s state dict as NumPy copies, without ``num_batches_tracked`` counters."""
    return {k: v.detach().cpu().numpy().copy() for k, v in net.state_dict().items()
            if not k.endswith("num_batches_tracked")}


def _fill(net: nn.Module, g: torch.Generator, conv: Callable[..., None],
          bn: Callable[..., None], linear: Callable[..., None] | None = None) -> None:
    """Calls ``conv`` / ``bn`` / ``linear`` as ``fill(module, g)`` on every Conv2d /
    BatchNorm2d / Linear of ``net`` in ``modules()`` order, without autograd."""
    with torch.no_grad():
        for m in net.modules():
            for kind, fill in ((nn.Conv2d, conv), (nn.BatchNorm2d, bn), (nn.Linear, linear)):
                if fill is not None and isinstance(m, kind):
                    fill(m, g)


# ----------------------------------------------------------------------- Meta-Dataset ResNet-18


class ResNet18Block(nn.Module):
    """URL's BasicBlock (``conv1/bn1/conv2/bn2``, ``downsample = Sequential(conv1x1, bn)``).

    ``forward(x, alphas)``: ``alphas`` = TSA's two ``(C_out, C_in, 1, 1)`` residual
    adapters of ``conv1`` / ``conv2`` (``y = conv(x) + conv1x1_alpha(x)`` at the conv's
    stride), or ``None``.
    """

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                            nn.BatchNorm2d(cout))

    def forward(self, x, alphas=None):
        out = self.conv1(x)
        if alphas is not None:  # TSA's conv_tsa, residual matrix form
            out = out + F.conv2d(x, alphas[0], stride=self.stride)
        mid = F.relu(self.bn1(out))
        out = self.conv2(mid)
        if alphas is not None:
            out = out + F.conv2d(mid, alphas[1])
        out = self.bn2(out)
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class ResNet18MetaDataset(nn.Module):
    """The released Meta-Dataset ResNet-18: ``cls_fn`` is one Linear (``num_classes`` an
    int: a single-domain teacher) or a ModuleList (a sequence: URL / MDL, one per source).

    :meth:`embed` returns the pooled ``(N, 512 * width)`` feature; ``alphas`` maps
    ``(stage, block)`` (stage 1..4, block 0..1) to that block's two TSA adapters.
    """

    def __init__(self, width: float, num_classes: int | Sequence[int], stem_padding: int = 1):
        super().__init__()
        c = [round(64 * width) * k for k in (1, 2, 4, 8)]
        self.conv1 = nn.Conv2d(3, c[0], 5, 2, stem_padding, bias=False)
        self.bn1 = nn.BatchNorm2d(c[0])
        cin = c[0]
        for s, cout in enumerate(c, start=1):
            stride = 1 if s == 1 else 2
            setattr(self, f"layer{s}", nn.Sequential(ResNet18Block(cin, cout, stride),
                                                     ResNet18Block(cout, cout, 1)))
            cin = cout
        if isinstance(num_classes, int):
            self.cls_fn = nn.Linear(c[3], num_classes)
        else:
            self.cls_fn = nn.ModuleList([nn.Linear(c[3], n) for n in num_classes])

    def embed(self, x, alphas: Mapping[tuple[int, int], Sequence[Any]] | None = None):
        """The pooled feature of NCHW images ``x`` (optionally under TSA ``alphas``)."""
        x = F.relu(self.bn1(self.conv1(x)))
        for s in range(1, 5):
            for b, block in enumerate(getattr(self, f"layer{s}")):
                x = block(x, None if alphas is None else alphas[(s, b)])
        return x.mean(dim=(2, 3))

    @property
    def heads(self) -> list[nn.Linear]:
        """The classifier heads in ``cls_fn`` order (one for a teacher)."""
        return list(self.cls_fn) if isinstance(self.cls_fn, nn.ModuleList) else [self.cls_fn]

    def tsa_alphas(self, scale: float = 1e-4) -> dict[tuple[int, int], list[torch.Tensor]]:
        """TSA's adapters at their start, ``scale x I`` (rectangular where the conv widens),
        as leaf tensors that require gradients."""
        out = {}
        for s in range(1, 5):
            for b, block in enumerate(getattr(self, f"layer{s}")):
                out[(s, b)] = [
                    (torch.eye(conv.out_channels, conv.in_channels) * scale)[:, :, None, None]
                    .requires_grad_(True) for conv in (block.conv1, block.conv2)]
        return out


def resnet18_metadataset(width: float, num_classes: int | Sequence[int],
                         seed: int) -> ResNet18MetaDataset:
    """A :class:`ResNet18MetaDataset` with random weights (convs ``N(0, 1/fan_in)``, heads
    ``N(0, 0.01)``) and non-trivial BatchNorm statistics, in eval mode."""
    torch.manual_seed(seed)

    def conv(m, g):
        fan_in = m.weight[0].numel()
        m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (1.0 / fan_in) ** 0.5)

    def bn(m, g):
        n = m.num_features
        m.weight.copy_(torch.rand(n, generator=g) + 0.5)
        m.bias.copy_(torch.randn(n, generator=g) * 0.2)
        m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
        m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
        m.num_batches_tracked.fill_(1234)

    def linear(m, g):
        m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.1)
        m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)

    net = ResNet18MetaDataset(width, num_classes)
    _fill(net, torch.Generator().manual_seed(seed), conv, bn, linear)
    return net.eval()


# ----------------------------------------------------------------------- Decathlon ResNet-26


class Conv1x1(nn.Module):
    """``conv1x1`` of both codes in parallel mode: ``.conv`` a bias-free 1x1 at a stride."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1, stride, 0, bias=False)

    def forward(self, x):
        return self.conv(x)


class SeriesConv1x1(nn.Module):
    """Rebuffi's series ``conv1x1``: ``x + conv1x1(bn(x))``."""

    def __init__(self, c):
        super().__init__()
        self.conv = nn.Sequential(nn.BatchNorm2d(c), nn.Conv2d(c, c, 1, bias=False))

    def forward(self, x):
        return self.conv(x) + x


class ConvAd(nn.Module):
    """``attach_ad.conv_ad``: the 3x3 conv plus one parallel 1x1 per domain."""

    def __init__(self, cin, cout, stride, copies, adapters):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        if adapters:
            self.parallel_conv = nn.ModuleList([Conv1x1(cin, cout, stride)
                                                for _ in range(copies)])
        self.adapters = adapters

    def forward(self, x, t):
        y = self.conv(x)
        return y + self.parallel_conv[t](x) if self.adapters else y


class DomainBN(nn.Module):
    """``attach_ad.domain_bn``: one BatchNorm per domain."""

    def __init__(self, c, copies):
        super().__init__()
        self.bns = nn.ModuleList([nn.BatchNorm2d(c) for _ in range(copies)])

    def forward(self, x, t):
        return self.bns[t](x)


def _call(m, x, t):
    return m(x, t) if isinstance(m, (ConvAd, DomainBN)) else m(x)


def _shortcut(x, cout, stride):
    if stride == 1 and x.shape[1] == cout:
        return x
    r = F.avg_pool2d(x, 2)
    return torch.cat((r, r * 0), 1)


class URLBlock(nn.Module):
    """UniversalRepresentations' basic block; the shortcut pools and pads with zeros."""

    def __init__(self, cin, cout, stride, conv, bn):
        super().__init__()
        self.conv1, self.bn1 = conv(cin, cout, stride), bn(cout)
        self.conv2, self.bn2 = conv(cout, cout, 1), bn(cout)
        self.cout, self.stride = cout, stride

    def forward(self, x, t):
        y = F.relu(_call(self.bn1, _call(self.conv1, x, t), t))
        y = _call(self.bn2, _call(self.conv2, y, t), t)
        return F.relu(y + _shortcut(x, self.cout, self.stride))


class URLResNet26(nn.Module):
    """UniversalRepresentations' ``models.resnet26`` (``copies=0``) or, after
    ``attach_ads``, with ``copies`` per-domain BatchNorms (+ parallel adapters).

    ``forward(x, t)`` returns ``{'stem', 'layer1'..'layer3', 'pooled', 'logits'}`` of domain
    ``t``; ``end_relu`` adds a ReLU after ``end_bn`` (the release has none).
    """

    def __init__(self, num_classes, width=0.25, copies=0, adapters=False, nblocks=(4, 4, 4),
                 end_relu=False):
        super().__init__()

        def conv(cin, cout, s):
            if copies:
                return ConvAd(cin, cout, s, copies, adapters)
            return nn.Conv2d(cin, cout, 3, s, 1, bias=False)

        def bn(c):
            return DomainBN(c, copies) if copies else nn.BatchNorm2d(c)

        c = [int(32 * width), int(64 * width), int(128 * width), int(256 * width)]
        self.conv1, self.bn1 = conv(3, c[0], 1), bn(c[0])
        for s in range(3):
            blocks = [URLBlock(c[s] if b == 0 else c[s + 1], c[s + 1], 2 if b == 0 else 1,
                               conv, bn) for b in range(nblocks[s])]
            setattr(self, f"layer{s + 1}", nn.Sequential(*blocks))
        self.end_bn = bn(c[3])
        if len(num_classes) == 1:
            self.cls_fn = nn.Linear(c[3], num_classes[0])
        else:
            self.cls_fn = nn.ModuleList([nn.Linear(c[3], n) for n in num_classes])
        self.end_relu = end_relu

    def forward(self, x, t=0):
        out = {"stem": _call(self.bn1, _call(self.conv1, x, t), t)}
        x = out["stem"]
        for s in (1, 2, 3):
            for block in getattr(self, f"layer{s}"):
                x = block(x, t)
            out[f"layer{s}"] = x
        x = _call(self.end_bn, x, t)
        if self.end_relu:
            x = F.relu(x)
        out["pooled"] = x.mean((2, 3))
        head = self.cls_fn if isinstance(self.cls_fn, nn.Linear) else self.cls_fn[t]
        out["logits"] = head(out["pooled"])
        return out


class ConvTask(nn.Module):
    """Rebuffi's ``conv_task``: shared 3x3 conv, per-domain BatchNorm and adapter."""

    def __init__(self, cin, cout, stride, n, mode):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        if mode == "series":
            self.bns = nn.ModuleList([nn.Sequential(SeriesConv1x1(cout), nn.BatchNorm2d(cout))
                                      for _ in range(n)])
        else:
            if mode == "parallel":
                self.parallel_conv = nn.ModuleList([Conv1x1(cin, cout, stride)
                                                    for _ in range(n)])
            self.bns = nn.ModuleList([nn.BatchNorm2d(cout) for _ in range(n)])
        self.mode = mode

    def forward(self, x, t):
        y = self.conv(x)
        if self.mode == "parallel":
            y = y + self.parallel_conv[t](x)
        return self.bns[t](y)


class RebuffiBlock(nn.Module):
    """Rebuffi's basic block (``conv2`` = ReLU + :class:`ConvTask`)."""

    def __init__(self, cin, cout, stride, n, mode):
        super().__init__()
        self.conv1 = ConvTask(cin, cout, stride, n, mode)
        self.conv2 = nn.Sequential(nn.ReLU(), ConvTask(cout, cout, 1, n, mode))
        self.cout, self.stride = cout, stride

    def forward(self, x, t):
        y = self.conv2[1](self.conv2[0](self.conv1(x, t)), t)
        return F.relu(y + _shortcut(x, self.cout, self.stride))


class RebuffiResNet26(nn.Module):
    """srebuffi/residual_adapters' ``models.resnet26`` (mode 'none' / 'parallel' / 'series');
    ``forward(x, t)`` as :class:`URLResNet26`'s."""

    def __init__(self, num_classes, width=0.25, mode="parallel", nblocks=(4, 4, 4)):
        super().__init__()
        n = len(num_classes)
        c = [int(32 * width), int(64 * width), int(128 * width), int(256 * width)]
        self.pre_layers_conv = ConvTask(3, c[0], 1, n, mode)
        for s in range(3):
            blocks = [RebuffiBlock(c[s] if b == 0 else c[s + 1], c[s + 1], 2 if b == 0 else 1,
                                   n, mode) for b in range(nblocks[s])]
            setattr(self, f"layer{s + 1}", nn.Sequential(*blocks))
        self.end_bns = nn.ModuleList([nn.Sequential(nn.BatchNorm2d(c[3]), nn.ReLU())
                                      for _ in range(n)])
        self.linears = nn.ModuleList([nn.Linear(c[3], k) for k in num_classes])

    def forward(self, x, t=0):
        out = {"stem": self.pre_layers_conv(x, t)}
        x = out["stem"]
        for s in (1, 2, 3):
            for block in getattr(self, f"layer{s}"):
                x = block(x, t)
            out[f"layer{s}"] = x
        out["pooled"] = self.end_bns[t](x).mean((2, 3))
        out["logits"] = self.linears[t](out["pooled"])
        return out


def randomize_resnet26(net: nn.Module, domains: int = 1, size: int = 32,
                       seed: int = 0) -> nn.Module:
    """Random weights; BatchNorm statistics from one batch of ``size`` px images per domain,
    then perturbed (non-trivial, yet activations stay O(1)). Returns ``net`` in eval mode."""

    def conv(m, g):
        std = math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels))
        m.weight.copy_(torch.randn(m.weight.shape, generator=g) * std
                       * (1.0 if m.kernel_size[0] == 3 else 0.3))

    def bn(m, g):
        m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
        m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
        m.momentum = 1.0

    def linear(m, g):
        m.weight.copy_(torch.randn(m.weight.shape, generator=g) / math.sqrt(m.in_features))
        m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))

    g = torch.Generator().manual_seed(seed)
    _fill(net, g, conv, bn, linear)
    with torch.no_grad():
        net.train()
        for t in range(domains):
            net(torch.randn(8, 3, size, size, generator=g), t)
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.add_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.mul_(0.7 + 0.7 * torch.rand(m.running_var.shape, generator=g))
    return net.eval()


# ----------------------------------------------------------------------- SegNet (MTAN)

#: MTAN's SegNet channels per level at width 1.
SEGNET_FILTERS = (64, 128, 256, 512, 512)

#: DensePred's output activations per task, applied to the heads' raw outputs.
SEGNET_OUTPUTS: Mapping[str, Callable[[torch.Tensor], torch.Tensor]] = types.MappingProxyType({
    "semantic": lambda y: F.log_softmax(y, dim=1), "depth": lambda y: y,
    "normal": lambda y: F.normalize(y, p=2, dim=1)})


def segnet_conv_layer(cin: int, cout: int) -> nn.Sequential:
    """MTAN's ``conv_layer``: 3x3 conv (bias, padding 1), BatchNorm, ReLU."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class SegNetBackbone(nn.Module):
    """MTAN's SegNet; ``forward(x)`` -> ``[bottleneck, decoder output]`` (DensePred)."""

    def __init__(self, f: Sequence[int] = SEGNET_FILTERS):
        super().__init__()
        n = len(f)
        self.encoder_block = nn.ModuleList(
            [segnet_conv_layer(3 if i == 0 else f[i - 1], f[i]) for i in range(n)])
        self.decoder_block = nn.ModuleList(
            [segnet_conv_layer(f[i], f[max(i - 1, 0)]) for i in range(n)])
        enc, dec = [], []
        for i in range(n):
            c = f[max(i - 1, 0)]
            if i < 2:
                enc.append(segnet_conv_layer(f[i], f[i]))
                dec.append(segnet_conv_layer(c, c))
            else:
                enc.append(nn.Sequential(segnet_conv_layer(f[i], f[i]),
                                         segnet_conv_layer(f[i], f[i])))
                dec.append(nn.Sequential(segnet_conv_layer(c, c), segnet_conv_layer(c, c)))
        self.conv_block_enc, self.conv_block_dec = nn.ModuleList(enc), nn.ModuleList(dec)
        self.down = nn.MaxPool2d(2, 2, return_indices=True)
        self.up = nn.MaxUnpool2d(2, 2)

    def forward(self, x):
        indices = []
        for i in range(len(self.encoder_block)):
            x = self.conv_block_enc[i](self.encoder_block[i](x))
            x, idx = self.down(x)
            indices.append(idx)
        bottleneck = x
        for i in reversed(range(len(self.encoder_block))):
            x = self.conv_block_dec[i](self.decoder_block[i](self.up(x, indices[i])))
        return [bottleneck, x]


class SegNetHead(nn.Module):
    """MTAN's ``pred_task``: 3x3 conv ``c -> c`` then 1x1 conv ``c -> out`` (both biased)."""

    def __init__(self, c: int, out: int):
        super().__init__()
        self.pred_task = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, out, 1))

    def forward(self, x):
        return self.pred_task(x)


class SingleTaskSegNet(nn.Module):
    """DensePred's STL model (``backbone`` + ``decoder``); ``forward(x)`` ->
    ``(outputs, raw head outputs, [bottleneck, decoder feature])``."""

    def __init__(self, task: str, out: int, f: Sequence[int] = SEGNET_FILTERS):
        super().__init__()
        self.backbone, self.decoder, self.task = SegNetBackbone(f), SegNetHead(f[0], out), task

    def forward(self, x):
        feats = self.backbone(x)
        raw = {self.task: self.decoder(feats[-1])}
        return {t: SEGNET_OUTPUTS[t](y) for t, y in raw.items()}, raw, feats


class MultiTaskSegNet(nn.Module):
    """DensePred's URL / MTL model (``backbone`` + ``decoders.<task>``), ``tasks`` =
    ``((name, channels), ...)``; ``forward`` as :class:`SingleTaskSegNet`'s."""

    def __init__(self, tasks: Sequence[tuple[str, int]], f: Sequence[int] = SEGNET_FILTERS):
        super().__init__()
        self.backbone = SegNetBackbone(f)
        self.decoders = nn.ModuleDict({t: SegNetHead(f[0], n) for t, n in tasks})

    def forward(self, x):
        feats = self.backbone(x)
        raw = {t: d(feats[-1]) for t, d in self.decoders.items()}
        return {t: SEGNET_OUTPUTS[t](y) for t, y in raw.items()}, raw, feats


class MTANTwin(nn.Module):
    """MTAN's attention SegNet (lorenmt/mtan ``im2im_pred/model_segnet_mtan.py``) with its
    module names, for any tasks and filters.

    Modules: the shared SegNet at the top level (``encoder_block``, ``conv_block_enc``,
    ``decoder_block``, ``conv_block_dec``: :class:`SegNetBackbone`'s layout without the
    ``backbone.`` prefix), per-task attention ``encoder_att.<t>.<j>`` / ``decoder_att.<t>.<j>``
    (``Sequential(1x1 conv, BN, ReLU, 1x1 conv, BN, Sigmoid)``), the shared attention convs
    ``encoder_block_att.<j>`` / ``decoder_block_att.<j>`` (:func:`segnet_conv_layer`), heads
    ``pred_task1 .. pred_task<T>`` and ``logsigma`` (the uncertainty loss weights), so the
    state dict has the released checkpoint's names. ``decoder_block_att.<L-1>`` maps
    ``f[L-1] -> f[L-2]`` (MTAN's ``512 -> 512`` at its filters, where ``f[3] = f[4]``).

    ``forward(x)`` -> ``(outputs, raw head outputs, [bottleneck, shared decoder output])``,
    dicts keyed by task name; outputs as MTAN's: ``log_softmax`` for ``semantic``, the norm
    division (no eps) for ``normal``, raw otherwise. :attr:`masks` holds the last forward's
    attention masks ``{(task, 'encoder' | 'decoder', level): tensor}``.
    """

    def __init__(self, tasks: Sequence[tuple[str, int]], f: Sequence[int] = SEGNET_FILTERS):
        super().__init__()
        f, n = list(f), len(f)
        self.tasks = [t for t, _ in tasks]
        self.encoder_block = nn.ModuleList(
            [segnet_conv_layer(3 if i == 0 else f[i - 1], f[i]) for i in range(n)])
        self.decoder_block = nn.ModuleList(
            [segnet_conv_layer(f[i], f[max(i - 1, 0)]) for i in range(n)])
        enc, dec = [], []
        for i in range(n):
            c = f[max(i - 1, 0)]
            if i < 2:
                enc.append(segnet_conv_layer(f[i], f[i]))
                dec.append(segnet_conv_layer(c, c))
            else:
                enc.append(nn.Sequential(segnet_conv_layer(f[i], f[i]),
                                         segnet_conv_layer(f[i], f[i])))
                dec.append(nn.Sequential(segnet_conv_layer(c, c), segnet_conv_layer(c, c)))
        self.conv_block_enc, self.conv_block_dec = nn.ModuleList(enc), nn.ModuleList(dec)

        def att(cin: int, c: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, c, 1), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                                 nn.Conv2d(c, c, 1), nn.BatchNorm2d(c), nn.Sigmoid())

        self.encoder_att = nn.ModuleList([nn.ModuleList(
            [att(f[j] if j == 0 else 2 * f[j], f[j]) for j in range(n)]) for _ in tasks])
        self.decoder_att = nn.ModuleList([nn.ModuleList(
            [att(f[j] + f[max(j - 1, 0)], f[max(j - 1, 0)]) for j in range(n)])
            for _ in tasks])
        self.encoder_block_att = nn.ModuleList(
            [segnet_conv_layer(f[j], f[min(j + 1, n - 1)]) for j in range(n)])
        self.decoder_block_att = nn.ModuleList(
            [segnet_conv_layer(f[j], f[max(j - 1, 0)]) for j in range(n)])
        for k, (_, out) in enumerate(tasks, start=1):
            setattr(self, f"pred_task{k}",
                    nn.Sequential(nn.Conv2d(f[0], f[0], 3, padding=1), nn.Conv2d(f[0], out, 1)))
        self.logsigma = nn.Parameter(torch.full((len(tasks),), -0.5))
        self.down = nn.MaxPool2d(2, 2, return_indices=True)
        self.up = nn.MaxUnpool2d(2, 2)
        self.masks: dict[tuple[str, str, int], torch.Tensor] = {}

    def forward(self, x):
        n = len(self.encoder_block)
        first, last, unpooled, dec_out, indices = [], [], [None] * n, [None] * n, []
        for i in range(n):  # the shared network
            x = self.encoder_block[i](x)
            first.append(x)
            x = self.conv_block_enc[i](x)
            last.append(x)
            x, idx = self.down(x)
            indices.append(idx)
        bottleneck = x
        for i in reversed(range(n)):
            x = self.up(x, indices[i])
            unpooled[i] = x
            x = self.conv_block_dec[i](self.decoder_block[i](x))
            dec_out[i] = x
        raw = {}
        for t, name in enumerate(self.tasks):  # MTAN's order: task by task
            prev = None
            for j in range(n):
                inp = first[j] if j == 0 else torch.cat((first[j], prev), dim=1)
                mask = self.encoder_att[t][j](inp)
                self.masks[(name, "encoder", j)] = mask
                prev = F.max_pool2d(self.encoder_block_att[j](mask * last[j]), 2, 2)
            for j in reversed(range(n)):
                y = F.interpolate(prev, scale_factor=2, mode="bilinear", align_corners=True)
                y = self.decoder_block_att[j](y)
                mask = self.decoder_att[t][j](torch.cat((unpooled[j], y), dim=1))
                self.masks[(name, "decoder", j)] = mask
                prev = mask * dec_out[j]
            raw[name] = getattr(self, f"pred_task{t + 1}")(prev)
        outs = {}
        for name, y in raw.items():
            if name == "semantic":
                outs[name] = F.log_softmax(y, dim=1)
            elif name == "normal":
                outs[name] = y / torch.norm(y, p=2, dim=1, keepdim=True)
            else:
                outs[name] = y
        return outs, raw, [bottleneck, x]


def randomize_segnet(model: nn.Module, seed: int) -> nn.Module:
    """Random weights (He-normal convs, small biases) and non-trivial BatchNorm statistics;
    returns ``model`` in eval mode."""

    def conv(m, g):
        fan = m.weight[0].numel()
        m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan) ** 0.5)
        m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)

    def bn(m, g):
        c = m.num_features
        m.weight.copy_(1.0 + 0.3 * torch.randn(c, generator=g))
        m.bias.copy_(0.2 * torch.randn(c, generator=g))
        m.running_mean.copy_(0.3 * torch.randn(c, generator=g))
        m.running_var.copy_(0.5 + torch.rand(c, generator=g))

    _fill(model, torch.Generator().manual_seed(seed), conv, bn)
    return model.eval()
