"""The ``beyondbp`` command line.

Usage::

    beyondbp compare [--methods all] [--dataset mnist_small] [--steps N | --epochs E] ...
    beyondbp train --method NAME [--checkpoint-dir D --checkpoint-every K] ...
    beyondbp methods            list the registered methods
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile


class _Parser(argparse.ArgumentParser):
    """argparse, with every usage error ending in the same ``beyondbp: error: ...`` line as
    the errors found after parsing (argparse would name the subcommand: ``beyondbp compare:``)."""

    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(2, f"beyondbp: error: {message}\n")


def _int_at_least(s: str, low: int, what: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not an integer") from None
    if v < low:
        raise argparse.ArgumentTypeError(f"{v}: {what}")
    return v


def _positive_int(s: str) -> int:
    return _int_at_least(s, 1, "must be a positive integer")


def _widths(s: str) -> tuple[int, ...]:
    try:
        w = tuple(int(p) for p in s.split(",") if p.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{s!r}: give comma-separated integers, e.g. 1024,1024"
        ) from None
    if not w or min(w) < 1:
        raise argparse.ArgumentTypeError(f"{s!r}: give comma-separated positive integers")
    return w


def _seed(s: str) -> int:
    return _int_at_least(s, 0, "a seed is a non-negative integer")


def _seeds(s: str) -> list[int]:
    seeds = [_seed(p.strip()) for p in s.split(",") if p.strip()]
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"{s!r}: give distinct comma-separated seeds, e.g. 0,1,2")
    return seeds


def _check_writable_dir(path, option: str) -> None:
    """Refuse, before any training, an output directory the run could not write into.

    Probes by doing what the run will do: create the directory (and missing parents) and a
    file in it. Asking ``os.access`` is not enough: as root it says yes to directories whose
    writes fail anyway (``/proc``, read-only or full file systems). Directories the probe
    created are removed again, so a run refused later leaves nothing behind.
    """
    p = pathlib.Path(path)
    missing: list[pathlib.Path] = []
    try:
        if p.exists() and not p.is_dir():
            raise ValueError(f"{option} {path}: is a file, not a directory")
        q = p.absolute()
        while not q.exists() and q != q.parent:
            missing.append(q)
            q = q.parent
        p.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".beyondbp_probe_", dir=p)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        what = "cannot create the directory" if missing else "cannot write into the directory"
        raise ValueError(f"{option} {path}: {what} ({e.strerror or e})") from None
    finally:
        for d in missing:  # deepest first; only the ones this probe made, and only if empty
            if d.is_dir():
                try:
                    d.rmdir()
                except OSError:
                    break


def _os_error(e: OSError) -> str:
    """One line for a failed write (disk full, permissions changed mid-run)."""
    if e.filename is not None:
        return f"could not write {e.filename}: {e.strerror or e}"
    return f"could not write the outputs: {e.strerror or e}"


def _add_run_options(c: argparse.ArgumentParser) -> None:
    """Options shared by ``compare`` and ``train``: data, budget, model, seed."""
    from beyondbp import datasets

    c.add_argument(
        "--dataset",
        default="mnist_small",
        choices=datasets.NAMES,
        help="data set (default: mnist_small, bundled, offline)",
    )
    c.add_argument(
        "--data-dir",
        default=None,
        help="directory with the four IDX files, .gz or "
        "not (else $BEYONDBP_DATA, then the user cache, then download; --dataset idx "
        "reads any data set in MNIST's file layout from here)",
    )
    c.add_argument(
        "--no-verify",
        action="store_true",
        help="accept your own copy of a named "
        "data set whose content differs from the official files (still parsed strictly)",
    )
    budget = c.add_mutually_exclusive_group()
    budget.add_argument(
        "--steps",
        type=_positive_int,
        default=None,
        help="optimisation steps per method (default 600)",
    )
    budget.add_argument(
        "--epochs", type=_positive_int, default=None, help="epochs per method instead of --steps"
    )
    c.add_argument("--batch-size", type=_positive_int, default=64, help="batch size (default 64)")
    c.add_argument(
        "--model",
        choices=("mlp", "cnn", "resnet", "vit", "mixer", "conv"),  # models.NAMES, without jax
        default="mlp",
        help="reference model: mlp, cnn (LeNet-5), resnet (ResNet-20), vit (patch 4, 4 "
        "blocks, width 128), mixer or conv (the networks of the fwdgrad-mixer / fwdgrad-conv "
        "rows, one classifier at the end) (default mlp)",
    )
    c.add_argument(
        "--widths",
        type=_widths,
        default=(256, 256),
        help="MLP hidden widths, comma-separated (default 256,256)",
    )
    c.add_argument("--seed", type=_seed, default=0, help="seed for init, data order and transforms")
    c.add_argument(
        "--eval-every",
        type=_positive_int,
        default=None,
        help="evaluate test accuracy every N steps (default: 10 points per run)",
    )
    c.add_argument("--no-progress", action="store_true", help="hide the progress bars")


def build_parser() -> argparse.ArgumentParser:
    """The ``beyondbp`` argument parser: the ``methods``, ``compare`` and ``train`` commands."""
    p = _Parser(
        prog="beyondbp",
        description=(
            "beyond-backprop: forward gradients, 4-bit training and analog crossbars, compared "
            "side by side."
        ),
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="{compare,train,methods}")
    c = sub.add_parser(
        "compare",
        help="train several methods on the same data and seed; print a table, write plots and JSON",
        description="Train the same model with several methods on the same data "
        "and seed; print method, test accuracy, step time and memory relative "
        "to backprop (and energy where a hardware model exists); write "
        "learning_curves.png, accuracy_vs_cost.png and compare.json to --out.",
    )
    c.add_argument(
        "--methods",
        default="all",
        help="comma-separated method names, or 'all' (default); see `beyondbp methods`",
    )
    _add_run_options(c)
    c.add_argument(
        "--seeds",
        type=_seeds,
        default=None,
        help="run every method once per seed, "
        "e.g. 0,1,2: the table shows mean ± std, the JSON every per-seed value "
        "(overrides --seed)",
    )
    c.add_argument("--out", default="runs/compare", help="output directory (default runs/compare)")
    c.add_argument(
        "--resume",
        action="store_true",
        help="keep the runs an interrupted comparison left in --out (runs_so_far.json) and "
        "train only the others; the data, budget, batch size and model must be the same",
    )
    t = sub.add_parser(
        "train",
        help="train one method, with checkpoints and resume",
        description="Train one registered method. With --checkpoint-dir the run "
        "saves params and optimiser state every --checkpoint-every steps and on "
        "SIGINT/SIGTERM, and resumes from the newest checkpoint there when started "
        "again with the same options.",
    )
    t.add_argument("--method", default="backprop", help="a registered method (default backprop)")
    _add_run_options(t)
    t.add_argument("--checkpoint-dir", default=None, help="where to save and resume checkpoints")
    t.add_argument(
        "--checkpoint-every",
        type=_positive_int,
        default=None,
        help="save a checkpoint every N steps (needs --checkpoint-dir)",
    )
    t.add_argument(
        "--out",
        default="runs/train",
        help="output directory: history.json and final params (default runs/train)",
    )
    sub.add_parser("methods", help="list the registered methods")
    return p


def _train(args) -> int:
    # One SIGINT/SIGTERM policy, train.train's: a stop request honoured between steps, with a
    # checkpoint; before the first step there is nothing to save and the default action stands.
    from beyondbp import checkpoint, compare, datasets, methods, train

    method = methods.get(args.method)
    _check_writable_dir(args.out, "--out")
    if args.checkpoint_dir is not None:
        _check_writable_dir(args.checkpoint_dir, "--checkpoint-dir")
    tr = datasets.load(args.dataset, "train", data_dir=args.data_dir, verify=not args.no_verify)
    te = datasets.load(args.dataset, "test", data_dir=args.data_dir, verify=not args.no_verify)
    steps = args.steps if args.steps is not None or args.epochs is not None else 600
    total = (
        steps
        if args.epochs is None
        else args.epochs * datasets.num_batches(len(tr), args.batch_size)
    )
    cfg = compare._method_config(
        tr, args.seed, steps=total, model=args.model, widths=args.widths, batch_size=args.batch_size
    )
    h = train.train(
        method.build(cfg),
        tr,
        te,
        steps=total,
        batch_size=args.batch_size,
        seed=args.seed,
        eval_every=args.eval_every,
        progress=not args.no_progress,
        desc=args.method,
        checkpoint_dir=args.checkpoint_dir,
        checkpoint_every=args.checkpoint_every,
    )
    checkpoint.save(args.out, total, h["params"], keep=1)
    train.write_json(h, f"{args.out}/history.json")
    print(
        f"{args.method}: test accuracy {h['final_test_accuracy']:.4f} after {total} steps; "
        f"wrote {args.out}/history.json and the final params"
    )
    return 0


def main(argv=None) -> int:
    """Run the ``beyondbp`` command on ``argv``; 0 on success, 2 with one error line otherwise."""
    args = build_parser().parse_args(argv)
    from beyondbp import compare as _compare
    from beyondbp import methods

    if args.command == "train":
        try:
            return _train(args)
        except ValueError as e:
            print(f"beyondbp: error: {e}", file=sys.stderr)
            return 2
        except OSError as e:  # a write failed mid-run: disk full, directory removed
            print(f"beyondbp: error: {_os_error(e)}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("beyondbp: interrupted", file=sys.stderr)
            return 130
    if args.command == "methods":
        for name in methods.names():
            m = methods.get(name)
            print(f"{name:24s} {m.family:10s} {m.description}")
        return 0
    try:
        names = _compare.resolve_methods(args.methods)
        _check_writable_dir(args.out, "--out")
        steps = args.steps if args.steps is not None or args.epochs is not None else 600
        result = _compare.compare(
            names,
            dataset=args.dataset,
            data_dir=args.data_dir,
            steps=steps,
            epochs=args.epochs,
            batch_size=args.batch_size,
            seed=args.seed,
            seeds=args.seeds,
            model=args.model,
            widths=args.widths,
            eval_every=args.eval_every,
            progress=not args.no_progress,
            out=args.out,
            verify=not args.no_verify,
            resume=args.resume,
        )
    except ValueError as e:  # bad option values and data set errors: one line, no traceback
        print(f"beyondbp: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a write failed after training: disk full, directory removed
        print(f"beyondbp: error: {_os_error(e)}", file=sys.stderr)
        return 2
    print()
    print(_compare.format_table(result))
    print(
        f"\nwrote {args.out}/compare.json, learning_curves.png, accuracy_vs_cost.png "
        f"({result['total_time_s']:.0f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
