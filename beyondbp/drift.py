"""Accuracy of a digitally trained network against time since it was programmed on a PCM chip.

The network's matrices are programmed once per chip (programming noise and each device's drift
exponent, :func:`analog.program_params`), then read at each time after programming (drift and
1/f read noise, :func:`analog.params_at`), with or without global drift compensation: the
protocol of aihwkit's inference examples (``program_analog_weights`` once, then
``drift_analog_weights(t)`` per time) and of Joshi et al., Nature Communications 11, 2473
(2020), Fig. 4.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import analog

__all__ = ["TIMES", "accuracy_vs_time"]

#: The times after programming the curve is reported at, in seconds (a month is 30 days, a
#: year 365).
TIMES: dict[str, float] = {
    "1 s": 1.0,
    "1 h": 3600.0,
    "1 day": 86400.0,
    "1 month": 30 * 86400.0,
    "1 year": 365 * 86400.0,
}


def _correct(apply: Callable, params: Any, x: jax.Array, y: jax.Array, batch: int) -> jax.Array:
    n = x.shape[0] // batch
    xb = x[: n * batch].reshape(n, batch, *x.shape[1:])
    yb = y[: n * batch].reshape(n, batch)

    def body(total, xy):
        return total + jnp.sum(jnp.argmax(apply(params, xy[0]), -1) == xy[1]), None

    total, _ = jax.lax.scan(body, jnp.zeros((), jnp.int32), (xb, yb))
    if n * batch == x.shape[0]:  # a model may refuse an empty batch
        return total
    rest = jnp.sum(jnp.argmax(apply(params, x[n * batch :]), -1) == y[n * batch :])
    return total + rest


def _check(model, compensate, times, seeds, batch_size) -> tuple[list[float], list[int]]:
    times, seeds = list(times), list(seeds)
    if not isinstance(model, analog.PCMNoiseModel):
        raise ValueError(f"accuracy_vs_time: model={model!r} must be an analog.PCMNoiseModel")
    if not isinstance(compensate, bool):
        raise ValueError(f"accuracy_vs_time: compensate={compensate!r} must be a bool")
    for t in times:
        if (
            isinstance(t, bool)
            or not isinstance(t, (int, float, np.integer, np.floating))
            or not np.isfinite(t)
            or t < 0
        ):
            raise ValueError(
                f"accuracy_vs_time: t={t!r} must be a finite number of seconds >= 0 "
                "since programming"
            )
    if not times or not seeds:
        raise ValueError("accuracy_vs_time: need at least one time and one seed")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"accuracy_vs_time: batch_size={batch_size!r} must be an integer >= 1")
    return [float(t) for t in times], [int(s) for s in seeds]


# x and y are arguments, not closed-over constants: XLA would constant-fold through them
@functools.partial(jax.jit, static_argnames=("apply", "model", "compensate", "batch"))
def _chips_correct(keys, programmed, t, step, x, y, *, apply, model, compensate, batch):
    def one(k, prog):
        read = analog.params_at(jax.random.fold_in(k, step), prog, t, model, compensate=compensate)
        return _correct(apply, read, x, y, batch)

    return jax.vmap(one)(keys, programmed)


def accuracy_vs_time(
    apply: Callable[[Any, jax.Array], jax.Array],
    params: Any,
    x: Any,
    y: Any,
    *,
    model: analog.PCMNoiseModel | None = None,
    times: Sequence[float] = tuple(TIMES.values()),
    seeds: Sequence[int] = (0, 1, 2),
    compensate: bool = True,
    batch_size: int = 1000,
) -> dict:
    """Test accuracy of ``apply(params, x)`` on programmed chips at each time after programming.

    Each seed is one chip: its matrices are programmed once (key ``jax.random.key(seed)``),
    and read at every time in ``times`` with fresh read noise; the chips are evaluated together
    under ``jax.vmap``. The same seeds give the same programmed chips for ``compensate=True``
    and ``False``, so the two curves differ only by the compensation.

    Args:
      apply: pure ``apply(params, x) -> logits``.
      params: trained parameters (matrix leaves go on crossbars, other leaves stay digital).
      x, y: test inputs and integer labels.
      model: the inference noise model (default :class:`analog.PCMNoiseModel`).
      times: seconds since programming, each >= 0.
      seeds: one chip per seed.
      compensate: apply global drift compensation per matrix.
      batch_size: evaluation batch.

    Returns:
      dict with ``times`` (s), ``seeds``, ``accuracy`` (``[seed][time]``, fractions),
      ``mean`` and ``std`` per time (over chips, ``ddof=0``), ``digital`` (the unprogrammed
      network's accuracy) and ``compensate``.
    """
    model = analog.PCMNoiseModel() if model is None else model
    times, seeds = _check(model, compensate, times, seeds, batch_size)
    x = jnp.asarray(x, jnp.float32)
    y = jnp.asarray(y, jnp.int32)
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError(f"accuracy_vs_time: x has {x.shape[0]} rows and y {y.shape[0]}")
    batch = min(batch_size, x.shape[0])
    keys = jnp.stack([jax.random.key(s) for s in seeds])
    k_prog = jax.vmap(lambda k: jax.random.fold_in(k, 0))(keys)
    programmed = jax.vmap(lambda k: analog.program_params(k, params, model))(k_prog)

    chips_correct = functools.partial(
        _chips_correct, apply=apply, model=model, compensate=compensate, batch=batch
    )
    acc = np.stack(
        [
            np.asarray(chips_correct(keys, programmed, jnp.float32(t), i + 1, x, y)) / x.shape[0]
            for i, t in enumerate(times)
        ],
        axis=1,
    )
    digital = (
        float(jax.jit(_correct, static_argnums=(0, 4))(apply, params, x, y, batch)) / x.shape[0]
    )
    return {
        "times": times,
        "seeds": seeds,
        "accuracy": acc.tolist(),
        "mean": acc.mean(0).tolist(),
        "std": acc.std(0).tolist(),
        "digital": digital,
        "compensate": compensate,
    }
