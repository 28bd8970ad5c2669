"""The figures of :func:`beyondbp.compare.compare`: learning curves and accuracy against cost.

Kept apart from the comparison itself (``compare.plot`` is this module's :func:`plot`), so the
module that runs the rows stays about running them.
"""

from __future__ import annotations

import pathlib

import numpy as np


def _band(ax, runs: list[dict], xkey: str, ykey: str, **kw) -> None:
    """Mean over seeds as a line and the min-max over seeds as a shaded band."""
    n = min(len(r["history"][xkey]) for r in runs)
    if n == 0:
        return
    x = np.asarray(runs[0]["history"][xkey][:n], dtype=np.float64)
    ys = np.array([r["history"][ykey][:n] for r in runs], dtype=np.float64)
    ax.plot(x, ys.mean(0), **kw)
    if len(runs) > 1:
        ax.fill_between(x, ys.min(0), ys.max(0), color=kw.get("color"), alpha=0.2, lw=0)


def plot(result: dict, out) -> list[pathlib.Path]:
    """Learning curves (one loss panel per loss kind) and accuracy vs cost, as PNGs in ``out``.

    With several seeds each curve is the mean with a min-max band, and accuracy carries a
    standard-deviation error bar. Labels go in legends, so they never overlap.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs = result.get("runs") or [
        {"method": n, "seed": result["config"]["seed"], "history": h}
        for n, h in result["histories"].items()
    ]
    rows = result["rows"]
    # 13+ methods outrun the 10-colour default cycle: 20 colours, and a line style per family
    tab20 = plt.get_cmap("tab20")
    colors = [tab20(i) for i in range(20)]
    color = {r["method"]: colors[(2 * i) % 20 + (2 * i) // 20 % 2] for i, r in enumerate(rows)}
    styles = {
        f: ls
        for f, ls in zip(
            dict.fromkeys(r.get("family", "") for r in rows), ["-", "--", "-.", ":"] * 4
        )
    }
    fig = _learning_curves(plt, result, runs, color, styles)
    p1 = out / "learning_curves.png"
    fig.savefig(p1, dpi=120)
    plt.close(fig)

    fig = _accuracy_vs_cost(plt, result, color)
    p2 = out / "accuracy_vs_cost.png"
    fig.savefig(p2, dpi=120)
    plt.close(fig)
    return [p1, p2]


def _learning_curves(plt, result: dict, runs: list[dict], color: dict, styles: dict):
    """Training loss (one panel per loss kind) and test accuracy against step."""
    rows = result["rows"]
    kinds = list(dict.fromkeys(r.get("loss_kind", "cross-entropy") for r in rows))
    fig, axes = plt.subplots(1, len(kinds) + 1, figsize=(6 * (len(kinds) + 1), 4.8), squeeze=False)
    for r in rows:
        rr = [u for u in runs if u["method"] == r["method"]]
        kw = dict(color=color[r["method"]], ls=styles.get(r.get("family", "")), label=r["method"])
        ax = axes[0, kinds.index(r.get("loss_kind", "cross-entropy"))]
        _band(ax, rr, "steps", "train_loss", **kw)
        _band(axes[0, -1], rr, "eval_steps", "test_accuracy", marker="o", ms=3, **kw)
    for k, kind in enumerate(kinds):
        axes[0, k].set(
            xlabel="step",
            ylabel=f"training loss: {kind} (batch)",
            yscale="log",
            title=f"training loss ({kind})",
        )
        axes[0, k].legend(fontsize=7)
    axes[0, -1].set(xlabel="step", ylabel="test accuracy", title="test accuracy")
    axes[0, -1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    cfg = result["config"]
    fig.suptitle(
        f"{cfg['dataset']}, {cfg['model']} {cfg['widths']}, batch {cfg['batch_size']}, "
        f"seeds {cfg.get('seeds', [cfg['seed']])}"
        + (" (mean, min-max band)" if len(cfg.get("seeds", [0])) > 1 else "")
    )
    fig.tight_layout()
    return fig


def _accuracy_vs_cost(plt, result: dict, color: dict):
    """Test accuracy against step time relative to the reference row."""
    rows, cfg = result["rows"], result["config"]
    fig, ax = plt.subplots(figsize=(9, 4.8))
    markers = "osD^v<>pP*hX"
    for i, r in enumerate(rows):
        ax.errorbar(
            r["step_time_rel"],
            r["test_accuracy"],
            yerr=r.get("test_accuracy_std") or None,
            fmt=markers[i % len(markers)],
            color=color[r["method"]],
            ms=7,
            capsize=3,
            label=r["method"] + (" (!)" if r.get("spread_flag") else ""),
        )
    ax.set(
        xlabel=f"step time relative to {rows[0]['reference']}",
        ylabel="test accuracy"
        + (" (mean ± std over seeds)" if len(cfg.get("seeds", [0])) > 1 else ""),
        title="accuracy vs cost",
        xscale="log",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return fig
