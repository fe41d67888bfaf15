"""Faithfulness metrics, JAX (`pcam_jax.trust.faithfulness`) against Quantus and pytorch-grad-cam, interleaved.

    bash experiments/benchmarks/torch_twin/setup.sh        # once: /tmp/torch-ref (CPU torch, grad-cam, quantus)
    python experiments/benchmarks/faithfulness_vs_pytorch.py                  # batch 16 at 320 px, 2 rounds
    python experiments/benchmarks/faithfulness_vs_pytorch.py --batch 4 --size 64 --rounds 1   # a quick look

Same network, same weights, same images, same maps on both sides: this script builds the JAX
network as experiments/benchmarks/faithfulness.py does (seeded init + BatchNorm statistics from a
few training-mode passes), writes its weights under the PyTorch twin's names, the images and the
explained maps (positive CAM of the abnormal class at image size) to one .npz, and the PyTorch
side (experiments/benchmarks/torch_twin/torch_faithfulness.py) loads them; it checks that its
probabilities equal JAX's (the "prob err" column).

Each round runs, each in its own process, one after the other: the JAX metrics (compiled in a
warm-up call, then one timed call each), then every library metric (one timed call each;
their first call is their normal cost: nothing to compile). Rounds interleave so that machine
drift hits both sides alike; the table gives medians over rounds and ratios
(library seconds / JAX seconds: above 1 means JAX is faster). Pairs measured:

| JAX (`pcam_jax.trust.faithfulness`) | library equivalent |
|---|---|
| deletion curve, ``--num-steps`` steps, baseline 0 | Quantus PixelFlipping, black, H*W/num_steps pixels a step |
| ROAD MoRF, 9 fractions 0.1..0.9, noisy linear imputation | Quantus ROAD (10..90%), pytorch-grad-cam ROADMostRelevantFirstAverage |
| ROAD LeRF | pytorch-grad-cam ROADLeastRelevantFirstAverage |
| average drop in confidence | pytorch-grad-cam DropInConfidence |

Insertion has no equivalent in either library; it is timed on the JAX side only. The
libraries' imputation is an exact sparse solve per image (scipy), ours conjugate gradients
(``--cg-iterations``), so ROAD values agree to the imputation's tolerance, not exactly.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402  (experiments/benchmarks/common.py)

HERE = os.path.dirname(os.path.abspath(__file__))
TORCH_SCRIPT = os.path.join(HERE, "torch_twin", "torch_faithfulness.py")
PAIRS = (("deletion", "quantus_pixel_flipping"), ("road_morf", "quantus_road"), ("road_morf", "pgc_road_morf"),
         ("road_lerf", "pgc_road_lerf"), ("confidence", "pgc_drop"), ("insertion", None))


def twin_state_dict(variables) -> dict:
    """JAX variables -> {torch parameter name: array} of experiments/benchmarks/torch_twin's ResNet."""
    import numpy as np

    from pcam_jax.models import NetworkSpec

    spec = NetworkSpec()
    params, stats = variables["params"]["encoder"], variables["batch_stats"]["encoder"]
    conv = lambda k: np.transpose(np.asarray(k), (3, 2, 0, 1))  # HWIO -> OIHW

    def bn(prefix, p, s):
        return {f"{prefix}.weight": p["scale"], f"{prefix}.bias": p["bias"],
                f"{prefix}.running_mean": s["mean"], f"{prefix}.running_var": s["var"]}

    out = {"conv1.weight": conv(params["stem_conv"]["kernel"]), **bn("bn1", params["stem_bn"], stats["stem_bn"])}
    k = 0
    for i, n in enumerate(spec.blocks):
        for j in range(n):
            name, t = f"stage{i + 1}_block{j + 1}", f"blocks.{k}"
            p, s = params[name], stats[name]
            out.update({f"{t}.conv1.weight": conv(p["conv1"]["kernel"]), f"{t}.conv2.weight": conv(p["conv2"]["kernel"]),
                        **bn(f"{t}.bn1", p["bn1"], s["bn1"]), **bn(f"{t}.bn2", p["bn2"], s["bn2"])})
            if "proj" in p:
                out.update({f"{t}.down.0.weight": conv(p["proj"]["kernel"]), **bn(f"{t}.down.1", p["proj_bn"], s["proj_bn"])})
            k += 1
    head = variables["params"]["head"]["dense"]
    out.update({"fc.weight": np.asarray(head["kernel"]).T, "fc.bias": head["bias"]})
    return {name: np.ascontiguousarray(np.asarray(v, np.float32)) for name, v in out.items()}


def export(path: str, size: int, batch: int, seed: int) -> None:
    """Write the network (twin names), images, maps and JAX probabilities to ``path`` (.npz)."""
    common.apply_project_xla_flags()
    import jax
    import numpy as np

    from maps import build, explained_map  # experiments/benchmarks/maps.py: as faithfulness.py
    from pcam_jax.models import NetworkSpec, abnormal_probability

    model, variables, images = build(size, batch, seed)
    saliency = explained_map(model, variables, images)
    probability = jax.jit(lambda v, x: abnormal_probability(model, v, x)[0])(variables, images)
    spec = NetworkSpec()
    np.savez(path, images=np.asarray(images)[..., 0], saliency=np.asarray(saliency),
             probability=np.asarray(probability), input_mean=spec.input_mean, input_std=spec.input_std,
             **{f"w/{k}": v for k, v in twin_state_dict(jax.device_get(variables)).items()})
    print(common.json_line({"exported": path, "batch": batch, "size": size}), flush=True)


def _run(cmd: list[str]) -> list[dict]:
    return common.run_json_lines(cmd, "faithfulness_vs_pytorch.py")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--num-steps", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--torch-python", default=os.environ.get("TORCH_REF_PYTHON", "/tmp/torch-ref/bin/python"))
    parser.add_argument("--library-metrics", default="quantus_pixel_flipping,quantus_road,pgc_road_morf,pgc_road_lerf,pgc_drop")
    parser.add_argument("--export", metavar="NPZ", help=argparse.SUPPRESS)  # internal: the exporting subprocess
    args = parser.parse_args()
    if args.export:
        return export(args.export, args.size, args.batch, args.seed)
    if not os.path.exists(args.torch_python):
        sys.exit(f"faithfulness_vs_pytorch.py: {args.torch_python} not found; run "
                 "`bash experiments/benchmarks/torch_twin/setup.sh` first (or pass --torch-python)")
    print(common.environment_header(), flush=True)
    library = [m for m in args.library_metrics.split(",") if m]
    shape = ["--batch", str(args.batch), "--size", str(args.size)]
    with tempfile.TemporaryDirectory() as tmp:
        inputs = os.path.join(tmp, "inputs.npz")
        _run([sys.executable, __file__, "--export", inputs, *shape, "--seed", str(args.seed)])
        jax_cmd = [sys.executable, os.path.join(HERE, "faithfulness.py"), *shape, "--num-steps", str(args.num_steps),
                   "--rows", "deletion,insertion,road_morf,road_lerf,confidence", "--rounds", "1", "--warmup", "1",
                   "--seed", str(args.seed)]
        rows: dict[str, list[dict]] = {}
        for r in range(args.rounds):
            for row in _run(jax_cmd):
                rows.setdefault(row["metric"], []).append(row)
            for metric in library:
                for row in _run([args.torch_python, TORCH_SCRIPT, inputs, "--metric", metric,
                                 "--num-steps", str(args.num_steps)]):
                    rows.setdefault(row["metric"], []).append(row)
            print(f"round {r + 1}/{args.rounds}: " + ", ".join(
                f"{m} {rows[m][-1]['median_s']:.2f} s" for m in rows), flush=True)
    median = {m: statistics.median(x["median_s"] for x in rs) for m, rs in rows.items()}
    table = []
    for ours, theirs in PAIRS:
        if ours not in median or (theirs is not None and theirs not in median):
            continue
        entry = {"jax": ours, "jax_s": median[ours], "jax_value": rows[ours][-1]["mean_value"],
                 "library": theirs or "-", "library_s": median.get(theirs), "ratio": None,
                 "library_value": rows[theirs][-1]["mean_value"] if theirs else None,
                 "prob_err": rows[theirs][-1].get("max_probability_error_vs_jax") if theirs else None}
        if theirs:
            entry["ratio"] = median[theirs] / median[ours]
        table.append(entry)
        print(common.json_line(dict(entry, bench="faithfulness_vs_pytorch", batch=args.batch, size=args.size,
                                    num_steps=args.num_steps, rounds=args.rounds)), flush=True)
    print()
    print(common.format_table(table, [
        ("jax", "JAX metric", ""), ("jax_s", "JAX s/batch", ".3f"), ("library", "library metric", ""),
        ("library_s", "library s/batch", ".3f"), ("ratio", "library / JAX", ".1f"),
        ("jax_value", "JAX mean", ".4f"), ("library_value", "library mean", ".4f"), ("prob_err", "prob err", ".1e"),
    ]))


if __name__ == "__main__":
    main()
