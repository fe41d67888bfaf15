"""Start an N-process JAX job on this machine: one command, N ranks, bounded waits.

What a cluster manager (SLURM, a TPU pod slice) does for `jax.distributed`, for one host:
every process gets ``JAX_COORDINATOR_ADDRESS`` (process 0 on a free local port),
``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``, which `pcam_jax.training.mesh.
maybe_initialize_distributed` passes to ``jax.distributed.initialize``. On CPU each process
gets ``devices_per_process`` fake devices and CPU collectives (gloo, JAX's default); on a
GPU host ``one_gpu_each`` gives process i GPU i.

`launch` never waits without a bound: when a process fails, the others get ``grace``
seconds to notice (a peer's death reaches them through the heartbeat timeout) and are then
killed; the whole job is killed after ``timeout`` seconds. ``experiments/
launch_multiprocess.py`` is the command-line front end; the README's "Several processes"
section shows it, SLURM and TPU pod slices.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import signal
import socket
import subprocess
import time
from typing import Mapping, Sequence

from pcam_jax.training import mesh

KILLED_STATUS = -signal.SIGKILL


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def process_environment(base: Mapping[str, str], *, process_id: int, num_processes: int, coordinator: str,
                        devices_per_process: int | None = None, one_gpu_each: bool = False,
                        heartbeat_seconds: int | None = None) -> dict[str, str]:
    """The environment of rank ``process_id``: ``base`` plus the distributed variables.

    ``devices_per_process`` (CPU): that many fake CPU devices (``XLA_FLAGS``), JAX on CPU only.
    Pure: returns a new dict.
    """
    if not 0 <= process_id < num_processes:
        raise ValueError(f"process_id {process_id} is not in [0, {num_processes})")
    env = dict(base)
    env.update({"JAX_COORDINATOR_ADDRESS": coordinator, mesh.NUM_PROCESSES_ENV: str(num_processes),
                mesh.PROCESS_ID_ENV: str(process_id), "PYTHONUNBUFFERED": "1"})
    if devices_per_process is not None:
        flags = [f for f in env.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
        env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={int(devices_per_process)}"])
        env["JAX_PLATFORMS"] = "cpu"
    if one_gpu_each:
        env["JAX_LOCAL_DEVICE_IDS"] = str(process_id)
    if heartbeat_seconds is not None:
        env[mesh.HEARTBEAT_ENV] = str(int(heartbeat_seconds))
    return env


@dataclasses.dataclass
class ProcessResult:
    process_id: int
    status: int          # exit status; KILLED_STATUS when `launch` killed it
    seconds: float       # from the job's start to this process's end
    log: pathlib.Path    # its stdout and stderr

    def tail(self, lines: int = 15) -> str:
        text = self.log.read_text(errors="replace").splitlines() if self.log.exists() else []
        return "\n".join(text[-lines:])


def launch(command: Sequence[str], num_processes: int, log_dir, *, devices_per_process: int | None = None,
           one_gpu_each: bool = False, heartbeat_seconds: int | None = None, timeout: float = 3600.0,
           grace: float = 60.0, extra_env: Mapping[str, str] | Sequence[Mapping[str, str]] | None = None,
           base_env: Mapping[str, str] | None = None) -> list[ProcessResult]:
    """Run ``command`` as ``num_processes`` ranks; wait for all of them, never unboundedly.

    Logs go to ``log_dir/process{i}.log``. ``extra_env``: variables for every rank (a mapping)
    or one mapping per rank. Returns one `ProcessResult` per rank, in rank order.
    """
    log_dir = pathlib.Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    extra_env = {} if extra_env is None else extra_env
    per_rank = ([dict(extra_env)] * num_processes if isinstance(extra_env, Mapping)
                else [dict(e) for e in extra_env])
    if len(per_rank) != num_processes:
        raise ValueError(f"extra_env has {len(per_rank)} mappings for {num_processes} processes")
    coordinator = f"127.0.0.1:{free_port()}"
    base = dict(os.environ if base_env is None else base_env)
    started = time.monotonic()
    processes, logs, ended = [], [], {}
    try:
        for rank in range(num_processes):
            env = process_environment(base, process_id=rank, num_processes=num_processes, coordinator=coordinator,
                                      devices_per_process=devices_per_process, one_gpu_each=one_gpu_each,
                                      heartbeat_seconds=heartbeat_seconds)
            env.update(per_rank[rank])
            log = open(log_dir / f"process{rank}.log", "wb")
            logs.append(log)
            # Own process group: killing a rank also kills anything it started.
            processes.append(subprocess.Popen(list(command), env=env, stdout=log, stderr=subprocess.STDOUT,
                                              start_new_session=True))
        deadline = started + timeout
        while len(ended) < num_processes:
            now = time.monotonic()
            for rank, process in enumerate(processes):
                if rank not in ended and process.poll() is not None:
                    ended[rank] = (process.returncode, now - started)
                    if process.returncode != 0:  # a failure: the others get `grace` seconds
                        deadline = min(deadline, now + grace)
            if now > deadline:
                break
            time.sleep(0.1)
    finally:
        for rank, process in enumerate(processes):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)
                ended[rank] = (KILLED_STATUS, time.monotonic() - started)
        for log in logs:
            log.close()
    return [ProcessResult(rank, *ended[rank], log_dir / f"process{rank}.log") for rank in range(num_processes)]


def summary(results: Sequence[ProcessResult]) -> str:
    """One line per rank: status, seconds, log; the tail of the log of every failed rank."""
    lines = []
    for r in results:
        state = "ok" if r.status == 0 else ("killed by the launcher (still running at the deadline)"
                                            if r.status == KILLED_STATUS else f"exit status {r.status}")
        lines.append(f"process {r.process_id}: {state} after {r.seconds:.1f} s; log {r.log}")
    for r in results:
        if r.status != 0:
            lines.append(f"--- last lines of process {r.process_id} ---\n{r.tail()}")
    return "\n".join(lines)
