"""The numbers a recipe choice may be made on: no test image, no reported counterfactual limb.

    python experiments/selection_scores.py --workdir work/demo [--stages 1,2,3] [--limbs 100] [--out FILE]

For each trained stage of the run (its best checkpoint): its model-selection metrics (from the
training log), its maps on the ``heldout_labelled`` split (pointing game, PxAP) and, for
classifiers, the counterfactual shortcut numbers on selection limbs, never the reported ones
(`pcam_jax.study.choices`). Prints one JSON object (and writes it to --out).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--stages", default="1,2,3")
    parser.add_argument("--limbs", type=int, default=100)
    parser.add_argument("--out", default="")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    from pcam_jax import runtime

    runtime.configure()
    from pcam_jax.study import choices

    result = choices.stage_scores(args.workdir, tuple(int(s) for s in args.stages.split(",")), args.limbs)
    text = json.dumps(result, indent=1)
    if args.out:
        pathlib.Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
