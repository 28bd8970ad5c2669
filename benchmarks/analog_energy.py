"""Energy of one training step and one epoch of the 784-500-10 EqProp network on TaOx crossbars,
against digital estimates of the same step, from the transforms' own ledgers.

Runs ``--steps`` real training steps of the analog-eqprop-taox recipe on MNIST (read noise off
for speed; it does not change the counts) to measure programming pulses per step; relaxation
reads/conversions are counted by the estimator. Reports the arithmetic-only digital estimates
(FLOPs x 20 pJ) and, under ``with_data_movement``, the data-movement model of
``analog.DigitalEnergyModel`` with the analog periphery's own digital work (the size sweep is
benchmarks/analog_energy_scaling.py). Writes benchmarks/results/analog_energy.json.

    .venv/bin/python benchmarks/analog_energy.py --steps 100
"""

from __future__ import annotations

import argparse
import dataclasses

import _common
import jax
import jax.numpy as jnp
import numpy as np
import optax

import analog
from beyondbp import datasets
from beyondbp.methods import analog_rows as M


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=20)
    ap.add_argument("--data", default="mnist")
    _common.add_data_dir(ap)
    args = ap.parse_args()
    tr = datasets.load(args.data, "train", data_dir=args.data_dir)
    b = args.batch_size
    params = analog.init_energy_network(jax.random.key(0), (784, M.HIDDEN, 10))
    io = dataclasses.replace(analog.presets.TAOX_IO, read_noise=0.0)
    tx = optax.chain(
        analog.equilibrium_propagation(
            beta=M.BETA,
            free_steps=M.TAOX_FREE_STEPS,
            nudged_steps=M.TAOX_NUDGED_STEPS,
            io=io,
            tol=None,
        ),
        M.per_layer_sgd(2),
        analog.program(analog.presets.TAOX_RERAM, seed=1),
    )
    state = tx.init(params)

    @jax.jit
    def step(p, s, x, y):
        u, s = tx.update(None, s, p, batch=(x, y))
        return optax.apply_updates(p, u), s

    x_all = np.asarray(tr.images.reshape(len(tr), -1), np.float32) / 255.0
    for i in range(args.steps):
        sl = slice(i * b, (i + 1) * b)
        params, state = step(
            params, state, jnp.asarray(x_all[sl]), jnp.asarray(tr.labels[sl].astype(np.int32))
        )
    ledger = state[0].ledger + state[2].ledger._replace(steps=jnp.zeros((), jnp.float32))
    rep = analog.energy_report(ledger)
    steps_per_epoch = len(tr) // b
    sizes = (784, M.HIDDEN, 10)
    sweeps = M.TAOX_FREE_STEPS + 2 * M.TAOX_NUDGED_STEPS
    # data movement counted: a weight-stationary accelerator with a 16 MiB buffer (the network's
    # 1.6 MB of fp32 weights stay on chip), and the analog periphery's own digital work
    with_movement = {}
    for update in ("dense", "rank1"):
        r = analog.energy_report(ledger, network=sizes, batch=b, update=update)
        with_movement[f"update {update}"] = {
            "analog": r["analog"],
            "digital_backprop": {k: r["digital"][k] for k in ("compute", "sram", "dram", "total")},
            "ratio": r["ratio_with_data_movement"],
        }
    eq = analog.digital_joules(analog.digital_counts(sizes, b, algorithm="eqprop", sweeps=sweeps))
    with_movement["digital_eqprop_same_computation"] = eq
    with_movement["ratio_eqprop_same_computation_over_analog_dense"] = (
        eq["total"] / with_movement["update dense"]["analog"]["total"]
    )
    n_params = 784 * M.HIDDEN + M.HIDDEN + M.HIDDEN * 10 + 10
    backprop_flops = 6.0 * n_params * b  # forward 2, backward 4 FLOPs per weight per example
    model = analog.DEFAULT_ENERGY_MODEL
    out = {
        "network": f"784-{M.HIDDEN}-10 energy network, batch {b}, "
        f"{M.TAOX_FREE_STEPS}+2x{M.TAOX_NUDGED_STEPS} sweeps, 64x64 tiles, TAOX_RERAM",
        "measured_steps": args.steps,
        "per_step": rep,
        "per_epoch": {
            "steps": steps_per_epoch,
            "analog_j": rep["analog_j_per_step"] * steps_per_epoch,
            "digital_same_computation_j": rep["digital_j_per_step"] * steps_per_epoch,
            "digital_backprop_j": backprop_flops * model.e_digital_flop * steps_per_epoch,
        },
        "digital_backprop_j_per_step": backprop_flops * model.e_digital_flop,
        "ratio_digital_same_computation_over_analog": rep["ratio"],
        "ratio_digital_backprop_over_analog": backprop_flops
        * model.e_digital_flop
        / rep["analog_j_per_step"],
        "with_data_movement": with_movement,
    }
    path = _common.save("analog_energy", out)
    print(path.read_text())


if __name__ == "__main__":
    main()
