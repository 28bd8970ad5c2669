"""Checkpoint, resume and determinism: a real `beyondbp train` process is killed and resumed.

The resumed run must end with params bit-identical to an uninterrupted run with
the same seed (same backend: CPU here). Corrupt or mismatched checkpoints give a
clear error and leave the file as it was.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _multidevice import reaped

from beyondbp import checkpoint

STEPS = 1000


def _cmd(ckdir, out, *extra):
    return [
        sys.executable,
        "-m",
        "beyondbp.cli",
        "train",
        "--method",
        "backprop-adam",
        "--steps",
        str(STEPS),
        "--widths",
        "256,256",
        "--seed",
        "3",
        "--checkpoint-dir",
        str(ckdir),
        "--checkpoint-every",
        "25",
        "--eval-every",
        str(STEPS),
        "--out",
        str(out),
        "--no-progress",
        *extra,
    ]


def _final_params(out):
    """The final params ``beyondbp train`` wrote to ``out``, read with orbax alone (no target:
    nested dicts of numpy arrays, keyed by each array's path in the params tree)."""
    import orbax.checkpoint as ocp

    (d,) = [p for p in out.iterdir() if p.name.startswith("ckpt_")]
    with warnings.catch_warnings():  # "sharding info not provided": one CPU device, as saved
        warnings.simplefilter("ignore", UserWarning)
        flat = jax.tree.leaves(ocp.PyTreeCheckpointer().restore(d))
    return [np.asarray(a) for a in flat]


def _env():
    env = dict(os.environ)
    env.setdefault("JAX_PLATFORMS", "cpu")
    return env


@pytest.fixture(scope="module")
def reference_params(tmp_path_factory):
    """Final params of an uninterrupted run with the same seed."""
    d = tmp_path_factory.mktemp("ref")
    ref = subprocess.run(
        _cmd(d / "ck", d / "out"), env=_env(), capture_output=True, text=True, timeout=300
    )
    assert ref.returncode == 0, ref.stderr[-2000:]
    return _final_params(d / "out")


# SIGKILL mid-run is also proven, across two processes with sharded state, by
# tests/test_checkpoint_multihost.py in the default suite; this single-process variant is slow.
@pytest.mark.parametrize(
    "sig",
    [pytest.param(signal.SIGKILL, marks=pytest.mark.slow), signal.SIGTERM],
    ids=["SIGKILL", "SIGTERM"],
)
def test_killed_run_resumes_bit_identical(tmp_path, sig, reference_params):

    ck, out = tmp_path / "ck", tmp_path / "out"
    proc = subprocess.Popen(
        _cmd(ck, out), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    with reaped(proc):
        deadline = time.time() + 240
        while time.time() < deadline:
            c = checkpoint.latest(ck)
            if c is not None and int(c.stem.split("_")[1]) >= 50:
                break
            if proc.poll() is not None:
                pytest.fail(
                    f"run ended before it could be interrupted: {proc.stderr.read()[-2000:]}"
                )
            time.sleep(0.005)
        proc.send_signal(sig)
        proc.wait(timeout=60)
    assert proc.returncode != 0, "the run finished before the signal: nothing was tested"
    assert not out.exists(), "interrupted run must not have written final params"
    stopped_at = int(checkpoint.latest(ck).stem.split("_")[1])
    assert 50 <= stopped_at < STEPS

    resumed = subprocess.run(_cmd(ck, out), env=_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = reference_params, _final_params(out)
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(x, y)


def _tree():
    return {
        "params": {"w": jnp.arange(6.0).reshape(2, 3)},
        "key": jax.random.key(0),
        "opt": optax.adam(1e-3).init({"w": jnp.zeros((2, 3))}),
    }


def test_round_trip_keeps_keys_dtypes_and_values(tmp_path):
    t = _tree()
    t["params"]["b"] = jnp.ones((4,), jnp.bfloat16)
    checkpoint.save(tmp_path, 7, t)
    step, r = checkpoint.restore(checkpoint.latest(tmp_path), t)
    assert step == 7
    assert jax.random.key_impl(r["key"]) == jax.random.key_impl(t["key"])
    np.testing.assert_array_equal(jax.random.key_data(r["key"]), jax.random.key_data(t["key"]))
    assert r["params"]["b"].dtype == jnp.bfloat16
    assert jax.tree.structure(r) == jax.tree.structure(t)


def _files(d):
    return {p.relative_to(d): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_corrupt_checkpoint_is_clear_and_untouched(tmp_path):
    path = checkpoint.save(tmp_path, 1, _tree())
    for f in (p for p in path.rglob("*") if p.is_file()):  # every file cut short
        f.write_bytes(f.read_bytes()[:40])
    before = _files(path)
    with pytest.raises(checkpoint.CheckpointError, match="not a readable checkpoint"):
        checkpoint.restore(path, _tree())
    assert _files(path) == before


def test_mismatched_checkpoint_names_the_leaf(tmp_path):
    path = checkpoint.save(tmp_path, 1, _tree())
    other = _tree()
    other["params"]["w"] = jnp.zeros((3, 3))
    with pytest.raises(checkpoint.CheckpointError, match=r"leaf params/w is float32\[2, 3\]"):
        checkpoint.restore(path, other)


def test_keep_newest_and_no_temp_files(tmp_path):
    for s in (1, 2, 3, 4):
        checkpoint.save(tmp_path, s, _tree(), keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt_000000003", "ckpt_000000004"]


def test_resume_with_a_different_model_is_refused(tmp_path):
    ck = tmp_path / "ck"
    base = [
        sys.executable,
        "-m",
        "beyondbp.cli",
        "train",
        "--steps",
        "30",
        "--checkpoint-dir",
        str(ck),
        "--checkpoint-every",
        "10",
        "--no-progress",
        "--out",
        str(tmp_path / "o"),
    ]
    r1 = subprocess.run(
        base + ["--widths", "16"], env=_env(), capture_output=True, text=True, timeout=300
    )
    assert r1.returncode == 0, r1.stderr[-2000:]
    before = _files(checkpoint.latest(ck))
    r2 = subprocess.run(
        base + ["--widths", "24", "--steps", "60"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r2.returncode == 2 and "different model or configuration" in r2.stderr
    assert _files(checkpoint.latest(ck)) == before


# Slow (a minute on 2 cores): test_beyondbp_multiprocess.test_two_processes_equal_one_process
# covers process-count independence in the default suite.
@pytest.mark.slow
def test_same_seed_same_params_across_processes(tmp_path, reference_params):
    """Determinism: a second, independent process with the same seed gives identical bits."""
    r = subprocess.run(
        _cmd(tmp_path / "ck", tmp_path / "out"),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    for x, y in zip(reference_params, _final_params(tmp_path / "out")):
        np.testing.assert_array_equal(x, y)


def _small_run(ckdir, steps, stop_at=None, second_signal=False):
    """Train a small MLP in this process; optionally signal it from inside the loop.

    The signal is sent from the data iterator (`next(data)`) so it lands at a
    chosen step and at a moment when params of that step are already stored:
    exactly where the CI failure of a raw KeyboardInterrupt came from.
    """
    from beyondbp import datasets, methods, train

    tr = datasets.load("mnist_small", "train")
    setup = methods.get("backprop-adam").build(
        methods.MethodConfig(key=jax.random.key(1), widths=(32,), steps=steps)
    )
    real_batches = datasets.batches
    calls = {"n": 0}

    def batches(*a, **kw):
        for b in real_batches(*a, **kw):
            calls["n"] += 1
            if stop_at is not None and calls["n"] == stop_at:
                os.kill(os.getpid(), signal.SIGTERM)
                if second_signal:
                    os.kill(os.getpid(), signal.SIGTERM)
            yield b

    mp = pytest.MonkeyPatch()
    mp.setattr(datasets, "batches", batches)
    try:
        return train.train(
            setup,
            tr,
            steps=steps,
            batch_size=32,
            seed=5,
            progress=False,
            checkpoint_dir=ckdir,
            checkpoint_every=7,
        )
    finally:
        mp.undo()


@pytest.mark.standard_promotion  # optax.adam's bias correction mixes int and float
@pytest.mark.parametrize("second_signal", [False, True], ids=["one-signal", "two-signals"])
def test_signal_at_any_step_resumes_bit_identical_in_process(tmp_path, second_signal):
    """SIGTERM is a stop request honoured between steps (a second one stops at once);
    wherever it lands, the checkpoint holds params and state of one step count."""
    steps = 40
    ref = jax.tree.leaves(_small_run(tmp_path / "ref", steps)["params"])
    previous = signal.getsignal(signal.SIGTERM)
    for stop_at in (3, 12, 29):  # the first `next` call is the memory probe: 2 is step 0
        ck = tmp_path / f"ck{stop_at}"
        with pytest.raises(KeyboardInterrupt):
            _small_run(ck, steps, stop_at=stop_at, second_signal=second_signal)
        assert signal.getsignal(signal.SIGTERM) is previous, "the loop must restore handlers"
        got = jax.tree.leaves(_small_run(ck, steps)["params"])
        for x, y in zip(ref, got):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
