"""How often Tiki-Taka reads A into H: the ``analog-tikitaka`` row's builder at several
``transfer_every`` and ``transfer_lr`` (BENCHMARKS.md, "In-situ training through the crossbar").

Each variant is ``beyondbp.methods.analog_rows.build_tikitaka`` with the given settings,
registered for this process only and trained by ``beyondbp.compare`` on MNIST (same data, seed
and order for every variant); ``transfer_every`` counts samples between two reads of one row per
64-row tile of A::

    python benchmarks/analog_tikitaka_transfer.py --steps 1874 --widths 256,128 \\
        --variants 1:0.1,8:0.1 --out analog_tikitaka_transfer_2ep
"""

from __future__ import annotations

import argparse
import functools

import _common
import optax

from beyondbp.compare import compare
from beyondbp.methods import Method, analog_rows, register


def _variant(spec: str) -> tuple[str, int, float, set[str], float]:
    """``EVERY:TRANSFER_LR[:cos][:tcos][:chopP]``: ``cos`` puts the row's lr on a cosine to 0,
    ``tcos`` the transfer lr; ``chopP`` turns on c-TTv2's choppers with flip probability P."""
    every, transfer_lr, *rest = spec.split(":")
    chop = [float(r[4:]) for r in rest if r.startswith("chop")]
    flags = {r for r in rest if not r.startswith("chop")}
    if flags - {"cos", "tcos"} or len(chop) > 1:
        raise SystemExit(f"--variants: {spec!r}; use EVERY:TRANSFER_LR[:cos][:tcos][:chopP]")
    name = f"tikitaka-every{every}-tlr{transfer_lr}" + "".join(f"-{f}" for f in sorted(flags))
    name += f"-chop{chop[0]}" if chop else ""
    return name, int(every), float(transfer_lr), flags, chop[0] if chop else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _common.add_data_dir(ap)
    ap.add_argument("--steps", type=_common.positive_int, default=937)
    ap.add_argument("--widths", type=_common.int_list, default=(256, 256))
    ap.add_argument(
        "--variants", default="1:0.1,8:0.1", help="EVERY:TRANSFER_LR[:cos][:tcos][:chopP],..."
    )
    ap.add_argument("--seeds", type=_common.int_list, default=(0,))
    ap.add_argument("--out", default="analog_tikitaka_transfer")
    args = ap.parse_args()
    names = []
    for spec in args.variants.split(","):
        name, every, transfer_lr, flags, chop = _variant(spec)
        lr = analog_rows.TIKITAKA_LR
        if "cos" in flags:
            lr = optax.cosine_decay_schedule(lr, args.steps)
        if "tcos" in flags:
            transfer_lr = optax.cosine_decay_schedule(transfer_lr, args.steps)
        build = functools.partial(
            analog_rows.build_tikitaka,
            lr=lr,
            transfer_every=every,
            transfer_lr=transfer_lr,
            chop_probability=chop,
        )
        register(Method(name, f"analog-tikitaka, {spec}", build, family="analog"), replace=True)
        names.append(name)
    res = compare(
        names,
        dataset="mnist",
        data_dir=args.data_dir,
        steps=args.steps,
        widths=args.widths,
        seeds=list(args.seeds),
        progress=False,
    )
    out = {
        "steps": args.steps,
        "widths": list(args.widths),
        "rows": [
            {k: r[k] for k in ("method", "test_accuracy", "test_accuracy_std", "step_time_s")}
            for r in res["rows"]
        ],
        "runs": [
            {"method": r["method"], "seed": r["seed"], "test_accuracy": r["test_accuracy"]}
            for r in res["runs"]
        ],
        "curves": {
            f"{r['method']} seed {r['seed']}": r["history"]["test_accuracy"] for r in res["runs"]
        },
        "eval_steps": res["runs"][0]["history"]["eval_steps"],
    }
    for r in out["rows"]:
        print(r, flush=True)
    _common.save(args.out, out)


if __name__ == "__main__":
    main()
