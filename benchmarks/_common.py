"""Plumbing every benchmark script shares: where results go, what a result records, arguments.

A script does its measurement and calls :func:`save`, which writes
``benchmarks/results/<name>.json`` (the result plus the exact command line and the machine)
and, given a figure, ``<name>.png`` beside it. Data sets are found the way a user's are, by
:func:`beyondbp.datasets.load` (``--data-dir``, then ``$BEYONDBP_DATA``, then the user
cache), never by a path relative to this checkout.

Standard library only at import time: the aihwkit scripts run in an environment without JAX
and use :data:`RESULTS`, :func:`command` and :func:`data_dir_default` too.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

__all__ = [
    "RESULTS",
    "command",
    "machine",
    "save",
    "add_data_dir",
    "data_dir_default",
    "positive_int",
    "int_list",
    "median_time",
    "out_name",
    "parse_step_timing",
    "add_switch",
    "train_history",
    "ablation_setup",
]

#: Where every benchmark writes its JSON and PNG files.
RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def command(argv: Sequence[str] | None = None) -> str:
    """The command line that reproduces this run: ``python benchmarks/<script> <args>``."""
    script = pathlib.Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "<script>"
    args = sys.argv[1:] if argv is None else list(argv)
    return " ".join(["python", f"benchmarks/{script}", *args])


def machine() -> dict:
    """The machine a result was measured on: platform, CPUs, and JAX's version and devices."""
    out = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
    }
    if "jax" in sys.modules or _importable("jax"):
        import jax

        dev = jax.devices()[0]
        out.update(
            jax=jax.__version__,
            backend=dev.platform,
            device=str(dev.device_kind),
            device_count=jax.device_count(),
        )
    return out


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def _jsonable(v: Any) -> Any:
    """JSON-ready copy: numpy/JAX scalars and arrays to lists, NaN/inf to None."""
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if hasattr(v, "tolist") and not isinstance(v, (str, bytes)):
        return _jsonable(v.tolist())
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def save(
    name: str, result: dict, fig: Any = None, *, argv: Sequence[str] | None = None, dpi: int = 110
) -> pathlib.Path:
    """Write ``RESULTS/<name>.json`` (and ``<name>.png`` from ``fig``); return the JSON path.

    ``command`` and ``machine`` are added unless ``result`` already has them. The JSON is
    written to a temporary name and renamed, so an interrupted run never leaves half a file.
    ``name`` may hold a sub-folder (``"gpu_h200/fwdgrad_speed"``).
    """
    path = RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    out = dict(result)
    out.setdefault("command", command(argv))
    out.setdefault("machine", machine())
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_jsonable(out), indent=1))
    os.replace(tmp, path)
    if fig is not None:
        fig.savefig(path.with_suffix(".png"), dpi=dpi)
    return path


def out_name(path: str | os.PathLike) -> str:
    """The :func:`save` name for a script's ``--out PATH``: the path without its suffix,
    relative to :data:`RESULTS` (climbing out with ``..`` when the path lies elsewhere).

    So ``--out benchmarks/results/x`` and ``--out /tmp/x.json`` keep working once a script
    saves through :func:`save`.
    """
    p = pathlib.Path(path).expanduser().resolve()
    return os.path.relpath(p.with_suffix("") if p.suffix else p, RESULTS)


def data_dir_default() -> str | None:
    """``$BEYONDBP_DATA`` (or its ``mnist/`` folder when it has one), else None."""
    env = os.environ.get("BEYONDBP_DATA")
    if not env:
        return None
    sub = pathlib.Path(env).expanduser() / "mnist"
    return str(sub if sub.is_dir() else pathlib.Path(env).expanduser())


def add_data_dir(ap: argparse.ArgumentParser) -> None:
    """``--data-dir``: where the MNIST IDX files are; default: beyondbp.datasets' lookup."""
    ap.add_argument(
        "--data-dir",
        default=None,
        help="directory of the MNIST IDX files (default: $BEYONDBP_DATA, then the "
        "user cache, as beyondbp.datasets.load looks them up)",
    )


def add_switch(ap: argparse.ArgumentParser, flag: str, help: str) -> None:
    """An on/off option ``flag`` (``store_true``), described by ``help``."""
    ap.add_argument(flag, action="store_true", help=help)


def parse_step_timing(
    argv: Sequence[str] | None,
    doc: str,
    switch: str,
    switch_help: str,
    *,
    repeats: int = 7,
    iters: int = 5,
    batch: int = 256,
) -> argparse.Namespace:
    """The command line of the scripts that time training steps side by side: ``--repeats``
    (interleaved rounds), ``--iters`` (steps per round), ``--batch``, and one on/off ``switch``.
    ``doc``: the script's docstring, whose first line describes it."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=repeats)
    ap.add_argument("--iters", type=int, default=iters)
    ap.add_argument("--batch", type=int, default=batch)
    add_switch(ap, switch, switch_help)
    return ap.parse_args(argv)


def train_history(setup, train_ds, test_ds, args: argparse.Namespace, **options) -> dict:
    """``beyondbp.train.train`` with the script's ``--batch-size`` and ``--seed``; ``options``
    are train's other keywords. Returns the history without the final params and optimizer
    state, which a results JSON does not keep."""
    from beyondbp import train

    h = train.train(setup, train_ds, test_ds, batch_size=args.batch_size, seed=args.seed, **options)
    return {k: v for k, v in h.items() if k not in ("params", "opt_state")}


def train_summary(
    setup, train_ds, test_ds, *, steps: int, batch_size: int, seed: int, evals: int, desc: str
) -> dict:
    """``steps`` steps of ``beyondbp.train.train`` without a progress bar, the test accuracy
    measured ``evals`` times along the way; returns what a results JSON keeps of it: the final
    and per-evaluation accuracies, their steps, the step time and the wall time."""
    from beyondbp import train

    t0 = time.time()
    h = train.train(
        setup,
        train_ds,
        test_ds,
        steps=steps,
        batch_size=batch_size,
        seed=seed,
        eval_every=max(1, steps // evals),
        progress=False,
        desc=desc,
    )
    keep = ("final_test_accuracy", "test_accuracy", "eval_steps", "step_time_s")
    return {**{k: h[k] for k in keep}, "steps": steps, "wall_s": time.time() - t0}


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: need an integer >= 1")
    return v


def int_list(text: str) -> tuple[int, ...]:
    """argparse type: comma-separated integers, e.g. ``"64,32"``."""
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: need comma-separated integers") from None


def median_time(fn: Callable[[], Any], *, repeats: int = 5, warmup: int = 1) -> float:
    """Median wall-clock seconds of ``fn()`` over ``repeats`` calls after ``warmup`` calls.

    Each call's result is waited for (``jax.block_until_ready``), so asynchronous dispatch
    does not hide the work. Medians, not means: these machines are shared and noisy.
    """
    import jax

    for _ in range(warmup):
        jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved(calls: dict[str, Callable[[], Any]], rounds: int, iters: int) -> dict:
    """Seconds per call of every ``calls[name]()``, after one compiling call each: ``rounds``
    rounds, each timing ``iters`` calls of every variant in turn, so that all of them see the
    same machine load (side by side, never one after the other). A call that carries state
    (params from step to step) keeps it in its own closure."""
    import jax

    for f in calls.values():
        jax.block_until_ready(f())
    times: dict[str, list[float]] = {n: [] for n in calls}
    for _ in range(rounds):
        for n, f in calls.items():
            t0 = time.perf_counter()
            for _ in range(iters):
                out = f()
            jax.block_until_ready(out)
            times[n].append((time.perf_counter() - t0) / iters)
    return times


def ratio_rows(times: dict[str, list[float]], base: str) -> dict:
    """Per variant: the median time (ms), the median over rounds of its time divided by
    ``base``'s in the same round (``median_ratio_to_<base>``), and every round's time (ms)."""
    ref = times[base]
    return {
        n: {
            "median_ms": 1e3 * statistics.median(ts),
            f"median_ratio_to_{base}": statistics.median(t / b for t, b in zip(ts, ref)),
            "all_ms": [1e3 * t for t in ts],
        }
        for n, ts in times.items()
    }


def ratio_bars(
    labels: Sequence[str], ratios: Sequence[float], colors, *, xlabel: str, title: str, height=3.5
):
    """A horizontal bar chart of time ratios, each bar labelled with its value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, height))
    ax.barh(range(len(labels)), ratios, color=colors)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.invert_yaxis()
    for i, r in enumerate(ratios):
        ax.text(r, i, f" {r:.2f}x", va="center", fontsize=7)
    ax.set(xlabel=xlabel, title=title)
    return fig, ax


def ablation_setup(description: str, argv=None, *, epochs: bool = False):
    """The command line and data of a one-data-set ablation (``--dataset``, ``--data-dir``,
    ``--seed``, ``--batch-size``, and ``--epochs`` when asked): returns ``(args, train, test,
    steps, cfg)`` with ``cfg`` the ``beyondbp.methods.MethodConfig`` of the data's shape.
    JAX and beyondbp are imported here, not at module import (see the module docstring)."""
    import jax

    from beyondbp import datasets, methods

    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--dataset", default="fashion_mnist", choices=datasets.NAMES)
    add_data_dir(ap)
    ap.add_argument("--seed", type=int, default=0)
    if epochs:
        ap.add_argument("--epochs", type=positive_int, default=1)
    ap.add_argument("--batch-size", type=positive_int, default=64)
    args = ap.parse_args(argv)
    tr = datasets.load(args.dataset, "train", data_dir=args.data_dir)
    te = datasets.load(args.dataset, "test", data_dir=args.data_dir)
    steps = getattr(args, "epochs", 1) * datasets.num_batches(len(tr), args.batch_size)
    cfg = methods.MethodConfig(
        key=jax.random.key(args.seed),
        input_shape=tr.input_shape,
        num_classes=tr.num_classes,
        steps=steps,
    )
    return args, tr, te, steps, cfg
