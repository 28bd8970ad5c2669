"""Finding states inside nested optax states (chains, ``inject_hyperparams``, masks).

Thin wrappers over ``optax.tree_utils.tree_get_all_with_path``, which walks every container
optax builds, so no package walks optimizer states by hand.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import optax

__all__ = ["find_states", "find_fields"]


def find_states(tree: Any, cls: type) -> list:
    """Every NamedTuple state of type ``cls`` inside ``tree``, in tree order."""
    found = optax.tree_utils.tree_get_all_with_path(tree, cls.__name__)
    return [v for _, v in found if isinstance(v, cls)]


def find_fields(tree: Any, name: str) -> dict[str, int]:
    """The integer fields called ``name`` (e.g. ``"nonfinite"``) inside ``tree``, by path.

    Keys are ``jax.tree_util.keystr`` of the path, e.g. ``"[0]ForwardGradientState.nonfinite"``.
    """
    found = optax.tree_utils.tree_get_all_with_path(tree, name)
    return {jax.tree_util.keystr(p): int(np.asarray(v)) for p, v in found}
