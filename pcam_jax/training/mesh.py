"""Data parallelism: a mesh with a ``data`` axis, replicated state, batches sharded on rows.

One device is the same code with a mesh of one. Multi-host: each process feeds its own
slice of the global batch (`shard_batch`), after `maybe_initialize_distributed`.
"""

from __future__ import annotations

import collections
import itertools
import os
from typing import Any, Callable, Iterable, Iterator, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from pcam_jax.data import DEVICE_KEYS

DATA_AXIS = "data"
# Set to 1 to call jax.distributed.initialize() with no arguments (cluster auto-detection:
# Cloud TPU, SLURM, Open MPI); setting JAX_COORDINATOR_ADDRESS does the same with the address.
DISTRIBUTED_ENV = "PCAM_JAX_DISTRIBUTED"
# Read here and passed on (jax.distributed.initialize reads only JAX_COORDINATOR_ADDRESS itself):
# the job's size and this process's rank, for launches without a cluster manager
# (experiments/launch_multiprocess.py sets them).
NUM_PROCESSES_ENV, PROCESS_ID_ENV = "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"
# Seconds without a heartbeat before the job is declared broken and every surviving process
# exits (JAX's default is 100), and seconds to wait for all processes to connect (300).
HEARTBEAT_ENV, INIT_TIMEOUT_ENV = "PCAM_JAX_HEARTBEAT_SECONDS", "PCAM_JAX_INIT_TIMEOUT_SECONDS"
_distributed_initialized = False


def _int_env(environ, name: str) -> int | None:
    value = environ.get(name, "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} must be an integer") from None


def distributed_arguments(environ=os.environ) -> dict | None:
    """The keyword arguments for ``jax.distributed.initialize``, or None for a one-process job.

    A job is multi-process when ``environ`` sets ``JAX_COORDINATOR_ADDRESS`` (host:port of
    process 0; then ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` give the job's size and this
    process's rank, or the cluster is auto-detected when they are unset) or
    ``PCAM_JAX_DISTRIBUTED=1`` (everything auto-detected: SLURM, Open MPI, a Cloud TPU pod
    slice). ``PCAM_JAX_HEARTBEAT_SECONDS`` and ``PCAM_JAX_INIT_TIMEOUT_SECONDS`` bound how
    long a process waits for a dead or missing peer before it exits. Pure: reads ``environ`` only.
    """
    if not environ.get("JAX_COORDINATOR_ADDRESS") and environ.get(DISTRIBUTED_ENV, "") != "1":
        return None
    arguments = {}
    for key, name in (("num_processes", NUM_PROCESSES_ENV), ("process_id", PROCESS_ID_ENV),
                      ("heartbeat_timeout_seconds", HEARTBEAT_ENV),
                      ("initialization_timeout", INIT_TIMEOUT_ENV)):
        value = _int_env(environ, name)
        if value is not None:
            arguments[key] = value
    if ("num_processes" in arguments) != ("process_id" in arguments):
        raise ValueError(f"set both {NUM_PROCESSES_ENV} and {PROCESS_ID_ENV}, or neither (cluster auto-detection)")
    return arguments


def maybe_initialize_distributed(force: bool | None = None) -> bool:
    """Call ``jax.distributed.initialize`` when launched as a multi-process job; True if it did.

    ``force`` None: when the environment asks for it (`distributed_arguments`); True: always
    (auto-detection where the environment gives nothing). Must run before anything touches a
    device. A process that loses a peer later exits within the heartbeat timeout with JAX's
    message "Terminating process because the JAX distributed service detected fatal errors".
    """
    global _distributed_initialized
    arguments = distributed_arguments()
    if arguments is None and force:
        arguments = {}
    if arguments is None or force is False or _distributed_initialized:
        return False
    jax.distributed.initialize(**arguments)
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


_barriers = itertools.count()


def wait_for_all_processes(what: str, timeout_seconds: int = 3600) -> None:
    """Block until every process of the job got here (through the coordination service, no device)."""
    if jax.process_count() > 1:
        import orbax.checkpoint as ocp

        ocp.multihost.sync_global_processes(f"pcam_jax:{what}:{next(_barriers)}", timeout=timeout_seconds)


def jit_train_step(train_step: Callable, mesh: Mesh, state: Any) -> Callable:
    """``step(state, batch, labelled_batch=None) -> (state, metrics)`` jitted for ``mesh``.

    State in and out replicated (``state`` gives the tree structure; abstract is fine), metrics
    replicated scalars, the state argument donated. Batches keep the sharding `shard_batch`
    gave them (``None`` in ``in_shardings``: follow the committed input). The jitted function
    is ``step.jitted``.

    Multi-process: the first call compiles, then waits for every process to have compiled
    before running. Why: CPU collectives (gloo) give a peer 30 s to join the first
    collective, and one process may compile for minutes longer than another (only process 0
    reads and writes the persistent compilation cache).
    """
    state_sharding = jax.tree.map(lambda _: replicated(mesh), state)
    jitted = jax.jit(train_step, in_shardings=(state_sharding, None, None),
                     out_shardings=(state_sharding, replicated(mesh)), donate_argnums=(0,))
    compiled_for = set()

    def step(state, batch, labelled_batch=None):
        if jax.process_count() > 1:
            signature = jax.tree.map(lambda x: (np.shape(x), str(np.result_type(x))), (batch, labelled_batch))
            key = str(jax.tree.structure(signature)) + str(jax.tree.leaves(signature))
            if key not in compiled_for:
                jitted.lower(state, batch, labelled_batch).compile()  # kept in jit's cache for the call below
                wait_for_all_processes("train step compiled")
                compiled_for.add(key)
        return jitted(state, batch, labelled_batch)

    step.jitted = jitted
    return step


def prefetch_to_device(batches: Iterable[dict], mesh, depth: int = 2) -> Iterator[tuple[dict, dict]]:
    """``(device_batch, host_batch)`` pairs, keeping ``depth`` batches already sent to the devices.

    `jax.device_put` is asynchronous, so the transfer of batch ``i + 1`` overlaps step ``i``.
    Only `DEVICE_KEYS` go to the devices; strings stay in ``host_batch``.
    """
    queue = collections.deque()
    for host in batches:
        queue.append((shard_batch({k: host[k] for k in DEVICE_KEYS if k in host}, mesh), host))
        if len(queue) >= max(depth, 1):
            yield queue.popleft()
    while queue:
        yield queue.popleft()
