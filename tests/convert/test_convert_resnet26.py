"""PyTorch Decathlon ResNet-26 -> ur_jax ``resnet26``: parity of features and logits.

The PyTorch twins (:mod:`ur_jax.convert.twins`: :class:`~ur_jax.convert.twins.URLResNet26`,
VICO-UoE/UniversalRepresentations ``VisualDecathlon/models.py`` and, after
``attach_ad.attach_ads``, per-domain BatchNorm and parallel adapters;
:class:`~ur_jax.convert.twins.RebuffiResNet26`, srebuffi/residual_adapters ``models.py``,
parallel and series adapters) carry the released parameter names. BatchNorm statistics are
set from a real forward pass, then perturbed (non-trivial, yet activations stay O(1)), and
the networks run in eval mode (:func:`~ur_jax.convert.twins.randomize_resnet26`).

The released UniversalRepresentations network has no ReLU after ``end_bn``; ur_jax's
ResNet26 has one (unless it gains an ``end_relu`` attribute). Until then the 'url' twins
compare against a converted model made with ``end_relu=True`` and the twin adds that ReLU
too (:data:`HAS_END_RELU`); the default conversion is refused (tested).
"""

from __future__ import annotations

import dataclasses
import json
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax
import jax.numpy as jnp

from ur_jax import checkpointing
from ur_jax.convert import ConversionError, convert, convert_file, load, main
from ur_jax.convert import resnet26 as convert_resnet26
from ur_jax.convert.twins import RebuffiResNet26, URLResNet26, numpy_state
from ur_jax.convert.twins import randomize_resnet26 as randomize
from ur_jax.suites.decathlon import NUM_CLASSES
from ur_jax.models import ResNet26

HAS_END_RELU = "end_relu" in {f.name for f in dataclasses.fields(ResNet26)}
#: Options a 'url' conversion needs with the current model, and whether the twin adds a ReLU.
URL_OPTS = {} if HAS_END_RELU else {"end_relu": True}
TWIN_END_RELU = not HAS_END_RELU
WIDTH = 0.25  # 8-16-32-64 channels


def save_url(net, path, **extra):
    """The release's layout: ``utils_pytorch.test`` / ``urltest`` with the legacy format."""
    torch.save({"net": net.state_dict(), "optimizer": {"state": {}, "param_groups": []},
                "acc": 251.5, "epoch": 3, **extra}, path, _use_new_zipfile_serialization=False)
    return str(path)


def save_rebuffi(net, path):
    """A Rebuffi network's ``state_dict`` (its .t7 files pickle the module itself)."""
    torch.save({"net": net.state_dict(), "acc": 80.6, "epoch": 3}, path)
    return str(path)


def assert_parity(net, converted, order, size=32):
    """Features and logits of the converted model (a directory, or ``(model, variables)``)
    == the twin's, for every domain (``order``: the twin's domain indices)."""
    model, variables = converted if isinstance(converted, tuple) else load(converted)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    xj = jnp.asarray(x.numpy().transpose(0, 2, 3, 1))
    apply = jax.jit(lambda v, images: model.apply(v, images, train=False))
    feats, logits = apply(variables, {d: xj for d in order})
    with torch.no_grad():
        for t, d in enumerate(order):
            ref = net(x, t)
            for name in ("stem", "layer1", "layer2", "layer3"):
                np.testing.assert_allclose(np.asarray(feats[d][name]),
                                           ref[name].numpy().transpose(0, 2, 3, 1),
                                           atol=1e-4, rtol=0, err_msg=f"{d} {name}")
            np.testing.assert_allclose(np.asarray(feats[d]["pooled"]), ref["pooled"].numpy(),
                                       atol=1e-4, rtol=0, err_msg=f"{d} pooled")
            np.testing.assert_allclose(np.asarray(logits[d]), ref["logits"].numpy(),
                                       atol=1e-4, rtol=0, err_msg=f"{d} logits")
            assert float(ref["pooled"].abs().max()) > 0.1  # not a trivial comparison
    return model, variables


def url_convert_file(src, dst, **options):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Converting with end_relu")
        return convert_file("resnet26", src, dst, **URL_OPTS, **options)


# ------------------------------------------------------------------------- tests


def test_url_teacher_parity(tmp_path):
    """An SDL teacher (plain ResNet-26, ``cls_fn``); its head named by its 47 classes."""
    net = randomize(URLResNet26([47], nblocks=(2, 1, 1), end_relu=TWIN_END_RELU))
    dst = url_convert_file(save_url(net, tmp_path / "ckptbndtd_best.pth"), tmp_path / "dtd")
    model, variables = assert_parity(net, dst, ["dtd"])
    kwargs = {"width": WIDTH, "stage_sizes": (2, 1, 1),
              **({"end_relu": False} if HAS_END_RELU else {})}
    assert checkpointing.load_model(dst, expected=checkpointing.model_spec(
        "resnet26", kwargs, {"dtd": 47}))
    assert model.backbone.domains == () and model.backbone.adapter == "none"
    n_torch = sum(v.size for v in numpy_state(net).values())
    assert sum(x.size for x in jax.tree.leaves(variables)) == n_torch


def test_url_parallel_adapter_student_parity(tmp_path):
    """``attach_ads``: per-domain BN + parallel adapters; 4 copies (the release makes one per
    all_tasks entry) but 3 heads: the untrained copy is ignored with a warning."""
    order = ("svhn", "aircraft", "dtd")  # the checkpoint's --dataset order
    net = randomize(URLResNet26([5, 7, 3], copies=4, adapters=True, nblocks=(1, 1, 1),
                                end_relu=TWIN_END_RELU), domains=3)
    src = save_url(net, tmp_path / "url_ad.pth",
                   adaptors={"conv0.weight": torch.zeros(64, 64, 1, 1)})
    with pytest.warns(UserWarning, match="never trained"):
        dst = url_convert_file(src, tmp_path / "student", domains=order)
    model, variables = assert_parity(net, dst, order)
    backbone = model.backbone
    assert backbone.adapter == "parallel"
    assert backbone.domains == ("aircraft", "dtd", "svhn")  # ur_jax's order
    assert model.num_classes == (("aircraft", 7), ("dtd", 3), ("svhn", 5))
    # the adapter of layer2_0's strided conv1: parallel_conv.<t> of that domain, HWIO
    alpha = variables["params"]["backbone"]["layer2_0"]["conv1_adapter"]["dtd"]["alpha"]
    w = net.layer2[0].conv1.parallel_conv[2].conv.weight.detach().numpy()
    np.testing.assert_array_equal(np.asarray(alpha), w.transpose(2, 3, 1, 0))


def test_url_shared_bn_student_as_per_domain(tmp_path):
    """URL without adapters (shared BN, ``cls_fn.<t>``): as it is, or with per-domain BN."""
    net = randomize(URLResNet26([4, 6], nblocks=(1, 1, 1), end_relu=TWIN_END_RELU))
    src = save_url(net, tmp_path / "url.pth")
    dst = url_convert_file(src, tmp_path / "shared", domains=("ucf101", "gtsrb"))
    model, _ = assert_parity(net, dst, ("ucf101", "gtsrb"))
    assert model.backbone.domains == () and model.backbone.stage_sizes == (1, 1, 1)
    assert model.domains == ("gtsrb", "ucf101")
    # per_domain=True: every domain's BatchNorm is a copy of the shared one (same outputs)
    sd = numpy_state(net)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Converting with end_relu")
        spec, variables = convert_resnet26.convert(sd, domains=("ucf101", "gtsrb"),
                                                   per_domain="true", **URL_OPTS)
    assert spec["backbone_kwargs"]["domains"] == ["gtsrb", "ucf101"]
    assert spec["backbone_kwargs"]["adapter"] == "none"
    for coll, torch_key, leaf in (("params", "weight", "scale"),
                                  ("batch_stats", "running_var", "var")):
        bn = variables[coll]["backbone"]["layer1_0"]["bn2"]
        for d in ("gtsrb", "ucf101"):
            np.testing.assert_array_equal(bn[d][leaf], sd[f"layer1.0.bn2.{torch_key}"])


def test_rebuffi_parallel_student_parity(tmp_path):
    """Rebuffi's layout (final BN + ReLU, as ur_jax): exact with the current model."""
    net = randomize(RebuffiResNet26([3, 5], mode="parallel", nblocks=(2, 1, 1)), domains=2)
    dst = convert_file("resnet26", save_rebuffi(net, tmp_path / "r.t7"), tmp_path / "out",
                       domains="cifar100,omniglot")
    assert_parity(net, dst, ("cifar100", "omniglot"))
    spec = checkpointing.model_spec(
        "resnet26", {"width": WIDTH, "stage_sizes": (2, 1, 1), "adapter": "parallel",
                     "domains": ("cifar100", "omniglot")}, {"cifar100": 3, "omniglot": 5})
    assert checkpointing.load_model(dst, expected=spec)


def test_rebuffi_series_single_task_parity():
    """Series adapters, their inner BatchNorm folded in; one task -> a single-domain model
    (head named by its class count)."""
    net = randomize(RebuffiResNet26([10], mode="series", nblocks=(1, 1, 1)))
    spec, variables = convert_resnet26.convert(numpy_state(net))
    assert spec["num_classes"] == [["svhn", 10]]  # the only Decathlon domain with 10 classes
    assert spec["backbone_kwargs"] == {"width": WIDTH, "stage_sizes": [1, 1, 1],
                                       "adapter": "series"}
    adapter = variables["params"]["backbone"]["stem"]["conv_adapter"]
    assert adapter["beta"].shape == (1, 1, 8, 8) and adapter["bias"].shape == (8,)
    assert_parity(net, (checkpointing.model_from_spec(spec), variables), ("svhn",))


def test_full_size_release_shapes_without_running(tmp_path):
    """The released URL model (shared BatchNorm, ``cls_fn.<t>`` for the 10 domains in the
    release's order), full size: names and class counts, every tensor used, the 3x3 convs'
    parameter count from the formula. (Converting the full-size 10-domain parallel-adapter
    model works the same way; it is left out here only because tracing ten per-domain
    backbones takes seconds.)"""
    counts = [NUM_CLASSES[d] for d in convert_resnet26.RELEASE_DOMAINS]
    net = URLResNet26(counts, width=1.0)
    sd = numpy_state(net)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Converting with end_relu")
        spec, variables = convert_resnet26.convert(sd, **URL_OPTS)
    from ur_jax.suites.decathlon import DOMAINS

    assert spec["backbone_kwargs"] == {"width": 1.0, **({"end_relu": False} if HAS_END_RELU
                                                        else {})}
    assert spec["num_classes"] == [[d, NUM_CLASSES[d]] for d in DOMAINS]
    leaves = jax.tree_util.tree_leaves_with_path(variables)
    assert sum(x.size for _, x in leaves) == sum(v.size for v in sd.values())
    # 3x3 convs: stem 3->32; per stage, conv1 of block 0 from the previous width, then 7 w->w.
    convs = [(3, 32)]
    for cin, w in ((32, 64), (64, 128), (128, 256)):
        convs += [(cin, w)] + [(w, w)] * 7
    kernels = sum(x.size for p, x in leaves if jax.tree_util.keystr(p).endswith("['kernel']")
                  and "heads" not in jax.tree_util.keystr(p))
    assert len(convs) == 25 and kernels == sum(9 * a * b for a, b in convs) == 5_806_944
    # The released URL student evaluates every 64 px crop at 72 x 72 (urltest, imagenet12
    # trained): the converted spec resizes all domains but imagenet12; 0 turns it off.
    assert spec["input_sizes"] == [[d, 72] for d in DOMAINS if d != "imagenet12"]
    # it loads: every domain of the one shared-BatchNorm pass is probed at 72 px (a 32 px
    # probe of imagenet12 beside the resized others could not be concatenated)
    checkpointing.save_model(tmp_path / "url", spec, variables)
    model, loaded = checkpointing.load_model(tmp_path / "url")
    assert dict(model.input_sizes) == {d: 72 for d in DOMAINS if d != "imagenet12"}
    np.testing.assert_array_equal(loaded["params"]["heads"]["vgg-flowers"]["kernel"],
                                  sd["cls_fn.6.weight"].T)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Converting with end_relu")
        native, _ = convert_resnet26.convert(sd, **URL_OPTS, student_input_size="0")
    assert "input_sizes" not in native
    with pytest.raises(ConversionError, match="student_input_size"):
        convert_resnet26.convert(sd, **URL_OPTS, student_input_size="big")
    heads = variables["params"]["heads"]
    assert sum(h["kernel"].size + h["bias"].size for h in heads.values()) == 257 * sum(counts)
    np.testing.assert_array_equal(heads["vgg-flowers"]["kernel"], sd["cls_fn.6.weight"].T)


@pytest.mark.filterwarnings("ignore:Converting with end_relu")
def test_final_relu_refused_and_options_checked():
    net = randomize(URLResNet26([2, 3], copies=2, adapters=True, nblocks=(1, 1, 1)), domains=2)
    sd = numpy_state(net)
    if not HAS_END_RELU:
        with pytest.raises(ConversionError, match="no ReLU after its final BatchNorm"):
            convert_resnet26.convert(sd, domains=("a", "b"))
    with pytest.raises(ConversionError, match="adapter 'parallel'"):
        convert_resnet26.convert(sd, domains=("a", "b"), adapter="series", **URL_OPTS)
    with pytest.raises(ConversionError, match="names 1 heads"):
        convert_resnet26.convert(sd, domains=("a",), **URL_OPTS)
    with pytest.raises(ConversionError, match="Cannot name"):
        convert_resnet26.convert(sd, **URL_OPTS)  # 2 and 3 classes: only daimlerpedcls fits
    with pytest.raises(ConversionError, match="width=0.5 gives channels 16"):
        convert_resnet26.convert(sd, domains=("a", "b"), width="0.5", **URL_OPTS)
    with pytest.raises(ConversionError, match="cannot be merged"):
        convert_resnet26.convert(sd, domains=("a", "b"), per_domain="false", **URL_OPTS)
    with pytest.raises(ConversionError, match="Not a Decathlon ResNet-26"):
        convert_resnet26.convert({"fc.weight": np.zeros((2, 2))})


def test_mismatched_checkpoints_are_refused_with_names():
    net = randomize(URLResNet26([47], nblocks=(2, 2, 2)))
    sd = numpy_state(net)
    sd["layer2.1.conv1.weight"] = np.zeros((16, 32, 3, 3), np.float32)  # (32, 32, 3, 3)
    del sd["layer1.0.bn2.running_var"]
    sd["layer4.0.conv1.weight"] = np.zeros((128, 64, 3, 3), np.float32)
    sd["fc.weight"] = np.zeros((10, 64), np.float32)
    with pytest.raises(ConversionError) as e, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Converting with end_relu")
        convert_resnet26.convert(sd, end_relu=True)
    msg = str(e.value)
    assert "lacks: layer1.0.bn2.running_var" in msg
    assert "layer4.0.conv1.weight (128, 64, 3, 3)" in msg and "fc.weight (10, 64)" in msg
    assert "layer2.1.conv1.weight (16, 32, 3, 3) -> params/backbone/layer2_1/conv1/kernel " \
           "expects (3, 3, 32, 32)" in msg
    sd = numpy_state(net)
    sd["cls_fn.weight"] = np.zeros((47, 65), np.float32)
    with pytest.raises(ConversionError, match=r"cls_fn.weight \(47, 65\)"), \
            warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Converting with end_relu")
        convert_resnet26.convert(sd, end_relu=True)


@pytest.mark.filterwarnings("ignore:Converting with end_relu")
def test_cli(tmp_path, capsys):
    net = randomize(URLResNet26([2, 3], copies=2, adapters=True, nblocks=(1, 1, 1),
                                end_relu=TWIN_END_RELU), domains=2)
    src = save_url(net, tmp_path / "ckpt.pth")
    options = [] if HAS_END_RELU else ["--option", "end_relu=true"]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Converting with end_relu")
        main(["--arch", "resnet26", "--src", src, "--dst", str(tmp_path / "out"),
              "--domains", "gtsrb,dtd", "--option", "adapter=parallel", *options])
    assert "Converted" in capsys.readouterr().out
    saved = json.loads((tmp_path / "out" / "model.json").read_text())
    assert saved["num_classes"] == [["dtd", 3], ["gtsrb", 2]]
    spec, _ = convert("resnet26", numpy_state(net), domains=("gtsrb", "dtd"),
                      **({} if HAS_END_RELU else {"end_relu": "yes"}))
    assert spec["backbone_kwargs"]["domains"] == ["dtd", "gtsrb"]
    with pytest.raises(SystemExit, match="adapter='series'"):
        main(["--arch", "resnet26", "--src", src, "--dst", str(tmp_path / "bad"),
              "--domains", "gtsrb,dtd", "--option", "adapter=series", *options])
