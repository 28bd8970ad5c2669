"""Reading a compiled program: its collectives (which ones XLA runs, how many bytes they move)
and its working memory.

Measurement code, not training glue: claims about communication (``lowbit.compressed_pmean``
moves 8x fewer bytes than a float32 all-reduce, a sharded forward gradient moves O(K) bytes)
and about memory (a forward gradient's working memory stays flat in depth) are checked against
the program that XLA will actually run, not against a model of it. Byte counts
per device follow the bandwidth-optimal (ring) algorithms (Patarasuk & Yuan, "Bandwidth optimal
all-reduce algorithms for clusters of workstations", JPDC 2009).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from typing import Any

__all__ = ["Collective", "hlo_collectives", "communication_bytes", "temp_bytes", "relu_mlp_probe"]

_COLLECTIVES = (
    "all-reduce",
    "all-gather",
    "all-to-all",
    "reduce-scatter",
    "collective-permute",
    "collective-broadcast",
)
_DTYPE_BYTES = {
    "pred": 1,
    "s4": 0.5,
    "u4": 0.5,
    "s8": 1,
    "u8": 1,
    "s16": 2,
    "u16": 2,
    "f16": 2,
    "bf16": 2,
    "s32": 4,
    "u32": 4,
    "f32": 4,
    "s64": 8,
    "u64": 8,
    "f64": 8,
    "f8e4m3fn": 1,
    "f8e5m2": 1,
}
_LINE = re.compile(
    r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(?P<result>\(.*?\)|\S+)\s+"
    r"(?P<op>" + "|".join(_COLLECTIVES) + r")(?P<start>-start)?\("
)
_SHAPE = re.compile(r"\b(?P<dtype>[a-z]+\d*[a-z0-9]*)\[(?P<dims>[\d,]*)\]")


@dataclasses.dataclass(frozen=True)
class Collective:
    """One collective of a compiled program.

    op: HLO op name (``all-reduce``, ``all-gather``, ...).
    shapes: the result's array shapes as ``(dtype, dims)``.
    group_size: devices per replica group.
    operand_bytes: bytes of the operand(s) one device contributes.
    sent_bytes: bytes one device sends with the bandwidth-optimal (ring)
      algorithm: all-reduce ``2 (G-1)/G S``, all-gather ``(G-1) S``,
      reduce-scatter and all-to-all ``(G-1)/G S``, permute ``S``.
    """

    op: str
    shapes: tuple
    group_size: int
    operand_bytes: float
    sent_bytes: float


def _group_size(line: str) -> int:
    m = re.search(r"replica_groups=\{\{([\d,]*)\}", line)
    if m:
        return len([t for t in m.group(1).split(",") if t])
    m = re.search(r"replica_groups=\[(\d+),(\d+)\]<=", line)  # iota form [groups, size]<=[n]
    if m:
        return int(m.group(2))
    m = re.search(r"source_target_pairs=\{(.*?)\}\}?", line)
    if m:
        return 2
    return 1


def hlo_collectives(hlo_text: str) -> list[Collective]:
    """Every collective in an HLO module's text (``jitted.lower(...).compile().as_text()``).

    Operand sizes are derived from the result shape and the group size
    (all-gather results are G times their operand, reduce-scatter results 1/G),
    because compiled HLO prints operands by name only.
    """
    out = []
    for line in hlo_text.splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        op = m.group("op")
        result = m.group("result")
        shapes = tuple(
            (s.group("dtype"), tuple(int(d) for d in s.group("dims").split(",") if d))
            for s in _SHAPE.finditer(result)
            if s.group("dtype") in _DTYPE_BYTES
        )
        if m.group("start") and op in ("all-gather", "all-reduce", "collective-permute"):
            # async starts (GPU, TPU) return (operands, results): keep the results
            shapes = shapes[len(shapes) // 2 :] if len(shapes) > 1 else shapes
        g = _group_size(line)
        result_bytes = sum(_DTYPE_BYTES[d] * math.prod(dims) for d, dims in shapes)
        if op == "all-gather":
            operand = result_bytes / g
            sent = (g - 1) * operand
        elif op == "reduce-scatter":
            operand = result_bytes * g
            sent = (g - 1) / g * operand
        elif op == "all-reduce":
            operand = result_bytes
            sent = 2 * (g - 1) / g * operand
        elif op == "all-to-all":
            operand = result_bytes
            sent = (g - 1) / g * operand
        else:
            operand = result_bytes
            sent = operand
        out.append(Collective(op, shapes, g, float(operand), float(sent)))
    return out


def communication_bytes(jitted: Callable, *args, **kwargs) -> dict:
    """Collectives of ``jitted(*args)`` as compiled: per-op list and totals (bytes per device).

    Returns ``{"collectives": [...], "operand_bytes": total, "sent_bytes": total,
    "by_dtype": {dtype: operand bytes}}``.
    """
    if not hasattr(jitted, "lower"):
        raise TypeError(f"communication_bytes needs a jax.jit-ed function, got {jitted!r}")
    text = jitted.lower(*args, **kwargs).compile().as_text()
    cs = hlo_collectives(text)
    by_dtype: dict[str, float] = {}
    for c in cs:
        for d, dims in c.shapes:
            share = _DTYPE_BYTES[d] * math.prod(dims)
            share = share / c.group_size if c.op == "all-gather" else share
            by_dtype[d] = by_dtype.get(d, 0.0) + share
    return {
        "collectives": [dataclasses.asdict(c) for c in cs],
        "operand_bytes": sum(c.operand_bytes for c in cs),
        "sent_bytes": sum(c.sent_bytes for c in cs),
        "by_dtype": by_dtype,
    }


def temp_bytes(fn: Callable, *args) -> int:
    """Working memory of ``fn(*args)`` as XLA compiles it, in bytes.

    ``memory_analysis().temp_size_in_bytes`` of ``jax.jit(fn)``: the scratch buffers beyond
    the inputs and outputs, from XLA's buffer assignment. Nothing runs, so ``args`` may be
    ``jax.ShapeDtypeStruct``s; the figure is exact for one XLA version and backend.
    """
    import jax

    stats = jax.jit(fn).lower(*args).compile().memory_analysis()
    if stats is None:
        raise RuntimeError(
            f"temp_bytes: the {jax.default_backend()} backend gives no memory analysis"
        )
    return int(stats.temp_size_in_bytes)


def relu_mlp_probe(depth: int, width: int, batch: int) -> tuple[Callable, list, Any]:
    """A deep ReLU MLP to measure working memory against depth: ``(loss, params, x)``.

    ``loss(params, x)`` is the mean square of the last layer's ReLU output; ``params`` (``depth``
    layers of ``{"w": (width, width), "b": (width,)}``) and ``x`` ``(batch, width)`` are float32
    ``jax.ShapeDtypeStruct``s, for :func:`temp_bytes` (compiled, never run).
    """
    import jax
    import jax.numpy as jnp

    params = [
        {
            "w": jax.ShapeDtypeStruct((width, width), jnp.float32),
            "b": jax.ShapeDtypeStruct((width,), jnp.float32),
        }
        for _ in range(depth)
    ]
    x = jax.ShapeDtypeStruct((batch, width), jnp.float32)

    def loss(ps, x):
        for p in ps:
            x = jax.nn.relu(x @ p["w"] + p["b"])
        return jnp.mean(x**2)

    return loss, params, x
