"""Pulsed resistive device models: how a conductance answers a train of programming pulses.

A device is data: a frozen, keyword-only dataclass of named parameters in the style of IBM's
aihwkit (``PulsedDevice`` and its subclasses; Gokmen & Vlasov, "Acceleration of Deep Neural
Network Training with Resistive Cross-Point Devices", Front. Neurosci. 10:333, 2016), plus a pure
``step(g, n_pulses, key, *, variation=None)`` function.

Conventions (all models):

* A conductance ``g`` lives in ``[g_min, g_max]`` (normalised units; the presets use 0..1).
  ``x = (g - g_min) / (g_max - g_min)`` is the position inside the range.
* ``dw_min`` is the conductance change of one pulse at the middle of the range (aihwkit's
  convention: the step size at the symmetry point), ``up_down`` the up/down asymmetry:
  potentiating pulses step ``dw_min * (1 + up_down)``, depressing ones ``dw_min * (1 - up_down)``.
* ``n_pulses`` is signed: ``n > 0`` potentiating (SET) pulses, ``n < 0`` depressing (RESET).
* Every model is defined by its pulse-response curve, so ``n`` pulses applied at once give exactly
  the same conductance as ``n`` single pulses applied one after another (without noise); the
  closed forms are in each class's docstring and are what the tests check.
* Device-to-device variation is sampled once per device (:meth:`sample_variation`): step size
  (``dw_min_dtod``), asymmetry (``up_down_dtod``), upper bound (``bounds_dtod``), and the
  stuck-on / stuck-off fractions. Cycle-to-cycle noise (``dw_min_std``) is drawn on every call:
  each pulse's step has relative standard deviation ``dw_min_std`` (aihwkit's ``dw_min_std``), so
  ``n`` pulses of total change ``D`` get Gaussian noise of standard deviation
  ``dw_min_std * |D| / sqrt(|n|)`` (exact for constant steps).
* The result is always clipped to the device's own ``[g_min, g_max]``; stuck devices stay at
  ``g_max`` (stuck on) or ``g_min`` (stuck off) whatever they are sent.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

import bbcore

__all__ = [
    "DeviceVariation",
    "Device",
    "ConstantStep",
    "LinearStep",
    "SoftBounds",
    "ExpStep",
    "PowStep",
]

_F32 = jnp.float32


class DeviceVariation(NamedTuple):
    """Per-device parameters sampled once (device-to-device variation); arrays of one shape.

    dw_scale: multiplier of ``dw_min`` for this device (>= 0).
    up_down: this device's asymmetry (``Device.up_down`` plus its spread).
    g_min / g_max: this device's bounds.
    stuck_on / stuck_off: boolean masks of devices stuck at ``g_max`` / ``g_min``.
    """

    dw_scale: jax.Array
    up_down: jax.Array
    g_min: jax.Array
    g_max: jax.Array
    stuck_on: jax.Array
    stuck_off: jax.Array


def check_numbers(obj, names) -> None:
    """Refuse a field of ``obj`` among ``names`` that is not a finite Python number."""
    for name in names:
        v = getattr(obj, name)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            raise TypeError(f"{type(obj).__name__}: {name}={v!r} must be a finite Python number")


def _check_nonneg(name: str, value: float, cls: str) -> None:
    if (
        not isinstance(value, (int, float))
        or isinstance(value, bool)
        or not math.isfinite(value)
        or value < 0
    ):
        raise ValueError(f"{cls}: {name}={value!r} must be a finite number >= 0")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Device:
    """Parameters shared by every pulsed device model (see the module docstring).

    Attributes:
      dw_min: conductance step of one pulse at mid-range, in conductance units (> 0).
      up_down: up/down asymmetry in (-1, 1); up steps ``dw_min(1+up_down)``, down ``dw_min(1-up_down)``.
      g_min, g_max: conductance bounds.
      dw_min_dtod: device-to-device relative spread of the step size.
      up_down_dtod: device-to-device spread of the asymmetry (absolute).
      bounds_dtod: device-to-device relative spread of the range ``g_max - g_min``.
      dw_min_std: cycle-to-cycle relative noise of each pulse's step.
      stuck_on, stuck_off: fractions of devices stuck at ``g_max`` / ``g_min``.
    """

    dw_min: float = 0.001
    up_down: float = 0.0
    g_min: float = 0.0
    g_max: float = 1.0
    dw_min_dtod: float = 0.0
    up_down_dtod: float = 0.0
    bounds_dtod: float = 0.0
    dw_min_std: float = 0.0
    stuck_on: float = 0.0
    stuck_off: float = 0.0

    def __post_init__(self):
        cls = type(self).__name__
        check_numbers(self, [f.name for f in dataclasses.fields(Device)])
        if not self.g_max > self.g_min:
            raise ValueError(
                f"{cls}: need g_max > g_min, got g_min={self.g_min}, g_max={self.g_max}"
            )
        if not 0 < self.dw_min < (self.g_max - self.g_min):
            raise ValueError(
                f"{cls}: dw_min={self.dw_min!r} must be in (0, g_max - g_min = "
                f"{self.g_max - self.g_min})"
            )
        if not -1 < self.up_down < 1:
            raise ValueError(f"{cls}: up_down={self.up_down!r} must be in (-1, 1)")
        for name in ("dw_min_dtod", "up_down_dtod", "bounds_dtod", "dw_min_std"):
            _check_nonneg(name, getattr(self, name), cls)
        for name in ("stuck_on", "stuck_off"):
            v = getattr(self, name)
            if not 0 <= v <= 1:
                raise ValueError(f"{cls}: {name}={v!r} must be a fraction in [0, 1]")
        if self.stuck_on + self.stuck_off > 1:
            raise ValueError(f"{cls}: stuck_on + stuck_off = {self.stuck_on + self.stuck_off} > 1")

    # -- the model: subclasses give the noise-free response of x in [0, 1] to n >= 0 up pulses
    def _up(self, x: jax.Array, n: jax.Array, a: jax.Array) -> jax.Array:
        raise NotImplementedError

    def _down(self, x: jax.Array, n: jax.Array, a: jax.Array) -> jax.Array:
        raise NotImplementedError

    def _reference_shift(self, var: DeviceVariation, rng: jax.Array) -> jax.Array | None:
        """Where the model's curves are centred, as a shift of the position ``x``: None (the
        default) evaluates ``_up`` and ``_down`` at ``x`` itself, so a device whose range
        is spread keeps its curve's shape over its own range. A model whose curves are
        tied to a fixed conductance instead (:class:`analog.ExpFitStep`, after aihwkit's
        ``ExpStepDevice``) returns ``h``: the curves then see ``x + h``."""
        return None

    def _curves(self, var: DeviceVariation, rng: jax.Array):
        """``(up, down)``: :meth:`_up` and :meth:`_down` in this device's position ``x``,
        moved by :meth:`_reference_shift` where the model asks for it (down in the mirrored
        coordinate ``1 - x``, where the shift changes sign)."""
        h = self._reference_shift(var, rng)
        if h is None:
            return self._up, self._down
        return (
            lambda x, n, a: self._up(x + h, n, a) - h,
            lambda x, n, a: self._down(x - h, n, a) + h,
        )

    @property
    def range(self) -> float:
        return self.g_max - self.g_min

    def nominal_variation(self, shape: tuple[int, ...]) -> DeviceVariation:
        """Every device at the nominal parameters (no device-to-device variation, none stuck)."""
        return DeviceVariation(
            dw_scale=jnp.ones(shape, _F32),
            up_down=jnp.full(shape, self.up_down, _F32),
            g_min=jnp.full(shape, self.g_min, _F32),
            g_max=jnp.full(shape, self.g_max, _F32),
            stuck_on=jnp.zeros(shape, bool),
            stuck_off=jnp.zeros(shape, bool),
        )

    def sample_variation(self, key: jax.Array, shape: tuple[int, ...]) -> DeviceVariation:
        """Draw the per-device parameters once (aihwkit's ``*_dtod`` semantics, Gaussian).

        The step scale is truncated at 0 (a device cannot step backwards), the range scale at
        0.1 of nominal, and the asymmetry to (-0.99, 0.99).
        """
        if not (
            self.dw_min_dtod
            or self.up_down_dtod
            or self.bounds_dtod
            or self.stuck_on
            or self.stuck_off
        ):
            return self.nominal_variation(shape)  # nothing to draw (and nothing to compile)
        # Two draws in all: random-number kernels dominate compile time on CPU.
        kz, ku = jax.random.split(key)
        z = jax.random.normal(kz, (3, *shape), _F32)
        dw_scale = jnp.maximum(1.0 + self.dw_min_dtod * z[0], 0.0)
        up_down = jnp.clip(self.up_down + self.up_down_dtod * z[1], -0.99, 0.99)
        rng_scale = jnp.maximum(1.0 + self.bounds_dtod * z[2], 0.1)
        g_min = jnp.full(shape, self.g_min, _F32)
        g_max = g_min + self.range * rng_scale
        u = jax.random.uniform(ku, shape, _F32)
        stuck_on = u < self.stuck_on
        stuck_off = (u >= self.stuck_on) & (u < self.stuck_on + self.stuck_off)
        return DeviceVariation(dw_scale, up_down, g_min, g_max, stuck_on, stuck_off)

    def clip(self, g: jax.Array, variation: DeviceVariation | None = None) -> jax.Array:
        """Clip to each device's bounds and hold stuck devices at their stuck value."""
        var = self.nominal_variation(g.shape) if variation is None else variation
        g = jnp.clip(g, var.g_min, var.g_max)
        return jnp.where(var.stuck_on, var.g_max, jnp.where(var.stuck_off, var.g_min, g))

    def step(
        self,
        g: jax.Array,
        n_pulses: jax.Array,
        key: jax.Array | None = None,
        *,
        variation: DeviceVariation | None = None,
    ) -> jax.Array:
        """Conductance after ``n_pulses`` programming pulses (signed; elementwise).

        Args:
          g: float32 conductances, any shape.
          n_pulses: pulse counts broadcastable to ``g`` (integers stored in any numeric dtype);
            positive potentiates, negative depresses.
          key: PRNG key for cycle-to-cycle noise; required when ``dw_min_std > 0``.
          variation: per-device parameters from :meth:`sample_variation` (nominal if None).

        Returns:
          float32 conductances of ``g``'s shape, inside the bounds.
        """
        if self.dw_min_std > 0:
            bbcore.require_key(
                key,
                f"{type(self).__name__}.step",
                f"dw_min_std={self.dw_min_std} > 0 draws cycle-to-cycle noise",
            )
        return _step(self, jnp.asarray(g), jnp.asarray(n_pulses), key, variation)

    def _step_impl(self, g, n_pulses, key, variation, noise=None):
        g = g.astype(_F32)
        n = jnp.broadcast_to(n_pulses.astype(_F32), g.shape)
        var = self.nominal_variation(g.shape) if variation is None else variation
        rng = var.g_max - var.g_min
        x0 = jnp.clip((g - var.g_min) / rng, 0.0, 1.0)
        base = self.dw_min * var.dw_scale / rng
        a_up = base * (1.0 + var.up_down)
        a_down = base * (1.0 - var.up_down)
        m = jnp.abs(n)
        up, down = self._curves(var, rng)
        x_up = up(x0, m, a_up)
        # Depression is the mirror image of potentiation seen from the upper bound.
        x_down = 1.0 - down(1.0 - x0, m, a_down)
        x = jnp.where(n > 0, x_up, jnp.where(n < 0, x_down, x0))
        if self.dw_min_std > 0:
            delta = jnp.abs(x - x0)
            if noise is None:  # analog.program passes unit Gaussians of its own generator
                noise = jax.random.normal(key, g.shape, _F32)
            x = x + self.dw_min_std * delta / jnp.sqrt(jnp.maximum(m, 1.0)) * noise
        x = jnp.clip(x, 0.0, 1.0)
        return self.clip(var.g_min + rng * x, var)

    def step_two(
        self,
        g: jax.Array,
        n_first: jax.Array,
        n_second: jax.Array,
        noise: jax.Array | None,
        variation: DeviceVariation,
        *,
        pot_first: bool,
    ) -> jax.Array:
        """Conductance after two pulse trains in one pass: ``n_first`` then ``n_second`` pulses.

        The noise-free response is exactly that of the two trains applied one after the other
        (the model's closed forms, clipped to the range after each train: :meth:`step` called
        twice). Cycle-to-cycle noise is one draw per device instead of one per train: the
        change gets ``dw_min_std * sqrt(D_1^2 / n_1 + D_2^2 / n_2) * noise`` for train changes
        ``D_k``, the summed variance of the two trains (exact for constant steps). This is the
        device pass of :func:`analog.pulse_update`'s fast path (``UpdateConfig(impl="fast")``),
        which gives every device its up and down counts at once.

        Args:
          g: float32 conductances, any shape.
          n_first, n_second: float32 pulse counts (>= 0) of ``g``'s shape.
          noise: zero-mean, unit-variance values of ``g``'s shape, one per device; may be None
            when ``dw_min_std == 0``.
          variation: per-device parameters (:meth:`sample_variation`).
          pot_first: the first train potentiates and the second depresses (else the reverse).

        Returns:
          float32 conductances of ``g``'s shape, inside the bounds.
        """
        var = variation
        rng = var.g_max - var.g_min
        x0 = jnp.clip((g - var.g_min) / rng, 0.0, 1.0)
        base = self.dw_min * var.dw_scale / rng
        a_up = base * (1.0 + var.up_down)
        a_down = base * (1.0 - var.up_down)
        up, down = self._curves(var, rng)
        if pot_first:
            x1 = jnp.clip(up(x0, n_first, a_up), 0.0, 1.0)
            x2 = 1.0 - down(1.0 - x1, n_second, a_down)
        else:
            x1 = jnp.clip(1.0 - down(1.0 - x0, n_first, a_down), 0.0, 1.0)
            x2 = up(x1, n_second, a_up)
        if self.dw_min_std > 0:
            assert noise is not None, "Device.step_two: dw_min_std > 0 needs noise"
            d1, d2 = x1 - x0, x2 - x1
            v = d1 * d1 / jnp.maximum(n_first, 1.0) + d2 * d2 / jnp.maximum(n_second, 1.0)
            x2 = x2 + self.dw_min_std * jnp.sqrt(v) * noise
        x2 = jnp.clip(x2, 0.0, 1.0)
        return self.clip(var.g_min + rng * x2, var)


# Compiled once per device configuration and shape; op-by-op dispatch is far slower on CPU.
@functools.partial(jax.jit, static_argnums=0)
def _step(device, g, n, key, variation):
    return device._step_impl(g, n, key, variation)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ConstantStep(Device):
    """Every pulse moves the conductance by the same step (aihwkit ``ConstantStepDevice``).

    Closed form (x in [0, 1], a = dw_min (1 +- up_down) / (g_max - g_min)):
    ``x_n = clip(x_0 + n a)`` for n up pulses, ``x_n = clip(x_0 - n a)`` for n down pulses.
    """

    def _up(self, x, n, a):
        return x + n * a

    _down = _up

    def step_two(self, g, n_first, n_second, noise, variation, *, pot_first: bool):
        # Device.step_two in conductance units: no division, so XLA:CPU fuses the whole pass
        # into one loop (same result up to float rounding).
        var = variation
        g0 = jnp.clip(g, var.g_min, var.g_max)
        s = self.dw_min * var.dw_scale
        s_up = s * (1.0 + var.up_down)
        s_down = s * (1.0 - var.up_down)
        if pot_first:
            g1 = jnp.clip(g0 + n_first * s_up, var.g_min, var.g_max)
            g2 = g1 - n_second * s_down
        else:
            g1 = jnp.clip(g0 - n_first * s_down, var.g_min, var.g_max)
            g2 = g1 + n_second * s_up
        if self.dw_min_std > 0:
            d1, d2 = g1 - g0, g2 - g1
            v = d1 * d1 / jnp.maximum(n_first, 1.0) + d2 * d2 / jnp.maximum(n_second, 1.0)
            g2 = g2 + self.dw_min_std * jnp.sqrt(v) * noise
        return self.clip(g2, var)


@dataclasses.dataclass(frozen=True, kw_only=True)
class _CurveStep(Device):
    """A device whose up and down responses are one closed-form pulse-response curve,
    ``_curve(x, n, a, gamma)``, with an exponent per direction (``gamma_up``, ``gamma_down``,
    fields of the subclass; each checked by ``_check_gamma``, by default nonzero)."""

    def __post_init__(self):
        super().__post_init__()
        for name in ("gamma_up", "gamma_down"):
            g = getattr(self, name)
            _check_nonneg(name, g, type(self).__name__)
            self._check_gamma(name, g)

    def _check_gamma(self, name: str, g: float) -> None:
        if g == 0:
            raise ValueError(f"{type(self).__name__}: {name}=0; use ConstantStep instead")

    def _up(self, x, n, a):
        return self._curve(x, n, a, self.gamma_up)

    def _down(self, x, n, a):
        return self._curve(x, n, a, self.gamma_down)


@dataclasses.dataclass(frozen=True, kw_only=True)
class LinearStep(_CurveStep):
    """Step size falls linearly with the conductance (aihwkit ``LinearStepDevice``).

    One up pulse at x: ``dx = a (1 - gamma_up (2x - 1))`` (``a`` at mid-range, smaller near the
    top); down pulses mirror this with ``gamma_down``. ``gamma`` in [0, 1]: 0 is a constant step,
    1 soft bounds (the step vanishes exactly at the bound). The recurrence is affine, so n pulses have
    the closed form ``x_n = x* + (x_0 - x*) (1 - 2 a gamma)^n`` with ``x* = (1 + gamma) / (2 gamma)``
    (``x_0 + n a`` when gamma = 0), clipped to [0, 1].
    """

    gamma_up: float = 0.0
    gamma_down: float = 0.0

    def _check_gamma(self, name: str, g: float) -> None:
        if g > 1:
            raise ValueError(
                f"{type(self).__name__}: {name}={g} > 1 would make the step "
                "change sign inside the range (a depressing pulse raising the "
                "conductance); use gamma in [0, 1] (1 = SoftBounds)"
            )
        a = self.dw_min * (1 + abs(self.up_down)) / self.range
        if 2 * a * g >= 1:
            raise ValueError(
                f"{type(self).__name__}: {name}={g} with dw_min={self.dw_min} "
                "makes 2 a gamma >= 1 (one pulse overshoots its fixed point); "
                "use a smaller step or gamma"
            )

    @staticmethod
    def _curve(x, n, a, gamma):
        if gamma == 0:
            return x + n * a
        x_star = (1.0 + gamma) / (2.0 * gamma)
        return x_star + (x - x_star) * jnp.power(1.0 - 2.0 * a * gamma, n)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SoftBounds(LinearStep):
    """Step proportional to the distance to the bound (aihwkit ``SoftBoundsDevice``).

    ``LinearStep`` with ``gamma_up = gamma_down = 1``: ``dx_up = 2 a (1 - x)``,
    ``dx_down = 2 a x``; n up pulses give ``x_n = 1 - (1 - x_0)(1 - 2a)^n``, n down pulses
    ``x_n = x_0 (1 - 2a)^n``. The bounds are approached, never crossed.
    """

    gamma_up: float = dataclasses.field(default=1.0, init=False)
    gamma_down: float = dataclasses.field(default=1.0, init=False)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExpStep(_CurveStep):
    """Step size falls exponentially as the conductance rises (saturating ReRAM-like response).

    Pulse-response curve from ``dx/dp = a exp(-gamma_up (x - 1/2))`` (``a`` at mid-range), so
    n up pulses give exactly ``x_n = 1/2 + ln(exp(gamma (x_0 - 1/2)) + a gamma n) / gamma``;
    down pulses mirror it with ``gamma_down``. Captures the qualitative shape of aihwkit's
    ``ExpStepDevice`` fit to ReRAM data (Gong et al., Nat. Commun. 9, 2102, 2018) with a response
    that composes exactly; ``gamma`` -> 0 is a constant step.
    """

    gamma_up: float = 3.0
    gamma_down: float = 3.0

    @staticmethod
    def _curve(x, n, a, gamma):
        return 0.5 + jnp.log(jnp.exp(gamma * (x - 0.5)) + a * gamma * n) / gamma


@dataclasses.dataclass(frozen=True, kw_only=True)
class PowStep(_CurveStep):
    """Step proportional to a power of the distance to the bound (aihwkit ``PowStepDevice``).

    ``dx_up/dp = a (2 (1 - x))^gamma_up`` (``a`` at mid-range; PCM-like for gamma < 1: steep
    until close to the bound). With ``y = 1 - x`` the exact solution after n pulses is
    ``y_n = max(y_0^(1-gamma) - (1-gamma) a 2^gamma n, 0)^(1/(1-gamma))`` (gamma != 1) and
    ``y_n = y_0 exp(-2 a n)`` (gamma = 1); down pulses mirror it with ``gamma_down``.
    """

    gamma_up: float = 0.5
    gamma_down: float = 0.5

    @staticmethod
    def _curve(x, n, a, gamma):
        y = 1.0 - x
        if gamma == 1.0:
            y_n = y * jnp.exp(-2.0 * a * n)
        else:
            e = 1.0 - gamma
            # y = 0 with gamma > 1 gives inf ** negative = 0: the bound stays the bound.
            base = jnp.power(y, e) - e * a * (2.0**gamma) * n
            y_n = jnp.power(jnp.maximum(base, 0.0), 1.0 / e)
        return 1.0 - y_n
