// Event-driven pulsed crossbar update: an XLA FFI kernel for analog.pulse_update(impl="event").
//
// The dense fast path (analog/_crossbar.py, impl="fast") counts coincidences and moves every
// device of the array on every update, whether or not it received a pulse. On a chip (and in
// aihwkit's per-sample CPU loop) only the cross-points whose row and column pulse in the same
// slot are touched; with short managed trains (aihwkit's update_bl_management) and sparse
// inputs such as MNIST pixels that is a small fraction of the array. This kernel does the same
// work as the fast path, event by event:
//
//   1. for every sample b and slot t, the lists of rows and columns that fire (set bits of the
//      packed trains, drawn by the caller with the fast path's counter hash, so both paths see
//      the same pulses);
//   2. every coincidence (row i and column j both fire in slot t) adds one pulse to device
//      (i, j), counted as "up" when sign(x_bi) == sign(d_bj) (Gokmen & Vlasov 2016, Eq. 2-3),
//      in a per-thread scratch accumulator; the first pulse of a device records it in a list;
//   3. every listed device takes its n_up and n_down pulses in the closed form of its model
//      with one cycle-to-cycle noise value of the summed variance, exactly as
//      Device._step_two in analog/_devices.py (the fast path's device pass), and its scratch
//      entry is cleared.
//
// Devices that received no pulse are not read or written: the conductance buffers are aliased
// in place (input_output_aliases), so their cost is zero. The result equals the fast path up to
// float rounding of the device formulas (tests/test_analog_event_update.py).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr uint32_t kGolden = 0x9E3779B9u;

inline uint32_t Mix32(uint32_t x) {  // "lowbias32", as analog._crossbar._mix32
  x ^= x >> 16;
  x *= 0x7FEB352Du;
  x ^= x >> 15;
  x *= 0x846CA68Bu;
  x ^= x >> 16;
  return x;
}

// Unit-variance Irwin-Hall(4) noise of word `c` of hash stream `stream`: the same value as
// analog._crossbar._normal_ih4(_hash_bits(seeds, stream, shape)) at row-major index c.
struct NoiseStream {
  uint32_t k0, k1;
  NoiseStream(const uint32_t* seeds, uint32_t stream) {
    k0 = Mix32(seeds[0] ^ (stream * 0x85EBCA6Bu + 0x27D4EB2Fu));
    k1 = Mix32(seeds[1] + (stream * 0xC2B2AE35u + 0x165667B1u));
  }
  inline float Normal(uint32_t c) const {
    const uint32_t b = Mix32(Mix32(c * kGolden + k0) ^ k1);
    const uint32_t s = (b & 255u) + ((b >> 8) & 255u) + ((b >> 16) & 255u) + (b >> 24);
    // (s - 510) / sqrt(4 (256^2 - 1) / 12); through int32: vectorisable conversion
    return (static_cast<float>(static_cast<int32_t>(s)) - 510.0f) * 0.006765823f;
  }
};

enum Kind : int64_t { kConstant = 0, kLinear = 1, kExp = 2, kPow = 3 };

struct Model {
  int64_t kind;
  float dw_min, dw_min_std, gamma_up, gamma_down;

  // Noise-free response of x in [0, 1] to n >= 0 pulses of size a at mid-range (the `_up` /
  // `_down` closed forms of the device classes).
  inline float Curve(float x, float n, float a, float gamma) const {
    switch (kind) {
      case kLinear: {
        if (gamma == 0.0f) return x + n * a;
        const float xs = (1.0f + gamma) / (2.0f * gamma);
        return xs + (x - xs) * std::pow(1.0f - 2.0f * a * gamma, n);
      }
      case kExp:
        return 0.5f + std::log(std::exp(gamma * (x - 0.5f)) + a * gamma * n) / gamma;
      case kPow: {
        const float y = 1.0f - x;
        float yn;
        if (gamma == 1.0f) {
          yn = y * std::exp(-2.0f * a * n);
        } else {
          const float e = 1.0f - gamma;
          const float base = std::pow(y, e) - e * a * std::pow(2.0f, gamma) * n;
          yn = std::pow(std::max(base, 0.0f), 1.0f / e);
        }
        return 1.0f - yn;
      }
      default:
        return x + n * a;
    }
  }
};

inline float Clamp(float v, float lo, float hi) { return std::min(std::max(v, lo), hi); }

struct Variation {
  const float *dw_scale, *up_down, *g_min, *g_max;
  const uint8_t *stuck_on, *stuck_off;  // PRED buffers: one byte per device, 0 or 1
};

// Device._step_two of device i (ConstantStep._step_two for constant steps): n1 pulses, then
// n2 in the other direction (pot_first: the first train potentiates), noise z. Written without
// branches so that the compiler vectorises the dense block loop (with -fno-trapping-math).
template <int64_t kKind, bool kPotFirst>
inline float StepTwo(const Model& m, const Variation& v, size_t i, float g, float n1, float n2,
                     float z) {
  const float lo = v.g_min[i], hi = v.g_max[i];
  const float on = v.stuck_on[i], off = v.stuck_off[i];
  float out;
  if constexpr (kKind == kConstant) {  // in conductance units, as ConstantStep._step_two
    const float g0 = Clamp(g, lo, hi);
    const float s = m.dw_min * v.dw_scale[i];
    const float s_up = s * (1.0f + v.up_down[i]), s_down = s * (1.0f - v.up_down[i]);
    const float g1 = Clamp(kPotFirst ? g0 + n1 * s_up : g0 - n1 * s_down, lo, hi);
    float g2 = kPotFirst ? g1 - n2 * s_down : g1 + n2 * s_up;
    const float d1 = g1 - g0, d2 = g2 - g1;
    const float var = d1 * d1 / std::max(n1, 1.0f) + d2 * d2 / std::max(n2, 1.0f);
    g2 = g2 + m.dw_min_std * std::sqrt(var) * z;
    out = Clamp(g2, lo, hi);
  } else {  // in range units, as Device._step_two
    const float rng = hi - lo;
    const float x0 = Clamp((g - lo) / rng, 0.0f, 1.0f);
    const float base = m.dw_min * v.dw_scale[i] / rng;
    const float a_up = base * (1.0f + v.up_down[i]), a_down = base * (1.0f - v.up_down[i]);
    float x1, x2;
    if constexpr (kPotFirst) {
      x1 = Clamp(m.Curve(x0, n1, a_up, m.gamma_up), 0.0f, 1.0f);
      x2 = 1.0f - m.Curve(1.0f - x1, n2, a_down, m.gamma_down);
    } else {
      x1 = Clamp(1.0f - m.Curve(1.0f - x0, n1, a_down, m.gamma_down), 0.0f, 1.0f);
      x2 = m.Curve(x1, n2, a_up, m.gamma_up);
    }
    const float d1 = x1 - x0, d2 = x2 - x1;
    const float var = d1 * d1 / std::max(n1, 1.0f) + d2 * d2 / std::max(n2, 1.0f);
    x2 = Clamp(x2 + m.dw_min_std * std::sqrt(var) * z, 0.0f, 1.0f);
    out = Clamp(lo + rng * x2, lo, hi);
  }
  out = on != 0.0f ? hi : out;
  return off != 0.0f ? lo : out;
}

// One device pair: counts -> new G+ and G- (weight-raising pulses first on both, as the fast
// path's _apply_counts: G+ potentiates with "up" pulses, G- depresses).
template <int64_t kKind>
inline void ApplyOne(const Model& m, const Variation& vp, const Variation& vm,
                     const NoiseStream& noise, uint32_t n_dev, size_t k, uint64_t cnt,
                     float* gp, float* gm) {
  const float n_up = static_cast<float>(static_cast<int32_t>(cnt & 0xFFFFFFFFu));
  const float n_down =
      static_cast<float>(static_cast<int32_t>((cnt >> 32) - (cnt & 0xFFFFFFFFu)));
  const float zp = noise.Normal(static_cast<uint32_t>(k));
  const float zm = noise.Normal(n_dev + static_cast<uint32_t>(k));
  gp[k] = StepTwo<kKind, true>(m, vp, k, gp[k], n_up, n_down, zp);
  gm[k] = StepTwo<kKind, false>(m, vm, k, gm[k], n_up, n_down, zm);
}

// Below this many touched devices among 64 neighbours of a row, they are moved one by one;
// above it the 64 go through the vectorised loop (untouched lanes keep their value).
constexpr int kDenseBlock = 12;
constexpr size_t kMaxThreads = 8;
constexpr size_t kPerThread = 20000;  // pair tests that pay for starting a thread
constexpr uint64_t kUp = (uint64_t{1} << 32) | 1u, kDown = uint64_t{1} << 32;

// The pulses of one update, grouped for the row-major pass.
struct Events {
  size_t n_in, n_out, th, tw, C, n_dev;
  // Per group g = b W + w (sample b, train word w): the columns whose word is non-zero, in
  // ascending order; those of tile column c are [grp_tile[g (C+1) + c], grp_tile[g (C+1) + c + 1]).
  std::vector<uint32_t> grp_start, grp_tile, col_word, col_j;
  std::vector<uint8_t> col_neg;
  // Per row i: the groups in which its word is non-zero, with that word and the row's sign.
  std::vector<uint32_t> row_start, ev_grp, ev_word;
  std::vector<uint8_t> ev_neg;
};


// Count and apply the pulses of tiles [t0, t1) (row-major tile index r C + c). Tile by tile,
// row by row: a row's counts live in a small buffer (one entry per column of the tile, in L1)
// and its devices are moved as soon as the row is counted. Each device array is then read as
// one forward stream per tile (rows of a tile are contiguous), which the hardware prefetcher
// follows, and only the row segments where a pulse landed are visited.
template <int64_t kKind>
int64_t Tiles(const Events& e, const Model& m, const Variation& vp, const Variation& vm,
              const NoiseStream& noise, float* gp, float* gm, size_t t0, size_t t1) {
  const size_t tw = e.tw, C = e.C;
  std::vector<uint64_t> cnt(tw, 0u), bits((tw + 63) / 64, 0u);
  const uint32_t nd = static_cast<uint32_t>(e.n_dev);
  const bool blocks = tw % 64 == 0;
  int64_t n_coinc = 0;
  for (size_t t = t0; t < t1; ++t) {
    const size_t r = t / C, c = t % C;
    const size_t j_base = c * tw;
    for (size_t i = r * e.th; i < (r + 1) * e.th; ++i) {
      if (e.row_start[i] == e.row_start[i + 1]) continue;
      bool any = false;
      for (uint32_t ev = e.row_start[i]; ev < e.row_start[i + 1]; ++ev) {
        const uint32_t xw = e.ev_word[ev];
        const uint8_t neg = e.ev_neg[ev];
        const uint32_t* range = e.grp_tile.data() + e.ev_grp[ev] * (C + 1) + c;
        for (uint32_t q = range[0]; q < range[1]; ++q) {
          const uint32_t n = static_cast<uint32_t>(__builtin_popcount(xw & e.col_word[q]));
          if (!n) continue;
          const size_t j = e.col_j[q] - j_base;
          // Signs agree: the weight rises ("up"); else it falls.
          cnt[j] += n * (e.col_neg[q] == neg ? kUp : kDown);
          bits[j >> 6] |= uint64_t{1} << (j & 63);
          n_coinc += n;
          any = true;
        }
      }
      if (!any) continue;
      // Device (i, j_base + j) of this tile sits at k0 + j.
      const size_t k0 = t * e.th * tw + (i % e.th) * tw;
      for (size_t wj = 0; wj < bits.size(); ++wj) {
        uint64_t word = bits[wj];
        if (!word) continue;
        bits[wj] = 0u;
        const size_t j0 = wj * 64;
        if (blocks && __builtin_popcountll(word) > kDenseBlock) {
          uint64_t* cj = cnt.data() + j0;
          const size_t kb = k0 + j0;
#pragma omp simd
          for (size_t l = 0; l < 64; ++l) {
            const size_t k = kb + l;
            const uint64_t cc = cj[l];
            const float old_p = gp[k], old_m = gm[k];
            const float n_up = static_cast<float>(static_cast<int32_t>(cc & 0xFFFFFFFFu));
            const float n_down =
                static_cast<float>(static_cast<int32_t>((cc >> 32) - (cc & 0xFFFFFFFFu)));
            const float zp = noise.Normal(static_cast<uint32_t>(k));
            const float zm = noise.Normal(nd + static_cast<uint32_t>(k));
            const float new_p = StepTwo<kKind, true>(m, vp, k, old_p, n_up, n_down, zp);
            const float new_m = StepTwo<kKind, false>(m, vm, k, old_m, n_up, n_down, zm);
            gp[k] = cc ? new_p : old_p;
            gm[k] = cc ? new_m : old_m;
            cj[l] = 0u;
          }
          continue;
        }
        while (word) {
          const size_t j = j0 + static_cast<size_t>(__builtin_ctzll(word));
          word &= word - 1;
          ApplyOne<kKind>(m, vp, vm, noise, nd, k0 + j, cnt[j], gp, gm);
          cnt[j] = 0u;
        }
      }
    }
  }
  return n_coinc;
}

thread_local Events events;

}  // namespace

static ffi::Error EventUpdateImpl(
    ffi::Buffer<ffi::F32> gp_in, ffi::Buffer<ffi::F32> gm_in,
    ffi::Buffer<ffi::U32> wx, ffi::Buffer<ffi::U32> nx, ffi::Buffer<ffi::U32> wd,
    ffi::Buffer<ffi::U32> nd, ffi::Buffer<ffi::U32> seeds,
    ffi::Buffer<ffi::F32> p_dw_scale, ffi::Buffer<ffi::F32> p_up_down,
    ffi::Buffer<ffi::F32> p_g_min, ffi::Buffer<ffi::F32> p_g_max,
    ffi::Buffer<ffi::PRED> p_stuck_on, ffi::Buffer<ffi::PRED> p_stuck_off,
    ffi::Buffer<ffi::F32> m_dw_scale, ffi::Buffer<ffi::F32> m_up_down,
    ffi::Buffer<ffi::F32> m_g_min, ffi::Buffer<ffi::F32> m_g_max,
    ffi::Buffer<ffi::PRED> m_stuck_on, ffi::Buffer<ffi::PRED> m_stuck_off,
    ffi::ResultBuffer<ffi::F32> gp_out, ffi::ResultBuffer<ffi::F32> gm_out,
    ffi::ResultBuffer<ffi::S32> coincidences,
    int64_t kind, float dw_min, float dw_min_std, float gamma_up, float gamma_down) {
  const auto gdims = gp_in.dimensions();
  if (gdims.size() != 4)
    return ffi::Error::InvalidArgument("conductances must be (R, C, rows, cols)");
  const size_t R = gdims[0], C = gdims[1], th = gdims[2], tw = gdims[3];
  const size_t n_dev = R * C * th * tw;
  const auto xd = wx.dimensions(), dd = wd.dimensions();
  if (xd.size() != 3 || dd.size() != 3 || xd[0] != dd[0] || xd[1] != dd[1] ||
      xd[2] != R * th || dd[2] != C * tw)
    return ffi::Error::InvalidArgument("trains must be (B, W, R*rows) and (B, W, C*cols)");
  if (kind < kConstant || kind > kPow)
    return ffi::Error::InvalidArgument("unknown device kind");
  if (2 * n_dev >= (size_t{1} << 32))
    return ffi::Error::InvalidArgument("more than 2^31 devices in one array");
  const size_t B = xd[0], W = xd[1], n_in = xd[2], n_out = dd[2];

  float* gp = gp_out->typed_data();
  float* gm = gm_out->typed_data();
  // Aliased in place under jit (no copy); copy only if XLA gave distinct buffers.
  if (gp != gp_in.typed_data()) std::memcpy(gp, gp_in.typed_data(), n_dev * sizeof(float));
  if (gm != gm_in.typed_data()) std::memcpy(gm, gm_in.typed_data(), n_dev * sizeof(float));

  Events& e = events;
  e.n_in = n_in, e.n_out = n_out, e.th = th, e.tw = tw, e.C = C, e.n_dev = n_dev;
  // Columns with a pulse, per group; then, per row, the groups in which it pulses (only
  // groups with some column: a row word meeting no column word cannot coincide).
  const uint32_t *px = wx.typed_data(), *pnx = nx.typed_data();
  const uint32_t *pd = wd.typed_data(), *pnd = nd.typed_data();
  const size_t G = B * W;
  e.grp_start.assign(G + 1, 0u);
  e.col_word.clear();
  e.col_j.clear();
  e.col_neg.clear();
  for (size_t g = 0; g < G; ++g) {
    const uint32_t* rd = pd + g * n_out;
    const uint32_t* sd = pnd + (g / W) * n_out;
    for (size_t j = 0; j < n_out; ++j)
      if (rd[j]) {
        e.col_word.push_back(rd[j]);
        e.col_j.push_back(static_cast<uint32_t>(j));
        e.col_neg.push_back(sd[j] != 0);
      }
    e.grp_start[g + 1] = static_cast<uint32_t>(e.col_word.size());
  }
  e.grp_tile.resize(G * (C + 1));
  for (size_t g = 0; g < G; ++g) {
    uint32_t q = e.grp_start[g];
    for (size_t c = 0; c <= C; ++c) {
      while (q < e.grp_start[g + 1] && e.col_j[q] < c * tw) ++q;
      e.grp_tile[g * (C + 1) + c] = q;
    }
  }
  e.row_start.assign(n_in + 1, 0u);
  for (size_t g = 0; g < G; ++g) {
    if (e.grp_start[g] == e.grp_start[g + 1]) continue;
    const uint32_t* rx = px + g * n_in;
    for (size_t i = 0; i < n_in; ++i) e.row_start[i + 1] += rx[i] != 0;
  }
  for (size_t i = 0; i < n_in; ++i) e.row_start[i + 1] += e.row_start[i];
  const size_t n_ev = e.row_start[n_in];
  e.ev_grp.resize(n_ev);
  e.ev_word.resize(n_ev);
  e.ev_neg.resize(n_ev);
  {
    std::vector<uint32_t> fill(e.row_start.begin(), e.row_start.end() - 1);
    for (size_t g = 0; g < G; ++g) {
      if (e.grp_start[g] == e.grp_start[g + 1]) continue;
      const uint32_t* rx = px + g * n_in;
      const uint32_t* sx = pnx + (g / W) * n_in;
      for (size_t i = 0; i < n_in; ++i)
        if (rx[i]) {
          const uint32_t at = fill[i]++;
          e.ev_grp[at] = static_cast<uint32_t>(g);
          e.ev_word[at] = rx[i];
          e.ev_neg[at] = sx[i] != 0;
        }
    }
  }

  const Model m{kind, dw_min, dw_min_std, gamma_up, gamma_down};
  const Variation vp{p_dw_scale.typed_data(), p_up_down.typed_data(), p_g_min.typed_data(),
                     p_g_max.typed_data(),
                     reinterpret_cast<const uint8_t*>(p_stuck_on.typed_data()),
                     reinterpret_cast<const uint8_t*>(p_stuck_off.typed_data())};
  const Variation vm{m_dw_scale.typed_data(), m_up_down.typed_data(), m_g_min.typed_data(),
                     m_g_max.typed_data(),
                     reinterpret_cast<const uint8_t*>(m_stuck_on.typed_data()),
                     reinterpret_cast<const uint8_t*>(m_stuck_off.typed_data())};
  // The fast path's noise: stream 3 over shape (2, R, C, rows, cols), G+ first. With
  // dw_min_std = 0 it is multiplied by zero.
  const NoiseStream noise(seeds.typed_data(), 3u);

  // Tiles are independent (disjoint devices): split them over threads by equal numbers of
  // row-column word tests. XLA:CPU runs a custom call on one thread while the rest of a
  // training step waits for it.
  const size_t n_tiles = R * C;
  std::vector<uint64_t> work(n_tiles + 1, 0u);
  for (size_t t = 0; t < n_tiles; ++t) {
    const size_t r = t / C, c = t % C;
    uint64_t wsum = 0;
    for (uint32_t ev = e.row_start[r * th]; ev < e.row_start[(r + 1) * th]; ++ev) {
      const uint32_t* range = e.grp_tile.data() + e.ev_grp[ev] * (C + 1) + c;
      wsum += range[1] - range[0];
    }
    work[t + 1] = work[t] + wsum;
  }
  const uint64_t total = work[n_tiles];
  const size_t hw = std::max<size_t>(1, std::thread::hardware_concurrency());
  const size_t n_threads = std::min<size_t>({hw, kMaxThreads, 1 + total / kPerThread});
  std::vector<size_t> cuts{0};
  for (size_t t = 1; t <= n_tiles && cuts.size() < n_threads; ++t)
    if (work[t] * n_threads >= cuts.size() * total) cuts.push_back(t);
  cuts.push_back(n_tiles);
  std::vector<int64_t> counted(cuts.size() - 1, 0);
  auto run = [&](size_t t) {
    const size_t a = cuts[t], b = cuts[t + 1];
    switch (kind) {
      case kLinear:
        counted[t] = Tiles<kLinear>(e, m, vp, vm, noise, gp, gm, a, b);
        break;
      case kExp:
        counted[t] = Tiles<kExp>(e, m, vp, vm, noise, gp, gm, a, b);
        break;
      case kPow:
        counted[t] = Tiles<kPow>(e, m, vp, vm, noise, gp, gm, a, b);
        break;
      default:
        counted[t] = Tiles<kConstant>(e, m, vp, vm, noise, gp, gm, a, b);
    }
  };
  std::vector<std::thread> workers;
  for (size_t t = 1; t + 1 < cuts.size(); ++t) workers.emplace_back(run, t);
  run(0);
  for (auto& w : workers) w.join();
  int64_t n_coinc = 0;
  for (int64_t c : counted) n_coinc += c;
  *coincidences->typed_data() = static_cast<int32_t>(n_coinc);
  return ffi::Error::Success();
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    BeyondbpEventUpdate, EventUpdateImpl,
    ffi::Ffi::Bind()
        .Arg<ffi::Buffer<ffi::F32>>()
        .Arg<ffi::Buffer<ffi::F32>>()
        .Arg<ffi::Buffer<ffi::U32>>()
        .Arg<ffi::Buffer<ffi::U32>>()
        .Arg<ffi::Buffer<ffi::U32>>()
        .Arg<ffi::Buffer<ffi::U32>>()
        .Arg<ffi::Buffer<ffi::U32>>()
        .Arg<ffi::Buffer<ffi::F32>>()
        .Arg<ffi::Buffer<ffi::F32>>()
        .Arg<ffi::Buffer<ffi::F32>>()
        .Arg<ffi::Buffer<ffi::F32>>()
        .Arg<ffi::Buffer<ffi::PRED>>()
        .Arg<ffi::Buffer<ffi::PRED>>()
        .Arg<ffi::Buffer<ffi::F32>>()
        .Arg<ffi::Buffer<ffi::F32>>()
        .Arg<ffi::Buffer<ffi::F32>>()
        .Arg<ffi::Buffer<ffi::F32>>()
        .Arg<ffi::Buffer<ffi::PRED>>()
        .Arg<ffi::Buffer<ffi::PRED>>()
        .Ret<ffi::Buffer<ffi::F32>>()
        .Ret<ffi::Buffer<ffi::F32>>()
        .Ret<ffi::Buffer<ffi::S32>>()
        .Attr<int64_t>("kind")
        .Attr<float>("dw_min")
        .Attr<float>("dw_min_std")
        .Attr<float>("gamma_up")
        .Attr<float>("gamma_down"));
