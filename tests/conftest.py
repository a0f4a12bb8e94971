"""Test setup: 8 fake CPU devices (set before JAX starts), float32, shared tiny models."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402  (after XLA_FLAGS)
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def devices():
    devs = jax.devices()
    assert len(devs) == 8, f"tests expect 8 fake CPU devices, found {len(devs)}"
    return devs

# XLA's CPU compiler takes seconds per threefry random draw (every parameter initialiser);
# the 'rbg' generator compiles ~5x faster. Tests only; the library never changes it.
jax.config.update("jax_default_prng_impl", "rbg")
