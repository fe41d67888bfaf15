"""Stage-1 train step, JAX against the PyTorch twin in experiments/benchmarks/torch_twin, interleaved.

    bash experiments/benchmarks/torch_twin/setup.sh                       # once: /tmp/torch-ref with CPU PyTorch
    python experiments/benchmarks/vs_pytorch.py          # b16@320 and b32@128, 3 rounds each
    python experiments/benchmarks/vs_pytorch.py --shapes 16x320 --rounds 5 --channels-last

Shared machines drift in speed by 20-40% over minutes, so one JAX run followed by one
PyTorch run can show either framework ahead. This script alternates them (JAX, PyTorch,
JAX, PyTorch, ... each in its own process, as a user would run it) and reports the median
of each framework's per-round medians and their ratio (PyTorch seconds / JAX seconds:
above 1 means JAX is faster). Same network, batch, image size and Adam step in both.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402  (experiments/benchmarks/common.py)

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_TORCH_SCRIPT = os.path.join(HERE, "torch_twin", "torch_reference.py")


def run_jax(batch: int, size: int, steps: int) -> float:
    cmd = [sys.executable, os.path.join(HERE, "train_step.py"), "--shapes", f"{batch}x{size}", "--stages", "1",
           "--steps", str(steps), "--no-parts"]
    return common.run_json_lines(cmd, "vs_pytorch.py")[-1]["median_s"]


def run_torch(python: str, script: str, batch: int, size: int, steps: int, channels_last: bool) -> float:
    cmd = [python, script, "train", "--batch", str(batch), "--size", str(size), "--steps", str(steps)]
    if channels_last:
        cmd.append("--channels-last")
    return common.run_json_lines(cmd, "vs_pytorch.py")[-1]["median_s"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="16x320,32x128", help="comma-separated BATCHxSIZE")
    parser.add_argument("--rounds", type=int, default=3, help="JAX/PyTorch pairs per shape")
    parser.add_argument("--steps", type=int, default=15, help="timed steps per run")
    parser.add_argument("--torch-python", default="/tmp/torch-ref/bin/python")
    parser.add_argument("--torch-script", default=DEFAULT_TORCH_SCRIPT)
    parser.add_argument("--channels-last", action="store_true", help="PyTorch in NHWC memory format")
    args = parser.parse_args()
    missing = [p for p in (args.torch_python, args.torch_script) if not os.path.exists(p)]
    if missing:
        sys.exit(f"vs_pytorch.py: {', '.join(missing)} not found. Create the PyTorch reference with "
                 "`bash experiments/benchmarks/torch_twin/setup.sh`, or pass --torch-python / --torch-script.")
    common.apply_project_xla_flags()
    print(common.environment_header())
    print(f"# PyTorch: {args.torch_python} {args.torch_script}{' --channels-last' if args.channels_last else ''}")
    table = []
    for shape in args.shapes.split(","):
        batch, size = (int(v) for v in shape.lower().split("x"))
        jax_s, torch_s = [], []
        for r in range(args.rounds):
            jax_s.append(run_jax(batch, size, args.steps))
            torch_s.append(run_torch(args.torch_python, args.torch_script, batch, size, args.steps, args.channels_last))
            print(common.json_line({"bench": "vs_pytorch", "batch": batch, "size": size, "round": r,
                                    "jax_s": jax_s[-1], "torch_s": torch_s[-1]}), flush=True)
        table.append((batch, size, jax_s, torch_s))
    print()
    print(f"{'batch':>5} {'size':>5} {'JAX s':>8} {'PyTorch s':>10} {'PyTorch/JAX':>12}  per-round ratios")
    for batch, size, jax_s, torch_s in table:
        j, t = statistics.median(jax_s), statistics.median(torch_s)
        rounds = " ".join(f"{b / a:.2f}" for a, b in zip(jax_s, torch_s))
        print(f"{batch:>5} {size:>5} {j:>8.4f} {t:>10.4f} {t / j:>11.2f}x  {rounds}")


if __name__ == "__main__":
    main()
