"""The figure of ``benchmarks/baydin2022.py``: FG and exact-gradient trajectories on the test
functions' contours (Baydin et al. 2022, sec. 5.1), and training loss against wall-clock time
for every MNIST model and method (sec. 5.2)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np


def _plot_function(ax, name, res, f):
    (x0, x1), (y0, y1) = ((-1.0, 4.0), (-1.0, 2.0)) if name == "beale" else ((-2, 2), (-1, 3))
    X, Y = np.meshgrid(np.linspace(x0, x1, 200), np.linspace(y0, y1, 200))
    Z = np.asarray(jax.vmap(f)(jnp.stack([X.ravel(), Y.ravel()], 1))).reshape(X.shape)
    ax.contour(X, Y, np.log1p(Z), levels=25, cmap="Greys", linewidths=0.6)
    for m, color in (("gd", "tab:red"), ("fg", "tab:blue")):
        p = np.asarray(res["path"][m])
        label = "exact gradient" if m == "gd" else "forward gradient"
        ax.plot(p[:, 0], p[:, 1], color=color, lw=0.9, label=label)
    ax.set_title(f"{name}, lr {res['lr']}, {res['iterations']} iterations")
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.legend(fontsize=7)


COLORS = {
    "bp": "tab:red",
    "fg-gaussian": "tab:blue",
    "fg-rademacher": "tab:green",
    "fg-rank1": "tab:purple",
}


def _plot_model(ax, model, runs, window):
    # A diverged run's loss reaches 1e30 and more: the axis stops a little above where every
    # curve started, so the descent stays readable and the divergence leaves through the top.
    starts = [
        r[m]["curve"]["smoothed_loss"][0]
        for r in runs["per_seed"]
        for m in r
        if m in COLORS and len(r[m]["curve"]["smoothed_loss"])
    ]
    finite = [x for x in starts if x is not None and math.isfinite(x)]
    for r in runs["per_seed"]:
        for m in (k for k in r if k in COLORS):
            c = r[m]["curve"]
            first = r["seed"] == runs["per_seed"][0]["seed"]
            ax.plot(
                c["time_s"],
                c["smoothed_loss"],
                color=COLORS[m],
                lw=0.8,
                alpha=0.8,
                label=m if first else None,
            )
    parts = []
    for m, agg in runs["ratios"].items():
        if agg["level"] is not None:
            ax.axhline(agg["level"], color=COLORS[m], lw=0.6, ls=":")
            parts.append(f"{m}/bp to {agg['level']}: {agg['time_to_level']['mean']:.2f}")
    ax.set_title(f"{model}, lr {runs['lr']}\n" + "; ".join(parts), fontsize=8)
    ax.set_xlabel("wall-clock time (s)")
    ax.set_ylabel(f"training loss (mean of {window} steps)")
    if finite:
        top = 1.05 * max(finite)
        shown = [
            x
            for r in runs["per_seed"]
            for m in r
            if m in COLORS
            for x in r[m]["curve"]["smoothed_loss"]
            if x is not None and math.isfinite(x) and x <= top
        ]
        ax.set_ylim(min(shown) - 0.02 * (top - min(shown)), top)
    ax.legend(fontsize=7)


def plot(out: dict, functions: dict):
    """The figure of a ``baydin2022.py`` result; ``functions``: name -> the test function."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    functions = list(out.get("functions", {}).items())
    models = [m for m in ("logreg", "mlp", "cnn") if m in out["mnist"]]
    rows = [r for r in (functions, models) if r]  # one row per kind of panel present
    ncols = max(len(r) for r in rows)
    fig, axes = plt.subplots(len(rows), ncols, figsize=(5 * ncols, 4.25 * len(rows)), squeeze=False)
    for ax_row, row in zip(axes, rows):
        for ax, item in zip(ax_row, row):
            if row is functions:
                _plot_function(ax, *item, functions[item[0]])
            else:
                _plot_model(ax, item, out["mnist"][item], out["settings"]["window"])
        for ax in ax_row[len(row) :]:
            ax.axis("off")
    fig.tight_layout()
    return fig
