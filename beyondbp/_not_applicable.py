"""``NotApplicable``, in a leaf module: the model builders raise it and the method registry
re-exports it (``beyondbp.methods.NotApplicable``) without importing one another."""

from __future__ import annotations

__all__ = ["NotApplicable"]


class NotApplicable(ValueError):
    """A method has no variant for this configuration (e.g. a CNN for an MLP-only rule).

    ``compare`` reports such a row as skipped and runs the rest; any other error propagates.
    """
