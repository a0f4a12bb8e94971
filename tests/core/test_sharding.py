"""The data mesh: placements, the batch-divisibility check, the context mesh size."""

import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from ur_jax import sharding


def test_mesh_and_placements(devices):
    mesh = sharding.make_mesh()
    assert mesh.axis_names == ("data",) and mesh.size == 8
    batch = {"x": np.arange(16 * 3, dtype=np.float32).reshape(16, 3)}
    placed = sharding.shard_batch(batch, mesh)["x"]
    assert placed.sharding.spec == P("data")
    assert {s.data.shape for s in placed.addressable_shards} == {(2, 3)}
    rep = sharding.replicate(jnp.ones(4), mesh)
    assert rep.sharding.is_fully_replicated
    one = sharding.make_mesh(devices[:1])
    assert one.size == 1
    with pytest.raises(ValueError, match="at least one device"):
        sharding.make_mesh([])


def test_shard_batch_refuses_uneven_batches():
    mesh = sharding.make_mesh()
    with pytest.raises(ValueError, match=r"\['b'\]\['image'\].*shape \(12, 2\)"):
        sharding.shard_batch({"a": {"image": np.zeros((8, 2))}, "b": {"image": np.zeros((12, 2))}},
                             mesh)


def test_jit_data_parallel_sets_context_mesh_and_replicates_outputs():
    mesh = sharding.make_mesh()
    seen = []

    def step(state, batch):
        seen.append(sharding.data_shards())
        return state + jnp.sum(batch), jnp.mean(batch)

    fn = sharding.jit_data_parallel(step, mesh, batch_argnums=(1,), num_args=2)
    state, mean = fn(sharding.replicate(jnp.zeros(()), mesh),
                     sharding.shard_batch(np.arange(8, dtype=np.float32), mesh))
    assert seen == [8]
    assert float(state) == 28.0 and float(mean) == 3.5
    assert state.sharding.is_fully_replicated
    assert sharding.data_shards() == 1  # outside a step


def test_to_host_fetches_sharded_outputs(devices):
    mesh = sharding.make_mesh(devices)
    x = sharding.shard_batch(np.arange(16, dtype=np.float32).reshape(8, 2), mesh)
    out = sharding.to_host({"double": x * 2, "plain": 3})
    assert isinstance(out["double"], np.ndarray)
    np.testing.assert_array_equal(out["double"], np.arange(16).reshape(8, 2) * 2)
    assert out["plain"] == 3
