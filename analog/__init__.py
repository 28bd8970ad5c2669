"""analog: memristor crossbars with device non-idealities and a local activity-difference rule.

Yi, Kendall, Williams, Kumar, "Activity-difference training of deep neural networks using
memristor crossbars", Nature Electronics 6, 45-51 (2023); Scellier & Bengio, "Equilibrium
Propagation" (2017); Laborieux et al. (2021); Gokmen & Vlasov (2016); IBM aihwkit.

Public API (see ../shared/DESIGN.md): device models (``ConstantStep``, ``LinearStep``,
``SoftBounds``, ``ExpStep``, ``PowStep``, and ``ExpFitStep``, aihwkit's ``ExpStepDevice``) and
``analog.presets``; ``IOConfig``; crossbar tiles
(``init_tiles``, ``mvm``, ``mvm_transpose``, ``read_weights``, ``pulse_update`` with its
``UpdateConfig``); the local rule
(``init_energy_network``, ``predict``, ``activity_difference``, ``equilibrium_propagation``);
``program``; ``EnergyLedger`` and ``energy_report``; the PCM inference model (aihwkit's
``PCMLikeNoiseModel``, Nandakumar et al. 2019: ``PCMNoiseModel``, ``program_conductances``,
``drift``, ``read_noise``, ``global_drift_compensation``, ``inference_weights``) and
hardware-aware training (``noisy_params``).
"""

from analog import _presets as presets
from analog import nnx
from analog._compact import CompactVariation
from analog._convergence import NonConvergenceError, NonConvergenceWarning
from analog._devices import (
    ConstantStep,
    Device,
    DeviceVariation,
    ExpStep,
    LinearStep,
    PowStep,
    SoftBounds,
)
from analog._distributed import shard_chips, shard_tiles, sharded_mvm, sharded_mvm_transpose
from analog._energy import (
    DEFAULT_ENERGY_MODEL,
    EnergyLedger,
    EnergyModel,
    crossbar_counts,
    energy_report,
    periphery_update_counts,
)
from analog._energy_digital import (
    DEFAULT_DIGITAL_MODEL,
    HOROWITZ_45NM,
    JOUPPI_7NM,
    DigitalCounts,
    DigitalEnergyModel,
    OpEnergies,
    digital_counts,
    digital_joules,
)
from analog._exp_fit import ExpFitStep
from analog._inference import (
    PCMNoiseModel,
    ProgrammedWeights,
    drift,
    drift_exponents,
    global_drift_compensation,
    inference_weights,
    program_conductances,
    read_noise,
    weights_at,
)
from analog._inference_params import noisy_params, params_at, program_params
from analog._local import RelaxInfo, activity_difference
from analog._mvm import mvm, mvm_transpose
from analog._periphery import IOConfig
from analog._programming import apply_pulses, program_weights
from analog._pulsed_sgd import PulsedSGDState, pulsed_sgd
from analog._relaxation import init_energy_network, predict, read_input, relax, relaxation_counts
from analog._tiki_taka import TikiTakaState, tiki_taka
from analog._tiles import (
    CompactTiles,
    Tiles,
    compact_tiles,
    expand_tiles,
    init_tiles,
    read_weights,
    weight_step,
)
from analog._transforms import (
    EquilibriumPropagationState,
    ProgramState,
    equilibrium_propagation,
    matrix_shape,
    program,
)
from analog._update import UpdateConfig, pulse_update

__all__ = [
    "presets",
    "Device",
    "DeviceVariation",
    "ConstantStep",
    "LinearStep",
    "SoftBounds",
    "ExpStep",
    "PowStep",
    "ExpFitStep",
    "IOConfig",
    "Tiles",
    "CompactTiles",
    "CompactVariation",
    "compact_tiles",
    "expand_tiles",
    "init_tiles",
    "read_weights",
    "mvm",
    "mvm_transpose",
    "pulse_update",
    "UpdateConfig",
    "nnx",
    "pulsed_sgd",
    "PulsedSGDState",
    "tiki_taka",
    "TikiTakaState",
    "apply_pulses",
    "program_weights",
    "weight_step",
    "init_energy_network",
    "predict",
    "relax",
    "read_input",
    "activity_difference",
    "RelaxInfo",
    "NonConvergenceError",
    "NonConvergenceWarning",
    "relaxation_counts",
    "equilibrium_propagation",
    "EquilibriumPropagationState",
    "program",
    "ProgramState",
    "matrix_shape",
    "EnergyLedger",
    "EnergyModel",
    "energy_report",
    "DEFAULT_ENERGY_MODEL",
    "crossbar_counts",
    "periphery_update_counts",
    "OpEnergies",
    "HOROWITZ_45NM",
    "JOUPPI_7NM",
    "DigitalEnergyModel",
    "DEFAULT_DIGITAL_MODEL",
    "DigitalCounts",
    "digital_counts",
    "digital_joules",
    "shard_tiles",
    "sharded_mvm",
    "sharded_mvm_transpose",
    "shard_chips",
    "PCMNoiseModel",
    "ProgrammedWeights",
    "program_conductances",
    "drift_exponents",
    "drift",
    "read_noise",
    "weights_at",
    "global_drift_compensation",
    "inference_weights",
    "program_params",
    "params_at",
    "noisy_params",
]
