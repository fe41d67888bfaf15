"""Synthetic radiographs with exact lesion masks (pure numpy; no TensorFlow).

An image is X-ray attenuation rendered analytically on the pixel grid, then put on "film":

* a soft-tissue envelope around a chain of one to three long bones (with, sometimes, a thinner
  companion bone beside one of them, as radius/ulna); each bone is a hollow tube, so the
  projected cortex is bright and the marrow darker, with flared, thinner-walled ends facing
  each other across a joint space;
* for abnormal images, one to three lesions inside a bone, each with its exact pixel mask:
  a fracture line (thin dark line across the bone, the far fragment optionally displaced), a
  lytic focus (dark ellipse) or a sclerotic focus (bright irregular blob); their size and
  contrast follow a named level (`LESION_LEVELS`: "subtle", generator 1.0.0's, or "clear",
  twice the size and contrast, which the demo's recipe can learn; docs/SYNTHETIC_LESIONS.md);
* shortcut confounders: a lead side marker ("L"/"R", drawn from strokes) in the corner
  farthest from the limb, and metal hardware (plate with screws, crossing screws or a pin)
  on a bone, with probabilities that the caller picks per label;
* film response (saturating), uneven exposure (smooth gradient and vignette) and grain.

All geometry lives in image coordinates in [0, 1] (x right, y down), so one draw looks the
same at any resolution; widths that must stay visible have a floor in pixels.

Everything is a function of (seed, index) through independent random streams (anatomy,
lesions, marker, hardware, noise), so the normal and abnormal versions of one index show the same
limb with and without lesions, and changing a confounder probability moves no bone.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from pcam_jax.data import synthetic_shapes as shapes

GENERATOR_VERSION = "1.0.0"  # bump when the pictures change: builder configs hash it
LESION_KINDS = ("fracture", "lytic", "sclerotic")
_ANATOMY, _LESIONS, _MARKER, _HARDWARE, _NOISE = range(5)  # random streams of one image
_METAL = 6.0  # attenuation of lead and steel: saturates the film
# Named lesion difficulty levels (config.synthetic.lesion_level): (size, contrast) multipliers
# of `generate`. "subtle" is generator 1.0.0's lesions, byte for byte.
LESION_LEVELS = {"subtle": (1.0, 1.0), "clear": (2.0, 2.0)}


class Bone(NamedTuple):
    p0: np.ndarray           # (2,) end points in image coordinates
    p1: np.ndarray
    radius: float            # outer radius at mid-shaft
    inner_ratio: float       # marrow radius / outer radius at mid-shaft
    flare: float             # relative widening at the ends (epiphyses)


def _bone_frame(x, y, bone: Bone) -> tuple[np.ndarray, np.ndarray, float]:
    """(along, across, length): pixel coordinates along the bone axis from p0, and across it."""
    d = bone.p1 - bone.p0
    length = float(np.hypot(*d))
    u = d / length
    dx, dy = x - bone.p0[0], y - bone.p0[1]
    return dx * u[0] + dy * u[1], -dx * u[1] + dy * u[0], length


def _sample_anatomy(rng: np.random.Generator, pixel: float):
    """Bones, the limb's centre line (joints) and soft-tissue half-widths per segment."""
    n = int(rng.choice([1, 2, 3], p=[0.3, 0.4, 0.3]))
    lengths = rng.dirichlet(np.full(n, 5.0)) * rng.uniform(1.3, 1.8)
    angle = rng.uniform(0.0, 2 * np.pi)
    joints = [np.zeros(2)]
    for i, seg in enumerate(lengths):
        if i:
            angle += rng.choice([-1, 1]) * rng.uniform(np.radians(5), np.radians(40))
        joints.append(joints[-1] + seg * np.array([np.cos(angle), np.sin(angle)]))
    joints = np.stack(joints)
    joints += np.array([0.5, 0.5]) + rng.uniform(-0.1, 0.1, 2) - (joints.min(0) + joints.max(0)) / 2
    bones, tissue_widths = [], []
    radius = rng.uniform(0.035, 0.07)
    for i in range(n):
        if i:
            radius *= rng.uniform(0.7, 1.05)
        a, b = joints[i], joints[i + 1]
        u = (b - a) / np.hypot(*(b - a))
        gap = rng.uniform(0.012, 0.025) + pixel  # half of the joint space
        a, b = a + gap * u, b - gap * u
        k, flare = rng.uniform(0.5, 0.7), rng.uniform(0.2, 0.5)
        span = radius
        if rng.random() < 0.3:  # companion bone (radius/ulna, tibia/fibula)
            r2 = radius * rng.uniform(0.55, 0.8)
            normal = np.array([-u[1], u[0]]) * rng.choice([-1, 1])
            sep = radius + r2 + rng.uniform(0.01, 0.03)
            shift = normal * sep * r2 / (radius + r2)
            bones.append(Bone(a - shift + normal * sep, b - shift + normal * sep, r2, k, flare))
            a, b = a - shift, b - shift
            span = sep + r2
        bones.append(Bone(a, b, radius, k, flare))
        tissue_widths.append(min(span * rng.uniform(2.0, 3.2), 0.42))
    return bones, joints, tissue_widths


def _sample_lesions(rng: np.random.Generator, bones: list[Bone], pixel: float, size: float = 1.0,
                    contrast: float = 1.0) -> list[dict]:
    """One to three lesions, each on a bone whose chosen spot lies well inside the image.

    size scales every lesion dimension (bone-relative, before the pixel floors); contrast
    scales how much a lesion darkens (capped at 95%) or brightens the bone. The random draws
    are the same for every size and contrast: a lesion grows in place.
    """
    lesions = []
    for _ in range(int(rng.choice([1, 2, 3], p=[0.65, 0.25, 0.1]))):
        kind = LESION_KINDS[rng.integers(3)]
        for _try in range(50):
            b = int(rng.integers(len(bones)))
            t = rng.uniform(0.2, 0.8)
            spot = bones[b].p0 + t * (bones[b].p1 - bones[b].p0)
            if np.all((spot > 0.17) & (spot < 0.83)):
                break
        else:  # no bone crosses the middle of the picture enough: use the most central one
            b = int(np.argmin([np.hypot(*((bn.p0 + bn.p1) / 2 - 0.5)) for bn in bones]))
            t = 0.5
        r = bones[b].radius
        lesion = dict(kind=kind, bone=b, t=t)
        if kind == "fracture":
            lesion.update(tilt=rng.uniform(-0.6, 0.6), half_width=max(0.13 * r * size, 0.8 * pixel),
                          shift=rng.choice([0.0, rng.uniform(0.15, 0.45)]) * r * rng.choice([-1, 1]),
                          gap=rng.uniform(0.0, 0.5) * pixel, strength=min(0.8 * contrast, 0.95))
        else:
            center = rng.uniform(-0.25, 0.25) * r
            half_along, half_across = rng.uniform(0.7, 1.5) * r * size, rng.uniform(0.38, 0.6) * r * size
            strength = (min(rng.uniform(0.6, 0.8) * contrast, 0.95) if kind == "lytic"
                        else rng.uniform(0.7, 1.1) * contrast)
            lesion.update(
                center=center, half_along=max(half_along, 2 * pixel),
                half_across=max(min(half_across, 0.9 * r), 1.5 * pixel), strength=strength,
                lobes=int(rng.integers(2, 5)), phase=rng.uniform(0, 2 * np.pi))
        lesions.append(lesion)
    return lesions


def _render_bone(x, y, bone: Bone, lesions: list[dict], pixel: float, texture: np.ndarray):
    """Attenuation, bone mask and lesion mask (each (S, S)) of one bone carrying `lesions`."""
    along, across, length = _bone_frame(x, y, bone)
    lesion_mask = np.zeros(x.shape, bool)
    fracture_lines = []
    for les in (l for l in lesions if l["kind"] == "fracture"):
        # Signed distance to the fracture line; the far fragment moves sideways and apart.
        s = (along - les["t"] * length) * np.cos(les["tilt"]) + across * np.sin(les["tilt"])
        far = s > 0
        across = across - les["shift"] * far
        along = along - les["gap"] * far
        fracture_lines.append((s, les["half_width"], les["strength"]))
    tc = np.clip(along, 0.0, length)
    from_end = np.minimum(tc, length - tc)
    end_weight = np.exp(-((from_end / (2.2 * bone.radius)) ** 2))
    radius = bone.radius * (1.0 + bone.flare * end_weight)
    rho = shapes.norm(along - tc, across) / radius
    inner = bone.inner_ratio + (0.93 - bone.inner_ratio) * end_weight  # thin cortex at the ends
    cortex, marrow = shapes.tube_chords(rho, inner)
    marrow_density = 0.38 + 0.2 * end_weight + 0.06 * texture  # trabecular ends are denser
    atten = (0.5 * (bone.radius / 0.05) ** 0.3) * (1.3 * cortex + marrow_density * marrow)  # wide: denser
    in_bone = rho < 1.0
    for les in lesions:
        if les["kind"] == "fracture":
            continue
        da = (along - les["t"] * length) / les["half_along"]
        dc = (across - les["center"]) / les["half_across"]
        ell = shapes.norm(da, dc)
        if les["kind"] == "sclerotic":  # irregular outline
            ell = ell / (1.0 + 0.18 * np.sin(les["lobes"] * np.arctan2(dc, da) + les["phase"]))
        soft = shapes.coverage((ell - 1.0) * min(les["half_along"], les["half_across"]), pixel, 2.0)
        if les["kind"] == "lytic":
            atten = atten * (1.0 - les["strength"] * soft)
        else:
            atten = atten + les["strength"] * soft * shapes.coverage((rho - 1.0) * radius, pixel)
        lesion_mask |= (ell <= 1.0) & in_bone
    for s, half_width, strength in fracture_lines:
        atten = atten * (1.0 - strength * shapes.coverage(np.abs(s) - half_width, pixel))
        lesion_mask |= (np.abs(s) <= half_width) & in_bone
    return atten, in_bone, lesion_mask


def _letter_strokes(letter: str) -> list[tuple[tuple[float, float], tuple[float, float]]]:
    """Strokes of a capital letter in a box of height 1 (x right, y down)."""
    if letter == "L":
        return [((0, 0), (0, 1)), ((0, 1), (0.6, 1))]
    return [((0, 0), (0, 1)), ((0, 0), (0.42, 0)), ((0.42, 0), (0.6, 0.12)), ((0.6, 0.12), (0.6, 0.34)),
            ((0.6, 0.34), (0.42, 0.48)), ((0.42, 0.48), (0, 0.48)), ((0.28, 0.48), (0.64, 1))]


def _render_marker(x, y, rng, letter: str, tissue: np.ndarray, pixel: float) -> np.ndarray:
    """Coverage (S, S) of a lead letter in the image corner that holds the least tissue."""
    size = x.shape[0]
    height, width = max(0.1, 6 * pixel), 0.64 * max(0.1, 6 * pixel)
    margin = rng.uniform(0.03, 0.06)
    corners = [(margin, margin), (1 - margin - width, margin),
               (margin, 1 - margin - height), (1 - margin - width, 1 - margin - height)]
    boxes = [shapes.bbox(np.array([[cx, cy], [cx + width, cy + height]]), 0.0, size) for cx, cy in corners]
    load = [tissue[box].sum() + 1e-3 * rng.random() for box in boxes]  # random tie-break
    cx, cy = corners[int(np.argmin(load))]
    win = shapes.bbox(np.array([[cx, cy], [cx + width, cy + height]]), 0.25 * height, size)
    rot = rng.uniform(-0.15, 0.15)
    # Letter-box coordinates (rotated about the box centre), in units of the letter height.
    px, py = (x[win] - cx) / height - 0.32, (y[win] - cy) / height - 0.5
    lx, ly = px * np.cos(rot) + py * np.sin(rot) + 0.32, -px * np.sin(rot) + py * np.cos(rot) + 0.5
    dist = np.min([shapes.segment_distance(lx, ly, np.array(a, float), np.array(b, float))
                   for a, b in _letter_strokes(letter)], axis=0) * height
    cover = np.zeros(x.shape)
    cover[win] = shapes.coverage(dist - max(0.08 * height, 0.6 * pixel), pixel)
    return cover


def _render_hardware(x, y, rng, bones: list[Bone], lesion_mask, pixel: float) -> np.ndarray:
    """Coverage (S, S) of metal on a bone: plate with screws, crossing screws or a pin.

    Of up to 20 random placements, the first well in view that hides no lesion pixel; else the
    best of them by (in view, hides no lesion, central, hides fewest).
    """
    best, best_key = None, None
    for _try in range(20):
        bone = bones[int(rng.integers(len(bones)))]
        along, across, length = _bone_frame(x, y, bone)
        r, t = bone.radius, rng.uniform(0.25, 0.75)
        kind, side = rng.integers(3), rng.choice([-1.0, 1.0])
        screw_half = max(0.1 * r, 1.0 * pixel)
        if kind == 0:  # plate on the cortex, screws through the bone
            half_len, plate = rng.uniform(0.08, 0.16), max(0.18 * r, pixel)
            dist = shapes.box_distance(along, across, (t * length, side * (r + plate)), half_len, plate)
            for pos in np.linspace(-0.75, 0.75, int(rng.integers(2, 5))) * half_len:
                dist = np.minimum(dist, shapes.box_distance(along, across, (t * length + pos, side * 0.1 * r),
                                                      screw_half, 1.15 * r))
        elif kind == 1:  # one or two screws across the bone
            dist = np.min([shapes.box_distance(along, across, (t * length + pos, 0.0), screw_half, 1.3 * r)
                           for pos in rng.uniform(-1.2, 1.2, int(rng.integers(1, 3))) * r], axis=0)
        else:  # intramedullary pin
            dist = shapes.box_distance(along, across, (t * length, 0.0), rng.uniform(0.15, 0.3) * length,
                                 max(0.22 * r, pixel))
        cover = shapes.coverage(dist, pixel)
        visible, overlap = int((cover > 0.5).sum()), int(((cover > 0) & lesion_mask).sum())
        off_centre = not np.all(np.abs(bone.p0 + t * (bone.p1 - bone.p0) - 0.5) < 0.35)
        key = (visible < 4, overlap > 0, off_centre, overlap, -visible)
        if best_key is None or key < best_key:
            best, best_key = cover, key
        if not any(key[:3]):
            break
    return best


def generate(index: int, *, abnormal: bool, seed: int = 0, image_size: int = 128,
             marker_prob: float = 0.5, hardware_prob: float = 0.1, lesion_size: float = 1.0,
             lesion_contrast: float = 1.0) -> dict:
    """One synthetic radiograph, deterministic in (seed, index, abnormal, probabilities).

    Args:
      index: image number (the builder's global index; disjoint between splits).
      abnormal: draw lesions (label 1) or not (label 0).
      seed: dataset seed.
      image_size: S, the side of the square image in pixels (>= 16).
      marker_prob, hardware_prob: probability of a side marker / metal hardware for this image
        (the caller picks them per label: that is the shortcut).
      lesion_size, lesion_contrast: multipliers of the lesions' dimensions and of their
        darkening / brightening (1, 1: the "subtle" level; see `LESION_LEVELS`).

    Returns a dict: image uint8 (S, S); lesion_mask uint8 (S, S) in {0, 1} (empty iff normal);
    label int; has_marker, has_hardware bool; lesion_kinds tuple of str; marker_letter ("L",
    "R" or ""); and, for tests and figures, bone_mask, marker_mask, hardware_mask bool (S, S).
    """
    if image_size < 16:
        raise ValueError(f"synthetic image_size must be >= 16 pixels, got {image_size}")
    if not (lesion_size > 0 and lesion_contrast > 0):
        raise ValueError(f"lesion_size and lesion_contrast must be > 0, got {lesion_size}, {lesion_contrast}")
    streams = [np.random.default_rng(np.random.SeedSequence([seed, index, s])) for s in range(5)]
    x, y = shapes.grid(image_size)
    pixel = 1.0 / image_size

    rng = streams[_ANATOMY]
    bones, joints, tissue_widths = _sample_anatomy(rng, pixel)
    xs, ys = x[:1, :], y[:, :1]  # (1, S) and (S, 1): separable fields need no full grid
    texture = np.sin(rng.uniform(20, 45) * xs + rng.uniform(0, 6)) * np.sin(rng.uniform(20, 45) * ys)
    limb = []
    for i, (a, b) in enumerate(zip(joints[:-1], joints[1:])):
        u = (b - a) / np.hypot(*(b - a))
        a = a - u * 0.5 if i == 0 else a  # the limb runs on beyond the outer ends of the chain
        b = b + u * 0.5 if i == len(joints) - 2 else b
        limb.append(shapes.segment_distance(x, y, a, b) / tissue_widths[i])
    limb = np.min(limb, axis=0)
    tissue = rng.uniform(0.22, 0.38) * np.sqrt(np.maximum(1.0 - limb**2, 0.0))

    lesions = (_sample_lesions(streams[_LESIONS], bones, pixel, lesion_size, lesion_contrast)
               if abnormal else [])
    atten = tissue.copy()
    bone_mask = np.zeros(x.shape, bool)
    lesion_mask = np.zeros(x.shape, bool)
    for b, bone in enumerate(bones):
        # Render inside the bone's bounding box only (room for flare, displacement, edges).
        win = shapes.bbox(np.stack([bone.p0, bone.p1]), bone.radius * (1.5 + bone.flare) + 3 * pixel, image_size)
        if x[win].size:
            a, inside, les = _render_bone(x[win], y[win], bone, [l for l in lesions if l["bone"] == b],
                                          pixel, texture[win])
            atten[win] += a
            bone_mask[win] |= inside
            lesion_mask[win] |= les

    rng = streams[_MARKER]
    has_marker, letter = bool(rng.random() < marker_prob), str(rng.choice(["L", "R"]))
    marker = _render_marker(x, y, rng, letter, tissue, pixel) if has_marker else None
    rng = streams[_HARDWARE]
    has_hardware = bool(rng.random() < hardware_prob)
    metal = _render_hardware(x, y, rng, bones, lesion_mask, pixel) if has_hardware else None
    for cover in (marker, metal):
        if cover is not None:
            atten += _METAL * cover
            lesion_mask &= cover == 0  # lead and steel hide what lies under them

    rng = streams[_NOISE]
    angle = rng.uniform(0, 2 * np.pi)
    tilt, vignette = rng.uniform(-0.35, 0.35), rng.uniform(0.0, 0.5)
    exposure = ((1.0 + tilt * (xs - 0.5) * np.cos(angle) - vignette * (xs - 0.5) ** 2)
                + (tilt * (ys - 0.5) * np.sin(angle) - vignette * (ys - 0.5) ** 2))
    background = rng.uniform(0.03, 0.1)
    film = background + (1.0 - background) * (1.0 - np.exp(-rng.uniform(1.1, 1.5) * exposure * atten))
    white = rng.normal(size=(image_size + 1, image_size + 1))
    grain = (white[:-1, :-1] + white[1:, :-1] + white[:-1, 1:] + white[1:, 1:]) / 2  # unit std
    film = film + rng.uniform(0.012, 0.025) * grain + rng.uniform(0.005, 0.012) * white[1:, 1:]
    image = np.round(np.clip(film, 0.0, 1.0) * 255.0).astype(np.uint8)
    return dict(
        image=image, lesion_mask=lesion_mask.astype(np.uint8), label=int(abnormal),
        has_marker=has_marker, has_hardware=has_hardware,
        lesion_kinds=tuple(l["kind"] for l in lesions), marker_letter=letter if has_marker else "",
        bone_mask=bone_mask, marker_mask=_opaque(marker, x.shape), hardware_mask=_opaque(metal, x.shape))


def _opaque(cover: np.ndarray | None, shape) -> np.ndarray:
    """Pixels at least half covered by metal (all False when there is none)."""
    return np.zeros(shape, bool) if cover is None else cover > 0.5


def generate_for_config(synthetic_config, index: int, label: int, *, marker_prob: float | None = None,
                        hardware_prob: float | None = None) -> dict:
    """`generate` with the image size, seed and per-label confounder rates of config.synthetic.

    marker_prob / hardware_prob, when given, replace the config's rate for this label (the
    counterfactual renders of `pcam_jax.evaluation.shortcuts` force them to 0 or 1).
    """
    c = synthetic_config
    abnormal = bool(label)
    if marker_prob is None:
        marker_prob = c.marker_prob_abnormal if abnormal else c.marker_prob_normal
    if hardware_prob is None:
        hardware_prob = c.hardware_prob_abnormal if abnormal else c.hardware_prob_normal
    size, contrast = lesion_level_multipliers(c.lesion_level)
    return generate(
        index, abnormal=abnormal, seed=int(c.seed), image_size=int(c.image_size),
        marker_prob=float(marker_prob), hardware_prob=float(hardware_prob),
        lesion_size=size, lesion_contrast=contrast)


def lesion_level_multipliers(level: str) -> tuple[float, float]:
    """(size, contrast) of a named lesion level; clear error for an unknown name."""
    if level not in LESION_LEVELS:
        raise ValueError(f"config.synthetic.lesion_level must be one of {sorted(LESION_LEVELS)}, got {level!r}")
    return LESION_LEVELS[level]
