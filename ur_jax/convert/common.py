"""Shared machinery of the PyTorch -> ur_jax converters (:mod:`ur_jax.convert`).

A converter maps a PyTorch ``state_dict`` (names -> NumPy arrays) onto the parameter tree of
an ur_jax model and refuses, with every offending name and shape listed, a checkpoint whose
tensors do not fit the architecture:

* :func:`load_state_dict` reads a released checkpoint (``torch.load(weights_only=True)``
  where possible), finds the tensors (the file itself, or its ``state_dict`` / ``net`` /
  ``model`` entry), strips ``module.`` prefixes (DataParallel) and drops
  ``num_batches_tracked``;
* :class:`TensorMap` hands out tensors by PyTorch name, converting layouts
  (:func:`conv_kernel` OIHW -> HWIO, :func:`dense_kernel` (out, in) -> (in, out), BatchNorm),
  and remembers which ones were used, so unused tensors are reported too;
* :func:`assemble` puts the converted arrays into the model's variable tree and checks every
  leaf against ``jax.eval_shape`` of the model's own initialisation.

The converted model is written with :func:`ur_jax.checkpointing.save_model`, so every config
loads it as a frozen teacher (``config.teachers.checkpoints.<name>=DIR``) or as a model to
evaluate (``config.fewshot.checkpoints.<name>=DIR``), and :func:`ur_jax.checkpointing.
load_model` returns ``(model, variables)``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["ConversionError", "TensorMap", "assemble", "conv_kernel", "dense_kernel",
           "load_state_dict", "target_shapes"]

#: Keys under which released checkpoints keep their tensors, in the order they are tried.
STATE_KEYS = ("state_dict", "net", "model", "model_state_dict")


class ConversionError(ValueError):
    """A checkpoint does not fit the architecture; the message lists the names and shapes."""


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        value = value.numpy()
    return np.asarray(value)


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The tensors of a PyTorch checkpoint file as ``{name: float32/int NumPy array}``.

    Reads with ``torch.load(map_location='cpu', weights_only=True)``; a file that needs
    arbitrary unpickling (e.g. it stores an argparse ``Namespace`` beside the weights) is
    read with ``weights_only=False`` only after a warning, since that runs the file's code:
    convert only checkpoints you trust. The tensors are the file's ``state_dict`` / ``net`` /
    ``model`` entry if it has one, else the file's top-level mapping; ``module.`` prefixes
    are stripped and ``num_batches_tracked`` counters dropped.

    Raises:
      ConversionError: the file is missing, PyTorch is not installed, or no tensors are found.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ConversionError(f"No checkpoint file at {path!r}.")
    try:
        import torch
    except ImportError as e:
        raise ConversionError(
            "Converting a PyTorch checkpoint needs PyTorch (only for the conversion): "
            "pip install torch==2.13.0") from e
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises UnpicklingError or RuntimeError
        import warnings

        warnings.warn(f"{path}: weights-only loading failed ({type(e).__name__}: "
                      f"{str(e).splitlines()[0] if str(e) else ''}); loading it with full "
                      f"unpickling. Only convert checkpoints from a source you trust.",
                      stacklevel=2)
        obj = torch.load(path, map_location="cpu", weights_only=False)
    if hasattr(obj, "state_dict") and callable(obj.state_dict):  # a pickled nn.Module
        obj = obj.state_dict()
    if not isinstance(obj, Mapping):
        raise ConversionError(f"{path}: expected a mapping of tensors (or one with a "
                              f"{'/'.join(STATE_KEYS)} entry); found {type(obj).__name__}.")
    for key in STATE_KEYS:
        if key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    out = {}
    for name, value in obj.items():
        if not hasattr(value, "shape"):
            continue  # e.g. epoch counters stored beside the weights
        while name.startswith("module."):
            name = name[len("module."):]
        if name.endswith("num_batches_tracked"):
            continue
        out[name] = _to_numpy(value)
    if not out:
        raise ConversionError(f"{path}: no tensors found (top-level keys: {sorted(obj)[:20]}).")
    return out


def conv_kernel(w: np.ndarray) -> np.ndarray:
    """PyTorch conv weight ``(O, I, kh, kw)`` -> Flax kernel ``(kh, kw, I, O)``."""
    if w.ndim != 4:
        raise ConversionError(f"A conv weight must be 4-D (O, I, kh, kw); found shape {w.shape}.")
    return np.transpose(w, (2, 3, 1, 0))


def dense_kernel(w: np.ndarray) -> np.ndarray:
    """PyTorch linear weight ``(out, in)`` (or a 1x1 conv ``(out, in, 1, 1)``) -> ``(in, out)``."""
    if w.ndim == 4 and w.shape[2:] == (1, 1):
        w = w[:, :, 0, 0]
    if w.ndim != 2:
        raise ConversionError(f"A linear weight must be 2-D (out, in); found shape {w.shape}.")
    return np.transpose(w)


class TensorMap:
    """Hands out a state dict's tensors by name and records which were used.

    ``take(name)`` returns the tensor (a :class:`ConversionError` lists near names if it is
    missing); :meth:`unused` gives the names never taken, which :func:`assemble` reports.
    """

    def __init__(self, state_dict: Mapping[str, np.ndarray]) -> None:
        self.state_dict = dict(state_dict)
        self.used: set[str] = set()
        self.missing: list[str] = []

    def has(self, name: str) -> bool:
        """Whether the checkpoint holds ``name``."""
        return name in self.state_dict

    def take(self, name: str, transform: Callable[[np.ndarray], np.ndarray] | None = None
             ) -> np.ndarray | None:
        """The tensor ``name`` (converted by ``transform``); a missing one is recorded and
        ``None`` returned, so that every problem is reported at once by :func:`assemble`."""
        if name not in self.state_dict:
            self.missing.append(name)
            return None
        self.used.add(name)
        value = np.asarray(self.state_dict[name])
        return transform(value) if transform is not None else value

    def conv(self, name: str) -> np.ndarray | None:
        """``<name>.weight`` as a Flax conv kernel."""
        return self.take(f"{name}.weight", conv_kernel)

    def dense(self, name: str) -> dict[str, np.ndarray | None]:
        """``<name>.weight`` / ``<name>.bias`` as Flax Dense ``{'kernel', 'bias'}``."""
        out = {"kernel": self.take(f"{name}.weight", dense_kernel)}
        if self.has(f"{name}.bias"):
            out["bias"] = self.take(f"{name}.bias")
        return out

    def batch_norm(self, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """``<name>.{weight,bias,running_mean,running_var}`` as Flax BatchNorm
        ``({'scale', 'bias'}, {'mean', 'var'})`` (params, batch_stats)."""
        return ({"scale": self.take(f"{name}.weight"), "bias": self.take(f"{name}.bias")},
                {"mean": self.take(f"{name}.running_mean"),
                 "var": self.take(f"{name}.running_var")})

    def unused(self) -> list[str]:
        """Names of the checkpoint never taken."""
        return sorted(set(self.state_dict) - self.used)


def target_shapes(model: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """``jax.eval_shape`` of ``model.init(key, *args, **kwargs)``: the variable tree a
    converted checkpoint must fill (no computation, no memory)."""
    return jax.eval_shape(lambda: model.init(jax.random.key(0), *args, **kwargs))


def _flat(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(_flat(v, prefix + (k,)))
        else:
            out[prefix + (k,)] = v
    return out


def _nest(flat: Mapping[tuple[str, ...], Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path, v in flat.items():
        node = out
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = v
    return out


def assemble(converted: Mapping[str, Any], shapes: Mapping[str, Any], tensors: TensorMap,
             what: str = "checkpoint", ignore_unused: Callable[[str], bool] | None = None
             ) -> dict[str, Any]:
    """Checks ``converted`` (a nested variable tree of NumPy arrays) against ``shapes`` (from
    :func:`target_shapes`) and returns it as float32 JAX arrays.

    Raises:
      ConversionError: listing, all at once, the PyTorch tensors the architecture needs but
        the checkpoint lacks, the checkpoint's tensors the architecture has no place for
        (unless ``ignore_unused(name)``), the model's variables nothing was converted to, and
        every shape mismatch (PyTorch name -> converted shape vs expected shape).
    """
    got, want = _flat(converted), _flat(shapes)
    problems = []
    if tensors.missing:
        problems.append("tensors the architecture needs but the checkpoint lacks: "
                        + ", ".join(tensors.missing))
    unused = [n for n in tensors.unused() if not (ignore_unused and ignore_unused(n))]
    if unused:
        problems.append("tensors in the checkpoint with no place in the architecture: "
                        + ", ".join(f"{n} {tuple(tensors.state_dict[n].shape)}" for n in unused))
    absent = ["/".join(p) for p in want if p not in got]
    if absent:
        problems.append("model variables nothing was converted to: " + ", ".join(absent))
    extra = ["/".join(p) for p in got if p not in want]
    if extra:
        problems.append("converted variables the model does not have: " + ", ".join(extra))
    wrong = [f"{'/'.join(p)}: converted {tuple(np.shape(got[p]))}, expected "
             f"{tuple(want[p].shape)}" for p in want
             if p in got and got[p] is not None and tuple(np.shape(got[p])) != tuple(want[p].shape)]
    if wrong:
        problems.append("shape mismatches: " + "; ".join(wrong))
    if problems:
        raise ConversionError(f"The {what} does not match the architecture:\n- "
                              + "\n- ".join(problems))
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), _nest(
        {p: got[p] for p in want}))
