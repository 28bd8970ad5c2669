"""Shims for JAX APIs that changed between versions, in one place.

Tested on JAX and jaxlib :data:`TESTED_JAX` (pyproject.toml pins the same range). Each shim
says which versions need which branch; when the lower bound passes a branch, delete it.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["TESTED_JAX", "varies_over", "varying", "register_linear_call_batching"]

#: JAX versions this module (and the test suite) has been run on: (lowest, highest).
TESTED_JAX = ("0.10.2", "0.11.2")


def varies_over(x: jax.Array, axis_name: Any) -> bool:
    """Whether ``shard_map``'s type of ``x`` says it differs across ``axis_name``.

    False under ``vmap``/``pmap`` and outside ``shard_map``. Since JAX 0.9 the variance is
    ``aval.manual_axis_type.varying`` (earlier JAX spelled it ``aval.vma``; below the pinned
    range). An aval without it is treated as not varying, which selects the callers' plain
    collectives: correct, only without the replicated-output type.
    """
    axis_type = getattr(jax.typeof(x), "manual_axis_type", None)
    return axis_type is not None and axis_name in axis_type.varying


def varying(tree: Any, axis_names: Any) -> Any:
    """``tree`` marked as differing across ``axis_names`` inside ``shard_map`` (values unchanged).

    Differentiating a per-device copy of replicated values keeps shard_map's transpose of the
    implicit replicated-to-varying cast from inserting a ``psum`` of the cotangent (a float32
    all-reduce of the whole gradient before the caller's own). ``lax.pcast(..., to="varying")``
    in the pinned range (it replaced ``lax.pvary``).
    """
    return lax.pcast(tree, axis_names, to="varying")


def register_linear_call_batching() -> None:
    """Give ``jax.custom_derivatives.linear_call`` a ``vmap`` rule (JAX ships none).

    ``lowbit.dot_general`` wraps its gradient quantizers in ``linear_call`` (a linear identity
    with a custom transpose), so without this ``jax.vmap`` of a 4-bit model fails. The rule
    batches the callee and the transpose jaxprs. It reaches into ``jax._src`` (the primitive
    ``linear_call_p`` and ``batching.fancy_primitive_batchers``, with the parameters
    ``callee``, ``transpose_thunk``, ``num_callee_consts``, ``num_res``): checked on
    :data:`TESTED_JAX`; ``tests/test_lowbit_dot.py`` runs ``vmap`` of ``dot_general`` under
    ``jax.grad`` and ``jax.jvp``, so a JAX that changes these internals fails there. Idempotent.
    """
    from jax._src import custom_derivatives as _cd
    from jax._src.interpreters import batching

    prim = _cd.linear_call_p
    if prim in batching.fancy_primitive_batchers:
        return

    def _batch(axis_data, args, dims, *, callee, transpose_thunk, num_callee_consts, num_res):
        # Move every mapped axis to 0; broadcast unmapped *linear* operands so the
        # linear inputs and outputs are all mapped, which keeps the callee and its
        # transpose consistent (the transpose's outputs are the callee's inputs).
        n_pre = num_callee_consts + num_res
        new_args, batched = [], []
        for i, (x, d) in enumerate(zip(args, dims)):
            if d is None or isinstance(d, batching.NotMapped):
                if i >= n_pre:
                    x = jnp.broadcast_to(x[None], (axis_data.size, *x.shape))
                    batched.append(True)
                else:
                    batched.append(False)
            else:
                x = jnp.moveaxis(x, d, 0)
                batched.append(True)
            new_args.append(x)
        b_callee, _ = batching.batch_jaxpr(callee, axis_data, batched, instantiate=True)
        res_batched = batched[num_callee_consts:n_pre]
        n_out = len(callee.out_avals)

        def new_thunk():
            t, t_consts = transpose_thunk()
            t_batched = [False] * len(t_consts) + res_batched + [True] * n_out
            b_t, _ = batching.batch_jaxpr(t, axis_data, t_batched, instantiate=True)
            return b_t, t_consts

        outs = prim.bind(
            *new_args,
            callee=b_callee,
            transpose_thunk=_memo(new_thunk),
            num_callee_consts=num_callee_consts,
            num_res=num_res,
        )
        return outs, [0] * len(outs)

    batching.fancy_primitive_batchers[prim] = _batch


def _memo(f):
    """``f`` called at most once; later calls return the first result (a thunk cache)."""
    cache = []

    def g():
        if not cache:
            cache.append(f())
        return cache[0]

    return g
