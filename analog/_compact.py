"""The compact device state: 16-bit conductances and 8-bit device-to-device codes.

The full-precision state touches 26 bytes per device on every pulsed update (a float32
conductance read and written, four float32 parameters and two stuck flags read), the traffic
that BENCHMARKS.md ("Simulation throughput, side by side with aihwkit") found to bound the
update. The compact state (issue 17, item 4) stores the same device in at most 5 bytes:

* the conductance as a uint16 fixed-point code, ``g = g_min + lsb * code`` with
  ``lsb = (g_max - g_min) * headroom / 65535`` (``headroom`` covers the largest device bound
  of the spread), so one code step is a fixed fraction of the range, not of the value as in a
  float16 (whose 11 bits cannot resolve aihwkit's step of 1/1200 of the range near the top);
* each device-to-device parameter that varies (step scale, asymmetry, bound) as the int8 code
  of its standard-normal draw ``z``, ``round(32 z)`` clipped to +-126 (+-3.94 standard
  deviations); stuck devices are two reserved codes of the step scale; a parameter without a
  spread on this device model stores nothing.

The codes are an encoding of :meth:`analog.Device.sample_variation`'s draws, so a compact state
is the full-precision state of the same key up to 1/64 of a standard deviation per parameter.
An update runs the model's own :meth:`analog.Device.step_two` in float32 on the codes, and
writes the change back by stochastic rounding, ``code += floor(dc + u)`` with a uniform ``u``
per device and update: the expected change is exact, the rounding adds a variance of at most
a quarter of a code per update, bounds and stuck devices are kept exactly. What this
keeps, with the tests that check it (tests/test_analog_compact.py): mean step and
step-to-step noise, device-to-device spread, bounds and the closed-form responses.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from analog._devices import ConstantStep, Device, DeviceVariation

__all__ = ["CompactVariation"]

_F32 = jnp.float32
_I32 = jnp.int32
#: standard deviations per code step of an int8 parameter code
_Z_STEP = 1.0 / 32.0
#: largest |code| of a parameter (3.94 standard deviations)
_Z_MAX = 126
#: reserved step-scale codes of stuck devices
_STUCK_OFF, _STUCK_ON = -128, -127
#: largest conductance code (uint16)
_CODES = 65535
#: one nominal step must span at least this many conductance codes
_MIN_STEP_CODES = 16


class CompactVariation(NamedTuple):
    """Per-device parameters as int8 codes of their normal draws (None where nothing varies).

    dw: ``round(32 z)`` of the step-scale draw (``dw_scale = max(1 + dw_min_dtod z, 0)``);
      -128 marks a device stuck off, -127 one stuck on. Stored when ``dw_min_dtod`` or a stuck
      fraction is nonzero.
    up_down: code of the asymmetry draw (``up_down + up_down_dtod z``); when ``up_down_dtod > 0``.
    bound: code of the range draw (``g_max = g_min + range max(1 + bounds_dtod z, 0.1)``, then
      onto the conductance grid); when ``bounds_dtod > 0``.
    """

    dw: jax.Array | None
    up_down: jax.Array | None
    bound: jax.Array | None


def _has_stuck(device: Device) -> bool:
    return device.stuck_on > 0 or device.stuck_off > 0


def headroom(device: Device) -> float:
    """The largest device range of the spread, in units of the nominal range."""
    return 1.0 + device.bounds_dtod * _Z_MAX * _Z_STEP


def conductance_lsb(device: Device) -> float:
    """One conductance code step (the resolution of the 16-bit conductance)."""
    return device.range * headroom(device) / _CODES


def check_compact(device: Device) -> None:
    """Refuse a device whose step the 16-bit conductance cannot resolve."""
    lsb = conductance_lsb(device)
    if device.dw_min < _MIN_STEP_CODES * lsb:
        raise ValueError(
            f"compact state: {type(device).__name__} dw_min={device.dw_min!r} is "
            f"{device.dw_min / lsb:.3g} conductance codes (range x {headroom(device):.3g} / 65535 "
            f"= {lsb:.3g} each); a 16-bit conductance needs a step of at least "
            f"{_MIN_STEP_CODES} codes: use the full-precision state (compact=False)"
        )


def _code(z: jax.Array, lo: float = -_Z_MAX, hi: float = _Z_MAX) -> jax.Array:
    lo, hi = max(math.ceil(lo), -_Z_MAX), min(math.floor(hi), _Z_MAX)
    return jnp.clip(jnp.round(z / _Z_STEP), lo, hi).astype(jnp.int8)


def _z(code: jax.Array) -> jax.Array:
    return code.astype(_F32) * _F32(_Z_STEP)


def encode_variation(device: Device, var: DeviceVariation) -> CompactVariation:
    """Codes of the draws behind ``var`` (from :meth:`analog.Device.sample_variation`).

    The truncations of the draws (step scale at 0, range scale at 0.1, asymmetry at +-0.99)
    are applied here, to the codes, so that decoding needs no clamp.
    """
    dw = up_down = bound = None
    if device.dw_min_dtod > 0 or _has_stuck(device):
        dtod = device.dw_min_dtod
        z = (var.dw_scale - 1.0) / dtod if dtod > 0 else jnp.zeros_like(var.dw_scale)
        dw = _code(z, lo=-1.0 / (dtod * _Z_STEP) if dtod > 0 else 0.0)
        dw = jnp.where(var.stuck_off, jnp.int8(_STUCK_OFF), dw)
        dw = jnp.where(var.stuck_on, jnp.int8(_STUCK_ON), dw)
    if device.up_down_dtod > 0:
        step = device.up_down_dtod * _Z_STEP
        up_down = _code(
            (var.up_down - device.up_down) / device.up_down_dtod,
            lo=(-0.99 - device.up_down) / step,
            hi=(0.99 - device.up_down) / step,
        )
    if device.bounds_dtod > 0:
        range_scale = (var.g_max - var.g_min) / device.range
        bound = _code(
            (range_scale - 1.0) / device.bounds_dtod, lo=-0.9 / (device.bounds_dtod * _Z_STEP)
        )
    return CompactVariation(dw, up_down, bound)


def _code_device(device: Device) -> Device:
    """The device model in conductance codes: ``g_min = 0``, the nominal range in codes.

    Every model's response depends on the conductance only through its position in the range
    and on ``dw_min`` only through ``dw_min / range``, so the model runs unchanged on codes.
    """
    lsb = conductance_lsb(device)
    return dataclasses.replace(
        device, dw_min=device.dw_min / lsb, g_min=0.0, g_max=_CODES / headroom(device)
    )


def _top(device: Device, cv: CompactVariation, shape: tuple[int, ...]) -> jax.Array:
    """Each device's upper bound in codes, a float32 integer (its lower bound is code 0)."""
    nominal = _CODES / headroom(device)
    if cv.bound is None:
        return jnp.full(shape, math.floor(nominal), _F32)
    step = _F32(nominal * device.bounds_dtod * _Z_STEP)
    return jnp.floor(_F32(nominal) + step * cv.bound.astype(_F32))


def bound_codes(device: Device, cv: CompactVariation, shape: tuple[int, ...]) -> jax.Array:
    """Each device's upper bound as a conductance code (int32; its lower bound is code 0)."""
    return _top(device, cv, shape).astype(_I32)


def _stuck(cv: CompactVariation) -> tuple[jax.Array | None, jax.Array | None]:
    if cv.dw is None:
        return None, None
    return cv.dw == _STUCK_ON, cv.dw == _STUCK_OFF


def _code_variation(device: Device, cv: CompactVariation, shape: tuple[int, ...]):
    """The per-device parameters in conductance codes (float32; no clamp, see the encoder)."""
    full = lambda v, dtype=_F32: jnp.full(shape, v, dtype)
    dw_scale = full(1.0)
    if cv.dw is not None and device.dw_min_dtod > 0:
        dw_scale = 1.0 + _F32(device.dw_min_dtod) * _z(cv.dw)
    up_down = full(device.up_down)
    if cv.up_down is not None:
        up_down = device.up_down + _F32(device.up_down_dtod) * _z(cv.up_down)
    on, off = _stuck(cv)
    return DeviceVariation(
        dw_scale,
        up_down,
        full(0.0),
        _top(device, cv, shape),
        full(False, bool) if on is None else on,
        full(False, bool) if off is None else off,
    )


def decode_variation(
    device: Device, cv: CompactVariation, shape: tuple[int, ...]
) -> DeviceVariation:
    """The float32 per-device parameters the codes stand for (bounds on the conductance grid)."""
    var = _code_variation(device, cv, shape)
    lsb = _F32(conductance_lsb(device))
    return var._replace(g_min=var.g_min + device.g_min, g_max=device.g_min + lsb * var.g_max)


def encode_conductance(device: Device, g: jax.Array, cv: CompactVariation) -> jax.Array:
    """uint16 codes of float32 conductances, to the nearest code inside each device's bounds
    (write-and-verify to the closest level); stuck devices at their bound codes."""
    top = _top(device, cv, g.shape)
    code = jnp.clip(jnp.round((g - device.g_min) * _F32(1.0 / conductance_lsb(device))), 0.0, top)
    on, off = _stuck(cv)
    if on is not None and off is not None:
        code = jnp.where(on, top, jnp.where(off, 0.0, code))
    return code.astype(jnp.uint16)


def decode_conductance(device: Device, code: jax.Array) -> jax.Array:
    """float32 conductances of uint16 codes."""
    return device.g_min + _F32(conductance_lsb(device)) * code.astype(_F32)


def dither(bits: jax.Array) -> jax.Array:
    """Uniform values in (0, 1) from the low 16 bits of uint32 words (stochastic rounding)."""
    return ((bits & 0xFFFF).astype(_F32) + 0.5) * _F32(2.0**-16)


def step_two_compact(
    device: Device,
    code: jax.Array,
    n_first: jax.Array,
    n_second: jax.Array,
    noise: jax.Array | None,
    cv: CompactVariation,
    u: jax.Array,
    *,
    pot_first: bool,
) -> jax.Array:
    """:meth:`analog.Device.step_two` on compact devices: uint16 codes in, uint16 codes out.

    The model runs in float32 on the codes themselves (:func:`_code_device`); the change goes
    back as ``code + floor(dc + u)`` (``u`` uniform in (0, 1), one per device: the expected new
    code is exact). The change, not the new value, is rounded, so a device that received no
    pulse keeps its code exactly (whatever the float32 rounding of its model's curve), and so does a stuck device (the model holds it at its bound
    code, an integer). Codes below 65536 are exact in float32.
    """
    var = _code_variation(device, cv, code.shape)
    c = code.astype(_F32)
    if type(device) is ConstantStep:
        stuck = None if cv.dw is None else cv.dw <= _STUCK_ON  # the two lowest codes
        return _constant_step_codes(device, c, n_first, n_second, noise, var, u, pot_first, stuck)
    c2 = _code_device(device).step_two(c, n_first, n_second, noise, var, pot_first=pot_first)
    # a curve's closed form at n = 0 (exp then log, powers) returns x to a few float32 ulps
    # only; rounded stochastically that would become a random walk of whole codes
    dc = jnp.where(n_first + n_second > 0, jnp.floor(c2 - c + u), 0.0)
    return jnp.clip(c + dc, 0.0, var.g_max).astype(jnp.uint16)


# Minimum and maximum as one compare and select: jnp.minimum and jnp.maximum propagate NaN,
# which costs XLA:CPU several instructions per element on x86; codes, counts and noise here
# are finite.
def _lower(a, b):
    return jnp.where(b < a, b, a)


def _higher(a, b):
    return jnp.where(b > a, b, a)


def _constant_step_codes(device, c, n_first, n_second, noise, var, u, pot_first, stuck):
    """:meth:`analog.ConstantStep.step_two` on codes, each clip only where it can bind.

    The codes are inside their bounds, steps are >= 0 (the encoder truncates the draws), so a
    raising train can only reach the top and a lowering one only code 0; stuck devices sit at
    their bound codes, and keep them. Same result as the float32 model on the decoded state.
    """
    s = _F32(device.dw_min / conductance_lsb(device)) * var.dw_scale
    s_up, s_down = s + s * var.up_down, s - s * var.up_down
    top = var.g_max
    if pot_first:
        c1 = _lower(c + n_first * s_up, top)
        c2 = c1 - n_second * s_down
    else:
        c1 = _higher(c - n_first * s_down, _F32(0.0))
        c2 = c1 + n_second * s_up
    if device.dw_min_std > 0:
        assert noise is not None, "ConstantStep.step_two: dw_min_std > 0 needs noise"
        d1, d2 = c1 - c, c2 - c1
        m1, m2 = _higher(n_first, _F32(1.0)), _higher(n_second, _F32(1.0))
        v = (d1 * d1 * m2 + d2 * d2 * m1) / (m1 * m2)  # d1^2 / m1 + d2^2 / m2, one division
        c2 = c2 + _F32(device.dw_min_std) * jnp.sqrt(v) * noise
    new = _higher(_lower(c + jnp.floor(c2 - c + u), top), _F32(0.0))
    if stuck is not None:
        new = jnp.where(stuck, c, new)
    return new.astype(jnp.uint16)


def bytes_per_device(device: Device) -> int:
    """Bytes of compact state one device holds (2 for the conductance, 1 per stored code)."""
    stored = (
        device.dw_min_dtod > 0 or _has_stuck(device),
        device.up_down_dtod > 0,
        device.bounds_dtod > 0,
    )
    return 2 + sum(stored)
