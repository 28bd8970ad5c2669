"""Pulse-train kernels of the rank-1 update: draw packed trains, count coincidences, move devices.

Trains are packed 32 slots to a uint32 word; the coincidences of a whole batch are counted
per device without a ``(B, in, out)`` tensor, in one fused popcount loop or, for trains of at
most 8 slots, exactly as a matmul of 0/1 matrices; every device then moves once in closed
form (:meth:`analog.Device.step_two`). :func:`analog.pulse_update` (``analog._update``) drives
these; what they approximate is stated there.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from analog import _compact as CS
from analog._counter_rng import _U32, _hash_bits, _mix32, _normal_ih4
from analog._tiles import CompactTiles, Tiles, _to_tiles, conductance_state, with_conductance_state

__all__ = []

_F32 = jnp.float32


def _pack_bits(bits: jax.Array) -> jax.Array:
    """(B, BL, n) booleans -> (B, W, n) uint32 words, 32 pulse slots per word."""
    b, bl, n = bits.shape
    words = -(-bl // 32)
    bits = jnp.pad(bits, ((0, 0), (0, words * 32 - bl), (0, 0))).reshape(b, words, 32, n)
    shifts = jnp.arange(32, dtype=jnp.uint32)[None, None, :, None]
    return jnp.sum(bits.astype(jnp.uint32) << shifts, axis=2, dtype=jnp.uint32)


def _train_words(
    seeds: jax.Array,
    stream: int,
    p: jax.Array,
    bl: int,
    prob_bits: int,
    lengths: jax.Array | None = None,
) -> jax.Array:
    """Bernoulli pulse trains, packed: ``p`` (B, n) -> (B, W, n) uint32, ``W = ceil(bl / 32)``.

    Slot ``t`` of a train fires with probability ``q / 2^k``, ``q = round(p 2^k)`` and
    ``k = prob_bits`` (the probability resolution of a k-bit comparator, as in a hardware pulse
    generator; p = 1 always fires). The 32 slots of a word are drawn at once by the binary
    expansion of ``q``: ``k`` random words, one AND or OR each (the bit of slot ``t`` is 1 iff
    the k-bit number formed by the random words' bits at ``t`` is below ``q``). Slots past
    ``bl`` are zero, and with ``lengths`` (B,) int32, so are the slots ``t >= lengths[b]`` of
    sample ``b`` (shortened trains, see ``bl_management`` in :func:`pulse_update`): a shorter
    train is a prefix of the full one drawn with the same probabilities.
    """
    b, n = p.shape
    words = -(-bl // 32)
    full = 1 << prob_bits
    p = jnp.where(jnp.isnan(p), 0.0, p)  # NaN fires nothing, as uniform < NaN
    q = jnp.clip(jnp.round(p * full), 0, full).astype(_U32)[:, None, :]  # (B, 1, n)
    r = _hash_bits(seeds, stream, (prob_bits, b, words, n))
    w = jnp.zeros((b, words, n), _U32)
    for k in range(prob_bits):  # least significant bit of q first
        bit = ((q >> k) & 1) == 1
        w = jnp.where(bit, w | r[k], w & r[k])
    w = jnp.where(q >= full, _U32(0xFFFFFFFF), w)
    last = bl - 32 * (words - 1)  # slots used in the last word
    mask = jnp.full((words,), 0xFFFFFFFF, _U32).at[-1].set(_U32((1 << last) - 1))[None, :]
    if lengths is not None:
        used = jnp.clip(lengths[:, None] - 32 * jnp.arange(words)[None, :], 0, 32)  # (B, W)
        # a shift by the full 32 bits is not defined on every backend: whole words apart.
        low = (_U32(1) << jnp.minimum(used, 31).astype(_U32)) - _U32(1)
        mask = mask & jnp.where(used >= 32, _U32(0xFFFFFFFF), low)
    return w & mask[:, :, None]


def _coincidence_counts(
    wx: jax.Array, nx: jax.Array, wd: jax.Array, nd: jax.Array, tile_shape: tuple[int, int]
) -> tuple[jax.Array, jax.Array]:
    """Up and total coincidence counts per device, in tile layout, without a (B, in, out) tensor.

    wx: (B, W, R * rows) packed row trains of the padded matrix; nx: (B, R * rows) uint32 sign
    masks (all ones where x < 0); wd, nd: the same for the ``C * cols`` padded columns (pad
    with zero trains). Sample b adds ``popcount(wx_bi & wd_bj)`` coincidences to device (i, j),
    all in the direction ``sign(x_bi d_bj)``: to ``up`` when the signs agree. The batch is summed
    in one fused elementwise loop (one popcount per sample, word and device); returns uint32
    ``(up, total)`` of shape ``(R, C, rows, cols)``.
    """
    b, words, n_in = wx.shape
    th, tw = tile_shape
    r, c = n_in // th, wd.shape[2] // tw
    wx = wx.reshape(b, words, r, 1, th, 1)
    nx = nx.reshape(b, r, 1, th, 1)
    wd = wd.reshape(b, words, 1, c, 1, tw)
    # agreement of signs is nx ^ ~nd: inverting the (small) column masks once saves an op
    # per device and sample.
    nd = ~nd.reshape(b, 1, c, 1, tw)

    def packed(cwx, cnx, cwd, cnd):
        # One accumulator, up counts in the low and total counts in the high 16 bits: a
        # single output keeps XLA:CPU to one fused loop (two outputs doubled its time).
        # A chunk holds at most 32 samples of at most 1024 slots: counts < 2^16.
        acc = jnp.zeros((r, c, th, tw), _U32)
        for i in range(cwx.shape[0]):
            cnt = jax.lax.population_count(cwx[i, 0] & cwd[i, 0])
            for w in range(1, words):
                cnt = cnt + jax.lax.population_count(cwx[i, w] & cwd[i, w])
            acc = acc + (cnt << 16) + (cnt & (cnx[i] ^ cnd[i]))
        return acc

    lo = _U32(0xFFFF)
    if b <= 32:
        # Behind a conditional (skipped when no train fires at all): XLA:CPU would otherwise
        # fuse the loop into both of its consumers, the G+ and G- passes, counting every
        # coincidence twice (an optimization barrier does not stop that fusion).
        fired = jnp.any(wx != 0) & jnp.any(wd != 0)
        acc = jax.lax.cond(
            fired, packed, lambda *a: jnp.zeros((r, c, th, tw), _U32), wx, nx, wd, nd
        )
        return acc & lo, acc >> 16
    size = 16  # samples unrolled per loop iteration
    pad = -b % size  # zero trains add no coincidence

    def split(a):
        a = jnp.pad(a, ((0, pad),) + ((0, 0),) * (a.ndim - 1))
        return a.reshape(-1, size, *a.shape[1:])

    def chunk(carry, xs):
        acc = packed(*xs)
        return (carry[0] + (acc & lo), carry[1] + (acc >> 16)), None

    zero = jnp.zeros((r, c, th, tw), _U32)
    (up, tot), _ = jax.lax.scan(chunk, (zero, zero), tuple(map(split, (wx, nx, wd, nd))))
    return up, tot


#: Static train lengths of the matmul count path; above the last one the popcount path is
#: cheaper on XLA:CPU (see :func:`_count_and_apply`).
_MATMUL_SLOTS = (1, 2, 4, 8)


def _matmul_counts(
    wx: jax.Array,
    nx: jax.Array,
    wd: jax.Array,
    nd: jax.Array,
    tile_shape: tuple[int, int],
    slots: int,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """:func:`_coincidence_counts` of trains no longer than ``slots`` (<= 32), as matmuls.

    Same arguments; only the first ``slots`` slots of each train are read. With the 0/1 trains
    split by sign, ``P_x[i, (b, t)] = bit_bti [x_bi >= 0]`` and ``N_x`` for ``x_bi < 0`` (and
    ``P_d``, ``N_d``), a coincidence goes up where the signs agree: ``up = P_x P_d^T + N_x N_d^T``
    and ``down = P_x N_d^T + N_x P_d^T``, products of ``(in, B L)`` and ``(B L, out)`` matrices:
    a dense BLAS kernel where the popcount loop is scalar bit arithmetic on CPUs without a
    vector popcount. For ``B L < 256`` every count is below ``M = 2^ceil(log2(B L + 1)) <= 256``
    and one product gives all four as base-M digits,
    ``(P_x + M N_x) (P_d + M N_d)^T = PP + M (PN + NP) + M^2 NN``; otherwise two products, of the
    signed trains (``up - down``) and of their magnitudes (``up + down``). Exact: the operands
    are 0 and powers of two (exact in float32, TF32 and bfloat16), every partial sum is an
    integer below ``2^24`` (for ``B L < 2^24``), and the digits are split by power-of-two
    scalings and floors. Returns float32 ``(up, down)`` in tile layout and the int32 number of
    coincidences.
    """
    b, _, n_in = wx.shape
    n_out = wd.shape[2]
    k = b * slots
    t = jnp.arange(slots, dtype=_U32)
    # Operands as (lines, B L), contracted on their minor axis: the layout XLA:CPU's GEMM
    # runs fastest here (up to twice as fast as (B L, lines) for 64 columns).
    ax = ((wx[:, 0].T[:, :, None] >> t) & 1).astype(_F32).reshape(n_in, k)
    ad = ((wd[:, 0].T[:, :, None] >> t) & 1).astype(_F32).reshape(n_out, k)
    neg_x = jnp.repeat(nx.T != 0, slots, axis=1)
    neg_d = jnp.repeat(nd.T != 0, slots, axis=1)
    mm = lambda a, c: jax.lax.dot_general(
        a, c, (((1,), (1,)), ((), ())), preferred_element_type=_F32
    )
    if k < 256:
        m = float(1 << k.bit_length())  # 2^ceil(log2(k + 1))
        o = mm(jnp.where(neg_x, m * ax, ax), jnp.where(neg_d, m * ad, ad))
        hi = jnp.floor(o * (1.0 / (m * m)))  # NN
        lo = o - m * jnp.floor(o * (1.0 / m))  # PP
        up, down = lo + hi, jnp.floor(o * (1.0 / m)) - m * hi  # PP + NN, PN + NP
    else:
        net = mm(jnp.where(neg_x, -ax, ax), jnp.where(neg_d, -ad, ad))
        tot = mm(ax, ad)
        up, down = 0.5 * (tot + net), 0.5 * (tot - net)
    # sum_ij total_ij = sum_(b,t) (rows firing) (columns firing): no pass over the matrix.
    fired = jnp.sum(ax, axis=0).astype(jnp.int32) * jnp.sum(ad, axis=0).astype(jnp.int32)
    return _to_tiles(up, tile_shape), _to_tiles(down, tile_shape), jnp.sum(fired)


def _popcount_counts(wx, nx, wd, nd, tile_shape):
    """:func:`_coincidence_counts` in the return format of :func:`_matmul_counts`."""
    up, tot = _coincidence_counts(wx, nx, wd, nd, tile_shape)
    return up.astype(_F32), (tot - up).astype(_F32), jnp.sum(tot, dtype=jnp.int32)


def _count_and_apply(
    tiles: Tiles | CompactTiles,
    wx: jax.Array,
    nx: jax.Array,
    wd: jax.Array,
    nd: jax.Array,
    seeds: jax.Array,
    bl: int,
    lengths: jax.Array | None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Count the coincidences by the cheapest exact path and move the devices.

    Trains of at most ``bl`` slots (static): matmuls up to ``_MATMUL_SLOTS[-1]`` slots, else
    popcount. The popcount loop costs the same for any length up to 32 slots, the matmul's
    cost grows with the length, and on XLA:CPU the matmul is the cheaper of the two up to
    8 slots (the crossover measured in BENCHMARKS.md, "Simulation throughput, side by side
    with aihwkit"). With per-sample ``lengths`` the longest train is
    data-dependent: the shortest static length covering it is picked at run time with
    ``lax.switch`` among compiled branches, so no step recompiles, and every branch counts the
    same bits exactly. The device pass is inside each branch, so the counts reach it in the
    layout their kernel wrote (XLA fuses the change of layout into the pass) instead of
    through an extra copy. Returns ``(G+, G-, coincidences)`` (compact tiles: the codes).
    """

    def branch(count):
        def run(tiles, wx, nx, wd, nd, seeds):
            up, down, total = count(wx, nx, wd, nd, tiles.tile_shape)
            new = _apply_counts(tiles, up, down, seeds, 3)
            return (*conductance_state(new), total)

        return run

    shorter = [s for s in _MATMUL_SLOTS if s < bl]
    counts: list[Callable] = [functools.partial(_matmul_counts, slots=s) for s in shorter]
    counts.append(
        functools.partial(_matmul_counts, slots=bl) if bl <= _MATMUL_SLOTS[-1] else _popcount_counts
    )
    operands = (tiles, wx, nx, wd, nd, seeds)
    if lengths is None or len(counts) == 1:
        return branch(counts[-1])(*operands)
    index = jnp.sum(jnp.max(lengths) > jnp.asarray(shorter, jnp.int32))
    return jax.lax.switch(index, [branch(c) for c in counts], *operands)


def _apply_counts(tiles, up: jax.Array, down: jax.Array, seeds: jax.Array | None, stream: int):
    """One device pass per conductance array: G+ sees ``up`` potentiating then ``down``
    depressing pulses, G- ``up`` depressing then ``down`` potentiating (weight-raising pulses
    first, as :func:`apply_pulses`), with one noise value per device. :class:`Tiles` or
    :class:`CompactTiles` in, the same kind out; compact devices also take 16 random bits
    each for their stochastic rounding: one hashed word per pair, or, with noise, each noise
    word mixed once more."""
    dev = tiles.device
    shape = conductance_state(tiles)[0].shape
    zp: jax.Array | None = None
    zm: jax.Array | None = None
    words = None
    if dev.dw_min_std > 0:
        assert seeds is not None, "cycle-to-cycle noise needs the per-device seeds"
        words = _hash_bits(seeds, stream, (2, *shape))
        z = _normal_ih4(words)
        zp, zm = z[0], z[1]
    if not isinstance(tiles, CompactTiles):
        gp = dev.step_two(tiles.g_plus, up, down, zp, tiles.var_plus, pot_first=True)
        gm = dev.step_two(tiles.g_minus, up, down, zm, tiles.var_minus, pot_first=False)
        return dataclasses.replace(tiles, g_plus=gp, g_minus=gm)
    assert seeds is not None, "compact devices round stochastically: they need the seeds"
    if words is None:
        bits = _hash_bits(seeds, stream + 1, shape)
        u_p, u_m = CS.dither(bits), CS.dither(bits >> 16)
    else:
        # A noisy device's rounding reuses its noise word through one more bijective mixing
        # round (an independent-looking word at a third of a hash's cost: the hash dominates
        # this pass on CPUs; tests/test_analog_compact.py checks the rounding stays unbiased).
        u_p, u_m = CS.dither(_mix32(words[0])), CS.dither(_mix32(words[1]))
    step = functools.partial(CS.step_two_compact, dev, n_first=up, n_second=down)
    cp = step(tiles.code_plus, noise=zp, cv=tiles.par_plus, u=u_p, pot_first=True)
    cm = step(tiles.code_minus, noise=zm, cv=tiles.par_minus, u=u_m, pot_first=False)
    return with_conductance_state(tiles, cp, cm)
