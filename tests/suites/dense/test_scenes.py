"""Tests for the procedurally rendered dense-prediction scenes (ur_jax.suites.dense.scenes).

Geometry is checked from the definitions: every labelled pixel is back-projected with its
depth through the documented pinhole camera and must lie on the surface its label and
instance name, with the documented normal. Nearest-hit correctness is checked against an
independent ray-marching reference that only uses inside/outside tests of the solids.
The ``tiny`` builder config is built once per module.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ur_jax.suites.dense import scenes as S

H, W = S.IMAGE_SHAPE[:2]


# --------------------------------------------------------------------------- #
# Independent references.
# --------------------------------------------------------------------------- #

def _pixel_rays(height: int, width: int) -> np.ndarray:
    """Camera-space ray (z = -1) through each pixel centre, from the documented model."""
    f = 0.85 * width
    j, i = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    return np.stack([(j - width / 2) / f, -(i - height / 2) / f, -np.ones_like(j)], -1)


def _rot(axis: str, a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    if axis == "x":
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    if axis == "y":
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def _world_points(rec: dict, scene: S.Scene) -> np.ndarray:
    """World coordinates (H, W, 3) of the points seen, from depth and the camera pose."""
    h, w = rec["semantic"].shape
    p_cam = rec["depth"] * _pixel_rays(h, w)
    return scene.camera.origin + p_cam @ scene.camera.rotation.T


def _inside(p: np.ndarray, scene: S.Scene) -> list[np.ndarray]:
    """Per surface (floor, wall, objects...), whether points ``p`` (..., 3) are inside it."""
    x, y, z = p[..., 0], p[..., 1], p[..., 2]
    out = [(y < 0) & (z >= -scene.floor_extent)]
    out.append(z < -scene.wall_distance if scene.wall_distance is not None
               else np.zeros(x.shape, bool))
    for obj in scene.objects:
        if isinstance(obj, S.Sphere):
            out.append(((p - [obj.x, obj.radius, obj.z]) ** 2).sum(-1) < obj.radius ** 2)
        elif isinstance(obj, S.Box):
            local = (p - [obj.x, obj.half[1], obj.z]) @ _rot("y", obj.angle)
            out.append((np.abs(local) < obj.half).all(-1))
        else:
            r2 = (x - obj.x) ** 2 + (z - obj.z) ** 2
            out.append((r2 < obj.radius ** 2) & (y > 0) & (y < obj.height))
    return out


def _march(scene: S.Scene, height: int, width: int, step: float = 0.004,
           t_max: float = 16.0) -> tuple[np.ndarray, np.ndarray]:
    """Ray-marching reference: for each pixel, the first depth on a grid of ``step`` at
    which the ray is inside a solid, and that solid's instance index (-1: none)."""
    d = _pixel_rays(height, width).reshape(-1, 3) @ scene.camera.rotation.T
    ts = np.arange(0.3, t_max, step)
    inst = np.full(len(d), -1)
    depth = np.zeros(len(d))
    for chunk in np.array_split(np.arange(len(d)), max(1, len(d) // 256)):
        p = scene.camera.origin + ts[:, None, None] * d[chunk][None]  # (T, n, 3)
        inside = np.stack(_inside(p, scene))  # (S, T, n)
        any_in = inside.any(0)
        first = any_in.argmax(0)
        hit = any_in.any(0)
        cols = np.arange(len(chunk))
        inst[chunk] = np.where(hit, inside[:, first, cols].argmax(0), -1)
        depth[chunk] = np.where(hit, ts[first], 0.0)
    return inst.reshape(height, width), depth.reshape(height, width)


# --------------------------------------------------------------------------- #
# Fixtures.
# --------------------------------------------------------------------------- #

@pytest.fixture(scope="module")
def samples() -> list[dict]:
    """Random scenes with their descriptions (default size)."""
    return [S.render_scene(np.random.default_rng(100 + k), return_scene=True)
            for k in range(16)]


def _one_sphere_before_box() -> S.Scene:
    return S.Scene(
        camera=S.Camera(height=1.4, pitch=math.radians(12.0)),
        objects=(S.Sphere(x=0.0, z=-3.0, radius=0.6),
                 S.Box(x=0.3, z=-5.5, half=(1.0, 1.0, 0.5), angle=0.3)),
        wall_distance=8.0)


# --------------------------------------------------------------------------- #
# Camera and conventions.
# --------------------------------------------------------------------------- #

def test_camera_model_matches_documentation() -> None:
    f, cx, cy = S.intrinsics(H, W)
    assert (f, cx, cy) == (0.85 * W, W / 2, H / 2)
    np.testing.assert_allclose(S.camera_rays(H, W), _pixel_rays(H, W), atol=1e-12)
    yaw, pitch = math.radians(17.0), math.radians(11.0)
    rot = S.Camera(height=1.3, pitch=pitch, yaw=yaw).rotation
    # Optical axis (-z_cam) looks down by `pitch`, turned left by `yaw`; x_cam horizontal.
    np.testing.assert_allclose(rot @ [0, 0, -1], [-math.sin(yaw) * math.cos(pitch),
                                                 -math.sin(pitch),
                                                 -math.cos(yaw) * math.cos(pitch)], atol=1e-12)
    np.testing.assert_allclose(rot @ [1, 0, 0], [math.cos(yaw), 0, -math.sin(yaw)], atol=1e-12)
    rot = S.Camera(1.5, 0.2, -0.3, 0.05).rotation
    np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-12)
    assert np.isclose(np.linalg.det(rot), 1.0)


def test_horizontal_flip_is_negated_x(samples: list[dict]) -> None:
    """The mirrored scene (world x -> -x) renders the flipped targets with normal x negated."""
    for rec in samples[:4]:
        sc = rec["scene"]
        cam = sc.camera
        mirrored = S.Scene(
            S.Camera(cam.height, cam.pitch, -cam.yaw, -cam.roll),
            tuple(dataclasses.replace(o, x=-o.x, angle=-o.angle) if isinstance(o, S.Box)
                  else dataclasses.replace(o, x=-o.x) for o in sc.objects),
            sc.wall_distance, sc.floor_extent)
        a = S.render_scene(np.random.default_rng(0), scene=sc, holes=False)
        b = S.render_scene(np.random.default_rng(0), scene=mirrored, holes=False)
        same = a["semantic"] == b["semantic"][:, ::-1]
        assert same.mean() > 0.998
        np.testing.assert_allclose(b["depth"][:, ::-1][same], a["depth"][same], atol=2e-3)
        flipped = b["normal"][:, ::-1] * np.array([-1.0, 1.0, 1.0], np.float32)
        np.testing.assert_allclose(flipped[same], a["normal"][same], atol=1e-5)


# --------------------------------------------------------------------------- #
# Geometry from the definitions.
# --------------------------------------------------------------------------- #

def test_record_format_and_validity(samples: list[dict]) -> None:
    for rec in samples:
        assert rec["image"].shape == (H, W, 3) and rec["image"].dtype == np.uint8
        assert rec["semantic"].shape == (H, W) and rec["semantic"].dtype == np.int32
        assert rec["depth"].shape == (H, W, 1) and rec["depth"].dtype == np.float32
        assert rec["normal"].shape == (H, W, 3) and rec["normal"].dtype == np.float32
        sem, inst, hole = rec["semantic"], rec["instance"], rec["hole"]
        depth, normal = rec["depth"][..., 0], rec["normal"]
        assert sem.min() >= -1 and sem.max() < S.NUM_CLASSES
        np.testing.assert_array_equal(sem == -1, inst == -1)
        labels = np.array([S.FLOOR, S.WALL] + [o.label for o in rec["scene"].objects])
        np.testing.assert_array_equal(sem[inst >= 0], labels[inst[inst >= 0]])
        valid = (sem >= 0) & ~hole
        assert not (hole & (sem < 0)).any()
        np.testing.assert_array_equal(depth > 0, valid)
        norms = np.linalg.norm(normal, axis=-1)
        np.testing.assert_allclose(norms[valid], 1.0, atol=1e-5)
        assert (normal[~valid] == 0).all() and (depth[~valid] == 0).all()
        # Depth is on the documented grid; NYU-like range.
        np.testing.assert_allclose(depth / S.DEPTH_STEP, np.round(depth / S.DEPTH_STEP),
                                   atol=1e-3)
        assert depth[valid].min() > 1.0 and depth.max() < 16.0


def test_points_lie_on_their_surfaces_with_their_normals(samples: list[dict]) -> None:
    tol = 2e-3  # depth is stored in ~1 mm steps
    counts = dict.fromkeys(S.CLASS_NAMES, 0)
    for rec in samples:
        sc = rec["scene"]
        rot = sc.camera.rotation
        p = _world_points(rec, sc)
        n = rec["normal"] @ rot.T  # back to world coordinates
        valid = rec["depth"][..., 0] > 0
        for idx in np.unique(rec["instance"][valid]):
            m = valid & (rec["instance"] == idx)
            pk, nk = p[m], n[m]
            counts[S.CLASS_NAMES[rec["semantic"][m][0]]] += len(pk)
            if idx == 0:  # floor
                np.testing.assert_allclose(pk[:, 1], 0.0, atol=tol)
                assert (pk[:, 2] >= -sc.floor_extent - tol).all()
                np.testing.assert_allclose(nk, np.broadcast_to([0, 1, 0], nk.shape), atol=1e-6)
                continue
            if idx == 1:  # wall
                np.testing.assert_allclose(pk[:, 2], -sc.wall_distance, atol=tol)
                np.testing.assert_allclose(nk, np.broadcast_to([0, 0, 1], nk.shape), atol=1e-6)
                continue
            obj = sc.objects[idx - 2]
            if isinstance(obj, S.Sphere):
                c = np.array([obj.x, obj.radius, obj.z])
                np.testing.assert_allclose(np.linalg.norm(pk - c, axis=1), obj.radius, atol=tol)
                np.testing.assert_allclose(nk, (pk - c) / obj.radius, atol=tol / obj.radius)
            elif isinstance(obj, S.Box):
                rb = _rot("y", obj.angle)
                local, n_local = (pk - [obj.x, obj.half[1], obj.z]) @ rb, nk @ rb
                axis = np.abs(n_local).argmax(1)
                rows = np.arange(len(pk))
                # Axis-aligned in the box frame, on the face it names, inside the others.
                np.testing.assert_allclose(np.abs(n_local[rows, axis]), 1.0, atol=1e-6)
                face = np.sign(n_local[rows, axis]) * np.asarray(obj.half)[axis]
                np.testing.assert_allclose(local[rows, axis], face, atol=tol)
                assert (np.abs(local) <= np.asarray(obj.half) + tol).all()
            else:
                radial = np.hypot(pk[:, 0] - obj.x, pk[:, 2] - obj.z)
                cap = np.abs(nk[:, 1]) > 0.5
                # Caps: vertical normal, on the top (or bottom) disc.
                np.testing.assert_allclose(np.abs(nk[cap, 1]), 1.0, atol=1e-6)
                cap_y = np.where(nk[cap, 1] > 0, obj.height, 0.0)
                np.testing.assert_allclose(pk[cap, 1], cap_y, atol=tol)
                assert (radial[cap] <= obj.radius + tol).all()
                # Side: horizontal radial normal, on the mantle, between the caps.
                side = ~cap
                np.testing.assert_allclose(radial[side], obj.radius, atol=tol)
                expected = np.stack([(pk[side, 0] - obj.x) / obj.radius,
                                     np.zeros(side.sum()),
                                     (pk[side, 2] - obj.z) / obj.radius], 1)
                np.testing.assert_allclose(nk[side], expected, atol=tol / obj.radius)
                assert (pk[side, 1] >= -tol).all() and (pk[side, 1] <= obj.height + tol).all()
    assert all(c > 100 for c in counts.values()), counts


def test_nearest_hit_matches_ray_marching() -> None:
    """Labels and depths agree with an independent ray-marching reference (low res)."""
    h, w, step = 16, 24, 0.004
    scenes = [_one_sphere_before_box()] + [S.sample_scene(np.random.default_rng(7 + k))
                                            for k in range(3)]
    for sc in scenes:
        rec = S.render_scene(np.random.default_rng(0), h, w, scene=sc, holes=False,
                             return_scene=True)
        ref_inst, ref_depth = _march(sc, h, w, step)
        agree = ref_inst == rec["instance"]
        assert agree.mean() >= 0.98, (agree.mean(), sc)
        got = rec["depth"][..., 0][agree & (ref_inst >= 0)]
        ref = ref_depth[agree & (ref_inst >= 0)]
        # The march overshoots by at most one step (in depth units).
        assert np.all(got <= ref + 2e-3) and np.all(got >= ref - step - 2e-3)


def test_occlusion_sphere_in_front_of_box() -> None:
    sc = _one_sphere_before_box()
    rec = S.render_scene(np.random.default_rng(1), scene=sc, holes=False,
                         return_scene=True)
    rays = _pixel_rays(H, W).reshape(-1, 3) @ sc.camera.rotation.T
    o = sc.camera.origin
    # Analytic sphere hits (quadratic) and, by marching, which rays cross the box at all.
    sph = sc.objects[0]
    oc = o - [sph.x, sph.radius, sph.z]
    a, b, c = (rays ** 2).sum(1), rays @ oc, oc @ oc - sph.radius ** 2
    disc = b * b - a * c
    t_sphere = np.where(disc >= 0, (-b - np.sqrt(np.maximum(disc, 0))) / a, np.inf)
    only_box = S.Scene(sc.camera, sc.objects[1:], None, 0.0)  # no floor, no wall
    box_inst, box_depth = _march(only_box, H, W, step=0.01)
    crosses_box = (box_inst == 2).reshape(-1)  # surfaces: floor, wall, the box
    both = np.isfinite(t_sphere) & crosses_box
    assert both.sum() > 50  # the sphere really hides part of the box
    inst = rec["instance"].reshape(-1)
    assert (inst[both] == 2).all()  # the nearer sphere wins
    assert (box_depth.reshape(-1)[both] > t_sphere[both]).all()
    np.testing.assert_allclose(rec["depth"].reshape(-1)[both], t_sphere[both], atol=1e-3)
    # The box is still visible where the sphere is not in the way.
    assert ((inst == 3) & crosses_box & ~np.isfinite(t_sphere)).sum() > 50
    assert (rec["semantic"].reshape(-1)[inst == 3] == S.BOX).all()


# --------------------------------------------------------------------------- #
# Dataset.
# --------------------------------------------------------------------------- #

def _read(data_dir: str, split: str) -> dict[str, np.ndarray]:
    src = S.data_source(split, data_dir, config="tiny")
    items = src.__getitems__(list(range(len(src))))
    return {k: np.stack([it[k] for it in items]) for k in items[0]}


@pytest.fixture(scope="module")
def built_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    data_dir = str(tmp_path_factory.mktemp("ur_scenes_a"))
    S.prepare(data_dir, config="tiny")
    return data_dir


def test_dataset_records(built_dir: str) -> None:
    for split in S.SPLITS:
        data = _read(built_dir, split)
        n = S.SPLIT_SIZES["tiny"][split]
        assert data["image"].shape == (n, H, W, 3) and data["image"].dtype == np.uint8
        assert data["semantic"].shape == (n, H, W) and data["semantic"].dtype == np.int32
        assert data["depth"].shape == (n, H, W, 1) and data["depth"].dtype == np.float32
        assert data["normal"].shape == (n, H, W, 3) and data["normal"].dtype == np.float32
        for i in (0, n - 1):  # stored example i is render_example(split, i)
            ref = S.render_example(split, i)
            for key in ref:
                np.testing.assert_array_equal(data[key][i], ref[key])
    data = _read(built_dir, "train")
    sem, depth, normal = data["semantic"], data["depth"][..., 0], data["normal"]
    assert set(np.unique(sem)) == {-1, *range(S.NUM_CLASSES)}  # every class and sky
    valid_depth = depth > 0
    np.testing.assert_array_equal(valid_depth, np.abs(normal).sum(-1) > 0)
    assert not (valid_depth & (sem < 0)).any()  # sky: depth and normal 0
    holes = ~valid_depth & (sem >= 0)
    assert 0 < holes.mean() < 0.03  # sensor holes: labelled, no depth
    np.testing.assert_allclose(np.linalg.norm(normal[valid_depth], axis=-1), 1.0, atol=1e-5)


def test_builds_are_deterministic(built_dir: str, tmp_path: Path) -> None:
    other = tmp_path / "b"
    S.prepare(other, config="tiny")
    files = sorted(Path(built_dir).rglob("*.array_record*"))
    assert len(files) == 2
    for f in files:
        assert f.read_bytes() == (other / f.relative_to(built_dir)).read_bytes()
    # Another process with another hash seed renders the same bytes.
    code = ("import hashlib; from ur_jax.suites.dense import scenes as S; h = hashlib.sha256(); "
            "[h.update(r[k].tobytes()) for i in (0, 5) for s in S.SPLITS "
            "for r in [S.render_example(s, i)] for k in sorted(r)]; print(h.hexdigest())")
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True).stdout.strip()
    h = hashlib.sha256()
    for i in (0, 5):
        for s in S.SPLITS:
            r = S.render_example(s, i)
            for k in sorted(r):
                h.update(r[k].tobytes())
    assert out == h.hexdigest()


def test_configs_and_errors() -> None:
    assert S.TASKS == ("semantic", "depth", "normal")
    assert S.SPLIT_SIZES["default"] == {"train": 1200, "test": 300}
    assert len(S.CLASS_NAMES) == S.NUM_CLASSES >= 4
    assert S.IMAGE_SHAPE[0] % 32 == 0 and S.IMAGE_SHAPE[1] % 32 == 0
    with pytest.raises(ValueError, match="split"):
        S.data_source("validation", "/nonexistent")
    with pytest.raises(ValueError, match="config"):
        S.prepare("/nonexistent", config="huge")
    with pytest.raises(ValueError, match="height"):
        S.render_scene(np.random.default_rng(0), height=0)
    with pytest.raises(ValueError, match="index"):
        S.render_example("train", -1)
    bad = S.Scene(S.Camera(1.5, 0.2), ("sphere",), None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Sphere, Box or Cylinder"):
        S.render_scene(np.random.default_rng(0), scene=bad)
