"""bbcore: the shared policy, defined once, and the one direction of imports.

The import test reads every module's own import statements (top level and inside functions),
so a new import that makes a cycle or points the wrong way fails here, not in a reviewer's
head: bbcore imports none of the toolkit's packages; fwdgrad, lowbit and analog import only
bbcore of them; beyondbp may import all; within a package no module imports one that imports it.
"""

from __future__ import annotations

import ast
import pathlib
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import bbcore

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("bbcore", "fwdgrad", "lowbit", "analog", "beyondbp")
MAY_IMPORT = {
    "bbcore": set(),
    "fwdgrad": {"bbcore"},
    "lowbit": {"bbcore"},
    "analog": {"bbcore"},
    "beyondbp": set(PACKAGES),
}


# The rows of beyondbp.methods used to register through bottom-of-file imports, a cycle; the
# methods/ package (a registry module the rows import, rows imported by __init__) removed it.
KNOWN_CYCLES: set = set()


def _name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: pathlib.Path) -> set[str]:
    """Dotted names of the toolkit's modules that ``path`` imports (anywhere in the file)."""
    pkg = _name(path) if path.stem == "__init__" else _name(path).rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module if node.level == 0 else f"{pkg}.{node.module}"
            out.add(base)
            out |= {f"{base}.{a.name}" for a in node.names}
    return {n for n in out if n.split(".")[0] in PACKAGES}


def _modules() -> dict[str, set[str]]:
    return {_name(p): _imports(p) for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def test_packages_import_only_in_the_allowed_direction():
    bad = [
        (m, i)
        for m, deps in _modules().items()
        for i in deps
        if i.split(".")[0] != m.split(".")[0] and i.split(".")[0] not in MAY_IMPORT[m.split(".")[0]]
    ]
    assert not bad, f"imports against the layering (see docs/architecture.md): {bad}"


def test_no_import_cycle_between_modules():
    graph = _modules()
    # an edge to a module, not to a name inside it; a package's __init__ is left out (it
    # re-exports its own modules by design, and a module importing its package's public
    # name reaches the module that defines it)
    edges = {
        m: {
            d
            for d in deps
            if d in graph and d not in PACKAGES and d != m and (m, d) not in KNOWN_CYCLES
        }
        for m, deps in graph.items()
        if m not in PACKAGES
    }
    state: dict[str, int] = {}

    def visit(m, trail):
        state[m] = 1
        for d in sorted(edges.get(m, ())):
            if state.get(d) == 1:
                raise AssertionError(f"import cycle: {' -> '.join(trail + [m, d])}")
            if d not in state:
                visit(d, trail + [m])
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m, [])


class _State(NamedTuple):
    count: jax.Array
    key: jax.Array
    nonfinite: jax.Array = np.int32(0)


def _state():
    return _State(jnp.zeros((), jnp.int32), jax.random.key(0), jnp.zeros((), jnp.int32))


def test_all_finite_ignores_integers_keys_and_none():
    tree = {"w": jnp.ones(3), "n": jnp.int32(7), "k": jax.random.key(1), "none": None}
    assert bool(bbcore.all_finite(tree))
    assert bool(bbcore.all_finite())  # nothing floating: finite
    assert not bool(bbcore.all_finite(tree, {"b": jnp.array([1.0, jnp.inf])}))
    assert not bool(bbcore.all_finite(jnp.array([jnp.nan], jnp.bfloat16)))


def test_refusal_zeros_updates_keeps_state_and_counts():
    state = _state()
    ups = {"w": jnp.array([1.0, 2.0], jnp.bfloat16), "b": jnp.ones((2, 2))}
    new = state._replace(count=state.count + 1)

    got, s = jax.jit(lambda ok: bbcore.refuse_nonfinite(ok, lambda: (ups, new), state, ups))(
        jnp.bool_(False)
    )
    chex.assert_trees_all_equal_shapes_and_dtypes(got, ups)
    chex.assert_trees_all_equal(got, jax.tree.map(jnp.zeros_like, ups))
    assert int(s.count) == 0 and int(s.nonfinite) == 1
    got, s = bbcore.refuse_nonfinite(jnp.bool_(True), lambda: (ups, new), state, ups)
    chex.assert_trees_all_equal(got, ups)
    assert int(s.count) == 1 and int(s.nonfinite) == 0


def test_count_refusal_saturates_like_optax():
    s = bbcore.count_refusal(_state()._replace(nonfinite=jnp.int32(np.iinfo(np.int32).max)))
    assert int(s.nonfinite) == np.iinfo(np.int32).max


@pytest.mark.parametrize("seed", [0, 7, np.int32(3), jnp.int32(2), jnp.uint32(5)])
def test_check_seed_accepts_ints_and_integer_scalars(seed):
    assert bbcore.check_seed(seed, "f") is seed


@pytest.mark.parametrize("seed", [True, 1.5, "a", None, jnp.ones(2, jnp.int32), jnp.float32(1)])
def test_check_seed_rejects_the_rest_with_one_message(seed):
    with pytest.raises(TypeError, match=r"f: seed=.* must be an integer"):
        bbcore.check_seed(seed, "f")


def test_check_mesh_axis():
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    assert bbcore.check_mesh_axis(mesh, "data", "f") == 1
    with pytest.raises(ValueError, match="f: batch_axis_name='x' is not an axis"):
        bbcore.check_mesh_axis(mesh, "x", "f", what="batch_axis_name")
    with pytest.raises(TypeError, match=r"not a jax.sharding.Mesh"):
        bbcore.check_mesh_axis(("data",), "data", "f")


def test_require_key():
    bbcore.require_key(jax.random.key(0), "f", "it draws noise")
    with pytest.raises(ValueError, match=r"f: it draws noise; pass key=jax.random.key"):
        bbcore.require_key(None, "f", "it draws noise")


def test_the_toolkit_key_uses_the_documented_generator():
    k = bbcore.key(3)
    assert str(jax.random.key_impl(k)) == str(
        jax.random.key_impl(jax.random.key(0, impl=bbcore.PRNG_IMPL))
    )
    np.testing.assert_array_equal(
        jax.random.key_data(k), jax.random.key_data(jax.random.key(3, impl="rbg"))
    )


def test_find_states_and_fields_walk_nested_optax_states():
    import fwdgrad
    import lowbit

    tx = optax.chain(
        lowbit.quantize_updates(),
        optax.inject_hyperparams(optax.sgd)(learning_rate=0.1),
        optax.masked(fwdgrad.forward_gradient(), {"a": True}),
    )
    s = tx.init({"a": jnp.ones(3)})
    assert [type(x).__name__ for x in bbcore.find_states(s, fwdgrad.ForwardGradientState)] == [
        "ForwardGradientState"
    ]
    fields = bbcore.find_fields(s, "nonfinite")
    assert sorted(fields.values()) == [0, 0] and len(fields) == 2
    assert any("QuantizeUpdatesState" in k for k in fields)


def test_varies_over_is_false_outside_shard_map():
    assert not bbcore.varies_over(jnp.ones(2), "data")
    lo, _hi = bbcore.TESTED_JAX
    assert tuple(map(int, lo.split("."))) <= tuple(map(int, jax.__version__.split(".")[:3]))


def test_counter_rng_words_depend_on_key_stream_and_index_only():
    """The words of element i are the same whatever the array's shape or the vmap batch: what
    lets lowbit's stochastic rounding come out bit-identical however the work is split."""
    from bbcore import counter_rng

    k = jax.random.key(3)
    flat = np.asarray(counter_rng.bits(k, 0, (24,)))
    np.testing.assert_array_equal(np.asarray(counter_rng.bits(k, 0, (4, 6))).reshape(-1), flat)
    keys = jax.random.split(jax.random.key(4), 7)
    seven = np.asarray(jax.vmap(lambda kk: counter_rng.bits(kk, 1, (5,)))(keys))
    three = np.asarray(jax.vmap(lambda kk: counter_rng.bits(kk, 1, (5,)))(keys[:3]))
    np.testing.assert_array_equal(three, seven[:3])
    # another stream or key gives other words (a collision of all 24 would be a bug)
    assert np.all(np.asarray(counter_rng.bits(k, 1, (24,))) != flat)
    assert np.all(np.asarray(counter_rng.bits(jax.random.key(5), 0, (24,))) != flat)
    u = np.asarray(counter_rng.to_uniform(counter_rng.bits(k, 2, (100_000,))), np.float64)
    assert u.min() >= 0 and u.max() < 1
    assert abs(u.mean() - 0.5) < 5 / np.sqrt(12 * 100_000)  # 5 standard errors
