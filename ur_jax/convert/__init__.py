"""The authors' released PyTorch models as ur_jax models: ``python -m ur_jax.convert``.

    python -m ur_jax.convert --arch resnet18_metadataset --src url/model_best.pth.tar \\
        --dst models/url_metadataset

reads a released checkpoint (:func:`~ur_jax.convert.common.load_state_dict`), maps every tensor
onto the ur_jax architecture ``--arch`` (:data:`ARCHITECTURES`), refuses a checkpoint whose
tensors do not fit (every name and shape listed), and writes the model with
:func:`ur_jax.checkpointing.save_model`. :func:`load` (= :func:`ur_jax.checkpointing.
load_model`) returns ``(model, variables)``; every config takes the directory as a frozen
teacher (``--config.teachers.checkpoints.<name>=DIR``) or as a model to evaluate
(``--config.fewshot.checkpoints.<name>=DIR``).

PyTorch is needed only here (``pip install torch==2.13.0``, CPU).
"""

from __future__ import annotations

import argparse
import importlib
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax

from ur_jax import checkpointing
from ur_jax.convert.common import ConversionError, load_state_dict

__all__ = ["ARCHITECTURES", "ConversionError", "convert", "convert_file", "load", "main"]

#: ``--arch`` name -> ``module:function`` of its converter. A converter is called as
#: ``fn(state_dict, **options)`` and returns ``(spec, variables)`` for
#: :func:`ur_jax.checkpointing.save_model`.
ARCHITECTURES = {
    "resnet18_metadataset": "ur_jax.convert.resnet18:convert",
    "segnet": "ur_jax.convert.segnet:convert",
    "resnet26": "ur_jax.convert.resnet26:convert",
}


def _converter(arch: str) -> Callable[..., tuple[dict[str, Any], dict[str, Any]]]:
    if arch not in ARCHITECTURES:
        raise ConversionError(f"Unknown architecture {arch!r}; expected one of "
                              f"{sorted(ARCHITECTURES)}.")
    module, fn = ARCHITECTURES[arch].split(":")
    return getattr(importlib.import_module(module), fn)


def convert(arch: str, state_dict: dict[str, Any], **options: Any
            ) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(spec, variables)`` of ``state_dict`` converted to ``arch`` (see the module's
    converters for their ``options``, e.g. ``domains=`` names for per-domain heads)."""
    return _converter(arch)(state_dict, **options)


def convert_file(arch: str, src: str | os.PathLike, dst: str | os.PathLike, **options: Any
                 ) -> str:
    """Converts the checkpoint file ``src`` and writes the model to ``dst``; returns ``dst``."""
    spec, variables = convert(arch, load_state_dict(src), **options)
    dst = os.path.abspath(os.fspath(dst))
    checkpointing.save_model(dst, spec, variables)
    return dst


def load(directory: str | os.PathLike, expected: dict[str, Any] | None = None):
    """``(model, variables)`` of a converted (or any saved) model directory."""
    return checkpointing.load_model(os.fspath(directory), expected=expected)


def main(argv: Sequence[str] | None = None) -> None:
    """The command line (see the module docstring)."""
    p = argparse.ArgumentParser(prog="python -m ur_jax.convert", description=__doc__.split(
        "\n\n")[0])
    p.add_argument("--arch", required=True, choices=sorted(ARCHITECTURES))
    p.add_argument("--src", required=True, help="the PyTorch checkpoint (.pth / .pth.tar)")
    p.add_argument("--dst", required=True, help="the directory to write the model to")
    p.add_argument("--domains", default="",
                   help="comma-separated names of the heads / per-domain parts, in the "
                        "checkpoint's order (default: the architecture's, e.g. the eight "
                        "Meta-Dataset training sources for a URL model)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="an architecture-specific option (repeatable)")
    args = p.parse_args(argv)
    options: dict[str, Any] = {}
    if args.domains:
        options["domains"] = tuple(d for d in args.domains.split(",") if d)
    for item in args.option:
        if "=" not in item:
            p.error(f"--option takes KEY=VALUE; found {item!r}")
        key, value = item.split("=", 1)
        options[key] = value
    try:
        dst = convert_file(args.arch, args.src, args.dst, **options)
    except ConversionError as e:
        raise SystemExit(f"ur_jax.convert: {e}") from None
    _, variables = load(dst)
    n = sum(x.size for x in jax.tree.leaves(variables))
    print(f"Converted {args.src} ({args.arch}) to {dst}: {n:,} values; load it with "
          f"ur_jax.convert.load({dst!r}).")
