"""Loss functions for Universal Representation (URL) training in JAX.

This module holds the pure ``jax.numpy`` losses used to train the
single-task networks and to distil them into one universal network
(Li, Liu & Bilen, "Universal Representations: A Unified Look at Multiple
Task and Domain Learning", IJCV 2023):

* task losses: :func:`cross_entropy` (classification and dense labelling);
* dense-prediction task losses with invalid-pixel handling (NYU-v2 /
  Cityscapes): :func:`semantic_loss`, :func:`depth_loss`,
  :func:`normal_loss`, dispatched by task name through
  :func:`dense_task_loss`, and their teacher-annealed form for Born-Again
  Multi-task networks, :func:`dense_bam_loss`;
* logit distillation: :func:`kd_kl` (temperature-scaled KL divergence);
* feature distillation: :func:`normalized_l2`, :func:`cosine_distance`,
  :func:`linear_cka` and :func:`kernel_cka` (RBF kernel CKA, the default
  feature-alignment loss in URL), reachable by name through
  :func:`feature_loss`.

Every function accepts JAX or NumPy arrays, computes in float32 (inputs in
lower precision such as bfloat16 are upcast; float64 is kept only when
``jax_enable_x64`` is on), returns a scalar and
can be used under ``jax.jit`` and ``jax.grad``. Degenerate inputs (zero
vectors, constant features, every label ignored) give finite values and
finite gradients.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

ArrayLike = Union[jax.Array, np.ndarray]
FeatureLossFn = Callable[[ArrayLike, ArrayLike], jax.Array]

__all__ = [
    "cross_entropy",
    "kd_kl",
    "l2_normalize",
    "normalized_l2",
    "cosine_distance",
    "linear_cka",
    "kernel_cka",
    "feature_loss",
    "FEATURE_LOSSES",
    "semantic_loss",
    "depth_loss",
    "normal_loss",
    "dense_bam_loss",
    "dense_task_loss",
    "DENSE_TASK_LOSSES",
]

# Relative threshold below which a centred Gram/kernel matrix is treated as
# zero (its energy is then pure float32 round-off compared with the
# uncentred matrix), which makes CKA undefined; we return 0 in that case.
_CKA_REL_TOL = 1e-10
# Smallest RBF bandwidth sigma^2 used by kernel_cka when the median heuristic
# returns a round-off-level distance; keeps gradients finite in float32.
_MIN_SIGMA2 = 1e-12


def _f32(x: ArrayLike) -> jax.Array:
    """Convert to a float32 jax array (upcasting bf16/fp16, keeping f64)."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating) or jnp.finfo(x.dtype).bits < 32:
        x = x.astype(jnp.float32)
    return x


def _check_same_shape(name: str, a: jax.Array, b: jax.Array) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{name}: student and teacher shapes must match; expected "
            f"{tuple(a.shape)} (student), found {tuple(b.shape)} (teacher)."
        )


# --------------------------------------------------------------------------
# Task loss
# --------------------------------------------------------------------------


def cross_entropy(
    logits: ArrayLike, labels: ArrayLike, ignore_index: Optional[int] = None
) -> jax.Array:
    r"""Softmax cross-entropy averaged over the valid positions.

    .. math::

        \mathcal{L} = \frac{1}{|V|} \sum_{p \in V}
            -\log \operatorname{softmax}(z_p)_{y_p},
        \qquad V = \{p : y_p \neq \texttt{ignore\_index}\}

    Args:
      logits: float array of shape ``(..., C)``, e.g. ``(N, C)`` for
        classification or ``(N, H, W, C)`` for dense prediction. Computed
        in float32 whatever the input dtype.
      labels: integer array of shape ``(...)`` == ``logits.shape[:-1]``.
      ignore_index: optional label value whose positions contribute nothing
        (neither to the sum nor to ``|V|``). Such labels may lie outside
        ``[0, C)`` (e.g. ``-1`` or ``255``); they are never used as indices.

    Returns:
      float32 scalar: the mean over ``V``. When ``V`` is empty the result is
      ``0.0`` with zero gradients (never NaN). With ``ignore_index=None``
      every position is valid (labels are clipped into ``[0, C)`` before the
      gather, so an out-of-range label never indexes out of bounds).
    """
    logits = _f32(logits)
    labels = jnp.asarray(labels)
    if logits.ndim < 1:
        raise ValueError("cross_entropy: logits must have a class axis (..., C).")
    if labels.shape != logits.shape[:-1]:
        raise ValueError(
            "cross_entropy: labels shape must equal logits.shape[:-1]; expected "
            f"{tuple(logits.shape[:-1])}, found {tuple(labels.shape)}."
        )
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(
            f"cross_entropy: labels must be integers, found dtype {labels.dtype}."
        )
    num_classes = logits.shape[-1]
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    safe_labels = jnp.clip(labels, 0, num_classes - 1)
    nll = -jnp.take_along_axis(log_probs, safe_labels[..., None], axis=-1)[..., 0]
    if ignore_index is None:
        valid = jnp.ones(labels.shape, dtype=bool)
    else:
        valid = labels != ignore_index
    total = jnp.sum(jnp.where(valid, nll, 0.0))
    count = jnp.sum(valid.astype(jnp.float32))
    return total / jnp.maximum(count, 1.0)


# --------------------------------------------------------------------------
# Logit distillation
# --------------------------------------------------------------------------


def kd_kl(
    student_logits: ArrayLike, teacher_logits: ArrayLike, temperature: float
) -> jax.Array:
    r"""Temperature-scaled knowledge-distillation KL divergence.

    With :math:`p^t = \operatorname{softmax}(z^t / T)` and
    :math:`p^s = \operatorname{softmax}(z^s / T)` over the last axis,

    .. math::

        \mathcal{L} = T^2 \cdot \frac{1}{P} \sum_{p=1}^{P} \sum_{c}
            p^t_{p,c} \left(\log p^t_{p,c} - \log p^s_{p,c}\right)
            = T^2 \cdot \operatorname{mean}_p \operatorname{KL}(p^t_p \| p^s_p)

    where :math:`P` is the number of leading positions (the product of all
    axes but the last). The teacher side is wrapped in
    ``jax.lax.stop_gradient`` (no gradient reaches ``teacher_logits``).
    Log-probabilities come from ``log_softmax``; classes whose teacher
    probability is exactly zero contribute 0 (not NaN).

    Args:
      student_logits: float array ``(..., C)``.
      teacher_logits: float array with the same shape.
      temperature: softmax temperature ``T > 0``.

    Returns:
      float32 scalar.
    """
    s = _f32(student_logits)
    t = jax.lax.stop_gradient(_f32(teacher_logits))
    _check_same_shape("kd_kl", s, t)
    log_ps = jax.nn.log_softmax(s / temperature, axis=-1)
    log_pt = jax.nn.log_softmax(t / temperature, axis=-1)
    pt = jnp.exp(log_pt)
    positive = pt > 0
    # Double where: both the value and the (zero) gradient stay finite even
    # when log_pt or log_ps is -inf for a class the teacher rules out.
    diff = jnp.where(positive, log_pt - jnp.where(positive, log_ps, 0.0), 0.0)
    kl = jnp.sum(pt * diff, axis=-1)
    return jnp.mean(kl) * (temperature**2)


# --------------------------------------------------------------------------
# Feature distillation
# --------------------------------------------------------------------------


def l2_normalize(x: ArrayLike, axis: int = -1, eps: float = 1e-12) -> jax.Array:
    r"""L2-normalise ``x`` along ``axis``.

    .. math::

        \hat{x} = \frac{x}{\max(\lVert x \rVert_2, \epsilon)}
                = x \cdot \operatorname{rsqrt}\!\left(\max\!\left(
                  \textstyle\sum x^2, \epsilon^2\right)\right)

    The second form is what is computed, so ``x = 0`` maps to ``0`` with a
    finite gradient. Output has the shape of ``x`` (float32 at least).
    """
    x = _f32(x)
    sq = jnp.sum(x * x, axis=axis, keepdims=True)
    return x * jax.lax.rsqrt(jnp.maximum(sq, jnp.asarray(eps * eps, x.dtype)))


def normalized_l2(student_feat: ArrayLike, teacher_feat: ArrayLike) -> jax.Array:
    r"""Squared L2 distance between channel-wise L2-normalised features.

    .. math::

        \mathcal{L} = \operatorname{mean}_{p}
            \sum_{c} \left(\hat{s}_{p,c} - \hat{t}_{p,c}\right)^2,
        \qquad \hat{a}_p = a_p / \max(\lVert a_p \rVert_2, 10^{-12})

    Args:
      student_feat: float array ``(..., C)``, e.g. ``(N, C)`` or
        ``(N, H, W, C)``; the channel axis is last.
      teacher_feat: float array with exactly the same shape.

    Returns:
      float32 scalar in ``[0, 4]``: the sum over channels, averaged over all
      other positions (batch and spatial).

    Raises:
      ValueError: if the shapes differ.
    """
    s = _f32(student_feat)
    t = _f32(teacher_feat)
    _check_same_shape("normalized_l2", s, t)
    d = l2_normalize(s) - l2_normalize(t)
    return jnp.mean(jnp.sum(d * d, axis=-1))


def cosine_distance(student_feat: ArrayLike, teacher_feat: ArrayLike) -> jax.Array:
    r"""Cosine distance over the last axis, averaged over all other axes.

    .. math::

        \mathcal{L} = \operatorname{mean}_{p}
            \left(1 - \sum_c \hat{s}_{p,c}\, \hat{t}_{p,c}\right)

    with :math:`\hat{\cdot}` as in :func:`l2_normalize`. A zero vector has
    zero normalised form, i.e. cosine similarity 0 and distance 1, with
    finite gradients.

    Args:
      student_feat: float array ``(..., C)``.
      teacher_feat: float array with the same shape.

    Returns:
      float32 scalar in ``[0, 2]``.

    Raises:
      ValueError: if the shapes differ.
    """
    s = _f32(student_feat)
    t = _f32(teacher_feat)
    _check_same_shape("cosine_distance", s, t)
    cos = jnp.sum(l2_normalize(s) * l2_normalize(t), axis=-1)
    return jnp.mean(1.0 - cos)


def _check_cka_inputs(name: str, x: jax.Array, y: jax.Array) -> None:
    if x.ndim != 2 or y.ndim != 2:
        raise ValueError(
            f"{name}: expected 2-D inputs (n, d1) and (n, d2); found shapes "
            f"{tuple(x.shape)} and {tuple(y.shape)}."
        )
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"{name}: x and y must have the same number of rows (examples); "
            f"found {x.shape[0]} and {y.shape[0]}."
        )


def _safe_ratio(
    num: jax.Array,
    energy_a: jax.Array,
    energy_b: jax.Array,
    ref_a: jax.Array,
    ref_b: jax.Array,
) -> jax.Array:
    """``num / (sqrt(energy_a) * sqrt(energy_b))``, 0 when degenerate.

    ``energy_*`` is the squared Frobenius norm of a centred matrix and
    ``ref_*`` that of the same matrix before centring. A centred energy that
    is at most ``_CKA_REL_TOL * ref`` is round-off (constant features), so
    the ratio is undefined and 0 is returned. The double ``where`` keeps
    NaN/inf out of both the value and the gradient.
    """
    degenerate = (energy_a <= _CKA_REL_TOL * ref_a) | (energy_b <= _CKA_REL_TOL * ref_b)
    ea = jnp.where(degenerate, 1.0, energy_a)
    eb = jnp.where(degenerate, 1.0, energy_b)
    ratio = num / (jnp.sqrt(ea) * jnp.sqrt(eb))
    return jnp.where(degenerate, 0.0, ratio)


def linear_cka(x: ArrayLike, y: ArrayLike) -> jax.Array:
    r"""Linear centred kernel alignment between two representations.

    With column-centred :math:`X_c = X - \mathbf{1}\bar{x}^\top` and
    :math:`Y_c` likewise,

    .. math::

        \operatorname{CKA}(X, Y) =
            \frac{\lVert Y_c^\top X_c \rVert_F^2}
                 {\lVert X_c^\top X_c \rVert_F \, \lVert Y_c^\top Y_c \rVert_F}.

    Computed in float32 through whichever of the ``(n, n)`` Gram form
    (``||Yc^T Xc||_F^2 = <Xc Xc^T, Yc Yc^T>_F``) or the feature form is
    smaller; each centred matrix is first divided by its Frobenius norm
    (CKA is scale invariant) so large or small activations neither overflow
    nor underflow.

    Args:
      x: float array ``(n, d1)``.
      y: float array ``(n, d2)`` with the same ``n``.

    Returns:
      float32 scalar in ``[0, 1]`` (up to float32 round-off; not clipped,
      so the gradient is untouched). 0 when either input is constant
      across rows (undefined CKA), with finite gradients.

    Raises:
      ValueError: if the inputs are not 2-D or ``n`` differs.
    """
    x = _f32(x)
    y = _f32(y)
    _check_cka_inputs("linear_cka", x, y)
    xc = x - jnp.mean(x, axis=0, keepdims=True)
    yc = y - jnp.mean(y, axis=0, keepdims=True)
    sx, sy = jnp.sum(xc * xc), jnp.sum(yc * yc)
    rx, ry = jnp.sum(x * x), jnp.sum(y * y)
    degenerate = (sx <= _CKA_REL_TOL * rx) | (sy <= _CKA_REL_TOL * ry)
    xn = xc * jax.lax.rsqrt(jnp.where(degenerate, 1.0, sx))
    yn = yc * jax.lax.rsqrt(jnp.where(degenerate, 1.0, sy))
    n, d1 = xn.shape
    d2 = yn.shape[1]
    if n <= max(d1, d2):
        kx = xn @ xn.T
        ky = yn @ yn.T
        hxy = jnp.sum(kx * ky)
        hxx = jnp.sum(kx * kx)
        hyy = jnp.sum(ky * ky)
    else:
        cross = yn.T @ xn
        hxy = jnp.sum(cross * cross)
        gx = xn.T @ xn
        gy = yn.T @ yn
        hxx = jnp.sum(gx * gx)
        hyy = jnp.sum(gy * gy)
    # After normalisation hxx, hyy lie in [1/min(n, d), 1] unless degenerate.
    hxx = jnp.where(degenerate, 1.0, hxx)
    hyy = jnp.where(degenerate, 1.0, hyy)
    cka = hxy / (jnp.sqrt(hxx) * jnp.sqrt(hyy))
    return jnp.where(degenerate, 0.0, cka)


def _sq_distances(a: jax.Array) -> jax.Array:
    """Pairwise squared distances ``diag(G)_i + diag(G)_j - 2 G_ij``, G = A A^T.

    Clamped at 0 and exactly 0 on the diagonal. Using ``diag(G)`` (rather
    than a separately computed row norm) makes bit-identical rows give an
    exact 0 distance.
    """
    g = a @ a.T
    diag = jnp.diagonal(g)
    d = diag[:, None] + diag[None, :] - 2.0 * g
    d = jnp.maximum(d, 0.0)
    n = a.shape[0]
    return jnp.where(jnp.eye(n, dtype=bool), 0.0, d)


def _lower_median_positive(d: jax.Array) -> jax.Array:
    """Lower median of the strictly positive entries of ``d`` (1 if none).

    Static-shape version of ``torch.median(d[d > 0])``: non-positive
    entries are replaced by ``+inf``, the flattened matrix is sorted and
    the element at index ``(m - 1) // 2`` is taken, ``m`` being the number
    of positive entries. (Differentiable at the selected entry; :func:`kernel_cka` stops
    the gradient at the bandwidth.)
    """
    flat = d.reshape(-1)
    positive = flat > 0
    m = jnp.sum(positive.astype(jnp.int32))
    ordered = jnp.sort(jnp.where(positive, flat, jnp.inf))
    idx = jnp.clip((m - 1) // 2, 0, flat.shape[0] - 1)
    med = ordered[idx]
    return jnp.where(m > 0, med, 1.0)


def _centre_kernel(k: jax.Array) -> jax.Array:
    """``H K H`` with ``H = I - 11^T / n``, via row/column mean subtraction."""
    row = jnp.mean(k, axis=1, keepdims=True)
    col = jnp.mean(k, axis=0, keepdims=True)
    return k - row - col + jnp.mean(k)


def _rbf_kernel(a: jax.Array, sigma: Optional[float]) -> jax.Array:
    d = _sq_distances(a)
    if sigma is None:
        # A constant for autodiff: the authors compute the bandwidth as a Python float
        # (VICO-UoE/URL, models/cka.py), so no gradient flows through the median.
        sigma2 = jax.lax.stop_gradient(jnp.maximum(_lower_median_positive(d), _MIN_SIGMA2))
    else:
        sigma2 = jnp.asarray(sigma, jnp.float32) ** 2
    return jnp.exp(-d / (2.0 * sigma2))


def kernel_cka(x: ArrayLike, y: ArrayLike, sigma: Optional[float] = None) -> jax.Array:
    r"""RBF-kernel centred kernel alignment (the URL feature-alignment measure).

    For each input :math:`A \in \{X, Y\}` of shape ``(n, d)``:

    * :math:`G = A A^\top`,
      :math:`D_{ij} = \max(G_{ii} + G_{jj} - 2 G_{ij}, 0)`, :math:`D_{ii} = 0`;
    * bandwidth :math:`\sigma^2` = ``sigma**2`` if ``sigma`` is given, else
      the *lower* median of the strictly positive entries of the full
      matrix :math:`D` (both triangles; for ``m`` sorted values the element
      at index ``(m - 1) // 2``, like ``torch.median``), or 1 if ``D`` has
      no positive entry. (A median below ``1e-12`` is raised to ``1e-12``
      to keep float32 gradients finite; this only affects inputs whose
      rows all coincide up to round-off.) The bandwidth is a constant for
      autodiff (no gradient flows through the median), as in the authors' code
      (VICO-UoE/URL ``models/cka.py`` computes it as a Python float);
    * :math:`K = \exp(-D / (2\sigma^2))`.

    Then, with :math:`H = I - \mathbf{1}\mathbf{1}^\top / n`,

    .. math::

        \operatorname{HSIC}(K, L) = \sum_{ij} (HKH)_{ij} (HLH)_{ij},
        \qquad
        \operatorname{CKA} = \frac{\operatorname{HSIC}(K, L)}
            {\sqrt{\operatorname{HSIC}(K, K)\,\operatorname{HSIC}(L, L)}}

    (the usual :math:`1/(n-1)^2` factors cancel).

    Args:
      x: float array ``(n, d1)``.
      y: float array ``(n, d2)`` with the same ``n``.
      sigma: optional fixed RBF bandwidth (used for both inputs).

    Returns:
      float32 scalar in ``[0, 1]`` (up to round-off; not clipped). If either
      centred kernel is zero up to round-off (e.g. constant features, all
      rows equal) CKA is undefined and 0 is returned; value and gradients
      are always finite. Jit-compatible (static shapes throughout).

    Raises:
      ValueError: if the inputs are not 2-D or ``n`` differs.
    """
    x = _f32(x)
    y = _f32(y)
    _check_cka_inputs("kernel_cka", x, y)
    k = _rbf_kernel(x, sigma)
    l = _rbf_kernel(y, sigma)
    kc = _centre_kernel(k)
    lc = _centre_kernel(l)
    hkl = jnp.sum(kc * lc)
    hkk = jnp.sum(kc * kc)
    hll = jnp.sum(lc * lc)
    return _safe_ratio(hkl, hkk, hll, jnp.sum(k * k), jnp.sum(l * l))


# --------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------


def _kernel_cka_loss(student_feat: ArrayLike, teacher_feat: ArrayLike) -> jax.Array:
    """``1 - kernel_cka(l2_normalize(s), l2_normalize(t))`` for (N, C) features."""
    return 1.0 - kernel_cka(l2_normalize(student_feat), l2_normalize(teacher_feat))


def _linear_cka_loss(student_feat: ArrayLike, teacher_feat: ArrayLike) -> jax.Array:
    """``1 - linear_cka(l2_normalize(s), l2_normalize(t))`` for (N, C) features."""
    return 1.0 - linear_cka(l2_normalize(student_feat), l2_normalize(teacher_feat))


FEATURE_LOSSES: Dict[str, FeatureLossFn] = {
    "kernel_cka": _kernel_cka_loss,
    "linear_cka": _linear_cka_loss,
    "normalized_l2": normalized_l2,
    "cosine": cosine_distance,
}


def feature_loss(name: str) -> FeatureLossFn:
    """Look up a student/teacher feature-alignment loss by name.

    Valid names:

    * ``'kernel_cka'``: ``1 - kernel_cka(l2_normalize(s), l2_normalize(t))``
      for ``(N, C)`` features (URL's default);
    * ``'linear_cka'``: ``1 - linear_cka(l2_normalize(s), l2_normalize(t))``
      for ``(N, C)`` features;
    * ``'normalized_l2'``: :func:`normalized_l2` (any ``(..., C)``);
    * ``'cosine'``: :func:`cosine_distance` (any ``(..., C)``).

    Returns:
      ``fn(student_feat, teacher_feat) -> scalar`` (lower is better aligned).

    Raises:
      ValueError: for an unknown name (the message lists the valid names).
    """
    try:
        return FEATURE_LOSSES[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"Unknown feature loss {name!r}; valid names are "
            f"{sorted(FEATURE_LOSSES)}."
        ) from None


# --------------------------------------------------------------------------
# Dense-prediction task losses (NYU-v2 / Cityscapes, MTAN conventions)
# --------------------------------------------------------------------------


def _example_weights(name: str, mask: ArrayLike | None, batch: int) -> jax.Array | None:
    """Validate an optional per-example weight vector ``(B,)``; float32 or None."""
    if mask is None:
        return None
    m = jnp.asarray(mask)
    if m.shape != (batch,):
        raise ValueError(
            f"{name}: mask must hold one weight per example, shape ({batch},); found shape "
            f"{tuple(m.shape)}. Pass e.g. batch['mask'] (1.0 real, 0.0 padding) or None."
        )
    return m.astype(jnp.float32)


def _masked_pixel_mean(
    values: jax.Array, valid: jax.Array, weights: jax.Array | None
) -> jax.Array:
    """``sum(w * v) / sum(w)`` over valid pixels, ``w`` = example weight; 0.0 if none.

    ``values`` and ``valid`` share the shape ``(B, ...)``; ``weights`` is ``(B,)`` or
    None (all ones). Positions that are not valid contribute neither to the sum nor to
    the count, and receive exactly zero gradient. When the total weight is 0 the result
    is exactly ``0.0`` with zero (finite) gradients.
    """
    w = valid.astype(jnp.float32)
    if weights is not None:
        w = w * weights.reshape((-1,) + (1,) * (values.ndim - 1))
    total = jnp.sum(jnp.where(w != 0, values, 0.0) * w)
    count = jnp.sum(w)
    nonempty = count != 0
    return jnp.where(nonempty, total / jnp.where(nonempty, count, 1.0), 0.0)


def semantic_loss(
    logits: ArrayLike, labels: ArrayLike, mask: ArrayLike | None = None
) -> jax.Array:
    r"""Pixel-wise softmax cross-entropy over labelled pixels (semantic segmentation).

    .. math::

        \mathcal{L} = \frac{\sum_{b,p \in V} w_b\,
                              (-\log \operatorname{softmax}(z_{b,p})_{y_{b,p}})}
                           {\sum_{b,p \in V} w_b},
        \qquad V = \{(b, p) : 0 \le y_{b,p} < C\}

    Labels outside ``[0, C)`` (``-1`` = ignore in NYU-v2/Cityscapes) contribute nothing.

    Args:
      logits: float ``(B, H, W, C)`` (any ``(B, ..., C)``); computed in float32.
      labels: integer ``(B, H, W)`` == ``logits.shape[:-1]``.
      mask: optional ``(B,)`` float weight per example (0 for padding examples).

    Returns:
      float32 scalar, nats per pixel. ``0.0`` with zero gradients (never NaN) when no
      pixel is valid (or every valid pixel has weight 0).

    Raises:
      ValueError: for mismatched shapes or non-integer labels.
    """
    logits = _f32(logits)
    labels = jnp.asarray(labels)
    if logits.ndim < 2 or labels.shape != logits.shape[:-1]:
        raise ValueError(
            "semantic_loss: expected logits (B, H, W, C) and labels (B, H, W) = "
            f"logits.shape[:-1]; found logits {tuple(logits.shape)} and labels "
            f"{tuple(labels.shape)}."
        )
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(
            f"semantic_loss: labels must be integers (int32, -1 = ignore); found dtype "
            f"{labels.dtype}. Cast with labels.astype(jnp.int32)."
        )
    num_classes = logits.shape[-1]
    weights = _example_weights("semantic_loss", mask, logits.shape[0])
    valid = (labels >= 0) & (labels < num_classes)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    safe = jnp.clip(labels, 0, num_classes - 1)
    nll = -jnp.take_along_axis(log_probs, safe[..., None], axis=-1)[..., 0]
    return _masked_pixel_mean(nll, valid, weights)


def _check_dense_pair(name: str, pred: jax.Array, target: jax.Array, channels: int) -> None:
    if pred.shape != target.shape or pred.ndim < 2 or pred.shape[-1] != channels:
        raise ValueError(
            f"{name}: expected pred and target of the same shape (B, H, W, {channels}); "
            f"found pred {tuple(pred.shape)} and target {tuple(target.shape)}."
        )


def depth_loss(pred: ArrayLike, target: ArrayLike, mask: ArrayLike | None = None) -> jax.Array:
    r"""L1 depth loss over pixels with a valid (non-zero) ground truth.

    .. math::

        \mathcal{L} = \frac{\sum_{b,p \in V} w_b\, |\hat d_{b,p} - d_{b,p}|}
                           {\sum_{b,p \in V} w_b},
        \qquad V = \{(b, p) : d_{b,p} \neq 0\}

    The same rule serves NYU-v2 (metric depth, metres) and Cityscapes (inverse depth).

    Args:
      pred: float ``(B, H, W, 1)`` predicted depth.
      target: float ``(B, H, W, 1)`` ground truth, ``0`` = invalid.
      mask: optional ``(B,)`` float weight per example (0 for padding examples).

    Returns:
      float32 scalar in the units of the depth. ``0.0`` with zero gradients when no pixel
      is valid.

    Raises:
      ValueError: if the shapes differ or the last axis is not 1.
    """
    pred = _f32(pred)
    target = _f32(target)
    _check_dense_pair("depth_loss", pred, target, 1)
    weights = _example_weights("depth_loss", mask, pred.shape[0])
    valid = target != 0
    return _masked_pixel_mean(jnp.abs(pred - target), valid, weights)


def normal_loss(pred: ArrayLike, target: ArrayLike, mask: ArrayLike | None = None) -> jax.Array:
    r"""Surface-normal loss: one minus the mean cosine similarity over valid pixels.

    .. math::

        \mathcal{L} = 1 - \frac{\sum_{b,p \in V} w_b\, \langle \hat n_{b,p}, n_{b,p} \rangle}
                               {\sum_{b,p \in V} w_b},
        \qquad V = \{(b, p) : \textstyle\sum_c n_{b,p,c} \neq 0\}

    ``\hat n`` is the prediction L2-normalised again over channels (safely:
    :func:`l2_normalize`, so a zero prediction gives cosine 0 and finite gradients). The
    target is used as given, as in MTAN's and the authors' loss (``get_task_loss`` in
    VICO-UoE/UniversalRepresentations ``DensePred/utils/dense_losses.py``): ground-truth
    normals are unit vectors (after bilinear resizing they can be slightly shorter; they
    are not renormalised). A pixel is valid when its three target channels **sum** to
    non-zero (their ``binary_mask``, the same rule as the normal metrics of
    :func:`ur_jax.evaluation.dense.normal_stats`): a target such as (0.6, -0.6, 0) is left
    out.

    Args:
      pred: float ``(B, H, W, 3)`` predicted normals.
      target: float ``(B, H, W, 3)`` ground-truth unit normals; channels summing to 0 =
        invalid.
      mask: optional ``(B,)`` float weight per example (0 for padding examples).

    Returns:
      float32 scalar in ``[0, 2]`` for unit targets. ``0.0`` with zero gradients when no
      pixel is valid.

    Raises:
      ValueError: if the shapes differ or the last axis is not 3.
    """
    pred = _f32(pred)
    target = _f32(target)
    _check_dense_pair("normal_loss", pred, target, 3)
    weights = _example_weights("normal_loss", mask, pred.shape[0])
    valid = jnp.sum(target, axis=-1) != 0
    cos = jnp.sum(l2_normalize(pred) * target, axis=-1)
    return _masked_pixel_mean(1.0 - cos, valid, weights)


DENSE_TASK_LOSSES: dict[str, Callable[..., jax.Array]] = {
    "semantic": semantic_loss,
    "depth": depth_loss,
    "normal": normal_loss,
}


def dense_task_loss(
    task: str, pred: ArrayLike, target: ArrayLike, mask: ArrayLike | None = None
) -> jax.Array:
    """The task loss of one dense task: :func:`semantic_loss`, :func:`depth_loss` or
    :func:`normal_loss` for ``task`` = ``'semantic'``, ``'depth'`` or ``'normal'``.

    Args:
      task: the task name.
      pred: the head's output (logits ``(B, H, W, C)``, depth ``(B, H, W, 1)`` or
        normals ``(B, H, W, 3)``).
      target: the batch entry of that task (labels ``(B, H, W)`` int32, depth or normals).
      mask: optional ``(B,)`` float weight per example.

    Returns:
      float32 scalar (0.0 when no pixel is valid).

    Raises:
      ValueError: for an unknown task (the message lists the valid names).
    """
    try:
        fn = DENSE_TASK_LOSSES[task]
    except (KeyError, TypeError):
        raise ValueError(
            f"Unknown dense task {task!r}; valid tasks are {sorted(DENSE_TASK_LOSSES)}."
        ) from None
    return fn(pred, target, mask)


def dense_bam_loss(
    task: str, pred: ArrayLike, target: ArrayLike, teacher_pred: ArrayLike,
    lam: ArrayLike, mask: ArrayLike | None = None,
) -> jax.Array:
    r"""Teacher-annealed task loss of Born-Again Multi-task networks (BAM; Clark et al.,
    ACL 2019) for one dense task: the task loss towards the target
    ``lam * ground truth + (1 - lam) * teacher prediction``.

    ``lam`` goes linearly from 0 (pure teacher target: distillation of the single-task
    teacher) to 1 (pure ground truth: exactly :func:`dense_task_loss`) over training. The
    pixels are those of the task loss (where the ground truth is valid) throughout.

    * ``'semantic'``: cross-entropy to the soft target
      ``lam * onehot(y) + (1 - lam) * softmax(teacher_logits)`` (temperature 1, as in BAM),
      i.e. ``lam * CE(y) + (1 - lam) * CE(softmax(teacher))`` per pixel, averaged over pixels
      with ``0 <= y < C``.
    * ``'depth'``: L1 to the mixed depth ``lam * d + (1 - lam) * d_teacher`` over pixels with
      ``d != 0`` (BAM mixes regression targets the same way).
    * ``'normal'``: ``1 - cos`` between the L2-normalised prediction and the mixed normal
      ``lam * n + (1 - lam) * n_teacher`` (not renormalised, like the ground truth in
      :func:`normal_loss`; the loss is then exactly ``lam`` times the loss to the ground
      truth plus ``1 - lam`` times the loss to the teacher), over pixels whose ground-truth
      channels sum to non-zero.

    The authors' DensePred code has no BAM baseline; this follows Clark et al.'s teacher
    annealing with the single-task teachers' predictions. The teacher prediction is not
    differentiated (wrap it in ``jax.lax.stop_gradient`` or pass constants).

    Args:
      task: ``'semantic'``, ``'depth'`` or ``'normal'``.
      pred: the student's head output (logits ``(B, H, W, C)``, depth ``(B, H, W, 1)`` or
        normals ``(B, H, W, 3)``).
      target: the ground truth (labels ``(B, H, W)`` int32 with -1 = ignore, depth with
        0 = invalid, or normals).
      teacher_pred: the single-task teacher's output, the shape of ``pred``.
      lam: scalar weight of the ground truth, in ``[0, 1]`` (may be traced).
      mask: optional ``(B,)`` float weight per example.

    Returns:
      float32 scalar (0.0 when no pixel is valid).

    Raises:
      ValueError: for an unknown task or mismatched shapes.
    """
    if task not in DENSE_TASK_LOSSES:
        raise ValueError(
            f"Unknown dense task {task!r}; valid tasks are {sorted(DENSE_TASK_LOSSES)}."
        )
    pred = _f32(pred)
    teacher = jax.lax.stop_gradient(_f32(teacher_pred))
    if teacher.shape != pred.shape:
        raise ValueError(
            f"dense_bam_loss({task!r}): the teacher prediction must have the student's shape "
            f"{tuple(pred.shape)}; found {tuple(teacher.shape)}."
        )
    lam = jnp.asarray(lam, jnp.float32)
    if task == "semantic":
        gt_loss = semantic_loss(pred, target, mask)
        labels = jnp.asarray(target)
        valid = (labels >= 0) & (labels < pred.shape[-1])
        soft = -jnp.sum(jax.nn.softmax(teacher, axis=-1) * jax.nn.log_softmax(pred, axis=-1),
                        axis=-1)
        teacher_loss = _masked_pixel_mean(
            soft, valid, _example_weights("dense_bam_loss", mask, pred.shape[0]))
        return lam * gt_loss + (1.0 - lam) * teacher_loss
    target = _f32(target)
    _check_dense_pair(f"dense_bam_loss({task!r})", pred, target, 1 if task == "depth" else 3)
    weights = _example_weights("dense_bam_loss", mask, pred.shape[0])
    mixed = lam * target + (1.0 - lam) * teacher
    if task == "depth":
        return _masked_pixel_mean(jnp.abs(pred - mixed), target != 0, weights)
    cos = jnp.sum(l2_normalize(pred) * mixed, axis=-1)
    return _masked_pixel_mean(1.0 - cos, jnp.sum(target, axis=-1) != 0, weights)
