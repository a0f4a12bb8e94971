"""Fixtures of the runner tests."""

import pytest

from ur_jax.suites import embedded


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """The embedded default's three domains prepared as TFDS data, once per test module."""
    path = str(tmp_path_factory.mktemp("tfds"))
    embedded.prepare(path, ("digits", "shapes", "symbols"))
    return path
