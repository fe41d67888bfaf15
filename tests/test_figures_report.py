"""Figures (axes counts, overlay pixels) and the Markdown report (bold lands on the best cells)."""

import matplotlib
import numpy as np
import pytest
from PIL import Image

from pcam_jax.maps import overlays
from pcam_jax.evaluation import figures, report


def _grid_inputs(n=3, size=32, methods=("CAM", "positive CAM", "stage 3")):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    images = rng.random((n, size, size, 1)) * 0.3 + 0.3
    masks = np.zeros((n, size, size), np.int64)
    masks[:-1, 8:16, 10:20] = 1  # the last image is normal: empty mask
    maps = {}
    for k, name in enumerate(methods):
        blob = np.exp(-(((yy - 12 - 3 * k) ** 2 + (xx - 15) ** 2) / (2 * (3 + 2 * k) ** 2)))
        maps[name] = np.repeat(blob[None], n, axis=0)
    return images, masks, maps


def test_overlay_blends_image_and_colour_map():
    image = np.full((4, 5), 0.5)
    saliency = np.zeros((4, 5))
    saliency[1, 2] = 1.0
    rgb = overlays.overlay(image, saliency, alpha=0.5, cmap="jet")
    assert rgb.shape == (4, 5, 3) and rgb.dtype == np.uint8
    for value, (y, x) in ((1.0, (1, 2)), (0.0, (0, 0))):
        colour = np.array(matplotlib.colormaps["jet"](value)[:3])
        np.testing.assert_array_equal(rgb[y, x], np.round((0.5 * 0.5 + 0.5 * colour) * 255).astype(np.uint8))
    # alpha 0 gives the gray image back, from uint8 or (H, W, 1) input alike.
    np.testing.assert_array_equal(overlays.overlay(np.full((4, 5, 1), 128, np.uint8), saliency, alpha=0.0),
                                  np.full((4, 5, 3), 128, np.uint8))
    with pytest.raises(ValueError, match="resize the map"):
        overlays.overlay(image, np.zeros((3, 5)))


def test_uint8_lookup_path_gives_the_bytes_of_the_float_blend():
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (37, 29), dtype=np.uint8)
    saliency = rng.random((37, 29))
    saliency[0, :3] = (0.0, 1.0, 0.999999)  # both ends of the colour map
    expected = np.round(overlays.blend(image, saliency, 0.4, "jet") * 255.0).astype(np.uint8)
    got = overlays.overlay(image, saliency, alpha=0.4, cmap="jet")  # the packed-table path
    assert got.flags["C_CONTIGUOUS"] and got.shape == (37, 29, 3)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(overlays.overlay(image[..., None], saliency, alpha=0.4), expected)


def test_figure2_layout_and_png(tmp_path):
    images, masks, maps = _grid_inputs()
    titles = ["abnormal, p = 0.91", "abnormal, p = 0.74", "normal, p = 0.08"]
    fig = figures.figure2(images, masks, maps, titles=titles)
    # 3 rows x (image, mask, 3 maps) panels + one shared colour bar.
    assert len(fig.axes) == 3 * 5 + 1
    colorbar_axes = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(colorbar_axes) == 1
    assert [ax.get_title() for ax in fig.axes[:5]] == ["image", "lesion mask", "CAM", "positive CAM", "stage 3"]
    assert fig.axes[5].get_ylabel() == titles[1]
    path = tmp_path / "figure2.png"
    fig.savefig(path, dpi=60)
    width, height = Image.open(path).size
    assert width > height > 100
    with pytest.raises(ValueError, match="'CAM'"):
        figures.figure2(images, masks, {"CAM": maps["CAM"][:, :16]})


def test_pr_curves_and_confusion_matrix(tmp_path):
    recall = np.linspace(0, 1, 11)
    fig = figures.pr_curves({"CAM": (1 - 0.5 * recall, recall), "stage 3": (np.r_[np.nan, np.ones(10)], recall)},
                            average_precision={"CAM": 0.75, "stage 3": 1.0})
    assert len(fig.axes) == 1
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["CAM (PxAP 0.750)",
                                                                           "stage 3 (PxAP 1.000)"]
    assert len(fig.axes[0].lines[1].get_xdata()) == 10  # the NaN point is dropped
    fig.savefig(tmp_path / "pr.png", dpi=50)

    labels = [0, 0, 0, 1, 1, 1, 1]
    predictions = [0, 1, 0, 1, 1, 0, 1]
    fig = figures.confusion_matrix_figure(labels, predictions)
    assert len(fig.axes) == 1
    texts = [t.get_text() for t in fig.axes[0].texts]
    # Row-major: true normal -> (2, 1), true abnormal -> (1, 3).
    assert texts == ["2\n(67%)", "1\n(33%)", "1\n(25%)", "3\n(75%)"]
    fig.savefig(tmp_path / "confusion.png", dpi=50)
    with pytest.raises(ValueError, match="class indices"):
        figures.confusion_matrix_figure([0, 2], [0, 1])


def _metrics():
    localisation = {
        "CAM": {"pointing_game": 0.50, "energy_pointing_game": 0.20, "iou": 0.10, "dice": 0.18,
                "pxap": 0.30, "maxboxacc_v2": 0.40, "tau": 0.5, "n_images": 40, "n_excluded": 10,
                "tolerance": 15.0},
        "positive CAM": {"pointing_game": 0.70, "energy_pointing_game": 0.25, "iou": 0.30, "dice": 0.46,
                         "pxap": 0.35, "maxboxacc_v2": float("nan"), "tau": 0.4, "n_images": 40,
                         "n_excluded": 10, "tolerance": 15.0},
        "stage 3": {"pointing_game": 0.70, "energy_pointing_game": 0.60, "iou": 0.25, "dice": 0.40,
                    "pxap": 0.55, "maxboxacc_v2": 0.35, "tau": 0.3, "n_images": 40, "n_excluded": 10,
                    "tolerance": 15.0},
    }
    image = {"accuracy": 0.9, "auroc": 0.95, "sensitivity": 0.85, "specificity": 0.93, "cohen_kappa": 0.79,
             "counts": {"tp": 17, "fp": 2, "tn": 28, "fn": 3, "n": 50}}
    study = {**image, "auroc": float("nan"), "counts": {**image["counts"], "n": 20}, "n_studies": 20}
    return {"localisation": localisation,
            "classification": {"stage3": {"image": image, "study": study}},
            "figures": {"figure2": "figure2.png", "pr_curves": "pr_curves.png"},
            "split": "test"}


def _cells(table, row_name):
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] == row_name:
            return cells[1:]
    raise AssertionError(f"no row {row_name!r} in\n{table}")


def test_format_table_marks_best_per_column_with_direction():
    rows = {"a": {"acc": 0.9, "loss": 0.30, "n": 5}, "b": {"acc": 0.8, "loss": 0.10, "n": 7},
            "c": {"acc": 0.9, "loss": float("nan"), "n": 9}}
    table = report.format_table(rows, ["acc", "loss", "n"], best={"acc": "max", "loss": "min"})
    assert _cells(table, "a") == ["**0.900**", "0.300", "5"]
    assert _cells(table, "b") == ["0.800", "**0.100**", "7"]
    assert _cells(table, "c") == ["**0.900**", "n/a", "9"]  # a tie is bold twice; NaN never wins
    assert table.splitlines()[1] == "|---|---|---|---|"
    with pytest.raises(ValueError, match="'max' or 'min'"):
        report.format_table(rows, ["acc"], best={"acc": "highest"})


def test_write_report_tables_and_sections(tmp_path):
    path = tmp_path / "eval" / "report.md"
    text = report.write_report(path, _metrics(), notes="Stage 3 wins on PxAP.")
    assert path.read_text() == text
    # Columns: pointing game, energy PG, IoU, Dice, PxAP, MaxBoxAccV2, tau.
    assert _cells(text, "CAM") == ["0.500", "0.200", "0.100", "0.180", "0.300", "**0.400**", "0.500"]
    assert _cells(text, "positive CAM") == ["**0.700**", "0.250", "**0.300**", "**0.460**", "0.350", "n/a",
                                            "0.400"]
    assert _cells(text, "stage 3") == ["**0.700**", "**0.600**", "0.250", "0.400", "**0.550**", "0.350", "0.300"]
    assert _cells(text, "stage3 (image)") == ["0.900", "0.950", "0.850", "0.930", "0.790", "50"]
    assert _cells(text, "stage3 (study)")[1] == "n/a" and _cells(text, "stage3 (study)")[-1] == "20"
    assert "40 test images with a lesion mask (10 normal images excluded)" in text
    assert "- PxAP: best is stage 3 (0.550, next positive CAM at 0.350)." in text
    assert "`figure2.png`" in text and "`pr_curves.png`" in text and "confusion" not in text
    assert text.index("## Localisation") < text.index("## Classification") < text.index("## What the figures show")
    assert "- Pointing game: best is positive CAM and stage 3 (0.700, next CAM at 0.500)." in text
    # positive CAM: pointing game (tie), IoU, Dice; stage 3: pointing game (tie), energy, PxAP.
    assert "positive CAM and stage 3 are each best (ties included) on 3 of 6 localisation metrics." in text
    assert text.rstrip().endswith("Stage 3 wins on PxAP.")


def test_report_says_which_box_convention_was_used(tmp_path):
    metrics = _metrics()
    assert "MaxBoxAccV2 and PxAP convention: not recorded." in report.write_report(tmp_path / "a.md", metrics)
    for row in metrics["localisation"].values():
        row["box_convention"] = "wsolevaluation"
    text = report.write_report(tmp_path / "b.md", metrics)
    line = next(line for line in text.splitlines() if line.startswith("MaxBoxAccV2 and PxAP follow"))
    assert "wsolevaluation convention" in line and "published tables" in line
    assert text.index("## Localisation") < text.index(line) < text.index("## Classification")
    metrics["localisation"]["CAM"]["box_convention"] = "clean"
    text = report.write_report(tmp_path / "c.md", metrics)
    assert "conventions differ by method: CAM clean, positive CAM wsolevaluation" in text
