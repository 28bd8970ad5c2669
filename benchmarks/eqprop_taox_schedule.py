"""``analog-eqprop-taox`` over many epochs: how far its per-layer rates decay.

The registered row's rates follow a cosine to 10% of themselves over the run (set at one
epoch of MNIST, stop 15). Over ten epochs of Fashion-MNIST the row with stochastic pulses
stopped at 83.0 ± 0.1% (3 seeds) while the ideal-device row reaches 87.4%. This script
trains the row with a few floors of that cosine, and with either way of programming the
devices, with the test accuracy after every epoch (stop 28: the floor was not the cause;
stop 29: the pulses were, 85.6% with the mixed-precision accumulator).

    python benchmarks/eqprop_taox_schedule.py --dataset fashion_mnist --data-dir DIR \
        --epochs 10 [--seed 0] [--floors 0.1,0] [--mixed-precision]

``--mixed-precision`` programs the devices through ``analog.program(mixed_precision=True)``
(Nandakumar et al. 2020: updates accumulate in a digital buffer and only whole device steps
are pulsed), as the row does since stop 29; without it every update becomes stochastic
pulses, the row up to stop 28.

Writes ``benchmarks/results/eqprop_taox_schedule_<dataset>_<epochs>ep_seed<S>[_mixed].json``
and ``.png``.
"""

from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _common


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    floors = (0.1, 0.0)
    if "--floors" in argv:
        i = argv.index("--floors")
        floors = tuple(float(f) for f in argv[i + 1].split(","))
        del argv[i : i + 2]
    mixed = "--mixed-precision" in argv
    if mixed:
        argv.remove("--mixed-precision")
    args, tr, te, steps, cfg = _common.ablation_setup(__doc__.split("\n")[0], argv, epochs=True)
    from beyondbp import datasets, train
    from beyondbp.methods import analog_rows

    per_epoch = datasets.num_batches(len(tr), args.batch_size)
    rows = []
    for floor in floors:
        setup = analog_rows.build_eqprop_taox(cfg, decay_floor=floor, mixed_precision=mixed)
        h = train.train(
            setup,
            tr,
            te,
            steps=steps,
            batch_size=args.batch_size,
            seed=args.seed,
            eval_every=per_epoch,
            progress=False,
            time_steps=False,
        )
        rows.append(
            {
                "decay_floor": floor,
                "mixed_precision": mixed,
                "eval_steps": [int(s) for s in h["eval_steps"]],
                "test_accuracy": [float(a) for a in h["test_accuracy"]],
                "final_test_accuracy": float(h["final_test_accuracy"]),
            }
        )
        print(f"floor {floor}: {rows[-1]['test_accuracy']}", flush=True)
    result = {
        "dataset": args.dataset,
        "seed": args.seed,
        "epochs": args.epochs,
        "steps": steps,
        "batch_size": args.batch_size,
        "recipe": "analog_rows.build_eqprop_taox (the registered row), per-layer rates on a "
        "cosine to decay_floor x rate over the run",
        "rows": rows,
    }
    name = f"eqprop_taox_schedule_{args.dataset}_{args.epochs}ep_seed{args.seed}"
    name += "_mixed" if mixed else ""
    _common.save(name, result, plot(rows, per_epoch, args.dataset, args.seed))
    return 0


def plot(rows, per_epoch, dataset, seed):
    """Test accuracy after every epoch, one line per floor."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        ep = [s / per_epoch for s in r["eval_steps"]]
        ax.plot(ep, r["test_accuracy"], marker="o", label=f"cosine to {r['decay_floor']:g} x rate")
    ax.set(
        xlabel="epoch",
        ylabel="test accuracy",
        title=f"analog-eqprop-taox, {dataset}, seed {seed}: the rate's floor",
    )
    ax.legend()
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    raise SystemExit(main())
