"""PyTorch MTAN attention SegNet (lorenmt/mtan ``model_segnet_mtan.py``) -> ur_jax ``mtan``.

The twin (:class:`ur_jax.convert.twins.MTANTwin`) has the released module names
(``encoder_att.<t>.<j>``, ``encoder_block_att.<j>``, ``pred_task<k>``, ``logsigma`` ...);
``--arch segnet`` recognises the attention tensors and writes a ``'mtan'`` dense model.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax
import jax.numpy as jnp

from ur_jax import checkpointing
from ur_jax.convert import ConversionError, convert_file, load, main
from ur_jax.convert import segnet as convert_segnet
from ur_jax.convert.twins import MTANTwin, numpy_state, randomize_segnet
from ur_jax.models import MTANSegNet

SMALL = (4, 8, 16, 32, 32)  # MTAN's channels at width 1/16
TASKS = (("semantic", 13), ("depth", 1), ("normal", 3))


def twin(tasks=TASKS, filters=SMALL, seed=0, size=(32, 64)) -> MTANTwin:
    """Random weights, then a few training-mode batches so that every BatchNorm's running
    statistics (incl. the shared attention blocks', updated once per task) move."""
    net = randomize_segnet(MTANTwin(tasks, filters), seed=seed)
    g = torch.Generator().manual_seed(seed + 100)
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(4, 3, *size, generator=g) * 2.0 + 0.5)
    return net.eval()


def save_released(model, path) -> str:
    """MTAN's scripts keep the network in memory; saved as a plain ``state_dict`` file (what
    ``torch.save(model.state_dict())`` gives), with ``module.`` prefixes (DataParallel)."""
    torch.save({"module." + k: v for k, v in model.state_dict().items()}, path)
    return str(path)


def nhwc(t) -> np.ndarray:
    return t.detach().numpy().transpose(0, 2, 3, 1)


def test_parity_with_the_pytorch_mtan(tmp_path):
    """Every prediction (logits, log-softmax, depth, normals), the shared features and the
    attention masks agree to <= 1e-4 in eval mode after BatchNorm updates on the twin."""
    net = twin()
    assert any(not torch.allclose(m.running_var, torch.ones_like(m.running_var))
               for m in net.encoder_block_att.modules() if isinstance(m, torch.nn.BatchNorm2d))
    dst = convert_file("segnet", save_released(net, tmp_path / "mtan.pth"), tmp_path / "mtan")
    model, variables = load(dst, expected=checkpointing.dense_model_spec(
        "mtan", {"width": 0.0625}, TASKS))
    assert isinstance(model, MTANSegNet) and model.task_names == ("semantic", "depth", "normal")
    x = np.random.default_rng(0).normal(size=(2, 32, 64, 3)).astype(np.float32)
    with torch.no_grad():
        outs, raw, feats = net(torch.from_numpy(x.transpose(0, 3, 1, 2)))
    (preds, jfeats), inter = jax.jit(lambda v, a: model.apply(
        v, a, train=False, mutable=["intermediates"]))(variables, jnp.asarray(x))
    diffs = {}
    for t in raw:
        ours = np.asarray(preds[t])
        if t == "semantic":
            diffs["semantic logits"] = np.abs(ours - nhwc(raw[t])).max()
            ours = np.asarray(jax.nn.log_softmax(preds[t], axis=-1))
        diffs[t] = np.abs(ours - nhwc(outs[t])).max()
        assert np.abs(nhwc(raw[t])).max() > 0.05  # a non-trivial comparison
    diffs["bottleneck"] = np.abs(np.asarray(jfeats["bottleneck"]) - nhwc(feats[0])).max()
    diffs["decoder"] = np.abs(np.asarray(jfeats["decoder"]) - nhwc(feats[1])).max()
    for (task, side, level), mask in net.masks.items():
        ours = inter["intermediates"]["heads"][task][f"{side}_mask_{level}"][0]
        diffs[f"{task} {side} mask {level}"] = np.abs(np.asarray(ours) - nhwc(mask)).max()
    print({k: f"{v:.1e}" for k, v in diffs.items()})
    assert max(diffs.values()) <= 1e-4, diffs


def test_training_mode_matches_and_updates_statistics_in_mtan_order():
    """With batch statistics the outputs agree too, and the running means of the shared
    attention blocks (updated once per task, in task order) are PyTorch's."""
    tasks = (("semantic", 7), ("depth", 1))
    net = twin(tasks, (4, 8, 16), seed=3, size=(16, 16))
    spec, variables = convert_segnet.convert(numpy_state(net))
    assert spec["dense_model"] == "mtan" and spec["model_kwargs"] == {"width": 1.0,
                                                                       "filters": [4, 8, 16]}
    model = checkpointing.model_from_spec(spec)
    x = np.random.default_rng(4).normal(size=(4, 16, 16, 3)).astype(np.float32)
    net.train()
    with torch.no_grad():
        _, raw, _ = net(torch.from_numpy(x.transpose(0, 3, 1, 2)))
    (preds, _), new = jax.jit(lambda v, a: model.apply(v, a, train=True,
                                                       mutable=["batch_stats"]))(
        variables, jnp.asarray(x))
    for t in raw:
        np.testing.assert_allclose(np.asarray(preds[t]), nhwc(raw[t]), atol=1e-4, rtol=0)
    for j in range(3):
        for side in ("encoder", "decoder"):
            bn = getattr(net, f"{side}_block_att")[j][1]
            np.testing.assert_allclose(new["batch_stats"][f"{side}_block_att_{j}"]["bn"]["mean"],
                                       bn.running_mean.numpy(), atol=1e-5, rtol=1e-5)


def test_full_size_parameter_count_without_running():
    with torch.device("meta"):
        net = MTANTwin(TASKS)
    # MTAN's script prints 44,229,076 (incl. its three logsigma loss weights).
    assert sum(p.numel() for p in net.parameters()) == 44_229_076
    state = {k: np.zeros(v.shape, np.float32) for k, v in net.state_dict().items()
             if not k.endswith("num_batches_tracked")}
    w = state["decoder_att.2.4.0.weight"] = np.random.default_rng(5).normal(
        size=(512, 1024, 1, 1)).astype(np.float32)
    spec, variables = convert_segnet.convert(state)
    assert spec == {"dense_model": "mtan", "model_kwargs": {"width": 1.0}, "tasks": [
        ["semantic", 13], ["depth", 1], ["normal", 3]]}
    assert sum(v.size for v in jax.tree.leaves(variables["params"])) == 44_229_073
    np.testing.assert_array_equal(
        variables["params"]["heads"]["normal"]["decoder_att_4"]["conv0"]["kernel"],
        w.transpose(2, 3, 1, 0))


def test_broken_checkpoints_are_refused_with_names():
    state = numpy_state(twin(filters=(4, 8), size=(16, 16)))
    bad = dict(state)
    del bad["decoder_att.1.0.4.running_var"]
    bad["encoder_block_att.1.0.weight"] = np.zeros((8, 8, 5, 5), np.float32)
    bad["encoder_att.0.9.0.weight"] = np.zeros((2, 2, 1, 1), np.float32)
    with pytest.raises(ConversionError) as e:
        convert_segnet.convert(bad)
    msg = str(e.value)
    assert "MTAN attention SegNet checkpoint does not match" in msg
    assert "decoder_att.1.0.4.running_var" in msg  # missing
    assert "encoder_att.0.9.0.weight (2, 2, 1, 1)" in msg  # unused
    assert re.search(r"encoder_block_att_1/conv/kernel: converted \(5, 5, 8, 8\), expected "
                     r"\(3, 3, 8, 8\)", msg)  # wrong shape
    two_heads = {k: v for k, v in state.items() if not k.startswith("pred_task3.")}
    with pytest.raises(ConversionError, match=r"attention branches \[0, 1, 2\].*2 heads"):
        convert_segnet.convert(two_heads)
    densepred = {("backbone." + k if k.split(".")[0] in ("encoder_block", "decoder_block",
                                                         "conv_block_enc", "conv_block_dec")
                  else k): v for k, v in state.items()}
    with pytest.raises(ConversionError, match=r"MTAN attention modules.*DensePred 'backbone.'"):
        convert_segnet.convert(densepred)
    nested = {("net." + k if k.startswith("encoder_att") else k): v for k, v in state.items()}
    with pytest.raises(ConversionError, match=r"MTAN attention modules.*net\.encoder_att"):
        convert_segnet.convert(nested)


def test_cli_names_tasks_and_loads_the_mtan_model(tmp_path, capsys):
    net = twin((("semantic", 13), ("depth", 1)), (4, 8), seed=6, size=(16, 16))
    src = save_released(net, tmp_path / "mtan.pth")
    main(["--arch", "segnet", "--src", src, "--dst", str(tmp_path / "out"),
          "--domains", "seg,disparity"])
    assert "Converted" in capsys.readouterr().out
    model, variables = load(tmp_path / "out")
    assert isinstance(model, MTANSegNet)
    assert model.task_names == ("seg", "disparity") and model.filters == (4, 8)
    np.testing.assert_array_equal(
        variables["params"]["heads"]["disparity"]["encoder_att_1"]["bn1"]["scale"],
        net.encoder_att[1][1][4].weight.detach().numpy())
    np.testing.assert_array_equal(
        variables["batch_stats"]["heads"]["seg"]["decoder_att_0"]["bn0"]["var"],
        net.decoder_att[0][0][1].running_var.numpy())
    np.testing.assert_array_equal(
        variables["params"]["heads"]["disparity"]["conv1x1"]["bias"],
        net.pred_task2[1].bias.detach().numpy())
