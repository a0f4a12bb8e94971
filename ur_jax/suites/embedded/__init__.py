"""The embedded default dataset: six small, offline, deterministic image domains.

Everything here is generated on the fly from code (and one vendored 57 kB file of
real handwritten digits), so the default pipeline needs no download, no
TensorFlow and no network. The domains are exposed as the TFDS builder
``ur_embedded`` with one :class:`tfds.core.BuilderConfig` per domain; every
config has a ``train`` and a ``test`` split of 32x32 RGB ``uint8`` images with
integer labels (feature dict ``{'image': uint8 (32, 32, 3), 'label': int64}``).

Training domains (:data:`TRAIN_DOMAINS`, 10 classes each):

* ``digits``: real handwritten digits (UCI optdigits, the 8x8 copy bundled with
  scikit-learn), smoothly upsampled under a small random affine jitter and
  coloured with random foreground and background colours on a flat background.
  A source image appears in one split only.
* ``shapes``: filled geometric shapes (circle, square, triangle, star, cross,
  hexagon, ring, diamond, ellipse, crescent) of random size, position and
  rotation on a slightly noisy background.
* ``textures``: full-frame periodic patterns (stripes at four orientations,
  checkers, hexagonal dots, rings, zigzags, sunbursts) with random frequency,
  phase, colours, contrast and noise.
* ``glyphs``: the letters A..J in Pillow's default font under random affine
  transforms (rotation, scale, shear, translation), sharp and flat coloured.

Few-shot domains (:data:`FEWSHOT_DOMAINS`), never used for training:

* ``glyphs_novel``: the held-out letters K..Z, drawn exactly like ``glyphs``
  (novel classes of a seen domain).
* ``symbols``: an unseen domain, 20 punctuation and maths symbols drawn as
  outlined (often hollow) glyphs on a noisy two-colour gradient background.

Every (domain, split) pair is rendered from its own fixed random seed (derived
from a CRC-32 of its name, never from Python's salted ``hash``), so building
twice, anywhere, gives identical examples in the same order (for the same
Pillow version, which draws the fonts and resamples).

Typical use::

    from ur_jax.suites import embedded
    embedded.prepare("/tmp/ur_data")                    # all six, a few seconds
    src = embedded.data_source("digits", "train", "/tmp/ur_data")
    example = src[0]                                    # {'image': ..., 'label': ...}

:func:`render` gives the same arrays without TFDS.

Modules: :mod:`~ur_jax.suites.embedded.domains` (the domains' constants and renderers, NumPy
and Pillow only), :mod:`~ur_jax.suites.embedded.builder` (the TFDS builder, :func:`prepare`,
:func:`data_source`), :mod:`~ur_jax.suites.embedded.register` (``config.dataset =
'embedded'``), ``resources/`` (the vendored digits). No fake writer: the data are generated.
The recipe of the main job is ``configs/default.py`` itself.

To add a domain: add its class names, split sizes and renderer in ``domains.py``
(:data:`CLASS_NAMES`, :data:`SPLIT_SIZES`, ``_RENDERERS``; :data:`TRAIN_DOMAINS` or
:data:`FEWSHOT_DOMAINS`) and its description in ``builder.py``; the builder gets one config per
domain automatically. Changing what an existing domain renders changes the data: bump
``UrEmbedded.VERSION``.
"""

from ur_jax.suites import lazy_exports

_EXPORTS = {
    **dict.fromkeys(("ALL_DOMAINS", "CLASS_NAMES", "FEWSHOT_DOMAINS", "IMAGE_SHAPE", "NUM_CLASSES",
                     "SPLITS", "SPLIT_SIZES", "TRAIN_DOMAINS", "render"), "domains"),
    **dict.fromkeys(("UrEmbedded", "data_source", "prepare", "tfds_builder"), "builder"),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
