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
import json
import os

import _common  # benchmarks/_common.py: stdlib only, so XLA_FLAGS can still be set first


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--widths", default="512,512")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--num-tangents", type=int, default=8)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--devices", default="1,2,4,8")
    _common.add_switch(p, "--plot-only", "redraw the PNG from the existing JSON without measuring")
    args = p.parse_args(argv)
    counts = [int(d) for d in args.devices.split(",")]
    if args.plot_only:
        report = json.loads((_common.RESULTS / "distributed_scaling.json").read_text())
        plot(report["rows"], report["parameters"]).savefig(
            _common.RESULTS / "distributed_scaling.png", dpi=120
        )
        return
    # before JAX is imported (in the helpers): the simulated device count
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={max(counts)}"
    )
    import jax
    import numpy as np

    from beyondbp import models

    widths = tuple(int(w) for w in args.widths.split(","))
    apply, params = models.mlp(jax.random.key(0), (784, *widths, 10))
    n_params = sum(x.size for x in jax.tree.leaves(params))
    rng = np.random.default_rng(0)
    x = rng.random((args.batch_size, 784), dtype=np.float32)
    y = rng.integers(0, 10, args.batch_size).astype(np.int32)
    rows = [row for d in counts for row in _measure(d, apply, params, x, y, args)]
    report = {
        "model": f"MLP 784-{'-'.join(map(str, widths))}-10",
        "parameters": int(n_params),
        "global_batch": args.batch_size,
        "num_tangents": args.num_tangents,
        "repeats": args.repeats,
        "rows": rows,
        "note": "bytes: what one device sends per step (ring algorithms), read from the "
        "compiled HLO; step times on simulated devices sharing the CPU cores",
    }
    _common.save("distributed_scaling", report, plot(rows, n_params), argv=argv, dpi=120)


def _measure(d: int, apply, params, x, y, args) -> list[dict]:
    """Bytes sent and median step time of the three methods on the first ``d`` devices."""
    import jax
    import numpy as np
    import optax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    from beyondbp import distributed as dist
    from beyondbp.methods import cross_entropy
    from fwdgrad import sharded_forward_gradient

    def loss(p, batch):
        return cross_entropy(apply(p, batch[0]), batch[1])

    def row(method, bytes_, step, *a):
        r = {
            "method": method,
            "devices": d,
            "sent_bytes": bytes_["sent_bytes"],
            "operand_bytes": bytes_["operand_bytes"],
            "step_time_s": _common.median_time(lambda: step(*a), repeats=args.repeats),
        }
        print(r, flush=True)
        return r

    rows = []
    mesh = dist.make_mesh(devices=jax.devices()[:d])
    for comm in ("float32", "4bit"):
        dp = dist.data_parallel(loss, optax.sgd(0.01), mesh=mesh, communication=comm)
        state, batch = dist.replicate(dp.init(params), mesh), dist.shard((x, y), mesh)
        rows.append(
            row(
                f"backprop data-parallel ({comm})",
                dist.communication_bytes(dp.step, state, batch),
                dp.step,
                state,
                batch,
            )
        )
    tmesh = Mesh(np.array(jax.devices()[:d]), ("tangent",))
    tx = optax.chain(
        sharded_forward_gradient(mesh=tmesh, axis_name="tangent", num_tangents=args.num_tangents),
        optax.sgd(0.01),
    )

    @jax.jit
    def fg_step(p, s, xb, yb):
        u, s = tx.update(None, s, p, loss_fn=lambda q: loss(q, (xb, yb)))
        return optax.apply_updates(p, u), s

    rp = dist.replicate(params, tmesh)
    s = jax.device_put(tx.init(params), NamedSharding(tmesh, PartitionSpec()))
    xb, yb = dist.replicate((x, y), tmesh)
    rows.append(
        row(
            f"forward gradient seed-shared (K={args.num_tangents})",
            dist.communication_bytes(fg_step, rp, s, xb, yb),
            fg_step,
            rp,
            s,
            xb,
            yb,
        )
    )
    return rows


def plot(rows, n_params):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = sorted({r["devices"] for r in rows})
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for m in dict.fromkeys(r["method"] for r in rows):
        rs = [r for r in rows if r["method"] == m]
        a1.plot(
            [r["devices"] for r in rs], [max(r["sent_bytes"], 1) for r in rs], marker="o", label=m
        )
        a2.plot(
            [r["devices"] for r in rs], [1e3 * r["step_time_s"] for r in rs], marker="o", label=m
        )
    a1.set(
        yscale="log",
        ylabel="bytes sent per device per step (0 drawn as 1)",
        title=f"communication, {n_params / 1e6:.2f}M parameters (from the HLO)",
    )
    a2.set(
        ylabel="median step time (ms)", title="step time, simulated CPU devices (2 shared cores)"
    )
    for a in (a1, a2):
        a.set_xscale("log", base=2)
        a.minorticks_off()
        a.set_xticks(counts, [str(c) for c in counts])
        a.set_xlabel("devices")
        a.legend(fontsize=8)
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    main()
