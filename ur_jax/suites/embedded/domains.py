"""The embedded default dataset's renderers: six small image domains drawn by code.

Pure NumPy and Pillow (no TFDS): :func:`render` gives one split of one domain as arrays; the
TFDS builder ``ur_embedded`` (:mod:`ur_jax.suites.embedded.builder`) stores exactly these
arrays. The domains and their determinism are described in :mod:`ur_jax.suites.embedded`.
"""

from __future__ import annotations

import functools
import importlib.resources
import math
import zlib
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "TRAIN_DOMAINS",
    "FEWSHOT_DOMAINS",
    "ALL_DOMAINS",
    "SPLITS",
    "CLASS_NAMES",
    "NUM_CLASSES",
    "SPLIT_SIZES",
    "IMAGE_SHAPE",
    "check_domain",
    "check_split",
    "render",
]

# --------------------------------------------------------------------------- #
# Public constants.
# --------------------------------------------------------------------------- #

TRAIN_DOMAINS: tuple[str, ...] = ("digits", "shapes", "textures", "glyphs")
"""Domains used to train the per-domain teachers and the universal student."""

FEWSHOT_DOMAINS: tuple[str, ...] = ("glyphs_novel", "symbols")
"""Held-out domains used only to sample few-shot episodes."""

ALL_DOMAINS: tuple[str, ...] = TRAIN_DOMAINS + FEWSHOT_DOMAINS
"""Every builder config, training domains first."""

SPLITS: tuple[str, ...] = ("train", "test")
"""The splits of every domain."""

IMAGE_SHAPE: tuple[int, int, int] = (32, 32, 3)
"""Height, width, channels of every image (``uint8`` RGB)."""

_DIGIT_WORDS = ("zero", "one", "two", "three", "four",
                "five", "six", "seven", "eight", "nine")
_SHAPES = ("circle", "square", "triangle", "star", "cross",
           "hexagon", "ring", "diamond", "ellipse", "crescent")
# Stripe names give the stripes' direction on screen ("slash" runs like '/').
_TEXTURES = ("stripes_vertical", "stripes_slash", "stripes_horizontal",
             "stripes_backslash", "checker",
             "checker_diagonal", "hex_dots", "rings", "zigzag", "sunburst")
_GLYPHS = tuple("ABCDEFGHIJ")
_GLYPHS_NOVEL = tuple("KLMNOPQRSTUVWXYZ")
# (class name, character). Every character is in Pillow's default font (Aileron);
# the tests check that no two render alike (a missing glyph renders as a box).
_SYMBOLS = (
    ("plus", "+"), ("equals", "="), ("question", "?"), ("exclamation", "!"),
    ("hash", "#"), ("percent", "%"), ("ampersand", "&"), ("at", "@"),
    ("dollar", "$"), ("less", "<"), ("greater", ">"), ("slash", "/"),
    ("backslash", "\\"), ("asterisk", "*"), ("tilde", "~"), ("caret", "^"),
    ("brace", "{"), ("bracket", "["), ("plus_minus", "\u00b1"), ("copyright", "\u00a9"),
)

CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "digits": _DIGIT_WORDS,
    "shapes": _SHAPES,
    "textures": _TEXTURES,
    "glyphs": _GLYPHS,
    "glyphs_novel": _GLYPHS_NOVEL,
    "symbols": tuple(name for name, _ in _SYMBOLS),
}
"""Class names per domain, in label order (label ``i`` is ``CLASS_NAMES[d][i]``)."""

NUM_CLASSES: dict[str, int] = {d: len(names) for d, names in CLASS_NAMES.items()}
"""Number of classes per domain."""

TRAIN_DOMAIN_SIZES: dict[str, int] = {"train": 2000, "test": 500}
"""Split sizes of each training domain (200 / 50 examples per class)."""

SYMBOLS_SIZES: dict[str, int] = {"train": 1000, "test": 600}
"""Split sizes of ``symbols`` (20 classes: 50 / 30 examples per class)."""

GLYPHS_NOVEL_SIZES: dict[str, int] = {"train": 1024, "test": 640}
"""Split sizes of ``glyphs_novel`` (16 classes: 64 / 40 per class; 1000 / 600 do
not divide by 16, and every split is exactly class-balanced)."""

SPLIT_SIZES: dict[str, dict[str, int]] = {
    **{d: dict(TRAIN_DOMAIN_SIZES) for d in TRAIN_DOMAINS},
    "glyphs_novel": dict(GLYPHS_NOVEL_SIZES),
    "symbols": dict(SYMBOLS_SIZES),
}
"""Number of examples per domain and split; every class has exactly
``SPLIT_SIZES[d][s] // NUM_CLASSES[d]`` examples."""

DIGITS_TEST_FRACTION = 0.2
"""Fraction of each digit class's source images reserved for the test split."""

_SEED = 20230501
_H, _W, _C = IMAGE_SHAPE
_SUPER = 2  # supersampling factor for font rendering
_SHAPE_SUPER = 4  # supersampling factor for polygon rendering
_FONT_SIZE = 46  # at 64x64 (2x supersampled); cap height ~17 px at 32x32

for _d, _sizes in SPLIT_SIZES.items():  # guard against edits breaking exact balance
    for _s, _n in _sizes.items():
        assert _n % NUM_CLASSES[_d] == 0, (_d, _s, _n)
del _d, _sizes, _s, _n


# --------------------------------------------------------------------------- #
# Validation and seeding.
# --------------------------------------------------------------------------- #

def check_domain(domain: str) -> None:
    """Raises ValueError unless ``domain`` is one of :data:`ALL_DOMAINS`."""
    if domain not in ALL_DOMAINS:
        raise ValueError(
            f"Unknown embedded domain {domain!r}. Expected one of {list(ALL_DOMAINS)} "
            f"(training domains {list(TRAIN_DOMAINS)}, few-shot domains "
            f"{list(FEWSHOT_DOMAINS)}).")


def check_split(split: str) -> None:
    """Raises ValueError unless ``split`` is one of :data:`SPLITS` (no sub-splits)."""
    if split not in SPLITS:
        raise ValueError(
            f"Unknown split {split!r} for the embedded dataset. Expected one of "
            f"{list(SPLITS)}; sub-splits such as 'train[:10%]' are not accepted here, "
            "slice the returned source instead.")


def _stable_id(text: str) -> int:
    """A process-independent integer for ``text`` (CRC-32; ``hash`` is salted)."""
    return zlib.crc32(text.encode("utf-8"))


def _rng(domain: str, split: str, purpose: str = "render") -> np.random.Generator:
    return np.random.default_rng([_SEED, _stable_id(domain), _stable_id(split),
                                  _stable_id(purpose)])


def _balanced_labels(rng: np.random.Generator, num_classes: int, n: int) -> np.ndarray:
    return rng.permutation(np.repeat(np.arange(num_classes, dtype=np.int64),
                                     n // num_classes))


# --------------------------------------------------------------------------- #
# Colours, composition, geometry.
# --------------------------------------------------------------------------- #

_LUMA = np.array([0.299, 0.587, 0.114])


def _random_colours(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.uniform(0.0, 255.0, size=(n, 3))


def _contrasting(rng: np.random.Generator, ref: np.ndarray,
                 min_contrast: float) -> np.ndarray:
    """Colours whose luma differs from ``ref``'s (shape (n, 3)) by >= min_contrast."""
    out = _random_colours(rng, len(ref))
    bad = np.abs((out - ref) @ _LUMA) < min_contrast
    while bad.any():  # rejection sampling; converges in a few rounds
        out[bad] = _random_colours(rng, int(bad.sum()))
        bad = np.abs((out - ref) @ _LUMA) < min_contrast
    return out


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _paint(canvas: np.ndarray, mask: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """Alpha-blend per-image ``colour`` (n, 3) into ``canvas`` (n, H, W, 3) under
    ``mask`` (n, H, W) in [0, 1], in place; float32."""
    m = np.asarray(mask, dtype=np.float32)[..., None]
    col = np.asarray(colour, dtype=np.float32)[:, None, None, :]
    canvas += (col - canvas) * m
    return canvas


def _flat(colour: np.ndarray) -> np.ndarray:
    """A float32 canvas (n, H, W, 3) filled with the per-image ``colour`` (n, 3)."""
    return np.broadcast_to(np.asarray(colour, dtype=np.float32)[:, None, None, :],
                           (len(colour), _H, _W, _C)).copy()


def _noise(rng: np.random.Generator, n: int, low: float, high: float) -> np.ndarray:
    """Gaussian pixel noise (n, H, W, 3), float32, std uniform in [low, high] per image."""
    std = rng.uniform(low, high, n).astype(np.float32)[:, None, None, None]
    return rng.standard_normal((n, _H, _W, _C), dtype=np.float32) * std


def _affine_data(angle: float, sx: float, sy: float, shear: float, tx: float, ty: float,
                 src_center: float, out_center: float) -> tuple[float, ...]:
    """PIL AFFINE coefficients (output -> input) for out = A (src - c_s) + c_o + t,
    where A = rotation(angle) @ shear_x(shear) @ diag(sx, sy)."""
    c, s = math.cos(angle), math.sin(angle)
    # A = [[c*sx, (c*shear - s)*sy], [s*sx, (s*shear + c)*sy]], det(A) = sx*sy.
    a00, a01 = c * sx, (c * shear - s) * sy
    a10, a11 = s * sx, (s * shear + c) * sy
    det = sx * sy
    i00, i01, i10, i11 = a11 / det, -a01 / det, -a10 / det, a00 / det
    ox, oy = out_center + tx, out_center + ty
    return (i00, i01, src_center - (i00 * ox + i01 * oy),
            i10, i11, src_center - (i10 * ox + i11 * oy))


# --------------------------------------------------------------------------- #
# digits
# --------------------------------------------------------------------------- #

@functools.lru_cache(maxsize=1)
def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    """The vendored UCI optdigits images (1797, 8, 8) in [0, 1] and labels (1797,)."""
    res = importlib.resources.files("ur_jax.suites.embedded") / "resources" / "digits.csv.gz"
    try:
        with importlib.resources.as_file(res) as path:
            table = np.loadtxt(path, delimiter=",", dtype=np.float32)
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"The vendored digits file {res} is missing: the 'digits' domain needs it. "
            "Reinstall ur_jax (setup.cfg ships ur_jax/suites/embedded/resources/* as package data) "
            "or restore the file from git.") from e
    if table.shape != (1797, 65):
        raise ValueError(f"{res}: expected a (1797, 65) table of 8x8 digits plus label, "
                         f"found shape {table.shape}; the file is corrupt, restore it.")
    pixels = (table[:, :64] / 16.0).reshape(-1, 8, 8)
    return pixels, table[:, 64].astype(np.int64)


def _digit_sources(split: str) -> list[np.ndarray]:
    """Per class, the source indices of ``split`` (train and test are disjoint)."""
    _, targets = _load_digits()
    rng = _rng("digits", "all", "source_split")
    out = []
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(targets == c))
        n_test = round(len(idx) * DIGITS_TEST_FRACTION)
        out.append(np.sort(idx[:n_test] if split == "test" else idx[n_test:]))
    return out


def _render_digits(split: str, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    pixels, _ = _load_digits()
    sources = _digit_sources(split)
    n = len(labels)
    # Each class cycles through its shuffled sources (each used once or twice).
    src_idx = np.empty(n, dtype=np.int64)
    for c in range(10):
        pos = np.flatnonzero(labels == c)
        order = rng.permutation(sources[c])
        src_idx[pos] = order[np.arange(len(pos)) % len(order)]
    angle = np.deg2rad(rng.uniform(-12, 12, n))
    scale = rng.uniform(0.68, 0.9, n)
    aspect = rng.uniform(0.9, 1.1, n)
    shear = rng.uniform(-0.2, 0.2, n)
    shift = rng.uniform(-3, 3, (n, 2))
    masks = np.empty((n, _H, _W), dtype=np.float32)
    for i in range(n):
        up = Image.fromarray(pixels[src_idx[i]]).resize((_W, _H),
                                                        Image.Resampling.BICUBIC)
        data = _affine_data(angle[i], scale[i] * aspect[i], scale[i], shear[i],
                            shift[i, 0], shift[i, 1], _W / 2, _W / 2)
        warped = up.transform((_W, _H), Image.Transform.AFFINE, data,
                              resample=Image.Resampling.BILINEAR, fillcolor=0.0)
        masks[i] = np.asarray(warped, dtype=np.float32)
    masks = np.clip((masks - 0.1) / 0.75, 0.0, 1.0)  # crisper strokes, clean background
    bg = _random_colours(rng, n)
    fg = _contrasting(rng, bg, 90.0)
    return _to_uint8(_paint(_flat(bg), masks, fg))


# --------------------------------------------------------------------------- #
# shapes
# --------------------------------------------------------------------------- #

def _polygon(radii: np.ndarray, angles: np.ndarray, rot: float,
             cx: float, cy: float) -> list[tuple[float, float]]:
    a = angles + rot
    return list(zip((cx + radii * np.cos(a)).tolist(), (cy + radii * np.sin(a)).tolist()))


def _regular(k: int, r: float, rot: float, cx: float, cy: float) -> list[tuple[float, float]]:
    return _polygon(np.full(k, r), np.arange(k) * 2 * np.pi / k, rot, cx, cy)


def _draw_shape(draw: ImageDraw.ImageDraw, cls: int, r: float, rot: float, cx: float,
                cy: float, extra: float) -> None:
    """Draw class ``cls`` of :data:`_SHAPES` (circumradius ~r) filled with 255."""
    name = _SHAPES[cls]
    if name == "circle":
        draw.polygon(_regular(64, r * 0.9, rot, cx, cy), fill=255)
    elif name == "square":
        draw.polygon(_regular(4, r, rot, cx, cy), fill=255)
    elif name == "triangle":
        draw.polygon(_regular(3, r * 1.1, rot, cx, cy), fill=255)
    elif name == "star":
        radii = np.where(np.arange(10) % 2 == 0, r * 1.1, r * 0.45)
        draw.polygon(_polygon(radii, np.arange(10) * np.pi / 5, rot, cx, cy), fill=255)
    elif name == "cross":
        w = 0.34 * r
        pts = np.array([(w, w), (r, w), (r, -w), (w, -w), (w, -r), (-w, -r), (-w, -w),
                        (-r, -w), (-r, w), (-w, w), (-w, r), (w, r)])
        c, s = math.cos(rot), math.sin(rot)
        xy = pts @ np.array([[c, s], [-s, c]]) + (cx, cy)
        draw.polygon([tuple(p) for p in xy.tolist()], fill=255)
    elif name == "hexagon":
        draw.polygon(_regular(6, r * 0.95, rot, cx, cy), fill=255)
    elif name == "ring":
        draw.polygon(_regular(64, r * 0.95, rot, cx, cy), fill=255)
        draw.polygon(_regular(64, r * extra, rot, cx, cy), fill=0)
    elif name == "diamond":  # rhombus: diagonals 2r and 2r*0.55
        radii = np.array([r * 1.1, r * 0.6, r * 1.1, r * 0.6])
        draw.polygon(_polygon(radii, np.arange(4) * np.pi / 2, rot, cx, cy), fill=255)
    elif name == "ellipse":
        t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        ax, ay = r * 1.05, r * 1.05 * extra
        rad = ax * ay / np.sqrt((ay * np.cos(t)) ** 2 + (ax * np.sin(t)) ** 2)
        draw.polygon(_polygon(rad, t, rot, cx, cy), fill=255)
    elif name == "crescent":
        draw.polygon(_regular(64, r * 0.95, rot, cx, cy), fill=255)
        ox, oy = 0.5 * r * math.cos(rot), 0.5 * r * math.sin(rot)
        draw.polygon(_regular(64, r * 0.85, rot, cx + ox, cy + oy), fill=0)
    else:  # pragma: no cover - the class list and this function are edited together
        raise AssertionError(name)


def _render_shapes(split: str, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n, s = len(labels), _SHAPE_SUPER
    radius = rng.uniform(8.5, 13.0, n)
    rot = rng.uniform(0, 2 * np.pi, n)
    slack = np.maximum(15.0 - radius * 1.1, 0.0)
    centre = 16.0 + rng.uniform(-1, 1, (n, 2)) * slack[:, None]
    ring_hole = rng.uniform(0.45, 0.62, n)
    ellipse_aspect = rng.uniform(0.42, 0.62, n)
    extra = np.where(labels == _SHAPES.index("ring"), ring_hole, ellipse_aspect)
    masks = np.empty((n, _H, _W), dtype=np.float32)
    for i in range(n):
        canvas = Image.new("L", (_W * s, _H * s), 0)
        _draw_shape(ImageDraw.Draw(canvas), int(labels[i]), radius[i] * s, rot[i],
                    centre[i, 0] * s, centre[i, 1] * s, extra[i])
        masks[i] = np.asarray(canvas.reduce(s), dtype=np.float32) / 255.0
    bg = _random_colours(rng, n)
    fg = _contrasting(rng, bg, 80.0)
    return _to_uint8(_paint(_flat(bg), masks, fg) + _noise(rng, n, 3, 10))


# --------------------------------------------------------------------------- #
# textures (fully vectorised)
# --------------------------------------------------------------------------- #

def _render_textures(split: str, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n = len(labels)

    def col(v: np.ndarray) -> np.ndarray:
        return v[:, None, None]

    base = np.array([0, 45, 90, 135, 0, 45, 0, 0, 0, 0], dtype=np.float64)[labels]
    theta = np.deg2rad(base + rng.uniform(-8, 8, n))
    theta = np.where(labels >= 6, rng.uniform(0, np.pi, n), theta)  # isotropic classes
    period = rng.uniform(5.0, 8.0, n)
    phase = rng.uniform(0, 2 * np.pi, (n, 2))
    centre = 16.0 + rng.uniform(-6, 6, (n, 2))
    spokes = rng.integers(6, 10, n).astype(np.float64)
    contrast = rng.uniform(0.55, 1.0, n)
    yy, xx = np.mgrid[0:_H, 0:_W].astype(np.float64) + 0.5 - 16.0
    x, y = xx[None], yy[None]  # (1, H, W), centred

    pattern = np.empty((n, _H, _W), dtype=np.float32)
    for cls in range(10):
        m = np.flatnonzero(labels == cls)
        if not len(m):
            continue
        c, s = col(np.cos(theta[m])), col(np.sin(theta[m]))
        u = x * c + y * s  # along the stripe normal
        v = -x * s + y * c
        k = 2 * np.pi / col(period[m])
        p0, p1 = col(phase[m, 0]), col(phase[m, 1])
        if cls < 4:  # sinusoidal stripes; the stripe direction is the class
            p = np.sin(k * u + p0)
        elif cls < 6:  # soft square-wave checkerboards, axis-aligned or diagonal
            p = np.tanh(2.5 * np.sin(k * u * 0.8 + p0)) * np.tanh(
                2.5 * np.sin(k * v * 0.8 + p1))
        elif cls == 6:  # hexagonal lattice of round dots (phases sum to 0: dots,
            # not triangles; the two free phases translate the lattice)
            acc = sum(np.cos(k * (u * math.cos(a) + v * math.sin(a)) + ph)
                      for a, ph in ((0.0, p0), (2 * np.pi / 3, p1),
                                    (4 * np.pi / 3, -(p0 + p1))))
            p = np.tanh(2.0 * (acc - 0.8))
        elif cls == 7:  # concentric rings
            cx, cy = col(centre[m, 0] - 16.0), col(centre[m, 1] - 16.0)
            p = np.sin(k * np.hypot(x - cx, y - cy) + p0)
        elif cls == 8:  # zigzag stripes
            tri = 2.0 / np.pi * np.arcsin(np.sin(k * 0.9 * v + p1))
            p = np.sin(k * (u + 2.2 * tri) + p0)
        else:  # sunburst
            cx, cy = col(centre[m, 0] - 16.0), col(centre[m, 1] - 16.0)
            p = np.sin(col(spokes[m]) * np.arctan2(y - cy, x - cx) + p0)
        pattern[m] = p
    t = 0.5 + 0.5 * pattern * col(contrast).astype(np.float32)
    c0 = _random_colours(rng, n)
    c1 = _contrasting(rng, c0, 70.0)
    return _to_uint8(_paint(_flat(c0), t, c1) + _noise(rng, n, 0, 12))


# --------------------------------------------------------------------------- #
# glyphs, glyphs_novel, symbols (Pillow's default font)
# --------------------------------------------------------------------------- #

@functools.cache
def _font() -> ImageFont.FreeTypeFont:
    font = ImageFont.load_default(size=_FONT_SIZE)
    if not isinstance(font, ImageFont.FreeTypeFont):
        raise RuntimeError(
            "The embedded 'glyphs', 'glyphs_novel' and 'symbols' domains need Pillow's "
            f"scalable default font (Pillow >= 10.1 built with FreeType); found "
            f"{type(font).__name__}. Install a Pillow wheel with FreeType support.")
    return font


@functools.cache
def _char_mask(char: str, stroke: int = 0) -> Image.Image:
    """``char`` centred on a supersampled 'L' canvas (255 = ink)."""
    size = (_W * _SUPER, _H * _SUPER)
    img = Image.new("L", size, 0)
    ImageDraw.Draw(img).text((size[0] / 2, size[1] / 2), char, font=_font(), fill=255,
                             anchor="mm", stroke_width=stroke, stroke_fill=255)
    return img


def _warp_chars(chars: Sequence[str], labels: np.ndarray, rng: np.random.Generator,
                strokes: Sequence[int], max_angle: float, scale: tuple[float, float],
                max_shear: float, max_shift: float) -> list[np.ndarray]:
    """Per stroke width, (n, H, W) float masks of ``chars[labels]`` under one shared
    random affine transform per example (the transform is the same across strokes)."""
    n, big = len(labels), _W * _SUPER
    angle = np.deg2rad(rng.uniform(-max_angle, max_angle, n))
    sc = rng.uniform(*scale, n)
    aspect = rng.uniform(0.85, 1.15, n)
    shear = rng.uniform(-max_shear, max_shear, n)
    shift = rng.uniform(-max_shift, max_shift, (n, 2)) * _SUPER
    out = [np.empty((n, _H, _W), dtype=np.float32) for _ in strokes]
    for i in range(n):
        data = _affine_data(angle[i], sc[i] * aspect[i], sc[i], shear[i], shift[i, 0],
                            shift[i, 1], big / 2, big / 2)
        for j, stroke in enumerate(strokes):
            src = _char_mask(chars[labels[i]], stroke)
            warped = src.transform((big, big), Image.Transform.AFFINE, data,
                                   resample=Image.Resampling.BICUBIC)
            out[j][i] = np.asarray(warped.reduce(_SUPER), dtype=np.float32) / 255.0
    return out


def _render_letters(chars: Sequence[str], labels: np.ndarray,
                    rng: np.random.Generator) -> np.ndarray:
    (mask,) = _warp_chars(chars, labels, rng, strokes=(0,), max_angle=20,
                          scale=(0.75, 1.1), max_shear=0.3, max_shift=4.0)
    n = len(labels)
    bg = _random_colours(rng, n)
    fg = _contrasting(rng, bg, 90.0)
    return _to_uint8(_paint(_flat(bg), mask, fg))


def _render_glyphs(split: str, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return _render_letters(_GLYPHS, labels, rng)


def _render_glyphs_novel(split: str, labels: np.ndarray,
                         rng: np.random.Generator) -> np.ndarray:
    return _render_letters(_GLYPHS_NOVEL, labels, rng)


def _render_symbols(split: str, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    chars = [ch for _, ch in _SYMBOLS]
    outline, inner = _warp_chars(chars, labels, rng, strokes=(3, 0), max_angle=15,
                                 scale=(0.8, 1.15), max_shear=0.2, max_shift=3.0)
    n = len(labels)
    # Two-colour linear gradient in a random direction.
    c0 = _random_colours(rng, n)
    c1 = np.clip(c0 + rng.uniform(-90, 90, (n, 3)), 0, 255)
    d = rng.uniform(0, 2 * np.pi, n)
    yy, xx = np.mgrid[0:_H, 0:_W] + 0.5
    proj = ((xx[None] - 16) * np.cos(d)[:, None, None]
            + (yy[None] - 16) * np.sin(d)[:, None, None]) / 45.0 + 0.5
    canvas = _paint(_flat(c0), np.clip(proj, 0, 1), c1)
    mean_bg = (c0 + c1) / 2
    edge = _contrasting(rng, mean_bg, 100.0)
    # The outline ring is always drawn; the inside is either hollow (the gradient
    # shows through) or filled with a third colour.
    hollow = rng.uniform(size=n) < 0.5
    fill = _random_colours(rng, n)
    ring = np.clip(outline - inner, 0.0, 1.0)
    canvas = _paint(canvas, ring, edge)
    canvas = _paint(canvas, inner * (~hollow)[:, None, None], fill)
    return _to_uint8(canvas + _noise(rng, n, 4, 12))


_RENDERERS = {
    "digits": _render_digits,
    "shapes": _render_shapes,
    "textures": _render_textures,
    "glyphs": _render_glyphs,
    "glyphs_novel": _render_glyphs_novel,
    "symbols": _render_symbols,
}


def render(domain: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Render one split of one embedded domain with NumPy and Pillow (no TFDS).

    Args:
      domain: one of :data:`ALL_DOMAINS`.
      split: ``'train'`` or ``'test'``.

    Returns:
      ``(images, labels)``: ``uint8`` array of shape ``(N,) + IMAGE_SHAPE`` and
      ``int64`` array of shape ``(N,)`` with ``N = SPLIT_SIZES[domain][split]``,
      every class exactly ``N // NUM_CLASSES[domain]`` times, in a shuffled but
      fixed order. Calling it again (in any process) gives identical arrays.

    Raises:
      ValueError: for an unknown domain or split.
    """
    check_domain(domain)
    check_split(split)
    rng = _rng(domain, split)
    labels = _balanced_labels(rng, NUM_CLASSES[domain], SPLIT_SIZES[domain][split])
    images = _RENDERERS[domain](split, labels, rng)
    assert images.shape == (len(labels),) + IMAGE_SHAPE and images.dtype == np.uint8
    return images, labels
