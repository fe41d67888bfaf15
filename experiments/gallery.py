"""A picture of what the synthetic radiograph generator makes.

Writes a grid of images: the first row normal, the others abnormal, with lesion outlines in
red (the title names the lesion kinds: frac, lyti, scle) and the confounders named in the
title too ("mk L" / "mk R": side marker, "hw": metal hardware).

    python experiments/gallery.py --config synthetic --out docs/gallery.png
"""

from __future__ import annotations

import io
import pathlib

from absl import app, flags
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import PIL.Image  # noqa: E402

from pcam_jax import configs  # noqa: E402
from pcam_jax.data import synthetic  # noqa: E402

_CONFIG = flags.DEFINE_string("config", "synthetic", "Config preset or file (uses config.synthetic).")
_OUT = flags.DEFINE_string("out", "docs/gallery.png", "Where to write the PNG.")
_ROWS = flags.DEFINE_integer("rows", 3, "Rows of images (the first is normal images).")
_COLS = flags.DEFINE_integer("cols", 6, "Images per row.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 0, "Override config.synthetic.image_size (0: keep).")
_FIRST_INDEX = flags.DEFINE_integer("first_index", 0, "Index of the first image.")


def write_gallery(synthetic_config, out: pathlib.Path, rows: int, cols: int, first_index: int = 0):
    """Renders rows x cols images (row 0 normal, the rest abnormal) into a PNG at `out`."""
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols, 2.05 * rows), squeeze=False)
    for r in range(rows):
        for c in range(cols):
            index = first_index + r * cols + c
            ex = synthetic.generate_for_config(synthetic_config, index, label=int(r > 0))
            ax = axes[r, c]
            ax.imshow(ex["image"], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            if ex["lesion_mask"].any():
                ax.contour(ex["lesion_mask"], levels=[0.5], colors="red", linewidths=0.9)
            notes = [k[:4] for k in ex["lesion_kinds"]] or ["normal"]
            if ex["has_marker"]:
                notes.append(f"mk {ex['marker_letter']}")
            if ex["has_hardware"]:
                notes.append("hw")
            ax.set_title(" ".join(notes), fontsize=7, pad=2)
            ax.set_axis_off()
    fig.tight_layout(pad=0.3)
    out.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=72)
    plt.close(fig)
    # Grain compresses badly: a fixed palette (grays plus a few reds for the outlines) keeps
    # the picture and makes a small file.
    grays = [(v, v, v) for v in range(0, 256, 2)]
    reds = [(255, g, g) for g in range(0, 256, 32)] + [(r, 0, 0) for r in range(64, 256, 32)]
    palette = PIL.Image.new("P", (1, 1))
    palette.putpalette([c for rgb in grays + reds for c in rgb])
    image = PIL.Image.open(buffer).convert("RGB")
    image.quantize(palette=palette, dither=PIL.Image.Dither.NONE).save(out, optimize=True)


def main(argv):
    del argv
    config = configs.get_config(_CONFIG.value).synthetic
    if _IMAGE_SIZE.value:
        config.image_size = _IMAGE_SIZE.value
    out = pathlib.Path(_OUT.value)
    write_gallery(config, out, _ROWS.value, _COLS.value, _FIRST_INDEX.value)
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    app.run(main)
