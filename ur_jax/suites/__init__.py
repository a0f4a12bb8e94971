"""Benchmark suites: one self-contained package per benchmark.

* :mod:`ur_jax.suites.embedded`: the offline default (six generated image domains).
* :mod:`ur_jax.suites.dense`: dense prediction (procedural scenes, MTAN's NYU-v2 and Cityscapes).
* :mod:`ur_jax.suites.decathlon`: the Visual Decathlon.
* :mod:`ur_jax.suites.metadataset`: Meta-Dataset.

A suite holds its TFDS builder(s) (over the generic :mod:`ur_jax.data.tfds_helper`), its
reader and transforms, a fake-data writer in its own ``fake`` module (for tests and smoke
runs, apart from the readers), its recipe (``recipe.py``: the paper's hyperparameters, used by
``configs/*.py``) and a ``register`` module that registers its loader(s) with
:mod:`ur_jax.data.registry` (``register`` / ``register_dense``).

To add a benchmark: create ``ur_jax/suites/<name>/`` with those modules (``register.py``
calling ``registry.register('<dataset>', loader)``, the loader returning a
:class:`~ur_jax.data.registry.ClassificationData` or :class:`~ur_jax.data.registry.DenseData`),
then add ``<name>`` to ``SUITES`` in :mod:`ur_jax.data.registry` (one line).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, exports: Mapping[str, str]
                 ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Module ``__getattr__`` and ``__dir__`` (PEP 562) that make ``package.<name>`` the
    attribute ``name`` of ``package.<exports[name]>``, imported on first access.

    A suite's ``__init__`` stays import-free this way: its recipe (imported by config files)
    and its constants do not pull in TFDS, grain or JAX, while ``from ur_jax.suites import
    decathlon; decathlon.prepare(...)`` still works.

    Args:
      package: the package's ``__name__``.
      exports: ``{attribute: submodule}``; attribute names must differ from submodule names.

    Returns:
      ``(__getattr__, __dir__)`` to assign in the package's ``__init__``.
    """
    def getattr_(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{module}"), name)

    def dir_() -> list[str]:
        return sorted({*vars(importlib.import_module(package)), *exports})

    return getattr_, dir_
