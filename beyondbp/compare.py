"""Train several methods on the same data, model size and seed; tabulate and plot.

``beyondbp compare`` is a thin command line over :func:`compare`; a notebook
calls :func:`compare`, :func:`format_table` and :func:`plot` directly.
"""

from __future__ import annotations

import pathlib
import platform
import time
from typing import Sequence

import jax
import numpy as np

from beyondbp import datasets, methods, train as _train

__all__ = ["compare", "format_table", "plot", "resolve_methods", "machine"]


def resolve_methods(spec: str | Sequence[str]) -> list[str]:
    """``"all"``, ``"a,b"`` or a list of names -> validated list of method names."""
    names = methods.names() if spec == "all" else (
        [s.strip() for s in spec.split(",") if s.strip()] if isinstance(spec, str) else list(spec))
    if not names:
        raise ValueError(f"methods={spec!r} names no method; known: {', '.join(methods.names())}")
    for n in names:
        methods.get(n)  # raises with the list of known names
    if len(set(names)) != len(names):
        raise ValueError(f"methods={spec!r} names a method twice")
    return names


def machine() -> dict:
    dev = jax.devices()[0]
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "jax": jax.__version__, "backend": dev.platform, "device": str(dev.device_kind),
            "device_count": jax.device_count()}


def compare(method_names: Sequence[str], *, dataset: str = "mnist_small", data_dir=None,
            steps: int | None = None, epochs: int | None = None, batch_size: int = 64,
            seed: int = 0, model: str = "mlp", widths: tuple[int, ...] = (256, 256),
            eval_every: int | None = None, progress: bool = True, out=None) -> dict:
    """Train every method in ``method_names`` under identical conditions.

    Returns a dict with ``rows`` (one per method: accuracy, step time, memory,
    energy and their ratios to backprop when backprop is among the methods, else
    to the first method), ``histories`` and ``config``. With ``out`` it writes
    ``compare.json``, ``learning_curves.png`` and ``accuracy_vs_cost.png`` there.
    """
    names = resolve_methods(method_names)
    train_ds = datasets.load(dataset, "train", data_dir=data_dir)
    test_ds = datasets.load(dataset, "test", data_dir=data_dir)
    if steps is None and epochs is None:
        raise ValueError("give steps= or epochs=")
    total = steps if steps is not None else epochs * datasets.num_batches(len(train_ds), batch_size)
    cfg = methods.MethodConfig(key=jax.random.key(seed), input_shape=train_ds.input_shape,
                               num_classes=train_ds.num_classes, steps=total, model=model,
                               widths=tuple(widths))
    histories, rows = {}, []
    t0 = time.perf_counter()
    skipped = {}
    for name in names:
        m = methods.get(name)
        try:
            setup = m.build(cfg)
        except ValueError as e:  # e.g. a method that has no CNN variant: say so, run the rest
            skipped[name] = str(e)
            if progress:
                print(f"{name}: skipped ({e})")
            continue
        h = _train.train(setup, train_ds, test_ds, steps=steps, epochs=epochs,
                         batch_size=batch_size, seed=seed, eval_every=eval_every,
                         progress=progress, desc=f"{name:>18s}")
        h.pop("params"); h.pop("opt_state")
        histories[name] = h
        energy = h.get("energy") or {}
        rows.append({"method": name, "family": m.family, "description": m.description,
                     "test_accuracy": h["final_test_accuracy"],
                     "step_time_s": h["step_time_s"], "memory_bytes": h["memory"]["peak"],
                     "temp_bytes": h["memory"]["temp"],
                     "energy_per_step_j": energy.get("analog_j_per_step"),
                     "digital_energy_per_step_j": energy.get("digital_j_per_step"),
                     "wall_time_s": h["wall_time_s"]})
    if not rows:
        raise ValueError(f"no method could be built for this configuration: {skipped}")
    ref = next((r for r in rows if r["method"] == "backprop"), rows[0])
    for r in rows:
        r["reference"] = ref["method"]
        r["step_time_rel"] = r["step_time_s"] / ref["step_time_s"]
        r["memory_rel"] = (r["memory_bytes"] / ref["memory_bytes"]
                           if r["memory_bytes"] and ref["memory_bytes"] else None)
        r["temp_rel"] = (r["temp_bytes"] / ref["temp_bytes"]
                         if r["temp_bytes"] and ref["temp_bytes"] else None)
    result = {"rows": rows, "histories": histories, "skipped": skipped,
              "config": {"methods": names, "dataset": dataset, "steps": total,
                         "batch_size": batch_size, "seed": seed, "model": model,
                         "widths": list(widths), "train_examples": len(train_ds),
                         "test_examples": len(test_ds)},
              "machine": machine(), "total_time_s": time.perf_counter() - t0}
    if out is not None:
        out = pathlib.Path(out)
        _train.write_json(result, out / "compare.json")
        plot(result, out)
    return result


def _fmt(v, spec):
    return "-" if v is None or (isinstance(v, float) and not np.isfinite(v)) else format(v, spec)


def format_table(result: dict) -> str:
    """A plain-text table of the rows (markdown-compatible)."""
    ref = result["rows"][0]["reference"]
    head = ["method", "test acc", "step ms", f"time/{ref}", "peak MB", f"mem/{ref}",
            "energy J/step (analog)", "digital J/step"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["rows"]:
        cells = [r["method"], _fmt(r["test_accuracy"], ".4f"), _fmt(r["step_time_s"] * 1e3, ".2f"),
                 _fmt(r["step_time_rel"], ".2f"),
                 _fmt(r["memory_bytes"] / 2**20 if r["memory_bytes"] else None, ".2f"),
                 _fmt(r["memory_rel"], ".2f"), _fmt(r["energy_per_step_j"], ".3e"),
                 _fmt(r["digital_energy_per_step_j"] or None, ".3e")]
        lines.append("| " + " | ".join(cells) + " |")
    for name, why in result.get("skipped", {}).items():
        lines.append(f"| {name} | skipped: {why} |" + " |" * (len(head) - 2))
    return "\n".join(lines)


def plot(result: dict, out) -> list[pathlib.Path]:
    """Learning curves and an accuracy-vs-cost scatter as PNGs in ``out``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, 4.8))
    # 13+ methods outrun the 10-colour default cycle: 20 colours, and a line style per family
    colors = plt.get_cmap("tab20").colors
    families = {r["method"]: r.get("family", "") for r in result["rows"]}
    styles = {f: ls for f, ls in zip(dict.fromkeys(families.values()), ["-", "--", "-.", ":"] * 4)}
    for i, (name, h) in enumerate(result["histories"].items()):
        kw = dict(color=colors[(2 * i) % 20 + (2 * i) // 20 % 2], ls=styles.get(families.get(name)),
                  label=name)
        a1.plot(h["steps"], h["train_loss"], **kw)
        a2.plot(h["eval_steps"], h["test_accuracy"], marker="o", ms=3, **kw)
    a1.set(xlabel="step", ylabel="training loss (batch)", yscale="log", title="training loss")
    a2.set(xlabel="step", ylabel="test accuracy", title="test accuracy")
    a2.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    cfg = result["config"]
    fig.suptitle(f"{cfg['dataset']}, {cfg['model']} {cfg['widths']}, batch {cfg['batch_size']}, "
                 f"seed {cfg['seed']}")
    fig.tight_layout()
    p1 = out / "learning_curves.png"
    fig.savefig(p1, dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for r in result["rows"]:
        ax.scatter(r["step_time_rel"], r["test_accuracy"], s=40)
        ax.annotate(r["method"], (r["step_time_rel"], r["test_accuracy"]), fontsize=8,
                    xytext=(4, 3), textcoords="offset points")
    ax.set(xlabel=f"step time relative to {result['rows'][0]['reference']}",
           ylabel="test accuracy", title="accuracy vs cost", xscale="log")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    p2 = out / "accuracy_vs_cost.png"
    fig.savefig(p2, dpi=120)
    plt.close(fig)
    return [p1, p2]
