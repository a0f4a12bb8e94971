"""Task-specific adapters (TSA, Li, Liu & Bilen, CVPR 2022): the few-shot method ``'tsa'``.

Per episode, residual matrix adapters ``y = conv(x) + conv1x1_alpha(x)`` on every 3x3 conv
of the frozen backbone's blocks (``alpha = 1e-4 x I`` at the start of every episode,
:func:`ur_jax.adapters.tsa`) and a PA map ``beta`` (identity at the start) are fitted
together on the support set: the loss is PA's NCC cross-entropy of the support set on
itself (:func:`ur_jax.evaluation.fewshot.pa_loss`) on the adapted features; each takes
``steps`` (40) Adadelta steps with its own learning rate (alpha 0.05 on seen sources / 0.5
on unseen ones, beta 0.1 / 1), the backbone's own variables never change. The query is
then classified by NCC on the adapted features mapped by ``beta``
(:func:`ur_jax.evaluation.fewshot.pa_logits`). As VICO-UoE/URL's ``test_extractor_tsa.py``.

The method is the registry entry ``'tsa'`` (:mod:`ur_jax.evaluation.methods`) that adapts
the backbone, so it needs the episodes' images: the episodic protocol
(:class:`ur_jax.evaluation.metadataset.EpisodeEvaluator`) runs it; the fixed-shape protocol
on precomputed features refuses it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from ur_jax import adapters as adapters_lib
from ur_jax.evaluation import fewshot, methods
from ur_jax.optim import adadelta

__all__ = [
    "SEEN_ALPHA_LR",
    "UNSEEN_ALPHA_LR",
    "tsa_adapter",
    "tsa_fit",
]

#: Adadelta learning rate of the conv adapters on the sources the backbone was trained on.
SEEN_ALPHA_LR = 0.05
#: Adadelta learning rate of the conv adapters on unseen sources.
UNSEEN_ALPHA_LR = 0.5


def tsa_adapter(backbone: nn.Module) -> nn.Module:
    """``backbone`` with TSA's residual matrix adapters on its 3x3 convs.

    Raises:
      TypeError: the backbone has no ``conv_adapter`` hook (:func:`ur_jax.adapters.attach`).
    """
    return adapters_lib.attach(backbone, adapters_lib.tsa("residual", "matrix"))


def tsa_fit(embed: Callable[[Any, jax.Array], jax.Array], adapters: Any, images: jax.Array,
            support_labels: jax.Array, ways: int, steps: int | jax.Array,
            learning_rates: Mapping[str, float | jax.Array]) -> tuple[Any, jax.Array]:
    """TSA's inner loop on one support set (pure; run it inside ``jax.jit``).

    ``alpha`` (the adapters, from ``adapters``) and ``beta`` (PA, from the identity) take
    ``steps`` Adadelta steps together (PyTorch semantics, :func:`ur_jax.optim.adadelta`) on
    ``pa_loss(beta, embed(alpha, images), support_labels, ways)``.

    Args:
      embed: ``embed(adapters, images) -> (S, d)`` float32 features of the frozen backbone
        under ``adapters``.
      adapters: the adapter variables to start from (TSA's ``1e-4 x I``).
      images: ``(S, H, W, C)`` support images.
      support_labels: ``(S,)`` int32 labels (outside ``0..ways-1``: padding, ignored).
      ways: number of classes (static).
      steps: Adadelta steps (may be traced; 0 returns the start).
      learning_rates: ``{'alpha': lr, 'beta': lr}`` (may be traced).

    Returns:
      ``(alpha, beta)``: the fitted adapter tree and the ``(d, d)`` float32 PA map.
    """

    def loss(alpha, beta):
        return fewshot.pa_loss(beta, embed(alpha, images), support_labels, ways)

    dim = jax.eval_shape(embed, adapters, images).shape[-1]
    beta0 = jnp.eye(dim, dtype=jnp.float32)
    tx_alpha, tx_beta = adadelta(learning_rates["alpha"]), adadelta(learning_rates["beta"])
    grad = jax.grad(loss, argnums=(0, 1))

    def body(_, carry):
        alpha, beta, s_alpha, s_beta = carry
        g_alpha, g_beta = grad(alpha, beta)
        u_alpha, s_alpha = tx_alpha.update(g_alpha, s_alpha, alpha)
        u_beta, s_beta = tx_beta.update(g_beta, s_beta, beta)
        return (optax.apply_updates(alpha, u_alpha), optax.apply_updates(beta, u_beta),
                s_alpha, s_beta)

    alpha, beta, _, _ = jax.lax.fori_loop(
        0, steps, body, (adapters, beta0, tx_alpha.init(adapters), tx_beta.init(beta0)))
    return alpha, beta


methods.register_method(methods.FewShotMethod(
    name="tsa", adapts="backbone", adapter=tsa_adapter, fit=tsa_fit, logits=fewshot.pa_logits,
    steps=fewshot.PA_STEPS,
    seen_learning_rates={"alpha": SEEN_ALPHA_LR, "beta": fewshot.SEEN_PA_LR},
    unseen_learning_rates={"alpha": UNSEEN_ALPHA_LR, "beta": fewshot.UNSEEN_PA_LR},
    description="task-specific residual adapters + PA, fitted per episode (TSA)"))
