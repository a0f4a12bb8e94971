"""Visual Decathlon ResNet-26 checkpoints -> ``resnet26`` models (:class:`ur_jax.models.ResNet26`).

Two PyTorch layouts of the same network are read (``layout=``, detected from the names):

``'url'``: VICO-UoE/UniversalRepresentations, ``VisualDecathlon/`` (the released SDL
teachers, URL and URL + parallel adapter models). ``models.py`` builds a plain ResNet-26;
``attach_ad.py`` (``train_url_ad.py``, ``test_url.py --mode parallel_adapters``) then wraps
every 3x3 conv in ``conv_ad`` (the conv, plus one 1x1 ``parallel_conv`` per domain) and
every BatchNorm in ``domain_bn`` (one per domain). Checkpoints are ``{'net': state_dict,
'optimizer', 'acc', 'epoch'}`` (URL: also ``'adaptors'``, the alignment adapters, and
``'optimizer_adaptor'``, ``'task_acc'``), written by ``utils_pytorch.test`` / ``urltest``
with ``_use_new_zipfile_serialization=False``; no ``DataParallel`` (no ``module.``)::

    conv1.weight | conv1.conv.weight          stem/conv/kernel
    conv1.parallel_conv.<t>.conv.weight       stem/conv_adapter/<d>/alpha
    bn1.* | bn1.bns.<t>.*                     stem/bn[/<d>]/*
    layer<s>.<b>.conv<k>[.conv].weight        layer<s>_<b>/conv<k>/kernel
    layer<s>.<b>.conv<k>.parallel_conv.<t>.conv.weight   layer<s>_<b>/conv<k>_adapter/<d>/alpha
    layer<s>.<b>.bn<k>[.bns.<t>].*            layer<s>_<b>/bn<k>[/<d>]/*
    end_bn[.bns.<t>].*                        end/bn[/<d>]/*
    cls_fn.{weight,bias} | cls_fn.<t>.*       heads/<d>/{kernel,bias}

``'rebuffi'``: srebuffi/residual_adapters ``models.py`` (per-domain ``conv_task`` modules
everywhere, also with one domain; series or parallel adapters)::

    pre_layers_conv.conv.weight               stem/conv/kernel
    pre_layers_conv.parallel_conv.<t>.conv.weight   stem/conv_adapter/<d>/alpha
    pre_layers_conv.bns.<t>.*   (series: .bns.<t>.1.*)   stem/bn/<d>/*
    pre_layers_conv.bns.<t>.0.conv.{0.*,1.weight}  (series)  stem/conv_adapter/<d>/{beta,bias}
    layer<s>.<b>.conv1.* / layer<s>.<b>.conv2.1.*   layer<s>_<b>/conv{1,2}..., as the stem
    end_bns.<t>.0.*                           end/bn/<d>/*
    linears.<t>.*                             heads/<d>/{kernel,bias}

Its released files pickle the whole module (``{'net': nn.Module, 'acc', 'epoch'}``, ``.t7``),
which needs the authors' code to unpickle: load it with their code and save
``net.state_dict()`` (e.g. as ``{'net': state_dict}``) to convert it.

**Domains.** Per-domain lists are indexed by ``config_task.task``, the position in
``--dataset``; every released script passes the ten domains in :data:`RELEASE_DOMAINS`
(``run_train_*.sh``, ``run_test_url.sh``), which puts ``vgg-flowers`` after ``gtsrb``,
unlike :data:`ur_jax.suites.decathlon.DOMAINS` (alphabetical after ImageNet). ``domains=``
names the heads in the checkpoint's order; without it a ten-head checkpoint whose class
counts are those of :data:`RELEASE_DOMAINS` takes those names, and otherwise each head is
named by its class count when that is unique among the Decathlon domains. The converted
model lists its domains in ur_jax's order (so its spec is the one the Decathlon configs
expect); variables are keyed by name, so the order changes nothing else. ``attach_ad.py``
always makes ten per-domain copies (``len(config_task.all_tasks)``) whatever ``--dataset``
is; copies beyond the number of heads were never trained and are ignored (with a warning).

**Computation.** Identical to ur_jax's ResNet-26 (3x3 convs padded by 1, no stem ReLU,
blocks ``relu(bn2(conv2(relu(bn1(conv1 x)))) + s(x))`` with ``s`` = 2x2 average pooling and
appended zero channels where the shape changes, parallel adapters = 1x1 convs at the 3x3
conv's stride added before its BatchNorm, on every 3x3 conv including the stem's, BatchNorm
``eps=1e-5``, global average pooling), except:

* the ``'url'`` layout has **no ReLU after the final BatchNorm** (``models.py``: ``embed`` is
  ``end_bn`` -> ``avgpool``), while ur_jax's ResNet-26 (like Rebuffi's ``end_bns``:
  BatchNorm + ReLU) applies one. Where :class:`~ur_jax.models.ResNet26` has a boolean
  ``end_relu`` attribute the converted spec sets ``end_relu: False`` and the network is
  exact; without it the conversion is refused unless ``end_relu=True`` is passed, which
  accepts the ReLU (negative final-BatchNorm outputs clipped before pooling: different
  features and logits);
* Rebuffi's series adapter ``bn(A(y))``, ``A(y) = y + W bn_a(y)``, is stored with its inner
  BatchNorm ``bn_a``; in eval mode ``bn_a`` is an affine map that is folded into ur_jax's
  :class:`~ur_jax.adapters.SerialAdapter` (``beta = I + diag(s) W^T``, ``bias = W t``) -- exact
  for inference, but fine-tuning the converted model trains the folded map, not ``bn_a``'s
  batch statistics.

The full-size network (width 1) has 32-64-128-256 channels; ``width`` / ``stage_sizes`` are
inferred from the tensors (non-standard widths become explicit ``stem_width`` /
``stage_widths``).
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from ur_jax import checkpointing
from ur_jax.convert.common import (
    ConversionError,
    TensorMap,
    assemble,
    conv_kernel,
    target_shapes,
)
from ur_jax.models.resnet import scaled_width
from ur_jax.models.resnet26 import ResNet26

__all__ = ["BACKBONE", "DEFAULT_TEACHER_DOMAIN", "LAYOUTS", "RELEASE_DOMAINS", "STAGE_SIZES", "STAGE_WIDTHS",
           "STEM_WIDTH", "convert", "detect_layout", "domain_names"]

#: The ur_jax backbone name the converted models use.
BACKBONE = "resnet26"
#: The PyTorch layouts read (see the module docstring).
LAYOUTS = ("url", "rebuffi")
#: The domain order of the released code (``config_task.all_tasks`` and ``--dataset`` in
#: VICO-UoE/UniversalRepresentations ``VisualDecathlon/``): the index of a per-domain module.
RELEASE_DOMAINS = ("imagenet12", "aircraft", "cifar100", "daimlerpedcls", "dtd", "gtsrb",
                   "vgg-flowers", "omniglot", "svhn", "ucf101")
#: Blocks per stage, stem and stage widths of the full-size network.
STAGE_SIZES = (4, 4, 4)
STEM_WIDTH = 32
STAGE_WIDTHS = (64, 128, 256)
#: Head name of a one-head checkpoint whose class count names no Decathlon domain.
DEFAULT_TEACHER_DOMAIN = "teacher"
BN_EPSILON = 1e-5  # PyTorch's BatchNorm2d default, as in both codes
_PROBE = (1, 32, 32, 3)  # any size gives the same variable shapes
_TRUE, _FALSE = ("1", "true", "yes", "y", "on"), ("0", "false", "no", "n", "off")


# ----------------------------------------------------------------------------- options


def _as_bool(value: Any, name: str) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConversionError(f"Option {name}= takes true/false; found {value!r}.")


def _as_width(value: Any) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConversionError(f"Option width= takes a number (e.g. 1.0 or 0.25); found "
                              f"{value!r}.") from None


def _as_size(value: Any) -> int | None:
    if value is None:
        return None
    try:
        size = int(str(value).strip())
    except ValueError:
        size = -1
    if size < 0:
        raise ConversionError(f"Option student_input_size= takes a side in pixels (72) or 0 "
                              f"for none; found {value!r}.")
    return size


def _as_domains(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [d for d in value.split(",") if d]
    domains = tuple(str(d) for d in value)
    if not domains or len(set(domains)) != len(domains):
        raise ConversionError(f"domains= must name each head once; found {list(domains)}.")
    return domains


def _model_has(field: str) -> bool:
    return field in {f.name for f in dataclasses.fields(ResNet26)}


# ----------------------------------------------------------------------------- layout


def detect_layout(state_dict: Mapping[str, Any]) -> str:
    """``'url'`` (VICO-UoE/UniversalRepresentations) or ``'rebuffi'``
    (srebuffi/residual_adapters), from the checkpoint's names.

    Raises:
      ConversionError: neither layout's stem is there.
    """
    names = set(state_dict)
    if any(n.startswith(("pre_layers_conv.", "end_bns.", "linears.")) for n in names):
        return "rebuffi"
    if any(n.startswith(("conv1.", "end_bn.")) for n in names):
        return "url"
    raise ConversionError(
        "Not a Decathlon ResNet-26 checkpoint: expected the stem 'conv1.weight' / "
        "'conv1.conv.weight' (VICO-UoE/UniversalRepresentations) or "
        f"'pre_layers_conv.conv.weight' (srebuffi/residual_adapters); found names like "
        f"{sorted(names)[:8]}.")


def _indices(names: Sequence[str], pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for n in names if (m := rx.fullmatch(n))})


def _contiguous(found: list[int], what: str) -> int:
    if found != list(range(len(found))):
        raise ConversionError(f"{what} must be numbered 0..n-1; found indices {found}.")
    return len(found)


class _Layout:
    """PyTorch names of one layout's parts (``t``: the domain's index, or ``None``)."""

    def __init__(self, layout: str, tensors: TensorMap) -> None:
        self.layout = layout
        has = tensors.has
        if layout == "url":
            self.per_domain = has("bn1.bns.0.weight") or has("end_bn.bns.0.weight")
            self.wrapped = has("conv1.conv.weight")  # attach_ad's conv_ad
        else:
            self.per_domain = True
            self.wrapped = True
        self.series = layout == "rebuffi" and has("pre_layers_conv.bns.0.0.conv.1.weight")

    def conv_prefix(self, stage: int | None, block: int, k: int) -> str:
        """The module of a 3x3 conv: the stem (``stage=None``) or block conv ``k``."""
        if self.layout == "url":
            return "conv1" if stage is None else f"layer{stage}.{block}.conv{k}"
        if stage is None:
            return "pre_layers_conv"
        return f"layer{stage}.{block}.conv1" if k == 1 else f"layer{stage}.{block}.conv2.1"

    def conv(self, prefix: str) -> str:
        return f"{prefix}.conv" if self.wrapped else prefix

    def bn(self, prefix: str, stage: int | None, block: int, k: int, t: int | None) -> str:
        if self.layout == "url":
            name = "bn1" if stage is None else f"layer{stage}.{block}.bn{k}"
            return f"{name}.bns.{t}" if self.per_domain else name
        return f"{prefix}.bns.{t}.1" if self.series else f"{prefix}.bns.{t}"

    def parallel(self, prefix: str, t: int) -> str:
        return f"{prefix}.parallel_conv.{t}.conv.weight"

    def series_parts(self, prefix: str, t: int) -> tuple[str, str]:
        """(inner BatchNorm, 1x1 conv weight) of Rebuffi's series adapter."""
        return f"{prefix}.bns.{t}.0.conv.0", f"{prefix}.bns.{t}.0.conv.1.weight"

    def end_bn(self, t: int | None) -> str:
        if self.layout == "url":
            return f"end_bn.bns.{t}" if self.per_domain else "end_bn"
        return f"end_bns.{t}.0"

    def head(self, t: int | None) -> str:
        base = "cls_fn" if self.layout == "url" else "linears"
        return base if t is None else f"{base}.{t}"

    def heads(self, names: Sequence[str]) -> list[int | None]:
        base = "cls_fn" if self.layout == "url" else "linears"
        if self.layout == "url" and "cls_fn.weight" in names:
            return [None]
        found = _indices(names, rf"{base}\.(\d+)\.weight")
        if not found:
            raise ConversionError(f"No classification head: expected '{base}.weight' or "
                                  f"'{base}.<i>.weight' in the checkpoint.")
        return list(range(_contiguous(found, f"The heads {base}.<i>")))

    def copies(self, names: Sequence[str]) -> int:
        """How many per-domain copies the checkpoint holds (0: shared BatchNorm)."""
        if not self.per_domain:
            return 0
        pattern = (r"(?:bn1|end_bn)\.bns\.(\d+)\.weight" if self.layout == "url"
                   else r"pre_layers_conv\.bns\.(\d+)\.(?:1\.)?weight")
        return _contiguous(_indices(names, pattern), "The per-domain BatchNorms (bns.<i>)")


# ----------------------------------------------------------------------------- domains


def domain_names(num_classes: Sequence[int], domains: Sequence[str] | None = None
                 ) -> tuple[str, ...]:
    """Names of the heads ``num_classes`` (class counts, in the checkpoint's order).

    ``domains`` if given; else :data:`RELEASE_DOMAINS` for ten heads with those domains'
    class counts; else each head's Decathlon domain by its class count when unique (a
    single head with an ambiguous count is :data:`DEFAULT_TEACHER_DOMAIN`).

    Raises:
      ConversionError: ``domains`` has the wrong length, or several heads cannot be named.
    """
    from ur_jax.suites.decathlon.common import NUM_CLASSES

    counts = [int(c) for c in num_classes]
    if domains is not None:
        if len(domains) != len(counts):
            raise ConversionError(f"domains= names {len(domains)} heads ({list(domains)}) but "
                                  f"the checkpoint has {len(counts)} (classes {counts}).")
        return tuple(domains)
    if counts == [NUM_CLASSES[d] for d in RELEASE_DOMAINS]:
        return RELEASE_DOMAINS
    names = []
    for c in counts:
        match = [d for d in RELEASE_DOMAINS if NUM_CLASSES[d] == c]
        names.append(match[0] if len(match) == 1 else None)
    if len(counts) == 1 and names[0] is None:
        warnings.warn(f"A one-head checkpoint with {counts[0]} classes: naming its head "
                      f"{DEFAULT_TEACHER_DOMAIN!r}; pass domains=(name,) to name it.",
                      stacklevel=3)
        return (DEFAULT_TEACHER_DOMAIN,)
    if None in names or len(set(names)) != len(names):
        raise ConversionError(
            f"Cannot name the checkpoint's {len(counts)} heads (classes {counts}) from their "
            f"class counts; pass domains=(...) in the checkpoint's head order (the released "
            f"code's order is {','.join(RELEASE_DOMAINS)}).")
    return tuple(names)


def _ur_order(domains: Sequence[str]) -> list[str]:
    from ur_jax.suites.decathlon.common import DOMAINS

    if all(d in DOMAINS for d in domains):
        return sorted(domains, key=DOMAINS.index)
    return list(domains)


# ----------------------------------------------------------------------------- widths


def _widths(tensors: TensorMap, names: _Layout, width: float | None
            ) -> tuple[dict[str, Any], int, tuple[int, ...]]:
    """Backbone kwargs for the widths (and the checkpoint's stem / stage widths)."""
    def out_channels(prefix: str) -> int:
        name = f"{names.conv(prefix)}.weight"
        if not tensors.has(name):
            raise ConversionError(f"The checkpoint lacks {name!r}, which gives the network's "
                                  f"width.")
        return int(np.shape(tensors.state_dict[name])[0])

    stem = out_channels(names.conv_prefix(None, 0, 1))
    stages = tuple(out_channels(names.conv_prefix(s, 0, 1)) for s in (1, 2, 3))
    w = stages[-1] / STAGE_WIDTHS[-1] if width is None else width
    fits = (scaled_width(STEM_WIDTH, w) == stem
            and all(scaled_width(b, w) == c for b, c in zip(STAGE_WIDTHS, stages)))
    if fits:
        return {"width": w}, stem, stages
    if width is not None:
        raise ConversionError(
            f"width={width} gives channels {scaled_width(STEM_WIDTH, width)}, "
            f"{[scaled_width(b, width) for b in STAGE_WIDTHS]}; the checkpoint has {stem}, "
            f"{list(stages)} (width {stages[-1] / STAGE_WIDTHS[-1]:g}). Leave width= out to "
            f"infer it.")
    return {"width": 1.0, "stem_width": stem, "stage_widths": list(stages)}, stem, stages


def _stage_sizes(names: Sequence[str]) -> tuple[int, ...]:
    sizes = []
    for s in (1, 2, 3):
        found = _indices(names, rf"layer{s}\.(\d+)\..*")
        if not found:
            raise ConversionError(f"The checkpoint has no 'layer{s}.<b>.*' tensors; a ResNet-26 "
                                  f"has three stages layer1..layer3.")
        sizes.append(_contiguous(found, f"The blocks of layer{s}"))
    return tuple(sizes)


# ----------------------------------------------------------------------------- convert


def _put(tree: dict[str, Any], path: Sequence[str], value: Any) -> None:
    node = tree
    for k in path[:-1]:
        node = node.setdefault(k, {})
    node[path[-1]] = value


def _fold_series(w: np.ndarray | None, bn: tuple[dict[str, Any], dict[str, Any]]
                 ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Rebuffi's ``y + W bn_a(y)`` (eval mode) as ur_jax's ``y @ beta + bias``."""
    params, stats = bn
    parts = [w, params["scale"], params["bias"], stats["mean"], stats["var"]]
    if any(p is None for p in parts):
        return None, None
    if w.ndim != 4 or w.shape[2:] != (1, 1) or w.shape[0] != w.shape[1]:
        # passed on as it is, so that assemble reports the mis-shaped weight
        return (conv_kernel(w) if w.ndim == 4 else w), np.zeros(w.shape[:1], np.float32)
    w2 = np.asarray(w[:, :, 0, 0], np.float64)  # (out, in)
    s = np.asarray(params["scale"], np.float64) / np.sqrt(
        np.asarray(stats["var"], np.float64) + BN_EPSILON)
    t = np.asarray(params["bias"], np.float64) - np.asarray(stats["mean"], np.float64) * s
    beta = np.eye(w2.shape[0]) + s[:, None] * w2.T  # (in, out)
    return beta[None, None].astype(np.float32), (w2 @ t).astype(np.float32)


def convert(state_dict: Mapping[str, Any], domains: Sequence[str] | str | None = None,
            adapter: str | None = None, width: float | str | None = None, *,
            layout: str | None = None, per_domain: bool | str | None = None,
            end_relu: bool | str | None = None, student_input_size: int | str | None = None
            ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Converts a Decathlon ResNet-26 state dict to ``(spec, variables)`` of a
    :class:`~ur_jax.models.MultiHeadClassifier` over ``resnet26``.

    Args:
      state_dict: PyTorch names -> arrays (:func:`ur_jax.convert.common.load_state_dict`).
      domains: head names in the checkpoint's order (default: see :func:`domain_names`).
      adapter: ``'none'`` / ``'parallel'`` / ``'series'``; inferred, and checked if given.
      width: the channel multiplier; inferred (last stage's channels / 256), checked if given.
      layout: ``'url'`` or ``'rebuffi'`` (default: :func:`detect_layout`).
      per_domain: per-domain BatchNorm (and adapters) in the converted model. Default: as in
        the checkpoint, with one-domain per-domain checkpoints (Rebuffi's single task)
        converted to a single-domain model. ``True`` on a shared-BatchNorm multi-head model
        (URL without adapters) copies the BatchNorm to every domain (same outputs).
      end_relu: whether the converted network applies a ReLU after its final BatchNorm;
        default: as the released network (``'url'``: no, ``'rebuffi'``: yes). See the module
        docstring: ``False`` needs a ResNet26 with an ``end_relu`` attribute.
      student_input_size: the side every domain but ``imagenet12`` is resized to before the
        backbone (:attr:`~ur_jax.models.MultiHeadClassifier.input_sizes`); 0: none. Default:
        72 for a multi-domain ``'url'`` model without adapters that has an ``imagenet12``
        head (the released MDL / URL students: the authors' ``urltest`` / ``urltestset``
        resize the 64 px crops to 72 x 72 when imagenet12 is trained), else 0 (their
        parallel-adapter code does not resize, nor do single-domain teachers).

    Returns:
      ``(spec, variables)`` for :func:`ur_jax.checkpointing.save_model`: backbone kwargs
      ``width`` (+ ``adapter`` and ``domains`` when per-domain, ``stage_sizes`` if not
      (4, 4, 4)), heads in ur_jax's domain order.

    Raises:
      ConversionError: an unknown layout or option, or tensors that do not fit (every missing,
        unused and mis-shaped tensor named, with its shape).
    """
    sd = {k: np.asarray(v) for k, v in state_dict.items()}
    layout = layout or detect_layout(sd)
    if layout not in LAYOUTS:
        raise ConversionError(f"Unknown layout {layout!r}; expected one of {LAYOUTS}.")
    domains, width = _as_domains(domains), _as_width(width)
    per_domain, end_relu = _as_bool(per_domain, "per_domain"), _as_bool(end_relu, "end_relu")
    tensors = TensorMap(sd)
    names = _Layout(layout, tensors)
    keys = sorted(sd)

    # Heads, domains, per-domain copies.
    heads = names.heads(keys)
    num_classes = [int(np.shape(sd[f"{names.head(t)}.weight"])[0]) for t in heads]
    head_names = domain_names(num_classes, domains)
    copies = names.copies(keys)
    if copies and copies < len(heads):
        raise ConversionError(f"The checkpoint has {len(heads)} heads but only {copies} "
                              f"per-domain BatchNorm copies.")
    if copies > len(heads):
        if layout != "url":
            raise ConversionError(f"The checkpoint has {copies} per-domain copies but "
                                  f"{len(heads)} heads (linears.<i>); they must agree.")
        warnings.warn(f"The checkpoint has {copies} per-domain copies but {len(heads)} heads: "
                      f"copies {len(heads)}..{copies - 1} were never trained (attach_ad.py "
                      f"makes one per config_task.all_tasks entry) and are ignored.",
                      stacklevel=2)
    if per_domain is None:
        per_domain = bool(copies) and len(heads) > 1
    if not per_domain and copies and len(heads) > 1:
        raise ConversionError(f"per_domain=False, but the checkpoint has per-domain BatchNorm "
                              f"for its {len(heads)} domains, which cannot be merged.")

    # Adapter.
    found = ("series" if names.series else
             "parallel" if any(".parallel_conv." in k for k in keys) else "none")
    if adapter is not None and adapter != found:
        raise ConversionError(f"adapter={adapter!r}, but the checkpoint's tensors are those of "
                              f"adapter {found!r}.")
    adapter = found
    if adapter != "none" and not copies:
        raise ConversionError("Adapters without per-domain BatchNorm are not a released layout.")

    # Final ReLU.
    released_relu = layout == "rebuffi"
    end_relu = released_relu if end_relu is None else end_relu
    if not end_relu and not _model_has("end_relu"):
        raise ConversionError(
            "The released network (VICO-UoE/UniversalRepresentations VisualDecathlon/models.py, "
            "embed: end_bn -> avgpool) has no ReLU after its final BatchNorm, but "
            "ur_jax.models.ResNet26 always applies one (it has no 'end_relu' attribute), so the "
            "converted model's features and logits would differ. Pass end_relu=True "
            "(--option end_relu=true) to convert it with the ReLU anyway.")
    if end_relu != released_relu:
        warnings.warn(f"Converting with end_relu={end_relu}: the released network "
                      f"{'applies' if released_relu else 'does not apply'} a ReLU after its "
                      f"final BatchNorm; the converted features and logits differ from it.",
                      stacklevel=2)

    # Spec.
    kwargs, _, _ = _widths(tensors, names, width)
    stage_sizes = _stage_sizes(keys)
    if stage_sizes != STAGE_SIZES:
        kwargs["stage_sizes"] = list(stage_sizes)
    ordered = _ur_order(head_names)
    if per_domain:
        kwargs["adapter"] = adapter
        kwargs["domains"] = ordered
    elif adapter != "none":
        kwargs["adapter"] = adapter
    if not end_relu:  # only reached when ResNet26 has the attribute
        kwargs["end_relu"] = False
    classes = dict(zip(head_names, num_classes))
    size = _as_size(student_input_size)
    if size is None:
        size = 72 if (layout == "url" and adapter == "none" and len(ordered) > 1
                      and "imagenet12" in ordered) else 0
    input_sizes = [(d, size) for d in ordered if d != "imagenet12"] if size else []
    spec = checkpointing.model_spec(BACKBONE, kwargs, [(d, classes[d]) for d in ordered],
                                    input_sizes=input_sizes)
    model = checkpointing.model_from_spec(spec)
    probe = (1, size, size, 3) if input_sizes else _PROBE  # every domain at one size
    shapes = target_shapes(model, {d: jnp.zeros(probe, jnp.float32) for d in model.domains},
                           train=False)

    # Variables.
    converted: dict[str, Any] = {}
    origin: dict[tuple[str, ...], tuple[str, tuple[int, ...]]] = {}
    index = {d: (t if t is not None else 0) for d, t in zip(head_names, heads)}
    bn_domains: list[tuple[str | None, int | None]]
    if per_domain:
        bn_domains = [(d, index[d] if copies else None) for d in ordered]
    else:
        bn_domains = [(None, 0 if copies else None)]

    def take(path: Sequence[str], name: str, transform: Callable | None = None) -> None:
        value = tensors.take(name, transform)
        _put(converted, path, value)
        if name in sd:
            origin[tuple(path)] = (name, tuple(np.shape(sd[name])))

    def batch_norm(path: Sequence[str], name: str) -> None:
        for torch_key, (coll, leaf) in {"weight": ("params", "scale"), "bias": ("params", "bias"),
                                       "running_mean": ("batch_stats", "mean"),
                                       "running_var": ("batch_stats", "var")}.items():
            take((coll, "backbone", *path, leaf), f"{name}.{torch_key}")

    def conv_bn(parent: str, conv: str, bn: str, stage: int | None, block: int, k: int
                ) -> None:
        prefix = names.conv_prefix(stage, block, k)
        take(("params", "backbone", parent, conv, "kernel"), f"{names.conv(prefix)}.weight",
             conv_kernel)
        for d, t in bn_domains:
            sub = (d,) if d is not None else ()
            batch_norm((parent, bn, *sub), names.bn(prefix, stage, block, k, t))
            adapter_path = ("params", "backbone", parent, f"{conv}_adapter", *sub)
            if adapter == "parallel":
                take((*adapter_path, "alpha"), names.parallel(prefix, t), conv_kernel)
            elif adapter == "series":
                bn_name, w_name = names.series_parts(prefix, t)
                inner = tensors.batch_norm(bn_name)
                w = tensors.take(w_name)
                beta, bias = _fold_series(w, inner)
                _put(converted, (*adapter_path, "beta"), beta)
                _put(converted, (*adapter_path, "bias"), bias)
                if w is not None:
                    origin[(*adapter_path, "beta")] = (w_name, tuple(w.shape))

    conv_bn("stem", "conv", "bn", None, 0, 1)
    for s, n in zip((1, 2, 3), stage_sizes):
        for b in range(n):
            for k in (1, 2):
                conv_bn(f"layer{s}_{b}", f"conv{k}", f"bn{k}", s, b, k)
    for d, t in bn_domains:
        batch_norm(("end", "bn", *((d,) if d is not None else ())), names.end_bn(t))
    for d, t in zip(head_names, heads):
        head = names.head(t)
        take(("params", "heads", d, "kernel"), f"{head}.weight", np.transpose)
        take(("params", "heads", d, "bias"), f"{head}.bias")

    ignored = set()
    if layout == "url" and copies > len(heads):
        rx = re.compile(r".*\.bns\.(\d+)\..*|.*\.parallel_conv\.(\d+)\..*")
        for k in keys:
            m = rx.fullmatch(k)
            if m and int(m.group(1) or m.group(2)) >= len(heads):
                ignored.add(k)
    what = f"ResNet-26 checkpoint ({layout} layout, {len(heads)} head(s), adapter {adapter!r})"
    try:
        variables = assemble(converted, shapes, tensors, what=what,
                             ignore_unused=ignored.__contains__)
    except ConversionError as e:
        raise ConversionError(f"{e}{_torch_names(converted, shapes, origin)}") from None
    return spec, variables


def _torch_names(converted: Mapping[str, Any], shapes: Mapping[str, Any],
                 origin: Mapping[tuple[str, ...], tuple[str, tuple[int, ...]]]) -> str:
    """The PyTorch tensors behind mis-shaped variables, for the error message."""
    lines = []
    for path, (name, shape) in origin.items():
        want: Any = shapes
        got: Any = converted
        for k in path:
            want = want.get(k) if isinstance(want, Mapping) else None
            got = got.get(k) if isinstance(got, Mapping) else None
        if want is None or got is None:
            continue
        if tuple(np.shape(got)) != tuple(want.shape):
            lines.append(f"{name} {shape} -> {'/'.join(path)} expects {tuple(want.shape)}")
    if not lines:
        return ""
    return "\n- mis-shaped PyTorch tensors: " + "; ".join(lines)
