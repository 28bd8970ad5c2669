"""Which TAOX_RERAM non-ideality stops the DESIGN.md chain short of 90% (issue 7).

The chain's ``taox-mp`` variant (weight-perturbation forward gradient, K=4 -> radix-4 FP4 ->
SGD 2e-3 -> ``program(device, mixed_precision=True)``) with one property of the preset removed at
a time; everything else as :mod:`composition_chain` (same MLP, data order and seed). Writes
``benchmarks/results/<out>.json`` and ``.png``.

    python benchmarks/composition_chain_ablation.py --steps 4000 --eval-every 2000 \\
        --batch-size 2048 --out composition_chain_ablation
"""

from __future__ import annotations

import dataclasses

import composition_chain as cc

import analog

T = analog.presets.TAOX_RERAM
#: the preset with one property changed, by the name the variants (and the JSON) use.
DEVICES = {
    "TAOX_NO_C2C": dataclasses.replace(T, dw_min_std=0.0),
    "TAOX_NO_STUCK": dataclasses.replace(T, stuck_on=0.0, stuck_off=0.0),
    "TAOX_NO_DTOD": dataclasses.replace(T, dw_min_dtod=0.0, up_down_dtod=0.0, bounds_dtod=0.0),
    "TAOX_SYM": dataclasses.replace(T, up_down=0.0, up_down_dtod=0.0),
    # the exponential step replaced by a constant one, every other parameter kept
    "TAOX_CONSTANT_STEP": analog.ConstantStep(
        **{f.name: getattr(T, f.name) for f in dataclasses.fields(analog.Device)}
    ),
    "TAOX_FINE": dataclasses.replace(T, dw_min=T.dw_min / 10),
}
VARIANTS = {
    "taox-mp": "TAOX_RERAM",
    "taox-mp-no-c2c": "TAOX_NO_C2C",
    "taox-mp-no-stuck": "TAOX_NO_STUCK",
    "taox-mp-no-dtod": "TAOX_NO_DTOD",
    "taox-mp-symmetric": "TAOX_SYM",
    "taox-mp-constant-step": "TAOX_CONSTANT_STEP",
    "taox-mp-fine-step": "TAOX_FINE",
}


def main(argv=None):
    """The ablation table through composition_chain's loop (its module is not modified)."""
    variants = {k: dict(lr=2e-3, device=v, mp=True) for k, v in VARIANTS.items()}
    cc.main(argv, variants=variants, devices=DEVICES, out="composition_chain_ablation")


if __name__ == "__main__":
    main()
