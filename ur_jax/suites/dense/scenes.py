"""Procedurally rendered 3-D scenes for multi-task dense prediction (NYU-v2 record format).

A small, offline, deterministic stand-in for NYU-v2: every example is a random room-like
scene ray-cast exactly with NumPy (no per-pixel Python loops) and stored in the record
format of the NYU-v2 builder::

    {'image':    uint8   (H, W, 3)   RGB,
     'semantic': int32   (H, W)      class in [0, NUM_CLASSES), -1 = no label (sky),
     'depth':    float32 (H, W, 1)   camera z-depth in metres (1/1024 m steps), 0 = invalid,
     'normal':   float32 (H, W, 3)   unit surface normal in camera coordinates, 0 = invalid}

Scene. A floor (the plane y = 0) carries 2-6 objects standing on it: spheres, boxes
(axis-aligned or rotated about the vertical axis) and vertical cylinders with caps. Behind
them is either a back wall (the plane z = -D, D in [4.5, 8] m, infinite in x and y) or, with
probability :data:`OPEN_SKY_PROBABILITY`, open sky: the floor then ends at z = -F
(F in [8, 10] m) and rays that hit nothing are sky.

Camera. A pinhole camera at height 1.1-1.7 m above the floor, looking down by 8-22 degrees
(pitch), turned by up to 20 degrees about the vertical (yaw) and rolled by up to 4 degrees.
Intrinsics are fixed per image size: focal length ``f = FOCAL_FRACTION * W`` pixels
(horizontal field of view about 61 degrees), principal point ``(cx, cy) = (W / 2, H / 2)``.
Pixel ``(row i, column j)`` samples its centre ``(u, v) = (j + 0.5, i + 0.5)``.

Camera coordinates (used for ``depth`` and ``normal``): x to the right of the image,
y up in the image, z towards the viewer (OpenGL convention; the camera looks along -z).
The ray of pixel (i, j) is ``r = ((u - cx) / f, -(v - cy) / f, -1)`` and the camera-space
point seen there is ``depth * r``: ``depth`` is the distance along the optical axis
(NYU-v2's convention, not the Euclidean ray length). Because ``cx = W / 2``, flipping an
image horizontally maps x to -x: flip ``image``, ``semantic``, ``depth`` and ``normal`` along
the width axis and negate ``normal[..., 0]`` to get the exact record of the mirrored
scene. Normals point out of the surface, towards the camera side.

World coordinates (only in the scene description): y up, floor at y = 0, camera at
``(0, camera_height, 0)``; with zero yaw it looks along -z.

Invalid pixels. Sky has label -1, depth 0 and normal (0, 0, 0). A few small elliptical
"sensor holes" per image (0-4 blobs, as the missing depth of NYU-v2's Kinect) have depth 0
and normal 0 but keep their label.

Appearance. Lambertian shading from a random directional light plus ambient light, with
cast shadows of the objects; every surface (floor, wall and each object) gets a colour drawn
from the SAME distribution and one of the same procedural solid textures (plain, 3-D
checkerboard, stripes in a random 3-D direction), so colour and texture alone do not give
the class; uniform pixel noise (std 1-4 grey levels). Sky is a random vertical gradient.

Determinism. Example ``i`` of split ``s`` is rendered from ``np.random.default_rng([seed,
crc32(s), i])``, independent of the split size, Python's hash seed and the iteration order:
every build gives the same arrays, and the ``tiny`` config holds the first examples of the
``default`` one.

Typical use::

    from ur_jax.suites.dense import scenes
    scenes.prepare("/tmp/ur_data")          # 1500 images: ~13 s of one core, ~51 MB
    src = scenes.data_source("train", "/tmp/ur_data")
    ex = src[0]          # {'image', 'semantic', 'depth', 'normal'} as above

:func:`render_scene` renders one example (optionally with its scene description) without
TFDS; :func:`render_example` renders example ``i`` of a split exactly as stored.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import time
import zlib
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import tensorflow_datasets as tfds

from ur_jax.data import tfds_helper

__all__ = [
    "BOX",
    "CLASS_NAMES",
    "CONFIGS",
    "CYLINDER",
    "DEPTH_STEP",
    "FLOOR",
    "FOCAL_FRACTION",
    "IMAGE_SHAPE",
    "NUM_CLASSES",
    "OPEN_SKY_PROBABILITY",
    "SPHERE",
    "SPLITS",
    "SPLIT_SIZES",
    "TASKS",
    "WALL",
    "Box",
    "Camera",
    "Cylinder",
    "Scene",
    "ScenesConfig",
    "Sphere",
    "UrScenes",
    "camera_rays",
    "data_source",
    "intrinsics",
    "prepare",
    "render_example",
    "render_scene",
    "sample_scene",
]

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------- #
# Public constants.
# --------------------------------------------------------------------------- #

IMAGE_SHAPE: tuple[int, int, int] = (64, 96, 3)
"""Default height, width, channels of the images (both sides divisible by 32)."""

CLASS_NAMES: tuple[str, ...] = ("floor", "wall", "sphere", "box", "cylinder")
"""Semantic classes in label order (label ``i`` is ``CLASS_NAMES[i]``; -1 is unlabelled)."""

NUM_CLASSES: int = len(CLASS_NAMES)
"""Number of semantic classes (the ignore label -1 not counted)."""

FLOOR, WALL, SPHERE, BOX, CYLINDER = range(NUM_CLASSES)  # the labels, by name

TASKS: tuple[str, ...] = ("semantic", "depth", "normal")
"""The dense tasks, in the order of the record's target keys."""

SPLITS: tuple[str, ...] = ("train", "test")
"""The splits of every config."""

SPLIT_SIZES: dict[str, dict[str, int]] = {
    "default": {"train": 1200, "test": 300},
    "tiny": {"train": 24, "test": 8},
}
"""Examples per config and split; ``tiny`` (for tests) holds the first ``default`` ones."""

CONFIGS: tuple[str, ...] = tuple(SPLIT_SIZES)
"""Builder config names."""

FOCAL_FRACTION: float = 0.85
"""Focal length in pixels divided by the image width (horizontal field of view ~61 deg)."""

DEPTH_STEP: float = 2.0 ** -10
"""Depth resolution in metres (~1 mm): stored depths are multiples of it."""

OPEN_SKY_PROBABILITY: float = 0.3
"""Probability that a sampled scene has no back wall (open sky above a finite floor)."""

_SEED = 20230502
_EPS = 1e-6  # minimum ray parameter of a hit (metres of depth)
_SHADOW_OFFSET = 1e-4  # shadow rays start this far off the surface, along its normal


# --------------------------------------------------------------------------- #
# Scene description.
# --------------------------------------------------------------------------- #

def _rot_x(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _rot_y(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _rot_z(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


@dataclasses.dataclass(frozen=True)
class Camera:
    """Camera pose in world coordinates (intrinsics come from the image size, see
    :func:`intrinsics`).

    Attributes:
      height: height of the optical centre above the floor, metres.
      pitch: downward tilt of the optical axis, radians (positive looks down).
      yaw: rotation about the world's vertical axis, radians (positive turns left).
      roll: rotation about the optical axis, radians.
    """

    height: float
    pitch: float
    yaw: float = 0.0
    roll: float = 0.0

    @property
    def origin(self) -> np.ndarray:
        """The optical centre in world coordinates, shape (3,)."""
        return np.array([0.0, self.height, 0.0])

    @property
    def rotation(self) -> np.ndarray:
        """Camera-to-world rotation (3, 3): ``p_world = origin + rotation @ p_camera``;
        its columns are the camera's x (right), y (up) and z (backwards) axes."""
        return _rot_y(self.yaw) @ _rot_x(-self.pitch) @ _rot_z(self.roll)


@dataclasses.dataclass(frozen=True)
class Sphere:
    """A sphere resting on the floor: centre ``(x, radius, z)``; lengths in metres."""

    x: float
    z: float
    radius: float
    label: ClassVar[int] = SPHERE

    @property
    def center(self) -> np.ndarray:
        """Centre in world coordinates, shape (3,)."""
        return np.array([self.x, self.radius, self.z])

    @property
    def footprint(self) -> float:
        """Radius of a vertical cylinder around the centre that contains the object."""
        return self.radius


@dataclasses.dataclass(frozen=True)
class Box:
    """A box standing on the floor: centre ``(x, half[1], z)``, half extents ``half``
    (x, y, z, metres) in its own frame, rotated by ``angle`` radians about the vertical
    axis (``p_world = center + R_y(angle) @ p_local``)."""

    x: float
    z: float
    half: tuple[float, float, float]
    angle: float = 0.0
    label: ClassVar[int] = BOX

    @property
    def center(self) -> np.ndarray:
        """Centre in world coordinates, shape (3,)."""
        return np.array([self.x, self.half[1], self.z])

    @property
    def rotation(self) -> np.ndarray:
        """Local-to-world rotation (3, 3), a rotation about the y axis."""
        return _rot_y(self.angle)

    @property
    def footprint(self) -> float:
        """Radius of a vertical cylinder around the centre that contains the object."""
        return math.hypot(self.half[0], self.half[2])


@dataclasses.dataclass(frozen=True)
class Cylinder:
    """A vertical cylinder with flat caps standing on the floor: axis through
    ``(x, ., z)``, ``radius`` and ``height`` in metres (from y = 0 to y = height)."""

    x: float
    z: float
    radius: float
    height: float
    label: ClassVar[int] = CYLINDER

    @property
    def footprint(self) -> float:
        """Radius of a vertical cylinder around the axis that contains the object."""
        return self.radius


SceneObject = Sphere | Box | Cylinder


@dataclasses.dataclass(frozen=True)
class Scene:
    """The geometry of one scene (appearance is drawn separately by :func:`render_scene`).

    Attributes:
      camera: the camera pose.
      objects: the objects standing on the floor.
      wall_distance: the back wall is the plane ``z = -wall_distance`` (world); ``None``
        means no wall (open sky).
      floor_extent: the floor is the half-plane ``y = 0, z >= -floor_extent`` (world);
        ``inf`` for an unbounded floor.
    """

    camera: Camera
    objects: tuple[SceneObject, ...]
    wall_distance: float | None
    floor_extent: float = math.inf


def intrinsics(height: int, width: int) -> tuple[float, float, float]:
    """Pinhole intrinsics ``(f, cx, cy)`` in pixels for an image of ``height x width``:
    ``f = FOCAL_FRACTION * width``, ``cx = width / 2``, ``cy = height / 2``."""
    return FOCAL_FRACTION * width, width / 2.0, height / 2.0


def camera_rays(height: int, width: int) -> np.ndarray:
    """Camera-space ray of every pixel centre, float64 (height, width, 3), with z = -1:
    the point seen at pixel (i, j) with depth d is ``d * camera_rays(...)[i, j]``."""
    return _camera_rays(height, width).copy()


@functools.lru_cache(maxsize=8)
def _camera_rays(height: int, width: int) -> np.ndarray:
    f, cx, cy = intrinsics(height, width)
    v, u = np.mgrid[0:height, 0:width] + 0.5
    rays = np.stack([(u - cx) / f, -(v - cy) / f, -np.ones_like(u)], axis=-1)
    rays.flags.writeable = False
    return rays


# --------------------------------------------------------------------------- #
# Random scenes.
# --------------------------------------------------------------------------- #

def _sample_object(rng: np.random.Generator, x: float, z: float) -> SceneObject:
    kind = int(rng.integers(3))
    if kind == 0:
        return Sphere(x, z, float(rng.uniform(0.3, 0.75)))
    if kind == 1:
        half = (float(rng.uniform(0.25, 0.7)), float(rng.uniform(0.2, 0.75)),
                float(rng.uniform(0.25, 0.7)))
        angle = float(rng.uniform(0.0, math.pi / 2)) if rng.uniform() < 0.7 else 0.0
        return Box(x, z, half, angle)
    return Cylinder(x, z, float(rng.uniform(0.2, 0.5)), float(rng.uniform(0.5, 1.9)))


def sample_scene(rng: np.random.Generator) -> Scene:
    """Draw a random scene: camera pose, 2-6 non-overlapping objects on the floor in
    front of the camera, and a back wall at 4.5-8 m or (with probability
    :data:`OPEN_SKY_PROBABILITY`) open sky above a floor ending at 8-10 m (world z)."""
    camera = Camera(height=float(rng.uniform(1.1, 1.7)),
                    pitch=math.radians(rng.uniform(8.0, 22.0)),
                    yaw=math.radians(rng.uniform(-20.0, 20.0)),
                    roll=math.radians(rng.uniform(-4.0, 4.0)))
    if rng.uniform() < OPEN_SKY_PROBABILITY:
        wall, floor_extent = None, float(rng.uniform(8.0, 10.0))
    else:
        wall, floor_extent = float(rng.uniform(4.5, 8.0)), math.inf
    limit = wall if wall is not None else floor_extent
    n_objects = int(rng.integers(2, 7))
    cos_y, sin_y = math.cos(camera.yaw), math.sin(camera.yaw)
    objects: list[SceneObject] = []
    for _ in range(40 * n_objects):  # rejection sampling; succeeds in a few tries each
        if len(objects) == n_objects:
            break
        forward = rng.uniform(2.2, 6.5)  # along the camera's horizontal heading
        lateral = rng.uniform(-0.5, 0.5) * forward
        x = lateral * cos_y - forward * sin_y
        z = -forward * cos_y - lateral * sin_y
        obj = _sample_object(rng, float(x), float(z))
        if -z + obj.footprint > limit - 0.15:
            continue  # would cut into the wall or hang over the floor's edge
        if math.hypot(x, z) - obj.footprint < 1.5:
            continue  # too close to the camera
        if any(math.hypot(x - o.x, z - o.z) < obj.footprint + o.footprint + 0.1
               for o in objects):
            continue  # overlaps an object already placed
        objects.append(obj)
    return Scene(camera, tuple(objects), wall, floor_extent)


# --------------------------------------------------------------------------- #
# Exact ray-primitive intersections (vectorised over rays).
#
# Every function takes ray origins `o` (3,) or (N, 3) and directions `d` (N, 3) in
# world coordinates and returns the smallest hit parameter t > _EPS, shape (N,), inf
# where there is none, and the outward unit normal there, (N, 3) (anything on a miss).
# --------------------------------------------------------------------------- #

def _rowdot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise dot product of two (N, 3) arrays, shape (N,)."""
    return np.einsum("ni,ni->n", a, b)


def _hit_plane_y(o: np.ndarray, d: np.ndarray, extent: float
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The floor, seen from above: y = 0 with z >= -extent."""
    oy = np.broadcast_to(o, d.shape)[:, 1]
    oz = np.broadcast_to(o, d.shape)[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = -oy / d[:, 1]
    ok = (d[:, 1] < 0) & (t > _EPS) & (oz + t * d[:, 2] >= -extent)
    normal = np.broadcast_to(np.array([0.0, 1.0, 0.0]), d.shape)
    return np.where(ok, t, np.inf), normal


def _hit_plane_z(o: np.ndarray, d: np.ndarray, distance: float
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The back wall, seen from the front: z = -distance."""
    oz = np.broadcast_to(o, d.shape)[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (-distance - oz) / d[:, 2]
    ok = (d[:, 2] < 0) & (t > _EPS)
    normal = np.broadcast_to(np.array([0.0, 0.0, 1.0]), d.shape)
    return np.where(ok, t, np.inf), normal


def _hit_sphere(o: np.ndarray, d: np.ndarray, s: Sphere) -> tuple[np.ndarray, np.ndarray]:
    c = s.center
    oc = o - c
    a = _rowdot(d, d)
    if oc.ndim == 1:
        b, cc = d @ oc, oc @ oc - s.radius ** 2
    else:
        b, cc = _rowdot(oc, d), _rowdot(oc, oc) - s.radius ** 2
    disc = b * b - a * cc
    root = np.sqrt(np.maximum(disc, 0.0))
    t_near, t_far = (-b - root) / a, (-b + root) / a
    t = np.where(t_near > _EPS, t_near, t_far)
    ok = (disc >= 0) & (t > _EPS)
    t = np.where(ok, t, np.inf)
    p = o + np.where(ok, t, 0.0)[:, None] * d
    return t, (p - c) / s.radius


def _hit_box(o: np.ndarray, d: np.ndarray, b: Box) -> tuple[np.ndarray, np.ndarray]:
    rot = b.rotation
    ol = (o - b.center) @ rot  # world -> local: rot.T @ v for each row v
    dl = d @ rot
    half = np.asarray(b.half)
    safe = np.where(np.abs(dl) < 1e-12, np.where(dl < 0, -1e-12, 1e-12), dl)
    t1, t2 = (-half - ol) / safe, (half - ol) / safe
    t_lo, t_hi = np.minimum(t1, t2), np.maximum(t1, t2)
    t_near, t_far = t_lo.max(axis=1), t_hi.min(axis=1)
    axis = t_lo.argmax(axis=1)
    ok = (t_near <= t_far) & (t_far > _EPS)
    t = np.where(t_near > _EPS, t_near, t_far)
    rows = np.arange(len(d))
    n_local = np.zeros_like(dl)
    n_local[rows, axis] = -np.sign(safe[rows, axis])
    return np.where(ok, t, np.inf), n_local @ rot.T


def _hit_cylinder(o: np.ndarray, d: np.ndarray, c: Cylinder
                  ) -> tuple[np.ndarray, np.ndarray]:
    o = np.broadcast_to(o, d.shape)
    ox, oy, oz = o[:, 0] - c.x, o[:, 1], o[:, 2] - c.z
    dx, dy, dz = d[:, 0], d[:, 1], d[:, 2]
    # Side: (ox + t dx)^2 + (oz + t dz)^2 = r^2 with 0 <= y <= height.
    a = dx * dx + dz * dz
    b = ox * dx + oz * dz
    cc = ox * ox + oz * oz - c.radius ** 2
    disc = b * b - a * cc
    with np.errstate(divide="ignore", invalid="ignore"):
        root = np.sqrt(np.maximum(disc, 0.0))
        candidates = [(-b - root) / a, (-b + root) / a]
    best = np.full(len(d), np.inf)
    normal = np.zeros(d.shape)
    for t in candidates:
        y = oy + t * dy
        ok = (a > 0) & (disc >= 0) & (t > _EPS) & (y >= 0) & (y <= c.height) & (t < best)
        best = np.where(ok, t, best)
        side = np.stack([(ox + t * dx) / c.radius, np.zeros_like(t),
                         (oz + t * dz) / c.radius], axis=1)
        normal = np.where(ok[:, None], side, normal)
    # Caps: y = height (normal +y) and y = 0 (normal -y) inside the disc.
    for y_cap, ny in ((c.height, 1.0), (0.0, -1.0)):
        with np.errstate(divide="ignore", invalid="ignore"):
            t = (y_cap - oy) / dy
        ok = (dy != 0) & (t > _EPS) & (t < best)
        ok &= (ox + t * dx) ** 2 + (oz + t * dz) ** 2 <= c.radius ** 2
        best = np.where(ok, t, best)
        normal = np.where(ok[:, None], np.array([0.0, ny, 0.0]), normal)
    return best, normal


def _bounding_sphere(obj: SceneObject) -> tuple[np.ndarray, float]:
    """Centre (3,) and radius of a sphere containing ``obj`` (world)."""
    if isinstance(obj, Sphere):
        return obj.center, obj.radius
    if isinstance(obj, Box):
        return obj.center, float(np.linalg.norm(obj.half))
    if isinstance(obj, Cylinder):
        return (np.array([obj.x, obj.height / 2, obj.z]),
                math.hypot(obj.radius, obj.height / 2))
    raise TypeError(f"Scene objects must be Sphere, Box or Cylinder; found "
                    f"{type(obj).__name__}: {obj!r}.")


_EXACT = {Sphere: _hit_sphere, Box: _hit_box, Cylinder: _hit_cylinder}


def _hit_object(o: np.ndarray, d: np.ndarray, obj: SceneObject
                ) -> tuple[np.ndarray, np.ndarray]:
    """Exact hit parameter (N,) and outward normal (N, 3) of one object."""
    return _EXACT[type(obj)](o, d, obj)


def _cast(scene: Scene, d: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest hit of camera rays ``d`` (N, 3, world, camera-space z = -1).

    Returns ``(t, normal, instance)``: the depth (inf for sky), the world normal (zero
    for sky) and the index of the surface hit (0 floor, 1 wall, 2 + k object k, -1 sky).
    Objects are intersected exactly, but only along the rays whose line passes within
    their bounding sphere (the others cannot hit them).
    """
    o = scene.camera.origin
    t, n_floor = _hit_plane_y(o, d, scene.floor_extent)
    instance = np.where(np.isfinite(t), 0, -1)
    normal = np.where(instance[:, None] == 0, n_floor, 0.0)
    if scene.wall_distance is not None:
        t_wall, n_wall = _hit_plane_z(o, d, scene.wall_distance)
        closer = t_wall < t
        t[closer], normal[closer], instance[closer] = t_wall[closer], n_wall[closer], 1
    dd = _rowdot(d, d)
    for k, obj in enumerate(scene.objects):
        centre, radius = _bounding_sphere(obj)
        oc = centre - o
        b = d @ oc
        rays = np.flatnonzero(oc @ oc - b * b / dd <= (radius * 1.001 + 1e-6) ** 2)
        t_k, n_k = _hit_object(o, d[rays], obj)
        closer = t_k < t[rays]
        sel = rays[closer]
        t[sel], normal[sel], instance[sel] = t_k[closer], n_k[closer], 2 + k
    return t, normal, instance


def _shadowed(scene: Scene, p: np.ndarray, n: np.ndarray, light: np.ndarray) -> np.ndarray:
    """Whether the points ``p`` (N, 3; outward normals ``n``) are hidden from the
    directional ``light`` (unit, (3,)) by an object (the floor and wall cast none here).
    Only rays that pass within an object's bounding sphere, in front of their origin,
    are intersected with it."""
    o = p + _SHADOW_OFFSET * n
    o_light, o_sq = o @ light, _rowdot(o, o)
    out = np.zeros(len(p), dtype=bool)
    for obj in scene.objects:
        centre, radius = _bounding_sphere(obj)
        b = centre @ light - o_light  # (centre - o) . light
        dist2 = centre @ centre - 2.0 * (o @ centre) + o_sq - b * b
        r = radius * 1.001 + 1e-6
        rays = np.flatnonzero((dist2 <= r * r) & (b > -r) & ~out)
        t, _ = _hit_object(o[rays], np.broadcast_to(light, (len(rays), 3)), obj)
        out[rays[np.isfinite(t)]] = True
    return out


# --------------------------------------------------------------------------- #
# Appearance.
# --------------------------------------------------------------------------- #

def _surface_colour(rng: np.random.Generator) -> np.ndarray:
    """One surface colour in [0, 1]^3; the same distribution for every class."""
    return rng.uniform(0.12, 0.95, 3)


def _texture(rng: np.random.Generator, p: np.ndarray) -> np.ndarray:
    """A random procedural solid texture at world points ``p`` (N, 3): float RGB (N, 3)."""
    base = _surface_colour(rng)
    other = _surface_colour(rng) if rng.uniform() < 0.5 else base * rng.uniform(0.45, 0.8)
    kind = int(rng.integers(3))
    if kind == 0:  # plain
        mix = np.zeros(len(p))
    elif kind == 1:  # 3-D checkerboard
        size = rng.uniform(0.15, 0.6)
        cells = np.floor(p / size + rng.uniform(0, 1, 3)).astype(np.int64)
        mix = (cells.sum(axis=1) % 2).astype(np.float64)
    else:  # stripes across a random 3-D direction, soft or hard
        k = rng.standard_normal(3)
        k /= np.linalg.norm(k)
        period = rng.uniform(0.12, 0.5)
        wave = np.sin(2 * np.pi * (p @ k) / period + rng.uniform(0, 2 * np.pi))
        mix = 0.5 + 0.5 * (np.sign(wave) if rng.uniform() < 0.5 else wave)
    return base + (other - base) * mix[:, None]


def _sample_light(rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """A unit direction towards a directional light (world, upper hemisphere) and the
    ambient fraction."""
    elevation = math.radians(rng.uniform(25.0, 75.0))
    azimuth = rng.uniform(0.0, 2 * math.pi)
    light = np.array([math.cos(elevation) * math.sin(azimuth), math.sin(elevation),
                      math.cos(elevation) * math.cos(azimuth)])
    return light, float(rng.uniform(0.25, 0.5))


def _holes(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """0-4 small random elliptical blobs, bool (height, width)."""
    v, u = np.mgrid[0:height, 0:width] + 0.5
    out = np.zeros((height, width), dtype=bool)
    scale = width / IMAGE_SHAPE[1]
    for _ in range(int(rng.integers(0, 5))):
        cu, cv = rng.uniform(0, width), rng.uniform(0, height)
        ru, rv = rng.uniform(1.0, 3.5, 2) * scale
        out |= ((u - cu) / ru) ** 2 + ((v - cv) / rv) ** 2 <= 1.0
    return out


# --------------------------------------------------------------------------- #
# Rendering.
# --------------------------------------------------------------------------- #

def _check_size(height: int, width: int) -> None:
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"render_scene expects a positive integer {name}, found "
                             f"{value!r}; SegNet needs multiples of 32, e.g. "
                             f"{IMAGE_SHAPE[:2]}.")


def render_scene(rng: np.random.Generator, height: int = IMAGE_SHAPE[0],
                 width: int = IMAGE_SHAPE[1], *, scene: Scene | None = None,
                 holes: bool = True, return_scene: bool = False) -> dict[str, Any]:
    """Ray-cast one scene into an NYU-v2-style record.

    Args:
      rng: the source of every random choice (scene, appearance, noise, holes).
      height, width: image size in pixels.
      scene: a fixed scene geometry; ``None`` draws one with :func:`sample_scene`.
        Appearance is drawn from ``rng`` either way.
      holes: whether to punch random "sensor holes" (depth and normal 0, label kept).
      return_scene: also return the geometry and per-pixel bookkeeping (below).

    Returns:
      ``{'image': uint8 (H, W, 3), 'semantic': int32 (H, W), 'depth': float32 (H, W, 1),
      'normal': float32 (H, W, 3)}`` in the conventions of the module docstring. With
      ``return_scene=True`` also ``'scene'`` (the :class:`Scene`), ``'instance'`` (int32
      (H, W): 0 floor, 1 wall, 2 + k ``scene.objects[k]``, -1 sky), ``'hole'`` (bool
      (H, W), the sensor holes on labelled pixels) and ``'intrinsics'`` ``(f, cx, cy)``.
    """
    _check_size(height, width)
    if scene is None:
        scene = sample_scene(rng)
    cam = scene.camera
    rot = cam.rotation
    rays = _camera_rays(height, width).reshape(-1, 3)
    d = rays @ rot.T  # world directions; the ray parameter is the camera z-depth
    t, n_world, instance = _cast(scene, d)
    hit = instance >= 0
    labels = np.array([FLOOR, WALL] + [obj.label for obj in scene.objects])
    semantic = np.where(hit, labels[np.maximum(instance, 0)], -1)

    # Appearance: one texture per surface, Lambertian light, shadows, ambient.
    light, ambient = _sample_light(rng)
    p = cam.origin + np.where(hit, t, 0.0)[:, None] * d
    albedo = np.zeros((len(d), 3))
    for idx in range(len(labels)):
        sel = instance == idx  # drawn even when unseen: a fixed number of draws
        albedo[sel] = _texture(rng, p[sel])
    lambert = np.clip(n_world @ light, 0.0, None)
    lit = hit & (lambert > 0)
    lambert[lit] *= ~_shadowed(scene, p[lit], n_world[lit], light)
    shading = ambient + (1.0 - ambient) * lambert
    sky_top, sky_bottom = rng.uniform(0.55, 1.0, 3), rng.uniform(0.55, 1.0, 3)
    rows = (np.arange(len(d)) // width) / max(height - 1, 1)
    sky = sky_top + (sky_bottom - sky_top) * rows[:, None]
    colour = np.where(hit[:, None], albedo * shading[:, None], sky)
    noise_std = rng.uniform(1.0, 4.0)  # uniform noise of this standard deviation
    colour = colour * 255.0 + (noise_std * math.sqrt(12.0)) * (
        rng.random(colour.shape, np.float32) - 0.5)
    image = np.clip(np.rint(colour), 0, 255).astype(np.uint8).reshape(height, width, 3)

    # Targets in camera coordinates.
    hole = (_holes(rng, height, width).reshape(-1) if holes
            else np.zeros(len(d), dtype=bool)) & hit
    valid = hit & ~hole
    # Depth is stored in steps of DEPTH_STEP (~1 mm; a third of the bytes after zlib).
    depth = np.where(valid, np.round(np.where(valid, t, 0.0) / DEPTH_STEP) * DEPTH_STEP, 0.0)
    normal = n_world @ rot  # world -> camera: rot.T @ n for each row n (all unit)
    normal[~valid] = 0.0
    out: dict[str, Any] = {
        "image": image,
        "semantic": semantic.astype(np.int32).reshape(height, width),
        "depth": depth.astype(np.float32).reshape(height, width, 1),
        "normal": normal.astype(np.float32).reshape(height, width, 3),
    }
    if return_scene:
        out.update(scene=scene, instance=instance.astype(np.int32).reshape(height, width),
                   hole=hole.reshape(height, width),
                   intrinsics=intrinsics(height, width))
    return out


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(
            f"Unknown split {split!r} for ur_scenes. Expected one of {list(SPLITS)}; "
            "sub-splits such as 'train[:10%]' are not accepted here, slice the returned "
            "source instead.")


def _check_config(config: str) -> None:
    if config not in CONFIGS:
        raise ValueError(f"Unknown ur_scenes config {config!r}. Expected one of "
                         f"{list(CONFIGS)} ('default' for training, 'tiny' for tests).")


def _example_rng(split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([_SEED, zlib.crc32(split.encode("utf-8")), int(index)])


def render_example(split: str, index: int, height: int = IMAGE_SHAPE[0],
                   width: int = IMAGE_SHAPE[1]) -> dict[str, np.ndarray]:
    """Example ``index`` of ``split`` exactly as the builder stores it (the record dict of
    :func:`render_scene`), seeded from ``(split, index)`` only."""
    _check_split(split)
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or index < 0:
        raise ValueError(f"render_example expects a non-negative integer index, found "
                         f"{index!r}.")
    return render_scene(_example_rng(split, index), height, width)


# --------------------------------------------------------------------------- #
# The TFDS builder.
# --------------------------------------------------------------------------- #

@dataclasses.dataclass(eq=False)
class ScenesConfig(tfds.core.BuilderConfig):
    """A :class:`UrScenes` config: split sizes and image size."""

    train_size: int = SPLIT_SIZES["default"]["train"]
    test_size: int = SPLIT_SIZES["default"]["test"]
    height: int = IMAGE_SHAPE[0]
    width: int = IMAGE_SHAPE[1]


class UrScenes(tfds_helper.LocalBuilder):
    """TFDS builder ``ur_scenes``: procedurally rendered scenes in NYU-v2's record format.

    Configs ``default`` (1200 train / 300 test, 64 x 96) and ``tiny`` (the first 24 / 8
    of them, for tests). No download ever happens. Build with
    ``file_format='array_record'`` (what :func:`prepare` does) to read it without
    TensorFlow through :meth:`as_data_source`.
    """

    BUILDER_CONFIGS: ClassVar[list[tfds.core.BuilderConfig]] = [
        ScenesConfig(name=name, description=f"{sizes['train']} train / {sizes['test']} "
                     f"test scenes of {IMAGE_SHAPE[0]} x {IMAGE_SHAPE[1]} pixels.",
                     train_size=sizes["train"], test_size=sizes["test"])
        for name, sizes in SPLIT_SIZES.items()
    ]
    DEFAULT_CONFIG_NAME = "default"

    def _info(self) -> tfds.core.DatasetInfo:
        cfg = self.builder_config
        h, w = cfg.height, cfg.width
        f, cx, cy = intrinsics(h, w)

        def tensor(shape: tuple[int, ...], dtype: Any) -> tfds.features.Tensor:
            return tfds.features.Tensor(shape=shape, dtype=dtype, encoding="zlib")

        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                "Procedurally ray-cast 3-D scenes (floor, back wall, spheres, boxes, "
                "cylinders) for multi-task dense prediction in NYU-v2's record format. "
                f"Classes {list(CLASS_NAMES)}, -1 = sky. Depth: camera z-depth in metres, "
                "0 = invalid. Normal: unit, camera coordinates (x right, y up, z towards "
                f"the camera), 0 = invalid. Pinhole f = {f:g} px, c = ({cx:g}, {cy:g})."),
            features=tfds.features.FeaturesDict({
                "image": tensor((h, w, 3), np.uint8),
                "semantic": tensor((h, w), np.int32),
                "depth": tensor((h, w, 1), np.float32),
                "normal": tensor((h, w, 3), np.float32),
            }),
            # Examples are seeded by index; keeping their order makes `src[i]` equal
            # `render_example(split, i)`.
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: Any) -> dict[str, Iterator]:
        del dl_manager  # nothing is ever downloaded
        return {split: self._generate_examples(split) for split in SPLITS}

    def _generate_examples(self, split: str) -> Iterator[tuple[int, dict[str, Any]]]:
        cfg = self.builder_config
        size = cfg.train_size if split == "train" else cfg.test_size
        for i in range(size):
            yield i, render_example(split, i, cfg.height, cfg.width)


# --------------------------------------------------------------------------- #
# Public helpers.
# --------------------------------------------------------------------------- #

def prepare(data_dir: str | os.PathLike, config: str = "default") -> None:
    """Build ``ur_scenes/<config>`` into ``data_dir`` once (idempotent: an existing build
    is reused). Silences TFDS progress bars; logs one line to ``ur_jax.suites.dense.scenes``.

    Raises:
      ValueError: for an unknown config.
    """
    _check_config(config)
    start = time.perf_counter()
    builder, prepared = tfds_helper.open_builder(UrScenes, data_dir, config=config)
    if prepared:
        return
    tfds_helper.build(builder)
    logger.info("Built ur_scenes/%s in %.2f s into %s", config,
                time.perf_counter() - start, builder.data_dir)


def data_source(split: str, data_dir: str | os.PathLike, config: str = "default") -> Any:
    """Random-access source of one split, prepared in ``data_dir`` first if needed.

    ``len(src)`` is the split size; ``src[i]`` is the record dict (``image`` uint8
    (H, W, 3), ``semantic`` int32 (H, W), ``depth`` float32 (H, W, 1), ``normal``
    float32 (H, W, 3)), equal to ``render_example(split, i)``.

    Raises:
      ValueError: for an unknown split or config.
    """
    _check_split(split)
    _check_config(config)
    prepare(data_dir, config)
    return tfds_helper.open_builder(UrScenes, data_dir, config=config)[0].as_data_source(
        split=split)
