"""`make bench`: every benchmark in this folder, one after the other, each printing its table.

    python experiments/benchmarks/run_all.py [--quick]

Run it on a quiet machine; quote ratios against the PyTorch twin (experiments/benchmarks/torch_twin) run in
the same session, not absolute times. When that twin is installed (/tmp/torch-ref, by
`bash experiments/benchmarks/torch_twin/setup.sh`), the full run ends with `vs_pytorch.py`, which alternates
JAX and PyTorch runs and prints their ratio. `--quick` uses small shapes to check the scripts work.
"""

import argparse
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
TORCH_PYTHON = "/tmp/torch-ref/bin/python"
FULL = {
    "train_step.py": ["--stages", "1,2,3"],
    "maps.py": [],
    "faithfulness.py": [],
    "input_pipeline.py": [],
}
QUICK = {
    "train_step.py": ["--shapes", "4x64", "--stages", "1,2,3", "--steps", "2", "--warmup", "1"],
    "maps.py": ["--batch", "4", "--size", "64", "--rounds", "2"],
    "faithfulness.py": ["--batch", "2", "--size", "64", "--num-steps", "4", "--cg-iterations", "20", "--rounds", "1"],
    "input_pipeline.py": ["--images", "32", "--synthetic-images", "32", "--batches", "3", "--warmup", "1", "--size", "64",
                          "--synthetic-size", "64"],
}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    failed = []
    for script, flags in (QUICK if args.quick else FULL).items():
        print(f"\n===== {script} {' '.join(flags)}", flush=True)
        if subprocess.run([sys.executable, os.path.join(HERE, script), *flags]).returncode != 0:
            failed.append(script)
    if not args.quick and os.path.exists(TORCH_PYTHON):
        print("\n===== vs_pytorch.py", flush=True)
        if subprocess.run([sys.executable, os.path.join(HERE, "vs_pytorch.py")]).returncode != 0:
            failed.append("vs_pytorch.py")
    print("\nPyTorch reference, same session: bash experiments/benchmarks/torch_twin/setup.sh, then\n"
          "  python experiments/benchmarks/vs_pytorch.py                 # interleaved train-step ratio\n"
          "  /tmp/torch-ref/bin/python experiments/benchmarks/torch_twin/torch_reference.py train --batch 16 --size 320\n"
          "  /tmp/torch-ref/bin/python experiments/benchmarks/torch_twin/torch_reference.py maps --batch 16 --size 320")
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
