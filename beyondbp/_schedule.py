"""What a training run does when: its budget, evaluation, logging and checkpoint intervals.

:func:`make_schedule` checks the budget (``steps`` or ``epochs``, exactly one) and the intervals
at the start of :func:`beyondbp.train.train`, with errors that say what to pass, and fills in
the defaults; the step loop reads the :class:`Schedule` it returns.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from beyondbp import datasets as _datasets

__all__ = ["Schedule", "make_schedule"]


@dataclasses.dataclass(frozen=True)
class Schedule:
    """What the step loop does when: the budget, evaluation, logging and checkpoints.

    The intervals are checked at construction; :func:`make_schedule` resolves the budget and
    the defaults first.
    """

    steps: int
    batch_size: int
    seed: int
    eval_every: int
    log_every: int
    time_steps: bool
    checkpoint_dir: Any
    checkpoint_every: int | None
    json_path: Any

    def __post_init__(self):
        if self.eval_every < 1 or self.log_every < 1:
            raise ValueError(
                f"eval_every={self.eval_every!r} and log_every={self.log_every!r} must be >= 1"
            )
        every = self.checkpoint_every
        if every is not None and (not isinstance(every, int) or every < 1):
            raise ValueError(f"checkpoint_every={every!r}: need a positive integer")
        if every is not None and self.checkpoint_dir is None:
            raise ValueError("checkpoint_every= needs checkpoint_dir=")


def make_schedule(
    train_ds, *, steps, epochs, batch_size, eval_every, log_every, **rest
) -> Schedule:
    """Check the budget (exactly one of ``steps`` and ``epochs``), fill in the default intervals,
    and make the :class:`Schedule`; ``rest``: its other fields (see :func:`beyondbp.train.train`)."""
    if (steps is None) == (epochs is None):
        raise ValueError(
            f"give exactly one of steps= or epochs= (got steps={steps!r}, epochs={epochs!r})"
        )
    per_epoch = _datasets.num_batches(len(train_ds), batch_size)
    if per_epoch < 1:
        raise ValueError(
            f"batch_size={batch_size} is larger than the {len(train_ds)} training "
            "examples; use a smaller batch"
        )
    if epochs is not None:
        if not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs={epochs!r}: need a positive integer")
        steps = epochs * per_epoch
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps={steps!r}: need a positive integer")
    if eval_every is None:
        eval_every = max(1, steps // 10)
    if log_every is None:
        log_every = max(1, min(50, steps // 50))
    return Schedule(
        steps=steps, batch_size=batch_size, eval_every=eval_every, log_every=log_every, **rest
    )
