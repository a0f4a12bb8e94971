"""The one registry of multi-task methods: name -> class, and :func:`get_method`.

The registry is the read-only mapping :data:`METHOD_CLASSES`, written out once below and
built when this module is imported; nothing adds to it at run time (no module-level mutable
state). Registering a method is one entry there; its key is the method's ``name`` and the
order of the entries is the order of :data:`METHODS` (which ``ur_jax.config.blocks``
mirrors as ``MTL_METHODS`` so that loading a config does not import JAX).
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from typing import Any

from ur_jax.mtl import alignment, moo, scalarization
from ur_jax.mtl.base import MTLMethod
from ur_jax.mtl.gradient import MGDA, CAGrad, GradDrop, GradNorm, IMTLG, IMTLH, PCGrad
from ur_jax.mtl.weighting import DWA, IMTLL, Uncertainty, Uniform

__all__ = ["METHODS", "METHOD_CLASSES", "get_method", "method_options"]

#: Every multi-task method by name (read-only). Each class's ``name`` equals its key.
METHOD_CLASSES: Mapping[str, type[MTLMethod]] = types.MappingProxyType({
    "uniform": Uniform, "uncertainty": Uncertainty, "dwa": DWA, "gradnorm": GradNorm,
    "mgda": MGDA, "pcgrad": PCGrad, "graddrop": GradDrop, "imtl_l": IMTLL, "imtl_g": IMTLG,
    "imtl_h": IMTLH, "cagrad": CAGrad,
    # The methods of LibMTL (Lin & Zhang, 2023) that the ones above do not cover.
    **scalarization.CLASSES, **alignment.CLASSES, **moo.CLASSES,
})

#: The names :func:`get_method` accepts (in canonical form: lower case, ``_``).
METHODS = tuple(METHOD_CLASSES)


def method_options(name: str) -> tuple[str, ...]:
    """Names of the options :func:`get_method` accepts for method ``name`` (canonical form).

    Raises:
      KeyError: if ``name`` is not one of :data:`METHODS`.
    """
    return tuple(f.name for f in dataclasses.fields(METHOD_CLASSES[name]) if f.init)


def get_method(name: str, **options: Any) -> MTLMethod:
    """Build the multi-task method ``name`` (one of :data:`METHODS`; case and ``-`` vs ``_``
    are ignored) with its options, e.g. ``get_method("dwa", steps_per_epoch=398)``.

    Raises ValueError for an unknown name (listing :data:`METHODS`), an option the method does
    not take (listing the ones it does) or a bad option value.
    """
    key = name.strip().lower().replace("-", "_") if isinstance(name, str) else name
    if key not in METHOD_CLASSES:
        raise ValueError(f"unknown multi-task method {name!r}; expected one of {METHODS}.")
    valid = method_options(key)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"method {key!r} does not take option(s) {unknown}; valid options: "
                         f"{list(valid) if valid else 'none'}.")
    return METHOD_CLASSES[key](**options)
