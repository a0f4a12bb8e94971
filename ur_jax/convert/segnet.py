"""The authors' released SegNet checkpoints (NYU-v2 dense prediction) as ur_jax ``segnet`` /
``mtan`` models.

Two PyTorch layouts of MTAN's SegNet are read (both give :class:`ur_jax.models.segnet.SegNet`,
written by :func:`ur_jax.checkpointing.save_model` with a :func:`~ur_jax.checkpointing.
dense_model_spec` for the dense model ``'segnet'``), and MTAN's attention SegNet (the dense
model ``'mtan'``), all with ``--arch segnet``:

* **DensePred** (``VICO-UoE/UniversalRepresentations``, ``DensePred/models``): the released
  single-task teachers (``nyu_stl.py``: ``SingleTaskModel`` with ``backbone`` and one head
  ``decoder``) and the URL model (``nyu_url.py``: ``MultiTaskModel`` with ``backbone`` and a
  ``ModuleDict`` ``decoders.<task>``), saved as ``torch.save({'epoch', 'state_dict',
  'best_performance', 'optimizer', ...})``; the URL file also holds the distillation adaptors
  (``adaptor_<task>`` entries beside ``state_dict``), which are not part of the model and are
  not read. Tensor names::

      backbone.encoder_block.<i>.{0: Conv2d, 1: BatchNorm2d}.*          i = 0..4
      backbone.conv_block_enc.<i>.{0,1}.*          (i <= 1: one conv_layer)
      backbone.conv_block_enc.<i>.<k>.{0,1}.*      (i >= 2: k = 0, 1)
      backbone.decoder_block.<i>.{0,1}.*,  backbone.conv_block_dec.<i>[.<k>].{0,1}.*
      decoder.pred_task.{0: 3x3 Conv2d, 1: 1x1 Conv2d}.{weight,bias}     (single task)
      decoders.<task>.pred_task.{0,1}.{weight,bias}                      (multi-task)

* **MTAN** (``lorenmt/mtan``, ``im2im_pred/model_segnet_single.py`` / ``_split.py``): the
  same backbone names without the ``backbone.`` prefix, heads ``pred_task`` (single task) or
  ``pred_task1``, ``pred_task2``, ``pred_task3`` (split), and ``logsigma`` (uncertainty loss
  weights, not part of the network: ignored).

* **MTAN's attention SegNet** (``lorenmt/mtan``, ``im2im_pred/model_segnet_mtan.py``):
  recognised by its ``encoder_att`` / ``decoder_att`` tensors and converted to
  :class:`ur_jax.models.mtan.MTANSegNet` (the dense model ``'mtan'`` in the saved spec,
  same ``--arch segnet``). Tensor names::

      encoder_block.<i>..., conv_block_enc..., decoder_block..., conv_block_dec...   (as above)
      encoder_att.<t>.<j>.{0: 1x1 Conv2d, 1: BN, 3: 1x1 Conv2d, 4: BN}.*   task t, level j
      decoder_att.<t>.<j>.{0,1,3,4}.*
      encoder_block_att.<j>.{0,1}.*,  decoder_block_att.<j>.{0,1}.*          (shared)
      pred_task1, pred_task2, ... .{0: 3x3 Conv2d, 1: 1x1 Conv2d}.*         (task t = k - 1)
      logsigma                                                               (ignored)

  ``encoder_att.<t>`` / ``decoder_att.<t>`` belong to the head ``pred_task<t + 1>``; they
  become ``heads/<task>/encoder_att_<j>/{conv0, bn0, conv1, bn1}`` (and ``decoder_att_<j>``),
  the shared blocks ``encoder_block_att_<j>`` / ``decoder_block_att_<j>`` (see
  :mod:`ur_jax.models.mtan`). The attention modules must sit at the top level, beside
  ``encoder_block``: a DensePred (``backbone.``) checkpoint with attention tensors is refused.
  The attention layers (1x1 convs, BatchNorm, sigmoid, 2x2 max-pooling and bilinear x2
  upsampling with ``align_corners=True``) compute what MTAN's do; ``'bottleneck'`` and
  ``'decoder'`` are the shared network's (MTAN's ``g_maxpool[-1]`` and ``g_decoder[-1][-1]``).

Task names come from the ``decoders.<task>`` keys when the checkpoint has them, otherwise
from each head's output channels (1 -> ``depth``, 3 -> ``normal``, any other count ->
``semantic``, e.g. NYU-v2's 13 classes); ``tasks=`` (or the CLI's ``--domains``) overrides.
Channel counts give the width (``width = channels of level 0 / 64``; a checkpoint whose
levels are not MTAN's ``(64, 128, 256, 512, 512)`` scaled also records its ``filters``).

Outputs: the PyTorch models return ``log_softmax`` over classes for ``semantic``, raw
``depth`` and ``F.normalize``-d ``normal`` (DensePred's ``out_fns.py``; MTAN divides by the
norm without eps). The converted ur_jax model returns the semantic *logits* (apply
``jax.nn.log_softmax(..., axis=-1)`` for the PyTorch quantity), the same raw depth and the
same L2-normalised normals (``y / max(|y|, 1e-12)``), channels last. Its ``'bottleneck'`` and
``'decoder'`` features are the two entries of the PyTorch backbone's output list. Every
layer computes what the PyTorch one does (3x3 convs with padding 1 and bias, BatchNorm eps
1e-5 with running statistics in eval mode, 2x2 max-pooling with indices, first maximum on
ties, and max-unpooling), so outputs agree to float32 rounding.
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
from ur_jax.models.resnet import scaled_width

__all__ = ["MTAN_FILTERS", "convert", "infer_task_name", "mtan_torch_names", "torch_names"]

#: MTAN's SegNet channels per level at width 1.
MTAN_FILTERS = (64, 128, 256, 512, 512)

#: Checkpoint tensors that are not part of the network, with the reason they are skipped.
IGNORED = {"logsigma": "MTAN's uncertainty loss weights (a training variable, not a layer)"}

_ATTENTION_MODULES = ("encoder_att", "decoder_att", "encoder_block_att", "decoder_block_att")
_ATTENTION = re.compile(r"(^|\.)(encoder_att|decoder_att|encoder_block_att|decoder_block_att)"
                        r"(\.|$)")


def infer_task_name(out_channels: int) -> str:
    """A head's task from its output channels: 1 -> ``'depth'``, 3 -> ``'normal'``, other
    counts (class counts, e.g. NYU-v2's 13) -> ``'semantic'``."""
    return {1: "depth", 3: "normal"}.get(int(out_channels), "semantic")


def _layers_per_block(level: int) -> int:
    """conv_layers in ``conv_block_enc[level]`` / ``conv_block_dec[level]`` (MTAN: one at the
    two top levels, two below)."""
    return 1 if level < 2 else 2


def torch_names(levels: int = 5) -> dict[str, str]:
    """ur_jax backbone submodule -> PyTorch module path (without ``backbone.``) for a
    SegNet of ``levels`` levels, e.g. ``'conv_block_enc_2_1' -> 'conv_block_enc.2.1'``."""
    out = {}
    for i in range(levels):
        for kind in ("enc", "dec"):
            block = "encoder_block" if kind == "enc" else "decoder_block"
            out[f"{block}_{i}"] = f"{block}.{i}"
            n = _layers_per_block(i)
            for k in range(n):
                out[f"conv_block_{kind}_{i}_{k}"] = (f"conv_block_{kind}.{i}" if n == 1
                                                     else f"conv_block_{kind}.{i}.{k}")
    return out


def _names_option(value: Any, what: str) -> tuple[str, ...] | None:
    if value is None or value == "" or value == ():
        return None
    if isinstance(value, str):
        names = tuple(v.strip() for v in value.split(",") if v.strip())
    elif isinstance(value, Sequence):
        names = tuple(str(v) for v in value)
    else:
        raise ConversionError(f"{what} must be task names (a sequence or a comma-separated "
                              f"string, e.g. 'semantic,depth,normal'); found {value!r}.")
    if len(set(names)) != len(names):
        raise ConversionError(f"{what} has repeated names: {names}.")
    return names


def _find_heads(sd: Mapping[str, np.ndarray]) -> tuple[str, list[tuple[str | None, str]]]:
    """``(backbone prefix, [(task name or None, head module path)])`` of a state dict."""
    if any(k.startswith("backbone.") for k in sd):
        prefix = "backbone."
    elif any(k.startswith("encoder_block.") for k in sd):
        prefix = ""
    else:
        raise ConversionError(
            "Not a SegNet checkpoint: expected tensors named 'backbone.encoder_block.0.0.weight' "
            "(DensePred, VICO-UoE/UniversalRepresentations) or 'encoder_block.0.0.weight' "
            f"(MTAN); found e.g. {sorted(sd)[:8]}.")
    heads: list[tuple[str | None, str]] = []
    seen: set[str] = set()
    for key in sd:  # state-dict order: ModuleDict insertion order (the training's task order)
        for pattern, named in ((r"^decoders\.([^.]+)\.pred_task\.0\.weight$", True),
                               (r"^decoder\.pred_task\.0\.weight$", False),
                               (r"^pred_task\.0\.weight$", False),
                               (r"^pred_task(\d+)\.0\.weight$", False)):
            m = re.match(pattern, key)
            if m:
                path = key[:-len(".0.weight")]
                if path not in seen:
                    seen.add(path)
                    heads.append((m.group(1) if named else None, path))
    numbered = [h for h in heads if re.fullmatch(r"pred_task\d+", h[1])]
    if numbered:  # MTAN split: pred_task1 (semantic), pred_task2 (depth), pred_task3 (normal)
        heads = sorted(numbered, key=lambda h: int(h[1][len("pred_task"):])) + [
            h for h in heads if h not in numbered]
    if not heads:
        raise ConversionError(
            "No prediction heads found: expected 'decoder.pred_task.0.weight' (single task), "
            "'decoders.<task>.pred_task.0.weight' (multi-task), or MTAN's 'pred_task.0.weight' "
            "/ 'pred_task<k>.0.weight'.")
    return prefix, heads


def _task_names(sd: Mapping[str, np.ndarray], heads: list[tuple[str | None, str]],
                tasks: tuple[str, ...] | None) -> list[tuple[str, str, int]]:
    """``[(ur_jax task name, head path, out channels)]`` in the model's head order."""
    found = []
    for name, path in heads:
        w = sd.get(f"{path}.1.weight")
        if w is None or np.ndim(w) != 4:
            raise ConversionError(f"Head {path!r} needs a 1x1 conv weight '{path}.1.weight' of "
                                  f"shape (out, C, 1, 1); found "
                                  f"{None if w is None else tuple(np.shape(w))}.")
        found.append((name, path, int(np.shape(w)[0])))
    if tasks is not None:
        own = [n for n, _, _ in found]
        if all(n is not None for n in own) and set(tasks) == set(own):
            by_name = {n: (p, c) for n, p, c in found}
            return [(t, *by_name[t]) for t in tasks]  # the checkpoint's heads, in this order
        if len(tasks) != len(found):
            raise ConversionError(
                f"tasks={tasks} names {len(tasks)} heads, but the checkpoint has {len(found)}: "
                + ", ".join(f"{p} ({c} channels)" for _, p, c in found)
                + ". Give one name per head, in this order.")
        return [(t, p, c) for t, (_, p, c) in zip(tasks, found)]
    out = [(n if n is not None else infer_task_name(c), p, c) for n, p, c in found]
    names = [n for n, _, _ in out]
    if len(set(names)) != len(names):
        raise ConversionError(
            "Cannot tell the heads' tasks apart from their output channels ("
            + ", ".join(f"{p}: {c} -> {n}" for n, p, c in out)
            + "); name them with tasks=('semantic', 'depth', ...) (CLI: --domains).")
    return out


def _model_kwargs(channels: list[int], width: float | None) -> dict[str, Any]:
    """``SegNet`` keyword arguments (``width``, and ``filters`` unless MTAN's) that give
    ``channels`` per level."""
    if width is None:
        w = channels[0] / MTAN_FILTERS[0]
        if (len(channels) == len(MTAN_FILTERS)
                and [scaled_width(f, w) for f in MTAN_FILTERS] == channels):
            return {"width": float(w)}
        return {"width": 1.0, "filters": list(channels)}
    try:
        w = float(width)
    except (TypeError, ValueError):
        raise ConversionError(f"width must be a number (e.g. 1.0 or 0.25); found {width!r}."
                              ) from None
    if w <= 0:
        raise ConversionError(f"width must be positive; found {w}.")
    if (len(channels) == len(MTAN_FILTERS)
            and [scaled_width(f, w) for f in MTAN_FILTERS] == channels):
        return {"width": w}
    filters = [max(1, round(c / w)) for c in channels]
    if [scaled_width(f, w) for f in filters] != channels:
        raise ConversionError(
            f"width={w} cannot give the checkpoint's channels per level {channels} (no integer "
            f"filters f with round(f * {w}) equal to them); leave width unset to infer it.")
    return {"width": w, "filters": filters}


def convert(state_dict: Mapping[str, np.ndarray], tasks: Any = None, width: Any = None,
            domains: Any = None, **unknown: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Converts a released SegNet state dict (DensePred STL / URL, MTAN single / split, or
    MTAN's attention SegNet).

    Args:
      state_dict: PyTorch tensor names -> arrays (``module.`` prefixes already stripped, as
        :func:`ur_jax.convert.common.load_state_dict` returns them).
      tasks: names of the heads (a sequence, or a comma-separated string from the CLI's
        ``--option tasks=...``). With names equal to the checkpoint's own ``decoders.<task>``
        names, they choose the heads' order; otherwise they rename the heads in checkpoint
        order (one name per head). Default: the checkpoint's names, or names inferred from
        output channels (:func:`infer_task_name`). ur_jax L2-normalises a head's output
        only if its task is named ``'normal'`` (``SegNet.normalize_tasks``), as DensePred's
        ``out_fns.py`` does for its ``normal`` task: keep that name for a normals head.
      width: the ur_jax ``width`` to record (a number or numeric string); default inferred
        from the channel counts. Refused if no ``filters`` give the checkpoint's channels.
      domains: an alias of ``tasks`` (the CLI's ``--domains``).
      **unknown: refused (a :class:`ConversionError` naming the accepted options).

    Returns:
      ``(spec, variables)``: ``spec`` a :func:`ur_jax.checkpointing.dense_model_spec` for
      the dense model ``'segnet'``, or ``'mtan'`` for a checkpoint with attention modules
      (``model_kwargs`` ``{'width': w}``, plus ``filters`` for non-MTAN channel counts;
      ``tasks`` ``[[name, out_channels], ...]``); ``variables`` ``{'params',
      'batch_stats'}`` float32 trees of :class:`ur_jax.models.segnet.SegNet` /
      :class:`ur_jax.models.mtan.MTANSegNet`.

    Raises:
      ConversionError: not a SegNet checkpoint, MTAN attention modules in another layout
        than ``model_segnet_mtan.py``'s or not one branch per head, ambiguous or
        mis-counted task names, a bad ``width``, or tensors that do not fit (every missing,
        unused and mis-shaped tensor named).
    """
    if unknown:
        raise ConversionError(f"Unknown SegNet conversion option(s) {sorted(unknown)}; "
                              f"accepted: tasks, domains, width.")
    sd = {str(k): v for k, v in state_dict.items()}
    names = _names_option(tasks, "tasks")
    alias = _names_option(domains, "domains")
    if names is not None and alias is not None and names != alias:
        raise ConversionError(f"tasks={names} and domains={alias} disagree; give one of them.")
    names = names if names is not None else alias
    prefix, heads = _find_heads(sd)
    attention = _attention_branches(sd, prefix, heads)
    task_list = _task_names(sd, heads, names)

    channels = []
    while f"{prefix}encoder_block.{len(channels)}.0.weight" in sd:
        w = sd[f"{prefix}encoder_block.{len(channels)}.0.weight"]
        if np.ndim(w) != 4:
            raise ConversionError(f"{prefix}encoder_block.{len(channels)}.0.weight must be a "
                                  f"conv weight (O, I, 3, 3); found shape {tuple(np.shape(w))}.")
        channels.append(int(np.shape(w)[0]))
    if not 1 <= len(channels) <= 5:
        raise ConversionError(f"A SegNet has 1 to 5 encoder levels (MTAN's: 5); found "
                              f"{len(channels)} ({prefix}encoder_block.<i>.0.weight).")
    in_channels = int(np.shape(sd[f"{prefix}encoder_block.0.0.weight"])[1])
    if in_channels != 3:
        raise ConversionError(f"ur_jax's saved dense models take RGB images; the checkpoint's "
                              f"first conv {prefix}encoder_block.0.0.weight takes {in_channels} "
                              f"input channels.")
    kwargs = _model_kwargs(channels, width)
    spec = checkpointing.dense_model_spec("segnet" if attention is None else "mtan", kwargs,
                                          [(t, c) for t, _, c in task_list])
    model = checkpointing.model_from_spec(spec)
    side = 2 ** len(channels)
    shapes = target_shapes(model, jnp.zeros((1, side, side, in_channels), jnp.float32))

    tm = TensorMap(sd)
    params: dict[str, Any] = {"backbone": {}, "heads": {}}
    stats: dict[str, Any] = {"backbone": {}}
    for ours, theirs in torch_names(len(channels)).items():
        path = prefix + theirs
        bn_params, bn_stats = tm.batch_norm(f"{path}.1")
        params["backbone"][ours] = {"conv": {"kernel": tm.conv(f"{path}.0"),
                                             "bias": tm.take(f"{path}.0.bias")},
                                    "bn": bn_params}
        stats["backbone"][ours] = {"bn": bn_stats}
    for task, path, _ in task_list:
        params["heads"][task] = {
            layer: {"kernel": tm.take(f"{path}.{i}.weight", conv_kernel),
                    "bias": tm.take(f"{path}.{i}.bias")}
            for i, layer in enumerate(("conv3x3", "conv1x1"))}
    if attention is not None:
        _take_attention(tm, params, stats, task_list, attention, len(channels))
    what = "SegNet checkpoint" if attention is None else "MTAN attention SegNet checkpoint"
    variables = assemble({"params": params, "batch_stats": stats}, shapes, tm,
                         what=what, ignore_unused=lambda n: n in IGNORED)
    return spec, variables


def mtan_torch_names(levels: int = 5) -> dict[str, str]:
    """ur_jax name -> PyTorch module path of MTAN's shared attention convs and of one task's
    attention layers (``<t>`` stands for the task index), for ``levels`` levels: e.g.
    ``'encoder_block_att_2/conv' -> 'encoder_block_att.2.0'``,
    ``'decoder_att_3/bn1' -> 'decoder_att.<t>.3.4'``."""
    out = {}
    for j in range(levels):
        for side in ("encoder", "decoder"):
            out[f"{side}_block_att_{j}/conv"] = f"{side}_block_att.{j}.0"
            out[f"{side}_block_att_{j}/bn"] = f"{side}_block_att.{j}.1"
            for ours, theirs in (("conv0", 0), ("bn0", 1), ("conv1", 3), ("bn1", 4)):
                out[f"{side}_att_{j}/{ours}"] = f"{side}_att.<t>.{j}.{theirs}"
    return out


def _attention_branches(sd: Mapping[str, np.ndarray], prefix: str,
                        heads: list[tuple[str | None, str]]) -> dict[str, int] | None:
    """``None`` for a SegNet without attention; for MTAN's attention SegNet, the index of
    each head's attention branch (``encoder_att.<t>``), by head path. Refuses attention
    tensors in a layout other than ``model_segnet_mtan.py``'s."""
    found = sorted({m.group(2) for k in sd if (m := _ATTENTION.search(k))})
    if not found:
        return None
    layout = ("MTAN's model_segnet_mtan.py keeps its shared network and attention modules at "
              "the top level ('encoder_block.0.0.weight', 'encoder_att.0.0.0.weight', "
              "'encoder_block_att.0.0.weight') with heads 'pred_task1', 'pred_task2', ...")
    misplaced = sorted(k for k in sd if _ATTENTION.search(k)
                       and k.split(".", 1)[0] not in _ATTENTION_MODULES)
    if prefix or misplaced:
        raise ConversionError(
            f"This checkpoint has MTAN attention modules ({', '.join(found)}) in a layout "
            f"ur_jax does not read"
            + (f" (a DensePred '{prefix}' network)" if prefix else "")
            + (f" (e.g. {', '.join(misplaced[:4])})" if misplaced else "")
            + f": {layout}.")
    other = [path for _, path in heads if not re.fullmatch(r"pred_task\d*", path)]
    if other:
        raise ConversionError(f"This MTAN attention SegNet has heads {other}; {layout}.")
    branches = sorted({int(m.group(2)) for k in sd
                       if (m := re.match(r"^(encoder_att|decoder_att)\.(\d+)\.", k))})
    if branches != list(range(len(heads))):
        raise ConversionError(
            f"This MTAN attention SegNet has attention branches {branches} "
            f"(encoder_att.<t> / decoder_att.<t>) but {len(heads)} heads ("
            + ", ".join(path for _, path in heads)
            + "); it needs one branch per head, numbered 0.. in the heads' order.")
    return {path: t for t, (_, path) in enumerate(heads)}


def _take_attention(tm: TensorMap, params: dict[str, Any], stats: dict[str, Any],
                    task_list: list[tuple[str, str, int]], attention: dict[str, int],
                    levels: int) -> None:
    """Fills the shared attention convs and each task's attention layers (in ``heads``)."""
    stats["heads"] = {}

    def put(tree_p: dict[str, Any], tree_s: dict[str, Any], ours: str, theirs: str) -> None:
        module, layer = ours.split("/")
        if layer.startswith("bn"):
            bn_params, bn_stats = tm.batch_norm(theirs)
            tree_p.setdefault(module, {})[layer] = bn_params
            tree_s.setdefault(module, {})[layer] = bn_stats
        else:
            tree_p.setdefault(module, {})[layer] = {"kernel": tm.conv(theirs),
                                                    "bias": tm.take(f"{theirs}.bias")}

    names = mtan_torch_names(levels)
    for ours, theirs in names.items():
        if "<t>" not in theirs:
            put(params, stats, ours, theirs)
    for task, path, _ in task_list:
        t = attention[path]
        stats["heads"][task] = {}
        for ours, theirs in names.items():
            if "<t>" in theirs:
                put(params["heads"][task], stats["heads"][task], ours,
                    theirs.replace("<t>", str(t)))
