"""bbcore: the policy every package of the toolkit shares, defined once.

A leaf: ``fwdgrad``, ``lowbit``, ``analog`` and ``beyondbp`` import it; it imports none of
them (only JAX, NumPy and optax). Each rule here used to be written separately in each
package, slightly differently; now a change of policy is one edit.

* Non-finite refusal (:mod:`bbcore.finite`): :func:`all_finite`, :func:`refuse_nonfinite`
  (zero updates, state kept, a ``nonfinite`` counter bumped; the rule of optax's
  ``apply_if_finite``, applied inside each transform), :func:`count_refusal`.
* Argument checks (:mod:`bbcore.checks`): :func:`check_seed`, :func:`check_mesh_axis`,
  :func:`require_key` (the "... draws noise; pass key=" error), :func:`flat_inputs` (a model's
  input flattened and its feature count checked).
* PRNG (:mod:`bbcore.prng`): :data:`PRNG_IMPL` and :func:`key`, the generator of keys the
  toolkit makes itself for simulation noise; :mod:`bbcore.counter_rng`, the keyed counter hash
  that draws bulk random words (device and read noise, stochastic rounding) far cheaper than
  ``jax.random`` on CPU, the same however the work is batched or sharded.
* JAX-version shims (:mod:`bbcore.jax_compat`): :func:`varies_over`, :func:`varying`,
  :func:`register_linear_call_batching`, and the JAX versions they are tested on.
* Activations by name (:mod:`bbcore.activations`): :data:`ACTIVATIONS`, :func:`activation_fn`.
* Pytree search (:mod:`bbcore.trees`): :func:`find_states`, :func:`find_fields` over nested
  optax states, through ``optax.tree_utils.tree_get_all_with_path``.
"""

from bbcore.activations import ACTIVATIONS, activation_fn
from bbcore.checks import check_mesh_axis, check_seed, flat_inputs, require_key
from bbcore.finite import all_finite, count_refusal, refuse_nonfinite
from bbcore.jax_compat import TESTED_JAX, register_linear_call_batching, varies_over, varying
from bbcore.prng import PRNG_IMPL, key
from bbcore.trees import find_fields, find_states

__all__ = [
    "all_finite",
    "refuse_nonfinite",
    "count_refusal",
    "check_seed",
    "check_mesh_axis",
    "require_key",
    "flat_inputs",
    "PRNG_IMPL",
    "key",
    "varies_over",
    "varying",
    "register_linear_call_batching",
    "TESTED_JAX",
    "find_states",
    "find_fields",
    "ACTIVATIONS",
    "activation_fn",
]
