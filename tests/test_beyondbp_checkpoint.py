"""Checkpoints hold every package's state bit for bit: packed 4-bit codes, scaling
histories, crossbar tiles, energy ledgers, PRNG keys and counters (beyondbp.checkpoint);
a save that dies part way keeps the previous checkpoint; damage is named, never restored."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import analog
import fwdgrad
import lowbit
from analog import presets
from beyondbp import checkpoint


def _raw(x):
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        return jax.random.key_impl(x), np.asarray(jax.random.key_data(x))
    return None, np.asarray(x)


def _assert_bit_identical(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)  # static fields (fmt, shape, device) too
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        (ix, vx), (iy, vy) = _raw(x), _raw(y)
        assert ix == iy and vx.dtype == vy.dtype and vx.shape == vy.shape
        assert vx.tobytes() == vy.tobytes()  # bit for bit, NaN payloads and signed zeros too


def _round_trip(tmp_path, tree, target):
    path = checkpoint.save(tmp_path, 5, tree)
    step, restored = checkpoint.restore(path, target)
    assert step == 5
    return restored


def test_packed_4bit_codes_round_trip(tmp_path):
    x = jnp.asarray([0.0, -0.0, 0.3, -1.7, 5.0, 1e-4, -60.0, jnp.nan, jnp.inf], jnp.float32)
    w = jax.random.normal(jax.random.key(0), (5, 3), jnp.float32)
    tree = {
        "grad": lowbit.encode(x, lowbit.RADIX4_FP4),  # odd length: a padded nibble
        "weight": lowbit.encode(w, lowbit.INT4),
        "e2m1": lowbit.encode(w, lowbit.E2M1, 0.5),
        "bf16": jnp.ones((2,), jnp.bfloat16),
    }
    target = {
        "grad": lowbit.encode(jnp.zeros_like(x), lowbit.RADIX4_FP4),
        "weight": lowbit.encode(jnp.zeros_like(w), lowbit.INT4),
        "e2m1": lowbit.encode(jnp.zeros_like(w), lowbit.E2M1, 1.0),
        "bf16": jnp.zeros((2,), jnp.bfloat16),
    }
    restored = _round_trip(tmp_path, tree, target)
    _assert_bit_identical(restored, tree)
    assert restored["grad"].codes.shape == (5,) and restored["grad"].codes.dtype == jnp.uint8
    for name in ("grad", "weight", "e2m1"):
        np.testing.assert_array_equal(lowbit.decode(restored[name]), lowbit.decode(tree[name]))


def _states():
    """Params and, after a few real steps, the state of every package's transforms."""
    k1, k2 = jax.random.split(jax.random.key(1))
    params = {"w": jax.random.normal(k1, (5, 3)) * 0.3, "b": jax.random.normal(k2, (3,)) * 0.1}

    def loss(p):
        return jnp.sum(jnp.tanh(jnp.ones((5,), jnp.float32) @ p["w"] + p["b"]) ** 2)

    tx = optax.chain(
        fwdgrad.forward_gradient(num_tangents=2, seed=4),
        lowbit.quantize_updates(lowbit.RADIX4_FP4, scaling="delayed", history_length=3, seed=5),
        optax.sgd(0.1),
        analog.program(presets.TAOX_RERAM, tile_shape=(2, 2), seed=6),
    )
    energy = analog.init_energy_network(jax.random.key(2, impl="rbg"), (5, 4, 3))
    x = jax.random.uniform(jax.random.key(3), (4, 5), jnp.float32)
    y = jnp.asarray([0, 1, 2, 0], jnp.int32)
    ep = analog.equilibrium_propagation(beta=0.3, free_steps=8, nudged_steps=4, tol=None, seed=7)

    @jax.jit
    def step(p, s, ep_state):
        u, s = tx.update(None, s, p, loss_fn=loss)
        _, ep_state = ep.update(None, ep_state, energy, batch=(x, y))
        return optax.apply_updates(p, u), s, ep_state

    fresh = {"params": params, "opt": tx.init(params), "ep": ep.init(energy)}
    p, s, e = params, fresh["opt"], fresh["ep"]
    for _ in range(2):
        p, s, e = step(p, s, e)
    return {"params": p, "opt": s, "ep": e}, fresh, step


def test_transform_states_round_trip_and_resume_bit_identically(tmp_path):
    trained, fresh, step = _states()
    restored = _round_trip(tmp_path, trained, fresh)
    _assert_bit_identical(restored, trained)
    fg, qu, _, prog = restored["opt"]
    assert int(fg.count) == 2 and int(qu.count) == 2 and int(prog.count) == 2
    assert bool(jnp.any(qu.amax_history["w"] > 0))  # scaling history
    assert float(prog.ledger.pulses) > 0 and float(restored["ep"].ledger.cell_reads) > 0
    assert jax.random.key_impl(prog.key) == jax.random.key_impl(fresh["opt"][3].key)
    # The next step from the restored state is the step the uninterrupted run takes.
    _assert_bit_identical(
        step(restored["params"], restored["opt"], restored["ep"]),
        step(trained["params"], trained["opt"], trained["ep"]),
    )


def _program_state():
    params = {"w": jnp.ones((3, 2), jnp.float32)}
    tx = analog.program(presets.TAOX_RERAM, tile_shape=(2, 2))
    state = tx.init(params)
    _, state = tx.update({"w": jnp.full((3, 2), 0.01, jnp.float32)}, state, params)
    return params, state


def test_checkpoint_from_before_program_state_had_pending_still_restores(tmp_path):
    """ProgramState gained ``pending`` (None unless mixed_precision=True); a checkpoint written
    without that field restores into a run where it is None. Arrays are stored by their path in
    the tree, so the layout written before the field is the state's fields without it."""
    params, state = _program_state()
    old_layout = {k: v for k, v in state._asdict().items() if k != "pending"}
    path = checkpoint.save(tmp_path, 3, {"params": params, "opt": old_layout})
    tx = analog.program(presets.TAOX_RERAM, tile_shape=(2, 2))
    step, restored = checkpoint.restore(path, {"params": params, "opt": tx.init(params)})
    assert step == 3 and restored["opt"].pending is None
    _assert_bit_identical(restored["opt"], state)
    # a mixed-precision run's accumulator is data: a checkpoint without it is refused, by name
    mixed = analog.program(presets.TAOX_RERAM, tile_shape=(2, 2), mixed_precision=True)
    with pytest.raises(checkpoint.CheckpointError, match=r"opt/pending/\S+ of this run is not"):
        checkpoint.restore(path, {"params": params, "opt": mixed.init(params)})


def test_msgpack_checkpoint_of_the_earlier_format_still_resumes(tmp_path):
    """A run checkpointed by the single-file format (written here the way it was written,
    without ``pending``) is found by ``latest`` and restored, typed key included."""
    from flax import serialization

    from beyondbp import _checkpoint_msgpack  # noqa: F401  (registers Packed/Tiles with flax)

    params, state = _program_state()
    tree = {"params": params, "opt": state, "key": jax.random.key(9, impl="rbg")}
    raw = jax.tree.map(lambda x: np.asarray(jax.random.key_data(x) if _raw(x)[0] else x), tree)
    sd = serialization.to_state_dict(raw)
    del sd["opt"]["pending"]
    (tmp_path / "ckpt_000000004.msgpack").write_bytes(
        serialization.msgpack_serialize({"step": 4, "tree": sd})
    )
    assert checkpoint.latest(tmp_path).name == "ckpt_000000004.msgpack"
    step, restored = checkpoint.restore(checkpoint.latest(tmp_path), tree)
    assert step == 4
    _assert_bit_identical(restored, tree)
    (tmp_path / "ckpt_000000004.msgpack").write_bytes(b"\x93garbage")
    with pytest.raises(checkpoint.CheckpointError, match="not a readable checkpoint"):
        checkpoint.restore(tmp_path / "ckpt_000000004.msgpack", tree)


def test_typed_keys_of_every_impl_and_block_packed_round_trip(tmp_path):
    tree = {
        "threefry": jax.random.key(1),
        "rbg": jax.random.key(2, impl="rbg"),
        "unsafe_rbg": jax.random.split(jax.random.key(3, impl="unsafe_rbg"), 3),
        "raw": jax.random.PRNGKey(4),  # a legacy uint32 key stays a uint32 array
        "mx": lowbit.encode_blocks(jax.random.normal(jax.random.key(5), (4, 64)), lowbit.MXFP4),
        "nv": lowbit.encode_blocks(jax.random.normal(jax.random.key(6), (2, 48)), lowbit.NVFP4),
    }
    target = jax.tree.map(lambda x: x, tree)
    target["mx"] = lowbit.encode_blocks(jnp.zeros((4, 64)), lowbit.MXFP4)
    target["nv"] = lowbit.encode_blocks(jnp.zeros((2, 48)), lowbit.NVFP4)
    target["rbg"] = jax.random.key(0, impl="rbg")
    restored = _round_trip(tmp_path, tree, target)
    _assert_bit_identical(restored, tree)
    assert str(jax.random.key_impl(restored["unsafe_rbg"])) == "unsafe_rbg"
    assert restored["raw"].dtype == jnp.uint32 and restored["mx"].codes.dtype == jnp.uint8
    np.testing.assert_array_equal(
        lowbit.decode_blocks(restored["nv"]), lowbit.decode_blocks(tree["nv"])
    )
    # rbg and unsafe_rbg keys have the same data shape: only the stored impl tells them apart
    wrong = dict(target, rbg=jax.random.key(0, impl="unsafe_rbg"))
    with pytest.raises(checkpoint.CheckpointError, match=r"leaf rbg is a key<rbg>.*key<unsafe"):
        checkpoint.restore(checkpoint.latest(tmp_path), wrong)


# orbax leaves a coroutine behind when tensorstore fails a read ("Event loop is closed"): its
# internals, reported by pytest as an unraisable exception after the CheckpointError.
_ORBAX_READ_ERROR = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def _files(d):
    return {p.relative_to(d): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@_ORBAX_READ_ERROR
def test_damaged_array_store_is_refused_and_left_as_it_was(tmp_path):
    tree = {"params": {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones((3,))}}
    path = checkpoint.save(tmp_path, 1, tree)
    chunks = [p for p in path.rglob("*") if p.is_file() and p.parent.name == "d"]
    assert chunks, "no array data files: the layout changed"
    for c in chunks:
        c.write_bytes(b"\0" * 7)
    before = _files(tmp_path)
    with pytest.raises(checkpoint.CheckpointError, match="not a readable checkpoint"):
        checkpoint.restore(path, tree)
    assert _files(tmp_path) == before


@_ORBAX_READ_ERROR
def test_one_flipped_byte_anywhere_is_refused_or_harmless(tmp_path):
    """Flip one byte in the middle of each file of a checkpoint in turn: the restore is refused
    or gives the saved bits, never other values. orbax's zstd chunks carry no checksum, so a
    flip inside the array data is caught by the CRC-32 written beside it, naming the array."""
    import shutil

    w = jnp.arange(600.0, dtype=jnp.float32).reshape(20, 30)
    tree = {"params": {"w": w, "b": jnp.ones((3,))}, "key": jax.random.key(3, impl="rbg")}
    path = checkpoint.save(tmp_path / "ok", 1, tree)
    named_data = 0
    for f in sorted(p.relative_to(path) for p in path.rglob("*") if p.is_file()):
        copy = tmp_path / "flipped"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(path, copy)
        raw = bytearray((copy / f).read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        (copy / f).write_bytes(bytes(raw))
        try:
            _, r = checkpoint.restore(copy, tree)
        except checkpoint.CheckpointError as e:
            named_data += "leaf params/w: its data do not match the checksum" in str(e)
            continue
        _assert_bit_identical(r, tree)  # a file the restore does not read, or commit text
    assert named_data >= 1, "no flip inside params/w's data was caught by its checksum"


def test_manifest_and_store_that_disagree_name_the_array(tmp_path):
    """The step's metadata file says params/w is [3, 2]; the array store holds [2, 3]."""
    import json

    tree = {"params": {"w": jnp.arange(6.0).reshape(2, 3)}}
    path = checkpoint.save(tmp_path, 1, tree)
    meta = path / "_CHECKPOINT_METADATA"
    m = json.loads(meta.read_text())
    (rec,) = m["custom_metadata"]["arrays"]
    rec["shape"] = [3, 2]
    meta.write_text(json.dumps(m))
    other = {"params": {"w": jnp.zeros((3, 2))}}
    with pytest.raises(checkpoint.CheckpointError, match="leaf params/w: the array store"):
        checkpoint.restore(path, other)
    meta.write_text("{not json")
    with pytest.raises(checkpoint.CheckpointError, match="not a readable checkpoint"):
        checkpoint.restore(path, tree)


def test_a_save_that_fails_part_way_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    """The arrays are written, then the disk fills before the rename (an fsync error): the
    previous checkpoint stays the newest, restores, and no partial directory is left."""
    import errno

    first = {"w": jnp.arange(4.0)}
    checkpoint.save(tmp_path, 1, first)
    before = _files(tmp_path)

    def full(self, directory):
        assert any(pathlib.Path(directory).rglob("*")), "the arrays should be written by now"
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint._DurableHandler, "finalize", full)
    with pytest.raises(OSError, match=os.strerror(errno.ENOSPC)):
        checkpoint.save(tmp_path, 2, {"w": jnp.arange(4.0) + 1})
    assert _files(tmp_path) == before and [p.name for p in tmp_path.iterdir()] == ["ckpt_000000001"]
    monkeypatch.undo()
    step, r = checkpoint.restore(checkpoint.latest(tmp_path), first)
    assert step == 1
    _assert_bit_identical(r, first)


_KILLED_MID_SAVE = """
import os, signal, sys
import jax.numpy as jnp
from beyondbp import checkpoint
checkpoint.save(sys.argv[1], 1, {"w": jnp.arange(4.0)})
def die(self, directory):  # every array is written: only the rename is left
    os.kill(os.getpid(), signal.SIGKILL)
checkpoint._DurableHandler.finalize = die
checkpoint.save(sys.argv[1], 2, {"w": jnp.arange(4.0) + 1})
"""


def test_a_process_killed_mid_save_keeps_the_previous_checkpoint(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    r = subprocess.run(
        [sys.executable, "-c", _KILLED_MID_SAVE, str(tmp_path)], env=env, timeout=120
    )
    assert r.returncode == -signal.SIGKILL
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names[0] == "ckpt_000000001" and len(names) == 2 and ".orbax-checkpoint-tmp" in names[1]
    assert checkpoint.latest(tmp_path).name == "ckpt_000000001"
    step, r = checkpoint.restore(checkpoint.latest(tmp_path), {"w": jnp.zeros(4)})
    assert step == 1 and np.asarray(r["w"]).tolist() == [0, 1, 2, 3]
    checkpoint.save(tmp_path, 2, {"w": jnp.arange(4.0) + 1})  # the next save tidies up
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt_000000001", "ckpt_000000002"]


def test_saving_a_step_again_replaces_it_whole(tmp_path):
    """A stop request right after a periodic save writes the same step again."""
    checkpoint.save(tmp_path, 5, {"w": jnp.zeros(3)})
    checkpoint.save(tmp_path, 5, {"w": jnp.ones(3)})
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt_000000005"]
    _, r = checkpoint.restore(checkpoint.latest(tmp_path), {"w": jnp.zeros(3)})
    np.testing.assert_array_equal(r["w"], np.ones(3, np.float32))


def test_a_re_save_killed_between_its_two_renames_loses_nothing(tmp_path):
    """Saving a step again swaps a complete staged copy in with two renames; a process killed
    between them leaves the old copy renamed away and the new one staged. ``latest`` finds
    the staged copy, and the next save completes the swap."""
    import shutil

    checkpoint.save(tmp_path, 4, {"w": jnp.zeros(3)})
    new = checkpoint.save(tmp_path / "elsewhere", 5, {"w": jnp.ones(3)})
    old = checkpoint.save(tmp_path, 5, {"w": jnp.zeros(3)})
    os.replace(old, tmp_path / ".ckpt_000000005.deleting")  # the first rename of the swap
    shutil.copytree(new, tmp_path / ".ckpt_000000005.new")  # the staged copy, complete
    shutil.rmtree(tmp_path / "elsewhere")
    assert checkpoint.latest(tmp_path).name == ".ckpt_000000005.new"
    step, r = checkpoint.restore(checkpoint.latest(tmp_path), {"w": jnp.zeros(3)})
    assert step == 5 and np.asarray(r["w"]).tolist() == [1, 1, 1]
    checkpoint.save(tmp_path, 6, {"w": jnp.full(3, 2.0)}, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt_000000005", "ckpt_000000006"]
    _, r = checkpoint.restore(tmp_path / "ckpt_000000005", {"w": jnp.zeros(3)})
    assert np.asarray(r["w"]).tolist() == [1, 1, 1]
