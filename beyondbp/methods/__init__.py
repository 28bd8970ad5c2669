"""The registry of training methods that ``beyondbp compare`` runs side by side.

A :class:`Method` turns a :class:`MethodConfig` (seed, data shape, budget) into a
:class:`Setup`: the model's parameters, a pure ``apply(params, x)``, the optax
transform, and whether the training loop must feed it backprop gradients
(``needs_grad``) or only the keyword extra args ``loss_fn=`` and ``batch=``.

The registry is :mod:`beyondbp.methods._registry`; each package's rows, with their public
recipe builders (``analog_rows.build_eqprop``, ``lowbit_rows.build_model``, ...), are in
``beyondbp/methods/<package>_rows.py``, imported below in table order. A user adds a method::

    from beyondbp import methods
    methods.register(methods.Method("my-sgd", "SGD, lr 0.05", build=my_build))
"""

from __future__ import annotations

# The rows, in the order the table lists them (registration order).
# The rows register on import, and the table lists them in registration order: backprop (the
# reference) first, then each package's rows, then the combinations. isort would sort them.
# isort: off
from beyondbp.methods import backprop_rows, lowbit_rows, analog_rows, fwdgrad_rows, combined_rows

# isort: on
from beyondbp.methods._registry import (
    REGISTRY,
    Method,
    MethodConfig,
    NotApplicable,
    Setup,
    get,
    names,
    register,
)
from beyondbp.models import cross_entropy  # kept here too: notebooks call methods.cross_entropy

__all__ = [
    "Method",
    "MethodConfig",
    "Setup",
    "register",
    "get",
    "names",
    "cross_entropy",
    "REGISTRY",
    "NotApplicable",
    "backprop_rows",
    "lowbit_rows",
    "analog_rows",
    "fwdgrad_rows",
    "combined_rows",
]
