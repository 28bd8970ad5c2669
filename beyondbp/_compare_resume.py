"""The record an interrupted ``beyondbp compare`` leaves behind, and resuming from it.

``compare(out=...)`` rewrites ``out/runs_so_far.json`` after every finished run (method, seed,
history, and the settings they were trained with). ``compare(resume=True)`` (``--resume``) keeps
those runs and trains only the others; without it an existing file is refused, never
overwritten, so hours of finished runs cannot be lost to a repeated command.
"""

from __future__ import annotations

import json
import pathlib

from beyondbp import train as _train

#: What ``compare(out=...)`` keeps while it runs.
PARTIAL = "runs_so_far.json"

#: The settings a kept run must share with a resumed comparison (its methods and seeds may differ).
RESUME_KEYS = (
    "dataset",
    "steps",
    "batch_size",
    "model",
    "widths",
    "eval_every",
    "train_examples",
    "test_examples",
    "num_classes",
    "input_shape",
)


def keys(runs) -> set:
    """The ``(method, seed)`` pairs of some runs."""
    return {(r["method"], r["seed"]) for r in runs}


class Partial:
    """One comparison's ``runs_so_far.json`` (nothing at all when ``out`` is None).

    Construction refuses an existing file unless ``resume`` (before any data is read);
    :meth:`load` checks the settings and returns the kept runs; :meth:`save` rewrites the file
    after a run; :meth:`finish` records in the result which runs were kept and removes the file.
    """

    def __init__(self, out, resume: bool):
        self.path = None if out is None else pathlib.Path(out) / PARTIAL
        self.done: dict = {}
        self.settings: dict = {}
        if self.path is not None and not resume and self.path.exists():
            raise ValueError(
                f"{self.path} holds the finished runs of an interrupted comparison: pass "
                "--resume (compare(resume=True)) to keep them and run only the rest, or remove "
                "the file to start over"
            )

    def load(self, settings: dict) -> dict:
        """``{(method, seed): run}`` kept from an earlier, interrupted comparison with the same
        settings; ``{}`` when there is none. Raises ValueError when they differ."""
        self.settings = settings
        if self.path is None or not self.path.exists():
            return self.done
        try:
            saved = json.loads(self.path.read_text())
            runs, old = saved["runs"], saved["settings"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(
                f"{self.path}: cannot resume from it ({type(e).__name__}: {e}; files written "
                "before resume existed hold no settings to check); remove it to start over"
            ) from None
        differ = [k for k in RESUME_KEYS if old.get(k) != settings[k]]
        if differ:
            what = ", ".join(f"{k} {old.get(k)!r} there, {settings[k]!r} now" for k in differ)
            raise ValueError(
                f"{self.path}: its runs were trained with other settings ({what}); resume with "
                "the same options, or use another --out"
            )
        self.done = {(r["method"], r["seed"]): r for r in runs}
        return self.done

    def _others(self, runs) -> list:
        have = keys(runs)
        return [v for k, v in self.done.items() if k not in have]

    def save(self, runs: list) -> None:
        """Rewrite the file (atomically): the runs so far, and kept runs not asked for this time."""
        if self.path is not None:
            record = {"runs": runs + self._others(runs), "settings": self.settings}
            _train.write_json(record, self.path)

    def finish(self, result: dict) -> None:
        """Say in ``result`` which runs were kept (their step times come from the earlier
        process) and keep those not tabulated (``other_kept_runs``)."""
        runs = result["runs"]
        if self.done:
            result["config"]["kept_runs"] = [list(k) for k in sorted(keys(runs) & set(self.done))]
        if other := self._others(runs):
            result["other_kept_runs"] = other

    def remove(self) -> None:
        """Once ``compare.json`` holds every run."""
        if self.path is not None:
            self.path.unlink(missing_ok=True)
