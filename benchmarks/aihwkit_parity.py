"""aihwkit side by side on accuracy (issue 17, item 5), aihwkit's half.

Runs ONLY in aihwkit's own virtual environment (aihwkit 1.1.0, torch 2.10.0; no JAX)::

    /work/aihwkit-venv/bin/python benchmarks/aihwkit_parity.py drift  [--seeds 0,1,2]
    /work/aihwkit-venv/bin/python benchmarks/aihwkit_parity.py insitu [--train-samples N]

``drift`` (inference): the network ``benchmarks/aihwkit_parity_ours.py train`` trained
digitally (784-256-128-10, ReLU, ``aihwkit_parity_mlp.npz``) is loaded into
``AnalogSequential(AnalogLinear, ReLU, ...)`` with an ``InferenceRPUConfig``; per chip (seed):
``torch.manual_seed(seed)``, ``program_analog_weights()`` once, then ``drift_analog_weights(t)``
at 1 s, 1 h, 1 day, 1 month and 1 year, test accuracy on the 10,000 MNIST test images each
time. Settings, each chosen to be what this package's ``analog.PCMNoiseModel`` +
``beyondbp.drift.accuracy_vs_time`` compute:

* ``noise_model = PCMLikeNoiseModel(g_max=25.0)``: aihwkit's constants (ours copies them);
  ``SinglePairConductanceConverter`` (g_min 0), as ours.
* ``drift_compensation = GlobalDriftCompensation()`` (one-hot readout, mean |y|) or ``None``.
* ``forward.is_perfect = True`` (run ``perfect_io``): the forward pass is an exact matmul of the
  drifted weights, as ours (which has no DAC/ADC in the drift model); the compensation's
  reference and current reads then are exact as well, as ours. Run ``default_io`` keeps
  aihwkit's default ``IOParameters`` (7-bit DAC, 9-bit ADC, output noise 0.06, noise and bound
  management) for context: it is what an aihwkit user gets without changing the forward.
* ``mapping.digital_bias = True`` (biases digital, as ours), ``max_input_size =
  max_output_size = 512``: aihwkit's ``TileModuleArray`` cuts the 784 inputs of layer 1 into
  two equal tiles of 392 rows (each its own conductance scale and compensation); ours is run
  with ``max_input_size=392`` to hold the same tiles.
* ``weight_scaling_omega`` left at 0 (no digital remap of the weights): the conductance
  converter maps each tile's ``max|W|`` to g_max either way.

``insitu`` (on-chip training, aihwkit's half of the in-situ parity): ``AnalogSequential`` of
``AnalogLinear(784, 256)``, Sigmoid, ``AnalogLinear(256, 128)``, Sigmoid, ``AnalogLinear(128,
10)``, LogSoftmax, NLL loss, ``AnalogSGD(lr=--lr)``, batch ``--batch`` (aihwkit's
``examples/03_mnist_training.py`` network and settings; ``--activation relu`` puts ReLU in
place of Sigmoid), trained for ``--train-samples``
MNIST images (the first of a per-seed permutation), then test accuracy on all 10,000 test
images. Biases digital (``mapping.digital_bias`` default). Configurations
(each with aihwkit's default ``IOParameters`` forward and backward, and default
``UpdateParameters``: ``desired_bl=31``, stochastic compressed trains, update management and
update BL management on):

* ``sgd_constant_step``, ``sgd_soft_bounds``, ``sgd_exp_step``: ``SingleRPUConfig`` with
  ``ConstantStepDevice()``, ``SoftBoundsDevice()``, ``ExpStepDevice()`` (its defaults are
  asymmetric: A_up 0.00081, A_down 0.36833, gamma_up 12.45, gamma_down 12.79) at defaults.
* ``tiki_taka_<device>``: ``UnitCellRPUConfig(device=TransferCompound(unit_cell_devices=[dev,
  dev], transfer_every=1.0, units_in_mbatch=True, transfer_forward=IOParameters(noise and
  bound management NONE)))``, the structure of aihwkit's ``TikiTakaReRamSBPreset``, with the
  default IO and update parameters above instead of the preset ones, so it differs from
  plain SGD only by the algorithm.
* ``ttv2_<device>``: the same with ``BufferedTransferCompound`` (TTv2, Gokmen 2021: the read of
  A goes into a digital buffer H, whole steps of C leave it) set as ``analog.tiki_taka`` runs it:
  ``thres_scale`` 1, ``step`` 1, ``momentum`` 0, ``forget_buffer`` off, up to 31 transfer pulses
  (``transfer_update`` BL 31, update management, a deterministic train: ours pulses C exactly
  ``n`` times). ``TransferCompound`` pulses each read into C
  directly (no buffer), so ``tiki_taka_<device>`` is a different algorithm from ours.

Each writes a JSON via ``benchmarks/_common.save``: ``aihwkit_parity_aihwkit_drift`` and
``aihwkit_parity_insitu``. ``aihwkit_parity_ours.py drift`` merges the drift one with ours.
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import pathlib
import statistics
import time

import _common  # stdlib only: no JAX in aihwkit's environment
import aihwkit
import aihwkit_parity_probe
import numpy as np
import torch
from aihwkit.inference import GlobalDriftCompensation, PCMLikeNoiseModel
from aihwkit.nn import AnalogLinear, AnalogSequential
from aihwkit.optim import AnalogSGD
from aihwkit.simulator.configs import (
    BufferedTransferCompound,
    ConstantStepDevice,
    ExpStepDevice,
    InferenceRPUConfig,
    IOParameters,
    SingleRPUConfig,
    SoftBoundsDevice,
    TransferCompound,
    UnitCellRPUConfig,
    UpdateParameters,
)
from aihwkit.simulator.parameters.enums import (
    BoundManagementType,
    NoiseManagementType,
    PulseType,
)
from torch import nn

WEIGHTS = _common.RESULTS / "aihwkit_parity_mlp.npz"
#: Times after programming (s); the same as ``beyondbp.drift.TIMES`` (a month 30 days).
TIMES = {"1 s": 1.0, "1 h": 3600.0, "1 day": 86400.0, "1 month": 2592000.0, "1 year": 31536000.0}
DEVICES = {
    "constant_step": ConstantStepDevice,
    "soft_bounds": SoftBoundsDevice,
    "exp_step": ExpStepDevice,
}


def load_mnist(folder: pathlib.Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The IDX files of ``split`` ("train" or "t10k"): pixels / 255 (float32), int64 labels."""
    with gzip.open(folder / f"{split}-images-idx3-ubyte.gz", "rb") as f:
        x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 784)
    with gzip.open(folder / f"{split}-labels-idx1-ubyte.gz", "rb") as f:
        y = np.frombuffer(f.read(), np.uint8, offset=8)
    return torch.from_numpy(x.astype(np.float32) / 255.0), torch.from_numpy(y.astype(np.int64))


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> float:
    correct = 0
    for i in range(0, x.shape[0], batch):
        correct += int((model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum())
    return correct / x.shape[0]


def inference_config(io: str, compensate: bool) -> InferenceRPUConfig:
    """The ``InferenceRPUConfig`` of the module docstring (``io``: perfect_io or default_io)."""
    cfg = InferenceRPUConfig()
    cfg.noise_model = PCMLikeNoiseModel(g_max=25.0)
    cfg.drift_compensation = GlobalDriftCompensation() if compensate else None
    cfg.mapping.digital_bias = True
    cfg.mapping.max_input_size = 512
    cfg.mapping.max_output_size = 512
    if io == "perfect_io":
        cfg.forward.is_perfect = True
    return cfg


def inference_model(weights: dict, cfg: InferenceRPUConfig) -> AnalogSequential:
    """The saved MLP (``w`` stored ``(in, out)``) on analog tiles, in eval mode."""
    layers: list[nn.Module] = []
    for i in (1, 2, 3):
        w, b = weights[f"w{i}"], weights[f"b{i}"]
        lin = AnalogLinear(w.shape[0], w.shape[1], bias=True, rpu_config=cfg)
        lin.set_weights(torch.from_numpy(np.ascontiguousarray(w.T)), torch.from_numpy(b))
        layers += [lin, nn.ReLU()] if i < 3 else [lin]
    return AnalogSequential(*layers).eval()


def weight_error(model: AnalogSequential, weights: dict) -> list[list[float]]:
    """Per layer: ``||W_t - W|| / ||W||`` (Frobenius) and ``sum|W_t| / sum|W|`` of the weights
    the tiles hold now (drifted, read-noisy, uncompensated) against the trained ones."""
    out = []
    for i, lin in enumerate(m for m in model.children() if isinstance(m, AnalogLinear)):
        w_t = lin.get_weights()[0].numpy().T
        w = weights[f"w{i + 1}"]
        out.append(
            [
                float(np.linalg.norm(w_t - w) / np.linalg.norm(w)),
                float(np.abs(w_t).sum() / np.abs(w).sum()),
            ]
        )
    return out


def drift_run(weights, x, y, io: str, compensate: bool, seeds: list[int]) -> dict:
    """Accuracy ``[seed][time]`` of chips programmed once each and read at every time, and
    :func:`weight_error` ``[seed][time][layer]``."""
    model = inference_model(weights, inference_config(io, compensate))
    acc, err = [], []
    for seed in seeds:
        torch.manual_seed(seed)
        model.program_analog_weights()
        row, e_row = [], []
        for t in TIMES.values():
            model.drift_analog_weights(t)
            row.append(accuracy(model, x, y))
            e_row.append(weight_error(model, weights))
        acc.append(row)
        err.append(e_row)
    a = np.asarray(acc)
    return {
        "accuracy": acc,
        "mean": a.mean(0).tolist(),
        "std": a.std(0).tolist(),
        "weight_error": err,
    }


def drift_cmd(args) -> None:
    z = np.load(WEIGHTS)
    weights = {k: z[k] for k in z.files}
    x, y = load_mnist(pathlib.Path(args.mnist), "t10k")
    out: dict = {
        "aihwkit": aihwkit.__version__,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "times": TIMES,
        "seeds": args.seeds,
        "digital": accuracy(inference_model(weights, inference_config("perfect_io", False)), x, y),
        "settings": __doc__.split("* ``noise_model")[1].split("``insitu``")[0].strip(),
        "runs": {},
    }
    for io in args.io.split(","):
        out["runs"][io] = {}
        for comp in (True, False):
            t0 = time.perf_counter()
            r = drift_run(weights, x, y, io, comp, args.seeds)
            r["eval_s"] = time.perf_counter() - t0
            out["runs"][io]["compensated" if comp else "uncompensated"] = r
            print(io, "comp" if comp else "nocomp", [round(m, 4) for m in r["mean"]], flush=True)
            _common.save(args.out or "aihwkit_parity_aihwkit_drift", out)


#: ``--spreads none``: every device at its nominal parameters (no device-to-device spread, no
#: cycle-to-cycle noise), to tell the device models' variation apart from the rest; defined
#: beside the single-tile probes, which use it too (that module imports numpy only).
NO_SPREADS = aihwkit_parity_probe.NO_SPREADS
#: ``--spreads nobounds``: the default spreads less the bound spreads, which ours do not model
#: (``aihwkit_parity_insitu_ours._SPREADS``): the same devices on both sides.
NO_BOUND_SPREADS = aihwkit_parity_probe.NO_BOUND_SPREADS
#: ``--spreads`` choice -> the keyword overrides of (Tiki-Taka's A, the weight's device: SGD's,
#: Tiki-Taka's C); ``slow_only`` / ``fast_only`` tell which array's spreads matter.
SPREAD_SETS = {
    "default": ({}, {}),
    "none": (NO_SPREADS, NO_SPREADS),
    "nobounds": (NO_BOUND_SPREADS, NO_BOUND_SPREADS),
    "slow_only": (NO_SPREADS, NO_BOUND_SPREADS),
    "fast_only": (NO_BOUND_SPREADS, NO_SPREADS),
}


def insitu_config(name: str, spreads: str = "default"):
    """``sgd_<device>``, ``tiki_taka_<device>`` or ``ttv2_<device>`` (module docstring);
    ``spreads``: a key of :data:`SPREAD_SETS` (``"none"``: every device at
    :data:`NO_SPREADS`)."""
    algo = next((a for a in ("sgd", "tiki_taka", "ttv2") if name.startswith(a + "_")), "")
    dev = name[len(algo) + 1 :] if algo else ""
    if dev not in DEVICES:
        raise ValueError(f"unknown configuration {name!r}")
    kw_fast, kw = SPREAD_SETS[spreads]
    if algo == "sgd":
        return SingleRPUConfig(device=DEVICES[dev](**kw))
    transfer_io = IOParameters(
        noise_management=NoiseManagementType.NONE, bound_management=BoundManagementType.NONE
    )
    common = dict(
        unit_cell_devices=[DEVICES[dev](**kw_fast), DEVICES[dev](**kw)],  # A, then C
        transfer_forward=transfer_io,
        transfer_every=1.0,
        units_in_mbatch=True,
    )
    if algo == "tiki_taka":
        return UnitCellRPUConfig(device=TransferCompound(**common))
    # TTv2 as analog.tiki_taka runs it: whole steps of C leave the buffer, the rest stays
    # (momentum 0, forget_buffer off), and C takes those n steps as n pulses: up to 31 a
    # transfer (aihwkit's default 1 clips), in a deterministic train (ours pulses exactly n;
    # a stochastic train adds a count variance of about n: 81.5% against 85.9% with this,
    # ConstantStep seed 0), with update management (without it p_d = 0.18 n caps a
    # stochastic transfer at 5.6 pulses while n leave the buffer: 75.2%)
    return UnitCellRPUConfig(
        device=BufferedTransferCompound(
            **common,
            thres_scale=1.0,
            step=1.0,
            momentum=0.0,
            forget_buffer=False,
            transfer_update=UpdateParameters(
                desired_bl=31,
                update_bl_management=False,
                update_management=True,
                pulse_type=PulseType.DETERMINISTIC_IMPLICIT,
            ),
        )
    )


#: The in-situ network (``--widths``): 784-256-128-10, the issue's.
WIDTHS = (784, 256, 128, 10)


def insitu_model(cfg, activation: str, widths=WIDTHS) -> AnalogSequential:
    act = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU}[activation]
    layers: list = []
    for n_in, n_out in itertools.pairwise(widths):
        layers += [AnalogLinear(n_in, n_out, bias=True, rpu_config=cfg), act()]
    return AnalogSequential(*layers[:-1], nn.LogSoftmax(dim=1))


def insitu_run(name, seed, data, args) -> dict:
    """Train one configuration from one seed; returns test accuracy and timings."""
    (xtr, ytr), (xte, yte) = data
    torch.manual_seed(seed)
    model = insitu_model(insitu_config(name, args.spreads), args.activation, args.widths)
    opt = AnalogSGD(model.parameters(), lr=args.lr)
    opt.regroup_param_groups(model)
    loss_fn = nn.NLLLoss()
    order = torch.from_numpy(np.random.default_rng(seed).permutation(xtr.shape[0]))
    order = order[: args.train_samples]
    layers = [m for m in model.modules() if isinstance(m, AnalogLinear)]
    c0 = [_layer_arrays(m)[0] for m in layers]
    trace, losses = [], []
    model.train()
    t0 = time.perf_counter()
    for _ in range(args.epochs):
        for i in range(0, order.shape[0] - args.batch + 1, args.batch):
            idx = order[i : i + args.batch]
            opt.zero_grad()
            loss = loss_fn(model(xtr[idx]), ytr[idx])
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            if args.trace and len(losses) % args.trace == 0:
                arrays = [_layer_arrays(m) for m in layers]
                trace.append(aihwkit_parity_probe.trace_row(len(losses), losses[-args.trace :],
                    [(c, c_0, a, h, 0.6) for (c, a, h), c_0 in zip(arrays, c0)]))  # fmt: skip
    train_s = time.perf_counter() - t0
    model.eval()
    t0 = time.perf_counter()
    acc = accuracy(model, xte, yte)
    out = {"accuracy": acc, "train_s": train_s, "eval_s": time.perf_counter() - t0}
    return out | ({"trace": trace} if args.trace else {})


def _layer_arrays(layer) -> tuple:
    """``(C, A, H)`` of one AnalogLinear (every tile's, flattened; A and H None without a
    transfer compound): its weight, and the fast array and TTv2 buffer of its tiles."""
    hidden = [t.get_hidden_parameters() for t in layer.analog_tiles()]

    def cat(key):
        if key not in hidden[0]:
            return None
        return np.concatenate([h[key].numpy().ravel() for h in hidden])

    return (
        layer.get_weights()[0].numpy().ravel(),
        cat("hidden_weights_0"),
        cat("buffered_FP_weight_0"),
    )


def insitu_cmd(args) -> None:
    folder = pathlib.Path(args.mnist)
    data = (load_mnist(folder, "train"), load_mnist(folder, "t10k"))
    out: dict = {
        "aihwkit": aihwkit.__version__,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "network": "-".join(map(str, args.widths))
        + f", {args.activation}, log-softmax, NLL, digital biases",
        "widths": list(args.widths),
        "activation": args.activation,
        "lr": args.lr,
        "batch": args.batch,
        "train_samples": args.train_samples,
        "epochs": args.epochs,
        "seeds": args.seeds,
        "spreads": args.spreads,
        "trace_every": args.trace,
        "configs": {},
    }
    for name in args.configs.split(","):
        runs = []
        for seed in args.seeds:
            runs.append(insitu_run(name, seed, data, args))
            print(name, seed, {k: v for k, v in runs[-1].items() if k != "trace"}, flush=True)
            accs = [r["accuracy"] for r in runs]
            out["configs"][name] = {
                "runs": runs,
                "mean": statistics.mean(accs),
                "std": statistics.pstdev(accs),
            }
            _common.save(args.out or "aihwkit_parity_insitu", out)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("step", choices=("drift", "insitu"))
    ap.add_argument("--mnist", default=_common.data_dir_default() or "/work/shared/data/mnist")
    ap.add_argument("--seeds", type=_common.int_list, default=(0, 1, 2))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--io", default="perfect_io,default_io", help="drift: forward IO runs")
    ap.add_argument(
        "--configs",
        default=",".join(f"{a}_{d}" for a in ("sgd", "tiki_taka", "ttv2") for d in DEVICES),
        help="insitu: configurations",
    )
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument(
        "--activation",
        default="sigmoid",
        choices=("sigmoid", "relu"),
        help="insitu: hidden activation (aihwkit's example: sigmoid; relu leaves the initial "
        "plateau within a few hundred batches)",
    )
    ap.add_argument(
        "--spreads",
        default="default",
        choices=tuple(SPREAD_SETS),
        help="insitu: devices at aihwkit's default spreads, none (NO_SPREADS), the default "
        "less the bound spreads (NO_BOUND_SPREADS: the spreads ours model), or those on one "
        "array only (slow_only: the weight's C; fast_only: Tiki-Taka's A)",
    )
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument(
        "--widths",
        type=_common.int_list,
        default=WIDTHS,
        help="insitu: layer widths, input first (default 784,256,128,10)",
    )
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument(
        "--trace",
        type=int,
        default=0,
        help="insitu: every N steps record the training loss and per-layer statistics of C, A "
        "and H (aihwkit_parity_probe.trace_row); ours repeats it (0: off)",
    )
    ap.add_argument("--train-samples", type=int, default=60000)
    ap.add_argument(
        "--out",
        default=None,
        help="result name (default aihwkit_parity_aihwkit_drift / aihwkit_parity_insitu)",
    )
    args = ap.parse_args()
    args.seeds = list(args.seeds)
    torch.set_num_threads(args.threads)
    drift_cmd(args) if args.step == "drift" else insitu_cmd(args)


if __name__ == "__main__":
    main()
