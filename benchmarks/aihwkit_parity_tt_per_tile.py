"""Tiki-Taka parity with aihwkit's per-tile transfer (BENCHMARKS.md, "aihwkit side by side on
accuracy"): a diagnosis, not a library setting.

aihwkit cuts the 784-input layer into two tiles of 392 rows, each its own ``TransferCompound``
that moves one of its own columns into C every mini-batch. ``analog.tiki_taka`` moves one row of
the whole layer (``analog._tiki_taka.transfer_rows``). This runs ``aihwkit_parity_ours``'s
Tiki-Taka configurations with ``transfer_rows`` replaced, for this process only, by one row per
row tile of 392 rows, cycling within each tile::

    .venv/bin/python benchmarks/aihwkit_parity_tt_per_tile.py --data-dir /work/shared/data/mnist
    # -> aihwkit_parity_insitu_compare_tt_per_tile
"""

from __future__ import annotations

import argparse
import json

import _common
import aihwkit_parity_ours as ours
import jax.numpy as jnp

import analog._tiki_taka as tt

TILE_ROWS = 392  # aihwkit's split of the 784 inputs (max_input_size 512: two equal tiles)
_whole_layer = tt.transfer_rows


def per_tile_rows(count, batch: int, every: int, n_rows: int):
    """``transfer_rows`` for each row tile of :data:`TILE_ROWS` rows at once."""
    rows, live = _whole_layer(count, batch, every, min(n_rows, TILE_ROWS))
    n_tiles = -(-n_rows // TILE_ROWS)
    rows = jnp.concatenate([rows + r * TILE_ROWS for r in range(n_tiles)])
    live = jnp.concatenate([live] * n_tiles) & (rows < n_rows)
    return rows % n_rows, live


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _common.add_data_dir(ap)
    ap.add_argument("--seeds", type=_common.int_list, default=(0, 1, 2))
    ap.add_argument("--configs", default="tiki_taka_constant_step,tiki_taka_soft_bounds")
    ap.add_argument("--out", default="aihwkit_parity_insitu_compare_tt_per_tile")
    args = ap.parse_args()
    tt.transfer_rows = per_tile_rows
    theirs = json.loads((_common.RESULTS / "aihwkit_parity_insitu.json").read_text())
    _, xtr, ytr = ours._mnist("train", args.data_dir)
    _, xte, yte = ours._mnist("test", args.data_dir)
    out: dict = {"tile_rows": TILE_ROWS, "configs": {}}
    for name in args.configs.split(","):
        runs = []
        for seed in args.seeds:
            runs.append(
                ours.insitu_ours(
                    name, seed, ((xtr, ytr), (xte, yte)), lr=theirs["lr"],
                    batch=theirs["batch"], samples=theirs["train_samples"],
                    activation=theirs["activation"],
                )
            )  # fmt: skip
            print(name, seed, runs[-1], flush=True)
        out["configs"][name] = ours.side_by_side(runs, theirs["configs"][name])
        _common.save(args.out, out)


if __name__ == "__main__":
    main()
