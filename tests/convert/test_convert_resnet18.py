"""URL's Meta-Dataset ResNet-18 checkpoints -> ur_jax (ur_jax.convert.resnet18).

The PyTorch twin of the released network (:class:`ur_jax.convert.twins.ResNet18MetaDataset`:
URL's models/resnet18.py and resnet18_mdl.py, with the released parameter names and TSA's
residual adapters on the blocks' 3x3 convs), filled with random weights and BatchNorm
statistics, is saved in the layout of URL's CheckPointer, converted and compared with the
ur_jax model on the same inputs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ur_jax import adapters as adapters_lib
from ur_jax import checkpointing
from ur_jax import convert as convert_lib
from ur_jax.convert import resnet18 as conv18
from ur_jax.convert.common import ConversionError
from ur_jax.convert.twins import ResNet18MetaDataset, numpy_state, resnet18_metadataset
from ur_jax.data.episodes import Episode
from ur_jax.suites.metadataset.common import CLASS_SPLITS, TRAIN_SOURCES
from ur_jax.evaluation import metadataset as md_eval

ARCH = "resnet18_metadataset"
WIDTH = 0.25
SIZE = 84
#: URL's heads: the official training classes of the eight sources, in --data.train order.
URL_CLASSES = [CLASS_SPLITS[d][0] for d in TRAIN_SOURCES]


def _save_released(net, path, numpy_scalars=False):
    """URL's CheckPointer layout: {'epoch', 'args', 'state_dict', 'best_val_acc', ...}.
    The released files hold NumPy float64 accuracies (``np.mean(...) * 100``)."""
    acc = np.float64(71.25) if numpy_scalars else 71.25
    optimizer = torch.optim.SGD(net.parameters(), lr=0.03, momentum=0.9)
    torch.save({"epoch": 3, "args": {"model.name": "url", "data.train": list(TRAIN_SOURCES)},
                "state_dict": net.state_dict(), "best_val_acc": acc, "best_val_loss": 1.5,
                "optimizer": optimizer.state_dict(), "epoch_loss": {"omniglot": [0.5]}}, path)
    return path


def _images(n, seed, size=SIZE):
    return np.random.default_rng(seed).uniform(-1, 1, (n, size, size, 3)).astype(np.float32)


def _torch_forward(net, x, alphas=None):
    with torch.no_grad():
        feats = net.embed(torch.from_numpy(x).permute(0, 3, 1, 2), alphas)
        return feats.numpy(), [h(feats).numpy() for h in net.heads]


def _apply(model, variables, images):
    """``({domain: pooled feature}, {domain: logits})`` of the ur_jax model (compiled)."""

    def fn(v, x):
        feats, logits = model.apply(v, x, train=False)
        return {d: f["pooled"] for d, f in feats.items()}, logits

    return jax.jit(fn)(variables, images)


def _backbone_variables(variables):
    return {"params": variables["params"]["backbone"],
            "batch_stats": variables["batch_stats"]["backbone"]}


@pytest.fixture(scope="module")
def url_twin():
    return resnet18_metadataset(WIDTH, URL_CLASSES, seed=1)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A converted single-domain teacher (one head, 71 classes: VGG Flower's)."""
    net = resnet18_metadataset(WIDTH, 71, seed=0)
    d = tmp_path_factory.mktemp("teacher")
    src = _save_released(net, d / "model_best.pth.tar")
    dst = convert_lib.convert_file(ARCH, src, d / "converted")
    model, variables = convert_lib.load(dst)
    return net, src, model, variables


# ----------------------------------------------------------------------------- parity


def test_teacher_features_and_logits_match_pytorch(teacher):
    net, _, model, variables = teacher
    assert model.domains == ("teacher",)
    assert model.backbone.width == WIDTH and model.backbone.stem == "metadataset"
    x = _images(3, seed=2)
    feats, logits = _apply(model, variables, {"teacher": jnp.asarray(x)})
    t_feats, t_logits = _torch_forward(net, x)
    assert np.abs(t_logits[0]).max() > 1.0  # non-trivial numbers
    np.testing.assert_allclose(np.asarray(feats["teacher"]), t_feats, rtol=0, atol=1e-4)
    np.testing.assert_allclose(np.asarray(logits["teacher"]), t_logits[0], rtol=0, atol=1e-4)


def test_url_heads_follow_the_training_sources(url_twin):
    """Eight heads in cls_fn order = URL's --data.train order; each domain's rows go through
    its own head; 'module.' prefixes (DataParallel) are stripped, num_batches_tracked
    ignored. (The file round trip is the teacher's test.)"""
    state = {f"module.{k}": v.numpy() for k, v in url_twin.state_dict().items()}
    spec, variables = convert_lib.convert(ARCH, state)
    model = checkpointing.model_from_spec(spec)
    assert model.domains == tuple(TRAIN_SOURCES)
    assert dict(model.num_classes) == dict(zip(TRAIN_SOURCES, URL_CLASSES))
    x = _images(2 * len(TRAIN_SOURCES), seed=3)
    images = {d: jnp.asarray(x[2 * i:2 * i + 2]) for i, d in enumerate(TRAIN_SOURCES)}
    feats, logits = _apply(model, variables, images)
    t_feats, t_logits = _torch_forward(url_twin, x)
    for i, d in enumerate(TRAIN_SOURCES):
        np.testing.assert_allclose(np.asarray(feats[d]), t_feats[2 * i:2 * i + 2],
                                   rtol=0, atol=1e-4)
        np.testing.assert_allclose(np.asarray(logits[d]), t_logits[i][2 * i:2 * i + 2],
                                   rtol=0, atol=1e-4)


def test_tsa_adapters_sit_where_urls_do(teacher):
    """The converted backbone is TSA-ready: its conv_adapter hook wraps the same 16 convs as
    URL's resnet_tsa (every 3x3 conv of the blocks), y = conv(x) + conv1x1_alpha(x) at the
    conv's stride; with random alphas both networks agree."""
    net, _, model, variables = teacher
    x = _images(2, seed=4, size=32)
    adapted = adapters_lib.attach(model.backbone, adapters_lib.tsa("residual", "matrix"))
    start = jax.eval_shape(lambda: adapted.init(jax.random.key(0), jnp.asarray(x[:1]),
                                                train=False))[adapters_lib.ADAPTER_COLLECTION]
    rng = np.random.default_rng(5)
    alphas = jax.tree.map(lambda a: rng.normal(0, 0.05, a.shape).astype(np.float32), start)
    assert sorted(alphas) == [f"layer{s}_{b}" for s in range(1, 5) for b in range(2)]
    torch_alphas = {(s, b): [torch.from_numpy(np.ascontiguousarray(
        alphas[f"layer{s}_{b}"][f"conv{i}_adapter"]["alpha"].transpose(3, 2, 0, 1)))
        for i in (1, 2)] for s in range(1, 5) for b in range(2)}
    ours = jax.jit(lambda v, x: adapted.apply(v, x, train=False))(
        {**_backbone_variables(variables), "adapters": alphas}, jnp.asarray(x))["pooled"]
    theirs, _ = _torch_forward(net, x, torch_alphas)
    plain, _ = _torch_forward(net, x)
    assert np.abs(theirs - plain).max() > 1e-2  # the adapters matter
    np.testing.assert_allclose(np.asarray(ours), theirs, rtol=0, atol=1e-4)


def test_episode_evaluator_runs_the_converted_backbone(teacher):
    """EpisodeEvaluator(model.backbone, backbone variables): NCC accuracies equal a NumPy NCC
    on the PyTorch twin's features of the same uint8 images (mapped to [-1, 1]). (TSA on
    this backbone: the adapter test above.)"""
    net, _, model, variables = teacher
    rng = np.random.default_rng(6)
    source = [{"image": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)} for _ in range(24)]
    labels = np.repeat(np.arange(4), 6)
    episodes = []
    for seed in range(3):
        perm = np.random.default_rng(seed).permutation(6)
        sup = np.concatenate([c * 6 + perm[:3] for c in range(4)])
        qry = np.concatenate([c * 6 + perm[3:] for c in range(4)])
        episodes.append(Episode(sup, labels[sup].astype(np.int32), qry,
                                labels[qry].astype(np.int32), np.arange(4)))
    evaluator = md_eval.EpisodeEvaluator(model.backbone, _backbone_variables(variables),
                                         batch_size=16, buckets=(16,), chunk=4)
    acc = evaluator.evaluate(source, episodes, method="ncc")
    images = np.stack([r["image"] for r in source]).astype(np.float32) / 127.5 - 1.0
    feats, _ = _torch_forward(net, images)
    expected = []
    for e in episodes:
        protos = np.stack([feats[e.support][e.support_labels == c].mean(0) for c in range(4)])
        protos /= np.linalg.norm(protos, axis=1, keepdims=True)
        q = feats[e.query] / np.linalg.norm(feats[e.query], axis=1, keepdims=True)
        expected.append(np.mean(np.argmax(q @ protos.T, 1) == e.query_labels))
    np.testing.assert_allclose(acc, expected, atol=1e-6)
    assert 0.0 < np.mean(acc) < 1.0  # random images: a real test of the features


# ----------------------------------------------------------------------------- full size


def test_full_size_checkpoint_shapes_and_parameter_count():
    """The full-width URL network (8 heads) converts to 11,171,904 backbone parameters
    (ResNet-18 with a 5x5 stem: torchvision's 11,176,512 - 7x7x3x64 + 5x5x3x64) plus
    513 per class, and 9,600 BatchNorm statistics, without running it."""
    net = ResNet18MetaDataset(1.0, URL_CLASSES)
    state = numpy_state(net)
    spec, variables = conv18.convert(state)
    assert spec["backbone"] == ARCH and spec["backbone_kwargs"] == {"width": 1.0}
    assert spec["num_classes"] == [[d, n] for d, n in zip(TRAIN_SOURCES, URL_CLASSES)]
    size = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))
    assert size(variables["params"]["backbone"]) == 11_171_904
    assert size(variables["params"]["heads"]) == 513 * sum(URL_CLASSES) == 1_612_872
    assert size(variables["batch_stats"]) == 9_600
    assert size(variables) == sum(v.size for k, v in state.items()
                                  if not k.endswith("num_batches_tracked"))
    assert variables["params"]["backbone"]["stem_conv"]["kernel"].shape == (5, 5, 3, 64)
    assert variables["params"]["backbone"]["layer4_0"]["downsample_conv"]["kernel"].shape == (
        1, 1, 256, 512)
    assert variables["params"]["heads"]["fungi"]["kernel"].shape == (512, 994)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(variables))
    # Values land transposed where they must: OIHW -> HWIO, (out, in) -> (in, out).
    np.testing.assert_array_equal(
        np.asarray(variables["params"]["backbone"]["layer2_0"]["conv1"]["kernel"]),
        state["layer2.0.conv1.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(np.asarray(variables["params"]["heads"]["dtd"]["kernel"]),
                                  state["cls_fn.4.weight"].T)
    stats = variables["batch_stats"]["backbone"]
    np.testing.assert_array_equal(np.asarray(stats["stem_bn"]["var"]), state["bn1.running_var"])


# ----------------------------------------------------------------------------- refusals


def test_mismatched_checkpoints_are_refused_with_names(url_twin):
    state = numpy_state(url_twin)
    wrong = dict(state)
    wrong["layer3.1.conv2.weight"] = wrong["layer3.1.conv2.weight"][:, :-1]
    with pytest.raises(ConversionError, match=r"layer3\.1\.conv2\.weight is \(64, 63, 3, 3\), "
                                              r"the architecture needs \(64, 64, 3, 3\)"):
        conv18.convert(wrong)
    missing = {k: v for k, v in state.items() if k != "layer2.0.downsample.1.running_var"}
    with pytest.raises(ConversionError, match=r"lacks: layer2\.0\.downsample\.1\.running_var"):
        conv18.convert(missing)
    extra = {**state, "layer5.0.conv1.weight": np.zeros((8, 8, 3, 3), np.float32)}
    with pytest.raises(ConversionError, match=r"no place in the architecture: "
                                              r"layer5\.0\.conv1\.weight \(8, 8, 3, 3\)"):
        conv18.convert(extra)
    flat = {**state, "layer1.0.conv1.weight": state["layer1.0.conv1.weight"][:, :, 0, 0]}
    with pytest.raises(ConversionError, match=r"layer1\.0\.conv1\.weight: A conv weight must "
                                              r"be 4-D"):
        conv18.convert(flat)
    # Every problem at once.
    all_three = {k: v for k, v in wrong.items() if k != "layer2.0.downsample.1.running_var"}
    all_three["layer5.0.conv1.weight"] = extra["layer5.0.conv1.weight"]
    with pytest.raises(ConversionError) as e:
        conv18.convert(all_three)
    for name in ("layer3.1.conv2.weight", "layer2.0.downsample.1.running_var",
                 "layer5.0.conv1.weight"):
        assert name in str(e.value)
    # A width that disagrees with the tensors.
    with pytest.raises(ConversionError, match=r"conv1\.weight is \(16, 3, 5, 5\).*width is "
                                              r"0\.25"):
        conv18.convert(state, width=0.5)
    # A stage narrower than the stem says (every tensor of it named, the list capped).
    narrow = {k: (v[: v.shape[0] // 2] if k.startswith("layer4.") and v.ndim else v)
              for k, v in state.items()}
    with pytest.raises(ConversionError, match=r"layer4\.0\.conv1\.weight is \(64, 64, 3, 3\), "
                                              r"the architecture needs \(128, 64, 3, 3\).*more"):
        conv18.convert(narrow)


def test_heads_and_domains(url_twin):
    state = numpy_state(url_twin)
    # Wrong order of names: the class counts give it away.
    swapped = tuple(reversed(TRAIN_SOURCES))
    with pytest.raises(ConversionError, match="ilsvrc_2012: 71 classes, official 712"):
        conv18.convert(state, domains=swapped)
    spec, _ = conv18.convert(state, domains=",".join(swapped), check_classes="false")
    assert [d for d, _ in spec["num_classes"]] == list(swapped)
    with pytest.raises(ConversionError, match="expected 8 distinct"):
        conv18.convert(state, domains=("a", "b"))
    seven = {k: v for k, v in state.items() if not k.startswith("cls_fn.7.")}
    with pytest.raises(ConversionError, match="7 heads"):
        conv18.convert(seven)
    gap = {k: v for k, v in state.items() if not k.startswith("cls_fn.3.")}
    with pytest.raises(ConversionError, match="without gaps"):
        conv18.convert(gap, domains=tuple("abcdefg"))
    cosine = {k: v for k, v in state.items() if not k.startswith("cls_fn")}
    cosine.update({"cls_fn.weight": np.zeros((128, 5), np.float32),
                   "cls_fn.scale": np.float32(10.0)})
    with pytest.raises(ConversionError, match="CosineClassifier"):
        conv18.convert(cosine)
    headless = {k: v for k, v in state.items() if not k.startswith("cls_fn")}
    with pytest.raises(ConversionError, match="no classifier"):
        conv18.convert(headless)
    assert conv18.head_modules(state) == [f"cls_fn.{i}" for i in range(8)]


def test_cli_converts_a_released_file(teacher, tmp_path, capsys):
    """python -m ur_jax.convert on a file with NumPy scalars beside the weights (as URL's are):
    read after a warning, the head named by --domains, the same variables as convert_file."""
    net, _, _, variables = teacher
    src = _save_released(net, tmp_path / "model_best.pth.tar", numpy_scalars=True)
    with pytest.warns(UserWarning, match="weights-only loading failed"):
        convert_lib.main(["--arch", ARCH, "--src", str(src), "--dst", str(tmp_path / "flower"),
                          "--domains", "vgg_flower"])
    assert "Converted" in capsys.readouterr().out
    loaded, loaded_vars = convert_lib.load(tmp_path / "flower", expected={
        "backbone": ARCH, "backbone_kwargs": {"width": WIDTH}, "num_classes": [["vgg_flower", 71]]})
    assert loaded.domains == ("vgg_flower",)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(loaded_vars["params"]["backbone"]),
                 jax.device_get(variables["params"]["backbone"]))
    with pytest.raises(SystemExit, match="official 883"), pytest.warns(UserWarning):
        convert_lib.main(["--arch", ARCH, "--src", str(src), "--dst", str(tmp_path / "x"),
                          "--domains", "omniglot"])
