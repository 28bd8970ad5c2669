"""Step time of the registered ``analog-eqprop-taox`` row, this tree against a baseline commit.

Two worker processes, one importing the packages of this working tree (or of ``--candidate``)
and one those of ``--baseline`` (each commit's packages by ``git archive`` into a temporary
folder), each build the row
the way ``beyondbp compare`` does (``beyondbp.methods.get(...).build`` and
``beyondbp.train.make_step``), compile, and then time the same parts round by round,
interleaved (baseline, this tree, baseline, ...), so both see the same machine load. Reported:
the median over rounds of each part's time per call and of the per-round ratio
baseline / this tree.

Parts (batch 64 of the bundled MNIST subset, 784-500-10):

* ``step``: one jitted training step of the row (relaxation, update, programming).
* ``estimate``: ``analog.equilibrium_propagation`` alone with the row's settings and
  ``TAOX_IO`` (the 20 + 2 x 8 relaxation sweeps through the crossbar periphery).
* ``estimate_noiseless``: the same with ``read_noise=0`` (so ``estimate`` minus it is what the
  read noise costs).
* ``program``: ``analog.program(TAOX_RERAM)`` alone, taking one update of the row's size
  (stochastic rounding, device response, cycle-to-cycle noise).

Each worker also reports its compile time and how many times the step was traced over all
its calls (1: the row does not recompile per step).

    python benchmarks/analog_eqprop_speed.py [--baseline REV] [--candidate REV] [--rounds 7] [--iters 10]
        [--out benchmarks/results/analog_eqprop_speed]

Writes benchmarks/results/analog_eqprop_speed.json and .png (or PATH.json / PATH.png).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import _common

ROW = "analog-eqprop-taox"
PARTS = ("step", "estimate", "estimate_noiseless", "program")
PACKAGES = ("analog", "bbcore", "beyondbp", "fwdgrad", "lowbit")
REPO = pathlib.Path(__file__).resolve().parent.parent


# -- worker: runs in its own process, importing one tree's packages ---------------------------


def _worker_parts(batch: int) -> tuple[dict, dict]:
    """The timed callables of one tree (each takes and returns its carried state)."""
    import dataclasses

    import jax
    import jax.numpy as jnp
    import numpy as np

    import analog
    from beyondbp import datasets, methods
    from beyondbp import train as btrain
    from beyondbp.methods import analog_rows as rows

    ds = datasets.load("mnist_small", "train")
    x = jnp.asarray(ds.images[:batch].reshape(batch, -1).astype(np.float32) / 255.0)
    y = jnp.asarray(ds.labels[:batch].astype(np.int32))
    cfg = methods.MethodConfig(key=jax.random.key(0), steps=1000, batch_size=batch)
    setup = methods.get(ROW).build(cfg)
    traces = []

    def traced_step(p, s, xb, yb):
        traces.append(1)
        return btrain.make_step(setup)(p, s, xb, yb)

    step = jax.jit(traced_step)
    params = setup.params

    def estimator(io):
        tx = analog.equilibrium_propagation(
            beta=rows.TAOX_BETA,
            free_steps=rows.TAOX_FREE_STEPS,
            nudged_steps=rows.TAOX_NUDGED_STEPS,
            seed=1,
            io=io,
            tol=None,
            normalize=True,
            linear_output=True,
        )
        # params and the batch are arguments, not constants XLA would fold at compile time
        f = jax.jit(lambda st, p, xb, yb: tx.update(None, st, p, batch=(xb, yb))[1])
        return (lambda st: f(st, params, x, y)), tx.init(params)

    io = analog.presets.TAOX_IO
    est, est_state = estimator(io)
    quiet, quiet_state = estimator(dataclasses.replace(io, read_noise=0.0))
    prog = analog.program(analog.presets.TAOX_RERAM, seed=2)
    upd, _ = analog.activity_difference(
        params, x, y, beta=0.5, free_steps=20, nudged_steps=8, io=io, key=jax.random.key(3),
        tol=None, normalize=True, linear_output=True, return_info=True,
    )  # fmt: skip
    upd = [{k: r * v for k, v in u.items()} for u, r in zip(upd, rows.NLMS_RATES)]
    prog_jit = jax.jit(lambda st, u, p: prog.update(u, st, p)[1])
    calls = {
        "step": lambda c: step(c[0], c[1], x, y)[:2],
        "estimate": est,
        "estimate_noiseless": quiet,
        "program": lambda st: prog_jit(st, upd, params),
    }
    carried = {
        "step": (params, setup.tx.init(params)),
        "estimate": est_state,
        "estimate_noiseless": quiet_state,
        "program": prog.init(params),
    }
    return calls, {"carried": carried, "traces": traces}


def worker(iters: int, batch: int) -> None:
    """Compile every part, print ``ready``, then answer each ``round`` line with the
    seconds per call of each part (JSON), until ``stop``."""
    import jax

    t0 = time.perf_counter()
    calls, extra = _worker_parts(batch)
    carried = extra["carried"]
    for name, f in calls.items():
        carried[name] = jax.block_until_ready(f(carried[name]))
    compile_s = time.perf_counter() - t0
    print(json.dumps({"ready": True, "compile_s": compile_s}), flush=True)
    for line in sys.stdin:
        if line.strip() != "round":
            break
        out = {}
        for name, f in calls.items():
            t = time.perf_counter()
            for _ in range(iters):
                carried[name] = f(carried[name])
            jax.block_until_ready(carried[name])
            out[name] = (time.perf_counter() - t) / iters
        out["traces"] = len(extra["traces"])
        print(json.dumps(out), flush=True)


# -- parent: starts both workers, interleaves their rounds, saves the result ------------------


def _baseline_tree(rev: str, into: pathlib.Path) -> str:
    """Extract the packages of commit ``rev`` into ``into``; return the full commit hash."""
    full = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", rev], check=True, capture_output=True, text=True
    ).stdout.strip()
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", full, *PACKAGES], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return full


def _start(tree: pathlib.Path, args: argparse.Namespace) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(tree))
    cmd = [sys.executable, __file__, "--worker", "--iters", str(args.iters)]
    cmd += ["--batch", str(args.batch)]
    return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)


def _ask(proc: subprocess.Popen, line: str | None) -> dict:
    assert proc.stdin is not None and proc.stdout is not None
    if line is not None:
        proc.stdin.write(line + "\n")
        proc.stdin.flush()
    reply = proc.stdout.readline()
    if not reply:
        raise RuntimeError(f"worker {proc.args} exited (code {proc.wait()})")
    return json.loads(reply)


def compare(args: argparse.Namespace) -> dict:
    """Run both workers side by side; the result dict that :func:`main` saves."""
    with tempfile.TemporaryDirectory(prefix="eqprop_speed_") as tmp:
        base, cand = pathlib.Path(tmp, "baseline"), pathlib.Path(tmp, "candidate")
        base.mkdir()
        commit = _baseline_tree(args.baseline, base)
        if args.candidate is None:
            cand, cand_commit = REPO, "working tree"
        else:
            cand.mkdir()
            cand_commit = _baseline_tree(args.candidate, cand)
        trees = {"baseline": base, "this_tree": cand}
        procs = {k: _start(t, args) for k, t in trees.items()}
        try:
            ready = {k: _ask(p, None) for k, p in procs.items()}  # compile one at a time
            rounds: dict[str, list[dict]] = {k: [] for k in trees}
            for r in range(args.rounds):
                for k in trees if r % 2 == 0 else reversed(list(trees)):
                    rounds[k].append(_ask(procs[k], "round"))
                print(f"round {r + 1}/{args.rounds}", {k: v[-1] for k, v in rounds.items()})
        finally:
            for p in procs.values():
                p.communicate("stop\n", timeout=60)
    med = {k: {p: statistics.median(r[p] for r in v) for p in PARTS} for k, v in rounds.items()}
    ratio = {
        p: statistics.median(
            b[p] / n[p] for b, n in zip(rounds["baseline"], rounds["this_tree"], strict=True)
        )
        for p in PARTS
    }
    return {
        "row": ROW,
        "batch": args.batch,
        "iters_per_round": args.iters,
        "rounds": args.rounds,
        "baseline_commit": commit,
        "this_tree_commit": cand_commit,
        "compile_s": {k: v["compile_s"] for k, v in ready.items()},
        "traces_of_step": {k: v[-1]["traces"] for k, v in rounds.items()},
        "median_ms": {k: {p: 1e3 * t for p, t in v.items()} for k, v in med.items()},
        "speedup_median_of_round_ratios": ratio,
        "per_round_s": rounds,
        "load_average_after": os.getloadavg(),
    }


def figure(res: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 3.6))
    xs = np.arange(len(PARTS))
    for i, (k, label) in enumerate([("baseline", "baseline"), ("this_tree", "this tree")]):
        ax.bar(xs + 0.4 * i - 0.2, [res["median_ms"][k][p] for p in PARTS], 0.4, label=label)
    for j, p in enumerate(PARTS):
        top = max(res["median_ms"][k][p] for k in ("baseline", "this_tree"))
        ax.text(
            j, top, f"{res['speedup_median_of_round_ratios'][p]:.1f}x", ha="center", va="bottom"
        )
    ax.set_xticks(xs, PARTS)
    ax.set_ylabel("ms per call (median of rounds)")
    base, cand = res["baseline_commit"][:7], res["this_tree_commit"][:7]
    ax.set_title(f"{ROW}, batch {res['batch']}: {base} (baseline) vs {cand}")
    ax.legend()
    fig.tight_layout()
    return fig


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", default="HEAD", help="commit to compare against (git rev)")
    ap.add_argument(
        "--candidate", default=None, help="commit to time instead of the working tree (git rev)"
    )
    ap.add_argument("--rounds", type=_common.positive_int, default=7)
    ap.add_argument("--iters", type=_common.positive_int, default=10, help="calls per round")
    ap.add_argument("--batch", type=_common.positive_int, default=64)
    ap.add_argument("--out", default=str(_common.RESULTS / "analog_eqprop_speed"))
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args.iters, args.batch)
        return
    res = compare(args)
    path = _common.save(_common.out_name(args.out), res, figure(res), argv=argv)
    print(json.dumps({k: res[k] for k in ("median_ms", "speedup_median_of_round_ratios")}))
    print("wrote", path)


if __name__ == "__main__":
    main()
