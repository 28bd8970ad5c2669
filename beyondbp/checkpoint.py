"""Checkpoints of a training run: params and every transform's state, atomically.

A checkpoint is one msgpack file (``flax.serialization``) holding a pytree of
arrays: params, the optimiser state (PRNG keys, counts, scaling histories,
crossbar tiles, energy ledgers, packed 4-bit arrays: whatever the transforms
keep) and the step. Typed PRNG keys are stored as their raw key data and
re-wrapped on restore.

Writes go to a temporary file in the same directory and are renamed into
place (``os.replace`` is atomic on POSIX), so an interrupted write never
damages the previous checkpoint. Restoring checks the file against the
structure, shapes and dtypes of a freshly initialised target and says exactly
what differs; a corrupt or mismatched file leaves everything on disk intact.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import tempfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

import analog
import lowbit

__all__ = ["save", "restore", "latest", "CheckpointError"]

_NAME = re.compile(r"^ckpt_(\d{9})\.msgpack$")


class CheckpointError(ValueError):
    """A checkpoint could not be read, or does not match the run it is restored into."""


def _register_pytree_dataclass(cls) -> None:
    """Teach flax's state dicts a dataclass registered as a JAX pytree (data fields only).

    flax knows dicts, lists, tuples and NamedTuples; any other node (``lowbit.Packed``,
    ``analog.Tiles``) would reach msgpack as an opaque object. Static fields (shape, format,
    device model) are not stored: they come from the restore target, like every structure.
    """

    def data_fields(x):
        children = jax.tree_util.tree_flatten_with_path(x, is_leaf=lambda y: y is not x)[0]
        return [k.name for (k,), _ in children]

    def to_state(x):
        return {name: serialization.to_state_dict(getattr(x, name)) for name in data_fields(x)}

    def from_state(x, state):
        return dataclasses.replace(
            x,
            **{
                name: serialization.from_state_dict(getattr(x, name), state[name], name=name)
                for name in data_fields(x)
            },
        )

    serialization.register_serialization_state(cls, to_state, from_state, override=True)


for _cls in (lowbit.Packed, analog.Tiles):
    _register_pytree_dataclass(_cls)


def _is_key(x) -> bool:
    return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _to_numpy(tree):
    def leaf(x):
        if _is_key(x):
            x = jax.random.key_data(x)
        return np.asarray(x)

    return jax.tree.map(leaf, tree)


def _state_dict(tree):
    return serialization.to_state_dict(_to_numpy(tree))


def save(directory, step: int, tree: Any, *, keep: int = 2) -> pathlib.Path:
    """Write ``tree`` (any pytree of arrays) as checkpoint ``step``; keep the newest ``keep``."""
    if not isinstance(step, int) or step < 0:
        raise ValueError(f"step={step!r}: need a non-negative integer")
    if keep < 1:
        raise ValueError(f"keep={keep!r}: need at least 1")
    d = pathlib.Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    payload = serialization.msgpack_serialize({"step": step, "tree": _state_dict(tree)})
    fd, tmp = tempfile.mkstemp(prefix=".ckpt_", suffix=".tmp", dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        final = d / f"ckpt_{step:09d}.msgpack"
        os.replace(tmp, final)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    for old in sorted(p for p in d.iterdir() if _NAME.match(p.name))[:-keep]:
        old.unlink()
    return final


def latest(directory) -> pathlib.Path | None:
    """The newest checkpoint file in ``directory``, or None."""
    d = pathlib.Path(directory)
    if not d.is_dir():
        return None
    files = sorted(p for p in d.iterdir() if _NAME.match(p.name))
    return files[-1] if files else None


def _fill_new_fields(ref, sd):
    """Let a checkpoint written before a state NamedTuple gained a field that defaults to None
    (e.g. ``analog.ProgramState.pending``) restore into a run where that field is None.

    flax stores a NamedTuple as a dict of its fields and refuses a dict whose keys differ; a
    missing field whose value in the target is None carries no data, so it is added as None.
    Lists and tuples are stored as dicts keyed "0", "1", ...
    """
    if not isinstance(sd, dict):
        return sd
    if isinstance(ref, tuple) and hasattr(ref, "_fields"):
        sd = dict(sd)
        for name in ref._fields:
            if name not in sd and getattr(ref, name) is None:
                sd[name] = None
        return {
            k: _fill_new_fields(getattr(ref, k), v) if k in ref._fields else v
            for k, v in sd.items()
        }
    if isinstance(ref, dict):
        return {k: _fill_new_fields(ref[k], v) if k in ref else v for k, v in sd.items()}
    if isinstance(ref, (list, tuple)):
        return {
            k: _fill_new_fields(ref[int(k)], v) if k.isdigit() and int(k) < len(ref) else v
            for k, v in sd.items()
        }
    return sd


def _describe(path):
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path) or "<root>"


def restore(path, target: Any) -> tuple[int, Any]:
    """Read checkpoint ``path`` into the structure of ``target``; returns ``(step, tree)``.

    Raises:
      CheckpointError: unreadable file, or a structure/shape/dtype that differs
        from ``target`` (the message names the first differing leaf).
    """
    path = pathlib.Path(path)
    try:
        raw = serialization.msgpack_restore(path.read_bytes())
        step, state = int(raw["step"]), raw["tree"]
    except Exception as e:  # msgpack raises several unrelated types on garbage
        raise CheckpointError(
            f"{path}: not a readable checkpoint ({type(e).__name__}: {e}); "
            "delete it to start fresh or point to another checkpoint"
        ) from None
    ref = _to_numpy(target)
    state = _fill_new_fields(ref, state)
    try:
        loaded = serialization.from_state_dict(ref, state)
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(
            f"{path}: structure does not match this run ({e}); was it "
            "written by a different method, model or configuration?"
        ) from None
    flat_ref = jax.tree_util.tree_flatten_with_path(ref)[0]
    flat_new = jax.tree.leaves(loaded)
    if len(flat_ref) != len(flat_new):
        raise CheckpointError(
            f"{path}: holds {len(flat_new)} arrays, this run has "
            f"{len(flat_ref)}; different method or configuration"
        )
    for (kp, a), b in zip(flat_ref, flat_new):
        b = np.asarray(b)
        if a.shape != b.shape or a.dtype != b.dtype:
            raise CheckpointError(
                f"{path}: leaf {_describe(kp)} is {b.dtype}{list(b.shape)} in the checkpoint but "
                f"{a.dtype}{list(a.shape)} in this run; different model or configuration"
            )
    leaves_t, treedef = jax.tree.flatten(target)

    def back(t, b):
        if _is_key(t):
            return jax.random.wrap_key_data(jnp.asarray(b), impl=jax.random.key_impl(t))
        return jnp.asarray(b, dtype=t.dtype) if hasattr(t, "dtype") else b

    return step, jax.tree.unflatten(treedef, [back(t, b) for t, b in zip(leaves_t, flat_new)])
