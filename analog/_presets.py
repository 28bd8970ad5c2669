"""Device and IO presets: values, not subclasses; each names where its numbers come from.

Conductances are normalised to ``[0, 1]`` (``g_min = 0``, ``g_max = 1``). aihwkit states its
device parameters on a weight range ``[w_min, w_max]`` (usually ``[-1, 1]``, width 2) with one
device per weight; here one device is one half of a differential pair, so an aihwkit ``dw_min``
is divided by the width of its range to give the fraction of the conductance range used below.
aihwkit's ``dw_min_std`` is a per-pulse relative spread, the same semantics as here.

Where a publication does not give a parameter, the value is marked "assumed" in its comment.
"""

from __future__ import annotations

import dataclasses

from analog._devices import ConstantStep, ExpStep, LinearStep, PowStep, SoftBounds
from analog._periphery import IOConfig

__all__ = [
    "IDEAL",
    "TAOX_RERAM",
    "RERAM_SOFTBOUNDS",
    "PCM",
    "ECRAM",
    "CAPACITOR",
    "TAOX_IO",
    "DEVICES",
]

#: An idealised, perfectly symmetric device with a million levels and no variation or noise:
#: programming is exact up to ~1e-6 of the range, well below what float32 training resolves at
#: typical weight magnitudes. Used for "ideal devices" baselines (analog-eqprop). It is aihwkit's
#: ``IdealizedPresetDevice`` (after Gokmen & Vlasov, Front. Neurosci. 2016) with its device
#: variation and noise removed and 100x more states.
IDEAL = ConstantStep(dw_min=1e-6)

#: TaOx ReRAM in the spirit of Yi, Kendall, Williams, Kumar, Nature Electronics 6, 45-51 (2023),
#: who train on 64x64 TaOx 1T1R crossbars with a differential weight encoding. The paper gives no
#: aihwkit-style parameter table, so the response shape and spreads follow aihwkit's ReRAM
#: exp-step fit (``ReRamESPresetDevice``, to Gong et al., Nat. Commun. 9, 2102, 2018):
#: dw_min 0.00135 / 2 of the range, up_down 0.26, dw_min_dtod 0.2, up_down_dtod 0.05, range spread
#: 0.3. We keep a coarser step (about 6-7 bits, 100 levels: assumed, typical of analog ReRAM
#: arrays reported by the Kumar group), gamma 2 (assumed, milder than aihwkit's fit), cycle-to-cycle
#: noise 0.5 per pulse (assumed; aihwkit's ES fit is far noisier per pulse at a 50x smaller step),
#: and 0.5% stuck-on plus 0.5% stuck-off devices (assumed; yield figures of that order are common
#: for 1T1R arrays).
TAOX_RERAM = ExpStep(
    dw_min=0.01,
    up_down=0.1,
    gamma_up=2.0,
    gamma_down=2.0,
    dw_min_dtod=0.2,
    up_down_dtod=0.05,
    bounds_dtod=0.1,
    dw_min_std=0.5,
    stuck_on=0.005,
    stuck_off=0.005,
)

#: aihwkit ``ReRamSBPresetDevice`` (soft bounds, loose fit to Gong et al., Nat. Commun. 2018):
#: dw_min 0.002 on a range of width 2 -> 0.001; dw_min_dtod 0.3; up_down_dtod 0.01; range spread
#: about 0.3/2 -> 0.15 (assumed average of its 0.24 / 0.4 bound spreads on a shifted range);
#: dw_min_std 3.75 per pulse.
RERAM_SOFTBOUNDS = SoftBounds(
    dw_min=0.001, up_down=0.0, dw_min_dtod=0.3, up_down_dtod=0.01, bounds_dtod=0.15, dw_min_std=3.75
)

#: Phase-change memory: fast, abrupt potentiation saturating near the top and strongly asymmetric.
#: aihwkit's ``PCMPresetDevice`` (fit to Nandakumar et al., J. Appl. Phys. 124, 152135, 2018) is a
#: piecewise-step model; here a power-step approximation: gamma 0.5 (assumed), dw_min 0.02 of
#: range (about 50 levels, of the order reported by Nandakumar et al.), up_down 0.4 (assumed; PCM
#: RESET is abrupt), dw_min_dtod 0.3 and per-pulse noise 1.0 (PCM programming noise is large).
PCM = PowStep(
    dw_min=0.02,
    up_down=0.4,
    gamma_up=0.5,
    gamma_down=0.5,
    dw_min_dtod=0.3,
    up_down_dtod=0.05,
    bounds_dtod=0.1,
    dw_min_std=1.0,
)

#: The spreads aihwkit's two linear-step presets below share (``EcRamPresetDevice`` and
#: ``CapacitorPresetDevice``): dw_min_dtod 0.1 and dw_min_std 0.3; each preset replaces the rest.
_AIHWKIT_LINEAR = LinearStep(dw_min_dtod=0.1, dw_min_std=0.3)

#: Lithium ECRAM, aihwkit ``EcRamPresetDevice`` (fit to Tang et al., IEDM 2018): dw_min 0.002 on
#: a range of width 2 -> 0.001, gamma_up 0.1153, gamma_down 0.5085, dw_min_dtod 0.1,
#: up_down_dtod 0.01, bound spread 0.05, dw_min_std 0.3.
ECRAM = dataclasses.replace(
    _AIHWKIT_LINEAR,
    dw_min=0.001,
    gamma_up=0.1153,
    gamma_down=0.5085,
    up_down_dtod=0.01,
    bounds_dtod=0.05,
)

#: CMOS capacitor cell, aihwkit ``CapacitorPresetDevice`` (fit to Li et al., VLSI 2018):
#: dw_min 0.005 on width 2 -> 0.0025, gamma 0.05 both ways, dw_min_dtod 0.1, up_down_dtod 0.06,
#: bound spread 0.07, dw_min_std 0.3. (Leakage is not modelled.)
CAPACITOR = dataclasses.replace(
    _AIHWKIT_LINEAR,
    dw_min=0.0025,
    gamma_up=0.05,
    gamma_down=0.05,
    up_down_dtod=0.06,
    bounds_dtod=0.07,
)

#: Periphery for the TaOx experiments: 8-bit DAC on inputs in [-1, 1] and 8-bit ADC (Yi et al.
#: 2023 digitise with 8-bit-class converters on their test board: assumed from the paper's
#: measurement set-up), output bound 4 per 64-row tile (assumed: in weight x input units, above
#: the partial sums of a trained 784-500-10 network's tiles) and additive read noise of 0.01 per
#: tile output (assumed, about 1% of a typical column current).
TAOX_IO = IOConfig(inp_bits=8, inp_bound=1.0, out_bits=8, out_bound=4.0, read_noise=0.01)

#: Every device preset above by its name (what ``beyondbp`` rows and benchmarks look up).
DEVICES = {
    "IDEAL": IDEAL,
    "TAOX_RERAM": TAOX_RERAM,
    "RERAM_SOFTBOUNDS": RERAM_SOFTBOUNDS,
    "PCM": PCM,
    "ECRAM": ECRAM,
    "CAPACITOR": CAPACITOR,
}
