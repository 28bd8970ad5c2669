"""Per-layer quantization rules for any flax nnx model, matched by module path (first match wins).

A :class:`Rule` pairs a regular expression over a layer's path (``"blocks/0/conv1"``,
matched with ``re.fullmatch`` as qwix matches ``module_path``) and an optional
position selector with a :class:`lowbit.QuantConfig` (or ``None``: keep the layer
in float32). :func:`apply_rules` walks the model's layers in definition order,
gives each the config of the first rule that matches it, and returns a
:class:`RulesReport` saying which layer got which config and through which rule.

Layers it can quantize: :class:`lowbit.nnx.Linear` / :class:`lowbit.nnx.Conv`
(their ``config`` is replaced) and flax's ``nnx.Linear``, ``nnx.LinearGeneral``
and ``nnx.Conv`` (their ``dot_general`` / ``conv_general_dilated`` attribute is
replaced by :func:`lowbit.dot_general` / :func:`lowbit.conv_general_dilated`
with the config, the way qwix intercepts a model's ops), so a model needs no
rewrite.
"""

from __future__ import annotations

import dataclasses
import math
import re
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax.numpy as jnp
from flax import nnx as fnnx
from jax import lax

from lowbit import nnx as lnnx
from lowbit._dot import QuantConfig, conv_general_dilated, dot_general

__all__ = [
    "Rule",
    "Recipe",
    "RulesReport",
    "Assignment",
    "apply_rules",
    "plan_rules",
    "layer_paths",
    "describe",
    "SELECTORS",
]

SELECTORS = ("all", "first", "last", "pointwise")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Rule:
    """Which layers get which config.

    Attributes:
      pattern: regular expression that must match the whole layer path
        (``re.fullmatch``; path parts joined by ``/``, list items by index).
      config: the :class:`lowbit.QuantConfig`, or ``None`` for float32 (flax
        layers get ``lax`` back, lowbit layers ``QuantConfig.float32()``).
      select: ``"all"``, ``"first"`` / ``"last"`` (the first or last ``count``
        quantizable layers of the model in definition order), or
        ``"pointwise"`` (convolutions whose kernel is 1 in every spatial axis).
      count: for ``"first"`` / ``"last"``: a number of layers (int >= 1) or a
        fraction of the model's layers (float in (0, 1), rounded up).
    """

    pattern: str = ".*"
    config: Any = None
    select: str = "all"
    count: Any = 1

    def __post_init__(self):
        if not isinstance(self.pattern, str):
            raise TypeError(f"Rule(pattern={self.pattern!r}): need a regular expression string")
        try:
            re.compile(self.pattern)
        except re.error as e:
            raise ValueError(
                f"Rule(pattern={self.pattern!r}): not a valid regular expression ({e})"
            ) from None
        if self.config is not None and not isinstance(self.config, QuantConfig):
            raise TypeError(
                f"Rule(config={self.config!r}): need a lowbit.QuantConfig or None (float32)"
            )
        if self.select not in SELECTORS:
            raise ValueError(f"Rule(select={self.select!r}): use one of {SELECTORS}")
        c = self.count
        ok = (isinstance(c, int) and not isinstance(c, bool) and c >= 1) or (
            isinstance(c, float) and 0 < c < 1
        )
        if not ok:
            raise ValueError(f"Rule(count={c!r}): need an int >= 1 or a fraction in (0, 1)")

    def label(self) -> str:
        sel = self.select if self.select in ("all", "pointwise") else f"{self.select} {self.count}"
        return f"{self.pattern!r} {sel}"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Recipe:
    """A named, cited list of rules (see :mod:`lowbit.recipes`)."""

    name: str
    rules: tuple
    description: str = ""

    def __post_init__(self):
        rules = tuple(self.rules)
        if not rules or not all(isinstance(r, Rule) for r in rules):
            raise TypeError(
                f"Recipe({self.name!r}): rules must be a non-empty sequence of lowbit.Rule"
            )
        object.__setattr__(self, "rules", rules)


class Assignment(NamedTuple):
    """One layer's outcome: its path, type, the index of the rule that matched, its config."""

    path: str
    layer: str
    rule: int | None
    config: QuantConfig | None


@dataclasses.dataclass(frozen=True)
class RulesReport:
    """Which layer got which config (``assignments`` in definition order)."""

    assignments: tuple
    rules: tuple

    def config_of(self, path: str):
        for a in self.assignments:
            if a.path == path:
                return a.config
        raise KeyError(f"no layer {path!r}; layers: {[a.path for a in self.assignments]}")

    def __str__(self) -> str:
        rows = [("layer path", "type", "rule", "config")]
        for a in self.assignments:
            rule = "-" if a.rule is None else f"{a.rule}: {self.rules[a.rule].label()}"
            cfg = "unchanged" if a.rule is None else describe(a.config)
            rows.append((a.path, a.layer, rule, cfg))
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        return "\n".join(
            "  ".join(r[i].ljust(widths[i]) for i in range(3)) + "  " + r[3] for r in rows
        )


def _fmt_name(f) -> str:
    return f.name


def describe(config: QuantConfig | None) -> str:
    """A one-line summary of a config: ``fwd A x W | dgrad G x W | wgrad A x G``."""
    if config is None:
        return "float32"
    if config.forward is not None:
        parts = []
        for tag, g in (
            ("fwd", config.forward),
            ("dgrad", config.input_gradient),
            ("wgrad", config.weight_gradient),
        ):
            s = f"{tag} {_fmt_name(g.lhs)}{'(SR)' if g.lhs_rounding == 'stochastic' else ''} x "
            s += f"{_fmt_name(g.rhs)}{'(SR)' if g.rhs_rounding == 'stochastic' else ''}"
            parts.append(s + (f" RHT{g.hadamard}" if g.hadamard else ""))
        return " | ".join(parts)
    if config.weights.is_float32 and config.activations.is_float32 and config.gradients.is_float32:
        return "float32"
    tpr = " TPR" if config.two_phase else ""
    return (
        f"W {config.weights.name}/{config.weight_scaling}, A {config.activations.name}/"
        f"{config.activation_scaling}, G {config.gradients.name}/{config.gradient_scaling}"
        f"{tpr}"
    )


# ---------------------------------------------------------------------------
# Walking a model
# ---------------------------------------------------------------------------

_LOWBIT = (lnnx.Linear, lnnx.Conv)
_FLAX_DOT = (fnnx.Linear, fnnx.LinearGeneral)
_FLAX_CONV = (fnnx.Conv,)
_LAYERS = _LOWBIT + _FLAX_DOT + _FLAX_CONV


def layer_paths(model) -> list[tuple[str, Any]]:
    """``(path, layer)`` for every quantizable layer, in definition (attribute) order."""
    out, seen = [], set()

    def walk(node, path):
        if id(node) in seen:
            return
        if isinstance(node, _LAYERS):
            seen.add(id(node))
            out.append(("/".join(path), node))
            return
        if isinstance(node, (str, bytes)):
            return
        if isinstance(node, Mapping):
            seen.add(id(node))
            for k, v in node.items():
                walk(v, path + (str(k),))
        elif isinstance(node, Sequence):
            seen.add(id(node))
            for i, v in enumerate(node):
                walk(v, path + (str(i),))
        elif isinstance(node, fnnx.Module):
            seen.add(id(node))
            for k, v in vars(node).items():
                if not k.startswith(("_pytree__", "_object__")):
                    walk(v, path + (k,))

    walk(model, ())
    return out


def _pointwise(layer) -> bool:
    ks = getattr(layer, "kernel_size", None)
    if not isinstance(layer, (lnnx.Conv, fnnx.Conv)) or ks is None:
        return False
    ks = (ks,) if isinstance(ks, int) else tuple(ks)
    return all(k == 1 for k in ks)


def _n(count, total: int) -> int:
    return count if isinstance(count, int) else max(1, math.ceil(count * total))


def plan_rules(model, rules) -> RulesReport:
    """The assignment :func:`apply_rules` would make, without changing the model.

    Warns (``UserWarning``) for each rule whose pattern matches no layer path,
    listing the model's paths; raises ``ValueError`` if the model has no
    quantizable layer.
    """
    rules = _as_rules(rules)
    layers = layer_paths(model)
    if not layers:
        raise ValueError(
            f"{type(model).__name__} has no layer lowbit can quantize (lowbit.nnx."
            "Linear/Conv, flax nnx.Linear/LinearGeneral/Conv)"
        )
    n = len(layers)
    out = []
    for i, (path, layer) in enumerate(layers):
        hit = None
        for j, r in enumerate(rules):
            if re.fullmatch(r.pattern, path) is None:
                continue
            if (
                (r.select == "first" and i >= _n(r.count, n))
                or (r.select == "last" and i < n - _n(r.count, n))
                or (r.select == "pointwise" and not _pointwise(layer))
            ):
                continue
            hit = j
            break
        out.append(
            Assignment(path, type(layer).__name__, hit, None if hit is None else rules[hit].config)
        )
    paths = [p for p, _ in layers]
    for j, r in enumerate(rules):
        if not any(re.fullmatch(r.pattern, p) for p in paths):
            warnings.warn(
                f"lowbit rule {j} (pattern {r.pattern!r}) matches no layer of "
                f"{type(model).__name__}; its layer paths are: {paths}",
                stacklevel=3,
            )
    return RulesReport(tuple(out), rules)


def _as_rules(rules) -> tuple:
    if isinstance(rules, Recipe):
        return rules.rules
    if isinstance(rules, Rule):
        return (rules,)
    rules = tuple(rules)
    if not rules or not all(isinstance(r, Rule) for r in rules):
        raise TypeError("rules: need a lowbit.recipes Recipe, a lowbit.Rule or a sequence of them")
    return rules


@dataclasses.dataclass(frozen=True)
class _QuantDot:
    """``lax.dot_general``'s signature, running :func:`lowbit.dot_general` with ``config``."""

    config: QuantConfig

    def __call__(
        self,
        lhs,
        rhs,
        dimension_numbers,
        precision=None,
        preferred_element_type=None,
        out_sharding=None,
    ):
        if out_sharding is not None:
            raise NotImplementedError(
                "lowbit.dot_general takes no out_sharding; shard the inputs instead"
            )
        return dot_general(
            lhs, rhs, dimension_numbers, precision, preferred_element_type, config=self.config
        )


@dataclasses.dataclass(frozen=True)
class _QuantConv:
    """``lax.conv_general_dilated``'s signature, running :func:`lowbit.conv_general_dilated`."""

    config: QuantConfig

    def __call__(
        self,
        lhs,
        rhs,
        window_strides,
        padding,
        lhs_dilation=None,
        rhs_dilation=None,
        dimension_numbers=None,
        feature_group_count=1,
        batch_group_count=1,
        precision=None,
        preferred_element_type=None,
        out_sharding=None,
    ):
        if out_sharding is not None:
            raise NotImplementedError(
                "lowbit.conv_general_dilated takes no out_sharding; shard the inputs instead"
            )
        return conv_general_dilated(
            lhs,
            rhs,
            window_strides,
            padding,
            lhs_dilation,
            rhs_dilation,
            dimension_numbers,
            feature_group_count,
            batch_group_count,
            precision,
            preferred_element_type,
            config=self.config,
        )


def _set(layer, path: str, config: QuantConfig | None) -> None:
    if isinstance(layer, _LOWBIT):
        cfg = QuantConfig.float32() if config is None else config
        if cfg.activation_scaling == "pact" and layer.activation_clip is None:
            # the attribute was created static (None); a parameter must be declared data
            layer.activation_clip = fnnx.data(
                fnnx.Param(jnp.asarray(cfg.pact_init, layer.kernel[...].dtype))
            )
        layer.config = cfg
        return
    if config is not None and config.activation_scaling == "pact":
        raise ValueError(
            f"layer {path!r} is a flax {type(layer).__name__}, which has no PACT "
            "clip parameter; use lowbit.nnx layers or activation_scaling='max'"
        )
    if isinstance(layer, _FLAX_DOT):
        layer.dot_general = lax.dot_general if config is None else _QuantDot(config)
    else:
        layer.conv_general_dilated = (
            lax.conv_general_dilated if config is None else _QuantConv(config)
        )


def apply_rules(model, rules) -> RulesReport:
    """Give every quantizable layer of ``model`` the config of the first rule it matches.

    Mutates ``model`` in place (configs are static attributes, parameters are
    untouched) and returns the :class:`RulesReport`; layers no rule matches
    keep what they had. ``print(report)`` shows the table.

    Args:
      model: any flax nnx module.
      rules: a :class:`Recipe` (e.g. :data:`lowbit.recipes.NVFP4_2025`), a
        :class:`Rule`, or a sequence of rules, tried in order.
    """
    report = plan_rules(model, rules)
    layers = dict(layer_paths(model))
    for a in report.assignments:
        if a.rule is not None:
            _set(layers[a.path], a.path, a.config)
    return report
