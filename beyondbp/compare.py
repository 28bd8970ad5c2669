"""Train several methods on the same data, model size and seed; tabulate and plot.

``beyondbp compare`` is a thin command line over :func:`compare`; a notebook
calls :func:`compare`, :func:`format_table` and :func:`plot` directly.
"""

from __future__ import annotations

import pathlib
import platform
import time
from collections.abc import Sequence

import jax
import numpy as np

from beyondbp import _compare_resume, datasets, methods
from beyondbp import train as _train
from beyondbp._compare_plots import plot

__all__ = ["compare", "format_table", "plot", "resolve_methods", "machine"]


def resolve_methods(spec: str | Sequence[str]) -> list[str]:
    """``"all"``, ``"a,b"`` or a list of names -> validated list of method names."""
    names = (
        methods.names()
        if spec == "all"
        else (
            [s.strip() for s in spec.split(",") if s.strip()]
            if isinstance(spec, str)
            else list(spec)
        )
    )
    if not names:
        raise ValueError(f"methods={spec!r} names no method; known: {', '.join(methods.names())}")
    for n in names:
        methods.get(n)  # raises with the list of known names
    if len(set(names)) != len(names):
        raise ValueError(f"methods={spec!r} names a method twice")
    return names


def machine() -> dict:
    """Where a comparison ran: OS, processor, JAX version, backend and device kind."""
    dev = jax.devices()[0]
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "jax": jax.__version__,
        "backend": dev.platform,
        "device": str(dev.device_kind),
        "device_count": jax.device_count(),
    }


def _check_seeds(seeds) -> list[int]:
    try:
        out = [int(s) for s in seeds]
    except (TypeError, ValueError):
        raise ValueError(f"seeds={seeds!r}: give a list of integers, e.g. [0, 1, 2]") from None
    if (
        not out
        or min(out) < 0
        or len(set(out)) != len(out)
        or any(isinstance(s, float) and not float(s).is_integer() for s in seeds)
    ):
        raise ValueError(f"seeds={seeds!r}: give distinct non-negative integers, e.g. [0, 1, 2]")
    return out


def _loss_kind(setup: methods.Setup) -> str:
    """Which training loss a row reports: rows on an energy-based model minimise squared error."""
    return (
        "cross-entropy"
        if setup.loss is methods.cross_entropy
        else getattr(setup.loss, "__name__", "other")
    )


def _run(
    name: str,
    cfg: methods.MethodConfig,
    train_ds,
    test_ds,
    *,
    steps,
    epochs,
    batch_size,
    seed,
    eval_every,
    progress,
) -> dict:
    """Build and train one row for one seed; the history without params, plus its row values."""
    m = methods.get(name)
    setup = m.build(cfg)
    h = _train.train(
        setup,
        train_ds,
        test_ds,
        steps=steps,
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        eval_every=eval_every,
        progress=progress,
        desc=f"{name:>18s} s{seed}",
    )
    h.pop("params")
    h.pop("opt_state")
    h["loss_kind"] = _loss_kind(setup)
    energy = h.get("energy") or {}
    return {
        "method": name,
        "seed": seed,
        "history": h,
        "test_accuracy": h["final_test_accuracy"],
        "step_time_s": h["step_time_s"],
        "memory_bytes": h["memory"]["peak"],
        "temp_bytes": h["memory"]["temp"],
        "energy_per_step_j": energy.get("analog_j_per_step"),
        "digital_energy_per_step_j": energy.get("digital_j_per_step"),
        "wall_time_s": h["wall_time_s"],
    }


SPREAD_FLAG = 0.05  # seeds of one row disagreeing by more than 5 points of accuracy get a marker


def _aggregate(name: str, runs: list[dict]) -> dict:
    """One table row from a method's per-seed runs: mean and std (ddof=1), every value kept."""
    m = methods.get(name)
    acc = np.array([r["test_accuracy"] for r in runs], dtype=np.float64)
    times = np.array([r["step_time_s"] for r in runs], dtype=np.float64)
    std = lambda v: float(np.std(v, ddof=1)) if v.size > 1 else 0.0
    row = {
        "method": name,
        "family": m.family,
        "description": m.description,
        "seeds": [r["seed"] for r in runs],
        "test_accuracy": float(acc.mean()),
        "test_accuracy_std": std(acc),
        "test_accuracy_per_seed": acc.tolist(),
        "spread_flag": bool(acc.max() - acc.min() > SPREAD_FLAG),
        "step_time_s": float(times.mean()),
        "step_time_std_s": std(times),
        "step_time_per_seed_s": times.tolist(),
        "loss_kind": runs[0]["history"]["loss_kind"],
    }
    for k in ("memory_bytes", "temp_bytes", "energy_per_step_j", "digital_energy_per_step_j"):
        row[k] = runs[0][k]  # identical across seeds: same model, same program
    row["wall_time_s"] = float(sum(r["wall_time_s"] for r in runs))
    return row


def _method_config(
    train_ds: datasets.Dataset, seed: int, *, steps: int, model: str, widths, batch_size: int
) -> methods.MethodConfig:
    """What every method is built from for one seed: the data's input shape and classes, the
    model, the budget (also what ``beyondbp train`` builds its one method from)."""
    return methods.MethodConfig(
        key=jax.random.key(seed),
        input_shape=train_ds.input_shape,
        num_classes=train_ds.num_classes,
        steps=steps,
        model=model,
        widths=tuple(widths),
        batch_size=batch_size,
    )


PARTIAL = _compare_resume.PARTIAL


def _run_all(
    names,
    seed_list,
    train_ds,
    test_ds,
    *,
    total,
    model,
    widths,
    steps,
    epochs,
    batch_size,
    eval_every,
    progress,
    on_run=None,
    done=None,
) -> tuple[list[dict], dict[str, str]]:
    """Every method once per seed; ``(runs, skipped)``, skipped: the methods that do not apply
    to this configuration, with the reason. ``on_run(runs)`` is called after every run.
    ``done`` maps ``(method, seed)`` to a run finished earlier (``resume``): it is kept, not
    trained again."""
    runs: list[dict] = []
    skipped: dict[str, str] = {}
    done = done or {}
    for s in seed_list:
        cfg = _method_config(
            train_ds, s, steps=total, model=model, widths=widths, batch_size=batch_size
        )
        for name in names:
            if name in skipped:
                continue
            if (name, s) in done:
                runs.append(done[(name, s)])
                if progress:
                    print(f"{name:>18s} s{s}: kept from {PARTIAL}")
                continue
            try:
                runs.append(
                    _run(
                        name,
                        cfg,
                        train_ds,
                        test_ds,
                        steps=steps,
                        epochs=epochs,
                        batch_size=batch_size,
                        seed=s,
                        eval_every=eval_every,
                        progress=progress,
                    )
                )
            except methods.NotApplicable as e:  # e.g. no CNN variant: say so, run the rest
                skipped[name] = str(e)
                if progress:
                    print(f"{name}: skipped ({e})")
                continue
            if on_run is not None:
                on_run(runs)
    return runs, skipped


def _relative_to_reference(rows: list[dict]) -> None:
    """Step time, memory and scratch memory of every row relative to backprop's row (the
    first row when backprop is not among them), written into the rows."""
    ref = next((r for r in rows if r["method"] == "backprop"), rows[0])
    for r in rows:
        r["reference"] = ref["method"]
        r["step_time_rel"] = r["step_time_s"] / ref["step_time_s"]
        r["memory_rel"] = (
            r["memory_bytes"] / ref["memory_bytes"]
            if r["memory_bytes"] and ref["memory_bytes"]
            else None
        )
        r["temp_rel"] = (
            r["temp_bytes"] / ref["temp_bytes"] if r["temp_bytes"] and ref["temp_bytes"] else None
        )


def _load(dataset, data_dir, verify, steps, epochs, batch_size):
    """The train and test sets, and the number of steps (``steps``, or ``epochs`` of batches)."""
    if steps is None and epochs is None:
        raise ValueError("give steps= or epochs=")
    train_ds = datasets.load(dataset, "train", data_dir=data_dir, verify=verify)
    test_ds = datasets.load(dataset, "test", data_dir=data_dir, verify=verify)
    if steps is not None:
        total = steps
    else:
        assert epochs is not None  # refused above when both are None
        total = epochs * datasets.num_batches(len(train_ds), batch_size)
    return train_ds, test_ds, total


def _rows(names: list[str], runs: list[dict], skipped: dict[str, str]) -> list[dict]:
    """One row per method that ran: its seeds aggregated, with ratios to the reference row."""
    rows = [_aggregate(n, [r for r in runs if r["method"] == n]) for n in names if n not in skipped]
    if not rows:
        raise ValueError(f"no method could be built for this configuration: {skipped}")
    _relative_to_reference(rows)
    return rows


def _data_config(train_ds, test_ds) -> dict:
    """The data set's part of a comparison's ``config``."""
    return {
        "train_examples": len(train_ds),
        "test_examples": len(test_ds),
        "num_classes": train_ds.num_classes,
        "input_shape": list(train_ds.input_shape),
    }


def _config(names, dataset, total, batch_size, seed_list, model, widths) -> dict:
    """A comparison's ``config`` (without the data set's sizes)."""
    return {
        "methods": names,
        "dataset": dataset,
        "steps": total,
        "batch_size": batch_size,
        "seed": seed_list[0],
        "seeds": seed_list,
        "model": model,
        "widths": list(widths),
    }


def compare(
    method_names: Sequence[str],
    *,
    dataset: str = "mnist_small",
    data_dir=None,
    steps: int | None = None,
    epochs: int | None = None,
    batch_size: int = 64,
    seed: int = 0,
    seeds: Sequence[int] | None = None,
    model: str = "mlp",
    widths: tuple[int, ...] = (256, 256),
    eval_every: int | None = None,
    progress: bool = True,
    out=None,
    verify: bool = True,
    resume: bool = False,
) -> dict:
    """Train every method in ``method_names`` under identical conditions, once per seed.

    Args:
      seeds: run every row once per seed (parameter init, data order and the transforms' own
        randomness all follow the seed); ``None`` runs the single ``seed``.
      verify: check a named data set's content digest (``datasets.load(verify=...)``).
      resume: keep the runs an interrupted comparison left in ``out/runs_so_far.json`` (same
        data, budget, batch size, model and evaluation interval; methods and seeds may differ)
        and train only the others; without it that file is refused, never overwritten. See
        :mod:`beyondbp._compare_resume` (``config["kept_runs"]``, ``other_kept_runs``).

    Returns a dict with ``rows`` (one per method: mean and standard deviation over seeds of
    test accuracy and step time, every per-seed value, a ``spread_flag`` when seeds disagree by
    more than 5 points, memory and energy, and ratios to backprop when backprop is among the
    methods, else to the first method), ``runs`` (every seed's history), ``histories`` (the first
    seed's, per method) and ``config``. With ``out`` it writes ``compare.json``,
    ``learning_curves.png`` and ``accuracy_vs_cost.png`` there; while it runs, ``runs_so_far.json``
    there holds every finished run (method, seed, history), so an interrupted comparison keeps
    them; it is removed once ``compare.json`` is written.
    """
    names = resolve_methods(method_names)
    seed_list = _check_seeds([seed] if seeds is None else seeds)
    # rewritten (atomically) after every run: an interrupted job loses at most the run it was in
    partial = _compare_resume.Partial(out, resume)
    train_ds, test_ds, total = _load(dataset, data_dir, verify, steps, epochs, batch_size)
    config = _config(names, dataset, total, batch_size, seed_list, model, widths)
    config.update(_data_config(train_ds, test_ds))
    done = partial.load({**config, "eval_every": eval_every})
    t0 = time.perf_counter()
    runs, skipped = _run_all(
        names,
        seed_list,
        train_ds,
        test_ds,
        total=total,
        model=model,
        widths=widths,
        steps=steps,
        epochs=epochs,
        batch_size=batch_size,
        eval_every=eval_every,
        progress=progress,
        on_run=partial.save,
        done=done,
    )
    result: dict = {
        "rows": _rows(names, runs, skipped),
        "skipped": skipped,
        "runs": runs,
        "histories": {r["method"]: r["history"] for r in runs if r["seed"] == seed_list[0]},
        "config": config,
        "machine": machine(),
        "total_time_s": time.perf_counter() - t0,
    }
    partial.finish(result)
    if out is not None:
        out = pathlib.Path(out)
        _train.write_json(result, out / "compare.json")
        plot(result, out)
        partial.remove()  # compare.json holds every run now
    return result


def _fmt(v, spec):
    return "-" if v is None or (isinstance(v, float) and not np.isfinite(v)) else format(v, spec)


def format_table(result: dict) -> str:
    """A plain-text table of the rows (markdown-compatible).

    With several seeds, accuracy and step time read ``mean ± std``; a ``!`` marks a row whose
    seeds disagree by more than 5 points of accuracy (see ``test_accuracy_per_seed``).
    """
    ref = result["rows"][0]["reference"]
    multi = len(result["config"].get("seeds", [0])) > 1
    head = [
        "method",
        "test acc" + (" (mean ± std)" if multi else ""),
        "step ms",
        f"time/{ref}",
        "peak MB",
        f"mem/{ref}",
        "energy J/step (analog)",
        "digital J/step",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["rows"]:
        acc = _fmt(r["test_accuracy"], ".4f")
        ms = _fmt(r["step_time_s"] * 1e3, ".2f")
        if multi:
            acc += f" ± {r['test_accuracy_std']:.4f}" + (" !" if r.get("spread_flag") else "")
            ms += f" ± {r['step_time_std_s'] * 1e3:.2f}"
        cells = [
            r["method"],
            acc,
            ms,
            _fmt(r["step_time_rel"], ".2f"),
            _fmt(r["memory_bytes"] / 2**20 if r["memory_bytes"] else None, ".2f"),
            _fmt(r["memory_rel"], ".2f"),
            _fmt(r["energy_per_step_j"], ".3e"),
            _fmt(r["digital_energy_per_step_j"] or None, ".3e"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    for name, why in result.get("skipped", {}).items():
        lines.append(f"| {name} | skipped: {why} |" + " |" * (len(head) - 2))
    if multi:
        lines.append(
            f"\nseeds {result['config']['seeds']}; '!' marks seeds more than "
            f"{SPREAD_FLAG * 100:.0f} points apart in accuracy"
        )
    return "\n".join(lines)
