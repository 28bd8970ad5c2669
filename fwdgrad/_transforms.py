"""Forward gradients as optax gradient transformations.

An estimator transform ignores the incoming updates (the training loop may pass
``None``) and computes its own from the keyword extra args it reads; it owns its
randomness in its state, so a user never threads keys (../shared/DESIGN.md,
"Composition")::

    tx = optax.chain(fwdgrad.forward_gradient(num_tangents=4), optax.sgd(1e-2))
    updates, state = tx.update(None, state, params, loss_fn=lambda p: loss(p, batch))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike

from bbcore import all_finite as _all_finite
from bbcore import check_seed, refuse_nonfinite
from fwdgrad import _estimators, _tangents

__all__ = ["ForwardGradientState", "forward_gradient", "check_seed"]


class ForwardGradientState(NamedTuple):
    """State of :func:`forward_gradient` (and the activity-perturbation transforms).

    count: int32 number of updates made; step ``t`` draws its tangents from
      ``fold_in(key, t)``, so a run is reproducible from the seed alone.
    key: the PRNG key the transform was seeded with.
    nonfinite: int32 number of steps rejected because the loss or the estimate
      was NaN or inf (see :func:`forward_gradient`). Defaults to 0, so
      ``ForwardGradientState(count, key)`` still builds a valid state.
    """

    count: jax.Array  # type: ignore[assignment]  # shadows tuple.count, as optax's states do
    key: jax.Array
    nonfinite: ArrayLike = np.int32(0)


def _init_state(seed: int) -> Callable[[Any], ForwardGradientState]:
    def init_fn(params):
        del params
        return ForwardGradientState(
            count=jnp.zeros((), jnp.int32),
            key=jax.random.key(seed),
            nonfinite=jnp.zeros((), jnp.int32),
        )

    return init_fn


def _step_key(state: ForwardGradientState) -> jax.Array:
    return jax.random.fold_in(state.key, state.count)


def _advance(
    state: ForwardGradientState, estimate: Any, value: Any = None
) -> tuple[Any, ForwardGradientState]:
    """The estimate and the next state, or zeros and the same state if anything is non-finite.

    The non-finite policy shared by the forward-gradient transforms: a NaN/inf
    loss or estimate is rejected, the returned update is all zeros (so an
    ``optax.sgd`` after it moves nothing), ``count`` does not advance (the next
    step redraws the same tangents on its own batch) and ``nonfinite`` counts it.
    Zeros rather than NaN: a NaN passed on would poison every state after it in
    a chain (momenta, scaling histories, device conductances).
    """
    nonfinite = jnp.asarray(state.nonfinite, jnp.int32)
    return refuse_nonfinite(
        _all_finite(estimate, value),
        lambda: (
            estimate,
            ForwardGradientState(
                count=optax.safe_increment(state.count), key=state.key, nonfinite=nonfinite
            ),
        ),
        state._replace(nonfinite=nonfinite),
        estimate,
    )


def _check_update_args(params, loss_fn) -> None:
    if params is None:
        raise ValueError(
            "forward_gradient needs params: call tx.update(updates, state, params, loss_fn=...)"
        )
    if loss_fn is None or not callable(loss_fn):
        raise ValueError(
            "forward_gradient needs the keyword extra arg loss_fn=lambda params: "
            "scalar loss; got " + repr(loss_fn)
        )


def forward_gradient(
    *,
    num_tangents: int = 1,
    tangent: str = "rademacher",
    aggregate: str = "mean",
    seed: int = 0,
    chunk_size: int | None = None,
    strategy: str = "auto",
) -> optax.GradientTransformationExtraArgs:
    """Forward-gradient estimator as an optax transform (Baydin et al., 2022, eq. 4).

    ``update(updates, state, params, *, loss_fn, **extra)`` ignores ``updates``
    (may be ``None``), evaluates ``loss_fn(params)`` in forward mode along
    ``num_tangents`` random tangents and returns the estimate of
    ``grad loss_fn(params)``: same structure and dtypes as ``params``. Chain it
    with an optimiser (``optax.sgd``) to take a step. Other extra args are ignored.

    Args:
      num_tangents: K >= 1 tangents per step (a Python int; static under jit).
      tangent: ``"rademacher"``, ``"gaussian"`` or ``"rank1"`` (see
        :func:`fwdgrad.value_and_fwd_grad`).
      aggregate: ``"mean"`` (unbiased, variance ``(n - 1)|g|^2/K``; use small
        learning rates) or ``"orthogonal"`` (projection onto the tangents' span;
        norm at most ``|g|``, so backprop-sized learning rates work).
      seed: seeds the key held in :class:`ForwardGradientState`.
      chunk_size: see :func:`fwdgrad.value_and_fwd_grad`.
      strategy: ``"auto"``, ``"loop"`` or ``"vmap"``: how the K tangents are evaluated
        (see :func:`fwdgrad.value_and_fwd_grad`; ``fwdgrad.resolve_strategy`` tells the choice).

    Non-finite policy: when the loss or any entry of the estimate is NaN or
    inf (a bad batch, an overflowing model, an overflowing tangent), the step
    is rejected: the returned update is all zeros, ``state.count`` does not
    advance and ``state.nonfinite`` is incremented. The loss is checked too
    because a NaN that does not depend on the params (e.g. in the data) has a
    zero directional derivative and would otherwise pass unnoticed.

    Raises:
      ValueError: at construction, for a bad configuration value.
      TypeError: at construction, for an argument of the wrong type.

    With ``optax.inject_hyperparams`` pass ``static_args=("num_tangents",)``:
    K fixes the shapes of the traced program, so it cannot be a traced array.
    """
    K = _estimators.check_num_tangents(num_tangents)
    _tangents.check_tangent(tangent, weight=True)
    _estimators.check_aggregate(aggregate)
    _estimators.check_chunk_size(chunk_size, K)
    _estimators.check_strategy(strategy)
    check_seed(seed)

    def update_fn(updates, state, params=None, *, loss_fn=None, **extra_args):
        del updates, extra_args
        _check_update_args(params, loss_fn)
        grad_fn = _estimators._gated_value_and_fwd_grad(
            loss_fn,
            argnums=0,
            num_tangents=K,
            tangent=tangent,
            aggregate=aggregate,
            has_aux=False,
            chunk_size=chunk_size,
            strategy=strategy,
            gate=True,
        )
        _, estimate, ok = grad_fn(_step_key(state), params)
        # Selects on scalars, not a lax.cond around the estimate: the refused step's estimate
        # is already zero (its coefficients were), and the accepted one fuses into the update.
        nonfinite = jnp.asarray(state.nonfinite, jnp.int32)
        return estimate, ForwardGradientState(
            count=jnp.where(ok, optax.safe_increment(state.count), state.count),
            key=state.key,
            nonfinite=jnp.where(ok, nonfinite, optax.safe_increment(nonfinite)),
        )

    return optax.GradientTransformationExtraArgs(_init_state(seed), update_fn)
