"""The PCM inference model of ``analog._inference`` over a network's parameters, and
hardware-aware training.

Every matrix leaf (``ndim >= 2``: dense weights, conv kernels) of a params pytree is programmed
on its own crossbar tiles (``PCMNoiseModel.max_input_size`` x ``max_output_size``), each with its
own conductance scale and its own global drift compensation; other leaves (biases) stay
digital, as in aihwkit's default mapping (``digital_bias=True``).

Hardware-aware training: Joshi et al., "Accurate deep neural network inference using
computational phase-change memory", Nature Communications 11, 2473 (2020) (noise injection
during training); Rasch et al., "Hardware-aware training for large-scale and diverse deep
learning inference workloads using in-memory computing-based accelerators", Nature
Communications 14, 5282 (2023); aihwkit's ``WeightModifierType.PCM_NOISE``.
"""

from __future__ import annotations

from typing import Any

import jax

from analog._inference import (
    PCMNoiseModel,
    ProgrammedWeights,
    _check_time,
    global_drift_compensation,
    inference_weights,
    program_conductances,
    weights_at,
)

__all__ = ["program_params", "params_at", "noisy_params"]


def _is_matrix(leaf: Any) -> bool:
    return hasattr(leaf, "ndim") and leaf.ndim >= 2


def _keys(key: jax.Array, tree: Any) -> list[jax.Array]:
    n = len(jax.tree.leaves(tree))
    return [jax.random.fold_in(key, i) for i in range(n)]


def program_params(key: jax.Array, params: Any, model: PCMNoiseModel) -> Any:
    """:func:`program_conductances` on every matrix leaf (``ndim >= 2``) of ``params``, each on
    its own crossbar; other leaves (biases) are kept as they are (digital)."""
    leaves, treedef = jax.tree.flatten(params)
    out = [
        program_conductances(k, x, model) if _is_matrix(x) else x
        for k, x in zip(_keys(key, params), leaves)
    ]
    return jax.tree.unflatten(treedef, out)


def params_at(
    key: jax.Array, programmed: Any, t: Any, model: PCMNoiseModel, *, compensate: bool = True
) -> Any:
    """Read every crossbar of :func:`program_params`'s output at time ``t`` (each matrix with
    its own global drift compensation when ``compensate``); returns params like the original."""
    if not isinstance(compensate, bool):
        raise ValueError(f"params_at: compensate={compensate!r} must be a bool")
    _check_time(t, "params_at")
    is_p = lambda x: isinstance(x, ProgrammedWeights)
    leaves, treedef = jax.tree.flatten(programmed, is_leaf=is_p)
    out = []
    for k, x in zip(_keys(key, leaves), leaves):
        if is_p(x):
            w_t = weights_at(k, x, t, model)
            x = (
                w_t * global_drift_compensation(x.weights(), w_t, model=model)
                if compensate
                else w_t
            )
        out.append(x)
    return jax.tree.unflatten(treedef, out)


def noisy_params(
    key: jax.Array, params: Any, model: PCMNoiseModel, *, t: Any = None, compensate: bool = True
) -> Any:
    """Hardware-aware training: the weights a chip would hold, with a straight-through gradient.

    Every matrix leaf ``w`` becomes ``w + stop_gradient(w_chip - w)``: the forward pass sees a
    fresh draw of the chip's weights, the backward pass the gradient at ``w`` (Joshi et al.
    2020, noise injection during training; aihwkit's ``WeightModifierType.PCM_NOISE``).
    ``t=None`` injects programming noise only (eq. P); a time ``t`` injects programming noise,
    drift and read noise at ``t`` (compensated when ``compensate``). Use it inside the loss::

        def loss(params, batch, key):
            return xent(apply(analog.noisy_params(key, params, model), batch.x), batch.y)

    Scale the noise with ``dataclasses.replace(model, prog_noise_scale=...)``.
    """
    if t is not None:
        _check_time(t, "noisy_params")
    leaves, treedef = jax.tree.flatten(params)
    out = []
    for k, w in zip(_keys(key, params), leaves):
        if _is_matrix(w):
            if t is None:
                w_chip = program_conductances(k, jax.lax.stop_gradient(w), model).weights()
            else:
                w_chip = inference_weights(
                    k, jax.lax.stop_gradient(w), t, model, compensate=compensate
                )
            w = w + jax.lax.stop_gradient(w_chip.astype(w.dtype) - w)
        out.append(w)
    return jax.tree.unflatten(treedef, out)
