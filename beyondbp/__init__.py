"""beyondbp: data sets, reference models, a training loop and the ``beyondbp`` command.

The glue around the three library packages (``fwdgrad``, ``lowbit``, ``analog``):
``datasets.load``, ``models.MLP`` / ``models.CNN`` / ``models.functional``,
``train.train`` (any optax transform), ``methods`` (the registry that
``beyondbp compare`` runs), ``compare`` and ``drift.accuracy_vs_time`` (accuracy of a
network programmed on a PCM chip against time since programming).
"""

from beyondbp import datasets, drift, methods, models, train

__all__ = ["datasets", "drift", "methods", "models", "train"]
__version__ = "0.1.0"
