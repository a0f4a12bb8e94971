"""URL's Meta-Dataset ResNet-18 checkpoints -> ``resnet18_metadataset`` models.

The released PyTorch models of URL (VICO-UoE/URL) are saved by its ``CheckPointer``
(``models/model_utils.py``) as ``{'epoch', 'args', 'state_dict', 'best_val_acc',
'best_val_loss', 'optimizer', ...}`` in ``model_best.pth.tar`` / ``checkpoint.pth.tar``;
the networks are not wrapped in ``DataParallel`` (no ``module.`` prefix, stripped anyway by
:func:`ur_jax.convert.common.load_state_dict`). Two networks share one backbone layout:

* the eight single-domain teachers (``models/resnet18.py``, ``train_net.py``): one linear
  head ``cls_fn.{weight,bias}``;
* the URL student and the MDL baseline (``models/resnet18_mdl.py``, ``train_net_url.py`` /
  ``train_net_mdl.py``): an ``nn.ModuleList`` of linear heads ``cls_fn.<i>.{weight,bias}``,
  one per training source in the order of ``--data.train`` (``scripts/train_resnet18_url.sh``
  and ``_mdl.sh``: ilsvrc_2012 omniglot aircraft cu_birds dtd quickdraw fungi vgg_flower, i.e.
  :data:`ur_jax.suites.metadataset.common.TRAIN_SOURCES`).

PyTorch name -> ur_jax variable (``params`` / ``batch_stats`` under ``backbone``)::

    conv1.weight (O, I, 5, 5)               stem_conv/kernel (5, 5, I, O)
    bn1.{weight,bias,running_mean,running_var}   stem_bn/{scale,bias} + {mean,var}
    layer<s>.<b>.conv{1,2}.weight           layer<s>_<b>/conv{1,2}/kernel
    layer<s>.<b>.bn{1,2}.*                  layer<s>_<b>/bn{1,2}/*
    layer<s>.0.downsample.0.weight          layer<s>_0/downsample_conv/kernel   (s = 2, 3, 4)
    layer<s>.0.downsample.1.*               layer<s>_0/downsample_bn/*
    cls_fn[.<i>].{weight,bias}              heads/<domain>/{kernel,bias}   (params only)

The computation is the same: 5x5 stride-2 stem with padding 1, no max-pool
(``initial_pool = False``), basic blocks with 3x3 convs padded by 1 and a 1x1 strided
projection + BatchNorm shortcut, BatchNorm ``eps=1e-5``, global average pooling to the
512-d feature (dropout 0), linear heads; TSA's adapters (``models/tsa.py``) wrap exactly the
3x3 convs of the blocks, which is where :class:`ur_jax.models.ResNet`'s ``conv_adapter``
hook sits. One difference in URL's own code: ``models/resnet18_mdl.py``, the network the
URL and MDL models are *trained* as, pads its stem by 2 (``resnet18.py``: 1), while every
evaluation script (``test_extractor*.py``) rebuilds the model with ``resnet18.py``, i.e.
pads by 1, as ur_jax does; converted URL / MDL models therefore reproduce the authors'
evaluation (the paper's numbers), not the features of their training-time forward pass
(84x84 inputs give a 41x41 stem map here, 42x42 there).

Only linear heads convert (``--model.classifier linear``, URL's default); a cosine
classifier (``cls_fn.scale``) is refused.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
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
from ur_jax.suites.metadataset.common import CLASS_SPLITS, TRAIN_SOURCES
from ur_jax.models.resnet import scaled_width

__all__ = ["BACKBONE", "DEFAULT_TEACHER_DOMAIN", "STAGE_SIZES", "STAGE_WIDTHS", "convert",
           "head_modules"]

#: The ur_jax backbone name the converted models use.
BACKBONE = "resnet18_metadataset"
#: Blocks per stage and base widths of the network (ResNet-18, 512-d feature).
STAGE_SIZES = (2, 2, 2, 2)
STAGE_WIDTHS = (64, 128, 256, 512)
#: The head name of a one-head (single-domain teacher) checkpoint unless ``domains`` is given.
DEFAULT_TEACHER_DOMAIN = "teacher"
#: How many mis-shaped PyTorch tensors an error message spells out.
_SHOWN = 20
#: Input size used to trace the model's variable shapes (any size gives the same shapes).
_PROBE = (1, 84, 84, 3)


def _strip(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
    out = {}
    for name, value in state_dict.items():
        while name.startswith("module."):
            name = name[len("module."):]
        if name in out:
            raise ConversionError(f"The checkpoint holds {name!r} twice (with and without a "
                                  f"'module.' prefix).")
        out[name] = np.asarray(value)
    return out


def head_modules(state_dict: Mapping[str, Any]) -> list[str]:
    """The PyTorch module names of the checkpoint's classifier heads, in order:
    ``['cls_fn']`` (a teacher's ``nn.Linear``) or ``['cls_fn.0', ..., 'cls_fn.<N-1>']``
    (URL / MDL's ``nn.ModuleList``).

    Raises:
      ConversionError: no ``cls_fn`` tensors, both layouts at once, a gap in the list's
        indices, or a cosine classifier (``cls_fn[.<i>].scale``; ur_jax heads are linear).
    """
    names = [n for n in state_dict if n == "cls_fn" or n.startswith("cls_fn.")]
    cosine = sorted(n for n in names if n.endswith(".scale"))
    if cosine:
        raise ConversionError(
            f"The checkpoint's classifier is URL's CosineClassifier ({', '.join(cosine)}); "
            f"ur_jax heads are linear (nn.Linear, URL's default --model.classifier linear). "
            f"Convert a checkpoint trained with linear heads.")
    single = [n for n in names if n in ("cls_fn.weight", "cls_fn.bias")]
    indexed = sorted({int(m.group(1)) for n in names
                      if (m := re.fullmatch(r"cls_fn\.(\d+)\.(weight|bias)", n))})
    odd = sorted(set(names) - set(single)
                 - {n for n in names if re.fullmatch(r"cls_fn\.\d+\.(weight|bias)", n)})
    if odd:
        raise ConversionError(f"Unexpected classifier tensors {odd}: expected cls_fn.weight / "
                              f"cls_fn.bias (one head) or cls_fn.<i>.weight / .bias (one per "
                              f"domain).")
    if single and indexed:
        raise ConversionError(f"The checkpoint holds both one head ({single}) and a list of "
                              f"heads (cls_fn.<i>, i in {indexed}); expected one layout.")
    if single:
        return ["cls_fn"]
    if not indexed:
        raise ConversionError(
            "The checkpoint has no classifier (no cls_fn.* tensors; found e.g. "
            f"{sorted(state_dict)[:6]}). Expected a URL ResNet-18 state dict with "
            "cls_fn.weight (a teacher) or cls_fn.<i>.weight (URL / MDL).")
    if indexed != list(range(len(indexed))):
        raise ConversionError(f"The heads cls_fn.<i> have indices {indexed}; expected "
                              f"0..{len(indexed) - 1} without gaps.")
    return [f"cls_fn.{i}" for i in indexed]


def _domains(domains: Sequence[str] | str | None, count: int) -> tuple[str, ...]:
    if domains is None:
        if count == 1:
            return (DEFAULT_TEACHER_DOMAIN,)
        if count == len(TRAIN_SOURCES):
            return tuple(TRAIN_SOURCES)
        raise ConversionError(
            f"The checkpoint has {count} heads; names are known only for 1 (a teacher: "
            f"{DEFAULT_TEACHER_DOMAIN!r}) or {len(TRAIN_SOURCES)} (URL / MDL: "
            f"{', '.join(TRAIN_SOURCES)}). Pass domains=(...) (CLI: --domains a,b,...) with "
            f"{count} names in the order of the training run's --data.train.")
    if isinstance(domains, str):
        domains = [d.strip() for d in domains.split(",")]
    domains = tuple(str(d) for d in domains)
    if len(domains) != count or any(not d for d in domains) or len(set(domains)) != count:
        raise ConversionError(f"domains={domains!r}: expected {count} distinct non-empty names "
                              f"(the checkpoint has {count} head(s)), one per head in the "
                              f"order of cls_fn.")
    return domains


def _as_bool(value: Any, name: str) -> bool:
    if isinstance(value, str):
        v = value.strip().lower()
        if v in ("1", "true", "yes", "on"):
            return True
        if v in ("0", "false", "no", "off"):
            return False
        raise ConversionError(f"{name}={value!r}: expected true or false.")
    return bool(value)


def _infer_width(tensors: Mapping[str, np.ndarray], width: Any) -> float:
    if width is not None:
        try:
            w = float(width)
        except (TypeError, ValueError):
            raise ConversionError(f"width={width!r}: expected a number (e.g. 1.0).") from None
        if not w > 0:
            raise ConversionError(f"width={width!r}: expected a positive multiplier.")
        stem = tensors.get("conv1.weight")
        if stem is not None and np.ndim(stem) == 4 and np.shape(stem)[0] != scaled_width(
                STAGE_WIDTHS[0], w):
            raise ConversionError(
                f"width={width!r} means a {scaled_width(STAGE_WIDTHS[0], w)}-channel stem, but "
                f"conv1.weight is {tuple(np.shape(stem))}: the checkpoint's width is "
                f"{np.shape(stem)[0] / STAGE_WIDTHS[0]:g}. Leave width unset to infer it.")
        return w
    stem = tensors.get("conv1.weight")
    if stem is None or np.ndim(stem) != 4:
        raise ConversionError(
            "Cannot infer the width: the checkpoint has no 4-D conv1.weight (the 5x5 stem conv; "
            f"found {None if stem is None else tuple(np.shape(stem))}). Is this a URL ResNet-18 "
            "checkpoint? Pass width= to skip the inference.")
    return np.shape(stem)[0] / STAGE_WIDTHS[0]


def _check_classes(domains: Sequence[str], classes: Sequence[int]) -> None:
    wrong = [f"{d}: {n} classes, official {CLASS_SPLITS[d][0]}"
             for d, n in zip(domains, classes)
             if d in TRAIN_SOURCES and n != CLASS_SPLITS[d][0]]
    if wrong:
        raise ConversionError(
            "Head sizes do not match the official Meta-Dataset training classes of the domain "
            f"names given to them ({'; '.join(wrong)}): the heads are probably in another order "
            f"than {tuple(domains)}. Pass domains= in the order of the run's --data.train, or "
            "check_classes=False for a model trained on other class splits.")


def convert(state_dict: Mapping[str, Any], domains: Sequence[str] | str | None = None,
            width: float | str | None = None, check_classes: bool | str = True
            ) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(spec, variables)`` of a URL Meta-Dataset ResNet-18 state dict (teacher, URL or MDL).

    Args:
      state_dict: PyTorch name -> array (``module.`` prefixes are stripped,
        ``num_batches_tracked`` counters ignored).
      domains: names of the heads in ``cls_fn`` order (a tuple, or a comma-separated
        string). Default: ``('teacher',)`` for one head, the eight Meta-Dataset training
        sources (:data:`~ur_jax.suites.metadataset.common.TRAIN_SOURCES`, URL's order) for eight.
        A teacher used as ``config.teachers.checkpoints.<source>`` needs ``domains=(source,)``.
      width: the width multiplier (default: inferred from ``conv1.weight``, 64 channels = 1.0).
      check_classes: refuse heads named after a Meta-Dataset training source whose class count
        differs from the official split's (a sign of a wrong ``domains`` order).

    Returns:
      ``spec`` (:func:`ur_jax.checkpointing.model_spec`: backbone ``'resnet18_metadataset'``,
      ``{'width': width}``, one head per domain) and ``variables``
      ``{'params': {'backbone', 'heads'}, 'batch_stats': {'backbone'}}`` (float32), ready for
      :func:`ur_jax.checkpointing.save_model`.

    Raises:
      ConversionError: listing every missing, unused or mis-shaped tensor by name, or a
        classifier / ``domains`` / ``width`` that does not fit.
    """
    tensors = _strip(state_dict)
    heads = head_modules(tensors)
    names = _domains(domains, len(heads))
    missing = [f"{h}.weight" for h in heads if f"{h}.weight" not in tensors]
    if missing:
        raise ConversionError(f"The checkpoint lacks the classifier weight(s) {missing} (their "
                              f"shapes give the class counts).")
    bad = [f"{h}.weight {tuple(np.shape(tensors[f'{h}.weight']))}" for h in heads
           if np.ndim(tensors[f"{h}.weight"]) != 2]
    if bad:
        raise ConversionError(f"Classifier weights must be 2-D (classes, features); found "
                              f"{', '.join(bad)}.")
    classes = [int(np.shape(tensors[f"{h}.weight"])[0]) for h in heads]
    if _as_bool(check_classes, "check_classes"):
        _check_classes(names, classes)
    w = _infer_width(tensors, width)
    spec = checkpointing.model_spec(BACKBONE, {"width": w}, list(zip(names, classes)))
    model = checkpointing.model_from_spec(spec)
    shapes = target_shapes(model, {d: jnp.zeros(_PROBE, jnp.float32) for d in names},
                           train=False)

    t = TensorMap(tensors)
    origin: dict[tuple[str, ...], str] = {}  # ur_jax path -> PyTorch name, for error messages

    def conv(path: tuple[str, ...], name: str) -> np.ndarray | None:
        origin[("params",) + path + ("kernel",)] = f"{name}.weight"
        return t.take(f"{name}.weight", lambda x: _named(conv_kernel, f"{name}.weight", x))

    def bn(path: tuple[str, ...], name: str, params: dict, stats: dict) -> None:
        affine, running = t.batch_norm(name)
        for ours, theirs in (("scale", "weight"), ("bias", "bias")):
            origin[("params",) + path + (ours,)] = f"{name}.{theirs}"
        for ours, theirs in (("mean", "running_mean"), ("var", "running_var")):
            origin[("batch_stats",) + path + (ours,)] = f"{name}.{theirs}"
        params[path[-1]], stats[path[-1]] = affine, running

    bp: dict[str, Any] = {}
    bs: dict[str, Any] = {}
    bp["stem_conv"] = {"kernel": conv(("backbone", "stem_conv"), "conv1")}
    bn(("backbone", "stem_bn"), "bn1", bp, bs)
    want_backbone = shapes["params"]["backbone"]
    for stage, blocks in enumerate(STAGE_SIZES, start=1):
        for b in range(blocks):
            ours, theirs = f"layer{stage}_{b}", f"layer{stage}.{b}"
            p: dict[str, Any] = {}
            st: dict[str, Any] = {}
            for i in (1, 2):
                p[f"conv{i}"] = {"kernel": conv(("backbone", ours, f"conv{i}"),
                                                f"{theirs}.conv{i}")}
                bn(("backbone", ours, f"bn{i}"), f"{theirs}.bn{i}", p, st)
            if "downsample_conv" in want_backbone.get(ours, {}):
                p["downsample_conv"] = {"kernel": conv(("backbone", ours, "downsample_conv"),
                                                       f"{theirs}.downsample.0")}
                bn(("backbone", ours, "downsample_bn"), f"{theirs}.downsample.1", p, st)
            bp[ours], bs[ours] = p, st
    head_params = {}
    for d, h in zip(names, heads):
        head_params[d] = t.dense(h)
        origin[("params", "heads", d, "kernel")] = f"{h}.weight"
        origin[("params", "heads", d, "bias")] = f"{h}.bias"
    converted = {"params": {"backbone": bp, "heads": head_params}, "batch_stats": {"backbone": bs}}
    try:
        variables = assemble(converted, shapes, t, what=f"{BACKBONE} checkpoint (width {w:g}, "
                             f"heads {dict(zip(names, classes))})",
                             ignore_unused=lambda n: n.endswith("num_batches_tracked"))
    except ConversionError as e:
        raise ConversionError(f"{e}{_torch_names(converted, shapes, origin, tensors)}") from None
    return spec, variables


def _named(fn: Any, name: str, x: np.ndarray) -> np.ndarray:
    try:
        return fn(x)
    except ConversionError as e:
        raise ConversionError(f"{name}: {e}") from None


def _torch_names(converted: Mapping[str, Any], shapes: Mapping[str, Any],
                 origin: Mapping[tuple[str, ...], str], tensors: Mapping[str, np.ndarray]) -> str:
    """The PyTorch tensors behind the shape mismatches (``assemble`` names ur_jax paths)."""

    def get(tree: Any, path: tuple[str, ...]) -> Any:
        for k in path:
            if not isinstance(tree, Mapping) or k not in tree:
                return None
            tree = tree[k]
        return tree

    lines = []
    for path, name in origin.items():
        got, want = get(converted, path), get(shapes, path)
        if got is None or want is None or tuple(np.shape(got)) == tuple(want.shape):
            continue
        lines.append(f"{name} is {tuple(np.shape(tensors[name]))}, the architecture needs "
                     f"{_torch_shape(path, tuple(want.shape))} (for {'/'.join(path)})")
    if not lines:
        return ""
    more = f"; ... and {len(lines) - _SHOWN} more" if len(lines) > _SHOWN else ""
    return "\n- mis-shaped PyTorch tensors: " + "; ".join(lines[:_SHOWN]) + more


def _torch_shape(path: tuple[str, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    if path[-1] == "kernel" and len(shape) == 4:
        return (shape[3], shape[2], shape[0], shape[1])
    if path[-1] == "kernel" and len(shape) == 2:
        return (shape[1], shape[0])
    return shape
