"""beyondbp: data sets, reference models, a training loop and the ``beyondbp`` command.

The glue around the three library packages (``fwdgrad``, ``lowbit``, ``analog``):
``datasets.load``, ``models.MLP`` / ``models.CNN`` / ``models.functional``,
``train.train`` (any optax transform), ``methods`` (the registry that
``beyondbp compare`` runs) and ``compare``.
"""

from beyondbp import datasets, methods, models, train

__all__ = ["datasets", "methods", "models", "train"]
__version__ = "0.1.0"
