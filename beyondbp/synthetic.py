"""A 10-class image set from a source unlike MNIST: rendered geometric strokes and shapes.

For checking that data loading and every registered recipe hold on data they were never tuned
on: ``write_shapes(DIR)`` writes the four IDX files that ``datasets.load("idx", data_dir=DIR)``
and ``beyondbp compare --dataset idx --data-dir DIR`` read. From the shell::

    python -m beyondbp.synthetic DIR --train 1500 --test 1000 --size 28 --seed 0

Each class is a shape family (disk, ring, square, frame, bars,
diagonals, cross, plus) drawn at a random position, size, stroke width and brightness on a
noisy background, so the classes overlap in pixel space and are not linearly trivial.
"""

from __future__ import annotations

import argparse
import pathlib

import numpy as np

from beyondbp import datasets

__all__ = ["NUM_CLASSES", "shapes", "write_shapes", "main"]

#: The shape classes :func:`shapes` renders, one label each.
NUM_CLASSES = 10


def _render(cls: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    n = cls.shape[0]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cy = size / 2 + np.asarray(rng.uniform(-size / 7, size / 7, n))[:, None, None]
    cx = size / 2 + np.asarray(rng.uniform(-size / 7, size / 7, n))[:, None, None]
    r = np.asarray(rng.uniform(size / 5, size / 3, n))[:, None, None]
    t = np.asarray(rng.uniform(1.2, 2.5, n))[:, None, None]  # stroke half-width
    dy, dx = yy[None] - cy, xx[None] - cx
    d = np.sqrt(dy**2 + dx**2)
    box = np.maximum(np.abs(dy), np.abs(dx))
    inside = box <= r
    shapes = [
        d <= r,  # 0 disk
        np.abs(d - r) <= t,  # 1 ring
        inside,  # 2 filled square
        inside & (box >= r - 2 * t),  # 3 square frame
        (np.abs(dy) <= t) & (np.abs(dx) <= r),  # 4 horizontal bar
        (np.abs(dx) <= t) & (np.abs(dy) <= r),  # 5 vertical bar
        (np.abs(dy - dx) <= 1.4 * t) & inside,  # 6 diagonal
        (np.abs(dy + dx) <= 1.4 * t) & inside,  # 7 anti-diagonal
        ((np.abs(dy - dx) <= 1.4 * t) | (np.abs(dy + dx) <= 1.4 * t)) & inside,  # 8 X
        ((np.abs(dy) <= t) | (np.abs(dx) <= t)) & inside,  # 9 plus
    ]
    img = np.select([cls[:, None, None] == k for k in range(NUM_CLASSES)], shapes, False)
    bright = np.asarray(rng.uniform(140, 255, n))[:, None, None]
    noise = rng.normal(0, 25, img.shape)
    return np.clip(img * bright + noise + 20, 0, 255).astype(np.uint8)


def shapes(n: int, *, seed: int, size: int = 28) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images ``(n, size, size)`` uint8 and balanced labels ``(n,)`` uint8."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % NUM_CLASSES).astype(np.uint8)
    return _render(labels, rng, size), labels


def write_shapes(
    directory: pathlib.Path,
    *,
    train: int = 3000,
    test: int = 1000,
    size: int = 28,
    seed: int = 0,
    gz: bool = True,
) -> pathlib.Path:
    """Write a shapes data set as the four IDX files ``datasets.load("idx", ...)`` reads."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for split, n, s in (("train", train, seed), ("test", test, seed + 1)):
        images, labels = shapes(n, seed=s, size=size)
        img_name, lab_name = datasets.FILES[split]
        if not gz:
            img_name, lab_name = img_name.removesuffix(".gz"), lab_name.removesuffix(".gz")
        datasets.write_idx(directory / img_name, images)
        datasets.write_idx(directory / lab_name, labels)
    return directory


def main(argv=None) -> int:
    """``python -m beyondbp.synthetic DIR``: write the rendered-shapes IDX data set into DIR."""
    p = argparse.ArgumentParser(
        prog="python -m beyondbp.synthetic", description="write a rendered-shapes IDX data set"
    )
    p.add_argument("out", help="directory for the four IDX files (must not hold them already)")
    p.add_argument("--train", type=int, default=3000)
    p.add_argument("--test", type=int, default=1000)
    p.add_argument("--size", type=int, default=28)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    try:
        d = write_shapes(pathlib.Path(a.out), train=a.train, test=a.test, size=a.size, seed=a.seed)
    except datasets.DatasetError as e:
        p.exit(2, f"beyondbp.synthetic: error: {e}\n")
    print(f"wrote {a.train} training and {a.test} test images ({a.size}x{a.size}) to {d}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
