"""PyTorch SegNet (DensePred STL / URL, MTAN split) -> ur_jax ``segnet``: exact parity.

The PyTorch twins (:mod:`ur_jax.convert.twins`: MTAN's SegNet as used by
VICO-UoE/UniversalRepresentations' DensePred code) carry the released parameter names:
``backbone.{encoder_block,decoder_block,conv_block_enc,conv_block_dec}...`` and the heads
``decoder.pred_task`` (:class:`~ur_jax.convert.twins.SingleTaskSegNet`) /
``decoders.<task>.pred_task`` (:class:`~ur_jax.convert.twins.MultiTaskSegNet`, the URL model).
"""

from __future__ import annotations

import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax
import jax.numpy as jnp
from torch import nn

from ur_jax import checkpointing
from ur_jax.convert import ConversionError, convert, convert_file, load, main
from ur_jax.convert import segnet as convert_segnet
from ur_jax.convert.twins import MultiTaskSegNet as MultiTaskModel
from ur_jax.convert.twins import SingleTaskSegNet as SingleTaskModel
from ur_jax.convert.twins import numpy_state
from ur_jax.convert.twins import randomize_segnet as randomize

SMALL = (4, 8, 16, 32, 32)  # MTAN's channels at width 1/16


def save_released(model: nn.Module, path, extra=None) -> str:
    """The released file layout (nyu_stl.py / nyu_url.py ``save_checkpoint``); as there,
    ``best_performance`` is a NumPy scalar, which ``weights_only`` loading refuses."""
    blob = {"epoch": 3, "state_dict": {"module." + k: v for k, v in model.state_dict().items()},
            "best_performance": np.float32(40.5),
            "optimizer": {"state": {}, "param_groups": []}}
    blob.update(extra or {})
    torch.save(blob, path)
    return str(path)


def nhwc(t) -> np.ndarray:
    return t.detach().numpy().transpose(0, 2, 3, 1)


def check_parity(torch_model, directory, x: np.ndarray) -> None:
    """Outputs (PyTorch's activations vs ur_jax's) and the two shared features agree."""
    with torch.no_grad():
        outs, raw, feats = torch_model(torch.from_numpy(x.transpose(0, 3, 1, 2)))
    model, variables = load(directory)
    preds, jfeats = jax.jit(lambda v, a: model.apply(v, a, train=False))(variables,
                                                                         jnp.asarray(x))
    assert set(preds) == set(outs)
    for t in outs:
        ours = np.asarray(preds[t])
        if t == "semantic":  # ur_jax returns logits; DensePred returns their log_softmax
            np.testing.assert_allclose(ours, nhwc(raw[t]), atol=1e-4, rtol=0)
            ours = np.asarray(jax.nn.log_softmax(preds[t], axis=-1))
        np.testing.assert_allclose(ours, nhwc(outs[t]), atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.asarray(jfeats["bottleneck"]), nhwc(feats[0]), atol=1e-4,
                               rtol=0)
    np.testing.assert_allclose(np.asarray(jfeats["decoder"]), nhwc(feats[1]), atol=1e-4,
                               rtol=0)
    assert np.abs(nhwc(feats[1])).max() > 0.1  # a non-trivial comparison


# ------------------------------------------------------------------------------------ tests


def test_stl_teacher_file_converts_like_the_url_layout(tmp_path):
    """A released STL teacher file (``decoder.pred_task``) gives exactly the variables of
    the same weights in the URL layout (``decoders.semantic.pred_task``), whose outputs
    match PyTorch in the parity test below; so no second (slow to compile) forward here."""
    torch_model = randomize(SingleTaskModel("semantic", 13, SMALL), seed=0)
    src = save_released(torch_model, tmp_path / "segnet_segnet_head_stl_semantic_model_best.pth.tar")
    with pytest.warns(UserWarning, match="weights-only loading failed"):
        dst = convert_file("segnet", src, tmp_path / "stl_semantic")
    spec = checkpointing.dense_model_spec("segnet", {"width": 1 / 16}, [("semantic", 13)])
    model, variables = load(dst, expected=spec)
    assert model.task_names == ("semantic",) and model.width == 0.0625
    url_layout = {k.replace("decoder.", "decoders.semantic.", 1): v
                  for k, v in numpy_state(torch_model).items()}
    _, expected = convert_segnet.convert(url_layout)
    assert jax.tree.structure(variables) == jax.tree.structure(expected)
    jax.tree.map(np.testing.assert_array_equal, variables, expected)
    head = variables["params"]["heads"]["semantic"]
    np.testing.assert_array_equal(
        head["conv1x1"]["kernel"][0, 0],
        torch_model.decoder.pred_task[1].weight.detach().numpy()[:, :, 0, 0].T)


def test_url_model_parity_and_adaptors_ignored(tmp_path):
    """Every task output, logits and both shared features of the five-level network."""
    tasks = (("semantic", 13), ("depth", 1), ("normal", 3))
    torch_model = randomize(MultiTaskModel(tasks, SMALL), seed=1)
    adaptor = {"conv1.weight": torch.zeros(4, 32, 1, 1), "conv2.weight": torch.zeros(4, 4, 1, 1)}
    src = save_released(torch_model, tmp_path / "url.pth.tar",
                        {f"adaptor_{t}": adaptor for t, _ in tasks})
    with pytest.warns(UserWarning, match="weights-only loading failed"):
        dst = convert_file("segnet", src, tmp_path / "url")
    model, _ = load(dst, expected=checkpointing.dense_model_spec(
        "segnet", {"width": 0.0625}, tasks))
    assert model.task_names == ("semantic", "depth", "normal")
    x = np.random.default_rng(1).normal(size=(2, 32, 64, 3)).astype(np.float32)
    check_parity(torch_model, dst, x)


def test_full_size_parameter_counts_without_running():
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        stl = SingleTaskModel("semantic", 13)
    assert sum(p.numel() for p in stl.parameters()) == 24_981_069  # MTAN's reference count
    state = {k: np.zeros(v.shape, np.float32) for k, v in stl.state_dict().items()
             if not k.endswith("num_batches_tracked")}
    rng = np.random.default_rng(2)
    w = state["backbone.conv_block_dec.4.1.0.weight"] = rng.normal(
        size=(512, 512, 3, 3)).astype(np.float32)
    var = state["backbone.encoder_block.3.1.running_var"] = rng.uniform(
        0.5, 1.5, 512).astype(np.float32)
    spec, variables = convert_segnet.convert(state)
    assert spec == {"dense_model": "segnet", "model_kwargs": {"width": 1.0},
                    "tasks": [["semantic", 13]]}
    assert sum(v.size for v in jax.tree.leaves(variables["params"])) == 24_981_069
    # OIHW -> HWIO, and the BatchNorm statistics in batch_stats.
    np.testing.assert_array_equal(
        variables["params"]["backbone"]["conv_block_dec_4_1"]["conv"]["kernel"],
        w.transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(
        variables["batch_stats"]["backbone"]["encoder_block_3"]["bn"]["var"], var)

    state = {k: v for k, v in state.items() if not k.startswith("decoder.")}
    for t, n in (("semantic", 13), ("depth", 1), ("normal", 3)):
        state[f"decoders.{t}.pred_task.0.weight"] = np.zeros((64, 64, 3, 3), np.float32)
        state[f"decoders.{t}.pred_task.0.bias"] = np.zeros((64,), np.float32)
        state[f"decoders.{t}.pred_task.1.weight"] = np.zeros((n, 64, 1, 1), np.float32)
        state[f"decoders.{t}.pred_task.1.bias"] = np.zeros((n,), np.float32)
    spec, variables = convert_segnet.convert(state)
    assert spec["tasks"] == [["semantic", 13], ["depth", 1], ["normal", 3]]
    assert sum(v.size for v in jax.tree.leaves(variables["params"])) == 25_055_185


def test_mtan_split_layout_matches_densepred_layout():
    tasks = (("semantic", 13), ("depth", 1), ("normal", 3))
    url = randomize(MultiTaskModel(tasks, (4, 8, 16)), seed=3)
    dense = numpy_state(url)
    mtan = {k[len("backbone."):]: v for k, v in dense.items() if k.startswith("backbone.")}
    for i, (t, _) in enumerate(tasks, start=1):
        for k, v in dense.items():
            if k.startswith(f"decoders.{t}."):
                mtan[k.replace(f"decoders.{t}.pred_task", f"pred_task{i}")] = v
    mtan["logsigma"] = np.full((3,), -0.5, np.float32)  # ignored: a loss weight
    spec_a, var_a = convert_segnet.convert(dense)
    spec_b, var_b = convert_segnet.convert(dict(reversed(list(mtan.items()))))
    assert spec_a == spec_b
    jax.tree.map(np.testing.assert_array_equal, var_a, var_b)


def test_task_names_inferred_overridden_and_reordered():
    state = numpy_state(randomize(SingleTaskModel("depth", 1, (4, 8)), seed=4))
    assert convert_segnet.convert(state)[0]["tasks"] == [["depth", 1]]
    assert convert_segnet.convert(state, tasks="disparity")[0]["tasks"] == [["disparity", 1]]
    normal = numpy_state(randomize(SingleTaskModel("normal", 3, (4, 8)), seed=5))
    spec, _ = convert_segnet.convert(normal)
    assert spec["tasks"] == [["normal", 3]]
    url = numpy_state(randomize(MultiTaskModel((("semantic", 7), ("depth", 1)), (4, 8)), 6))
    spec, var = convert_segnet.convert(url, domains=("depth", "semantic"))  # reorder by name
    assert spec["tasks"] == [["depth", 1], ["semantic", 7]]
    np.testing.assert_array_equal(var["params"]["heads"]["semantic"]["conv1x1"]["bias"],
                                  url["decoders.semantic.pred_task.1.bias"])
    with pytest.raises(ConversionError, match=r"names 3 heads.*has 2"):
        convert_segnet.convert(url, tasks=("a", "b", "c"))
    two_semantic = numpy_state(randomize(MultiTaskModel((("a", 13), ("b", 40)), (4, 8)), 7))
    two_semantic = {k.replace("decoders.a.", "pred_task1.").replace("decoders.b.", "pred_task2.")
                    .replace("pred_task.", "").removeprefix("backbone."): v
                    for k, v in two_semantic.items()}
    with pytest.raises(ConversionError, match=r"Cannot tell the heads' tasks apart"):
        convert_segnet.convert(two_semantic)
    spec, _ = convert_segnet.convert(two_semantic, tasks="seg13,seg40")
    assert spec["tasks"] == [["seg13", 13], ["seg40", 40]]


def test_width_and_filters_recorded():
    state = numpy_state(randomize(SingleTaskModel("semantic", 13, SMALL), seed=8))
    assert convert_segnet.convert(state)[0]["model_kwargs"] == {"width": 0.0625}
    assert convert_segnet.convert(state, width="0.0625")[0]["model_kwargs"] == {
        "width": 0.0625}
    assert convert_segnet.convert(state, width=0.3)[0]["model_kwargs"] == {
        "width": 0.3, "filters": [13, 27, 53, 107, 107]}
    with pytest.raises(ConversionError, match="width=10.0 cannot give"):
        convert_segnet.convert(state, width=10)
    shallow = numpy_state(randomize(SingleTaskModel("semantic", 13, (4, 8)), seed=9))
    spec, _ = convert_segnet.convert(shallow)
    assert spec["model_kwargs"] == {"width": 1.0, "filters": [4, 8]}
    assert convert_segnet.convert(shallow, width=0.5)[0]["model_kwargs"] == {
        "width": 0.5, "filters": [8, 16]}


def test_mismatched_checkpoints_are_refused_with_names():
    state = numpy_state(randomize(SingleTaskModel("semantic", 13, SMALL), seed=10))
    bad = dict(state)
    bad["backbone.conv_block_dec.3.1.0.weight"] = np.zeros((16, 16, 5, 5), np.float32)
    del bad["backbone.conv_block_enc.2.0.1.running_var"]
    bad["backbone.extra_block.0.weight"] = np.zeros((2, 2), np.float32)
    with pytest.raises(ConversionError) as e:
        convert_segnet.convert(bad)
    msg = str(e.value)
    assert "backbone.conv_block_enc.2.0.1.running_var" in msg  # missing
    assert "backbone.extra_block.0.weight (2, 2)" in msg  # unused
    assert re.search(r"conv_block_dec_3_1/conv/kernel: converted \(5, 5, 16, 16\), expected "
                     r"\(3, 3, 16, 16\)", msg)  # wrong shape
    attention = dict(state, **{"encoder_att.0.0.0.weight": np.zeros((1,), np.float32)})
    with pytest.raises(ConversionError, match="MTAN attention modules"):
        convert_segnet.convert(attention)
    with pytest.raises(ConversionError, match=r"option\(s\) \['filters'\]; accepted"):
        convert_segnet.convert(state, filters="4,8")
    with pytest.raises(ConversionError, match="Not a SegNet checkpoint"):
        convert("segnet", {"layer1.0.conv1.weight": np.zeros((1, 1, 3, 3))})


def test_cli(tmp_path, capsys):
    torch_model = randomize(SingleTaskModel("normal", 3, (4, 8)), seed=11)
    src = save_released(torch_model, tmp_path / "stl_normal.pth.tar")
    with pytest.warns(UserWarning, match="weights-only loading failed"):
        main(["--arch", "segnet", "--src", src, "--dst", str(tmp_path / "out"),
              "--domains", "surface_normal", "--option", "width=1.0"])
    assert "Converted" in capsys.readouterr().out
    model, variables = load(tmp_path / "out")
    assert model.task_names == ("surface_normal",)
    assert model.filters == (4, 8)
    np.testing.assert_array_equal(
        variables["params"]["heads"]["surface_normal"]["conv1x1"]["bias"],
        torch_model.decoder.pred_task[1].bias.detach().numpy())
    with pytest.raises(SystemExit, match="tasks=.*names 2 heads"), pytest.warns(UserWarning):
        main(["--arch", "segnet", "--src", src, "--dst", str(tmp_path / "bad"),
              "--option", "tasks=a,b"])
