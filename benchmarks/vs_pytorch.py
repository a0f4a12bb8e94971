"""ur_jax against PyTorch: the same steps, the same weights, timed in one run.

Each step is built twice: in ur_jax (the library's own steps) and in PyTorch on the twins of
:mod:`ur_jax.convert.twins`. The twin gets random weights, its state dict goes through
:mod:`ur_jax.convert`, so both sides start from the same numbers; forward parity (and the
first step's loss) is checked before anything is timed. Steps:

* ``a`` **student**: the plain multi-domain student step (Meta-Dataset ResNet-18, 8 domains x
  8 images at 84 px, one CE head per domain, SGD momentum 0.9, wd 5e-4):
  :func:`ur_jax.steps.make_train_step` under :func:`ur_jax.steps.jit_step`.
* ``b`` **distill**: the URL step with K = 8 frozen teachers (eval mode, no gradient), 8
  linear 512->512 adaptors, ``1 - kernel CKA`` on L2-normalised features (RBF, bandwidth the
  lower median of the non-zero squared distances, no gradient through it) + KL with T = 4
  times T^2 + CE; student SGD(3e-2, 0.9, wd 7e-4), adaptors Adam(0.1, wd 5e-4), as
  ``benchmarks/distill_step.py``: :func:`ur_jax.steps.make_distill_step`, teachers stacked
  with :func:`ur_jax.teachers.stack_teachers` (``mode='auto'``).
* ``c`` **few-shot**, one 5-way 5-shot 15-query episode on the student's frozen backbone:
  ``embed`` (the episode's images through the backbone: the feature pool of NCC / PA,
  ``EpisodeEvaluator.features``), ``pa`` (40 Adadelta steps of the pre-classifier map on the
  pooled support features, then NCC cosine logits: :func:`ur_jax.evaluation.fewshot.
  episode_accuracy`) and ``tsa`` (40 steps of residual adapters + PA through the frozen
  backbone, then the query: ``EpisodeEvaluator.evaluate(method='tsa')`` with buckets equal to
  the episode's sizes, so nothing is padded).
* ``d`` **dense**: one SegNet step on semantic (13 classes), depth and normal with uniform
  weights and :mod:`ur_jax.losses`' task losses, Adam 1e-4: :func:`ur_jax.dense_steps.
  make_mtl_step` with ``'uniform'``, at a CPU-sized input.

Rounds interleave the two sides (ur_jax, PyTorch, then PyTorch, ur_jax, ...) so that a
shared machine's drifts hit both; each figure is the median over rounds of the mean time of
``--steps`` calls. The ratio reported is **ur_jax speed / PyTorch speed** = PyTorch time /
ur_jax time (above 1: ur_jax is faster); the ratio of the fastest rounds is given beside it.
PyTorch uses as many threads as the process has cores (``os.sched_getaffinity``), as XLA
does. On a machine shared with other jobs PyTorch's OpenMP threads suffer far more than
XLA's (a barrier waits for a descheduled thread): compare there under ``taskset -c 0``
(one core, one thread on each side) as well.

    python benchmarks/vs_pytorch.py                      # the defaults above, ~20 min on 2 cores
    python benchmarks/vs_pytorch.py --quick --only a     # tiny sizes, one round: a smoke run
    python benchmarks/vs_pytorch.py --only a,b --rounds 5 --json vs_pytorch.json
    taskset -c 0 python benchmarks/vs_pytorch.py --only a,b,d    # one core on each side
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import statistics
import sys
import time
import types
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch
from torch.nn import functional as F

from ur_jax import checkpointing, dense_steps, mtl, optim, sharding, steps
from ur_jax import teachers as teachers_lib
from ur_jax.adapters import AlignmentAdapters
from ur_jax.convert import resnet18 as convert_resnet18
from ur_jax.convert import segnet as convert_segnet
from ur_jax.convert import twins
from ur_jax.data.episodes import Episode
from ur_jax.data.pipeline import Normalization
from ur_jax.evaluation import fewshot
from ur_jax.evaluation import metadataset as md_eval
from ur_jax.suites.metadataset.common import CLASS_SPLITS, TRAIN_SOURCES

#: ``--only`` letters -> the steps they select.
CASES = types.MappingProxyType({"a": ("student",), "b": ("distill",),
                                "c": ("embed", "pa", "tsa"), "d": ("dense",)})
DENSE_TASKS = (("semantic", 13), ("depth", 1), ("normal", 3))


@dataclasses.dataclass(frozen=True)
class Settings:
    """Sizes of every step; ``--quick`` replaces them with :meth:`quick`'s."""

    domains: int = 8            # Meta-Dataset training sources = heads = teachers
    batch: int = 8              # images per domain per step
    image_size: int = 84
    width: float = 1.0          # ResNet-18 width multiplier
    ways: int = 5
    shots: int = 5
    queries: int = 15           # per class
    inner_steps: int = 40       # PA / TSA Adadelta steps
    segnet_width: float = 1.0
    segnet_size: tuple[int, int] = (64, 96)
    segnet_batch: int = 2
    # The compute dtype of both sides. float32 only for now: a --precision flag (bf16 compute,
    # float32 parameters) goes here, applied to the converted ur_jax models and to the twins
    # (torch.autocast) alike.
    dtype: str = "float32"

    @classmethod
    def quick(cls) -> Settings:
        """Tiny sizes for a smoke run (seconds per step on a laptop CPU)."""
        return cls(domains=2, batch=2, image_size=32, width=0.125, ways=3, shots=2, queries=2,
                   inner_steps=2, segnet_width=1 / 16, segnet_size=(32, 32), segnet_batch=2)


@dataclasses.dataclass
class Case:
    """One step on both sides: ``ur_jax()`` / ``torch()`` run it once and return a value
    (blocked on); ``check(a, b)`` compares the two first results (None: nothing to compare)."""

    name: str
    what: str
    ur_jax: Callable[[], Any]
    torch: Callable[[], Any]
    check: Callable[[Any, Any], str] | None = None


# ----------------------------------------------------------------------------- helpers


def nchw(x: np.ndarray) -> torch.Tensor:
    """NHWC NumPy images -> a contiguous NCHW float tensor (the twins' layout)."""
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def close(what: str, ours: Any, theirs: Any, rtol: float) -> str:
    """``'what: max |diff| ...'``; raises SystemExit when the two differ by more than ``rtol``
    times PyTorch's largest magnitude (the sides would not compute the same thing)."""
    a, b = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    diff = float(np.max(np.abs(a - b))) if a.size else 0.0
    scale = max(float(np.max(np.abs(b))) if b.size else 0.0, 1e-6)
    line = f"{what}: max |ur_jax - torch| = {diff:.2e} (scale {scale:.2e})"
    if a.shape != b.shape or diff > rtol * scale:
        raise SystemExit(f"Parity check failed, {line}, shapes {a.shape} / {b.shape}.")
    return line


def stateful(fn: Callable[..., Any], state: Any, *rest: Any) -> Callable[[], Any]:
    """A closure calling ``fn(state, *rest) -> (state, metrics)`` that carries the (donated)
    state forward and returns the metrics, blocked on."""
    box = [state]

    def call():
        box[0], metrics = fn(box[0], *rest)
        return jax.block_until_ready(metrics)

    return call


def meta_dataset_heads(s: Settings) -> tuple[tuple[str, ...], list[int]]:
    """The first ``s.domains`` training sources of URL and their official class counts."""
    if not 1 <= s.domains <= len(TRAIN_SOURCES):
        raise SystemExit(f"--domains must be in 1..{len(TRAIN_SOURCES)}; found {s.domains}.")
    names = tuple(TRAIN_SOURCES[:s.domains])
    return names, [CLASS_SPLITS[d][0] for d in names]


def converted_resnet18(twin: twins.ResNet18MetaDataset, names: Sequence[str]):
    """``(model, variables)``: the twin's state dict through :mod:`ur_jax.convert`."""
    spec, variables = convert_resnet18.convert(twins.numpy_state(twin), domains=tuple(names))
    return checkpointing.model_from_spec(spec), variables


def domain_batch(s: Settings, classes: Sequence[int], seed: int = 0) -> list[tuple[Any, Any]]:
    """Per domain ``(images NHWC in [-1, 1], labels)`` as NumPy arrays."""
    rng = np.random.default_rng(seed)
    return [(rng.uniform(-1, 1, (s.batch, s.image_size, s.image_size, 3)).astype(np.float32),
             rng.integers(0, n, s.batch).astype(np.int32)) for n in classes]


def torch_train_twin(twin: twins.ResNet18MetaDataset) -> twins.ResNet18MetaDataset:
    """``twin`` in training mode with every parameter trainable."""
    twin.train()
    for p in twin.parameters():
        p.requires_grad_(True)
    return twin


def check_student_forward(model, variables, twin, images: np.ndarray) -> str:
    """Eval-mode logits of the converted model against the twin's, on ``images``."""
    name = model.domains[0]
    logits = jax.jit(lambda v, x: model.apply(v, {name: x}, train=False)[1][name])(
        variables, jnp.asarray(images))
    with torch.no_grad():
        theirs = twin.heads[0](twin.eval().embed(nchw(images))).numpy()
    return close("forward, eval-mode logits", logits, theirs, 1e-3)


def first_loss(ours: Any, theirs: Any) -> str:
    """Compares the first step's losses (before any update: the same parameters)."""
    return close("first step's loss", np.asarray(ours["loss"]), theirs.item(), 1e-3)


# ----------------------------------------------------------------------------- a: student


def case_student(s: Settings, mesh) -> tuple[Case, str]:
    """The plain multi-domain student step."""
    names, classes = meta_dataset_heads(s)
    twin = twins.resnet18_metadataset(s.width, classes, seed=1)
    model, variables = converted_resnet18(twin, names)
    data = domain_batch(s, classes)
    parity = check_student_forward(model, variables, twin, data[0][0][:4])
    lr, momentum, wd = 3e-2, 0.9, 5e-4
    state = steps.TrainState.create(variables["params"], variables["batch_stats"],
                                    optim.sgd(lr, momentum, wd))
    batch = sharding.shard_batch({d: {"image": x, "label": y} for d, (x, y) in
                                  zip(names, data)}, mesh)
    ours = stateful(steps.jit_step(steps.make_train_step(model), mesh),
                    sharding.replicate(state, mesh), batch)

    net = torch_train_twin(twin)
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum, weight_decay=wd)
    x = torch.cat([nchw(x) for x, _ in data])
    labels = [torch.from_numpy(y).long() for _, y in data]

    def theirs():
        opt.zero_grad(set_to_none=True)
        feats = net.embed(x).split(s.batch)
        loss = sum(F.cross_entropy(h(f), y) for h, f, y in zip(net.heads, feats, labels))
        loss.backward()
        opt.step()
        return loss.detach()

    return Case("student", f"{s.domains} domains x {s.batch} images, {s.image_size} px, "
                f"ResNet-18 width {s.width:g}", ours, theirs, first_loss), parity


# ----------------------------------------------------------------------------- b: distill


def torch_kernel_cka(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """:func:`ur_jax.losses.kernel_cka` in PyTorch (the same operations)."""

    def rbf(a):
        g = a @ a.T
        diag = g.diagonal()
        d = (diag[:, None] + diag[None, :] - 2.0 * g).clamp_min(0.0)
        d = d * (1.0 - torch.eye(a.shape[0], dtype=a.dtype))
        sigma2 = d[d > 0].median().detach().clamp_min(1e-12)  # torch.median: the lower one
        return torch.exp(-d / (2.0 * sigma2))

    def centre(k):
        return k - k.mean(1, keepdim=True) - k.mean(0, keepdim=True) + k.mean()

    kc, lc = centre(rbf(x)), centre(rbf(y))
    return (kc * lc).sum() / ((kc * kc).sum().sqrt() * (lc * lc).sum().sqrt())


def torch_kd_kl(student: torch.Tensor, teacher: torch.Tensor, t: float) -> torch.Tensor:
    """``T^2 * mean_rows KL(softmax(teacher / T) || softmax(student / T))``."""
    return F.kl_div(F.log_softmax(student / t, -1), F.log_softmax(teacher / t, -1),
                    reduction="batchmean", log_target=True) * t * t


def case_distill(s: Settings, mesh) -> tuple[Case, str]:
    """The URL distillation step with ``s.domains`` frozen teachers."""
    names, classes = meta_dataset_heads(s)
    temperature = 4.0
    teacher_twins = [twins.resnet18_metadataset(s.width, n, seed=100 + i)
                     for i, n in enumerate(classes)]
    bank, tvars = teachers_lib.stack_teachers(
        {d: converted_resnet18(t, (d,)) for d, t in zip(names, teacher_twins)}, mode="auto")
    twin = twins.resnet18_metadataset(s.width, classes, seed=1)
    student, variables = converted_resnet18(twin, names)
    dim = student.backbone.feature_dim
    g = torch.Generator().manual_seed(7)
    adaptors = [torch.nn.Linear(dim, dim, bias=False) for _ in names]
    for a in adaptors:
        torch.nn.init.xavier_normal_(a.weight, generator=g)
    data = domain_batch(s, classes)
    ads = AlignmentAdapters(tuple((d, dim) for d in names))
    cfg = steps.DistillConfig(lambda_f={d: 1.0 for d in names},
                              lambda_p={d: 1.0 for d in names}, temperature=temperature)
    state = steps.init_distill_state(
        student, ads, jax.random.key(0), {d: x[:1] for d, (x, _) in zip(names, data)},
        optim.sgd(3e-2, 0.9, 7e-4), optim.adam(0.1, 5e-4), student_variables=variables)
    same_adaptors = {d: {"linear": {"kernel": jnp.asarray(a.weight.detach().numpy().T)}}
                     for d, a in zip(names, adaptors)}
    state = state.replace(params={**state.params, "adapters": same_adaptors})
    batch = sharding.shard_batch({d: {"image": x, "label": y} for d, (x, y) in
                                  zip(names, data)}, mesh)
    step = steps.jit_step(steps.make_distill_step(student, ads, bank, cfg), mesh,
                          with_teachers=True)
    ours = stateful(step, sharding.replicate(state, mesh), sharding.replicate(tvars, mesh),
                    batch)

    # The teachers' features on their own domain: the same on both sides (inference mode).
    t_feats, _ = jax.jit(bank.apply)(tvars, {d: x for d, (x, _) in zip(names, data)})
    with torch.no_grad():
        theirs_t = teacher_twins[0].embed(nchw(data[0][0])).numpy()
    parity = close("teacher forward, pooled features", t_feats[names[0]]["pooled"], theirs_t,
                   1e-3)

    for t in teacher_twins:
        t.eval().requires_grad_(False)
    net = torch_train_twin(twin)
    opt_s = torch.optim.SGD(net.parameters(), lr=3e-2, momentum=0.9, weight_decay=7e-4)
    opt_a = torch.optim.Adam([a.weight for a in adaptors], lr=0.1, weight_decay=5e-4)
    images = [nchw(x) for x, _ in data]
    x_all = torch.cat(images)
    labels = [torch.from_numpy(y).long() for _, y in data]

    def theirs():
        with torch.no_grad():
            t_out = []
            for t, x in zip(teacher_twins, images):
                f = t.embed(x)
                t_out.append((f, t.cls_fn(f)))
        opt_s.zero_grad(set_to_none=True)
        opt_a.zero_grad(set_to_none=True)
        feats = net.embed(x_all).split(s.batch)
        loss = 0.0
        for head, adaptor, f, y, (tf, tl) in zip(net.heads, adaptors, feats, labels, t_out):
            logits = head(f)
            align = 1.0 - torch_kernel_cka(F.normalize(adaptor(f), dim=-1),
                                           F.normalize(tf, dim=-1))
            loss = loss + F.cross_entropy(logits, y) + align + torch_kd_kl(logits, tl,
                                                                             temperature)
        loss.backward()
        opt_s.step()
        opt_a.step()
        return loss.detach()

    return Case("distill", f"{s.domains} teachers + student, {s.domains} x {s.batch} images",
                ours, theirs, first_loss), parity


# ----------------------------------------------------------------------------- c: few-shot


def torch_ncc_logits(support, labels, query, ways: int) -> torch.Tensor:
    """``10 x cos(query, class means of support)`` (:func:`ur_jax.evaluation.fewshot.
    ncc_logits`)."""
    onehot = F.one_hot(labels, ways).float()
    protos = onehot.T @ support / onehot.sum(0)[:, None]
    return fewshot.NCC_SCALE * F.normalize(query, dim=-1) @ F.normalize(protos, dim=-1).T


def torch_pa_loss(z: torch.Tensor, labels: torch.Tensor, ways: int) -> torch.Tensor:
    """PA's objective: NCC cross-entropy of the mapped support set on itself."""
    return F.cross_entropy(torch_ncc_logits(z, labels, z, ways), labels)


def torch_adadelta_loop(params: list[dict[str, Any]], n: int,
                        loss_fn: Callable[[], torch.Tensor]) -> None:
    """``n`` Adadelta steps (rho 0.9, eps 1e-6: URL's and ur_jax's) of ``loss_fn``."""
    opt = torch.optim.Adadelta(params)
    for _ in range(n):
        opt.zero_grad(set_to_none=True)
        loss_fn().backward()
        opt.step()


def episode(s: Settings) -> tuple[list[dict[str, np.ndarray]], Episode]:
    """A ``ways``-way episode over random uint8 images, and its records."""
    rng = np.random.default_rng(3)
    per_class = s.shots + s.queries
    records = [{"image": rng.integers(0, 256, (s.image_size, s.image_size, 3), np.uint8)}
               for _ in range(s.ways * per_class)]
    idx = np.arange(len(records)).reshape(s.ways, per_class)
    labels = np.arange(s.ways, dtype=np.int32)
    return records, Episode(idx[:, :s.shots].ravel(), np.repeat(labels, s.shots),
                            idx[:, s.shots:].ravel(), np.repeat(labels, s.queries), labels)


def cases_fewshot(s: Settings, mesh) -> tuple[list[Case], str]:
    """``embed``, ``pa`` and ``tsa`` on one episode, the student's frozen backbone."""
    names, classes = meta_dataset_heads(s)
    twin = twins.resnet18_metadataset(s.width, classes, seed=1).requires_grad_(False)
    model, variables = converted_resnet18(twin, names)
    records, ep = episode(s)
    n_s, n_q, n = len(ep.support), len(ep.query), len(records)
    evaluator = md_eval.EpisodeEvaluator(
        model.backbone, {c: variables[c]["backbone"] for c in ("params", "batch_stats")},
        batch_size=n, buckets=(n_s, n_q), mesh=mesh)
    everything = np.arange(n)
    rates = md_eval.learning_rates("tsa", seen=False)  # {'alpha': 0.5, 'beta': 1.0}
    normalize = Normalization()

    def torch_images(indices):
        return nchw(normalize(np.stack([records[i]["image"] for i in indices])))

    def theirs_embed():
        with torch.no_grad():
            return twin.embed(torch_images(everything)).numpy()

    pool = evaluator.features(records, everything)
    parity = close("few-shot backbone, pooled features", pool, theirs_embed(), 1e-3)
    s_lab, q_lab = torch.from_numpy(ep.support_labels).long(), torch.from_numpy(
        ep.query_labels).long()
    s_feat, q_feat = torch.from_numpy(pool[ep.support]), torch.from_numpy(pool[ep.query])

    def ours_pa():
        return np.asarray(fewshot.episode_accuracy(
            pool, ep.support[None], ep.support_labels[None], ep.query[None],
            ep.query_labels[None], method="pa", ways=s.ways, steps=s.inner_steps,
            learning_rate={"beta": rates["beta"]}))[0]

    def theirs_pa():
        w = torch.eye(pool.shape[1], requires_grad=True)
        torch_adadelta_loop([{"params": [w], "lr": rates["beta"]}], s.inner_steps,
                            lambda: torch_pa_loss(s_feat @ w, s_lab, s.ways))
        with torch.no_grad():
            logits = torch_ncc_logits(s_feat @ w, s_lab, q_feat @ w, s.ways)
        return (logits.argmax(1) == q_lab).float().mean()

    def ours_tsa():
        return evaluator.evaluate(records, [ep], method="tsa", seen=False,
                                  steps=s.inner_steps)[0]

    def theirs_tsa():
        x_s, x_q = torch_images(ep.support), torch_images(ep.query)
        alphas = twin.tsa_alphas()
        beta = torch.eye(pool.shape[1], requires_grad=True)
        torch_adadelta_loop(
            [{"params": [a for pair in alphas.values() for a in pair], "lr": rates["alpha"]},
             {"params": [beta], "lr": rates["beta"]}], s.inner_steps,
            lambda: torch_pa_loss(twin.embed(x_s, alphas) @ beta, s_lab, s.ways))
        with torch.no_grad():
            logits = torch_ncc_logits(twin.embed(x_s, alphas) @ beta, s_lab,
                                      twin.embed(x_q, alphas) @ beta, s.ways)
        return (logits.argmax(1) == q_lab).float().mean()

    def same_accuracy(ours, theirs):
        # Random images give nearly tied NCC logits: float round-off may flip a few queries
        # (TSA's 40 steps agree to ~1e-4 with PyTorch's); reported, not refused.
        return (f"query accuracy ur_jax {float(ours):.3f}, torch {float(theirs):.3f}"
                + ("" if abs(float(ours) - float(theirs)) < 0.5 / n_q else
                   " (differ: round-off on near-tied logits)"))

    where = f"{s.ways}-way {s.shots}-shot {s.queries} queries, {s.image_size} px"
    return [
        Case("embed", f"{n} episode images through the backbone (inference), {where}",
             lambda: evaluator.features(records, everything), theirs_embed,
             lambda a, b: close("embed", a, b, 1e-3)),
        Case("pa", f"PA: {s.inner_steps} Adadelta steps on {n_s} pooled support features "
             "+ NCC", ours_pa, theirs_pa, same_accuracy),
        Case("tsa", f"TSA: {s.inner_steps} steps of adapters + PA on {n_s} support images + "
             "query", ours_tsa, theirs_tsa, same_accuracy),
    ], parity


# ----------------------------------------------------------------------------- d: dense


def torch_dense_losses(raw: dict[str, torch.Tensor], semantic, depth, normal) -> torch.Tensor:
    """:func:`ur_jax.losses.dense_task_loss` of the three tasks, summed (uniform weights)."""
    sem = F.cross_entropy(raw["semantic"], semantic, ignore_index=-1)
    valid = (depth != 0).float()
    dep = ((raw["depth"] - depth).abs() * valid).sum() / valid.sum()
    valid = (normal.sum(1) != 0).float()
    cos = (F.normalize(F.normalize(raw["normal"], dim=1), dim=1) * normal).sum(1)
    return sem + dep + 1.0 - (cos * valid).sum() / valid.sum()


def case_dense(s: Settings, mesh) -> tuple[Case, str]:
    """One SegNet step on NYU-v2's three tasks (uniform weights, Adam)."""
    del mesh  # as benchmarks/mtl_step.py: plain jax.jit on the default device
    filters = tuple(max(1, round(c * s.segnet_width)) for c in twins.SEGNET_FILTERS)
    twin = twins.randomize_segnet(twins.MultiTaskSegNet(DENSE_TASKS, filters), seed=1)
    spec, variables = convert_segnet.convert(twins.numpy_state(twin))
    model = checkpointing.model_from_spec(spec)
    (h, w), b = s.segnet_size, s.segnet_batch
    rng = np.random.default_rng(0)
    normal = rng.normal(size=(b, h, w, 3)).astype(np.float32)
    batch = {"image": rng.uniform(size=(b, h, w, 3)).astype(np.float32),
             "semantic": rng.integers(-1, 13, (b, h, w)).astype(np.int32),
             "depth": rng.uniform(0.5, 5.0, (b, h, w, 1)).astype(np.float32),
             "normal": normal / np.linalg.norm(normal, axis=-1, keepdims=True)}
    preds, _ = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, batch["image"])
    with torch.no_grad():
        _, raw, _ = twin(nchw(batch["image"]))
    parity = close("SegNet forward, semantic logits", preds["semantic"],
                   raw["semantic"].numpy().transpose(0, 2, 3, 1), 1e-3)

    method = mtl.get_method("uniform")
    tasks = tuple(t for t, _ in DENSE_TASKS)
    state = dense_steps.init_mtl_state(variables, method, len(tasks), optim.adam(1e-4))
    step = jax.jit(dense_steps.make_mtl_step(model, tasks, method), donate_argnums=0)
    ours = stateful(step, state, jax.device_put(batch))

    net = twin.train().requires_grad_(True)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    x, sem = nchw(batch["image"]), torch.from_numpy(batch["semantic"]).long()
    dep, nor = nchw(batch["depth"]), nchw(batch["normal"])

    def theirs():
        opt.zero_grad(set_to_none=True)
        _, raw, _ = net(x)
        loss = torch_dense_losses(raw, sem, dep, nor)
        loss.backward()
        opt.step()
        return loss.detach()

    return Case("dense", f"SegNet width {s.segnet_width:g}, {h}x{w}, batch {b}, 3 tasks",
                ours, theirs, first_loss), parity


# ----------------------------------------------------------------------------- timing


def machine() -> dict[str, Any]:
    """The CPU, cores and library versions, for the results table."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            info = dict(line.split(":", 1) for line in f if ":" in line)
        info = {k.strip(): v.strip() for k, v in info.items()}
        cpu = (f"{info.get('model name', cpu)} (family {info.get('cpu family', '?')} model "
               f"{info.get('model', '?')})")
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
            "load_average_at_start": os.getloadavg()[0], "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "jax": jax.__version__,
            "jax_devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
            "python": platform.python_version(),
            "date": datetime.date.today().isoformat()}


def timed(fn: Callable[[], Any], calls: int) -> float:
    """Mean seconds of ``calls`` calls of ``fn`` (each returns a blocked-on value)."""
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls


def run(cases: list[Case], rounds: int, calls: int) -> dict[str, Any]:
    """Warm-up (compilation) and first-result checks, then ``rounds`` interleaved rounds."""
    results: dict[str, Any] = {}
    for c in cases:
        t0 = time.perf_counter()
        first_ours = jax.block_until_ready(c.ur_jax())
        t1 = time.perf_counter()
        first_theirs = c.torch()
        t2 = time.perf_counter()
        check = c.check(first_ours, first_theirs) if c.check else ""
        # Cheap steps repeat within a round until the slower side's lasts ~0.5 s (above the
        # timer's noise), as one more call of each (ur_jax's first one compiled) tells.
        slower = t2 - t1 if t2 - t1 > 0.5 else max(timed(c.ur_jax, 1), timed(c.torch, 1))
        n = calls * max(1, int(0.5 / max(slower, 1e-4)))
        results[c.name] = {"what": c.what, "first_call_s": {"ur_jax": t1 - t0, "torch": t2 - t1},
                           "check": check, "calls_per_round": n,
                           "rounds_s": {"ur_jax": [], "torch": []}}
        print(f"warm-up {c.name}: ur_jax {t1 - t0:.1f} s (with compilation), torch "
              f"{t2 - t1:.2f} s; {check}", flush=True)
    for r in range(rounds):
        for c in cases:
            res = results[c.name]
            order = ("ur_jax", "torch") if r % 2 == 0 else ("torch", "ur_jax")
            for side in order:
                res["rounds_s"][side].append(timed(getattr(c, side), res["calls_per_round"]))
        print(f"round {r + 1}/{rounds}: " + "; ".join(
            f"{name} ur_jax {1e3 * v['rounds_s']['ur_jax'][-1]:.1f} ms, torch "
            f"{1e3 * v['rounds_s']['torch'][-1]:.1f} ms" for name, v in results.items()),
            flush=True)
    for res in results.values():
        res["ms"] = {side: 1e3 * statistics.median(v) for side, v in res["rounds_s"].items()}
        res["min_ms"] = {side: 1e3 * min(v) for side, v in res["rounds_s"].items()}
        res["speed_ratio"] = res["ms"]["torch"] / res["ms"]["ur_jax"]
        res["speed_ratio_of_minima"] = res["min_ms"]["torch"] / res["min_ms"]["ur_jax"]
    return results


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """The command line (see the module docstring); returns the JSON summary."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes and one round (a smoke run)")
    p.add_argument("--rounds", type=int, help="interleaved rounds (default 5; --quick: 1)")
    p.add_argument("--steps", type=int, default=1, help="calls per side per round")
    p.add_argument("--only", default="a,b,c,d",
                   help="comma-separated: a (student), b (distill), c (few-shot: embed, pa, "
                        "tsa), d (dense), or single names (e.g. pa,tsa)")
    p.add_argument("--json", help="also write the summary to this file")
    p.add_argument("--torch-threads", type=int, default=len(os.sched_getaffinity(0)),
                   help="torch.set_num_threads (default: every core this process may use, "
                        "as XLA does; under `taskset -c 0` one on each side)")
    quick = Settings.quick()
    for f in dataclasses.fields(Settings):
        kind = {"int": int, "float": float}.get(f.type)
        if kind is not None:
            p.add_argument(f"--{f.name.replace('_', '-')}", type=kind,
                           help=f"default {f.default} (--quick: {getattr(quick, f.name):g})")
    p.add_argument("--segnet-size", type=lambda v: tuple(int(x) for x in v.split("x")),
                   help="HxW of the SegNet input (default 64x96; --quick: 32x32)")
    args = p.parse_args(argv)
    base = Settings.quick() if args.quick else Settings()
    s = dataclasses.replace(base, **{f.name: getattr(args, f.name) for f in
                                     dataclasses.fields(Settings)
                                     if getattr(args, f.name, None) is not None})
    rounds = args.rounds or (1 if args.quick else 5)
    wanted = set()
    for item in (x.strip() for x in args.only.split(",") if x.strip()):
        names = CASES.get(item, (item,))
        if not set(names) <= {n for v in CASES.values() for n in v}:
            p.error(f"--only: unknown {item!r}; expected a, b, c, d or one of "
                    f"{[n for v in CASES.values() for n in v]}")
        wanted.update(names)
    if s.dtype != "float32":
        p.error("only float32 is measured for now")

    torch.set_num_threads(args.torch_threads)
    torch.manual_seed(0)
    info = machine()
    print(f"settings: {s}\nmachine: {info}\nrounds {rounds} x {args.steps} call(s) per side",
          flush=True)
    mesh = sharding.make_mesh(jax.devices()[:1])  # one device on each side
    cases, parity = [], []
    builders = [("student", case_student), ("distill", case_distill),
                (("embed", "pa", "tsa"), cases_fewshot), ("dense", case_dense)]
    for names, build in builders:
        group = (names,) if isinstance(names, str) else names
        if wanted & set(group):
            t0 = time.perf_counter()
            made, check = build(s, mesh)
            made = [c for c in (made if isinstance(made, list) else [made]) if c.name in wanted]
            cases += made
            parity.append(check)
            print(f"built {', '.join(c.name for c in made)} in {time.perf_counter() - t0:.1f} s; "
                  f"{check}", flush=True)
    results = run(cases, rounds, args.steps)
    print(f"\n{'step':<9}{'ur_jax ms':>11}{'torch ms':>11}{'ur_jax speed / torch':>22}"
          f"{'(of minima)':>13}  what (medians of {rounds} rounds)")
    for name, r in results.items():
        print(f"{name:<9}{r['ms']['ur_jax']:>11.1f}{r['ms']['torch']:>11.1f}"
              f"{r['speed_ratio']:>22.2f}{r['speed_ratio_of_minima']:>13.2f}  {r['what']}")
    summary = {"settings": dataclasses.asdict(s), "rounds": rounds, "steps": args.steps,
               "machine": info, "parity": parity, "results": results}
    print(json.dumps(summary, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
