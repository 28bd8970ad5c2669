"""Checkpoints of a training run: params and every transform's state, atomically, on one
host or many.

A checkpoint is a directory ``ckpt_<step:09d>`` written by orbax-checkpoint (its PyTree
handler over tensorstore's OCDBT array store). Every process writes the shards it holds of
each array, so state sharded across the devices of several hosts is saved without gathering
it anywhere, and restored straight into the shardings of the run it is restored into. What
is stored is a pytree of arrays: params, the optimiser state (PRNG keys, counts, scaling
histories, crossbar tiles, energy ledgers, packed 4-bit arrays: whatever the transforms keep)
and, in the checkpoint's metadata, the step and a manifest of every array (its path in the
tree, dtype, shape and, for a typed PRNG key, the key implementation). Typed keys are stored
as their raw key data and re-wrapped on restore; static pytree fields (a packed array's
format and shape, a device model) are not stored: they come from the restore target.

Atomic: orbax writes into a temporary directory, each file is flushed to disk
(``os.fsync``), and the primary process renames the directory into place only after every
process has written its shards; a crash or error before that rename leaves the previous
checkpoints as they were, and the partial directory is removed (by the next save, when the
process was killed). Restoring checks the manifest against the structure, shapes, dtypes and
key implementations of a freshly initialised target, and the restored data against the
CRC-32 of each shard that its writer stored beside it, and names the first differing array;
a corrupt or mismatched checkpoint is refused and left intact on disk. Files of the earlier single-file format (``ckpt_<step>.msgpack``)
are still found by :func:`~beyondbp.checkpoint.latest` and read by
:func:`~beyondbp.checkpoint.restore`.

Several processes (``jax.distributed``): every process calls
:func:`~beyondbp.checkpoint.save` and :func:`~beyondbp.checkpoint.restore` with the same
arguments, in the same order, on a directory they all see.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import zlib
from typing import Any
from urllib.parse import quote

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from beyondbp import _checkpoint_msgpack

__all__ = ["save", "restore", "latest", "CheckpointError"]

_NAME = re.compile(r"^ckpt_(\d{9})$")
_LEGACY_NAME = re.compile(r"^ckpt_(\d{9})\.msgpack$")
_STAGED = re.compile(r"^\.ckpt_(\d{9})\.new$")
# Staging names (a step saved again, a checkpoint being deleted) start with ".ckpt_", orbax's
# temporary directories contain _TMP: neither matches _NAME. latest() sees only finished
# checkpoints (and a finished staged copy whose swap was interrupted, see _steps).
_TMP = ".orbax-checkpoint-tmp"
_FORMAT = 2


class CheckpointError(ValueError):
    """A checkpoint could not be read, or does not match the run it is restored into."""


class _DurableHandler(ocp.PyTreeCheckpointHandler):
    """orbax's PyTree handler, plus checksums and an fsync of every file and directory.

    ``save`` runs on every process: after orbax has written this process's shards, it writes
    their CRC-32s beside them (orbax's zstd chunks carry none: a flipped bit in one would
    restore as a wrong value). ``finalize`` runs on the primary process after all processes have written and before the
    temporary directory is renamed into place: data first, then the rename (POSIX's recipe
    for a write that survives a power cut), and a failure such as a full disk reported by
    fsync (delayed allocation) stops the save before anything is renamed.
    """

    def __init__(self, checksums: dict | None = None):
        super().__init__()
        self._checksums = checksums

    def save(self, directory, *args, **kwargs) -> None:
        super().save(directory, *args, **kwargs)
        if self._checksums is not None:
            name = f"checksums.process_{jax.process_index()}.json"
            with open(pathlib.Path(directory) / name, "w") as f:
                json.dump(self._checksums, f)

    def finalize(self, directory) -> None:
        super().finalize(directory)
        _fsync_tree(pathlib.Path(directory))


@ocp.args.register_with_handler(_DurableHandler, for_save=True)
class _Save(ocp.args.PyTreeSave):
    """PyTreeSave args, registered for :class:`_DurableHandler` (orbax maps args to handlers)."""


@ocp.args.register_with_handler(_DurableHandler, for_restore=True)
class _Restore(ocp.args.PyTreeRestore):
    """PyTreeRestore args, registered for :class:`_DurableHandler`."""


def _fsync_tree(root: pathlib.Path) -> None:
    for dirpath, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(pathlib.Path(dirpath))


def _fsync_dir(path: pathlib.Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _checkpointer(checksums: dict | None = None) -> ocp.Checkpointer:
    return ocp.Checkpointer(_DurableHandler(checksums))


def _primary() -> bool:
    return jax.process_index() == 0


def _barrier(name: str) -> None:
    if jax.process_count() > 1:
        ocp.multihost.sync_global_processes(f"beyondbp.checkpoint:{name}")


def _is_key(x) -> bool:
    return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _component(k) -> str:
    for attr in ("key", "idx", "name"):  # DictKey / FlattenedIndexKey, SequenceKey, GetAttrKey
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def _named_leaves(tree) -> list[tuple[tuple[str, ...], Any]]:
    """``[(path, leaf)]`` in flattening order; a path is the tree's keys as strings."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [(tuple(_component(k) for k in kp), leaf) for kp, leaf in flat]


def _describe(path) -> str:
    return "/".join(path) or "<root>"


def _escape(component: str) -> str:
    # orbax names an array by its dict keys joined with "."; tensorstore keys use "/".
    return quote(component, safe="").replace(".", "%2E") or "%"


def _key(path) -> tuple[str, ...]:
    """Where orbax keeps the array at ``path``: its escaped components, nested dict keys."""
    return tuple(_escape(c) for c in path) or ("%root",)


def _nested(named: list[tuple[tuple[str, ...], Any]]) -> dict:
    """The leaves as nested dicts of escaped path components: orbax's own tree type."""
    out: dict = {}
    for path, leaf in named:
        node = out
        keys = _key(path)
        for c in keys[:-1]:
            node = node.setdefault(c, {})
        node[keys[-1]] = leaf
    return out


def _stored(leaf):
    """What is written for ``leaf``: key data for a typed key, the array for a jax.Array
    (sharded or not: each process writes its shards), numpy for anything else."""
    if _is_key(leaf):
        return jax.random.key_data(leaf)
    return leaf if isinstance(leaf, jax.Array) else np.asarray(leaf)


def _record(path, leaf) -> dict:
    x = _stored(leaf)
    return {
        "path": list(path),
        "dtype": np.dtype(x.dtype).name,
        "shape": list(x.shape),
        "key_impl": str(jax.random.key_impl(leaf)) if _is_key(leaf) else None,
    }


def _region(index, shape) -> list[list[int]]:
    """A shard's place in its global array, ``[[start, stop], ...]`` per axis."""
    return [list(sl.indices(n)[:2]) for sl, n in zip(index, shape)]


def _crc(x) -> int:
    return zlib.crc32(np.ascontiguousarray(x).tobytes())


def _checksums(named) -> dict[str, list]:
    """``{array: [[region, crc32], ...]}`` for the shards this process writes (replica 0 of
    each of its shards; numpy leaves on the primary process, which writes them)."""
    out = {}
    for p, leaf in named:
        x = _stored(leaf)
        if isinstance(x, jax.Array):
            rows = [
                [_region(s.index, x.shape), _crc(np.asarray(s.data))]
                for s in x.addressable_shards
                if s.replica_id == 0
            ]
        else:
            rows = [[[[0, n] for n in x.shape], _crc(x)]] if _primary() else []
        out["/".join(_key(p))] = rows
    return out


def _local(b, region):
    """The part ``region`` of restored array ``b`` if this process holds it whole, else None."""
    if not isinstance(b, jax.Array):
        return np.asarray(b)[tuple(slice(a, z) for a, z in region)]
    for s in b.addressable_shards:
        own = _region(s.index, b.shape)
        if all(a0 <= a and z <= z0 for (a, z), (a0, z0) in zip(region, own)):
            rel = tuple(slice(a - a0, z - a0) for (a, z), (a0, _) in zip(region, own))
            return np.asarray(s.data)[rel]
    return None


def _verify(path: pathlib.Path, named, leaves) -> None:
    """Compare the restored data this process holds with the CRC-32s written with them."""
    sums: dict[str, list] = {}
    try:
        files = sorted(path.glob("checksums.process_*.json"))
        if not files:
            raise FileNotFoundError("no checksums.process_*.json")
        for f in files:
            for k, rows in json.loads(f.read_text()).items():
                sums.setdefault(k, []).extend(rows)
    except Exception as e:  # missing, cut short or garbled
        raise _unreadable(path, e) from None
    for (p, _), b in zip(named, leaves):
        rows = sums.get("/".join(_key(p)))
        bad = rows is None or any(
            (x := _local(b, region)) is not None and _crc(x) != crc for region, crc in rows
        )
        if bad:
            raise CheckpointError(
                f"{path}: leaf {_describe(p)}: its data do not match the checksum written with "
                "them (damaged checkpoint); delete it or use another"
            )


def _tidy(d: pathlib.Path) -> None:
    """Clean up after a save that was killed: finish a swap it left half done (the staged copy
    is complete: orbax renamed it there), remove staging and orbax temporary directories."""
    for p in sorted(d.iterdir()):
        m = _STAGED.match(p.name)
        if m and p.is_dir() and not (d / f"ckpt_{m.group(1)}").exists():
            os.replace(p, d / f"ckpt_{m.group(1)}")
        elif p.is_dir() and "ckpt_" in p.name and (p.name.startswith(".") or _TMP in p.name):
            shutil.rmtree(p, ignore_errors=True)


def _delete(d: pathlib.Path, p: pathlib.Path) -> None:
    """Rename out of latest()'s sight first, so a crash mid-delete leaves no half checkpoint."""
    trash = d / f".{p.name}.deleting"
    os.replace(p, trash)
    shutil.rmtree(trash)


def _steps(d: pathlib.Path) -> list[tuple[int, pathlib.Path]]:
    """``[(step, path)]``, oldest first: one per step, a ``ckpt_<step>`` directory before a
    file of the earlier format before a staged re-save of the step (complete, but left beside
    an absent ``ckpt_<step>`` by a process killed between the two renames of a swap)."""
    best: dict[int, tuple[int, pathlib.Path]] = {}
    for p in d.iterdir():
        for rank, pattern in enumerate((_STAGED, _LEGACY_NAME, _NAME)):
            if (m := pattern.match(p.name)) and best.get(int(m.group(1)), (-1,))[0] < rank:
                best[int(m.group(1))] = (rank, p)
    return sorted((step, p) for step, (_, p) in best.items())


def save(directory, step: int, tree: Any, *, keep: int = 2) -> pathlib.Path:
    """Write ``tree`` (any pytree of arrays, sharded or not) as checkpoint ``step``; keep the
    newest ``keep``. Returns the checkpoint's directory. With several processes, every
    process calls it with the same arguments (each writes its own shards)."""
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise ValueError(f"step={step!r}: need a non-negative integer")
    if not isinstance(keep, int) or keep < 1:
        raise ValueError(f"keep={keep!r}: need at least 1")
    named = _named_leaves(tree)
    if not named:
        raise ValueError("tree holds no arrays: nothing to checkpoint")
    d = pathlib.Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    if _primary():
        _tidy(d)
    final = d / f"ckpt_{step:09d}"
    # Saving a step again (a stop request right after a periodic save): write beside it, then
    # swap, so the step's previous checkpoint stays whole until the new one is.
    target = d / f".ckpt_{step:09d}.new" if final.exists() else final
    manifest = {"format": _FORMAT, "step": step, "arrays": [_record(p, x) for p, x in named]}
    item = _nested([(p, _stored(x)) for p, x in named])
    try:
        with _checkpointer(_checksums(named)) as c:
            c.save(target, args=_Save(item), custom_metadata=manifest)
    except BaseException:
        if _primary():  # orbax's temporary directory, or the staged copy (never `final`)
            for p in d.glob(f"{target.name}*"):
                if p != final:
                    shutil.rmtree(p, ignore_errors=True)
        raise
    if _primary():
        if target != final:  # two renames in a row: only between them is the step absent
            trash = d / f".{final.name}.deleting"
            os.replace(final, trash)
            os.replace(target, final)
            shutil.rmtree(trash)
        _fsync_dir(d)
        for _, old in _steps(d)[:-keep]:
            if old.is_dir():
                _delete(d, old)
            else:
                old.unlink()
    _barrier(f"save:{step}")
    return final


def latest(directory) -> pathlib.Path | None:
    """The newest checkpoint in ``directory`` (a ``ckpt_<step>`` directory, or a file of the
    earlier msgpack format), or None."""
    d = pathlib.Path(directory)
    if not d.is_dir():
        return None
    found = _steps(d)
    return found[-1][1] if found else None


def _unreadable(path, e: BaseException) -> CheckpointError:
    return CheckpointError(
        f"{path}: not a readable checkpoint ({type(e).__name__}: {e}); "
        "delete it to start fresh or point to another checkpoint"
    )


def _manifest(path: pathlib.Path) -> tuple[int, list[dict]]:
    """``(step, array records)`` from the checkpoint's metadata, checked against orbax's own
    metadata of the array store (a damaged store is named array by array)."""
    try:
        with _checkpointer() as c:
            meta = c.metadata(path)
        m = meta.custom_metadata
        if m.get("format") != _FORMAT:
            raise ValueError(f"format {m.get('format')!r}, this version reads {_FORMAT}")
        step, records = int(m["step"]), list(m["arrays"])
        stored = dict(_named_leaves(meta.item_metadata.tree))
    except Exception as e:  # a missing or garbled file surfaces as any of several types
        raise _unreadable(path, e) from None
    for r in records:
        a = stored.get(_key(r["path"]))
        if a is None or list(a.shape) != r["shape"] or np.dtype(a.dtype).name != r["dtype"]:
            raise CheckpointError(
                f"{path}: leaf {_describe(r['path'])}: the array store does not match the "
                "checkpoint's manifest (damaged checkpoint); delete it or use another"
            )
    return step, records


def _check(path, records: list[dict], named) -> None:
    """Raise CheckpointError naming the first array where the checkpoint and run differ."""
    ours = {p: _record(p, x) for p, x in named}
    theirs = {tuple(r["path"]): r for r in records}
    extra = [p for p in theirs if p not in ours]
    missing = [p for p in ours if p not in theirs]
    if missing or extra:
        where = (
            f"{_describe(missing[0])} of this run is not in it"
            if missing
            else f"its {_describe(extra[0])} is not in this run"
        )
        raise CheckpointError(
            f"{path}: holds {len(theirs)} arrays, this run has {len(ours)} ({where}); "
            "different method or configuration"
        )
    for p, a in ours.items():
        b = theirs[p]
        if b["key_impl"] != a["key_impl"]:
            raise CheckpointError(
                f"{path}: leaf {_describe(p)} is a key<{b['key_impl']}> in the checkpoint but "
                f"a key<{a['key_impl']}> in this run; different PRNG implementation"
            )
        if (b["dtype"], b["shape"]) != (a["dtype"], a["shape"]):
            raise CheckpointError(
                f"{path}: leaf {_describe(p)} is {b['dtype']}{b['shape']} in the checkpoint "
                f"but {a['dtype']}{a['shape']} in this run; different model or configuration"
            )


def _restore_args(leaf):
    x = _stored(leaf)
    if isinstance(x, jax.Array):  # read straight into the run's sharding, shard by shard
        return ocp.ArrayRestoreArgs(sharding=x.sharding, global_shape=x.shape, dtype=x.dtype)
    return ocp.RestoreArgs(restore_type=np.ndarray, dtype=x.dtype)


def _read(path: pathlib.Path, named) -> list:
    item = _nested([(p, _stored(x)) for p, x in named])
    args = _nested([(p, _restore_args(x)) for p, x in named])
    try:
        with _checkpointer() as c:
            out = c.restore(path, args=_Restore(item, restore_args=args))
    except Exception as e:  # tensorstore and orbax raise several types on damaged data
        raise _unreadable(path, e) from None
    got = dict(_named_leaves(out))  # nested dicts flatten in sorted key order: look up by path
    leaves = [got[_key(p)] for p, _ in named]
    _verify(path, named, leaves)
    return leaves


def _back(t, b):
    """Restored value ``b`` in the form of target leaf ``t`` (key impl, dtype, sharding)."""
    if _is_key(t):
        return jax.random.wrap_key_data(b, impl=jax.random.key_impl(t))
    if isinstance(t, jax.Array):
        if isinstance(b, jax.Array):
            return b
        x = np.asarray(b, dtype=t.dtype)  # the earlier format: the full array on every process
        return jax.make_array_from_callback(x.shape, t.sharding, lambda i: x[i])
    return jnp.asarray(b, dtype=t.dtype) if hasattr(t, "dtype") else b


def _read_legacy(path: pathlib.Path, target, named) -> tuple[int, list]:
    ref = jax.tree.map(lambda x: np.asarray(_stored(x)), target)
    step, leaves = _checkpoint_msgpack.read(path, ref, CheckpointError)
    records = [
        {
            "path": list(p),
            "dtype": np.dtype(b.dtype).name,
            "shape": list(b.shape),
            "key_impl": _record(p, x)["key_impl"],  # the format kept no impl: trust the run's
        }
        for (p, x), b in zip(named, leaves)
    ]
    if len(leaves) == len(named):
        _check(path, records, named)
    else:
        raise CheckpointError(
            f"{path}: holds {len(leaves)} arrays, this run has {len(named)}; "
            "different method or configuration"
        )
    return step, leaves


def restore(path, target: Any) -> tuple[int, Any]:
    """Read checkpoint ``path`` into the structure of ``target``; returns ``(step, tree)``.

    ``target`` is a freshly initialised tree of the run (same structure, shapes, dtypes, key
    implementations); its arrays' shardings say where the restored arrays go.

    Raises:
      CheckpointError: unreadable or damaged checkpoint, or a structure/shape/dtype/key
        implementation that differs from ``target`` (the message names the first differing
        array by its path in the tree).
    """
    path = pathlib.Path(path)
    named = _named_leaves(target)
    if path.is_file():
        step, leaves = _read_legacy(path, target, named)
    else:
        step, records = _manifest(path)
        _check(path, records, named)
        leaves = _read(path, named)
    leaves_t, treedef = jax.tree.flatten(target)
    return step, jax.tree.unflatten(treedef, [_back(t, b) for t, b in zip(leaves_t, leaves)])
