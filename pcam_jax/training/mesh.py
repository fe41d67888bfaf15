"""Data parallelism: a mesh with a ``data`` axis, replicated state, batches sharded on rows.

One device is the same code with a mesh of one. Multi-host: each process feeds its own
slice of the global batch (`shard_batch`), after `maybe_initialize_distributed`.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from pcam_jax.data import DEVICE_KEYS

DATA_AXIS = "data"
# Set to 1 to call jax.distributed.initialize() with no arguments (cluster auto-detection:
# Cloud TPU, SLURM, Open MPI); setting JAX_COORDINATOR_ADDRESS does the same with the address.
DISTRIBUTED_ENV = "PCAM_JAX_DISTRIBUTED"
_distributed_initialized = False


def maybe_initialize_distributed(force: bool | None = None) -> bool:
    """Call ``jax.distributed.initialize()`` when launched as a multi-process job; True if it did.

    A job is multi-process when ``force`` is True, or (``force`` None) when the environment sets
    ``JAX_COORDINATOR_ADDRESS`` (with ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``, which JAX
    reads itself) or ``PCAM_JAX_DISTRIBUTED=1``. Must run before anything touches a device.
    """
    global _distributed_initialized
    if force is None:
        force = bool(os.environ.get("JAX_COORDINATOR_ADDRESS")) or os.environ.get(DISTRIBUTED_ENV, "") == "1"
    if not force or _distributed_initialized:
        return False
    jax.distributed.initialize()
    _distributed_initialized = True
    return True


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh with axis ``data`` over ``devices`` (all devices of all processes by default)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Rows (dimension 0) split over ``data``, other dimensions whole."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def shard_batch(batch: dict, mesh: Mesh) -> dict:
    """The `DEVICE_KEYS` of a process-local numpy batch as global arrays; metadata keys left out.

    The global batch is the concatenation of every process's rows. When its row count does
    not divide over the mesh (e.g. a labelled batch of 4 on 8 devices) a single process
    replicates it instead; multi-process jobs must use divisible batch sizes.
    """
    missing = [k for k in DEVICE_KEYS if k not in batch]
    if missing:
        raise ValueError(f"batch lacks {missing}; a batch needs {DEVICE_KEYS} (see pcam_jax.data)")
    rows = {np.shape(batch[k])[0] for k in DEVICE_KEYS}
    if len(rows) != 1:
        raise ValueError(f"batch entries have different numbers of rows: "
                         f"{ {k: np.shape(batch[k]) for k in DEVICE_KEYS} }")
    global_rows = rows.pop() * jax.process_count()
    if global_rows % mesh.size == 0:
        sharding = batch_sharding(mesh)
    elif jax.process_count() == 1:
        sharding = replicated(mesh)
    else:
        raise ValueError(f"the global batch of {global_rows} rows does not divide over {mesh.size} devices: "
                         "choose config.data batch sizes that are multiples of the device count")
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(batch[k])) for k in DEVICE_KEYS}


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Every leaf of ``tree`` on every device of ``mesh`` (each process passes the same values)."""
    sharding = replicated(mesh)
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree)


def jit_train_step(train_step: Callable, mesh: Mesh, state: Any) -> Callable:
    """``step(state, batch, labelled_batch=None) -> (state, metrics)`` jitted for ``mesh``.

    State in and out replicated (``state`` gives the tree structure; abstract is fine), metrics
    replicated scalars, the state argument donated. Batches keep the sharding `shard_batch`
    gave them (``None`` in ``in_shardings``: follow the committed input). The jitted function
    is ``step.jitted``.
    """
    state_sharding = jax.tree.map(lambda _: replicated(mesh), state)
    jitted = jax.jit(train_step, in_shardings=(state_sharding, None, None),
                     out_shardings=(state_sharding, replicated(mesh)), donate_argnums=(0,))

    def step(state, batch, labelled_batch=None):
        return jitted(state, batch, labelled_batch)

    step.jitted = jitted
    return step
