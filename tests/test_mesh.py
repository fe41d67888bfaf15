"""Data parallelism on the 8 fake CPU devices of conftest: the same steps, the same parameters."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from pcam_jax import configs, models
from pcam_jax.training import mesh as mesh_lib
from pcam_jax.training import steps
from pcam_jax.training.state import create_train_state
from tests.fake_batches import fake_batch


def test_make_mesh_and_shard_batch():
    assert len(jax.devices()) == 8, "conftest sets 8 fake CPU devices"
    mesh = mesh_lib.make_mesh()
    assert mesh.axis_names == ("data",) and mesh.size == 8
    assert mesh_lib.make_mesh(jax.devices()[:1]).size == 1
    batch = fake_batch(8)
    sharded = mesh_lib.shard_batch(batch, mesh)
    assert set(sharded) == {"image", "label", "mask", "has_mask", "valid"}  # metadata stays on the host
    for key, array in sharded.items():
        assert array.sharding.spec == PartitionSpec("data")
        np.testing.assert_array_equal(np.asarray(array), batch[key])
        # one row per device, in order
        for shard in array.addressable_shards:
            assert shard.data.shape[0] == 1
            np.testing.assert_array_equal(np.asarray(shard.data), batch[key][shard.index])
    # 4 rows do not divide over 8 devices: replicated on one process
    small = mesh_lib.shard_batch(fake_batch(4), mesh)
    assert small["image"].sharding.spec == PartitionSpec() and small["image"].shape == (4, 32, 32, 1)
    with pytest.raises(ValueError, match="valid"):
        mesh_lib.shard_batch({k: v for k, v in batch.items() if k != "valid"}, mesh)


def test_maybe_initialize_distributed(monkeypatch):
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: calls.append((a, k)))
    monkeypatch.setattr(mesh_lib, "_distributed_initialized", False)
    monkeypatch.delenv("JAX_COORDINATOR_ADDRESS", raising=False)
    monkeypatch.delenv(mesh_lib.DISTRIBUTED_ENV, raising=False)
    assert mesh_lib.maybe_initialize_distributed() is False and calls == []
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
    assert mesh_lib.maybe_initialize_distributed() is True and len(calls) == 1
    assert mesh_lib.maybe_initialize_distributed() is False and len(calls) == 1  # only once


def _run(mesh, train_step, state0, batches):
    state = mesh_lib.replicate(jax.tree.map(np.asarray, state0), mesh)  # a copy: the step donates it
    step = mesh_lib.jit_train_step(train_step, mesh, state)
    for batch in batches:
        device_batch = mesh_lib.shard_batch(batch, mesh)
        state, metrics = step(state, device_batch)
    return state, metrics


def test_stage2_steps_on_eight_devices_equal_one_device():
    config = configs.get_config("tiny")
    model = models.create_model(config.model)
    state0 = jax.jit(lambda key: create_train_state(config, model, key))(jax.random.key(0))
    train_step = steps.make_train_step(2, config, model)
    batches = [fake_batch(8, seed=s) for s in range(3)]
    mesh8 = mesh_lib.make_mesh()
    state8, metrics8 = _run(mesh8, train_step, state0, batches)
    state1, metrics1 = _run(mesh_lib.make_mesh(jax.devices()[:1]), train_step, state0, batches)
    leaf = jax.tree.leaves(state8["params"])[0]
    assert leaf.sharding.is_equivalent_to(mesh_lib.replicated(mesh8), leaf.ndim)
    assert int(state8["step"]) == int(state1["step"]) == 3
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(state8["params"]), jax.tree.leaves(state1["params"])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5,
                                   err_msg=jax.tree_util.keystr(path))
    # and they moved: three Adam steps of lr 1e-3
    moved = max(float(jnp.max(jnp.abs(a - b))) for a, b in
                zip(jax.tree.leaves(state1["params"]["encoder"]), jax.tree.leaves(state0["params"]["encoder"])))
    assert moved > 1e-3
    for a, b in zip(jax.tree.leaves(state8["batch_stats"]), jax.tree.leaves(state1["batch_stats"])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
    for key in ("loss", "l1", "l2", "accuracy", "confidence"):
        np.testing.assert_allclose(float(metrics8[key]), float(metrics1[key]), rtol=1e-4, atol=1e-6)


def test_distributed_arguments_from_the_environment():
    assert mesh_lib.distributed_arguments({}) is None
    assert mesh_lib.distributed_arguments({"PCAM_JAX_DISTRIBUTED": "1"}) == {}     # auto-detect (SLURM, TPU)
    env = {"JAX_COORDINATOR_ADDRESS": "127.0.0.1:9", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1",
           "PCAM_JAX_HEARTBEAT_SECONDS": "10"}
    assert mesh_lib.distributed_arguments(env) == {"num_processes": 2, "process_id": 1, "heartbeat_timeout_seconds": 10}
    with pytest.raises(ValueError, match="JAX_PROCESS_ID"):
        mesh_lib.distributed_arguments({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2"})
    with pytest.raises(ValueError, match="PCAM_JAX_HEARTBEAT_SECONDS"):
        mesh_lib.distributed_arguments({"PCAM_JAX_DISTRIBUTED": "1", "PCAM_JAX_HEARTBEAT_SECONDS": "ten"})
