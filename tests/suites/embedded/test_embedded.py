"""Tests for the embedded default dataset (ur_jax.suites.embedded).

All six configs are built once per module (a few seconds); a second build runs in
a subprocess with a different ``PYTHONHASHSEED`` to check determinism.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ur_jax.suites import embedded as E
from ur_jax.suites.embedded import domains as E_domains

Arrays = dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]
_LUMA = np.array([0.299, 0.587, 0.114])


def _read(data_dir: str) -> Arrays:
    """Every (domain, split) of a built directory as (images, labels) arrays."""
    out = {}
    for d in E.ALL_DOMAINS:
        for s in E.SPLITS:
            src = E.data_source(d, s, data_dir)
            items = src.__getitems__(list(range(len(src))))
            out[d, s] = (np.stack([it["image"] for it in items]),
                         np.array([it["label"] for it in items], dtype=np.int64))
    return out


@pytest.fixture(scope="module")
def built_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    data_dir = str(tmp_path_factory.mktemp("ur_embedded_a"))
    E.prepare(data_dir)
    return data_dir


@pytest.fixture(scope="module")
def arrays(built_dir: str) -> Arrays:
    return _read(built_dir)


def _nearest_centroid_acc(ftr: np.ndarray, ytr: np.ndarray, fte: np.ndarray,
                          yte: np.ndarray, num_classes: int) -> float:
    cent = np.stack([ftr[ytr == c].mean(0) for c in range(num_classes)])
    d2 = (fte ** 2).sum(1)[:, None] - 2 * fte @ cent.T + (cent ** 2).sum(1)[None]
    return float((d2.argmin(1) == yte).mean())


def _grey(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float64) @ _LUMA


def _unit(f: np.ndarray) -> np.ndarray:
    f = f.reshape(len(f), -1)
    return f / (np.linalg.norm(f, axis=1, keepdims=True) + 1e-8)


def _fft_features(x: np.ndarray) -> np.ndarray:
    """Colour- and translation-invariant: |FFT| of the mean-free grey image."""
    g = _grey(x)
    return _unit(np.abs(np.fft.fft2(g - g.mean((1, 2), keepdims=True))))


def _foreground_features(x: np.ndarray) -> np.ndarray:
    """Polarity-free foreground: |grey - median grey| (the background is the mode)."""
    g = _grey(x)
    return _unit(np.abs(g - np.median(g.reshape(len(g), -1), 1)[:, None, None]))


def _radial_spectrum(x: np.ndarray) -> np.ndarray:
    """Log share of grey-level power in 9 radial frequency bands."""
    g = _grey(x)
    power = np.abs(np.fft.fft2(g - g.mean((1, 2), keepdims=True))) ** 2
    f = np.fft.fftfreq(32)
    band = np.minimum((np.hypot(f[:, None], f[None]) / 0.5 * 8).astype(int), 8)
    spec = np.stack([power[:, band == b].sum(1) for b in range(9)], 1)
    return np.log(spec / spec.sum(1, keepdims=True) + 1e-6)


# --------------------------------------------------------------------------- #


def test_constants() -> None:
    assert E.TRAIN_DOMAINS == ("digits", "shapes", "textures", "glyphs")
    assert E.FEWSHOT_DOMAINS == ("glyphs_novel", "symbols")
    assert E.ALL_DOMAINS == E.TRAIN_DOMAINS + E.FEWSHOT_DOMAINS
    assert E.IMAGE_SHAPE == (32, 32, 3)
    assert all(E.NUM_CLASSES[d] == 10 for d in E.TRAIN_DOMAINS)
    assert E.NUM_CLASSES["glyphs_novel"] == 16 and E.NUM_CLASSES["symbols"] >= 12
    assert E.CLASS_NAMES["glyphs"] == tuple("ABCDEFGHIJ")
    assert E.CLASS_NAMES["glyphs_novel"] == tuple("KLMNOPQRSTUVWXYZ")
    for d in E.TRAIN_DOMAINS:
        assert E.SPLIT_SIZES[d] == {"train": 2000, "test": 500}


@pytest.mark.parametrize("domain", E.ALL_DOMAINS)
def test_sizes_shapes_balance(domain: str, built_dir: str, arrays: Arrays) -> None:
    builder = E.tfds_builder(domain, built_dir)
    label = builder.info.features["label"]
    assert label.num_classes == E.NUM_CLASSES[domain]
    assert tuple(label.names) == E.CLASS_NAMES[domain]
    assert builder.info.supervised_keys == ("image", "label")
    for split in E.SPLITS:
        n = E.SPLIT_SIZES[domain][split]
        assert builder.info.splits[split].num_examples == n
        images, labels = arrays[domain, split]
        assert images.shape == (n, 32, 32, 3) and images.dtype == np.uint8
        assert labels.min() >= 0 and labels.max() < E.NUM_CLASSES[domain]
        counts = np.bincount(labels, minlength=E.NUM_CLASSES[domain])
        np.testing.assert_array_equal(counts, n // E.NUM_CLASSES[domain])
        assert images.std() > 20, "images look blank"


def test_source_order_matches_render(arrays: Arrays) -> None:
    images, labels = E.render("glyphs_novel", "test")
    np.testing.assert_array_equal(images, arrays["glyphs_novel", "test"][0])
    np.testing.assert_array_equal(labels, arrays["glyphs_novel", "test"][1])


def test_second_build_is_identical(arrays: Arrays, tmp_path: Path) -> None:
    # Another directory, another process, another string-hash salt.
    other = tmp_path / "ur_embedded_b"
    env = dict(os.environ, PYTHONHASHSEED="12345")
    subprocess.run([sys.executable, "-c",
                    f"from ur_jax.suites import embedded; embedded.prepare({str(other)!r})"],
                   check=True, env=env, cwd=Path(__file__).resolve().parents[3])
    again = _read(str(other))
    for key, (images, labels) in arrays.items():
        np.testing.assert_array_equal(again[key][1], labels, err_msg=str(key))
        np.testing.assert_array_equal(again[key][0], images, err_msg=str(key))


@pytest.mark.parametrize("domain", E.ALL_DOMAINS)
def test_train_and_test_share_no_image(domain: str, arrays: Arrays) -> None:
    def hashes(x: np.ndarray) -> set[str]:
        return {hashlib.sha1(im.tobytes()).hexdigest() for im in x}

    train, test = hashes(arrays[domain, "train"][0]), hashes(arrays[domain, "test"][0])
    assert len(test) == E.SPLIT_SIZES[domain]["test"], "duplicate images inside test"
    assert not train & test


def test_digit_sources_are_disjoint() -> None:
    _, targets = E_domains._load_digits()
    train, test = E_domains._digit_sources("train"), E_domains._digit_sources("test")
    for c in range(10):
        assert not set(train[c]) & set(test[c])
        assert len(train[c]) + len(test[c]) == int((targets == c).sum())
        assert (targets[train[c]] == c).all() and (targets[test[c]] == c).all()


def test_digits_are_real(arrays: Arrays) -> None:
    # Centroids from the vendored 8x8 CSV alone (no fitting on rendered images)
    # classify the rendered test digits, pooled back to 8x8, far above chance.
    pixels, targets = E_domains._load_digits()
    assert pixels.shape == (1797, 8, 8) and np.bincount(targets).min() >= 170
    cent = np.stack([pixels[targets == c].mean(0) for c in range(10)]).reshape(10, -1)
    images, labels = arrays["digits", "test"]
    g = _grey(images)
    fg = np.abs(g - np.median(g.reshape(len(g), -1), 1)[:, None, None])
    pooled = fg.reshape(-1, 8, 4, 8, 4).mean((2, 4)).reshape(len(fg), -1)

    def centred(a: np.ndarray) -> np.ndarray:
        return _unit(a - a.mean(1, keepdims=True))

    acc = float(((centred(pooled) @ centred(cent).T).argmax(1) == labels).mean())
    assert acc > 0.25, f"rendered digits do not match the vendored ones (acc {acc:.3f})"


def test_domains_are_visually_distinct(arrays: Arrays) -> None:
    # A nearest-centroid domain classifier on 9 numbers per image (the radial
    # power spectrum) tells the domains apart; glyphs and glyphs_novel are one
    # style on purpose, so they count as one domain.
    groups = {"digits": 0, "shapes": 1, "textures": 2, "glyphs": 3, "glyphs_novel": 3,
              "symbols": 4}
    ftr = np.concatenate([_radial_spectrum(arrays[d, "train"][0]) for d in groups])
    ytr = np.concatenate([np.full(E.SPLIT_SIZES[d]["train"], g) for d, g in groups.items()])
    scale = ftr.std(0)
    for d, g in groups.items():
        fte = _radial_spectrum(arrays[d, "test"][0])
        acc = _nearest_centroid_acc(ftr / scale, ytr, fte / scale,
                                    np.full(len(fte), g), 5)
        assert acc > 0.7, f"domain {d!r} is hard to tell from the others ({acc:.3f})"


@pytest.mark.parametrize("domain", E.ALL_DOMAINS)
def test_classes_are_learnable(domain: str, arrays: Arrays) -> None:
    (xtr, ytr), (xte, yte) = arrays[domain, "train"], arrays[domain, "test"]
    k = E.NUM_CLASSES[domain]
    chance = 1.0 / k
    ftr, fte = _fft_features(xtr), _fft_features(xte)
    acc = _nearest_centroid_acc(ftr, ytr, fte, yte, k)
    assert acc > 3 * chance, f"{domain}: nearest centroid on |FFT| {acc:.3f}"
    if domain != "textures":  # random phase: pixels carry no class mean there
        acc_fg = _nearest_centroid_acc(_foreground_features(xtr), ytr,
                                       _foreground_features(xte), yte, k)
        assert acc_fg > 2 * chance, f"{domain}: nearest centroid on pixels {acc_fg:.3f}"
    # The same classifier with shuffled training labels is at chance level.
    shuffled = np.random.default_rng(0).permutation(ytr)
    acc_shuffled = _nearest_centroid_acc(ftr, shuffled, fte, yte, k)
    assert acc_shuffled < 2 * chance


@pytest.mark.parametrize("chars", [
    [ch for _, ch in E_domains._SYMBOLS], list(E_domains._GLYPHS + E_domains._GLYPHS_NOVEL)])
def test_font_has_every_character(chars: list[str]) -> None:
    # A character missing from the font renders as the same '.notdef' box.
    masks = [np.asarray(E_domains._char_mask(ch), dtype=np.float64) / 255 for ch in chars]
    for i in range(len(chars)):
        assert masks[i].sum() > 20, f"{chars[i]!r} renders empty"
        for j in range(i):
            assert (np.abs(masks[i] - masks[j]) > 0.5).sum() > 10, (chars[i], chars[j])


def test_unknown_domain_or_split(built_dir: str) -> None:
    with pytest.raises(ValueError, match=r"Unknown embedded domain 'mnist'.*'digits'"):
        E.data_source("mnist", "train", built_dir)
    with pytest.raises(ValueError, match=r"Unknown split 'validation'.*'train', 'test'"):
        E.data_source("digits", "validation", built_dir)
    with pytest.raises(ValueError, match="Unknown embedded domain"):
        E.render("glyph", "train")
    with pytest.raises(ValueError, match="Unknown embedded domain 'nope'"):
        E.prepare(built_dir, ["digits", "nope"])
    with pytest.raises(TypeError, match=r"pass \['digits'\]"):
        E.prepare(built_dir, "digits")


def test_prepare_is_idempotent(built_dir: str) -> None:
    def snapshot() -> dict[str, int]:
        return {str(p): p.stat().st_mtime_ns for p in Path(built_dir).rglob("*")}

    before = snapshot()
    assert any(p.endswith(".array_record-00000-of-00001") for p in before)
    E.prepare(built_dir)
    E.prepare(built_dir, ["symbols"])
    E.data_source("digits", "test", built_dir)
    assert snapshot() == before
