"""fwdgrad, lowbit and analog on 8 simulated devices: assertions on one subprocess's measurements.

``tests/multidevice/eight_devices.py`` runs every measurement in one process with
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (JAX imported and each
program compiled once) and reports numbers; each ``check_*`` function here asserts
one property with its tolerance, and :func:`test_eight_devices` runs them all on
that one result, reporting every failing check by name.

One test rather than one per property sharing a module-scoped fixture: under
``pytest -n 2 --dist loadgroup`` such tests would need an ``xdist_group`` to share
one run, and with pytest 9.2 and pytest-xdist 3.8 the group mark is silently
ignored (pytest-dev/pytest-xdist#1386), so both workers would start the subprocess.
"""

from __future__ import annotations

import pytest
from _multidevice import run_checks

D = 8


def value(results, name):
    r = results[name]
    assert r["ok"], f"{name} raised in the 8-device process:\n{r['error']}"
    return r["value"]


def assert_close(diffs, rel, abs_=0.0):
    """Every leaf: max |sharded - reference| <= rel * max |reference| + abs_."""
    for i, (err, scale) in enumerate(diffs):
        assert err <= rel * scale + abs_, f"leaf {i}: max |diff| {err} > {rel} * {scale} + {abs_}"


def assert_raised(r, type_, match):
    import re

    assert r["type"] == type_, r
    assert re.search(match, r["message"]), r


# --------------------------------------------------------------------------- fwdgrad


def check_fwdgrad_tangent_parallel_equals_single_device(results):
    """K = 8 tangents, one per device, 2 SGD steps == forward_gradient(K=8) on one device.

    Same tangents (seed, step count), same combination; only the K jvps are batched
    differently (K/D per device), which changes float32 rounding inside the matmuls:
    tolerance 1e-5 of each leaf's largest entry, plus 1e-7.
    """
    r = value(results, "fwdgrad_tangent_parallel")
    assert r["steps"] == 2
    assert_close(r["diffs"], 1e-5, 1e-7)


def check_fwdgrad_rank1_tangent_parallel_equals_single_device(results):
    """As above with ``tangent="rank1"``: the sharded step draws the same sign factors and
    combines them as one device does; same tolerance."""
    r = value(results, "fwdgrad_tangent_parallel_rank1")
    assert r["steps"] == 2
    assert_close(r["diffs"], 1e-5, 1e-7)


def check_fwdgrad_data_and_tangent_parallel_equals_single_device(results):
    """2 (batch) x 4 (tangent) mesh: the same forward_gradient run, same tolerance.

    The batch shards' directional derivatives are averaged (pmean), equal to the full
    batch's up to float32 summation order.
    """
    r = value(results, "fwdgrad_data_and_tangent_parallel")
    assert r["steps"] == 2
    assert_close(r["diffs"], 1e-5, 1e-7)


def check_fwdgrad_communication_is_O_K_for_1e5_and_1e7_parameters(results):
    """The compiled training step's only collective gathers the K float32 directional
    derivatives, the same for 1e5 parameters (the step that ran above) and 1e7 (compiled
    from shapes, never run)."""
    small = value(results, "fwdgrad_tangent_parallel")["hlo"]
    large = value(results, "fwdgrad_hlo_1e7")
    assert 0.8e5 < small["num_params"] < 1.2e5, small["num_params"]
    assert 0.8e7 < large["num_params"] < 1.2e7, large["num_params"]
    K = 8
    for r in (small, large):
        # one all-gather: each device contributes its K/D directional derivatives
        assert [c["op"] for c in r["collectives"]] == ["all-gather"], r["collectives"]
        assert r["operand_bytes"] == 4 * K / D
        assert r["sent_bytes"] == 4 * K / D * (D - 1)
        assert r["by_dtype"] == {"f32": 4 * K / D}
    assert small["collectives"] == large["collectives"]


def check_fwdgrad_errors_name_the_8_devices(results):
    r = value(results, "fwdgrad_errors")
    assert_raised(r["K_12"], "ValueError", "not divisible by the 8 devices")
    assert_raised(r["batch_12"], "ValueError", "batch size divisible")


# --------------------------------------------------------------------------- lowbit


def check_lowbit_compressed_pmean_same_everywhere_and_unbiased(results):
    """Every device decodes the same bytes (exactly); stochastic rounding makes the mean
    over 256 keys converge to the float32 mean: within 5 standard errors (+1e-7 of the range)."""
    r = value(results, "lowbit_compressed_pmean")
    assert r["keys"] == 256
    for leaf in ("w", "b"):
        assert r[leaf]["devices_identical"], leaf
        assert r[leaf]["max_err_over_bound"] <= 1.0, (leaf, r[leaf])


def check_lowbit_exact_when_devices_agree_on_grid_values(results):
    """Identical on-grid inputs: the float32 mean is the input, and requantizing it is exact
    (nearest and stochastic rounding, on every device)."""
    r = value(results, "lowbit_compressed_pmean")
    assert r["grid_nearest_exact"] and r["grid_stochastic_exact"]


def check_lowbit_float32_data_parallel_equals_one_device(results):
    """2 steps of SGD with momentum: the same mean gradient, summed per shard then across
    shards (float32 order only): per leaf, max |diff| <= 1e-5 * max |reference| + 1e-6."""
    r = value(results, "lowbit_data_parallel")
    assert r["steps"] == 2
    assert_close(r["diffs"], 1e-5, 1e-6)


def check_lowbit_4bit_exchange_is_8x_smaller_in_the_compiled_program(results):
    r = value(results, "lowbit_data_parallel")
    n = r["num_params"]
    assert 0.8e5 < n < 1.2e5, n
    f32, q4, expected = r["reports"]["float32"], r["reports"]["4bit"], r["expected_4bit"]
    # float32: one all-reduce of the gradient (plus the 4-byte loss)
    assert f32["by_dtype"] == {"f32": 4 * n + 4}
    # 4-bit: uint8 codes (two per byte) in the all-to-all and the all-gather; float32
    # only for the per-chunk scales and the loss
    assert q4["by_dtype"]["u8"] == expected["all_to_all_codes"] + expected["all_gather_codes"]
    assert q4["by_dtype"]["f32"] == (
        expected["all_to_all_scales"] + expected["all_gather_scales"] + 4
    )
    assert {c["op"] for c in q4["collectives"]} <= {"all-to-all", "all-gather", "all-reduce"}
    # bytes each device sends (ring algorithms): 8x fewer, up to padding and scales
    ratio = f32["sent_bytes"] / q4["sent_bytes"]
    assert 7.5 < ratio <= 8.0, ratio


def check_lowbit_errors(results):
    assert_raised(value(results, "lowbit_errors")["wide_format"], "ValueError", "4-bit format")


# --------------------------------------------------------------------------- analog


def check_analog_layer_spread_over_chips_equals_one_device(results):
    """3 x 8 tiles, one tile column per chip, noisy periphery with the same per-tile keys.

    mvm: each output column is summed over the same row tiles on the chip that holds it;
    mvm_transpose: the chips' partial sums are added by a psum. XLA may block the batched
    per-tile matmuls differently for C/8 tiles than for C and the psum orders the sum, so
    the tolerance is float32 rounding: 1e-6 of the output range.
    """
    r = value(results, "analog_tiles_over_chips")
    assert r["grid"] == [3, 8]
    assert_close([r["mvm"]], 1e-6)
    assert_close([r["mvm_transpose"]], 1e-6)


def check_analog_chip_ensemble_over_devices_equals_vmap(results):
    """16 chips, 2 per device, no communication: only the batching of their matmuls
    differs from one device's vmap: 1e-6 of the output range."""
    r = value(results, "analog_chip_ensemble")
    assert r["shape"] == [16, 4, 60]
    assert_close([r["diff"]], 1e-6)


def check_analog_errors(results):
    r = value(results, "analog_errors")
    assert_raised(r["odd_columns"], "ValueError", "not divisible by the 8 devices")
    assert_raised(r["bad_axis"], "ValueError", "not an axis")
    assert_raised(r["bad_width"], "ValueError", "last axis must be 40")
    assert_raised(r["no_key"], "ValueError", "pass key")
    assert_raised(r["chips_12"], "ValueError", "multiple of 8")


# --------------------------------------------------------------------------- the tests

CHECKS = [f for name, f in sorted(globals().items()) if name.startswith("check_")]


def test_eight_devices():
    """Every check_* above, on one run of tests/multidevice/eight_devices.py."""
    results = run_checks()
    failures = []
    for check in CHECKS:
        try:
            check(results)
        except Exception as e:
            failures.append(f"{check.__name__}: {type(e).__name__}: {e}")
    seconds = {name: r["seconds"] for name, r in results.items()}
    assert not failures, (
        "\n\n".join(failures) + f"\n\n{len(failures)} of {len(CHECKS)} checks failed; "
        f"seconds per measurement: {seconds}"
    )


# --------------------------------------------------------------------------- longer runs


@pytest.mark.slow
def test_slow_orthogonal_aggregate_and_4bit_training():
    """Kept out of the default suite: the orthogonal aggregate (a K x K Gram matrix of the
    redrawn tangents) equals one device; 15 steps of 4-bit data parallel lower the loss."""
    r = run_checks(("fwdgrad_tangent_parallel_orthogonal", "lowbit_4bit_trains"))
    assert_close(value(r, "fwdgrad_tangent_parallel_orthogonal")["diffs"], 1e-5, 1e-7)
    losses = value(r, "lowbit_4bit_trains")["losses"]
    assert losses[-1] < 0.85 * losses[0], losses
