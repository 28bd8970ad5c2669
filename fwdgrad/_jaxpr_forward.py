"""Forward mode with K tangents sharing one primal: a jaxpr interpreter.

Used by :func:`fwdgrad.value_and_fwd_grad` (``strategy="loop"``). ``fun`` is
traced to a jaxpr and evaluated one equation at a time (:func:`forward`), every
tangent carrying a leading K axis and the primal computed once (Baydin et al.,
"Gradients without Backpropagation", 2022, eq. 4, for K directional derivatives).

* For a matmul the primal and the K terms ``dx_k W`` are one matmul of the
  stacked ``[x; dx_1..dx_K]`` with ``W`` ((1 + 2K)/3 backprop steps of
  arithmetic for a dense network), and the terms ``x V_k`` with a weight's
  tangent are drawn and multiplied one k at a time (:func:`_jvp_dot`).
* A ``"rank1"`` matrix tangent ``s r^T`` read by a matmul is never formed:
  ``x (s r^T) = (x s) r^T`` costs a matrix-vector product (:func:`_rank1_term`); a rank-one
  convolution kernel costs a one-output-channel convolution (:func:`_jvp_conv`).
* Tangents are generated where they are used. A parameter's tangent is drawn
  from its own key at the first equation that reads the parameter (carried
  unevaluated through reshapes and casts, :class:`Lazy`). Each matmul's primal
  output is made to depend on its tangent output (:func:`_tie`): XLA's CPU
  scheduler otherwise runs the whole primal pass before the tangent pass
  (optimisation barriers are dropped on CPU), which keeps every activation
  alive and makes the working memory grow with depth like backprop's.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.extend.core import Literal

from fwdgrad import _tangents

__all__ = ["Lazy", "forward"]

# Linear, shape-only unary ops: a tangent that has not been drawn yet is carried
# through them unevaluated, so that e.g. a reshape of a bias at the top of the
# program does not force the bias's tangent to be drawn there.
_STRUCTURAL = frozenset(
    {
        "reshape",
        "transpose",
        "convert_element_type",
        "squeeze",
        "expand_dims",
        "broadcast_in_dim",
        "copy",
        "copy_p",
        "rev",
    }
)
_INLINE = frozenset({"jit", "pjit", "closed_call", "core_call"})


class Lazy(NamedTuple):
    """A tangent not drawn yet: ``post(sample(fold_in(key_k, index)))`` for each tangent k."""

    index: int  # type: ignore[assignment]  # shadows tuple.index
    shape: tuple[int, ...]
    dtype: Any
    post: tuple = ()  # (primitive, bind_params) applied in order after sampling


def _draw_one(lazy: Lazy, key: jax.Array, tangent: str) -> jax.Array:
    """One tangent of one leaf, from that tangent's key."""
    t = _tangents.sample_leaf(_tangents.leaf_key(key, lazy.index), lazy.shape, lazy.dtype, tangent)
    for prim, params in lazy.post:
        t = prim.bind(t, **params)
    return t


def _draw(lazy: Lazy, keys: jax.Array, tangent: str) -> jax.Array:
    """The K tangents of one leaf, ``(K, *shape)``, from the K tangent keys."""
    return jax.vmap(lambda key: _draw_one(lazy, key, tangent))(keys)


def _per_tangent(fn, t, keys, tangent):
    """``stack_k fn(t_k)`` for an array ``t`` ``(K, ...)`` or a lazy tangent.

    A lazy tangent is drawn inside a sequential loop over k, so only one of the
    K parameter-sized tangents exists at a time (materialising all K is slow
    as well as large: fresh multi-megabyte buffers cost page faults).
    """
    if not isinstance(t, Lazy):
        return jax.vmap(fn)(t)
    if keys.shape[0] == 1:
        return fn(_draw_one(t, keys[0], tangent))[None]
    return lax.map(lambda key: fn(_draw_one(t, key, tangent)), keys)


def _rank1(
    lazy: Lazy, keys: jax.Array, tangent: str, *, matrix: bool = True
) -> tuple[jax.Array, jax.Array] | None:
    """``(S, R)``, ``(K, m)`` and ``(K, n)``, with tangent k of ``lazy`` (after its structural
    ops) equal to ``S[k] R[k]^T``; None unless it is a ``"rank1"`` matrix still of that form.
    ``matrix=False``: a leaf of 2 or more axes, ``S`` of ``(K, *shape[:-1])``, no transposes."""
    if tangent != "rank1" or (len(lazy.shape) != 2 if matrix else len(lazy.shape) < 2):
        return None
    swap, dtype = False, lazy.dtype
    for prim, params in lazy.post:
        if prim.name == "transpose" and matrix:
            swap ^= tuple(params["permutation"]) == (1, 0)
        elif prim.name == "convert_element_type":
            dtype = params["new_dtype"]
        elif prim.name not in ("copy", "copy_p"):
            return None
    # +-1 factors: their products are exact in any float dtype, so casting the factors
    # gives the cast of the drawn matrix.
    s, r = jax.vmap(
        lambda k: _tangents.rank1_factors(_tangents.leaf_key(k, lazy.index), lazy.shape, dtype)
    )(keys)
    return (r, s) if swap else (s, r)


def _rank1_term(x, lazy, keys, tangent, contract, lazy_left, kw):
    """``x . V_k`` (``lazy_left``: ``V_k . x``) for K rank-1 matrix tangents ``V_k = S_k R_k^T``
    as ``(x . u_k) (x) w_k``, with ``u_k`` the factor along the contracted axis of ``V``:
    ``O(B (m + n))`` instead of a ``B m n`` product. None if this does not apply.

    ``contract``: ``(x's contracting axes, V's contracting axes)`` of the ``dot_general``.
    """
    factors = _rank1(lazy, keys, tangent)
    xc, vc = contract
    if factors is None or len(vc) != 1:
        return None
    u, w = factors if vc[0] == 0 else factors[::-1]
    dims = ((tuple(xc), (0,)), ((), ()))
    x_free = x.ndim - len(xc)

    def one(u_k, w_k):
        xu = lax.dot_general(x, u_k, dims, **kw)  # x's free axes
        if lazy_left:  # output axes: V's free axis, then x's
            return w_k.reshape(w_k.shape + (1,) * x_free) * xu
        return xu[..., None] * w_k

    return jax.vmap(one)(u, w)


def _param_term(x, t, keys, tangent, dims, lazy_left, kw):
    """The K products of ``x`` with a parameter's tangent ``t`` (``t . x`` if ``lazy_left``),
    ``(K, ...)``: rank-1 where :func:`_rank1_term` applies, else drawn one k at a time."""
    (lc, rc), _ = dims
    if isinstance(t, Lazy):
        contract = (rc, lc) if lazy_left else (lc, rc)
        out = _rank1_term(x, t, keys, tangent, contract, lazy_left, kw)
        if out is not None:
            return out
    if lazy_left:
        return _per_tangent(lambda v: lax.dot_general(v, x, dims, **kw), t, keys, tangent)
    return _per_tangent(lambda v: lax.dot_general(x, v, dims, **kw), t, keys, tangent)


def _jvp_conv(prim, params, invals, tans, keys, tangent):
    """Forward mode of a convolution whose kernel has a ``"rank1"`` tangent ``S_k (x) r_k``
    (``S_k`` over the kernel's spatial and input axes, ``r_k`` over its output channels):
    ``conv(x, S_k (x) r_k) = conv(x, S_k) * r_k``, one single-output-channel convolution
    instead of a full one. None where this does not apply (grouped convolutions, a kernel
    whose output-channel axis is not its last, a kernel reshaped or transposed on the way)."""
    x, kernel = invals
    dx, dk = tans
    dn = params["dimension_numbers"]
    if (
        not isinstance(dk, Lazy)
        or isinstance(dx, Lazy)
        or params["feature_group_count"] != 1
        or params["batch_group_count"] != 1
        or dn.rhs_spec[0] != kernel.ndim - 1
    ):
        return None
    factors = _rank1(dk, keys, tangent, matrix=False)
    if factors is None:
        return None
    if dx is None:
        primal, tan = prim.bind(x, kernel, **params), None
    else:
        primal, tan = _jvp_eqn(prim, params, invals, [dx, None])
    feature_axis = dn.out_spec[1]

    def one(s_k, r_k):
        y = prim.bind(x, s_k[..., None].astype(kernel.dtype), **params)  # one output channel
        shape = [1] * y.ndim
        shape[feature_axis] = r_k.shape[0]
        return y * r_k.reshape(shape).astype(y.dtype)

    term = jax.vmap(one)(*factors)
    return primal, term if tan is None else tan + term.astype(tan.dtype)


def _jvp_eqn(prim, params, invals, tans):
    """Primal output(s) and K-batched tangent output(s) of one equation.

    ``tans[i]`` is None (zero) or ``(K, *shape)``. The primal is computed once: it
    does not depend on the tangents, so ``vmap`` leaves it unbatched.
    """
    nz = [i for i, t in enumerate(tans) if t is not None]

    def at(*nz_vals):
        vals = list(invals)
        for i, x in zip(nz, nz_vals):
            vals[i] = x
        return prim.bind(*vals, **params)

    def jvp(*nz_tans):
        return jax.jvp(at, [invals[i] for i in nz], list(nz_tans))

    return jax.vmap(jvp, out_axes=(None, 0))(*[tans[i] for i in nz])


def _jvp_dot(params, invals, tans, keys, kind):
    """Forward mode of a batch-dimension-free ``dot_general`` with shared work.

    ``(a + da)(b + db) = ab + da b + a db``: the primal ``ab`` and the K tangent
    terms ``da_k b`` share the operand ``b``, so they are one matmul of the
    stacked ``[a; da_1; ...; da_K]`` with ``b`` (one larger, better-shaped
    matmul instead of K + 1 small ones). The terms ``a db_k`` with a parameter's
    tangent ``db_k`` are drawn and multiplied one k at a time. Whichever operand
    carries an activation tangent is stacked; ``tans`` entries are None, arrays
    ``(K, ...)`` or lazy parameter tangents.
    """
    dims = params["dimension_numbers"]
    (lc, rc), _ = dims
    a, b = invals
    da, db = tans
    kw = dict(
        precision=params.get("precision"),
        preferred_element_type=params.get("preferred_element_type"),
    )

    def dot(x, y):
        return lax.dot_general(x, y, dims, **kw)

    a_free = a.ndim - len(lc)
    if da is not None and not isinstance(da, Lazy):
        stack = jnp.concatenate([a[None].astype(da.dtype), da], axis=0)
        out = lax.dot_general(stack, b, ((tuple(c + 1 for c in lc), tuple(rc)), ((), ())), **kw)
        primal, tan = out[0], out[1:]
        if db is not None:
            tan = tan + _param_term(a, db, keys, kind, dims, False, kw).astype(tan.dtype)
    elif db is not None and not isinstance(db, Lazy):
        stack = jnp.concatenate([b[None].astype(db.dtype), db], axis=0)
        out = lax.dot_general(a, stack, ((tuple(lc), tuple(c + 1 for c in rc)), ((), ())), **kw)
        out = jnp.moveaxis(out, a_free, 0)
        primal, tan = out[0], out[1:]
        if da is not None:
            tan = tan + _param_term(b, da, keys, kind, dims, True, kw).astype(tan.dtype)
    else:
        # Only parameter tangents (a layer reading the input): nothing to stack with.
        primal = dot(a, b)
        parts = [
            _param_term(a, db, keys, kind, dims, False, kw) if db is not None else None,
            _param_term(b, da, keys, kind, dims, True, kw) if da is not None else None,
        ]
        parts = [p.astype(primal.dtype) for p in parts if p is not None]
        tan = parts[0] if len(parts) == 1 else parts[0] + parts[1]
    return _tie(primal, tan), tan


def _tie(primal: jax.Array, tangent: jax.Array) -> jax.Array:
    """``primal``, made to depend on ``tangent`` so the next layer waits for both.

    XLA's CPU scheduler runs independent chains one after the other: left alone
    it computes the whole primal pass first and keeps every activation alive for
    the tangent pass, so the working memory grows with depth like backprop's
    (optimisation barriers are dropped on CPU, and XLA splits a stacked matmul
    back into separate ones). Adding ``0 * sum(tangent)`` is an exact no-op for
    finite tangents that XLA may not fold (``x * 0`` is not 0 for NaN/inf), so
    it keeps the data dependence, for one extra read of the tangent.
    """
    # A full reduction: XLA pushes a slice through a matmul (one entry would only
    # force one row of it) and splits the K-batched matmul per tangent.
    total = jnp.sum(tangent, dtype=jnp.float32).astype(primal.dtype)
    return primal + total * jnp.zeros((), primal.dtype)


def forward(jaxpr, consts, primals, tangents, keys, tangent: str):
    """Evaluate ``jaxpr`` in forward mode with K tangents, equation by equation.

    ``tangents[i]`` is None (zero), an array ``(K, *shape)``, or a
    :class:`Lazy`, drawn from ``keys`` (``(K,)`` typed keys) where it is first
    needed. Returns primal outputs and K-batched tangent outputs (None for zero).
    """
    env_p: dict = {}
    env_t: dict = {}

    def read_p(v):
        return v.val if isinstance(v, Literal) else env_p[v]

    def read_t(v):
        return None if isinstance(v, Literal) else env_t.get(v)

    for v, x in zip(jaxpr.constvars, consts):
        env_p[v] = x
    for v, x, t in zip(jaxpr.invars, primals, tangents):
        env_p[v] = x
        if t is not None:
            env_t[v] = t

    for eqn in jaxpr.eqns:
        invals = [read_p(v) for v in eqn.invars]
        tans = [read_t(v) for v in eqn.invars]
        name = eqn.primitive.name
        params = eqn.primitive.get_bind_params(eqn.params)

        if all(t is None for t in tans):
            out = eqn.primitive.bind(*invals, **params)
            outs = out if eqn.primitive.multiple_results else [out]
            for v, x in zip(eqn.outvars, outs):
                env_p[v] = x
            continue

        if name in _STRUCTURAL and len(tans) == 1 and isinstance(tans[0], Lazy):
            env_p[eqn.outvars[0]] = eqn.primitive.bind(*invals, **params)
            lz = tans[0]
            env_t[eqn.outvars[0]] = lz._replace(post=lz.post + ((eqn.primitive, params),))
            continue

        if name == "conv_general_dilated":
            conv = _jvp_conv(eqn.primitive, params, invals, tans, keys, tangent)
            if conv is not None:
                env_p[eqn.outvars[0]], env_t[eqn.outvars[0]] = conv
                continue

        fused_dot = name == "dot_general" and params["dimension_numbers"][1] == ((), ())
        if not fused_dot:
            tans = [_draw(t, keys, tangent) if isinstance(t, Lazy) else t for t in tans]

        if name in _INLINE and "jaxpr" in eqn.params:
            closed = eqn.params["jaxpr"]
            outs, out_t = forward(closed.jaxpr, closed.consts, invals, tans, keys, tangent)
        else:
            if fused_dot:
                out, out_tan = _jvp_dot(params, invals, tans, keys, tangent)
            else:
                out, out_tan = _jvp_eqn(eqn.primitive, params, invals, tans)
            outs = out if eqn.primitive.multiple_results else [out]
            out_t = out_tan if eqn.primitive.multiple_results else [out_tan]
        for v, x, t in zip(eqn.outvars, outs, out_t):
            env_p[v] = x
            if t is not None and jnp.issubdtype(jnp.result_type(t), jnp.inexact):
                env_t[v] = t

    outs = [read_p(v) for v in jaxpr.outvars]
    out_t = [read_t(v) for v in jaxpr.outvars]
    out_t = [_draw(t, keys, tangent) if isinstance(t, Lazy) else t for t in out_t]
    return outs, out_t
