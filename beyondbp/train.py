"""One jitted training loop for any optax transform.

The loop does not know which method it runs. Each step it builds
``loss_fn = lambda p: loss(apply(p, x), y)`` and calls::

    updates, state = tx.update(grads_or_None, state, params, loss_fn=loss_fn, batch=(x, y))
    params = optax.apply_updates(params, updates)

``grads`` is ``jax.grad(loss_fn)(params)`` for methods that consume gradients
(``Setup.needs_grad``); estimator transforms (forward gradients, the analog
local rule) get ``None`` and read ``loss_fn=`` or ``batch=`` instead, so no
backward pass is ever traced for them. Plain ``optax.GradientTransformation``
objects are wrapped with ``optax.with_extra_args_support``.

The step is compiled once (fixed batch shape, fixed state structure); the
training loss is evaluated on the logging steps by a separate jitted forward
pass, so the timed step is exactly the method's own work.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pathlib
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

import bbcore
from beyondbp import checkpoint as _checkpoint
from beyondbp import datasets as _datasets
from beyondbp._schedule import Schedule, make_schedule
from beyondbp.methods import Setup

__all__ = ["train", "make_step", "evaluate", "compiled_memory", "refused_steps", "write_json"]


def make_step(setup: Setup) -> Callable:
    """The pure training step ``(params, state, x, y) -> (params, state, ok)`` of ``setup``.

    Non-finite policy (the loop's safety net, whatever the transform does): when
    the final updates contain NaN or inf, the step is skipped: params *and* the
    whole transform state stay as they were (no PRNG key, counter, momentum or
    device state is advanced with a poisoned value) and ``ok`` is False so the
    loop can count it.
    """
    tx = optax.with_extra_args_support(setup.tx)

    def step(params, opt_state, x, y):
        def loss_fn(p):
            return setup.loss(setup.apply(p, x), y)

        grads = jax.grad(loss_fn)(params) if setup.needs_grad else None
        updates, new_state = tx.update(grads, opt_state, params, loss_fn=loss_fn, batch=(x, y))
        ok = bbcore.all_finite(updates)
        new_params = optax.apply_updates(params, updates)
        params, opt_state = jax.lax.cond(
            ok, lambda: (new_params, new_state), lambda: (params, opt_state)
        )
        return params, opt_state, ok

    return step


def _make_eval(setup: Setup):
    @jax.jit
    def correct_and_loss(params, x, y, mask):
        logits = setup.apply(params, x)
        hit = (jnp.argmax(logits, axis=-1) == y) & mask
        return jnp.sum(hit.astype(jnp.int32)), setup.loss(logits, y)

    return correct_and_loss


def evaluate(
    setup: Setup, params, ds: _datasets.Dataset, *, batch_size: int = 500, _fn=None
) -> float:
    """Accuracy of ``setup.apply(params, .)`` on every example of ``ds`` (padded batches)."""
    fn = _fn or _make_eval(setup)
    correct = 0
    for x, y, mask in _datasets.batches(
        ds, min(batch_size, len(ds)), shuffle=False, remainder="pad"
    ):
        correct += int(fn(params, x, y, mask)[0])
    return correct / len(ds)


def compiled_memory(fn: Callable, *args) -> dict:
    """Bytes XLA reserves for a jitted call: temporaries, arguments, outputs.

    ``temp`` is the working memory (activations kept for a backward pass live
    here); ``peak`` adds arguments and outputs that are not aliased.
    """
    compiled = jax.jit(fn).lower(*args).compile()
    m = compiled.memory_analysis()
    if m is None:  # some backends do not report it
        return {"temp": None, "argument": None, "output": None, "peak": None}
    temp, arg, out = (
        int(m.temp_size_in_bytes),
        int(m.argument_size_in_bytes),
        int(m.output_size_in_bytes),
    )
    alias = int(getattr(m, "alias_size_in_bytes", 0))
    return {"temp": temp, "argument": arg, "output": out, "peak": temp + arg + out - alias}


def refused_steps(opt_state) -> dict[str, int]:
    """The ``nonfinite`` counters of the transforms in ``opt_state``, by state path.

    Every toolkit transform refuses a non-finite step itself (zero updates,
    state unchanged) and counts it in its state's ``nonfinite`` field; this
    collects them so a run's history says which stage refused how often.
    """
    return bbcore.find_fields(opt_state, "nonfinite")


def _check_setup(setup: Setup):
    if not isinstance(setup, Setup):
        raise TypeError(f"train expects a beyondbp.methods.Setup, got {type(setup).__name__}")
    if not hasattr(setup.tx, "init") or not hasattr(setup.tx, "update"):
        raise TypeError(f"Setup.tx must be an optax transform, got {type(setup.tx).__name__}")


class _StopFlag:
    requested = False


@contextlib.contextmanager
def _graceful_stop():
    """Turn the first SIGINT/SIGTERM into a stop request checked between steps.

    Python runs signal handlers between bytecodes, so a ``KeyboardInterrupt``
    raised straight from the handler can land after a step's new params are
    stored but before the step counter moves on; a checkpoint taken then would
    redo that step on resume. The first signal therefore only sets a flag that
    the loop reads at the top of each step; a second one interrupts at once
    (for a step or a compilation that hangs). Handlers are installed only in
    the main thread (the only place Python allows it) and are restored on exit.
    """
    flag = _StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def request(signum, frame):
        if flag.requested:
            raise KeyboardInterrupt
        flag.requested = True

    old = {s: signal.signal(s, request) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _resume(checkpoint_dir, steps: int, params, opt_state, hist: dict):
    """``(start, params, opt_state)`` from the newest checkpoint in ``checkpoint_dir`` (step 0
    and the given ones when there is none); ``hist`` gets the curves logged before it."""
    ck = _checkpoint.latest(checkpoint_dir)
    if ck is None:
        return 0, params, opt_state
    start, (params, opt_state) = _checkpoint.restore(ck, (params, opt_state))
    if start > steps:
        raise ValueError(
            f"{ck} is at step {start}, beyond steps={steps}; use another "
            "checkpoint_dir or more steps"
        )
    side = pathlib.Path(checkpoint_dir) / "history.json"
    if side.is_file():  # keep the curves of the steps before the checkpoint
        old = json.loads(side.read_text())
        keep = [j for j, s_ in enumerate(old["steps"]) if s_ < start]
        hist["steps"] = [old["steps"][j] for j in keep]
        hist["train_loss"] = [old["train_loss"][j] for j in keep]
        keep = [j for j, s_ in enumerate(old["eval_steps"]) if s_ <= start]
        hist["eval_steps"] = [old["eval_steps"][j] for j in keep]
        hist["test_accuracy"] = [old["test_accuracy"][j] for j in keep]
    hist["resumed_from"] = start
    return start, params, opt_state


def _save_checkpoint(sched: Schedule, step: int, params, opt_state, hist: dict) -> None:
    _checkpoint.save(sched.checkpoint_dir, step, (params, opt_state))
    write_json(hist, pathlib.Path(sched.checkpoint_dir) / "history.json")


def _step_loop(
    setup: Setup,
    step_fn: Callable,
    sched: Schedule,
    train_ds,
    test_ds,
    params,
    opt_state,
    hist,
    start: int,
    bar,
) -> tuple[Any, Any, list[float], list[jax.Array]]:
    """Steps ``start .. sched.steps - 1``: log, step, time, checkpoint, evaluate.

    Returns ``(params, opt_state, step times, per-step ok flags)``. On an interrupt (the first
    SIGINT/SIGTERM is honoured between steps, see :func:`_graceful_stop`) the last complete
    step is checkpointed when there is a checkpoint directory, and the interrupt re-raised.
    """
    jstep = jax.jit(step_fn, donate_argnums=())
    eval_fn = _make_eval(setup)
    data = _datasets.batches(train_ds, sched.batch_size, seed=sched.seed, epochs=None, start=start)
    times: list[float] = []
    oks: list[jax.Array] = []  # read back once at the end: no per-step host sync
    last_acc = float("nan")
    # One tuple, stored by a single assignment: whatever moment a signal lands
    # at, it holds params and state that belong to the same step count.
    snap = (start, params, opt_state)
    with _graceful_stop() as stop:
        try:
            for i in range(start, sched.steps):
                if stop.requested:
                    raise KeyboardInterrupt
                x, y, mask = next(data)
                if i % sched.log_every == 0 or i == sched.steps - 1:
                    loss = float(eval_fn(params, x, y, mask)[1])
                    if not math.isfinite(loss):
                        hist["nonfinite_loss_steps"] += 1
                    hist["steps"].append(i)
                    hist["train_loss"].append(loss)
                    bar.set_postfix(loss=f"{loss:.4f}", acc=f"{last_acc:.4f}")
                t0 = time.perf_counter()
                params, opt_state, ok = jstep(params, opt_state, x, y)
                snap = (i + 1, params, opt_state)
                oks.append(ok)
                if sched.time_steps or i == start:
                    jax.block_until_ready((params, opt_state))
                    dt = time.perf_counter() - t0
                    if i == start:
                        hist["compile_time_s"] = dt
                    else:
                        times.append(dt)
                bar.update(1)
                if (
                    sched.checkpoint_every is not None
                    and (i + 1) % sched.checkpoint_every == 0
                    and i + 1 < sched.steps
                ):
                    _save_checkpoint(sched, i + 1, params, opt_state, hist)
                if test_ds is not None and (
                    (i + 1) % sched.eval_every == 0 or i == sched.steps - 1
                ):
                    # the training batch size: the eval function compiles once, not twice
                    last_acc = evaluate(
                        setup, params, test_ds, batch_size=sched.batch_size, _fn=eval_fn
                    )
                    hist["eval_steps"].append(i + 1)
                    hist["test_accuracy"].append(last_acc)
                    bar.set_postfix(loss=f"{hist['train_loss'][-1]:.4f}", acc=f"{last_acc:.4f}")
                    if sched.json_path is not None and i < sched.steps - 1:
                        # a long run that is stopped keeps every evaluation it made
                        write_json({**hist, "partial": True}, sched.json_path)
        except KeyboardInterrupt:
            if sched.checkpoint_dir is not None:
                done, params, opt_state = snap
                _save_checkpoint(sched, done, params, opt_state, hist)
                bar.write(f"interrupted: checkpoint at step {done} saved in {sched.checkpoint_dir}")
            raise
    return params, opt_state, times, oks


def _summarise(
    hist: dict, setup: Setup, sched: Schedule, params, opt_state, times, oks, wall_s: float
) -> None:
    """Fill in the history's totals, medians and final values (see :func:`train`)."""
    hist["skipped_nonfinite_steps"] = int(len(oks) - np.sum(np.asarray(oks))) if oks else 0
    hist["transform_refused_steps"] = refused_steps(opt_state)
    hist["wall_time_s"] = wall_s
    hist["step_time_s"] = float(np.median(times)) if times else float("nan")
    hist["step_time_mean_s"] = float(np.mean(times)) if times else float("nan")
    hist["final_test_accuracy"] = hist["test_accuracy"][-1] if hist["test_accuracy"] else None
    hist["num_steps"] = sched.steps
    hist["batch_size"] = sched.batch_size
    hist["params"] = params
    hist["opt_state"] = opt_state
    if setup.energy is not None:
        hist["energy"] = setup.energy(opt_state, sched.steps)


def _initial_state(setup: Setup, sched: Schedule, train_ds):
    """``(params, opt_state, history, first step, step function)``: fresh or resumed from the
    newest checkpoint, with the step's compiled memory in the history."""
    params, opt_state = setup.params, setup.tx.init(setup.params)
    hist: dict[str, Any] = {
        "steps": [],
        "train_loss": [],
        "eval_steps": [],
        "test_accuracy": [],
        "nonfinite_loss_steps": 0,
    }
    start = 0
    if sched.checkpoint_dir is not None:
        start, params, opt_state = _resume(
            sched.checkpoint_dir, sched.steps, params, opt_state, hist
        )
    x0, y0, _ = next(_datasets.batches(train_ds, sched.batch_size, seed=sched.seed, epochs=1))
    # the same function object as the loop's jit: traced once for both
    step_fn = make_step(setup)
    hist["memory"] = compiled_memory(step_fn, params, opt_state, x0, y0)
    return params, opt_state, hist, start, step_fn


def _progress_bar(total: int, initial: int, desc: str, progress: bool):
    """The run's tqdm bar (disabled without ``progress``)."""
    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        disable=not progress,
        dynamic_ncols=True,
        leave=True,
    )


def train(
    setup: Setup,
    train_ds: _datasets.Dataset,
    test_ds: _datasets.Dataset | None = None,
    *,
    steps: int | None = None,
    epochs: int | None = None,
    batch_size: int = 64,
    seed: int = 0,
    eval_every: int | None = None,
    log_every: int | None = None,
    progress: bool = True,
    desc: str = "train",
    json_path=None,
    time_steps: bool = True,
    checkpoint_dir=None,
    checkpoint_every: int | None = None,
) -> dict:
    """Train ``setup`` on ``train_ds``; evaluate on ``test_ds``; return a history.

    Args:
      setup: params, pure apply, transform (see :class:`beyondbp.methods.Setup`).
      steps / epochs: the budget; give exactly one (``epochs`` counts full
        batches, the remainder of each shuffled epoch is dropped).
      batch_size: fixed batch size (the step compiles once).
      seed: data order seed.
      eval_every: test accuracy every this many steps (default: 10 points per run).
      log_every: training loss every this many steps (default: about 50 points per run,
        at most every 50 steps).
      time_steps: block on every step to time it exactly (``step_time_s``).
      json_path: if given, the history is also written there as JSON: after every
        evaluation (with ``"partial": true``) and complete at the end.
      checkpoint_dir: save params and the transform state there every
        ``checkpoint_every`` steps, at the end, and when interrupted
        (KeyboardInterrupt / SIGINT / SIGTERM); if it already holds a checkpoint of this
        run, training resumes from it. Resumed runs see the same batches in the
        same order, so on one backend the final params are bit-identical to an
        uninterrupted run with the same seed.

    Returns:
      A JSON-serialisable dict (but for ``params`` and ``opt_state``) with ``steps``,
      ``train_loss`` (lists), ``eval_steps``, ``test_accuracy`` (lists),
      ``final_test_accuracy``, ``step_time_s`` (median seconds per step after compilation),
      ``compile_time_s``, ``memory`` (:func:`compiled_memory` of the step), ``params`` and
      ``opt_state`` (not written to JSON), ``nonfinite_loss_steps`` (logged losses that were
      NaN/inf), ``skipped_nonfinite_steps`` (steps whose updates were non-finite and were
      therefore not applied; see :func:`make_step`), ``transform_refused_steps`` (the
      transforms' own ``nonfinite`` counters, see :func:`refused_steps`).
    """
    _check_setup(setup)
    sched = make_schedule(
        train_ds,
        steps=steps,
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        eval_every=eval_every,
        log_every=log_every,
        time_steps=time_steps,
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=checkpoint_every,
        json_path=json_path,
    )
    params, opt_state, hist, start, step_fn = _initial_state(setup, sched, train_ds)
    t_start = time.perf_counter()
    bar = _progress_bar(sched.steps, start, desc, progress)
    try:
        params, opt_state, times, oks = _step_loop(
            setup, step_fn, sched, train_ds, test_ds, params, opt_state, hist, start, bar
        )
    finally:
        bar.close()
    jax.block_until_ready(params)
    _summarise(hist, setup, sched, params, opt_state, times, oks, time.perf_counter() - t_start)
    if checkpoint_dir is not None:
        _save_checkpoint(sched, sched.steps, params, opt_state, hist)
    if json_path is not None:
        write_json(hist, json_path)
    return hist


def _jsonable(v):
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items() if k not in ("params", "opt_state")}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (np.generic, jax.Array)):
        return np.asarray(v).tolist()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def write_json(hist: dict, path) -> pathlib.Path:
    """Write a history (without params/state) as JSON; creates parent directories."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # temporary name, then rename: a run killed mid-write leaves the previous file whole
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(_jsonable(hist), indent=2))
        os.replace(tmp, path)
    finally:  # a failed write (disk full) leaves no partial .tmp beside the previous file
        tmp.unlink(missing_ok=True)
    return path
