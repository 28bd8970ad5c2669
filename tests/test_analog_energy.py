"""Energy accounting at scale: closed-form crossbar counts against real runs' ledgers, the digital
data-movement model against hand counts, the report's breakdown, and errors for bad input."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import analog

FREE, NUDGED = 6, 3


def _run(sizes, batch, tile_shape, centered, steps=2):
    params = analog.init_energy_network(jax.random.key(0), sizes)
    tx = optax.chain(
        analog.equilibrium_propagation(
            beta=0.3,
            free_steps=FREE,
            nudged_steps=NUDGED,
            centered=centered,
            tol=None,
            tile_shape=tile_shape,
        ),
        optax.sgd(0.05),
        analog.program(analog.presets.TAOX_RERAM, tile_shape=tile_shape, seed=1),
    )
    state = tx.init(params)

    @jax.jit
    def step(p, s, x, y):
        u, s = tx.update(None, s, p, batch=(x, y))
        return optax.apply_updates(p, u), s

    rng = np.random.default_rng(0)
    for _ in range(steps):
        x = jnp.asarray(rng.random((batch, sizes[0]), dtype=np.float32))
        y = jnp.asarray(rng.integers(0, sizes[-1], batch).astype(np.int32))
        params, state = step(params, state, x, y)
    return state[0].ledger + state[2].ledger._replace(steps=jnp.zeros((), jnp.float32))


@pytest.mark.parametrize(
    "sizes,batch,tile_shape,centered",
    [
        ((12, 9, 4), 3, (8, 8), True),  # partial tiles in both directions
        ((16, 16, 16, 16), 2, (8, 8), True),  # exact tiling, three layers
        ((33, 20, 7), 5, (16, 4), False),  # non-square tiles, one nudged phase
    ],
)
def test_closed_form_equals_the_ledger_of_a_real_run(sizes, batch, tile_shape, centered):
    steps = 2
    led = _run(sizes, batch, tile_shape, centered, steps)
    assert float(led.pulses) > 0  # the chain programmed the devices
    want = analog.crossbar_counts(
        sizes, batch, free_steps=FREE, nudged_steps=NUDGED, centered=centered, tile_shape=tile_shape
    )
    assert float(led.steps) == steps == steps * float(want.steps)
    for field in ("cell_reads", "dac", "adc", "digital_flops"):
        # integers far below 2^24: float32 holds them exactly
        assert float(getattr(led, field)) == steps * float(getattr(want, field)), field


def test_closed_form_by_hand_and_against_relaxation_counts():
    # 10 -> 6 -> 3 on 4x4 tiles: W1 on 3x2 tiles, W2 on 2x1 tiles; batch 2, 5 sweeps
    led = analog.crossbar_counts((10, 6, 3), 2, free_steps=5, tile_shape=(4, 4))
    per_sweep_cells = 2 * 2 * (6 * 16 + 2 * 2 * 16)  # W1 forward; W2 forward + transposed
    assert float(led.cell_reads) == 5 * per_sweep_cells
    assert float(led.dac) == 5 * 2 * (6 * 4 + 2 * 4 + 2 * 4)
    assert float(led.digital_flops) == 5 * 2 * 2 * (60 + 2 * 18)
    assert float(led.pulses) == 0 and float(led.steps) == 1
    ref = analog.relaxation_counts((10, 6, 3), 2, 5, (4, 4))
    for field in ("cell_reads", "dac", "adc", "digital_flops"):
        assert float(getattr(led, field)) == float(getattr(ref, field))


def test_sram_energy_follows_the_cited_points():
    ops = analog.HOROWITZ_45NM
    assert ops.sram_per_access(8 * 1024) == ops.sram_8kb
    assert ops.sram_per_access(1024) == ops.sram_8kb
    assert ops.sram_per_access(32 * 1024) == pytest.approx(ops.sram_32kb, rel=1e-12)
    assert ops.sram_per_access(2**20) == pytest.approx(ops.sram_1mb, rel=1e-12)
    # log-log interpolation: halfway (in log size) between 8 KB and 32 KB is the geometric mean
    assert ops.sram_per_access(16 * 1024) == pytest.approx(math.sqrt(10e-12 * 20e-12), rel=1e-12)
    m = analog.DigitalEnergyModel(dtype="bf16")
    assert m.e_sram_word == pytest.approx(ops.sram_1mb / 4, rel=1e-12)
    assert m.e_dram_word == pytest.approx(ops.dram / 4, rel=1e-12)


def test_digital_inference_counts_by_hand():
    # one 6x5 layer, batch 3, 4x4 array: 2 row blocks, 2 column blocks
    big = analog.DigitalEnergyModel(pe_rows=4, pe_cols=4)
    c = analog.digital_counts((6, 5), 3, algorithm="inference", model=big)
    assert c.mults == 90 and c.adds == 90 + 15  # MACs, then one op per output unit
    # weights (30 words, resident) + inputs re-read per column block + partial sums r/w
    assert c.sram_words == 30 + 3 * 6 * 2 + 3 * 5 * (2 * 2 - 1)
    assert c.dram_words == 0
    # a buffer of 8 fp32 words: the live activations (2 x 3 x 6 = 36 words) do not fit
    tiny = analog.DigitalEnergyModel(buffer_bytes=32, pe_rows=4, pe_cols=4)
    t = analog.digital_counts((6, 5), 3, algorithm="inference", model=tiny)
    assert t.dram_words == 30 + 2 * (36 - 8)  # every weight from DRAM, spill written + read
    assert t.sram_words == c.sram_words - 30


def test_backprop_fetches_each_weight_four_times_and_spends_three_macs():
    m = analog.DigitalEnergyModel(buffer_bytes=4, pe_rows=128, pe_cols=128)  # nothing fits
    c = analog.digital_counts((8, 8, 8), 2, algorithm="backprop", model=m)
    weights = 2 * 64
    # forward 1 + input gradient 1 (not for the first layer) + update read and write 2
    acts_spilled = 2 * 8 * 3 - 1
    assert c.dram_words == (4 * weights - 64) + 2 * acts_spilled
    # forward and weight gradient of both layers, input gradient of the second, lr x grad
    assert c.mults == 2 * (2 * 64) + 2 * 64 + 2 * (2 * 64) + 2 * 64
    eq = analog.digital_counts((8, 8, 8), 2, algorithm="eqprop", model=m, sweeps=5)
    inf = analog.digital_counts((8, 8, 8), 2, algorithm="inference", model=m)
    assert eq.mults > c.mults > inf.mults


def test_report_breakdown_adds_up_and_keeps_the_legacy_keys():
    sizes, batch = (784, 500, 10), 20
    led = analog.crossbar_counts(sizes, batch, free_steps=20, nudged_steps=8, pulses=3900.0)
    old = analog.energy_report(led)
    new = analog.energy_report(led, network=sizes, batch=batch)
    for k in ("joules_per_step", "analog_j_per_step", "digital_j_per_step", "ratio"):
        assert new[k] == old[k]
    a, d = new["analog"], new["digital"]
    assert a["total"] == pytest.approx(sum(v for k, v in a.items() if k != "total"), rel=1e-12)
    assert d["total"] == pytest.approx(d["compute"] + d["sram"] + d["dram"], rel=1e-12)
    assert a["periphery_update"] > 0 and old["analog"]["periphery_update"] == 0
    assert new["ratio_with_data_movement"] == pytest.approx(d["total"] / a["total"], rel=1e-12)
    # 784-500-10 in fp32 (1.6 MB) fits the default 16 MiB buffer: no DRAM traffic
    assert d["dram"] == 0
    rank1 = analog.energy_report(led, network=sizes, batch=batch, update="rank1")
    assert rank1["analog"]["periphery_update"] < 0.1 * a["periphery_update"]


def test_weights_beyond_the_buffer_come_from_dram():
    sizes = (4096, 4096)  # 64 MiB in fp32, four times the default buffer
    inf = analog.digital_counts(sizes, 1, algorithm="inference")
    resident = (16 * 2**20 / 4 - 2 * 4096) / 4096**2
    assert inf.dram_words == pytest.approx(4096**2 * (1 - resident), rel=1e-12)
    int8 = analog.digital_counts(
        sizes, 1, algorithm="inference", model=analog.DigitalEnergyModel(dtype="int8")
    )
    # 16 MiB of int8 weights fill the buffer exactly; the live activations (2 x 4096 words)
    # take their room first, so exactly that many weight words stream from DRAM
    assert int8.dram_words == 2 * 4096


@pytest.mark.parametrize(
    "make,exc,words",
    [
        (
            lambda: analog.DigitalEnergyModel(buffer_bytes=0),
            ValueError,
            ("buffer_bytes", "positive"),
        ),
        (lambda: analog.DigitalEnergyModel(pe_rows=2.5), ValueError, ("pe_rows",)),
        (lambda: analog.DigitalEnergyModel(dtype="fp16"), ValueError, ("dtype", "bf16")),
        (lambda: analog.DigitalEnergyModel(ops="45nm"), TypeError, ("OpEnergies",)),
        (lambda: analog.OpEnergies(**{**_horowitz(), "dram": -1e-9}), ValueError, ("dram", "> 0")),
        (lambda: analog.OpEnergies(**{**_horowitz(), "sram_1mb": 1e-12}), ValueError, ("SRAM",)),
        (lambda: analog.EnergyModel(e_pulse=-1.0), ValueError, ("e_pulse",)),
        (lambda: analog.digital_counts((8, 8), 0), ValueError, ("batch=0", "positive")),
        (lambda: analog.digital_counts((8,), 1), ValueError, ("layer_sizes",)),
        (lambda: analog.digital_counts((8, 8), 1, algorithm="eqprop"), ValueError, ("sweeps",)),
        (lambda: analog.crossbar_counts((8, 8), 0, free_steps=2), ValueError, ("batch",)),
        (lambda: analog.crossbar_counts((8, 8), 1, free_steps=0), ValueError, ("free_steps",)),
        (
            lambda: analog.energy_report(analog.EnergyLedger.zeros(), network=(8, 8)),
            ValueError,
            ("batch=",),
        ),
        (
            lambda: analog.energy_report(analog.EnergyLedger.zeros(), update="sparse"),
            ValueError,
            ("update",),
        ),
    ],
)
def test_bad_input_is_refused_with_a_clear_error(make, exc, words):
    with pytest.raises(exc) as e:
        make()
    for w in words:
        assert w in str(e.value)


def _horowitz():
    import dataclasses

    return dataclasses.asdict(analog.HOROWITZ_45NM)
