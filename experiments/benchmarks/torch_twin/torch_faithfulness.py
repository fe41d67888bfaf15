"""Faithfulness metrics of Quantus and pytorch-grad-cam on the PyTorch twin, timed (one JSON line each).

    /tmp/torch-ref/bin/python experiments/benchmarks/torch_twin/torch_faithfulness.py INPUTS.npz \
        --metric quantus_pixel_flipping [--num-steps 50] [--rounds 1] [--threads 2]

INPUTS.npz is written by experiments/benchmarks/faithfulness_vs_pytorch.py: the JAX network's
weights under this twin's parameter names (so both frameworks score the same network), the
images (B, H, W) in [0, 1] and the explained maps (B, H, W) in [0, 1]. The twin normalises its
input as the JAX encoder does ((x - mean) / std, the values stored in the file).

Metrics (what each library calls the measurement that our `pcam_jax.trust.faithfulness` computes):
- quantus_pixel_flipping: Quantus PixelFlipping, black baseline, H*W/num_steps pixels per step
  (= our deletion curve with num_steps steps, less its step 0), AUC per sample divided by the
  curve's number of intervals so that it is on our [0, 1] scale;
- quantus_road: Quantus ROAD at 10..90% (our 9 ROAD fractions), noisy linear imputation, MoRF;
- pgc_road_morf / pgc_road_lerf: pytorch-grad-cam ROADMostRelevantFirstAverage /
  ROADLeastRelevantFirstAverage (percentiles 10..90), softmax score of the abnormal class;
- pgc_drop: pytorch-grad-cam DropInConfidence (the image multiplied by the map).
"""
import argparse
import os
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from torch_reference import ResNet, emit, import_grad_cam  # noqa: E402  (the twin network, same directory)

METRICS = ("quantus_pixel_flipping", "quantus_road", "pgc_road_morf", "pgc_road_lerf", "pgc_drop")


class Normalised(nn.Module):
    """The twin with the JAX encoder's input normalisation in front."""

    def __init__(self, mean: float, std: float):
        super().__init__()
        self.net, self.mean, self.std = ResNet(), mean, std

    def forward(self, x):
        return self.net((x - self.mean) / self.std)


def load_network(inputs) -> Normalised:
    model = Normalised(float(inputs["input_mean"]), float(inputs["input_std"]))
    state = {name[len("w/"):]: torch.from_numpy(np.asarray(inputs[name])) for name in inputs.files
             if name.startswith("w/")}
    missing, unexpected = model.net.load_state_dict(state, strict=False)
    missing = [m for m in missing if not m.endswith("num_batches_tracked")]
    if missing or unexpected:
        sys.exit(f"torch_faithfulness.py: weights do not fit the twin: missing {missing}, unexpected {unexpected}")
    return model.eval()


def _softmax_target(index):
    import_grad_cam()
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    return ClassifierOutputSoftmaxTarget(index)


def metric_fn(name, model, x, saliency, num_steps):
    """() -> per-image values for metric ``name`` on images x (B, 1, H, W) and maps (B, H, W)."""
    b, _, h, w = x.shape
    y = np.ones(b, dtype=np.int64)  # the abnormal class, as the JAX side explains
    xn, an = x.numpy(), saliency[:, None]
    if name == "quantus_pixel_flipping":
        import quantus

        metric = quantus.PixelFlipping(features_in_step=(h * w) // num_steps, perturb_baseline="black",
                                       return_auc_per_sample=True, disable_warnings=True)
        return lambda: metric(model=model, x_batch=xn, y_batch=y, a_batch=an, device="cpu",
                              softmax=True, batch_size=b, channel_first=True)
    if name == "quantus_road":
        import quantus

        metric = quantus.ROAD(percentages=list(range(10, 100, 10)), noise=0.01, disable_warnings=True,
                              return_aggregate=False)
        return lambda: metric(model=model, x_batch=xn, y_batch=y, a_batch=an, device="cpu",
                              softmax=True, batch_size=b, channel_first=True)
    import_grad_cam()
    from pytorch_grad_cam.metrics.cam_mult_image import DropInConfidence
    from pytorch_grad_cam.metrics.road import ROADLeastRelevantFirstAverage, ROADMostRelevantFirstAverage

    metric = {"pgc_road_morf": ROADMostRelevantFirstAverage, "pgc_road_lerf": ROADLeastRelevantFirstAverage,
              "pgc_drop": DropInConfidence}[name]()
    targets = [_softmax_target(1) for _ in range(b)]
    return lambda: metric(x, saliency, targets, model)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs")
    p.add_argument("--metric", choices=METRICS, required=True)
    p.add_argument("--num-steps", type=int, default=50)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--warmup", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    np.random.seed(0)
    inputs = np.load(a.inputs)
    model = load_network(inputs)
    x = torch.from_numpy(np.asarray(inputs["images"], np.float32)[:, None])
    saliency = np.asarray(inputs["saliency"], np.float32)
    with torch.no_grad():  # the same network as JAX's: its probabilities travel in the file
        probs = F.softmax(model(x), dim=1)[:, 1].numpy()
    prob_error = float(np.max(np.abs(probs - inputs["probability"])))
    fn = metric_fn(a.metric, model, x, saliency, a.num_steps)
    for _ in range(a.warmup):
        fn()
    times, value = [], None
    for _ in range(a.rounds):
        t0 = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - t0)
    if isinstance(value, dict):  # Quantus ROAD: {percentage: share of images still predicted right}
        value = list(value.values())
    value = np.asarray(value, np.float64)
    if a.metric == "quantus_pixel_flipping":  # Quantus: trapezoid with dx=1 over its curve; ours spans [0, 1]
        value = value / max(1, -(-(x.shape[-1] * x.shape[-2]) // ((x.shape[-1] * x.shape[-2]) // a.num_steps)) - 1)
    emit(bench="faithfulness_torch", metric=a.metric, batch=int(x.shape[0]), size=int(x.shape[-1]),
         num_steps=a.num_steps, rounds=a.rounds, median_s=statistics.median(times), min_s=min(times),
         max_s=max(times), mean_value=float(np.mean(value)), max_probability_error_vs_jax=prob_error)


if __name__ == "__main__":
    main()
