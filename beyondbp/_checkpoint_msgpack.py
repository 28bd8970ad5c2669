"""Read checkpoints of the first format: one msgpack file per step (``ckpt_<step>.msgpack``).

:mod:`beyondbp.checkpoint` writes orbax directories; this module only reads the single-file
format written before, so runs checkpointed by an older version still resume. The file holds
``{"step": int, "tree": flax state dict}``; typed PRNG keys were stored as their raw key data.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import jax
import numpy as np
from flax import serialization

import analog
import lowbit


def _register_pytree_dataclass(cls) -> None:
    """Teach flax's state dicts a dataclass registered as a JAX pytree (data fields only).

    flax knows dicts, lists, tuples and NamedTuples; any other node (``lowbit.Packed``,
    ``analog.Tiles``) was stored as a dict of its data fields. Static fields (shape, format,
    device model) come from the restore target, like every structure.
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


def _fill_new_fields(ref, sd):
    """Let a file written before a state NamedTuple gained a field that defaults to None
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


def read(path: pathlib.Path, ref: Any, error: type[Exception]) -> tuple[int, list[np.ndarray]]:
    """``(step, leaves)`` of msgpack checkpoint ``path`` laid out like ``ref`` (numpy leaves,
    keys as key data); ``error`` is raised for an unreadable file or another structure."""
    try:
        raw = serialization.msgpack_restore(path.read_bytes())
        step, state = int(raw["step"]), raw["tree"]
    except Exception as e:  # msgpack raises several unrelated types on garbage
        raise error(
            f"{path}: not a readable checkpoint ({type(e).__name__}: {e}); "
            "delete it to start fresh or point to another checkpoint"
        ) from None
    try:
        loaded = serialization.from_state_dict(ref, _fill_new_fields(ref, state))
    except (ValueError, KeyError, TypeError) as e:
        raise error(
            f"{path}: structure does not match this run ({e}); was it "
            "written by a different method, model or configuration?"
        ) from None
    return step, [np.asarray(b) for b in jax.tree.leaves(loaded)]
