"""Forward-gradient estimators: one ``jvp`` per random tangent, no backward pass.

Baydin, Pearlmutter, Syme, Wood, Torr, "Gradients without Backpropagation"
(2022), eq. 4: for ``f: R^n -> R`` and a random tangent ``v`` with
``E[v v^T] = I``, the forward gradient ``g_hat = (grad f . v) v`` is an unbiased
estimate of ``grad f``; the directional derivative ``grad f . v`` is one
forward-mode Jacobian-vector product, computed alongside ``f`` itself.

How the estimate is computed here, and why:

* The K directional derivatives ``d`` come from one of two evaluations
  (``strategy``): ``"loop"``, the jaxpr interpreter of :mod:`fwdgrad._jaxpr_forward`
  (one primal, parameter tangents drawn one k at a time where they are read:
  memory flat in K and depth, best on CPU), or ``"vmap"``, a ``jax.vmap`` of
  ``jax.jvp`` over the K tangents (all K parameter-sized tangents exist at
  once; one batched program, best on accelerators). ``"auto"`` chooses by
  backend and by the K tangents' bytes (:func:`resolve_strategy`). Both draw
  the same tangents, so they give the same estimate up to float rounding.
* Tangents are never stored. After ``d`` is known, each leaf's K tangents are
  drawn again from the same keys and combined with ``d`` into that leaf's
  estimate, one leaf at a time (:func:`combine`).
* ``aggregate="orthogonal"`` projects the gradient onto the span of the K
  tangents: ``P g = V^T (V V^T)^+ V g = V^T (V V^T)^+ d``. It needs only the
  K x K Gram matrix ``V V^T`` (accumulated leaf by leaf, on packed sign bits for
  Rademacher tangents) and ``d``; the tangents are never orthonormalised
  explicitly. With K = n independent tangents this is the exact gradient.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, TypedDict, Unpack

import jax
import jax.numpy as jnp
from jax import lax

from fwdgrad import _jaxpr_forward, _tangents

__all__ = ["AGGREGATES", "STRATEGIES", "fwd_grad", "value_and_fwd_grad", "resolve_strategy"]

#: How :func:`fwd_grad` combines its K estimates: ``"mean"`` of the (grad f . v_k) v_k (Baydin et
#: al. 2022, eq. 4) or ``"orthogonal"`` (the projection of the gradient onto the span of the K
#: orthonormalised tangents).
AGGREGATES = ("mean", "orthogonal")
#: How the K tangents are evaluated: ``"loop"`` (one jvp per tangent, memory flat in K),
#: ``"vmap"`` (one batched program) or ``"auto"`` (the choice of :func:`resolve_strategy`).
STRATEGIES = ("auto", "loop", "vmap")
# Up to this many tangents the final combination is unrolled into one fused loop;
# beyond, a sequential loop bounds the program size.
_UNROLL = 16
# "auto" keeps the loop when the K materialised tangents of "vmap" would exceed this
# share of the device's memory (or 1 GiB where the device reports no limit).
_VMAP_MEMORY_SHARE = 0.25
_VMAP_BYTES_FALLBACK = 1 << 30


# --------------------------------------------------------------------------- validation


def check_num_tangents(num_tangents: Any) -> int:
    if isinstance(num_tangents, bool) or not isinstance(num_tangents, int):
        raise TypeError(
            f"num_tangents={num_tangents!r} must be a Python int >= 1 (it fixes the "
            "number of jvps traced, so it cannot be an array; with "
            "optax.inject_hyperparams pass static_args=('num_tangents',))"
        )
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
        raise ValueError(
            f"chunk_size={chunk_size!r}: use None (all tangents in one vmap) or an "
            "int >= 1 (tangents per sequential chunk)"
        )
    return min(chunk_size, num_tangents)


def _check_argnums(argnums: Any) -> tuple[int, ...]:
    nums = (argnums,) if isinstance(argnums, int) and not isinstance(argnums, bool) else argnums
    if (
        not isinstance(nums, tuple)
        or not nums
        or any(isinstance(a, bool) or not isinstance(a, int) for a in nums)
    ):
        raise TypeError(f"argnums={argnums!r} must be an int or a non-empty tuple of ints")
    if len(set(nums)) != len(nums):
        raise ValueError(f"argnums={argnums!r} repeats an argument")
    return nums


def as_key(key: Any) -> jax.Array:
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise ValueError(
                f"key has shape {key.shape}; pass a single PRNG key, e.g. jax.random.key(0)"
            )
        return key
    if key.dtype == jnp.uint32 and key.shape == (2,):
        return jax.random.wrap_key_data(key)
    raise TypeError(
        f"key of dtype {key.dtype} and shape {key.shape} is not a PRNG key; pass "
        "jax.random.key(seed)"
    )


def check_strategy(strategy: Any) -> str:
    if not isinstance(strategy, str) or strategy not in STRATEGIES:
        raise ValueError(
            f"strategy={strategy!r} is not known; use one of {STRATEGIES} ('loop': "
            "one tangent at a time, flat memory; 'vmap': all K at once; 'auto': by "
            "backend and size)"
        )
    return strategy


def _vmap_budget(backend: str) -> float:
    try:
        stats = jax.devices(backend)[0].memory_stats() or {}
    except RuntimeError:  # backend not present on this machine
        stats = {}
    limit = stats.get("bytes_limit")
    return _VMAP_MEMORY_SHARE * limit if limit else float(_VMAP_BYTES_FALLBACK)


def resolve_strategy(
    strategy: str, num_tangents: int, params: Any = None, *, backend: str | None = None
) -> str:
    """The evaluation ``"auto"`` stands for: ``"loop"`` or ``"vmap"`` (others returned as given).

    ``"vmap"`` on accelerators (one batched program; on an H200 a vmap of jvp
    beat the loop at K = 4, see BENCHMARKS.md, "fwdgrad: step time"), unless
    its K materialised parameter-sized tangents would take more than a quarter
    of the device's memory; ``"loop"`` on CPU, where the interpreter's shared
    primal and per-k tangent draws are faster and keep memory flat.

    Args:
      strategy: ``"auto"``, ``"loop"`` or ``"vmap"``.
      num_tangents: K.
      params: the pytree the tangents are drawn for (its bytes times K is what
        ``"vmap"`` materialises); ``None`` skips the size rule.
      backend: platform name; default ``jax.default_backend()``.
    """
    strategy = check_strategy(strategy)
    if strategy != "auto":
        return strategy
    backend = backend or jax.default_backend()
    if backend == "cpu":
        return "loop"
    if params is not None:
        nbytes = sum(
            math.prod(jnp.shape(x)) * jnp.dtype(jnp.result_type(x)).itemsize
            for x in jax.tree.leaves(params)
        )
        if num_tangents * nbytes > _vmap_budget(backend):
            return "loop"
    return "vmap"


# --------------------------------------------------------------------------- estimators


def _float_leaves(diff: Any) -> tuple[list, Any]:
    leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(diff)
    for path, x in leaves_with_path:
        dt = jnp.result_type(x)
        if not jnp.issubdtype(dt, jnp.floating):
            raise TypeError(
                f"parameter leaf {jax.tree_util.keystr(path)} has dtype {dt}; forward "
                "gradients need floating-point parameters (float32, bfloat16, ...)"
            )
    leaves = [x for _, x in leaves_with_path]
    if not leaves:
        raise ValueError(
            "the differentiated argument has no array leaves to estimate a gradient for"
        )
    return leaves, treedef


def _check_value(out_shape: Any, has_aux: bool) -> None:
    """``fun``'s output (shapes) must be a float scalar, or a ``(scalar, aux)`` pair with ``has_aux``."""
    if has_aux:
        if not (isinstance(out_shape, tuple) and len(out_shape) == 2):
            raise ValueError("has_aux=True but fun did not return a (value, aux) pair")
        out_shape = out_shape[0]
    if (
        not hasattr(out_shape, "shape")
        or out_shape.shape != ()
        or not jnp.issubdtype(out_shape.dtype, jnp.floating)
    ):
        got = getattr(out_shape, "shape", type(out_shape).__name__)
        raise ValueError(
            f"fun must return a float scalar{' as value of (value, aux)' if has_aux else ''}"
            f"; got {got} of dtype {getattr(out_shape, 'dtype', None)}. Reduce the loss "
            "(e.g. jnp.mean) before estimating its gradient"
        )


def _loop_directional(flat_fun, leaves, key, tangent):
    """``ks -> (value_and_aux, d)`` by the jaxpr interpreter: one primal, K tangents batched."""
    closed, out_shape = jax.make_jaxpr(flat_fun, return_shape=True)(*leaves)
    out_tree = jax.tree.structure(out_shape)
    lazies = [
        _jaxpr_forward.Lazy(i, tuple(jnp.shape(x)), jnp.result_type(x))
        for i, x in enumerate(leaves)
    ]

    def directional(ks):
        tkeys = jax.vmap(lambda k: jax.random.fold_in(key, k))(ks)
        outs, out_t = _jaxpr_forward.forward(
            closed.jaxpr, closed.consts, leaves, lazies, tkeys, tangent
        )
        d = out_t[0]
        d = jnp.zeros(ks.shape, jnp.float32) if d is None else d.astype(jnp.float32)
        return jax.tree.unflatten(out_tree, outs), d

    return directional


def _vmap_directional(flat_fun, leaves, key, tangent, has_aux):
    """``ks -> (value_and_aux, d)`` by ``vmap`` of ``jax.jvp``: the K tangents drawn at once."""

    def value_only(*flat):
        out = flat_fun(*flat)
        return (out[0], out[1]) if has_aux else (out, None)

    def one(k):
        tkey = jax.random.fold_in(key, k)
        v = [
            _tangents.sample_leaf(
                _tangents.leaf_key(tkey, i), tuple(jnp.shape(x)), jnp.result_type(x), tangent
            )
            for i, x in enumerate(leaves)
        ]
        value, d, aux = jax.jvp(value_only, leaves, v, has_aux=True)
        return (value, aux), d.astype(jnp.float32)

    def directional(ks):
        (value, aux), d = jax.vmap(one, out_axes=((None, None), 0))(ks)
        return ((value, aux) if has_aux else value), d

    return directional


def _directional_derivatives(directional, K, chunk_size):
    """All K directional derivatives, in one batch or in sequential chunks of ``chunk_size``."""
    ks = jnp.arange(K, dtype=jnp.uint32)
    if chunk_size is None or chunk_size >= K:
        return directional(ks)
    nchunks = -(-K // chunk_size)
    padded = jnp.arange(nchunks * chunk_size, dtype=jnp.uint32).reshape(nchunks, chunk_size)
    value_and_aux, d = lax.map(directional, padded)
    return jax.tree.map(lambda o: o[0], value_and_aux), d.reshape(-1)[:K]


def value_and_fwd_grad(
    fun: Callable,
    argnums: int | Sequence[int] = 0,
    *,
    num_tangents: int = 1,
    tangent: str = "rademacher",
    aggregate: str = "mean",
    has_aux: bool = False,
    chunk_size: int | None = None,
    strategy: str = "auto",
) -> Callable:
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
      tangent: ``"rademacher"`` (default, one random bit per entry), ``"gaussian"``, or
        ``"rank1"``: a matrix leaf's tangent is ``s r^T`` for random sign vectors, with the
        same per-entry variance as ``"rademacher"`` and, under ``strategy="loop"``, the
        matrix-vector cost ``(x s) r^T`` instead of a second matmul (``fwdgrad._tangents``).
      aggregate: ``"mean"`` or ``"orthogonal"`` (K <= n required).
      has_aux: ``fun`` returns ``(value, aux)``.
      chunk_size: tangents per chunk; chunks run one after another
        (``lax.map``), each recomputing the primal. ``None`` (default): all K in
        one batch sharing one primal pass.
      strategy: how the K tangents are evaluated: ``"loop"`` (jaxpr interpreter,
        one tangent drawn at a time, flat memory), ``"vmap"`` (``vmap`` of
        ``jax.jvp``, K tangents materialised) or ``"auto"`` (default:
        :func:`resolve_strategy`, vmap on GPU/TPU, loop on CPU or when the K
        tangents would not fit). Same tangents, same estimate up to rounding.

    Returns:
      ``g(key, *args)`` returning ``(value, grad)``, or ``((value, aux), grad)``
      with ``has_aux``; ``grad`` has the structure and dtypes of ``args[argnums]``
      (a tuple of them for a tuple ``argnums``). The same key gives the same
      estimate; different keys give independent tangents.
    """
    gated = _gated_value_and_fwd_grad(
        fun, argnums, num_tangents, tangent, aggregate, has_aux, chunk_size, strategy, gate=False
    )

    def value_and_grad_fn(key, *args):
        value_and_aux, grads, _ = gated(key, *args)
        return value_and_aux, grads

    return value_and_grad_fn


def _gated_value_and_fwd_grad(
    fun, argnums, num_tangents, tangent, aggregate, has_aux, chunk_size, strategy, *, gate: bool
) -> Callable:
    """:func:`value_and_fwd_grad` returning ``(value_and_aux, grad, ok)``; with ``gate``, ``ok``
    says whether the value and the estimate are finite and ``grad`` is zero when not (see
    :func:`combine`); without, ``ok`` is None."""
    argnums_t, K, tangent, aggregate, chunk_size = _check_estimator(
        fun, argnums, num_tangents, tangent, aggregate, has_aux, chunk_size, strategy
    )
    single = isinstance(argnums, int)

    def value_and_grad_fn(key, *args):
        key = as_key(key)
        if max(argnums_t) >= len(args):
            raise ValueError(f"argnums={argnums!r} but only {len(args)} positional arguments given")
        diff = tuple(args[i] for i in argnums_t)
        leaves, treedef = _float_leaves(diff[0] if single else diff)
        _check_span(aggregate, K, leaves)

        def flat_fun(*flat):
            d = jax.tree.unflatten(treedef, list(flat))
            full = list(args)
            for i, a in zip(argnums_t, (d,) if single else d):
                full[i] = a
            return fun(*full)

        _check_value(jax.eval_shape(flat_fun, *leaves), has_aux)
        if resolve_strategy(strategy, K, leaves) == "vmap":
            directional = _vmap_directional(flat_fun, leaves, key, tangent, has_aux)
        else:
            directional = _loop_directional(flat_fun, leaves, key, tangent)
        value_and_aux, d = _directional_derivatives(directional, K, chunk_size)
        value = (value_and_aux[0] if has_aux else value_and_aux) if gate else None
        grads, ok = combine(key, d, leaves, tangent, aggregate, gate_value=value)
        return value_and_aux, jax.tree.unflatten(treedef, grads), ok

    return value_and_grad_fn


def _check_estimator(fun, argnums, num_tangents, tangent, aggregate, has_aux, chunk_size, strategy):
    """Validate :func:`value_and_fwd_grad`'s arguments; return the checked
    ``(argnums tuple, K, tangent, aggregate, chunk_size)``."""
    argnums_t = _check_argnums(argnums)
    K = check_num_tangents(num_tangents)
    tangent = _tangents.check_tangent(tangent, weight=True)
    aggregate = check_aggregate(aggregate)
    chunk_size = check_chunk_size(chunk_size, K)
    check_strategy(strategy)
    if not isinstance(has_aux, bool):
        raise TypeError(f"has_aux={has_aux!r} must be a bool")
    if not callable(fun):
        raise TypeError(f"fun={fun!r} is not callable")
    return argnums_t, K, tangent, aggregate, chunk_size


def _check_span(aggregate: str, K: int, leaves) -> None:
    """``"orthogonal"`` needs K <= n: K tangents span at most n dimensions."""
    n = sum(math.prod(jnp.shape(x)) for x in leaves)
    if aggregate == "orthogonal" and n < K:
        raise ValueError(
            f"num_tangents={K} exceeds the {n} parameters: the span of the "
            f"tangents has at most {n} dimensions; use num_tangents <= {n}"
        )


#: A bound on |v| of one tangent entry: Rademacher entries are +-1; ``jax.random.normal`` is
#: ``sqrt(2) erfinv(u)`` with ``|u| < 1`` representable, so below 5.5 in float32 (8 for margin).
_TANGENT_MAX = {"rademacher": 1.0, "rank1": 1.0, "gaussian": 8.0}


def _gate(value, w, leaves, tangent):
    """``(ok, w or zeros)``: the loss is finite and every ``sum_k w_k v_k`` is finite.

    Decided on the K coefficients, not on the parameter-sized estimate: with ``|v| <= vmax``
    each entry's ``|sum_k w_k v_k| <= K vmax max|w|``, so ``max|w|`` below the smallest
    leaf dtype's max over ``K vmax`` proves the estimate finite (it also fails for NaN). The
    select then acts on K scalars, and the estimate stays one fused pass into the optimiser's
    update instead of being written, reduced for a check and read again.
    """
    K = w.shape[0]
    fmax = min(float(jnp.finfo(jnp.result_type(x)).max) for x in leaves)
    limit = jnp.float32(fmax / (K * _TANGENT_MAX[tangent]))
    ok = jnp.isfinite(value) & jnp.all(jnp.abs(w) < limit)
    return ok, jnp.where(ok, w, jnp.zeros_like(w))


def combine(key, d, leaves, tangent, aggregate, *, gate_value=None):
    """Each leaf's estimate from the directional derivatives ``d`` (float32, ``(K,)``), and
    ``ok`` (None unless ``gate_value``, the loss, is given: then see :func:`_gate`)."""
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
            gram = gram + _tangents.gram_leaf(
                leaf_keys(i), tuple(jnp.shape(x)), jnp.result_type(x), tangent
            )
        w = jnp.linalg.pinv(gram, hermitian=True) @ d
    ok = None
    if gate_value is not None:
        ok, w = _gate(gate_value, w, leaves, tangent)

    out = []
    for i, x in enumerate(leaves):
        shape, dtype = tuple(jnp.shape(x)), jnp.result_type(x)
        keys_i = leaf_keys(i)

        def term(k, keys_i=keys_i, shape=shape, dtype=dtype):
            # Drawn in the leaf's dtype, as the jvp drew it: the tangent the estimate is
            # built from is the one its directional derivative was taken along.
            v = _tangents.sample_leaf(keys_i[k], shape, dtype, tangent)
            return w[k] * v.astype(jnp.float32)

        if K <= _UNROLL:
            # One fused loop that draws and sums all K tangents, writing the leaf once
            # (a sum over a (K, ...) stack would become a matmul on materialised tangents).
            est = term(0)
            for k in range(1, K):
                est = est + term(k)
        else:
            est = lax.fori_loop(1, K, lambda k, acc: acc + term(k), term(0))
        out.append(est.astype(dtype))
    return out, ok


class EstimatorOptions(TypedDict, total=False):
    """The keyword options of :func:`value_and_fwd_grad`, which :func:`fwd_grad` takes too
    (their meaning and defaults: :func:`value_and_fwd_grad`)."""

    num_tangents: int
    tangent: str
    aggregate: str
    has_aux: bool
    chunk_size: int | None
    strategy: str


def fwd_grad(
    fun: Callable, argnums: int | Sequence[int] = 0, **options: Unpack[EstimatorOptions]
) -> Callable:
    """Forward-gradient estimate of ``grad fun``, like ``jax.grad`` with a key first.

    See :func:`value_and_fwd_grad` for the keyword options (:class:`EstimatorOptions`) and the
    estimator (Baydin et al., 2022, eq. 4). Returns ``g(key, *args) -> grad`` (``(grad, aux)``
    with ``has_aux``).
    """
    vg = value_and_fwd_grad(fun, argnums, **options)
    has_aux = options.get("has_aux", False)

    def grad_fn(key, *args):
        value, grad = vg(key, *args)
        return (grad, value[1]) if has_aux else grad

    return grad_fn


# The name the optax transforms and the sharded estimator import.
def _combine(key, d, leaves, tangent, aggregate):
    return combine(key, d, leaves, tangent, aggregate)[0]
