"""Where the ``lowbit`` row loses accuracy against float32: one seed, one epoch (``--epochs``).

The ``lowbit`` MLP (Sun et al. 2020: INT4 SAWB weights, UINT4 activations, radix-4 FP4
gradients with GradScale and two-phase rounding) trails float32 backprop by 2-3 points on
Fashion-MNIST after one epoch at the same schedule (SGD 0.05, momentum 0.9, cosine to 0). Each
variant below turns one part of the 4-bit recipe on or off, with the same weights at
initialisation, data order and schedule:

* float32 in every GEMM, the forward alone in 4 bits (weights, activations, both), the
  gradients alone in FP4 (both backward GEMMs, or only the input-gradient or only the
  weight-gradient GEMM; without two-phase rounding; with stochastic rounding);
* the whole recipe with PACT activation clips, power-of-two max weight scales, stochastic
  gradient rounding;
* per layer: the last (classifier) layer with only its input-gradient or only its
  weight-gradient GEMM in FP4, the first or the last layer in Sun et al.'s 8 bits, both (the
  paper's SUN2020 recipe);
* the row's 4-bit layers with Sun et al.'s radix-4 gradients and TPR (the row to stop 30) against
  LUQ's radix-2 logarithmic FP4 (the row since), nearest or stochastic.

It also records how far each layer's 4-bit weight gradient points from the straight-through
gradient of the same forward with float32 backward GEMMs (cosine, on test batches), for the
all-4-bit model and for the row's rule (``lowbit_rows.CLASSIFIER_8BIT``), at initialisation and
after the all-4-bit model's epoch.

    python benchmarks/lowbit_gap_ablation.py --dataset fashion_mnist --data-dir DIR [--seed 0]
        [--epochs 10 --variants "float32;last layer 8-bit (row now);forward only" --tag NAME]

Writes ``benchmarks/results/lowbit_gap_ablation_<dataset>.json`` and ``.png``.
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _common

import lowbit
from beyondbp import methods, models, train
from beyondbp.methods import lowbit_rows
from lowbit import FLOAT32, RADIX4_FP4, UINT4, GemmConfig, QuantConfig, Recipe, Rule

F32 = FLOAT32
ROW = lowbit_rows.RECIPE  # the 4-bit layers of the row to stop 29
ROW4 = lowbit_rows.ROW_4BIT  # the 4-bit layers of the row now (radix-2 gradients)
# the row's 4-bit layers at stop 30: per-sample activation scales, per-channel GradScale, Sun et
# al.'s radix-4 gradients with TPR (the variants measured then keep meaning what they measured)
ROW4_R4 = dataclasses.replace(ROW4, gradients=RADIX4_FP4, two_phase=True)
R2 = lowbit.RADIX2_FP4
EIGHT = lowbit.recipes.SUN2020_8BIT
UINT8 = lowbit.int_format(8, signed=False)


def _roles(d=(F32, F32), w=(F32, F32)) -> QuantConfig:
    """Float32 forward; FP4 (per-tensor GradScale, one grid, no TPR) where given."""
    return QuantConfig(
        forward=GemmConfig(),
        input_gradient=GemmConfig(lhs=d[0], rhs=d[1]),
        weight_gradient=GemmConfig(lhs=w[0], rhs=w[1]),
    )


def _every(config: QuantConfig) -> QuantConfig:
    """One config in every layer: ``lowbit.nnx`` layers (they own PACT's clip)."""
    return config


def build(cfg, variant: QuantConfig | Recipe):
    """``(apply, params)``: a config in every layer, or a per-layer recipe; same weights."""
    if isinstance(variant, QuantConfig):
        return lowbit_rows.build_model(cfg, variant, classifier_8bit=False)
    return cfg.build_model(recipe=variant)


def _last(config, rest=ROW) -> Recipe:
    return Recipe(name="last", rules=(Rule(config=config, select="last"), Rule(config=rest)))


G_ONLY = QuantConfig(weights=F32, weight_scaling="max", activations=F32)
#: name -> (what it tests, a config for every layer or a per-layer recipe)
VARIANTS = {
    "float32": ("no quantization", _every(QuantConfig.float32())),
    "all-4-bit (row before)": ("RECIPE in every layer", _every(ROW)),
    "forward only": (
        "INT4 W, UINT4 A",
        _every(dataclasses.replace(ROW, gradients=F32, two_phase=False)),
    ),
    "weights only": (
        "INT4 SAWB W",
        _every(QuantConfig(activations=F32, gradients=F32, two_phase=False)),
    ),
    "activations only": (
        "UINT4 A",
        _every(dataclasses.replace(G_ONLY, activations=UINT4, gradients=F32, two_phase=False)),
    ),
    "gradients only": ("FP4 G, TPR", _every(G_ONLY)),
    "gradients only, no TPR": (
        "FP4 G, even grid",
        _every(dataclasses.replace(G_ONLY, two_phase=False)),
    ),
    "gradients only, stochastic": (
        "FP4 G, stochastic rounding, even grid",
        _every(dataclasses.replace(G_ONLY, two_phase=False, gradient_rounding="stochastic")),
    ),
    "input-gradient GEMM only": ("FP4 G in dA = G W^T", _every(_roles(d=(RADIX4_FP4, F32)))),
    "weight-gradient GEMM only": ("FP4 G in dW = A^T G", _every(_roles(w=(F32, RADIX4_FP4)))),
    "all-4-bit, PACT": (
        "learned activation clip",
        _every(dataclasses.replace(ROW, activation_scaling="pact")),
    ),
    "all-4-bit, max weight scale": (
        "no SAWB",
        _every(dataclasses.replace(ROW, weight_scaling="max")),
    ),
    "all-4-bit, stochastic": (
        "stochastic gradient rounding",
        _every(dataclasses.replace(ROW, gradient_rounding="stochastic")),
    ),
    "last: only input gradient FP4": ("rest all-4-bit", _last(_roles(d=(RADIX4_FP4, F32)))),
    "last: only weight gradient FP4": ("rest all-4-bit", _last(_roles(w=(F32, RADIX4_FP4)))),
    "first layer 8-bit": (
        "SUN2020_8BIT, UINT8 A",
        Recipe(
            name="first8",
            rules=(
                Rule(config=dataclasses.replace(EIGHT, activations=UINT8), select="first"),
                Rule(config=ROW),
            ),
        ),
    ),
    "last layer 8-bit (row now)": ("lowbit_rows.CLASSIFIER_8BIT", lowbit_rows.CLASSIFIER_8BIT),
    "last layer 8-bit, per-tensor scales (row to stop 28)": (
        "the 8-bit classifier, RECIPE's power-of-two per-tensor scales in the 4-bit layers",
        _last(EIGHT, ROW),
    ),
    "first and last 8-bit": ("lowbit.recipes.SUN2020", lowbit.recipes.SUN2020),
    "gradients only, channel GradScale": (
        "FP4 G, TPR, a scale per row (dA) and per column (dW)",
        _every(dataclasses.replace(G_ONLY, gradient_scaling="channel")),
    ),
    "all-4-bit, channel GradScale": (
        "RECIPE with per-channel GradScale",
        _every(dataclasses.replace(ROW, gradient_scaling="channel")),
    ),
    "last layer 8-bit, channel GradScale": (
        "the row's rule, per-channel GradScale in the 4-bit layers",
        _last(EIGHT, dataclasses.replace(ROW, gradient_scaling="channel")),
    ),
    "last layer 8-bit, stochastic": (
        "the row's rule, stochastic gradient rounding in the 4-bit layers",
        _last(EIGHT, dataclasses.replace(ROW, gradient_rounding="stochastic")),
    ),
    "last layer 8-bit, channel, stochastic": (
        "the row's rule, per-channel GradScale and stochastic rounding",
        _last(
            EIGHT,
            dataclasses.replace(ROW, gradient_scaling="channel", gradient_rounding="stochastic"),
        ),
    ),
    "activations only, amax scale": (
        "UINT4 A with a float scale max|A|/15 (every code used)",
        _every(
            dataclasses.replace(
                G_ONLY,
                activations=UINT4,
                activation_scaling="amax",
                gradients=F32,
                two_phase=False,
            )
        ),
    ),
    "last layer 8-bit, amax activations": (
        "the row's rule, float per-tensor activation scale in the 4-bit layers",
        _last(EIGHT, dataclasses.replace(ROW, activation_scaling="amax")),
    ),
    "last layer 8-bit, amax activations, channel GradScale": (
        "the row's rule, float activation scale and per-channel GradScale in the 4-bit layers",
        _last(
            EIGHT,
            dataclasses.replace(ROW, activation_scaling="amax", gradient_scaling="channel"),
        ),
    ),
    "row, per-sample activation scale": (
        "the row's rule with a float activation scale per sample instead of per tensor",
        _last(EIGHT, ROW4_R4),
    ),
    "activations only, per-sample scale": (
        "UINT4 A with a float scale max|A[i]|/15 per sample",
        _every(
            dataclasses.replace(
                G_ONLY,
                activations=UINT4,
                activation_scaling="sample",
                gradients=F32,
                two_phase=False,
            )
        ),
    ),
    "forward only, per-sample scale": (
        "INT4 SAWB W, UINT4 A on a float scale per sample, float32 gradients",
        _every(dataclasses.replace(ROW4_R4, gradients=F32, two_phase=False)),
    ),
    "row's gradients only": (
        "float32 forward; the row's gradients (last layer FP8, the others radix-4 FP4 with "
        "channel GradScale and TPR)",
        _last(
            dataclasses.replace(EIGHT, weights=F32, weight_scaling="max", activations=F32),
            dataclasses.replace(G_ONLY, gradient_scaling="channel"),
        ),
    ),
    "row's gradients only, stochastic": (
        "float32 forward; the row's gradients with stochastic rounding in the 4-bit layers",
        _last(
            dataclasses.replace(EIGHT, weights=F32, weight_scaling="max", activations=F32),
            dataclasses.replace(G_ONLY, gradient_scaling="channel", gradient_rounding="stochastic"),
        ),
    ),
    "row's gradients only, radix-2": (
        "float32 forward; the row's gradients since stop 31 (last layer FP8, the others LUQ's "
        "radix-2 logarithmic FP4 with channel GradScale)",
        _last(
            dataclasses.replace(EIGHT, weights=F32, weight_scaling="max", activations=F32),
            dataclasses.replace(G_ONLY, gradients=R2, gradient_scaling="channel", two_phase=False),
        ),
    ),
    "row, radix-4 gradients (stop 30)": (
        "the row's rule with Sun et al.'s radix-4 gradients and TPR in the 4-bit layers",
        _last(EIGHT, ROW4_R4),
    ),
    "row, radix-2 gradients, stochastic": (
        "the row's rule now with stochastic gradient rounding in the 4-bit layers",
        _last(EIGHT, dataclasses.replace(ROW4, gradient_rounding="stochastic")),
    ),
    "last layer's FP8 gradients only": (
        "float32 forward and float32 gradients except the classifier's (FP8 E5M2, as the row)",
        _last(
            dataclasses.replace(EIGHT, weights=F32, weight_scaling="max", activations=F32),
            QuantConfig.float32(),
        ),
    ),
    "row, 8-bit input": (
        "the row's rule, the first layer's input (pixels) in UINT8, its weights and gradients 4-bit",
        Recipe(
            name="row-uint8-input",
            rules=(
                Rule(config=EIGHT, select="last"),
                Rule(config=dataclasses.replace(ROW4_R4, activations=UINT8), select="first"),
                Rule(config=ROW4_R4),
            ),
        ),
    ),
    "row, first and last 8-bit": (
        "Sun et al.'s exceptions (first layer SUN2020_8BIT with UINT8 A) around the row's 4-bit layers",
        Recipe(
            name="row-first-last-8bit",
            rules=(
                Rule(config=EIGHT, select="last"),
                Rule(config=dataclasses.replace(EIGHT, activations=UINT8), select="first"),
                Rule(config=ROW4_R4),
            ),
        ),
    ),
}


def _float_gradients(recipe: Recipe) -> Recipe:
    """The same forward with float32 backward GEMMs (the straight-through reference)."""
    rules = tuple(
        dataclasses.replace(r, config=dataclasses.replace(r.config, gradients=F32, two_phase=False))
        for r in recipe.rules
    )
    return dataclasses.replace(recipe, rules=rules)


def gradient_cosines(cfg, recipe, params, ds, n_batches=4, batch=256) -> list[float]:
    """Per layer, mean cosine of the kernel gradient against its float32-backward reference."""
    apply_q, _ = cfg.build_model(recipe=recipe)
    apply_r, _ = cfg.build_model(recipe=_float_gradients(recipe))

    def grads(apply, x, y):
        return jax.grad(lambda p: models.cross_entropy(apply(p, x), y))(params)

    out = []
    for b in range(n_batches):
        x = jnp.asarray(ds.images[b * batch : (b + 1) * batch], jnp.float32) / 255.0
        y = jnp.asarray(ds.labels[b * batch : (b + 1) * batch])
        gq, gr = grads(apply_q, x, y), grads(apply_r, x, y)
        layers = gq["layers"]
        cos = []
        for i in sorted(layers, key=int):
            a, r = layers[i]["kernel"].ravel(), gr["layers"][i]["kernel"].ravel()
            cos.append(float(a @ r / (jnp.linalg.norm(a) * jnp.linalg.norm(r) + 1e-30)))
        out.append(cos)
    return np.mean(np.asarray(out), axis=0).round(4).tolist()


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    only = None
    if "--variants" in argv:  # a subset (by name, comma-separated) for longer runs
        i = argv.index("--variants")
        # names with a comma in them: separate by ";"
        val = argv[i + 1]
        only = [val] if val in VARIANTS else val.split(";" if ";" in val else ",")
        del argv[i : i + 2]
        if unknown := [v for v in only if v not in VARIANTS]:
            raise SystemExit(f"--variants: unknown {unknown}; choose from {list(VARIANTS)}")
    tag = ""
    if "--tag" in argv:  # a suffix for the result files, so a subset run keeps the others
        i = argv.index("--tag")
        tag = "_" + argv[i + 1]
        del argv[i : i + 2]
    args, tr, te, steps, cfg = _common.ablation_setup(__doc__.split("\n")[0], argv, epochs=True)
    rows, trained = [], {}
    for name, (what, variant) in VARIANTS.items():
        if only is not None and name not in only:
            continue
        apply, params = build(cfg, variant)
        tx = optax.sgd(lowbit_rows.rate(steps), momentum=0.9)
        h = train.train(
            methods.Setup(params=params, apply=apply, tx=tx),
            tr,
            te,
            steps=steps,
            batch_size=args.batch_size,
            seed=args.seed,
            progress=False,
            time_steps=False,
        )
        trained[name] = h["params"]
        rows.append({"variant": name, "what": what, "test_accuracy": h["final_test_accuracy"]})
        print(rows[-1], flush=True)
    _, init = build(cfg, VARIANTS["float32"][1])
    all4 = Recipe(name="all-4-bit", rules=(Rule(config=ROW),))
    cosines = {
        f"{rule} at {when}": gradient_cosines(cfg, recipe, p, te)
        for rule, recipe in (("all-4-bit", all4), ("row", lowbit_rows.CLASSIFIER_8BIT))
        for when, p in (
            ("init", init),
            ("end of all-4-bit epoch", trained.get("all-4-bit (row before)")),
        )
        if p is not None
    }
    print(cosines, flush=True)
    result = {
        "dataset": args.dataset,
        "seed": args.seed,
        "steps": steps,
        "epochs": args.epochs,
        "schedule": "SGD momentum 0.9, lr 0.05 on a cosine to 0 (lowbit_rows.rate)",
        "rows": rows,
        "kernel_gradient_cosine_vs_float32_backward": cosines,
        "layers": "MLP 784-256-256-10 (index 0 first, 2 last)",
    }
    name = (
        f"lowbit_gap_ablation_{args.dataset}"
        + (f"_{args.epochs}ep" if args.epochs > 1 else "")
        + tag
    )
    _common.save(name, result, plot(rows, args.dataset, args.seed))
    return 0


def plot(rows: list[dict], dataset: str, seed: int):
    """Test accuracy of every variant, one bar each, float32 as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 6))
    acc = [r["test_accuracy"] for r in rows]
    ax.barh([r["variant"] for r in rows], acc, color="tab:blue")
    ax.axvline(rows[0]["test_accuracy"], color="k", lw=0.8, ls="--")
    lo = min(acc) - 0.02
    ax.set(
        xlabel="test accuracy after one epoch",
        xlim=(lo, max(acc) + 0.01),
        title=f"{dataset}, seed {seed}: which part of 4-bit training costs accuracy",
    )
    ax.invert_yaxis()
    for i, a in enumerate(acc):
        ax.text(a + 0.001, i, f"{a:.4f}", va="center", fontsize=7)
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    raise SystemExit(main())
