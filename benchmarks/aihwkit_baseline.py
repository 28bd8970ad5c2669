"""Side-by-side baseline for the simulation-throughput figure: IBM aihwkit training 784-500-10.

Runs ONLY in a separate virtual environment with aihwkit (not part of CI or the test suite):

    python3.11 -m venv /tmp/aihwkit-venv
    /tmp/aihwkit-venv/bin/pip install aihwkit==1.1.0 torch==2.10.0 torchvision==0.25.0
    /tmp/aihwkit-venv/bin/python benchmarks/aihwkit_baseline.py --repeats 5 --json out.json

Workload (the one benchmarks/analog_throughput.py runs with this package): AnalogSequential of
AnalogLinear(784, 500, bias=False) -> sigmoid -> AnalogLinear(500, 10, bias=False) ->
log-softmax, negative log-likelihood, AnalogSGD lr 0.01, batch 20, SingleRPUConfig with
aihwkit's ConstantStepDevice() at its defaults (dw_min 0.001, dw_min_dtod 0.3, dw_min_std 0.3,
up_down_dtod 0.01, w_max/w_min_dtod 0.3) and UpdateParameters(desired_bl=31) (its default,
stochastic compressed pulse trains with update management). Data: the first MNIST training
images (pixels / 255) from --mnist, or uniform random data of the same shape if the files are
missing. torch runs with 2 threads (set_num_threads(2), the machine's core count).

Configurations timed:
  * ``constant_step``: the defaults above (aihwkit's default IOParameters: 7-bit DAC, 9-bit ADC,
    output noise 0.06, noise and bound management; update_bl_management on, which may shorten
    the trains below 31 when the update is small).
  * ``constant_step_fixed_bl31``: the same with update_bl_management off (every train 31 slots,
    as this package's pulse_update without ``bl_management``).
  * ``constant_step_perfect_io``: forward and backward passes exact (is_perfect), updates as
    ``constant_step``: isolates the update; the configuration closest to this package's
    ``constant_step_bl_managed`` row (ideal IO, trains shortened per sample up to 31).
  * ``constant_step_perfect_io_fixed_bl31``: both of the above: exact forward/backward and every
    train 31 slots, the configuration closest to this package's ``constant_step`` row (ideal IO,
    BL 31).
  * ``reram_es_preset``: aihwkit's ReRamESPreset (an exp-step ReRAM device, for context).

Prints one JSON object (samples/s per configuration: median over repeats of ``--batches``
timed batches after ``--warmup`` untimed ones).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import pathlib
import platform
import statistics
import time

import _common  # stdlib only: no JAX in aihwkit's environment
import aihwkit
import numpy as np
import torch
from aihwkit.nn import AnalogLinear, AnalogSequential
from aihwkit.optim import AnalogSGD
from aihwkit.simulator.configs import ConstantStepDevice, SingleRPUConfig
from aihwkit.simulator.presets import ReRamESPreset
from torch import nn


def _user_cache_mnist() -> str:
    """beyondbp.datasets' user cache for MNIST (``$XDG_CACHE_HOME/beyondbp/mnist``), where
    this package's side of the benchmark finds the files when $BEYONDBP_DATA is unset."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "beyondbp", "mnist")


def load_mnist(folder: pathlib.Path, n: int) -> np.ndarray:
    path = folder / "train-images-idx3-ubyte.gz"
    if not path.is_file():
        return None
    with gzip.open(path, "rb") as f:
        raw = np.frombuffer(f.read(), np.uint8, offset=16)
    return raw.reshape(-1, 784)[:n].astype(np.float32) / 255.0


def rpu_config(name: str):
    if name == "reram_es_preset":
        return ReRamESPreset()
    cfg = SingleRPUConfig(device=ConstantStepDevice())
    cfg.update.desired_bl = 31
    if name in ("constant_step_fixed_bl31", "constant_step_perfect_io_fixed_bl31"):
        cfg.update.update_bl_management = False
    if name in ("constant_step_perfect_io", "constant_step_perfect_io_fixed_bl31"):
        cfg.forward.is_perfect = True
        cfg.backward.is_perfect = True
    return cfg


def time_config(name, x_all, y_all, batch, warmup, batches, repeats):
    torch.manual_seed(0)
    cfg = rpu_config(name)
    model = AnalogSequential(
        AnalogLinear(784, 500, bias=False, rpu_config=cfg),
        nn.Sigmoid(),
        AnalogLinear(500, 10, bias=False, rpu_config=cfg),
        nn.LogSoftmax(dim=1),
    )
    opt = AnalogSGD(model.parameters(), lr=0.01)
    opt.regroup_param_groups(model)
    loss_fn = nn.NLLLoss()
    n = x_all.shape[0] // batch
    it = [0]

    def one_batch():
        i = it[0] % n
        it[0] += 1
        xb, yb = x_all[i * batch : (i + 1) * batch], y_all[i * batch : (i + 1) * batch]
        opt.zero_grad()
        loss = loss_fn(model(xb), yb)
        loss.backward()
        opt.step()
        return loss

    for _ in range(warmup):
        one_batch()
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(batches):
            loss = one_batch()
        loss.item()
        rates.append(batch * batches / (time.perf_counter() - t0))
    return {"samples_per_s": statistics.median(rates), "repeats": rates, "final_loss": loss.item()}


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batches", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--batch", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--mnist",
        default=_common.data_dir_default(),
        help="directory of the MNIST IDX files (default: $BEYONDBP_DATA[/mnist], then the "
        "user cache, as beyondbp.datasets); "
        "uniform random data when absent",
    )
    ap.add_argument(
        "--configs",
        default="constant_step,constant_step_fixed_bl31,"
        "constant_step_perfect_io,"
        "constant_step_perfect_io_fixed_bl31,reram_es_preset",
    )
    ap.add_argument("--json", default=None, help="also write the result here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    n = args.batch * max(args.batches, 50)
    x = load_mnist(pathlib.Path(args.mnist or _user_cache_mnist()), n)
    data = "mnist"
    if x is None:
        x, data = np.random.default_rng(0).random((n, 784), np.float32), "uniform random"
    y = np.arange(n) % 10
    if data == "mnist":
        with gzip.open(pathlib.Path(args.mnist) / "train-labels-idx1-ubyte.gz", "rb") as f:
            y = np.frombuffer(f.read(), np.uint8, offset=8)[:n].astype(np.int64)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
    out = {
        "aihwkit": aihwkit.__version__,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "batch": args.batch,
        "data": data,
        "machine": f"{platform.machine()} {platform.processor()}",
        "timed_batches_per_repeat": args.batches,
        "statistic": "median over repeats",
        "configs": {},
    }
    for name in args.configs.split(","):
        out["configs"][name] = time_config(
            name, xt, yt, args.batch, args.warmup, args.batches, args.repeats
        )
        print(name, out["configs"][name], flush=True)
    print(json.dumps(out))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
