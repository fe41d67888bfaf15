"""Run a pcam-jax command as N cooperating processes on this machine (jax.distributed).

    # 2 processes x 2 fake CPU devices, the tiny preset, all three stages
    python experiments/launch_multiprocess.py --processes 2 --cpu-devices 2 -- \
        train --config tiny --workdir work/mp --data_dir work/data
    # one process per GPU of this host
    python experiments/launch_multiprocess.py --processes 8 --one-gpu-each -- train --config mura --workdir work/mura

Everything after ``--`` is a pcam-jax command line (or any program, when it does not start
with a pcam-jax command). Each process's output goes to ``--log-dir/process{i}.log``; the
launcher prints one line per process at the end and exits with the first failure's status.
When one process dies, the others exit within ``--heartbeat-seconds`` (JAX's coordination
service notices), and the launcher kills whatever still runs ``--grace`` seconds later.
Re-running the same command resumes from the last checkpoint all processes wrote.
On SLURM or a TPU pod slice no launcher is needed: set PCAM_JAX_DISTRIBUTED=1 and start the
command once per task / host (README, "Several processes").
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from pcam_jax.cli import COMMANDS  # noqa: E402
from pcam_jax.training import local_launch  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--cpu-devices", type=int, default=None,
                        help="run on CPU with this many fake devices per process")
    parser.add_argument("--one-gpu-each", action="store_true", help="process i uses local GPU i")
    parser.add_argument("--heartbeat-seconds", type=int, default=30,
                        help="a process exits this long after a peer stopped answering")
    parser.add_argument("--timeout", type=float, default=24 * 3600.0, help="kill the job after this many seconds")
    parser.add_argument("--grace", type=float, default=None,
                        help="seconds the others get after one fails (default: heartbeat + 30)")
    parser.add_argument("--log-dir", default=None, help="default: a new temporary directory")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command after --, e.g. -- train --config tiny --workdir work/mp")
    if command[0] in COMMANDS:
        command = [sys.executable, "-m", "pcam_jax.cli", *command]
    log_dir = args.log_dir or tempfile.mkdtemp(prefix="pcam_jax_launch_")
    print(f"launching {args.processes} processes; logs in {log_dir}", flush=True)
    results = local_launch.launch(
        command, args.processes, log_dir, devices_per_process=args.cpu_devices, one_gpu_each=args.one_gpu_each,
        heartbeat_seconds=args.heartbeat_seconds, timeout=args.timeout,
        grace=args.grace if args.grace is not None else args.heartbeat_seconds + 30)
    print(local_launch.summary(results), flush=True)
    failed = [r.status for r in results if r.status != 0]
    return 0 if not failed else (failed[0] if failed[0] > 0 else 1)


if __name__ == "__main__":
    sys.exit(main())
