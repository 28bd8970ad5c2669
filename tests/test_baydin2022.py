"""benchmarks/baydin2022.py: the looped step (used for the CNN, see BENCHMARKS.md) is the
scanned step, and the models have the paper's shapes (Baydin et al. 2022, sec. 5.2)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _bench import import_benchmark


@pytest.fixture(scope="module")
def baydin():
    return import_benchmark("baydin2022")


def _batches(steps, batch=8):
    kx, ky = jax.random.split(jax.random.key(3))
    xs = jax.random.uniform(kx, (steps, batch, 28, 28, 1), jnp.float32)
    ys = jax.random.randint(ky, (steps, batch), 0, 10, jnp.int32)
    return xs, ys


@pytest.mark.parametrize(
    "forward,tangent",
    [(False, "gaussian"), (True, "gaussian"), (True, "rademacher"), (True, "rank1")],
)
def test_loop_runner_equals_scan_runner(baydin, forward, tangent):
    # Same keys (fold_in of the step index), same rate schedule: the two runners must agree
    # to rounding, or the CNN's timings would compare different algorithms.
    p0 = baydin.init("logreg", jax.random.key(0))
    xs, ys = _batches(5)
    args = (p0, jnp.int32(7), jax.random.key(1), xs, ys)
    p_scan, l_scan = baydin.make_chunk("logreg", 1e-2, forward, tangent, scan=True)(*args)
    p_loop, l_loop = baydin.make_chunk("logreg", 1e-2, forward, tangent, scan=False)(*args)
    np.testing.assert_allclose(np.asarray(l_loop), np.asarray(l_scan), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(p_loop), jax.tree.leaves(p_scan)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    assert float(l_loop[-1]) != float(l_loop[0])  # the steps did move the parameters


def test_bp_step_is_sgd_on_jax_grad_with_the_papers_decay(baydin):
    # eta_i = eta_0 exp(-i k), k = 1e-4 (sec. 5.2): one BP step at step index i.
    p0 = baydin.init("logreg", jax.random.key(0))
    xs, ys = _batches(1)
    i, lr0 = 5000, 1e-2
    p1, _ = baydin.make_chunk("logreg", lr0, False, "gaussian")(
        p0, jnp.int32(i), jax.random.key(1), xs, ys
    )

    def loss(p):
        logits = baydin.apply("logreg", p, xs[0])
        return jnp.mean(jax.nn.logsumexp(logits, -1) - logits[jnp.arange(8), ys[0]])

    rate = lr0 * np.exp(-i * baydin.DECAY_K)
    g = jax.grad(loss)(p0)
    for a, b, c in zip(jax.tree.leaves(p1), jax.tree.leaves(p0), jax.tree.leaves(g)):
        np.testing.assert_allclose(
            np.asarray(a), np.asarray(b - np.float32(rate) * c), rtol=1e-5, atol=1e-7
        )


def test_model_shapes_follow_the_paper(baydin):
    sizes = {
        m: sum(a.size for a in jax.tree.leaves(baydin.init(m, jax.random.key(0))))
        for m in ("logreg", "mlp", "cnn")
    }
    assert sizes["logreg"] == 784 * 10 + 10
    assert sizes["mlp"] == 784 * 1024 + 1024 + 1024 * 1024 + 1024 + 1024 * 10 + 10
    # four 3x3x64 convs, unpadded: 28 -> 26 -> 24 -> 12 -> 10 -> 8 -> 4, so 4*4*64 = 1024 in
    conv = (9 * 1 * 64 + 64) + 3 * (9 * 64 * 64 + 64)
    assert sizes["cnn"] == conv + 1024 * 1024 + 1024 + 1024 * 10 + 10
    x = jnp.zeros((2, 28, 28, 1), jnp.float32)
    assert baydin.apply("cnn", baydin.init("cnn", jax.random.key(0)), x).shape == (2, 10)


def test_plot_keeps_a_diverged_run_from_flattening_the_curves(baydin):
    # numpy curves, as main() passes them: one run that ends in inf and NaN
    steps = np.arange(1, 6)

    def run(loss):
        curve = {"step": steps, "time_s": steps * 0.1, "smoothed_loss": np.array(loss)}
        return {"curve": curve}

    per_seed = [
        {
            "seed": 0,
            "bp": run([2.30, 2.28, 2.26, 2.25, 2.24]),
            "fg-rank1": run([2.30, 2.20, 9e33, np.inf, np.nan]),
        }
    ]
    ratios = {"fg-rank1": {"level": None}}
    out = {
        "settings": {"window": 3},
        "mnist": {"mlp": {"lr": 2e-3, "per_seed": per_seed, "ratios": ratios}},
    }
    fig = baydin.plot(out)
    (ax,) = [a for a in fig.axes if a.get_title().startswith("mlp")]
    lo, hi = ax.get_ylim()
    assert hi == pytest.approx(1.05 * 2.30) and 2.1 < lo < 2.20
    assert len(fig.axes) == 1  # no empty panels for the functions or the other models
