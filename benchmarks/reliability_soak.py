"""Long-run soak: every registered method for 20,000 steps on the bundled data.

Checks that resident memory does not grow after warm-up and that nothing is
compiled again after the first steps (a recompilation per step is the classic
way a jitted JAX loop slows to a crawl). Records RSS and compile counts every
``--every`` steps.

    .venv/bin/python benchmarks/reliability_soak.py [--steps 20000] [--methods all] [--merge]

Writes benchmarks/results/reliability_soak.{json,png} after every method (a run that is
stopped keeps what finished); ``--merge`` adds to the results already there, so the
methods can be soaked in several sittings.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import _common
import jax
import numpy as np

from beyondbp import compare, datasets, methods, train

NAME = "reliability_soak"
_COMPILES = [0]


def _on_event(event, duration, **kwargs):
    if event == "/jax/core/compile/backend_compile_duration":
        _COMPILES[0] += 1


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def soak(name, steps, every, tr, seed=0):
    cfg = methods.MethodConfig(key=jax.random.key(seed), steps=steps)
    setup = methods.get(name).build(cfg)
    step = jax.jit(train.make_step(setup))
    params, state = setup.params, setup.tx.init(setup.params)
    data = datasets.batches(tr, 64, seed=seed, epochs=None)
    rec = {"step": [], "rss_mb": [], "compiles": [], "finite": [], "skipped": 0}
    c0 = _COMPILES[0]
    t0 = time.perf_counter()
    for i in range(steps):
        x, y, _ = next(data)
        params, state, ok = step(params, state, x, y)
        rec["skipped"] += 0 if bool(ok) else 1
        if (i + 1) % every == 0 or i == 0:
            jax.block_until_ready(params)
            rec["step"].append(i + 1)
            rec["rss_mb"].append(rss_mb())
            rec["compiles"].append(_COMPILES[0] - c0)
            rec["finite"].append(
                bool(
                    all(
                        np.isfinite(np.asarray(p, np.float32)).all()
                        for p in jax.tree.leaves(params)
                    )
                )
            )
    rec["wall_s"] = time.perf_counter() - t0
    rec["steps"] = steps
    warm = rec["rss_mb"][min(2, len(rec["rss_mb"]) - 1)]
    rec["rss_growth_after_warmup_mb"] = rec["rss_mb"][-1] - warm
    rec["compiles_after_first_record"] = rec["compiles"][-1] - rec["compiles"][0]
    return rec


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20000)
    p.add_argument("--every", type=int, default=1000)
    p.add_argument("--methods", default="all")
    _common.add_switch(p, "--merge", "keep the results of methods already in reliability_soak.json")
    _common.add_switch(
        p, "--table", "only print the Markdown table of reliability_soak.json (BENCHMARKS.md)"
    )
    args = p.parse_args(argv)
    if args.table:
        print(table(json.loads((_common.RESULTS / f"{NAME}.json").read_text())["results"]))
        return
    jax.monitoring.register_event_duration_secs_listener(_on_event)
    tr = datasets.load("mnist_small", "train")
    path = _common.RESULTS / f"{NAME}.json"
    results = {}
    if args.merge and path.is_file():
        results = json.loads(path.read_text())["results"]
    for name in compare.resolve_methods(args.methods):
        r = soak(name, args.steps, args.every, tr)
        results[name] = r
        print(
            f"{name:24s} {r['wall_s']:7.1f} s  rss {r['rss_mb'][0]:.0f} -> {r['rss_mb'][-1]:.0f} MB"
            f"  growth after warm-up {r['rss_growth_after_warmup_mb']:+.1f} MB  compiles after "
            f"step 1: {r['compiles_after_first_record']}  finite: {all(r['finite'])}",
            flush=True,
        )
        fig = plot(results)
        _common.save(NAME, {"results": results}, fig, argv=argv, dpi=120)


def table(results) -> str:
    """The BENCHMARKS.md soak table, one row per soaked method, straight from the JSON."""
    rows = [
        "| method | steps | wall s | RSS first record -> last (MB) | growth after warm-up (MB) "
        "| compiles after step 1 | params finite | skipped steps |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        rows.append(
            f"| {name} | {r['steps']:,} | {r['wall_s']:.0f} | {r['rss_mb'][0]:.0f} -> "
            f"{r['rss_mb'][-1]:.0f} | {r['rss_growth_after_warmup_mb']:+.1f} | "
            f"{r['compiles_after_first_record']} | {all(r['finite'])} | {r['skipped']} |"
        )
    return "\n".join(rows)


def plot(results):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, r in results.items():
        ax.plot(r["step"], r["rss_mb"], label=f"{name} ({r.get('steps', r['step'][-1])} steps)")
    ax.set(
        xlabel="step",
        ylabel="process RSS (MB)",
        title="soak: methods run one after another in one process",
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    plt.close(fig)  # not kept by pyplot; the caller saves it
    return fig


if __name__ == "__main__":
    main()
