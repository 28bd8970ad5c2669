"""Inference non-idealities of a programmed PCM chip: programming noise, drift, read noise and
global drift compensation, as pure functions of the weights and of the time since programming.

The statistical model is the one IBM's aihwkit ships as ``PCMLikeNoiseModel``
(``aihwkit/inference/noise/pcm.py``, aihwkit 1.1), fitted on about a million PCM devices:
Nandakumar et al., "Phase-change memory models for deep learning training and inference",
ICECS 2019 (doi:10.1109/ICECS46596.2019.8964852); the same model is described in Joshi et al.,
"Accurate deep neural network inference using computational phase-change memory", Nature
Communications 11, 2473 (2020), Methods. Its constants are copied from aihwkit, not refitted.

A weight matrix ``W`` is cut into crossbar tiles of at most 512 x 512 (aihwkit's
``MappingParameter``; ``analog._inference_mapping``) and each tile ``W_k`` maps to a pair of
conductances per cross-point (aihwkit's ``SinglePairConductanceConverter``): with
``s = g_max / max|W_k|``,
``G+ = clip(s W, 0, g_max)`` and ``G- = clip(-s W, 0, g_max)``, ``W = (G+ - G-) / s``.
Each conductance (in microsiemens) then sees, with ``t`` the time since programming ended and
``t_total = t + t0``:

* programming noise (eq. P): ``G_p = max(G_T + sigma_p(G_T) xi, 0)`` with
  ``sigma_p(G) = prog_noise_scale * (g_max / g_ref) * sum_i c_i (G / g_max)^i``;
* drift (eq. D): ``G_d = G_p (t_total / t0)^(-nu)``, one exponent per device drawn at
  programming: ``nu = drift_scale * |mu_nu + sigma_nu xi|`` with
  ``mu_nu = clip(a0 + a1 ln(G_T / g_max))`` and ``sigma_nu = clip(b0 + b1 ln(G_T / g_max))``;
* accumulated 1/f read noise (eq. R): ``G = max(G_d + |G_d| sigma_r xi, 0)`` with
  ``sigma_r = read_noise_scale * Q_s sqrt(ln((t_total + t_read) / (2 t_read)))`` and
  ``Q_s = min(r0 / max((G_p / g_max)^r1, 1e-3), q_max)``;
* global drift compensation (aihwkit's ``GlobalDriftCompensation``): a reference read right
  after programming and another at time ``t``; each tile's outputs are multiplied by
  ``alpha = mean|y_ref| / mean|y_t|`` (each clipped below at 1e-4).

Time convention (aihwkit's): ``t = 0`` is the end of programming, and the power law runs in
``t + t0`` (``t0`` = 20 s, the first read of the fit), so ``t = 0`` means no drift and the read
noise already holds 20 s of 1/f noise.

The same model over a whole network's parameters, and hardware-aware training that injects it
in the forward pass of digital training, are in ``analog._inference_params``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from analog._inference_mapping import grid, per_tile, tile_compensation, to_grid

_F32 = jnp.float32
# aihwkit's floor of the relative conductance before the log of the drift fit (pcm.py _ZERO_CLIP)
_G_REL_MIN = 1e-7


def _finite(name: str, value: Any) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(float(value))
    ):
        raise ValueError(f"PCMNoiseModel: {name}={value!r} must be a finite number")
    return float(value)


def _pair(name: str, value: Any) -> tuple[float, float]:
    if not isinstance(value, tuple) or len(value) != 2:
        raise ValueError(f"PCMNoiseModel: {name}={value!r} must be a tuple of two numbers")
    return (_finite(f"{name}[0]", value[0]), _finite(f"{name}[1]", value[1]))


@dataclasses.dataclass(frozen=True, kw_only=True)
class PCMNoiseModel:
    """aihwkit's ``PCMLikeNoiseModel`` (Nandakumar et al. 2019) as a frozen, validated config.

    Defaults are aihwkit's (``pcm.py``). Conductances are in microsiemens, times in seconds.

    Attributes:
      g_max: conductance the largest ``|w|`` of a matrix maps to (25 uS).
      prog_coeff: ``c_i`` of the programming-noise polynomial (eq. P), fitted in uS at
        ``prog_coeff_g_max_reference``.
      prog_coeff_g_max_reference: the ``g_max`` the polynomial was fitted at (25 uS); the
        noise scales with ``g_max / g_ref``.
      prog_noise_scale, drift_scale, read_noise_scale: multipliers (0 switches a term off).
      nu_mean_coeff / nu_mean_range: ``(a0, a1)`` and the clip of the drift-exponent mean
        (eq. D): ``(0.0244, -0.0155)``, ``[0.049, 0.1]``.
      nu_std_coeff / nu_std_range: ``(b0, b1)`` and the clip of its device-to-device standard
        deviation: ``(-0.0059, -0.0125)``, ``[0.008, 0.045]``.
      read_coeff, read_exponent, read_q_max: ``r0``, ``r1`` and ``q_max`` of the 1/f read noise
        (eq. R): 0.0088, 0.65, 0.2.
      t0: first read after programming, the drift reference (20 s).
      t_read: read duration of the 1/f fit (250 ns).
      max_input_size, max_output_size: the largest crossbar (aihwkit's ``MappingParameter``,
        512 x 512): a bigger matrix is cut into a grid of tiles, each mapping its own
        ``max|W|`` to ``g_max`` and compensated on its own; None: one crossbar per matrix.

    A constant exponent ``nu`` for every device: ``nu_mean_coeff=(nu, 0.0),
    nu_mean_range=(0.0, 1.0), nu_std_range=(0.0, 0.0)``.
    """

    # programming: the conductance range and the programming-noise polynomial
    g_max: float = 25.0
    prog_coeff: tuple[float, ...] = (0.26348, 1.9650, -1.1731)
    prog_coeff_g_max_reference: float = 25.0
    prog_noise_scale: float = 1.0
    # drift: the power law's exponent statistics, its scale and reference time
    nu_mean_coeff: tuple[float, float] = (0.0244, -0.0155)
    nu_mean_range: tuple[float, float] = (0.049, 0.1)
    nu_std_coeff: tuple[float, float] = (-0.0059, -0.0125)
    nu_std_range: tuple[float, float] = (0.008, 0.045)
    drift_scale: float = 1.0
    t0: float = 20.0
    # read noise (1/f): its coefficient, growth with time and cap, and the read's duration
    read_coeff: float = 0.0088
    read_exponent: float = 0.65
    read_q_max: float = 0.2
    read_noise_scale: float = 1.0
    t_read: float = 250e-9
    # the physical crossbar size a matrix is cut into
    max_input_size: int | None = 512
    max_output_size: int | None = 512

    def __post_init__(self):
        for name in ("g_max", "prog_coeff_g_max_reference", "t0", "t_read"):
            if _finite(name, getattr(self, name)) <= 0:
                raise ValueError(f"PCMNoiseModel: {name}={getattr(self, name)!r} must be > 0")
        for name in ("prog_noise_scale", "drift_scale", "read_noise_scale", "read_coeff"):
            if _finite(name, getattr(self, name)) < 0:
                raise ValueError(
                    f"PCMNoiseModel: {name}={getattr(self, name)!r} must be >= 0 "
                    "(0 switches the term off)"
                )
        for name in ("read_exponent", "read_q_max"):
            if _finite(name, getattr(self, name)) < 0:
                raise ValueError(f"PCMNoiseModel: {name}={getattr(self, name)!r} must be >= 0")
        if not isinstance(self.prog_coeff, tuple) or not self.prog_coeff:
            raise ValueError(
                f"PCMNoiseModel: prog_coeff={self.prog_coeff!r} must be a non-empty tuple"
            )
        coeff = [_finite(f"prog_coeff[{i}]", c) for i, c in enumerate(self.prog_coeff)]
        # sigma_p is a standard deviation: a polynomial negative somewhere on [0, g_max]
        # would flip the noise's sign silently instead of meaning anything physical
        g = np.linspace(0.0, 1.0, 101)
        if np.min(np.polyval(coeff[::-1], g)) < 0:
            raise ValueError(
                f"PCMNoiseModel: prog_coeff={self.prog_coeff!r} gives a negative programming "
                "noise std somewhere on G/g_max in [0, 1]; use coefficients that stay >= 0"
            )
        for name in ("max_input_size", "max_output_size"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(
                    f"PCMNoiseModel: {name}={v!r} must be an integer >= 1 (rows or columns of "
                    "one crossbar), or None for one crossbar per matrix"
                )
        _pair("nu_mean_coeff", self.nu_mean_coeff)
        _pair("nu_std_coeff", self.nu_std_coeff)
        for name in ("nu_mean_range", "nu_std_range"):
            lo, hi = _pair(name, getattr(self, name))
            if not 0 <= lo <= hi:
                raise ValueError(
                    f"PCMNoiseModel: {name}={getattr(self, name)!r} must be (lo, hi) with "
                    "0 <= lo <= hi"
                )


class ProgrammedWeights(NamedTuple):
    """One programmed matrix: conductances right after programming and each device's exponent.

    All float32 of the weight's shape; ``scale`` is uS per weight unit, ``g_max / max|W_k|``
    of the crossbar tile ``k`` each weight lies on (``PCMNoiseModel.max_input_size``). A
    pytree, so a batch of
    chips is ``jax.vmap(program_conductances, (0, None, None))(keys, w, model)``.
    """

    g_plus: jax.Array
    g_minus: jax.Array
    nu_plus: jax.Array
    nu_minus: jax.Array
    scale: jax.Array

    def weights(self) -> jax.Array:
        """The weights the chip holds right after programming: ``(G+ - G-) / scale``."""
        return (self.g_plus - self.g_minus) / self.scale


def _check_time(t: Any, who: str) -> None:
    """Refuse a negative, non-finite or non-scalar time when it is known (not traced).

    Under ``jit``/``vmap`` a traced ``t`` cannot raise; the functions then return NaN for a
    negative one (see :func:`drift`).
    """
    if isinstance(t, jax.core.Tracer):
        return
    arr = np.asarray(t)
    if arr.shape != () or arr.dtype.kind not in "iuf":
        raise ValueError(f"{who}: t={t!r} must be a real scalar (seconds since programming)")
    if not math.isfinite(float(arr)) or float(arr) < 0:
        raise ValueError(
            f"{who}: t={t!r} must be a finite time >= 0 in seconds since programming ended "
            "(t = 0 is the end of programming)"
        )


def _check_weights(w: Any, who: str) -> jax.Array:
    w = jnp.asarray(w)
    if w.ndim < 1 or not jnp.issubdtype(w.dtype, jnp.floating):
        raise ValueError(
            f"{who}: w has shape {w.shape} and dtype {w.dtype}; need a float array of weights"
        )
    return w.astype(_F32)


def _tile(model: PCMNoiseModel) -> tuple[int | None, int | None]:
    return (model.max_input_size, model.max_output_size)


def _time(t: Any) -> jax.Array:
    t = jnp.asarray(t, _F32)
    return jnp.where(t >= 0, t, jnp.nan)


def drift_exponents(key: jax.Array, g_target: jax.Array, model: PCMNoiseModel) -> jax.Array:
    """Sample each device's drift exponent ``nu`` from its target conductance (eq. D).

    Args:
      key: PRNG key.
      g_target: float32 target conductances in uS, any shape.

    Returns:
      float32 ``nu >= 0`` of ``g_target``'s shape (aihwkit ``generate_drift_coefficients``).
    """
    g_rel = jnp.maximum(jnp.abs(jnp.asarray(g_target, _F32)) / model.g_max, _G_REL_MIN)
    log_g = jnp.log(g_rel)
    a0, a1 = model.nu_mean_coeff
    b0, b1 = model.nu_std_coeff
    mu = jnp.clip(a0 + a1 * log_g, *model.nu_mean_range)
    sigma = jnp.clip(b0 + b1 * log_g, *model.nu_std_range)
    xi = jax.random.normal(key, g_rel.shape, _F32)
    return model.drift_scale * jnp.abs(mu + sigma * xi)


def _prog_sigma(g: jax.Array, model: PCMNoiseModel) -> jax.Array:
    g_rel = g / model.g_max
    sigma = jnp.zeros_like(g)
    for c in model.prog_coeff[::-1]:  # Horner
        sigma = sigma * g_rel + c
    return sigma * (model.prog_noise_scale * model.g_max / model.prog_coeff_g_max_reference)


@functools.partial(jax.jit, static_argnums=2)
def _program(key, w, model):
    g = grid(w.shape, _tile(model))
    amax = jnp.max(jnp.abs(to_grid(w, g)), axis=(2, 3))
    # an all-zero tile maps to zero conductances rather than dividing by zero
    scale = per_tile(model.g_max / jnp.maximum(amax, _G_REL_MIN), g, w.shape)
    targets = (jnp.clip(w * scale, 0.0, model.g_max), jnp.clip(-w * scale, 0.0, model.g_max))
    kp, kn = jax.random.split(key)
    out = []
    for g_t, k in zip(targets, (kp, kn)):
        k_prog, k_nu = jax.random.split(k)
        xi = jax.random.normal(k_prog, g_t.shape, _F32)
        g_p = jnp.maximum(g_t + _prog_sigma(g_t, model) * xi, 0.0)
        out.append((g_p, drift_exponents(k_nu, g_t, model)))
    (gp, nup), (gm, num) = out
    return ProgrammedWeights(gp, gm, nup, num, scale)


def program_conductances(key: jax.Array, w: jax.Array, model: PCMNoiseModel) -> ProgrammedWeights:
    """Map weights to a conductance pair per cross-point, program them with noise (eq. P), and
    draw each device's drift exponent (eq. D).

    aihwkit ``SinglePairConductanceConverter`` + ``apply_programming_noise``: the programming
    noise std at a target ``G`` is ``sigma_p(G)``; results are clipped at 0 uS (a device at
    ``G = 0`` therefore reads slightly positive on average, as in aihwkit).

    Args:
      key: PRNG key (one chip; ``jax.vmap`` over a batch of keys for several chips).
      w: float weights of any shape (one crossbar; its ``max|w|`` maps to ``g_max``).

    Returns:
      :class:`ProgrammedWeights`, float32.
    """
    return _program(key, _check_weights(w, "program_conductances"), model)


def drift(key_or_nu: jax.Array, g: jax.Array, t: Any, model: PCMNoiseModel) -> jax.Array:
    """Conductance after drifting for ``t`` seconds since programming (eq. D).

    ``G (t_total / t0)^(-nu)`` with ``t_total = t + t0``; exactly ``G`` at ``t = 0``.

    Args:
      key_or_nu: the exponents ``nu`` (float array broadcastable to ``g``, e.g.
        ``ProgrammedWeights.nu_plus``), or a PRNG key to draw them from ``g`` (then ``g`` is
        taken as the target conductance).
      g: float32 conductances in uS.
      t: seconds since programming, a scalar >= 0 (a traced negative ``t`` gives NaN).

    Returns:
      float32 drifted conductances of ``g``'s shape.
    """
    _check_time(t, "drift")
    g = jnp.asarray(g, _F32)
    dtype = key_or_nu.dtype if hasattr(key_or_nu, "dtype") else np.asarray(key_or_nu).dtype
    if jnp.issubdtype(dtype, jax.dtypes.prng_key):
        nu = drift_exponents(key_or_nu, g, model)
    elif jnp.issubdtype(dtype, jnp.floating):
        nu = jnp.asarray(key_or_nu, _F32)
    else:
        # a legacy uint32 key would otherwise be read as exponents
        raise ValueError(
            f"drift: key_or_nu has dtype {dtype}; pass float exponents nu or a typed key "
            "(jax.random.key(seed))"
        )
    return _drift(nu, g, t, model)


@functools.partial(jax.jit, static_argnums=3)
def _drift(nu, g, t, model):
    # log1p keeps (1 + t/t0) exact near t = 0, so t = 0 multiplies by exp(0) = 1 exactly
    return g * jnp.exp(-nu * jnp.log1p(_time(t) / model.t0))


def read_noise(
    key: jax.Array,
    g: jax.Array,
    t: Any,
    model: PCMNoiseModel,
    *,
    g_programmed: jax.Array | None = None,
) -> jax.Array:
    """Add the 1/f read noise accumulated up to ``t`` seconds since programming (eq. R).

    Args:
      key: PRNG key.
      g: float32 (drifted) conductances in uS; the noise is relative to ``|g|``.
      t: seconds since programming, a scalar >= 0.
      g_programmed: the conductances right after programming, which set ``Q_s`` (aihwkit uses
        them); default ``g``.

    Returns:
      float32 noisy conductances, clipped at 0 uS.
    """
    _check_time(t, "read_noise")
    g = jnp.asarray(g, _F32)
    g_p = g if g_programmed is None else jnp.asarray(g_programmed, _F32)
    return _read(key, g, g_p, t, model)


@functools.partial(jax.jit, static_argnums=4)
def _read(key, g, g_p, t, model):
    q_s = model.read_coeff / jnp.maximum((jnp.abs(g_p) / model.g_max) ** model.read_exponent, 1e-3)
    q_s = jnp.minimum(q_s, model.read_q_max)
    t_total = _time(t) + model.t0
    sigma = (
        model.read_noise_scale
        * q_s
        * jnp.sqrt(jnp.log((t_total + model.t_read) / (2 * model.t_read)))
    )
    xi = jax.random.normal(key, g.shape, _F32)
    return jnp.maximum(g + jnp.abs(g) * sigma * xi, 0.0)


def weights_at(
    key: jax.Array, programmed: ProgrammedWeights, t: Any, model: PCMNoiseModel
) -> jax.Array:
    """The weights a programmed chip holds ``t`` seconds after programming: drift with the
    devices' own exponents, then fresh read noise (aihwkit ``drift_weights``).

    Returns:
      float32 weights of the programmed matrix's shape, uncompensated.
    """
    _check_time(t, "weights_at")
    return _weights_at(key, programmed, t, model)


@functools.partial(jax.jit, static_argnums=3)
def _weights_at(key, p, t, model):
    kp, km = jax.random.split(key)
    gp = _read(kp, _drift(p.nu_plus, p.g_plus, t, model), p.g_plus, t, model)
    gm = _read(km, _drift(p.nu_minus, p.g_minus, t, model), p.g_minus, t, model)
    return (gp - gm) / p.scale


def global_drift_compensation(
    w_reference: jax.Array,
    w_now: jax.Array,
    *,
    x_ref: jax.Array | None = None,
    model: PCMNoiseModel | None = None,
) -> jax.Array:
    """The output scale ``alpha`` that undoes the average drift (aihwkit
    ``GlobalDriftCompensation``): ``alpha = max(mean|x_ref W_ref|, 1e-4) / max(mean|x_ref W_t|,
    1e-4)``; multiply the layer's outputs (before any digital bias) by it. With ``model``,
    one ``alpha`` per crossbar tile of ``model``'s size, each from its own read.

    Args:
      w_reference: ``(in, out)`` weights as read right after programming (the reference read).
      w_now: the same matrix read at inference time.
      x_ref: ``(n, in)`` calibration inputs; default the one-hot rows (aihwkit's ``eye``), for
        which ``x_ref W = W``. ``jnp.ones((1, in))`` is the all-ones read.

    Returns:
      float32 ``alpha``: a scalar for a matrix on one crossbar; else each weight's tile factor
      (the weight's shape), so ``alpha * W_t`` is the compensated matrix either way.
    """
    w_reference = jnp.asarray(w_reference, _F32)
    w_now = jnp.asarray(w_now, _F32)
    if w_reference.shape != w_now.shape:
        raise ValueError(
            f"global_drift_compensation: w_reference {w_reference.shape} and w_now "
            f"{w_now.shape} must be the same matrix"
        )
    x_ref = None if x_ref is None else _check_x_ref(x_ref, w_now, "global_drift_compensation")
    tile = (None, None) if model is None else _tile(model)
    return _compensation(w_reference, w_now, x_ref, tile)


def _check_x_ref(x_ref: Any, w: jax.Array, who: str) -> jax.Array:
    x_ref = jnp.asarray(x_ref, _F32)
    rows = math.prod(w.shape[:-1]) if w.ndim > 1 else w.shape[0]
    if x_ref.ndim != 2 or x_ref.shape[1] != rows:
        raise ValueError(f"{who}: x_ref has shape {x_ref.shape}; need (n, {rows})")
    return x_ref


@functools.partial(jax.jit, static_argnums=3)
def _compensation(w_reference, w_now, x_ref, tile):
    g = grid(w_now.shape, tile)
    alpha = tile_compensation(w_reference, w_now, g, x_ref)
    return alpha.reshape(-1)[0] if g[0] * g[2] == 1 else alpha


def inference_weights(
    key: jax.Array,
    w: jax.Array,
    t: Any,
    model: PCMNoiseModel,
    *,
    compensate: bool = True,
    x_ref: jax.Array | None = None,
) -> jax.Array:
    """Program ``w`` on one chip and read it ``t`` seconds later, optionally compensated.

    ``alpha * W_t`` with ``alpha`` from :func:`global_drift_compensation` (for a linear layer,
    scaling the weights equals scaling its outputs). For several reads of one chip at
    different times, call :func:`program_conductances` once and :func:`weights_at` per time.

    Returns:
      float32 weights of ``w``'s shape.
    """
    if not isinstance(compensate, bool):
        raise ValueError(f"inference_weights: compensate={compensate!r} must be a bool")
    _check_time(t, "inference_weights")
    w = _check_weights(w, "inference_weights")
    x_ref = None if x_ref is None else _check_x_ref(x_ref, w, "inference_weights")
    return _inference(key, w, t, model, compensate, x_ref)


@functools.partial(jax.jit, static_argnums=(3, 4))
def _inference(key, w, t, model, compensate, x_ref):
    k_prog, k_read = jax.random.split(key)
    p = _program(k_prog, w, model)
    w_t = _weights_at(k_read, p, t, model)
    if compensate:
        w_t = w_t * _compensation(p.weights(), w_t, x_ref, _tile(model))
    return w_t
