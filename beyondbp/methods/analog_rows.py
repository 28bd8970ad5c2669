"""Registry rows for ``analog``: crossbar training with the local rule, and SGD on devices.

``analog-eqprop``: a 784-500-10 layered energy network (Scellier & Bengio 2017, their MNIST
size) with unbounded (linear) output units, trained by the centered activity-difference rule
(Laborieux et al. 2021) with normalised per-layer steps (NLMS: each layer's update divided by
its input power, so one step size holds on any data), weights programmed onto ideal devices.
Both rules come from the measured cause of the dead output units (see ``NLMS_RATES``).
``analog-eqprop-taox``: the same with every relaxation product read through TaOx-like crossbar
periphery (8-bit DAC/ADC, read noise) and the updates programmed onto ``TAOX_RERAM`` devices
(nonlinear, asymmetric, noisy steps, device variation, stuck cells): Yi et al.'s setting. It
nudges harder (beta 0.5) and lets the per-layer rates fall on a cosine to 10% over the run:
measured on full MNIST, one epoch at batch 64, that gives 93.1% against 84.6% with the ideal
row's beta 0.2 and constant rates (BENCHMARKS.md, analog section, "The registered
`analog-eqprop-taox` row"). Its updates reach the devices through a digital mixed-precision
accumulator (Nandakumar et al. 2020; aihwkit's ``MixedPrecisionCompound``): only whole device
steps are pulsed, so the sub-step part of each update is averaged digitally instead of
becoming a random pulse that the asymmetric devices turn into drift (``TAOX_MIXED_PRECISION``).
``analog-program`` (also registered under its old name ``analog-sgd``): the reference MLP
trained by backprop gradients that are then programmed onto ``TAOX_RERAM`` devices (the chip
holds the weights; the forward, backward and gradient are digital).
``analog-insitu``: the same MLP with every layer an ``analog.nnx.Linear`` on ``TAOX_RERAM``
tiles, trained in situ as on a chip (Gokmen & Vlasov 2016; aihwkit's ``AnalogSGD``): forward
and backward reads through ``TAOX_IO`` periphery with noise and bound management, and
``analog.pulsed_sgd`` pulsing each layer's tiles with the coincidences of each sample's input
and error (BL 31, update management), its rate on a cosine over the run. Only the biases are
digital.
``analog-tikitaka``: the same with Tiki-Taka v2 (Gokmen 2021; ``analog.tiki_taka``): the pulsed
updates go to a fast array ``A``, whose rows are read into a digital buffer ``H`` and moved
into the weight's array ``C`` in whole device steps.
``analog-tikitaka-annealed``: ``analog-tikitaka`` with its transfer rate on a cosine to 0 over
the run (A's rate stays constant). A decay of A's rate does not anneal TTv2: A keeps what it
holds and the transfers keep adding it into C; decaying the transfers is what freezes C.
Measured on MNIST, 784-256-128-10, six epochs, 3 seeds: 96.34 +- 0.05% as this row (stop 37),
96.47 +- 0.17% in stop 34's benchmark of the same rule, against 94.75 +- 0.78% with constant
rates (BENCHMARKS.md, analog section, "Stop 34" and "Stop 37"). At one epoch the decay does not
pay (92.73% against 93.30%), which is why the constant-rate row stays.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax

import analog
import bbcore
from beyondbp import models
from beyondbp.methods._rates import cosine_to_zero
from beyondbp.methods._registry import (
    Method,
    MethodConfig,
    NotApplicable,
    Setup,
    register,
    register_alias,
)

HIDDEN = 500
BETA = 0.2
# The TaOx row's nudge. An output unit is clipped at 0; once its input is below -beta for its
# class it gets no activity difference and no pulse again, and on TaOx devices with beta 0.2
# such dead units held the network at 83-85%. The nudged output (pre + beta y) / (1 + beta)
# lifts inputs down to -0.5 back into range (BENCHMARKS.md, analog section). Centered nudging
# keeps the estimate's bias second order in beta (Laborieux et al. 2021).
TAOX_BETA = 0.5
# Sweeps of exact block-coordinate relaxation. With an ideal periphery the clamped input's
# product is computed once per phase, so a sweep costs only the 500x10 products: generous
# counts are cheap and keep the residual under the 0.05 tolerance. With TaOx periphery every
# sweep re-reads the 784x500 crossbar through noisy converters, so fewer sweeps are used and
# the residual (which read noise keeps from reaching 0) is recorded instead of enforced.
# The -beta phase occasionally (about 1 step in 300 on MNIST) hops to another basin of the
# non-convex energy and needs ~30 sweeps; TOL = 0.25 stops a run only on real divergence.
TOL = 0.25
FREE_STEPS = 40
NUDGED_STEPS = 30
TAOX_FREE_STEPS = 20
TAOX_NUDGED_STEPS = 8
LAYER_LR = (0.1, 0.05)
# Normalised (NLMS) per-layer step sizes: the update of layer k is divided by 1 + the batch mean
# of |s_(k-1)|^2, so these are data-independent. The raw rates above made the output layer's LMS
# step lr |h|^2 = 1.7 on MNIST (stable below 2) but 2.7 on Fashion-MNIST, whose brighter images
# excite more hidden units: the outputs overshot below the nudge's reach and died, 10% accuracy
# (BENCHMARKS.md, "Recipes on data they were not tuned on"). Output mu = 1 is half the
# stability limit (mu = 2 diverged there, as LMS theory says); the hidden layer's 32 is its
# old MNIST step (0.1 x (1 + |x|^2 ~ 85) ~ 8.5) times four, the best of 4-64 on one Fashion
# epoch and within 1.2 points across that range.
NLMS_RATES = (32.0, 1.0)
# The output kernel's largest singular value at initialisation. With linear outputs the free
# energy, minimised over the outputs, is 1/2 h^T (I - W_out W_out^T) h - ... in the hidden layer:
# strictly convex only while |W_out|_2 < 1. Glorot-uniform 500x10 has |W_out|_2 ~ 1.57, so along
# its top singular directions the energy falls towards the box walls: on the 1,500 rendered
# shapes the fresh network's free phase ended 40 sweeps at residual 0.43 with 17% of hidden
# activities pinned at 1 and outputs of magnitude 10 (cost 72), and the first updates left 435
# of 500 hidden units saturated on every test image (zero activity difference: dead for good);
# 73.4% after 15 epochs. Scaled to 1/2 (curvature >= 3/4, the relaxation a contraction) the
# free phase converges from the first step and no hidden unit dies: 90.8% (seed 0; per epoch in
# benchmarks/eqprop_output_norm.py and its JSON). A rule on the architecture's initialisation,
# not tuned on the data (only 0 and 1/2 tried: zero gives the hidden layer no signal at first).
# Both rows; the TaOx row keeps its arrays' ranges from the Glorot initialisation (device_ranges).
OUTPUT_NORM = 0.5


def device_ranges(params: list[dict]) -> list[dict]:
    """Per-leaf ``w_max`` for ``analog.program``: twice each kernel's max |w| at its Glorot
    initialisation, taken before :func:`contract_output` rescales the output kernel; None
    (the program default: twice the initial max |w|, 1 for zeros) for the biases.

    A crossbar's conductance-to-weight scale belongs to the array and its layer's shape, not
    to how the weights were first set: with ``program``'s default the contracted output
    kernel (x 0.32) would get a range of 0.069 that its trained weights outgrow (measured:
    MNIST 1 epoch 93.1 -> 92.0% on TaOx). Twice max |w| is what ``program`` gives the
    un-contracted network."""
    return [
        {k: (2.0 * float(jnp.max(jnp.abs(v))) if k == "kernel" else None) for k, v in layer.items()}
        for layer in params
    ]


def eqprop_loss(outputs: jax.Array, labels: jax.Array) -> jax.Array:
    """The energy network's own cost: 1/2 |s_out - onehot(y)|^2, batch mean, float32."""
    t = jax.nn.one_hot(labels, outputs.shape[-1], dtype=jnp.float32)
    return 0.5 * jnp.mean(jnp.sum((outputs.astype(jnp.float32) - t) ** 2, axis=-1))


def energy_of(opt_state, steps: int) -> dict:
    """Energy report of a chain holding equilibrium_propagation and/or program states."""
    eqprop = bbcore.find_states(opt_state, analog.EquilibriumPropagationState)
    ledgers = [s.ledger for s in eqprop]
    programs = [s.ledger for s in bbcore.find_states(opt_state, analog.ProgramState)]
    total = analog.EnergyLedger.zeros()
    for led in ledgers:
        total = total + led
    for led in programs:
        # steps are counted once (by the estimator when there is one)
        total = total + (led._replace(steps=jnp.zeros((), jnp.float32)) if ledgers else led)
    rep = analog.energy_report(total)
    rep["steps_requested"] = steps
    res = [float(s.residual) for s in eqprop]
    if res:
        rep["last_relaxation_residual"] = res[0]
    return rep


def per_layer_sgd(
    num_layers: int, rates=LAYER_LR, decay_steps: int | None = None, decay_floor: float = 0.1
) -> optax.GradientTransformation:
    """Per-layer SGD; with ``decay_steps`` each rate follows a cosine to ``decay_floor`` (10%)
    of itself."""
    labels = [{"kernel": f"l{i}", "bias": f"l{i}"} for i in range(num_layers)]

    def rate(r):
        if decay_steps is None:
            return r
        return optax.cosine_decay_schedule(r, decay_steps, alpha=decay_floor)

    return optax.multi_transform(
        {f"l{i}": optax.sgd(rate(rates[i])) for i in range(num_layers)}, labels
    )


def contract_output(params: list[dict], norm: float = OUTPUT_NORM) -> list[dict]:
    """``params`` with the output kernel rescaled to spectral norm ``norm`` (see ``OUTPUT_NORM``).

    For ``norm < 1`` the layered energy (Scellier & Bengio 2017, Eq. 1) with linear outputs is
    strictly convex in the last hidden layer at initialisation, so the free phase has one
    minimum and block-coordinate relaxation contracts to it.
    """
    w = jnp.asarray(params[-1]["kernel"])
    scale = norm / jnp.linalg.norm(w.astype(jnp.float32), 2)
    return [*params[:-1], {**params[-1], "kernel": (w * scale).astype(w.dtype)}]


def build_eqprop(
    cfg: MethodConfig,
    *,
    device=analog.presets.IDEAL,
    io=None,
    tol=TOL,
    hidden: int = HIDDEN,
    free_steps: int = FREE_STEPS,
    nudged_steps: int = NUDGED_STEPS,
    w_max: Any = 1.0,
    lr_decay_steps: int | None = None,
    decay_floor: float = 0.1,
    mixed_precision: bool = False,
    beta: float = BETA,
    normalize: bool = True,
    rates=NLMS_RATES,
    linear_output: bool = True,
    output_norm: float | None = OUTPUT_NORM,
) -> Setup:
    """The ``analog-eqprop`` rows: a layered energy network trained by the activity-difference rule.

    Centered equilibrium propagation (Scellier & Bengio 2017; Laborieux et al. 2021) with NLMS
    per-layer rates, its updates programmed onto ``device`` through ``analog.program``; ``io``
    (e.g. ``analog.presets.TAOX_IO``) reads every relaxation product through crossbar periphery.
    The keywords default to the ideal row's values (module constants, reasons beside them);
    ``output_norm=None`` keeps the Glorot-uniform output kernel. ``w_max=None`` gives each
    array the range :func:`device_ranges` sets from the Glorot initialisation.
    """
    params = analog.init_energy_network(cfg.key, (cfg.num_inputs, hidden, cfg.num_classes))
    if w_max is None:
        w_max = device_ranges(params)
    if output_norm is not None:
        params = contract_output(params, output_norm)
    seed = cfg.seed
    eval_key = bbcore.key(seed)

    def apply(p, x):
        return analog.predict(
            p,
            x.reshape(x.shape[0], -1),
            steps=free_steps,
            io=io,
            key=eval_key if io is not None and io.needs_key else None,
            linear_output=linear_output,
        )

    tx = optax.chain(
        analog.equilibrium_propagation(
            beta=beta,
            free_steps=free_steps,
            nudged_steps=nudged_steps,
            seed=seed,
            io=io,
            tol=tol,
            normalize=normalize,
            linear_output=linear_output,
        ),
        per_layer_sgd(len(params), rates, decay_steps=lr_decay_steps, decay_floor=decay_floor),
        # IDEAL's step is 1e-6 of the range: nearest rounding loses nothing measurable and
        # needs no random numbers (the dominant cost of a step on CPU).
        # An ideal device should not bound the weights either: w_max 1 (well above what the
        # rule reaches) instead of twice the initial max|w| (0.15 for the 784x500 kernel).
        analog.program(
            device,
            seed=seed + 1,
            w_max=w_max,
            pulse="deterministic" if device == analog.presets.IDEAL else "stochastic",
            mixed_precision=mixed_precision,
        ),
    )
    return Setup(
        params=params, apply=apply, tx=tx, needs_grad=False, loss=eqprop_loss, energy=energy_of
    )


def build_sgd_on_devices(
    cfg: MethodConfig, *, device=analog.presets.TAOX_RERAM, lr: float = 0.05
) -> Setup:
    """The ``analog-program`` row (alias ``analog-sgd``): backprop gradients, SGD with momentum
    at ``lr`` on a cosine to 0 over the run (``backprop``'s rule and reason), programmed onto
    ``device``. The decay also means fewer stochastic pulses late in the run, whose noise
    the devices cannot average away: Fashion-MNIST, one epoch, 3 seeds, 85.2% against 82.1%
    at a constant rate (BENCHMARKS.md, "Recipes on data they were not tuned on")."""
    apply, params = cfg.build_model()
    rate = cosine_to_zero(lr, cfg.steps)
    tx = optax.chain(optax.sgd(rate, momentum=0.9), analog.program(device, seed=cfg.seed))
    return Setup(params=params, apply=apply, tx=tx, needs_grad=True, energy=energy_of)


register(
    Method(
        "analog-eqprop",
        f"Equilibrium Propagation (centered, beta {BETA}, {FREE_STEPS}+2x{NUDGED_STEPS} sweeps) on "
        f"an inputs-{HIDDEN}-classes energy network with linear output units (output kernel "
        f"initialised to spectral norm {OUTPUT_NORM}), normalised (NLMS) per-layer steps "
        f"{NLMS_RATES}, ideal devices",
        build_eqprop,
        family="analog",
    )
)


#: The TaOx row programs through ``analog.program(mixed_precision=True)``. Measured against
#: stochastic pulses (the row to stop 28), same seeds 0-2 (BENCHMARKS.md, "Mixed-precision
#: programming"): Fashion-MNIST 10 epochs 85.55% against 83.01% (the stochastic row plateaus
#: from epoch 6), one epoch 80.91% against 80.76%, MNIST one epoch 93.71% against 93.30%;
#: 1,500 rendered shapes, 15 epochs (345 steps), 84.3% against 86.4%: in a short run the
#: sub-step remainder the accumulator holds back (under one step per weight) weighs more.
TAOX_MIXED_PRECISION = True


def build_eqprop_taox(cfg: MethodConfig, **overrides: Any) -> Setup:
    """The ``analog-eqprop-taox`` row: :func:`build_eqprop` on TaOx devices and periphery, each
    array's range from the Glorot initialisation, beta ``TAOX_BETA``, rates on a cosine over the
    run, updates programmed through the mixed-precision accumulator; ``overrides`` replace any
    of its keywords (for ablations)."""
    kwargs: dict[str, Any] = dict(
        mixed_precision=TAOX_MIXED_PRECISION,
        device=analog.presets.TAOX_RERAM,
        io=analog.presets.TAOX_IO,
        tol=None,
        free_steps=TAOX_FREE_STEPS,
        nudged_steps=TAOX_NUDGED_STEPS,
        w_max=None,
        beta=TAOX_BETA,
        lr_decay_steps=cfg.steps,
    )
    return build_eqprop(cfg, **{**kwargs, **overrides})


register(
    Method(
        "analog-eqprop-taox",
        f"analog-eqprop with TaOx crossbar periphery (8-bit DAC/ADC, read noise) and updates "
        f"programmed onto TAOX_RERAM devices (Yi et al. 2023 setting) through a mixed-precision "
        f"accumulator (Nandakumar et al. 2020); beta {TAOX_BETA}, rates on a cosine to 10%",
        build_eqprop_taox,
        family="analog",
    )
)
_PROGRAM_DESCRIPTION = (
    "backprop gradients, SGD lr 0.05 on a cosine to 0 over the run, momentum 0.9, programmed "
    "onto TAOX_RERAM devices"
)
register(Method("analog-program", _PROGRAM_DESCRIPTION, build_sgd_on_devices, family="analog"))
# The row's name before analog-insitu existed: it still resolves (same recipe), so saved
# comparisons, scripts and tests that name it keep working.
register_alias("analog-sgd", "analog-program")

#: analog-insitu's update (aihwkit's AnalogSGD defaults: BL 31, update management on) and its
#: peak rate, on the cosine to 0 over the run that every SGD row here uses. At aihwkit's constant
#: 0.1 the row fitted 345 steps of 1,500 images to only 67.3% and wandered from step 200 on. On
#: MNIST (one epoch, 3 seeds) constant 0.1 gave 88.8%, cosine peaks 0.3 / 0.5 / 1.0 gave
#: 91.2 / 92.0 / 89.4%, so 0.5; then, unchanged, 79.0% on Fashion-MNIST (74.7% before) and
#: 88.6% on the 1,500 shapes (BENCHMARKS.md, "Stop 33").
INSITU_LR = 0.5
INSITU_UPDATE = analog.UpdateConfig(bl=31, update_management=True)


def build_insitu(
    cfg: MethodConfig,
    *,
    device=analog.presets.TAOX_RERAM,
    io=analog.presets.TAOX_IO,
    lr: optax.ScalarOrSchedule | None = None,
    update: analog.UpdateConfig = INSITU_UPDATE,
) -> Setup:
    """The ``analog-insitu`` row: the reference MLP of ``analog.nnx.Linear`` layers on
    ``device`` tiles, trained in situ by ``analog.pulsed_sgd`` (module docstring); ``lr``
    None: ``INSITU_LR`` on a cosine to 0 over the run."""
    if cfg.model != "mlp":
        raise NotApplicable("analog-insitu trains the MLP (an analog CNN is analog.nnx.Conv)")
    layer = functools.partial(analog.nnx.Linear, batch_size=cfg.batch_size, device=device, io=io)
    apply, params = models.mlp(
        cfg.key, (cfg.num_inputs, *cfg.widths, cfg.num_classes), linear=layer
    )
    if lr is None:
        lr = cosine_to_zero(INSITU_LR, cfg.steps)
    tx = analog.pulsed_sgd(lr, update=update, seed=cfg.seed)
    return Setup(params=params, apply=apply, tx=tx, needs_grad=True)


#: analog-tikitaka's settings: TTv2 (Gokmen 2021). Every 8 samples each 64-row tile of A reads
#: one of its rows into H (``analog.tiki_taka`` transfers per row tile, as aihwkit's tiles do),
#: so each row of A is read every 512 samples. Reading every row every mini-batch
#: (``transfer_every=1``) gave 92.2% against 94.2% after two
#: epochs on MNIST, 784-256-128-10, seed 0 (the cause, more noisy reads of A, is not isolated;
#: BENCHMARKS.md, "In-situ training through the crossbar").
TIKITAKA_LR = 0.1
TIKITAKA_TRANSFER_EVERY = 8
TIKITAKA_TRANSFER_LR = 0.1


def build_tikitaka(
    cfg: MethodConfig,
    *,
    device=analog.presets.TAOX_RERAM,
    io=analog.presets.TAOX_IO,
    lr: optax.ScalarOrSchedule = TIKITAKA_LR,
    transfer_every: int = TIKITAKA_TRANSFER_EVERY,
    transfer_lr: optax.ScalarOrSchedule = TIKITAKA_TRANSFER_LR,
    update: analog.UpdateConfig = INSITU_UPDATE,
    chop_probability: float = 0.0,
) -> Setup:
    """The ``analog-tikitaka`` row: ``analog-insitu``'s MLP with a fast array ``A`` of
    ``device`` cells beside every layer's ``C``, trained by ``analog.tiki_taka`` (TTv2)."""
    if cfg.model != "mlp":
        raise NotApplicable("analog-tikitaka trains the MLP (an analog CNN is analog.nnx.Conv)")
    layer = functools.partial(
        analog.nnx.Linear, batch_size=cfg.batch_size, device=device, io=io, fast_device=device
    )
    apply, params = models.mlp(
        cfg.key, (cfg.num_inputs, *cfg.widths, cfg.num_classes), linear=layer
    )
    tx = analog.tiki_taka(
        lr,
        transfer_every=transfer_every,
        transfer_lr=transfer_lr,
        chop_probability=chop_probability,
        update=update,
        transfer_io=io,
        seed=cfg.seed,
    )
    return Setup(params=params, apply=apply, tx=tx, needs_grad=True)


def build_tikitaka_annealed(cfg: MethodConfig, **kwargs: Any) -> Setup:
    """The ``analog-tikitaka-annealed`` row: :func:`build_tikitaka` with the transfer rate on
    a cosine from ``TIKITAKA_TRANSFER_LR`` to 0 over ``cfg.steps`` (SGDR without restarts,
    Loshchilov & Hutter 2017), so C freezes as the run ends while A keeps learning."""
    if "transfer_lr" in kwargs:
        raise TypeError(
            "analog-tikitaka-annealed sets transfer_lr itself (a cosine to 0 over the run); "
            "call build_tikitaka(cfg, transfer_lr=...) for another transfer schedule"
        )
    annealed = cosine_to_zero(TIKITAKA_TRANSFER_LR, cfg.steps)
    return build_tikitaka(cfg, transfer_lr=annealed, **kwargs)


register(
    Method(
        "analog-insitu",
        f"in-situ analog SGD on TAOX_RERAM tiles through analog.nnx.Linear (TAOX_IO forward and "
        f"backward reads, noise and bound management), pulsed rank-1 updates BL "
        f"{INSITU_UPDATE.bl}, lr {INSITU_LR} on a cosine to 0 over the run",
        build_insitu,
        family="analog",
    )
)
register(
    Method(
        "analog-tikitaka",
        f"Tiki-Taka v2 in situ on TAOX_RERAM tiles (fast array A, slow C, digital buffer H; one "
        f"row of each tile of A read every {TIKITAKA_TRANSFER_EVERY} samples, transfer lr "
        f"{TIKITAKA_TRANSFER_LR}), TAOX_IO reads, BL {INSITU_UPDATE.bl}, lr {TIKITAKA_LR}",
        build_tikitaka,
        family="analog",
    )
)
register(
    Method(
        "analog-tikitaka-annealed",
        f"analog-tikitaka with its transfer lr on a cosine from {TIKITAKA_TRANSFER_LR} to 0 over "
        f"the run (A's lr constant at {TIKITAKA_LR}): C freezes as the run ends; for runs of "
        f"several epochs",
        build_tikitaka_annealed,
        family="analog",
    )
)
