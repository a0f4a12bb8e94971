"""Fake MTAN trees for tests and smoke runs, in exactly the on-disk format of MTAN's
preprocessed NYU-v2 and Cityscapes (read by :mod:`ur_jax.suites.dense.mtan`)."""

from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["write_fake_mtan"]

# Cityscapes' 19 training classes grouped into its 7 categories (flat, construction,
# object, nature, sky, human, vehicle), as label_7 relates to label_19.
_CITY19_TO_7 = np.array([0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 4, 5, 5, 6, 6, 6, 6, 6, 6])


def write_fake_mtan(root: str | os.PathLike, dataset: str, num_train: int, num_test: int,
                    shape: tuple[int, int] = (16, 24), seed: int = 0,
                    dtype: Any = np.float64) -> Path:
    """Writes a fake MTAN tree in exactly the on-disk format of the real download.

    Scenes are blocky class maps (4x4-pixel cells) with a fixed colour, depth and normal
    per class plus noise, so that a model can learn something in smoke runs. Every file
    contains invalid markers: label -1, zero depth and (NYU-v2) all-zero normals, both at
    fixed pixels and at ~5% random pixels. Images are multiples of 1/255 in [0, 1] like
    MTAN's. For Cityscapes both ``label_7`` and ``label_19`` are written (``label_7`` is the
    category of ``label_19``); depth is inverse depth in (0, 0.5].

    Args:
      root: folder to create (``root/train/...``, ``root/val/...``); existing files with
        the same names are overwritten.
      dataset: ``'nyuv2'`` or ``'cityscapes'`` (``'cityscapes7'`` / ``'cityscapes19'``
        are accepted and write the same tree).
      num_train, num_test: examples in ``train/`` and ``val/`` (``num_test`` may be 0 only
        for error tests: the builders need both).
      shape: (H, W).
      seed: fixes every array.
      dtype: array dtype on disk; MTAN's NYU-v2 images are float64 (values printed with
        float64 precision in lorenmt/mtan issue #50), and float64 is assumed for the
        other arrays too (MTAN's loader casts all of them with ``.float()``).

    Returns:
      ``Path(root)``.
    """
    if dataset not in ("nyuv2", "cityscapes", "cityscapes7", "cityscapes19"):
        raise ValueError(f"write_fake_mtan: unknown dataset {dataset!r}; expected 'nyuv2' or "
                         "'cityscapes'.")
    h, w = (int(v) for v in shape)
    if h < 2 or w < 2 or num_train < 0 or num_test < 0:
        raise ValueError(f"write_fake_mtan: need H, W >= 2 and non-negative counts; found "
                         f"shape {shape}, num_train {num_train}, num_test {num_test}.")
    fam = "nyuv2" if dataset == "nyuv2" else "cityscapes"
    root_path = Path(root)
    table = np.random.default_rng(zlib.crc32(fam.encode()))  # fixed per family
    n_cls = 13 if fam == "nyuv2" else 19
    palette = table.uniform(0.1, 0.9, (n_cls, 3))
    base_depth = (table.uniform(1.0, 8.0, n_cls) if fam == "nyuv2"
                  else table.uniform(0.02, 0.4, n_cls))
    normals = table.normal(size=(n_cls, 3))
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    rng = np.random.default_rng([int(seed), zlib.crc32(fam.encode())])
    folders = (["image", "label", "depth", "normal"] if fam == "nyuv2"
               else ["image", "label_7", "label_19", "depth"])
    for split_dir, n in (("train", num_train), ("val", num_test)):
        for f in folders:
            (root_path / split_dir / f).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            cells = rng.integers(0, n_cls, (-(-h // 4), -(-w // 4)))
            cls = np.repeat(np.repeat(cells, 4, 0), 4, 1)[:h, :w]
            img = palette[cls] + rng.normal(0.0, 0.05, (h, w, 3))
            img = np.round(np.clip(img, 0.0, 1.0) * 255.0) / 255.0
            ramp = np.linspace(0.8, 1.2, h)[:, None]
            depth = (base_depth[cls] * ramp)[..., None]
            normal = normals[cls] + rng.normal(0.0, 0.05, (h, w, 3))
            normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
            label = cls.astype(np.float64)
            label[rng.random((h, w)) < 0.05] = -1
            label[0, 0] = -1
            depth[rng.random((h, w)) < (0.05 if fam == "nyuv2" else 0.2)] = 0.0
            depth[h - 1, w - 1] = 0.0
            normal[rng.random((h, w)) < 0.05] = 0.0
            normal[0, w - 1] = 0.0
            arrays = {"image": img, "depth": depth}
            if fam == "nyuv2":
                arrays.update(label=label, normal=normal)
            else:
                label7 = np.where(label < 0, -1, _CITY19_TO_7[np.maximum(label, 0).astype(int)])
                arrays.update(label_19=label, label_7=label7)
            for f in folders:
                np.save(root_path / split_dir / f / f"{i}.npy", arrays[f].astype(dtype))
    return root_path
