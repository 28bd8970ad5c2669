"""Bytes communicated per step and step time vs device count (1, 2, 4, 8 simulated CPU devices).

Three ways to train the same MLP on the same global batch:

* backprop, data-parallel, float32 all-reduce of the gradient;
* backprop, data-parallel, 4-bit-compressed exchange (``lowbit.compressed_pmean``);
* forward gradient, seed-shared, K tangents split over the devices
  (``fwdgrad.sharded_forward_gradient``): only the K directional derivatives move.

Bytes are read from the compiled program (``beyondbp.distributed.communication_bytes``:
every collective's operand, and what one device sends with ring algorithms); they
depend on the device count and the parameter count only, not on the machine.
Step times are medians of repeats on simulated devices that share this machine's
CPU cores: they show the overhead of the program, not a real speed-up.

    .venv/bin/python benchmarks/distributed_scaling.py

Writes benchmarks/results/distributed_scaling.{json,png}.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--widths", default="512,512")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--num-tangents", type=int, default=8)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--devices", default="1,2,4,8")
    p.add_argument("--plot-only", action="store_true",
                   help="redraw the PNG from the existing JSON without measuring")
    args = p.parse_args(argv)
    counts = [int(d) for d in args.devices.split(",")]
    out_dir = pathlib.Path(__file__).resolve().parent / "results"
    if args.plot_only:
        import json
        report = json.loads((out_dir / "distributed_scaling.json").read_text())
        plot(report["rows"], report["parameters"], out_dir)
        return
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={max(counts)}")

    import jax
    import numpy as np
    import optax
    from jax.sharding import Mesh

    from beyondbp import compare, models, train
    from beyondbp import distributed as dist
    from beyondbp.methods import cross_entropy
    from fwdgrad import sharded_forward_gradient

    widths = tuple(int(w) for w in args.widths.split(","))
    apply, params = models.mlp(jax.random.key(0), (784, *widths, 10))
    n_params = sum(x.size for x in jax.tree.leaves(params))
    rng = np.random.default_rng(0)
    x = rng.random((args.batch_size, 784), dtype=np.float32)
    y = rng.integers(0, 10, args.batch_size).astype(np.int32)

    def loss(p, batch):
        return cross_entropy(apply(p, batch[0]), batch[1])

    def timed(fn, *a):
        out = fn(*a)
        jax.block_until_ready(out)
        ts = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            jax.block_until_ready(fn(*a))
            ts.append(time.perf_counter() - t)
        return float(np.median(ts))

    rows = []
    for d in counts:
        mesh = dist.make_mesh(devices=jax.devices()[:d])
        for comm in ("float32", "4bit"):
            dp = dist.data_parallel(loss, optax.sgd(0.01), mesh=mesh, communication=comm)
            state, batch = dist.replicate(dp.init(params), mesh), dist.shard((x, y), mesh)
            b = dist.communication_bytes(dp.step, state, batch)
            t = timed(dp.step, state, batch)
            rows.append({"method": f"backprop data-parallel ({comm})", "devices": d,
                         "sent_bytes": b["sent_bytes"], "operand_bytes": b["operand_bytes"],
                         "step_time_s": t})
            print(rows[-1], flush=True)
        tmesh = Mesh(np.array(jax.devices()[:d]), ("tangent",))
        tx = optax.chain(sharded_forward_gradient(mesh=tmesh, axis_name="tangent",
                                                  num_tangents=args.num_tangents),
                         optax.sgd(0.01))

        @jax.jit
        def fg_step(p, s, xb, yb):
            u, s = tx.update(None, s, p, loss_fn=lambda q: loss(q, (xb, yb)))
            return optax.apply_updates(p, u), s

        rp = dist.replicate(params, tmesh)
        s = jax.device_put(tx.init(params), jax.sharding.NamedSharding(tmesh,
                                                                       jax.sharding.PartitionSpec()))
        xb, yb = dist.replicate((x, y), tmesh)
        b = dist.communication_bytes(fg_step, rp, s, xb, yb)
        t = timed(fg_step, rp, s, xb, yb)
        rows.append({"method": f"forward gradient seed-shared (K={args.num_tangents})",
                     "devices": d, "sent_bytes": b["sent_bytes"],
                     "operand_bytes": b["operand_bytes"], "step_time_s": t})
        print(rows[-1], flush=True)

    report = {"model": f"MLP 784-{'-'.join(map(str, widths))}-10", "parameters": int(n_params),
              "global_batch": args.batch_size, "num_tangents": args.num_tangents,
              "repeats": args.repeats, "machine": compare.machine(), "rows": rows,
              "command": "python " + " ".join([pathlib.Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
              "note": "bytes: what one device sends per step (ring algorithms), read from the "
                      "compiled HLO; step times on simulated devices sharing the CPU cores"}
    train.write_json(report, out_dir / "distributed_scaling.json")

    plot(rows, n_params, out_dir)


def plot(rows, n_params, out_dir):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    counts = sorted({r["devices"] for r in rows})
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for m in dict.fromkeys(r["method"] for r in rows):
        rs = [r for r in rows if r["method"] == m]
        a1.plot([r["devices"] for r in rs], [max(r["sent_bytes"], 1) for r in rs], marker="o",
                label=m)
        a2.plot([r["devices"] for r in rs], [1e3 * r["step_time_s"] for r in rs], marker="o",
                label=m)
    a1.set(yscale="log", ylabel="bytes sent per device per step (0 drawn as 1)",
           title=f"communication, {n_params / 1e6:.2f}M parameters (from the HLO)")
    a2.set(ylabel="median step time (ms)", title="step time, simulated CPU devices (2 shared cores)")
    for a in (a1, a2):
        a.set_xscale("log", base=2)
        a.minorticks_off()
        a.set_xticks(counts, [str(c) for c in counts])
        a.set_xlabel("devices")
        a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "distributed_scaling.png", dpi=120)


if __name__ == "__main__":
    main()
