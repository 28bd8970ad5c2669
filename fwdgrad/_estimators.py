"""Forward-gradient estimators: one ``jvp`` per random tangent, no backward pass.

Baydin, Pearlmutter, Syme, Wood, Torr, "Gradients without Backpropagation"
(2022), eq. 4: for ``f: R^n -> R`` and a random tangent ``v`` with
``E[v v^T] = I``, the forward gradient ``g_hat = (grad f . v) v`` is an unbiased
estimate of ``grad f``; the directional derivative ``grad f . v`` is one
forward-mode Jacobian-vector product, computed alongside ``f`` itself.

How the estimate is computed here, and why:

* K tangents share the primal. ``fun`` is traced to a jaxpr and evaluated in
  forward mode one equation at a time (:func:`_forward`), with every tangent
  carrying a leading K axis and the primal computed once. For a matmul the
  primal and the K terms ``dx_k W`` are one matmul of the stacked
  ``[x; dx_1..dx_K]`` with ``W`` ((1 + 2K)/3 backprop steps of arithmetic for a
  dense network), and the terms ``x V_k`` with a weight's tangent are drawn
  and multiplied one k at a time.
* Tangents are generated where they are used. A parameter's tangent is drawn
  from its own key at the first equation that reads the parameter (carried
  unevaluated through reshapes and casts). Each matmul's primal output is made
  to depend on its tangent output (:func:`_tie`): XLA's CPU scheduler otherwise
  runs the whole primal pass before the tangent pass (optimisation barriers are
  dropped on CPU), which keeps every activation alive and makes the working
  memory grow with depth like backprop's.
* Tangents are never stored. After the K directional derivatives ``d`` are
  known, each leaf's K tangents are drawn again from the same keys and combined
  with ``d`` into that leaf's estimate, one leaf at a time.
* ``aggregate="orthogonal"`` projects the gradient onto the span of the K
  tangents: ``P g = V^T (V V^T)^+ V g = V^T (V V^T)^+ d``. It needs only the
  K x K Gram matrix ``V V^T`` (accumulated leaf by leaf, on packed sign bits for
  Rademacher tangents) and ``d``; the tangents are never orthonormalised
  explicitly. With K = n independent tangents this is the exact gradient.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
from jax import lax
from jax.extend.core import Literal

from fwdgrad import _tangents

__all__ = ["AGGREGATES", "fwd_grad", "value_and_fwd_grad", "cosine_similarity",
           "theoretical_variance", "estimator_variance"]

AGGREGATES = ("mean", "orthogonal")

# Linear, shape-only unary ops: a tangent that has not been drawn yet is carried
# through them unevaluated, so that e.g. a reshape of a bias at the top of the
# program does not force the bias's tangent to be drawn there.
_STRUCTURAL = frozenset({"reshape", "transpose", "convert_element_type", "squeeze",
                         "expand_dims", "broadcast_in_dim", "copy", "copy_p", "rev"})
# Up to this many tangents the final combination is unrolled into one fused loop;
# beyond, a sequential loop bounds the program size.
_UNROLL = 16
_INLINE = frozenset({"jit", "pjit", "closed_call", "core_call"})


# --------------------------------------------------------------------------- validation

def check_num_tangents(num_tangents: Any) -> int:
    if isinstance(num_tangents, bool) or not isinstance(num_tangents, int):
        raise TypeError(f"num_tangents={num_tangents!r} must be a Python int >= 1 (it fixes the "
                        "number of jvps traced, so it cannot be an array; with "
                        "optax.inject_hyperparams pass static_args=('num_tangents',))")
    if num_tangents < 1:
        raise ValueError(f"num_tangents={num_tangents!r}: need at least one tangent")
    return num_tangents


def check_aggregate(aggregate: Any) -> str:
    if not isinstance(aggregate, str) or aggregate not in AGGREGATES:
        raise ValueError(f"aggregate={aggregate!r} is not known; use one of {AGGREGATES}")
    return aggregate


def check_chunk_size(chunk_size: Any, num_tangents: int) -> int | None:
    if chunk_size is None:
        return None
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size!r}: use None (all tangents in one vmap) or an "
                         "int >= 1 (tangents per sequential chunk)")
    return min(chunk_size, num_tangents)


def _check_argnums(argnums: Any) -> tuple[int, ...]:
    nums = (argnums,) if isinstance(argnums, int) and not isinstance(argnums, bool) else argnums
    if not isinstance(nums, tuple) or not nums or any(
            isinstance(a, bool) or not isinstance(a, int) for a in nums):
        raise TypeError(f"argnums={argnums!r} must be an int or a non-empty tuple of ints")
    if len(set(nums)) != len(nums):
        raise ValueError(f"argnums={argnums!r} repeats an argument")
    return nums


def _as_key(key: Any) -> jax.Array:
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise ValueError(f"key has shape {key.shape}; pass a single PRNG key, e.g. "
                             "jax.random.key(0)")
        return key
    if key.dtype == jnp.uint32 and key.shape == (2,):
        return jax.random.wrap_key_data(key)
    raise TypeError(f"key of dtype {key.dtype} and shape {key.shape} is not a PRNG key; pass "
                    "jax.random.key(seed)")


# --------------------------------------------------------------------------- forward mode

class _Lazy(NamedTuple):
    """A tangent not drawn yet: ``post(sample(fold_in(key_k, index)))`` for each tangent k."""
    index: int
    shape: tuple[int, ...]
    dtype: Any
    post: tuple = ()  # (primitive, bind_params) applied in order after sampling


def _draw_one(lazy: _Lazy, key: jax.Array, tangent: str) -> jax.Array:
    """One tangent of one leaf, from that tangent's key."""
    t = _tangents.sample_leaf(_tangents.leaf_key(key, lazy.index), lazy.shape, lazy.dtype, tangent)
    for prim, params in lazy.post:
        t = prim.bind(t, **params)
    return t


def _draw(lazy: _Lazy, keys: jax.Array, tangent: str) -> jax.Array:
    """The K tangents of one leaf, ``(K, *shape)``, from the K tangent keys."""
    return jax.vmap(lambda key: _draw_one(lazy, key, tangent))(keys)


def _per_tangent(fn, t, keys, tangent):
    """``stack_k fn(t_k)`` for an array ``t`` ``(K, ...)`` or a lazy tangent.

    A lazy tangent is drawn inside a sequential loop over k, so only one of the
    K parameter-sized tangents exists at a time (materialising all K is slow
    as well as large: fresh multi-megabyte buffers cost page faults).
    """
    if not isinstance(t, _Lazy):
        return jax.vmap(fn)(t)
    if keys.shape[0] == 1:
        return fn(_draw_one(t, keys[0], tangent))[None]
    return lax.map(lambda key: fn(_draw_one(t, key, tangent)), keys)


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
    kw = dict(precision=params.get("precision"),
              preferred_element_type=params.get("preferred_element_type"))

    def dot(x, y):
        return lax.dot_general(x, y, dims, **kw)

    a_free = a.ndim - len(lc)
    if da is not None and not isinstance(da, _Lazy):
        stack = jnp.concatenate([a[None].astype(da.dtype), da], axis=0)
        out = lax.dot_general(stack, b, ((tuple(c + 1 for c in lc), tuple(rc)), ((), ())), **kw)
        primal, tan = out[0], out[1:]
        if db is not None:
            tan = tan + _per_tangent(lambda v: dot(a, v), db, keys, kind).astype(
                tan.dtype)
    elif db is not None and not isinstance(db, _Lazy):
        stack = jnp.concatenate([b[None].astype(db.dtype), db], axis=0)
        out = lax.dot_general(a, stack, ((tuple(lc), tuple(c + 1 for c in rc)), ((), ())), **kw)
        out = jnp.moveaxis(out, a_free, 0)
        primal, tan = out[0], out[1:]
        if da is not None:
            tan = tan + _per_tangent(lambda v: dot(v, b), da, keys, kind).astype(
                tan.dtype)
    else:
        # Only parameter tangents (a layer reading the input): nothing to stack with.
        primal = dot(a, b)
        parts = [_per_tangent(lambda v: dot(a, v), db, keys, kind) if db is not None else None,
                 _per_tangent(lambda v: dot(v, b), da, keys, kind) if da is not None else None]
        parts = [p for p in parts if p is not None]
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


def _forward(jaxpr, consts, primals, tangents, keys, tangent: str):
    """Evaluate ``jaxpr`` in forward mode with K tangents, equation by equation.

    ``tangents[i]`` is None (zero), an array ``(K, *shape)``, or a
    :class:`_Lazy`, drawn from ``keys`` (``(K,)`` typed keys) where it is first
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

        if name in _STRUCTURAL and len(tans) == 1 and isinstance(tans[0], _Lazy):
            env_p[eqn.outvars[0]] = eqn.primitive.bind(*invals, **params)
            lz = tans[0]
            env_t[eqn.outvars[0]] = lz._replace(post=lz.post + ((eqn.primitive, params),))
            continue

        fused_dot = name == "dot_general" and params["dimension_numbers"][1] == ((), ())
        if not fused_dot:
            tans = [_draw(t, keys, tangent) if isinstance(t, _Lazy) else t for t in tans]

        if name in _INLINE and "jaxpr" in eqn.params:
            closed = eqn.params["jaxpr"]
            outs, out_t = _forward(closed.jaxpr, closed.consts, invals, tans, keys, tangent)
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
    out_t = [_draw(t, keys, tangent) if isinstance(t, _Lazy) else t for t in out_t]
    return outs, out_t


# --------------------------------------------------------------------------- estimators

def value_and_fwd_grad(fun: Callable, argnums: int | Sequence[int] = 0, *, num_tangents: int = 1,
                       tangent: str = "rademacher", aggregate: str = "mean",
                       has_aux: bool = False, chunk_size: int | None = None) -> Callable:
    """Value of ``fun`` and a forward-gradient estimate of its gradient, like ``jax.value_and_grad``.

    Baydin et al. (2022), eq. 4 (``aggregate="mean"``): ``g_hat = (1/K) sum_k
    (grad f . v_k) v_k``, unbiased, with ``E|g_hat - g|^2 = (n - 1)|g|^2 / K`` for
    Rademacher and ``(n + 1)|g|^2 / K`` for Gaussian tangents (n parameters).
    ``aggregate="orthogonal"``: the projection of ``grad f`` onto the span of the
    K tangents; its expectation is about ``(K/n) grad f`` (a shorter step in an
    unbiased direction) with ``E|g_hat - g|^2 ~ (1 - K/n)|g|^2``, so backprop-sized
    learning rates work; K = n independent tangents give ``grad f`` exactly.

    Args:
      fun: ``fun(*args)`` returning a float scalar (or ``(scalar, aux)`` with
        ``has_aux``). Must be traceable by JAX; it is evaluated once per call.
      argnums: which positional argument(s) to estimate the gradient for; any
        pytree of float arrays (float32, bfloat16, ...).
      num_tangents: K, the number of random tangents (a Python int >= 1).
      tangent: ``"rademacher"`` (default, one random bit per entry) or ``"gaussian"``.
      aggregate: ``"mean"`` or ``"orthogonal"`` (K <= n required).
      has_aux: ``fun`` returns ``(value, aux)``.
      chunk_size: tangents per ``vmap`` chunk; chunks run one after another
        (``lax.map``), each recomputing the primal. ``None`` (default) runs all K
        in one ``vmap`` sharing one primal pass: fastest, K-times tangent memory.

    Returns:
      ``g(key, *args)`` returning ``(value, grad)``, or ``((value, aux), grad)``
      with ``has_aux``; ``grad`` has the structure and dtypes of ``args[argnums]``
      (a tuple of them for a tuple ``argnums``). The same key gives the same
      estimate; different keys give independent tangents.
    """
    argnums_t = _check_argnums(argnums)
    num_tangents = check_num_tangents(num_tangents)
    tangent = _tangents.check_tangent(tangent)
    aggregate = check_aggregate(aggregate)
    chunk_size = check_chunk_size(chunk_size, num_tangents)
    if not isinstance(has_aux, bool):
        raise TypeError(f"has_aux={has_aux!r} must be a bool")
    if not callable(fun):
        raise TypeError(f"fun={fun!r} is not callable")
    K = num_tangents
    single = isinstance(argnums, int)

    def value_and_grad_fn(key, *args):
        key = _as_key(key)
        if max(argnums_t) >= len(args):
            raise ValueError(f"argnums={argnums!r} but only {len(args)} positional arguments given")
        diff = tuple(args[i] for i in argnums_t)
        if single:
            diff = diff[0]
        leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(diff)
        leaves = [x for _, x in leaves_with_path]
        for path, x in leaves_with_path:
            dt = jnp.result_type(x)
            if not jnp.issubdtype(dt, jnp.floating):
                where = jax.tree_util.keystr(path)
                raise TypeError(f"parameter leaf {where} has dtype {dt}; forward gradients need "
                                "floating-point parameters (float32, bfloat16, ...)")
        if not leaves:
            raise ValueError(f"args[{argnums!r}] has no array leaves to estimate a gradient for")
        n = sum(math.prod(jnp.shape(x)) for x in leaves)
        if aggregate == "orthogonal" and K > n:
            raise ValueError(f"num_tangents={K} exceeds the {n} parameters: the span of the "
                             f"tangents has at most {n} dimensions; use num_tangents <= {n}")

        def flat_fun(*flat):
            d = jax.tree.unflatten(treedef, list(flat))
            full = list(args)
            for i, a in zip(argnums_t, (d,) if single else d):
                full[i] = a
            return fun(*full)

        closed, out_shape = jax.make_jaxpr(flat_fun, return_shape=True)(*leaves)
        out_leaves, out_tree = jax.tree.flatten(out_shape)
        if has_aux:
            if not (isinstance(out_shape, tuple) and len(out_shape) == 2):
                raise ValueError("has_aux=True but fun did not return a (value, aux) pair")
            value_shape = out_shape[0]
        else:
            value_shape = out_shape
        if not hasattr(value_shape, "shape") or value_shape.shape != () or not jnp.issubdtype(
                value_shape.dtype, jnp.floating):
            got = getattr(value_shape, "shape", type(value_shape).__name__)
            raise ValueError(f"fun must return a float scalar{' as value of (value, aux)' if has_aux else ''}"
                             f"; got {got} of dtype {getattr(value_shape, 'dtype', None)}. Reduce the loss "
                             "(e.g. jnp.mean) before estimating its gradient")

        lazies = [_Lazy(i, tuple(jnp.shape(x)), jnp.result_type(x)) for i, x in enumerate(leaves)]

        def directional(ks):
            tkeys = jax.vmap(lambda k: jax.random.fold_in(key, k))(ks)
            outs, out_t = _forward(closed.jaxpr, closed.consts, leaves, lazies, tkeys, tangent)
            d = out_t[0]
            d = jnp.zeros(ks.shape, jnp.float32) if d is None else d.astype(jnp.float32)
            return outs, d

        ks = jnp.arange(K, dtype=jnp.uint32)
        if chunk_size is None or chunk_size >= K:
            outs, d = directional(ks)
        else:
            nchunks = -(-K // chunk_size)
            padded = jnp.arange(nchunks * chunk_size, dtype=jnp.uint32).reshape(nchunks, chunk_size)
            outs, d = lax.map(directional, padded)
            outs = [o[0] for o in outs]
            d = d.reshape(-1)[:K]
        value_and_aux = jax.tree.unflatten(out_tree, outs)

        grads = _combine(key, d, leaves, tangent, aggregate)
        return value_and_aux, jax.tree.unflatten(treedef, grads)

    return value_and_grad_fn


def _combine(key, d, leaves, tangent, aggregate):
    """Each leaf's estimate from the directional derivatives ``d`` (float32, ``(K,)``)."""
    K = d.shape[0]
    # Redraw the tangents only once d exists (a hint where barriers are honoured;
    # on CPU the redraw is a separate computation from the forward draws anyway).
    kd, d = lax.optimization_barrier((jax.random.key_data(key), d))
    base = jax.random.wrap_key_data(kd)
    tangent_keys = jax.vmap(lambda k: jax.random.fold_in(base, k))(jnp.arange(K, dtype=jnp.uint32))

    def leaf_keys(i):
        return jax.vmap(lambda k: _tangents.leaf_key(k, i))(tangent_keys)

    if aggregate == "mean":
        w = d / jnp.float32(K)
    else:
        gram = jnp.zeros((K, K), jnp.float32)
        for i, x in enumerate(leaves):
            gram = gram + _tangents.gram_leaf(leaf_keys(i), tuple(jnp.shape(x)),
                                              jnp.result_type(x), tangent)
        w = jnp.linalg.pinv(gram, hermitian=True) @ d

    out = []
    for i, x in enumerate(leaves):
        shape, dtype = tuple(jnp.shape(x)), jnp.result_type(x)
        keys_i = leaf_keys(i)

        def term(k, keys_i=keys_i, shape=shape):
            return w[k] * _tangents.sample_leaf(keys_i[k], shape, jnp.float32, tangent)

        if K <= _UNROLL:
            # One fused loop that draws and sums all K tangents, writing the leaf once
            # (a sum over a (K, ...) stack would become a matmul on materialised tangents).
            est = term(0)
            for k in range(1, K):
                est = est + term(k)
        else:
            est = lax.fori_loop(1, K, lambda k, acc: acc + term(k), term(0))
        out.append(est.astype(dtype))
    return out


def fwd_grad(fun: Callable, argnums: int | Sequence[int] = 0, *, num_tangents: int = 1,
             tangent: str = "rademacher", aggregate: str = "mean", has_aux: bool = False,
             chunk_size: int | None = None) -> Callable:
    """Forward-gradient estimate of ``grad fun``, like ``jax.grad`` with a key first.

    See :func:`value_and_fwd_grad` for the arguments and the estimator (Baydin
    et al., 2022, eq. 4). Returns ``g(key, *args) -> grad`` (``(grad, aux)`` with
    ``has_aux``).
    """
    vg = value_and_fwd_grad(fun, argnums, num_tangents=num_tangents, tangent=tangent,
                            aggregate=aggregate, has_aux=has_aux, chunk_size=chunk_size)

    def grad_fn(key, *args):
        value, grad = vg(key, *args)
        return (grad, value[1]) if has_aux else grad

    return grad_fn


# --------------------------------------------------------------------------- diagnostics

def _flat32(tree) -> jax.Array:
    leaves = jax.tree.leaves(tree)
    return jnp.concatenate([jnp.ravel(x).astype(jnp.float32) for x in leaves]) if leaves else (
        jnp.zeros((0,), jnp.float32))


def cosine_similarity(estimate: Any, exact: Any) -> jax.Array:
    """Cosine of the angle between two gradient pytrees, as one flat vector (float32 scalar).

    Returns 0 when either is all zeros. Raises ``ValueError`` if the structures differ.
    """
    if jax.tree.structure(estimate) != jax.tree.structure(exact):
        raise ValueError("estimate and exact have different pytree structures: "
                         f"{jax.tree.structure(estimate)} vs {jax.tree.structure(exact)}")
    a, b = _flat32(estimate), _flat32(exact)
    if a.shape != b.shape:
        raise ValueError(f"estimate has {a.shape[0]} entries, exact has {b.shape[0]}")
    denom = jnp.linalg.norm(a) * jnp.linalg.norm(b)
    return jnp.where(denom > 0, jnp.dot(a, b) / jnp.where(denom > 0, denom, 1.0), 0.0)


def theoretical_variance(exact: Any, *, tangent: str = "rademacher", num_tangents: int = 1,
                         aggregate: str = "mean") -> jax.Array:
    """``E|g_hat - g|^2`` predicted for the estimator, given the exact gradient ``g``.

    Mean of K forward gradients over n parameters (Baydin et al., 2022; Silver et
    al., 2022, sec. 3): Gaussian ``(n + 1)|g|^2 / K``, Rademacher ``(n - 1)|g|^2 / K``.
    Orthogonal projection onto a uniformly random K-dimensional subspace:
    ``(1 - K/n)|g|^2`` (exact for Gaussian tangents, close for Rademacher).
    """
    _tangents.check_tangent(tangent)
    check_aggregate(aggregate)
    K = check_num_tangents(num_tangents)
    g = _flat32(exact)
    n = g.shape[0]
    sq = jnp.sum(g * g)
    if aggregate == "orthogonal":
        return sq * jnp.float32(1.0 - K / n)
    return sq * jnp.float32((n + 1 if tangent == "gaussian" else n - 1) / K)


def estimator_variance(grad_fn: Callable, key: jax.Array, *args, num_samples: int = 256,
                       exact: Any = None, batch_size: int | None = 64) -> jax.Array:
    """Empirical ``E|g_hat - g|^2`` of a gradient estimator (float32 scalar).

    Args:
      grad_fn: ``grad_fn(key, *args) -> estimate``, e.g. from :func:`fwd_grad`.
      key: PRNG key; sample ``s`` uses ``fold_in(key, s)``.
      num_samples: number of independent estimates (>= 2).
      exact: the true gradient; when given, the mean squared error about it is
        returned, otherwise the total (summed over entries) sample variance about
        the sample mean (ddof = 1).
      batch_size: estimates drawn per ``vmap`` batch (``lax.map``), bounding memory.
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 2:
        raise ValueError(f"num_samples={num_samples!r}: need an int >= 2")
    key = _as_key(key)
    keys = jax.vmap(lambda s: jax.random.fold_in(key, s))(jnp.arange(num_samples, dtype=jnp.uint32))
    est = lax.map(lambda k: _flat32(grad_fn(k, *args)), keys, batch_size=batch_size)
    if exact is not None:
        err = est - _flat32(exact)[None]
        return jnp.mean(jnp.sum(err * err, axis=1))
    return jnp.sum(jnp.var(est, axis=0, ddof=1))
