"""The few-shot method registry: one entry per method, shared by both few-shot protocols.

A few-shot method turns an episode's support set into a classifier of its query set. Each
method is one :class:`FewShotMethod`: its name, what it adapts, its fit and logits
functions, its default inner-loop steps and its default learning rates on seen and unseen
sources. Both protocols look methods up here by name, so a new method is one
:func:`register_method` call, made at import time by the module that defines it:

* the **fixed-shape protocol** (:func:`ur_jax.evaluation.fewshot.evaluate_episodes`: the
  embedded default's ``ways``-way ``shots``-shot episodes on a pool of precomputed features)
  runs the methods that adapt on **features**;
* the **episodic protocol** (:class:`ur_jax.evaluation.metadataset.EpisodeEvaluator`:
  Meta-Dataset's variable-way variable-shot episodes on images, padded to shape buckets)
  runs every method: those that adapt on features on a feature pool, those that adapt the
  **backbone** (they need the images) on each episode's images.

Built-in entries (registered when :mod:`ur_jax.evaluation` is imported):

============  ===========  =====  ==========================  ============================
name          adapts       steps  learning rates seen/unseen  defined in
============  ===========  =====  ==========================  ============================
``ncc``       features     0      none                        :mod:`~ur_jax.evaluation.fewshot`
``pa``        features     40     beta 0.1 / 1.0              :mod:`~ur_jax.evaluation.fewshot`
``linear``    features     100    linear 0.1 / 0.1            :mod:`~ur_jax.evaluation.fewshot`
``tsa``       backbone     40     alpha 0.05 / 0.5,           :mod:`~ur_jax.evaluation.tsa`
                                  beta 0.1 / 1.0
============  ===========  =====  ==========================  ============================

The functions of an entry are pure and traceable (they run inside ``jax.jit`` and, for
feature methods, ``jax.vmap`` over episodes). ``ways`` is a static Python int; ``steps``
(int32) and the learning rates (a ``{name: float32 scalar}`` dict holding exactly the
method's :attr:`FewShotMethod.learning_rate_names`) are traced, so changing them never
recompiles. Support labels outside ``0 .. ways-1`` (padding) must be ignored by ``fit``;
the protocols themselves mask classes without a support example and padded queries.

Feature methods (``adapts='features'``)::

    fit(support (S, d) f32, support_labels (S,) int32, ways, steps, learning_rates) -> state
    logits(state, support (S, d), support_labels (S,), query (Q, d), ways) -> (Q, ways) f32

``fit=None`` means nothing is fitted (``state`` is ``None``).

Backbone methods (``adapts='backbone'``)::

    adapter(backbone) -> adapted backbone (a Flax module whose adapter variables live in
                         the ur_jax.adapters.ADAPTER_COLLECTION collection, e.g. built by
                         ur_jax.adapters.attach); its adapters are initialised once with
                         ur_jax.adapters.init_adapters and restart from there every episode
    fit(embed, adapters, images (S, H, W, C), support_labels (S,), ways, steps,
        learning_rates) -> (adapters, state)
        where embed(adapters, images) -> (n, d) float32 features of the frozen backbone
        under those adapters
    logits(state, support (S, d), support_labels, query (Q, d), ways) -> (Q, ways) f32
        on the features of the adapted backbone

``METHODS`` (module attribute) is the tuple of every registered name, read when accessed;
:func:`method_names` filters it by what the methods adapt, :func:`get_method` returns an entry
and refuses an unknown name with a ValueError.

Example (a toy method, registered by the module that defines it)::

    from ur_jax.evaluation import fewshot, methods

    def _logits(state, support, support_labels, query, ways):
        return fewshot.ncc_logits(support, support_labels, query, ways, scale=1.0)

    methods.register_method(methods.FewShotMethod(
        name="ncc1", adapts="features", logits=_logits,
        description="NCC with cosine x 1"))
    acc = fewshot.evaluate_episodes(features, episodes, method="ncc1")
"""

from __future__ import annotations

import dataclasses
import numbers
import types
from collections.abc import Callable, Mapping
from typing import Any

__all__ = [
    "ADAPTS",
    "METHODS",
    "FewShotMethod",
    "get_method",
    "method_names",
    "register_method",
    "unregister_method",
]

#: What a method can adapt: frozen features, or adapters inside the frozen backbone.
ADAPTS = ("features", "backbone")


@dataclasses.dataclass(frozen=True, eq=False)
class FewShotMethod:
    """One few-shot method (see the module docstring for the function contracts).

    Compared and hashed by identity, so an entry can be a static argument of ``jax.jit``
    (an entry registered again under the same name is a new entry and compiles anew).

    Attributes:
      name: the name configs and callers use (``config.fewshot.methods``).
      adapts: ``'features'`` (runs in both protocols) or ``'backbone'`` (needs the images:
        episodic protocol only).
      logits: ``logits(state, support, support_labels, query, ways) -> (Q, ways)``.
      fit: fits the per-episode ``state`` on the support set (``None``: nothing to fit;
        required for backbone methods).
      steps: default inner-loop steps (the protocols' ``steps=None``).
      seen_learning_rates: ``{name: lr}`` on sources the backbone was trained on.
      unseen_learning_rates: ``{name: lr}`` on the others; the same names as the seen ones.
      adapter: backbone methods only: ``adapter(backbone) -> adapted backbone``.
      description: one line for tables and error messages.

    Raises:
      ValueError: an empty name, an unknown ``adapts``, a backbone method without ``fit``
        or ``adapter`` (or a feature method with an ``adapter``), negative ``steps``, or
        seen and unseen learning rates with different names.
      TypeError: ``logits``, ``fit`` or ``adapter`` not callable.
    """

    name: str
    adapts: str
    logits: Callable[..., Any]
    fit: Callable[..., Any] | None = None
    steps: int = 0
    seen_learning_rates: Mapping[str, float] = dataclasses.field(default_factory=dict)
    unseen_learning_rates: Mapping[str, float] = dataclasses.field(default_factory=dict)
    adapter: Callable[[Any], Any] | None = None
    description: str = ""

    def __post_init__(self) -> None:
        where = f"FewShotMethod({self.name!r})"
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"FewShotMethod: name must be a non-empty string; found "
                             f"{self.name!r}.")
        if self.adapts not in ADAPTS:
            raise ValueError(f"{where}: adapts must be one of {ADAPTS}; found {self.adapts!r}.")
        for field in ("logits", "fit", "adapter"):
            value = getattr(self, field)
            if value is not None and not callable(value):
                raise TypeError(f"{where}: {field} must be callable; found "
                                f"{type(value).__name__}.")
        if not callable(self.logits):
            raise TypeError(f"{where}: logits must be callable; found None.")
        if self.adapts == "backbone" and (self.fit is None or self.adapter is None):
            raise ValueError(f"{where}: a method that adapts the backbone needs both fit and "
                             f"adapter (found fit={self.fit!r}, adapter={self.adapter!r}).")
        if self.adapts == "features" and self.adapter is not None:
            raise ValueError(f"{where}: adapter is for methods that adapt the backbone; this "
                             f"one adapts features (set adapts='backbone' or drop adapter).")
        if (isinstance(self.steps, bool) or not isinstance(self.steps, numbers.Integral)
                or self.steps < 0):
            raise ValueError(f"{where}: steps must be a non-negative integer; found "
                             f"{self.steps!r}.")
        if set(self.seen_learning_rates) != set(self.unseen_learning_rates):
            raise ValueError(
                f"{where}: seen and unseen learning rates must name the same rates; found "
                f"{sorted(self.seen_learning_rates)} and {sorted(self.unseen_learning_rates)}.")
        # Read-only copies: an entry never changes after registration.
        object.__setattr__(self, "steps", int(self.steps))
        for field in ("seen_learning_rates", "unseen_learning_rates"):
            rates = {str(k): float(v) for k, v in getattr(self, field).items()}
            object.__setattr__(self, field, types.MappingProxyType(rates))

    @property
    def learning_rate_names(self) -> tuple[str, ...]:
        """The names of the method's inner-loop learning rates (``()`` for NCC)."""
        return tuple(self.seen_learning_rates)

    def learning_rates(self, seen: bool) -> dict[str, float]:
        """The default learning rates on a seen (``True``) or unseen source, as a new dict."""
        return dict(self.seen_learning_rates if seen else self.unseen_learning_rates)


_REGISTRY: dict[str, FewShotMethod] = {}


def register_method(method: FewShotMethod) -> FewShotMethod:
    """Adds ``method`` to the registry under ``method.name`` and returns it.

    Call it once, at import time, from the module that defines the method.

    Raises:
      TypeError: ``method`` is not a :class:`FewShotMethod`.
      ValueError: a method of that name is already registered.
    """
    if not isinstance(method, FewShotMethod):
        raise TypeError(f"register_method: expected a FewShotMethod; found "
                        f"{type(method).__name__}.")
    if method.name in _REGISTRY:
        raise ValueError(f"A few-shot method named {method.name!r} is already registered; "
                         f"pick another name (registered: {method_names()}).")
    _REGISTRY[method.name] = method
    return method


def unregister_method(name: str) -> None:
    """Removes a registered method (for tests and notebooks that register toy methods).

    Raises:
      ValueError: no method of that name is registered.
    """
    get_method(name)
    del _REGISTRY[name]


def get_method(name: str) -> FewShotMethod:
    """The registered method ``name``.

    Raises:
      ValueError: ``name`` is not registered (the message lists the registered names).
    """
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"Unknown few-shot method {name!r}; expected one of "
                         f"{method_names()}.") from None


def method_names(adapts: str | None = None) -> tuple[str, ...]:
    """Registered method names in registration order, optionally only those that adapt
    ``adapts`` (``'features'`` or ``'backbone'``).

    Raises:
      ValueError: unknown ``adapts``.
    """
    if adapts is not None and adapts not in ADAPTS:
        raise ValueError(f"method_names: adapts must be one of {ADAPTS} or None; found "
                         f"{adapts!r}.")
    return tuple(n for n, m in _REGISTRY.items() if adapts is None or m.adapts == adapts)


def __getattr__(name: str) -> Any:
    # ``METHODS``: every registered name, read at access time (PEP 562), so methods
    # registered after this module was imported are included.
    if name == "METHODS":
        return method_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
