"""Loading experiment config files from Python (notebooks, tests), as the CLI does.

>>> config = load_config('configs/default.py:smoke', **{'url.steps': 10})
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

import ml_collections


def load_config(spec: str, **overrides: Any) -> ml_collections.ConfigDict:
    """The config of ``'path/to/file.py[:arg]'`` (``get_config(arg)``), with ``overrides``
    given as dotted keys (``{'url.steps': 10}``), like ``--config`` and ``--config.k=v``.

    Raises:
      FileNotFoundError: if the file does not exist.
      KeyError: for an override key that the config does not have.
      ValueError: an argument the config file does not take (:func:`ur_jax.config.parse_arg`).
      TypeError: an override of another kind than the key's (ml_collections' type safety).
    """
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No config file {path!r} (from {spec!r}).")
    name = "ur_jax_config_" + os.path.splitext(os.path.basename(path))[0]
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    config = module.get_config(arg or None)
    for key, value in overrides.items():
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        if leaf not in node:
            raise KeyError(f"The config of {spec!r} has no key {key!r}.")
        node[leaf] = value
    return config
