// Native CPU kernels for jaxkmeans, registered with XLA through the FFI.
//
// jaxkmeans_assign_f32: nearest center of every row (labels, squared distance).
// jaxkmeans_lloyd_f32:  the same, plus per-center weighted sums, weights and the loss.
// jaxkmeans_pp_round_f32: one greedy k-means++ round in one pass over the rows: the lazy
//   D^2 update by the previous pick, the candidates' potentials and block totals.
// jaxkmeans_sparse_assign_f32 / jaxkmeans_sparse_lloyd_f32: the first two for CSR rows
//   (see the section on sparse rows).
//
// The distance search never forms the (n, k) matrix: a register-blocked micro-kernel
// computes a 6 x 16 tile of <x', c'> + bias and folds it at once into a running
// (min, first index) per row, lane by lane. Centers are packed once per call into
// 16-wide panels; rows are shifted by `offset` (the data frame) while being packed.
// The nearest distance is then recomputed directly as ||x' - c||^2, as the pure-JAX
// path does. Per-center sums are formed by a second pass partitioned by center, so
// every sum adds its rows in row order: the results do not depend on the number of
// threads or on scheduling (bit-reproducible).
//
// An AVX2+FMA micro-kernel is chosen at run time when the CPU has it; otherwise a
// portable one (same results up to float rounding of the dot products).

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define JKM_X86 1
#endif

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kMR = 6;   // rows per micro-tile
constexpr int64_t kNR = 16;  // centers per micro-tile (two 8-float vectors)
constexpr int64_t kRowsPerBlock = 16 * kMR;  // rows per parallel work item
// Features up to which the narrow (3-row, register-resident state) kernel is used.
static int64_t kNarrowMaxD = [] {
  const char* s = std::getenv("JAXKMEANS_NATIVE_NARROW_MAX_D");
  return s ? std::atoll(s) : int64_t{16};
}();

// Runs f(block) for block in [0, num_blocks) on the caller and up to
// `pool.num_threads()` pool threads. Blocks are claimed from a shared counter; the
// caller only waits for blocks that another thread has claimed, so it never waits on
// a task that has not started (no deadlock when the pool is busy).
template <typename F>
void ParallelFor(ffi::ThreadPool& pool, int64_t num_blocks, const F& f) {
  if (num_blocks <= 0) return;
  struct State {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
    std::mutex mu;
    std::condition_variable cv;
  };
  auto state = std::make_shared<State>();
  auto work = [state, num_blocks, &f]() {
    while (true) {
      int64_t b = state->next.fetch_add(1);
      if (b >= num_blocks) return;
      f(b);
      if (state->done.fetch_add(1) + 1 == num_blocks) {
        std::lock_guard<std::mutex> lock(state->mu);
        state->cv.notify_all();
      }
    }
  };
  int64_t helpers = std::min<int64_t>(pool.num_threads(), num_blocks - 1);
  for (int64_t h = 0; h < helpers; ++h) pool.Schedule([work]() { work(); });
  work();
  std::unique_lock<std::mutex> lock(state->mu);
  state->cv.wait(lock, [&] { return state->done.load() == num_blocks; });
}

struct Problem {
  const float* x;       // (n, d) raw rows
  const float* offset;  // (d,) frame origin
  const float* cp;      // (k, d) prepared centers, -2 (c - offset)
  const float* bias;    // (kpad,) ||c - offset||^2, +inf for padding
  const float* packed;  // (kpad / 16, d, 16) panels of cp
  int64_t n, d, k, kpad;
  int32_t* labels;  // (n,)
  float* dist;      // (n,)
  const int32_t* index = nullptr;  // (n,) or null: row i is x row index[i]
};

// Row i of the problem (through its index, when it has one).
inline const float* RowOf(const Problem& p, int64_t i) {
  return p.x + (p.index ? static_cast<int64_t>(p.index[i]) : i) * p.d;
}

// Packs `m` rows starting at `row` into xs (kMR, d), shifted to the frame; missing
// rows are zero.
inline void PackRows(const Problem& p, int64_t row, int64_t m, float* xs) {
  for (int64_t r = 0; r < kMR; ++r) {
    float* dst = xs + r * p.d;
    if (r < m) {
      const float* src = RowOf(p, row + r);
      for (int64_t j = 0; j < p.d; ++j) dst[j] = src[j] - p.offset[j];
    } else {
      std::memset(dst, 0, sizeof(float) * p.d);
    }
  }
}

// Lowest index among the lanes holding the minimum value.
inline void ReduceLanes(const float* v, const int32_t* ix, int lanes, float* best,
                        int32_t* arg) {
  float bv = v[0];
  int32_t bi = ix[0];
  for (int l = 1; l < lanes; ++l) {
    if (v[l] < bv || (v[l] == bv && ix[l] < bi)) {
      bv = v[l];
      bi = ix[l];
    }
  }
  *best = bv;
  *arg = bi;
}

// ||x' - c||^2 with c = -cp / 2, for the rows of one packed tile.
inline void FinishRows(const Problem& p, int64_t row, int64_t m, const float* xs,
                       const int32_t* arg) {
  for (int64_t r = 0; r < m; ++r) {
    const float* c = p.cp + static_cast<int64_t>(arg[r]) * p.d;
    const float* xr = xs + r * p.d;
    float s = 0.0f;
    for (int64_t j = 0; j < p.d; ++j) {
      float diff = xr[j] + 0.5f * c[j];
      s += diff * diff;
    }
    p.labels[row + r] = arg[r];
    p.dist[row + r] = s;
  }
}

// NaN rule, shared by every kernel: a NaN score never wins while any center has a
// non-NaN score; ties go to the lowest index; if every score is NaN the label is 0 (its
// distance, recomputed from center 0, is then NaN too). The micro-kernels keep NaN out
// of their running minima, whose lanes start at +inf; so only a row whose best score
// is not finite needs this scalar pass (the lowest center with a non-NaN, i.e. +inf,
// score, else 0). It never runs for finite inputs whose distances do not overflow.
inline int32_t RescueRow(const Problem& p, const float* xr) {
  for (int64_t c = 0; c < p.k; ++c) {
    const float* cc = p.cp + c * p.d;
    float s = p.bias[c];
    for (int64_t j = 0; j < p.d; ++j) s += xr[j] * cc[j];
    if (!std::isnan(s)) return static_cast<int32_t>(c);
  }
  return 0;
}

inline int32_t Checked(const Problem& p, float best, int32_t arg, const float* xr) {
  return best < std::numeric_limits<float>::infinity() ? arg : RescueRow(p, xr);
}

// Portable micro-kernel: same blocking, scalar code the compiler may vectorize.
void NearestRowsGeneric(const Problem& p, int64_t r0, int64_t r1, float* xs) {
  const int64_t d = p.d;
  for (int64_t row = r0; row < r1; row += kMR) {
    const int64_t m = std::min(kMR, r1 - row);
    PackRows(p, row, m, xs);
    float bestv[kMR][kNR];
    int32_t besti[kMR][kNR];
    for (int64_t r = 0; r < kMR; ++r)
      for (int64_t l = 0; l < kNR; ++l) {
        bestv[r][l] = std::numeric_limits<float>::infinity();
        besti[r][l] = static_cast<int32_t>(l);
      }
    for (int64_t q = 0; q < p.kpad / kNR; ++q) {
      const float* panel = p.packed + q * d * kNR;
      float acc[kMR][kNR];
      for (int64_t r = 0; r < kMR; ++r)
        for (int64_t l = 0; l < kNR; ++l) acc[r][l] = p.bias[q * kNR + l];
      for (int64_t j = 0; j < d; ++j) {
        const float* b = panel + j * kNR;
        for (int64_t r = 0; r < kMR; ++r) {
          const float a = xs[r * d + j];
          for (int64_t l = 0; l < kNR; ++l) acc[r][l] += a * b[l];
        }
      }
      for (int64_t r = 0; r < kMR; ++r)
        for (int64_t l = 0; l < kNR; ++l) {
          const float v = acc[r][l];
          if (v < bestv[r][l]) {
            bestv[r][l] = v;
            besti[r][l] = static_cast<int32_t>(q * kNR + l);
          }
        }
    }
    int32_t arg[kMR];
    for (int64_t r = 0; r < m; ++r) {
      float best;
      ReduceLanes(bestv[r], besti[r], kNR, &best, &arg[r]);
      arg[r] = Checked(p, best, arg[r], xs + r * d);
    }
    FinishRows(p, row, m, xs, arg);
  }
}

#ifdef JKM_X86
// Lowest index among the lanes of `bi` whose `bv` equals the minimum of `bv`.
// `*best` receives the minimum.
__attribute__((target("avx2,fma"))) inline int32_t ArgMin8(__m256 bv, __m256i bi, float* best) {
  __m256 mv = _mm256_min_ps(bv, _mm256_permute2f128_ps(bv, bv, 1));
  mv = _mm256_min_ps(mv, _mm256_shuffle_ps(mv, mv, _MM_SHUFFLE(1, 0, 3, 2)));
  mv = _mm256_min_ps(mv, _mm256_shuffle_ps(mv, mv, _MM_SHUFFLE(2, 3, 0, 1)));
  *best = _mm256_cvtss_f32(mv);
  const __m256i big = _mm256_set1_epi32(std::numeric_limits<int32_t>::max());
  __m256i mi = _mm256_castps_si256(_mm256_blendv_ps(
      _mm256_castsi256_ps(big), _mm256_castsi256_ps(bi), _mm256_cmp_ps(bv, mv, _CMP_EQ_OQ)));
  mi = _mm256_min_epi32(mi, _mm256_permute2x128_si256(mi, mi, 1));
  mi = _mm256_min_epi32(mi, _mm256_shuffle_epi32(mi, _MM_SHUFFLE(1, 0, 3, 2)));
  mi = _mm256_min_epi32(mi, _mm256_shuffle_epi32(mi, _MM_SHUFFLE(2, 3, 0, 1)));
  const int32_t a = _mm256_cvtsi256_si32(mi);
  return a == std::numeric_limits<int32_t>::max() ? 0 : a;  // all-NaN rows only
}

// The same over two vectors of lanes (`bi1` need not hold the larger indices).
__attribute__((target("avx2,fma"))) inline int32_t ArgMin16(__m256 bv0, __m256 bv1, __m256i bi0,
                                                           __m256i bi1, float* best) {
  const __m256 lt = _mm256_cmp_ps(bv1, bv0, _CMP_LT_OQ);
  const __m256 eq = _mm256_cmp_ps(bv1, bv0, _CMP_EQ_OQ);
  const __m256 lower = _mm256_castsi256_ps(_mm256_cmpgt_epi32(bi0, bi1));
  const __m256 take1 = _mm256_or_ps(lt, _mm256_and_ps(eq, lower));
  const __m256 bv = _mm256_blendv_ps(bv0, bv1, take1);
  const __m256i bi = _mm256_castps_si256(
      _mm256_blendv_ps(_mm256_castsi256_ps(bi0), _mm256_castsi256_ps(bi1), take1));
  return ArgMin8(bv, bi, best);
}

// FinishRows with 8-lane partial sums (a scalar sum is one long dependency chain,
// which dominates when k is small and d large).
__attribute__((target("avx2,fma"))) void FinishRowsAvx2(const Problem& p, int64_t row,
                                                        int64_t m, const float* xs,
                                                        const int32_t* arg) {
  const __m256 half = _mm256_set1_ps(0.5f);
  for (int64_t r = 0; r < m; ++r) {
    const float* c = p.cp + static_cast<int64_t>(arg[r]) * p.d;
    const float* xr = xs + r * p.d;
    __m256 acc = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 8 <= p.d; j += 8) {
      const __m256 diff =
          _mm256_fmadd_ps(half, _mm256_loadu_ps(c + j), _mm256_loadu_ps(xr + j));
      acc = _mm256_fmadd_ps(diff, diff, acc);
    }
    __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    s4 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    s4 = _mm_add_ss(s4, _mm_movehdup_ps(s4));
    float s = _mm_cvtss_f32(s4);
    for (; j < p.d; ++j) {
      const float diff = xr[j] + 0.5f * c[j];
      s += diff * diff;
    }
    p.labels[row + r] = arg[r];
    p.dist[row + r] = s;
  }
}

__attribute__((target("avx2,fma"))) void NearestRowsAvx2(const Problem& p, int64_t r0,
                                                         int64_t r1, float* xs) {
  const int64_t d = p.d;
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i eight = _mm256_set1_epi32(8);
  const __m256i sixteen = _mm256_set1_epi32(16);
  for (int64_t row = r0; row < r1; row += kMR) {
    const int64_t m = std::min(kMR, r1 - row);
    PackRows(p, row, m, xs);
    const float* x0 = xs;
    const float* x1 = xs + d;
    const float* x2 = xs + 2 * d;
    const float* x3 = xs + 3 * d;
    const float* x4 = xs + 4 * d;
    const float* x5 = xs + 5 * d;
    __m256 bv[kMR][2];
    __m256i bi[kMR][2];
    const __m256 inf = _mm256_set1_ps(std::numeric_limits<float>::infinity());
    for (int r = 0; r < kMR; ++r) {
      bv[r][0] = inf;
      bv[r][1] = inf;
      bi[r][0] = lane;
      bi[r][1] = _mm256_add_epi32(lane, eight);
    }
    __m256i idx0 = lane;
    __m256i idx1 = _mm256_add_epi32(lane, eight);
    for (int64_t q = 0; q < p.kpad / kNR; ++q) {
      const float* b = p.packed + q * d * kNR;
      // The accumulators start at the bias, so they end at <x', c'> + bias.
      const __m256 bias0 = _mm256_loadu_ps(p.bias + q * kNR);
      const __m256 bias1 = _mm256_loadu_ps(p.bias + q * kNR + 8);
      __m256 c00 = bias0, c01 = bias1, c10 = bias0, c11 = bias1, c20 = bias0, c21 = bias1;
      __m256 c30 = bias0, c31 = bias1, c40 = bias0, c41 = bias1, c50 = bias0, c51 = bias1;
      for (int64_t j = 0; j < d; ++j, b += kNR) {
        const __m256 b0 = _mm256_loadu_ps(b);
        const __m256 b1 = _mm256_loadu_ps(b + 8);
        __m256 a = _mm256_broadcast_ss(x0 + j);
        c00 = _mm256_fmadd_ps(a, b0, c00);
        c01 = _mm256_fmadd_ps(a, b1, c01);
        a = _mm256_broadcast_ss(x1 + j);
        c10 = _mm256_fmadd_ps(a, b0, c10);
        c11 = _mm256_fmadd_ps(a, b1, c11);
        a = _mm256_broadcast_ss(x2 + j);
        c20 = _mm256_fmadd_ps(a, b0, c20);
        c21 = _mm256_fmadd_ps(a, b1, c21);
        a = _mm256_broadcast_ss(x3 + j);
        c30 = _mm256_fmadd_ps(a, b0, c30);
        c31 = _mm256_fmadd_ps(a, b1, c31);
        a = _mm256_broadcast_ss(x4 + j);
        c40 = _mm256_fmadd_ps(a, b0, c40);
        c41 = _mm256_fmadd_ps(a, b1, c41);
        a = _mm256_broadcast_ss(x5 + j);
        c50 = _mm256_fmadd_ps(a, b0, c50);
        c51 = _mm256_fmadd_ps(a, b1, c51);
      }
#define JKM_UPDATE(r, v, h, idxv)                                              \
  {                                                                            \
    const __m256 lt = _mm256_cmp_ps(v, bv[r][h], _CMP_LT_OQ);                  \
    bv[r][h] = _mm256_min_ps(v, bv[r][h]);                                     \
    bi[r][h] = _mm256_castps_si256(_mm256_blendv_ps(                           \
        _mm256_castsi256_ps(bi[r][h]), _mm256_castsi256_ps(idxv), lt));        \
  }
      JKM_UPDATE(0, c00, 0, idx0) JKM_UPDATE(0, c01, 1, idx1)
      JKM_UPDATE(1, c10, 0, idx0) JKM_UPDATE(1, c11, 1, idx1)
      JKM_UPDATE(2, c20, 0, idx0) JKM_UPDATE(2, c21, 1, idx1)
      JKM_UPDATE(3, c30, 0, idx0) JKM_UPDATE(3, c31, 1, idx1)
      JKM_UPDATE(4, c40, 0, idx0) JKM_UPDATE(4, c41, 1, idx1)
      JKM_UPDATE(5, c50, 0, idx0) JKM_UPDATE(5, c51, 1, idx1)
#undef JKM_UPDATE
      idx0 = _mm256_add_epi32(idx0, sixteen);
      idx1 = _mm256_add_epi32(idx1, sixteen);
    }
    int32_t arg[kMR];
    for (int64_t r = 0; r < m; ++r) {
      float best;
      arg[r] = ArgMin16(bv[r][0], bv[r][1], bi[r][0], bi[r][1], &best);
      arg[r] = Checked(p, best, arg[r], xs + r * d);
    }
    FinishRowsAvx2(p, row, m, xs, arg);
  }
}

// Narrow-feature variant: two 3-row tiles per packed 6-row block. Each 16-center tile
// row is folded into 8 lanes of running state (lower half, then upper half), so
// the running (min, index) state of 3 rows stays in registers with the accumulators:
// for small d, where the state updates rather than the FMAs dominate, this avoids the
// spills of the 6-row kernel.
// kD > 0 fixes d at compile time (the feature loop is then fully unrolled: for d <= 4
// its loop overhead is comparable to the work).
template <int kD>
__attribute__((target("avx2,fma"))) void NearestRowsAvx2Narrow(const Problem& p, int64_t r0,
                                                               int64_t r1, float* xs) {
  const int64_t d = kD > 0 ? kD : p.d;
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i eight = _mm256_set1_epi32(8);
  const __m256i sixteen = _mm256_set1_epi32(16);
  const __m256 inf = _mm256_set1_ps(std::numeric_limits<float>::infinity());
  for (int64_t row = r0; row < r1; row += kMR) {
    const int64_t m = std::min(kMR, r1 - row);
    PackRows(p, row, m, xs);
    int32_t arg[kMR];
    for (int64_t half = 0; half < 2; ++half) {
      if (3 * half >= m) break;
      const float* x0 = xs + (3 * half) * d;
      const float* x1 = x0 + d;
      const float* x2 = x1 + d;
      __m256 bv0 = inf, bv1 = inf, bv2 = inf;
      __m256i bi0 = lane, bi1 = lane, bi2 = lane;
      __m256i idx0 = lane;
      __m256i idx1 = _mm256_add_epi32(lane, eight);
      for (int64_t q = 0; q < p.kpad / kNR; ++q) {
        const float* b = p.packed + q * d * kNR;
        const __m256 bias0 = _mm256_loadu_ps(p.bias + q * kNR);
        const __m256 bias1 = _mm256_loadu_ps(p.bias + q * kNR + 8);
        __m256 c00 = bias0, c01 = bias1, c10 = bias0, c11 = bias1, c20 = bias0, c21 = bias1;
        for (int64_t j = 0; j < d; ++j, b += kNR) {
          const __m256 b0 = _mm256_loadu_ps(b);
          const __m256 b1 = _mm256_loadu_ps(b + 8);
          __m256 a = _mm256_broadcast_ss(x0 + j);
          c00 = _mm256_fmadd_ps(a, b0, c00);
          c01 = _mm256_fmadd_ps(a, b1, c01);
          a = _mm256_broadcast_ss(x1 + j);
          c10 = _mm256_fmadd_ps(a, b0, c10);
          c11 = _mm256_fmadd_ps(a, b1, c11);
          a = _mm256_broadcast_ss(x2 + j);
          c20 = _mm256_fmadd_ps(a, b0, c20);
          c21 = _mm256_fmadd_ps(a, b1, c21);
        }
// Folds one 16-center tile row into the 8-lane running (min, first index) state:
// the lower half first, then the upper half (higher indices), each with a strict
// "less than", so ties keep the lowest index. A NaN score never enters the state
// (_mm256_min_ps returns its second operand, the state, when the first is NaN, and the
// ordered compare is false), so a finite center is never dropped for a NaN partner.
#define JKM_FOLD(v0, v1, bv, bi)                                                  \
  {                                                                               \
    const __m256 lt0 = _mm256_cmp_ps(v0, bv, _CMP_LT_OQ);                         \
    bv = _mm256_min_ps(v0, bv);                                                   \
    bi = _mm256_castps_si256(                                                     \
        _mm256_blendv_ps(_mm256_castsi256_ps(bi), _mm256_castsi256_ps(idx0), lt0)); \
    const __m256 lt1 = _mm256_cmp_ps(v1, bv, _CMP_LT_OQ);                         \
    bv = _mm256_min_ps(v1, bv);                                                   \
    bi = _mm256_castps_si256(                                                     \
        _mm256_blendv_ps(_mm256_castsi256_ps(bi), _mm256_castsi256_ps(idx1), lt1)); \
  }
        JKM_FOLD(c00, c01, bv0, bi0)
        JKM_FOLD(c10, c11, bv1, bi1)
        JKM_FOLD(c20, c21, bv2, bi2)
#undef JKM_FOLD
        idx0 = _mm256_add_epi32(idx0, sixteen);
        idx1 = _mm256_add_epi32(idx1, sixteen);
      }
      float best[3];
      arg[3 * half] = ArgMin8(bv0, bi0, &best[0]);
      arg[3 * half + 1] = ArgMin8(bv1, bi1, &best[1]);
      arg[3 * half + 2] = ArgMin8(bv2, bi2, &best[2]);
      for (int64_t r = 3 * half; r < std::min<int64_t>(m, 3 * half + 3); ++r) {
        arg[r] = Checked(p, best[r - 3 * half], arg[r], xs + r * d);
      }
    }
    FinishRowsAvx2(p, row, m, xs, arg);
  }
}

// JAXKMEANS_NATIVE_PORTABLE=1 forces the portable kernels (to test them on any CPU).
bool HasAvx2() {
  static const bool has = std::getenv("JAXKMEANS_NATIVE_PORTABLE") == nullptr &&
                          __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
}
#endif

// Centers packed into 16-wide panels (layout (kpad / 16, d, 16)), bias padded with +inf.
struct PackedCenters {
  std::vector<float> packed;
  std::vector<float> bias;
  int64_t kpad;
};

PackedCenters PackCenters(const float* cp, const float* cbias, int64_t k, int64_t d) {
  PackedCenters pc;
  pc.kpad = (k + kNR - 1) / kNR * kNR;
  pc.packed.assign(static_cast<size_t>(pc.kpad * d), 0.0f);
  pc.bias.assign(static_cast<size_t>(pc.kpad), std::numeric_limits<float>::infinity());
  for (int64_t c = 0; c < k; ++c) {
    pc.bias[c] = cbias[c];
    const int64_t q = c / kNR, l = c % kNR;
    for (int64_t j = 0; j < d; ++j) pc.packed[(q * d + j) * kNR + l] = cp[c * d + j];
  }
  return pc;
}

// Labels and distances of rows [r0, r1) with the best kernel for this CPU and d.
void NearestRange(const Problem& p, int64_t r0, int64_t r1, float* xs) {
#ifdef JKM_X86
  if (HasAvx2()) {
    if (p.d <= kNarrowMaxD) {
      switch (p.d) {
        case 1:
          NearestRowsAvx2Narrow<1>(p, r0, r1, xs);
          break;
        case 2:
          NearestRowsAvx2Narrow<2>(p, r0, r1, xs);
          break;
        case 3:
          NearestRowsAvx2Narrow<3>(p, r0, r1, xs);
          break;
        case 4:
          NearestRowsAvx2Narrow<4>(p, r0, r1, xs);
          break;
        default:
          NearestRowsAvx2Narrow<0>(p, r0, r1, xs);
      }
    } else {
      NearestRowsAvx2(p, r0, r1, xs);
    }
    return;
  }
#endif
  NearestRowsGeneric(p, r0, r1, xs);
}

// Fills labels and dist for all rows, in parallel blocks of rows.
void Nearest(ffi::ThreadPool& pool, const Problem& p) {
  const int64_t blocks = (p.n + kRowsPerBlock - 1) / kRowsPerBlock;
  ParallelFor(pool, blocks, [&](int64_t b) {
    std::vector<float> xs(static_cast<size_t>(kMR * p.d));
    const int64_t r0 = b * kRowsPerBlock;
    NearestRange(p, r0, std::min(p.n, r0 + kRowsPerBlock), xs.data());
  });
}

// acc[j] += w * (x[j] - offset[j]) in float64.
inline void AccumulateRowGeneric(double* acc, const float* xi, const float* offset,
                                 double wi, int64_t d) {
  for (int64_t j = 0; j < d; ++j) acc[j] += wi * static_cast<double>(xi[j] - offset[j]);
}

#ifdef JKM_X86
__attribute__((target("avx2,fma"))) void AccumulateRowAvx2(double* acc, const float* xi,
                                                           const float* offset, double wi,
                                                           int64_t d) {
  const __m256d wv = _mm256_set1_pd(wi);
  int64_t j = 0;
  for (; j + 4 <= d; j += 4) {
    const __m128 diff = _mm_sub_ps(_mm_loadu_ps(xi + j), _mm_loadu_ps(offset + j));
    _mm256_storeu_pd(acc + j,
                     _mm256_fmadd_pd(wv, _mm256_cvtps_pd(diff), _mm256_loadu_pd(acc + j)));
  }
  for (; j < d; ++j) acc[j] += wi * static_cast<double>(xi[j] - offset[j]);
}
#endif

// Number of fixed row partitions for the per-center sums: it depends only on the
// problem size (never on the thread count), so the float64 partial sums, added in
// partition order, give the same result on any machine and any scheduling.
int64_t NumPartitions(int64_t n, int64_t k, int64_t d) {
  constexpr int64_t kRowsPerPartition = 8192;
  constexpr int64_t kBudgetBytes = int64_t{64} << 20;
  const int64_t by_rows = (n + kRowsPerPartition - 1) / kRowsPerPartition;
  const int64_t by_memory = kBudgetBytes / (8 * (k * d + 2 * k));
  return std::max<int64_t>(1, std::min<int64_t>({by_rows, by_memory, 64}));
}

// Nearest centers plus per-center sums of w * (x - offset), weights and weighted
// distances. Each fixed row partition accumulates its rows in row order in float64,
// then the partitions are added in order (in parallel over centers). (Finding the
// nearest centers partition by partition, one pass over x instead of two, measured
// no faster here.)
void NearestAndSums(ffi::ThreadPool& pool, const Problem& p, const float* w, float* sums,
                    float* counts, float* loss) {
  const int64_t n = p.n, d = p.d, k = p.k;
  const int64_t parts = NumPartitions(n, k, d);
  const int64_t stride = k * d + 2 * k;  // sums, counts, weighted distances
  std::vector<double> acc(static_cast<size_t>(parts * stride));
#ifdef JKM_X86
  const bool avx2 = HasAvx2();
#endif
  auto add_rows = [&](double* a, int64_t r0, int64_t r1) {
    double* cnt = a + k * d;
    double* cl = cnt + k;
    for (int64_t i = r0; i < r1; ++i) {
      const int64_t c = p.labels[i];
      const double wi = w ? static_cast<double>(w[i]) : 1.0;
#ifdef JKM_X86
      if (avx2) {
        AccumulateRowAvx2(a + c * d, RowOf(p, i), p.offset, wi, d);
      } else {
        AccumulateRowGeneric(a + c * d, RowOf(p, i), p.offset, wi, d);
      }
#else
      AccumulateRowGeneric(a + c * d, RowOf(p, i), p.offset, wi, d);
#endif
      cnt[c] += wi;
      cl[c] += wi * static_cast<double>(p.dist[i]);
    }
  };
  Nearest(pool, p);
  ParallelFor(pool, parts, [&](int64_t part) {
    double* a = acc.data() + part * stride;
    std::fill(a, a + stride, 0.0);
    add_rows(a, n * part / parts, n * (part + 1) / parts);
  });
  const int64_t per = 16;
  const int64_t blocks = (k + per - 1) / per;
  std::vector<double> closs(static_cast<size_t>(k));
  ParallelFor(pool, blocks, [&](int64_t b) {
    const int64_t c0 = b * per, c1 = std::min(k, c0 + per);
    for (int64_t c = c0; c < c1; ++c) {
      for (int64_t j = 0; j < d; ++j) {
        double s = 0.0;
        for (int64_t part = 0; part < parts; ++part) s += acc[part * stride + c * d + j];
        sums[c * d + j] = static_cast<float>(s);
      }
      double cnt = 0.0, cl = 0.0;
      for (int64_t part = 0; part < parts; ++part) {
        cnt += acc[part * stride + k * d + c];
        cl += acc[part * stride + k * d + k + c];
      }
      counts[c] = static_cast<float>(cnt);
      closs[c] = cl;
    }
  });
  double total = 0.0;
  for (int64_t c = 0; c < k; ++c) total += closs[c];
  *loss = static_cast<float>(total);
}

ffi::Error CheckShapes(ffi::Buffer<ffi::F32>& x, ffi::Buffer<ffi::F32>& offset,
                       ffi::Buffer<ffi::F32>& cp, ffi::Buffer<ffi::F32>& bias) {
  auto xd = x.dimensions();
  auto cd = cp.dimensions();
  if (xd.size() != 2 || cd.size() != 2 || xd[1] != cd[1] ||
      offset.element_count() != static_cast<size_t>(xd[1]) ||
      bias.element_count() != static_cast<size_t>(cd[0]) || cd[0] < 1) {
    return ffi::Error::InvalidArgument("jaxkmeans native kernel: inconsistent shapes");
  }
  return ffi::Error::Success();
}

// The nearest centers of n rows of d values from `x` on (every handler below).
ffi::Error AssignRows(ffi::ThreadPool& pool, const float* x, int64_t n, int64_t d,
                      ffi::Buffer<ffi::F32>& offset, ffi::Buffer<ffi::F32>& cp,
                      ffi::Buffer<ffi::F32>& bias, ffi::ResultBuffer<ffi::S32>& labels,
                      ffi::ResultBuffer<ffi::F32>& dist, const int32_t* index = nullptr) {
  const int64_t k = cp.dimensions()[0];
  const PackedCenters pc = PackCenters(cp.typed_data(), bias.typed_data(), k, d);
  const Problem p{x, offset.typed_data(), cp.typed_data(), pc.bias.data(), pc.packed.data(),
                  n, d, k, pc.kpad, labels->typed_data(), dist->typed_data(), index};
  Nearest(pool, p);
  return ffi::Error::Success();
}

// The same plus per-center sums, counts and loss (weights `w` when `weighted`).
ffi::Error LloydRows(ffi::ThreadPool& pool, const float* x, int64_t n, int64_t d,
                     ffi::Buffer<ffi::F32>& w, ffi::Buffer<ffi::F32>& offset,
                     ffi::Buffer<ffi::F32>& cp, ffi::Buffer<ffi::F32>& bias, bool weighted,
                     ffi::ResultBuffer<ffi::S32>& labels, ffi::ResultBuffer<ffi::F32>& dist,
                     ffi::ResultBuffer<ffi::F32>& sums, ffi::ResultBuffer<ffi::F32>& counts,
                     ffi::ResultBuffer<ffi::F32>& loss, const int32_t* index = nullptr) {
  if (weighted && w.element_count() != static_cast<size_t>(n)) {
    return ffi::Error::InvalidArgument("jaxkmeans native kernel: weights must be (n,)");
  }
  const int64_t k = cp.dimensions()[0];
  const PackedCenters pc = PackCenters(cp.typed_data(), bias.typed_data(), k, d);
  const Problem p{x, offset.typed_data(), cp.typed_data(), pc.bias.data(), pc.packed.data(),
                  n, d, k, pc.kpad, labels->typed_data(), dist->typed_data(), index};
  NearestAndSums(pool, p, weighted ? w.typed_data() : nullptr, sums->typed_data(),
                 counts->typed_data(), loss->typed_data());
  return ffi::Error::Success();
}

ffi::Error AssignImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                      ffi::Buffer<ffi::F32> offset, ffi::Buffer<ffi::F32> cp,
                      ffi::Buffer<ffi::F32> bias, ffi::ResultBuffer<ffi::S32> labels,
                      ffi::ResultBuffer<ffi::F32> dist) {
  if (auto err = CheckShapes(x, offset, cp, bias); err.failure()) return err;
  return AssignRows(pool, x.typed_data(), x.dimensions()[0], x.dimensions()[1], offset, cp,
                    bias, labels, dist);
}

ffi::Error LloydImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                     ffi::Buffer<ffi::F32> offset, ffi::Buffer<ffi::F32> cp,
                     ffi::Buffer<ffi::F32> bias, bool weighted,
                     ffi::ResultBuffer<ffi::S32> labels, ffi::ResultBuffer<ffi::F32> dist,
                     ffi::ResultBuffer<ffi::F32> sums, ffi::ResultBuffer<ffi::F32> counts,
                     ffi::ResultBuffer<ffi::F32> loss) {
  if (auto err = CheckShapes(x, offset, cp, bias); err.failure()) return err;
  return LloydRows(pool, x.typed_data(), x.dimensions()[0], x.dimensions()[1], w, offset, cp,
                   bias, weighted, labels, dist, sums, counts, loss);
}

// The same two kernels over rows read in place from a flat buffer: the caller's host
// array viewed from the 64-byte boundary at or below its first row (XLA's CPU client
// uses a host buffer without a copy only at that alignment, and numpy's large arrays
// start 16 bytes past a page boundary). Without an index (an empty `index` buffer), row
// i is x[start + i * cols, ... + cols); with one ((rows,) int32), row i is the caller's
// row index[i], x[start + index[i] * cols, ...): rows in an order (and with repeats)
// of the caller's choosing, still without a copy. Every index is bounds-checked.
ffi::Error FlatRows(ffi::Buffer<ffi::F32>& x, ffi::Buffer<ffi::S32>& index, int64_t start,
                    int64_t rows, int64_t cols, ffi::Buffer<ffi::F32>& offset,
                    ffi::Buffer<ffi::F32>& cp, ffi::Buffer<ffi::F32>& bias,
                    const int32_t** rows_index) {
  auto cd = cp.dimensions();
  const size_t size = x.element_count();
  const bool indexed = index.element_count() > 0;
  bool ok = x.dimensions().size() == 1 && start >= 0 && rows >= 0 && cols >= 1 &&
            cd.size() == 2 && cd[1] == cols && cd[0] >= 1 &&
            offset.element_count() == static_cast<size_t>(cols) &&
            bias.element_count() == static_cast<size_t>(cd[0]) &&
            static_cast<size_t>(start) <= size;
  if (ok && !indexed) ok = static_cast<size_t>(start + rows * cols) <= size;
  if (ok && indexed) {
    ok = index.element_count() == static_cast<size_t>(rows);
    const int64_t limit = (static_cast<int64_t>(size) - start) / cols;  // rows in the buffer
    const int32_t* ix = index.typed_data();
    for (int64_t i = 0; ok && i < rows; ++i) ok = ix[i] >= 0 && ix[i] < limit;
  }
  if (!ok) {
    return ffi::Error::InvalidArgument("jaxkmeans native kernel (flat rows): inconsistent shapes");
  }
  *rows_index = indexed ? index.typed_data() : nullptr;
  return ffi::Error::Success();
}

ffi::Error AssignFlatImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                          ffi::Buffer<ffi::S32> index, ffi::Buffer<ffi::F32> offset,
                          ffi::Buffer<ffi::F32> cp, ffi::Buffer<ffi::F32> bias, int64_t start,
                          int64_t rows, int64_t cols, ffi::ResultBuffer<ffi::S32> labels,
                          ffi::ResultBuffer<ffi::F32> dist) {
  const int32_t* ix = nullptr;
  if (auto err = FlatRows(x, index, start, rows, cols, offset, cp, bias, &ix); err.failure()) {
    return err;
  }
  return AssignRows(pool, x.typed_data() + start, rows, cols, offset, cp, bias, labels, dist,
                    ix);
}

ffi::Error LloydFlatImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                         ffi::Buffer<ffi::S32> index, ffi::Buffer<ffi::F32> w,
                         ffi::Buffer<ffi::F32> offset, ffi::Buffer<ffi::F32> cp,
                         ffi::Buffer<ffi::F32> bias, bool weighted, int64_t start,
                         int64_t rows, int64_t cols, ffi::ResultBuffer<ffi::S32> labels,
                         ffi::ResultBuffer<ffi::F32> dist, ffi::ResultBuffer<ffi::F32> sums,
                         ffi::ResultBuffer<ffi::F32> counts, ffi::ResultBuffer<ffi::F32> loss) {
  const int32_t* ix = nullptr;
  if (auto err = FlatRows(x, index, start, rows, cols, offset, cp, bias, &ix); err.failure()) {
    return err;
  }
  return LloydRows(pool, x.typed_data() + start, rows, cols, w, offset, cp, bias, weighted,
                   labels, dist, sums, counts, loss, ix);
}

// ------------------------------------------------------------ one k-means++ round
//
// Column 0 of the points is the previous round's pick p (row cand[0]), columns 1..t the
// candidates c_j (prepared rows, the same frame as x). For every row i, in ONE pass:
//   d2'[i]    = min(d2[i], D(x_i, p))            (0 at i == cand[0]): the lazy update
//   dc[j, i]  = min(d2'[i], D(x_i, c_j))         (0 at i == cand[j])
//   pot[j]    = sum_i w[i] dc[j, i]
//   bsum[j,b] = sum over the rows i of block b (`block` rows each) of w[i] dc[j, i]
// with D(x, c) = max((xsq - 2 <x, c>) + csq, 0), the expansion of the pure-JAX path
// (same xsq and csq; only the dot products' rounding differs). bsum[best] is the
// next round's block totals of the masses w D^2 (the sampler's first level), so dc
// itself is never written. Sums are float64, each block's in row order, blocks added
// in order: independent of threading.

struct RoundProblem {
  const float* x;
  const float* xsq;
  const float* w;
  const float* d2;
  const int32_t* cand;  // (tpad,), -1 for padding
  const float* packed;  // (tpad / 16, d, 16) panels of the points
  const float* csq;     // (tpad,) 0 for padding
  int64_t n, d, t, tpad, block;
  float* d2out;  // (n,)
};

// Lanes (points) of one row's 16-point panel q: v = D(x_i, .). Panel 0, lane 0 is p.
// Adds w dc to bacc (the row's block accumulators, tpad doubles; lane 0 unused).
inline void RoundEpilogue(const RoundProblem& p, int64_t i, int64_t q, const float* dist,
                          float* d2n, double* bacc) {
  int64_t l0 = 0;
  if (q == 0) {
    float v = std::min(p.d2[i], dist[0]);
    if (p.cand[0] == i) v = 0.0f;
    *d2n = v;
    p.d2out[i] = v;
    l0 = 1;
  }
  const double wi = static_cast<double>(p.w[i]);
  for (int64_t l = l0; l < kNR; ++l) {
    const int64_t c = q * kNR + l;
    float v = std::min(*d2n, dist[l]);
    if (p.cand[c] == i) v = 0.0f;
    bacc[c] += wi * static_cast<double>(v);
  }
}

void RoundRowsGeneric(const RoundProblem& p, int64_t r0, int64_t r1, double* bacc) {
  const int64_t d = p.d;
  for (int64_t row = r0; row < r1; row += kMR) {
    const int64_t m = std::min(kMR, r1 - row);
    float d2n[kMR];
    for (int64_t q = 0; q < p.tpad / kNR; ++q) {
      const float* panel = p.packed + q * d * kNR;
      float acc[kMR][kNR] = {};
      for (int64_t j = 0; j < d; ++j) {
        const float* b = panel + j * kNR;
        for (int64_t r = 0; r < m; ++r) {
          const float a = p.x[(row + r) * d + j];
          for (int64_t l = 0; l < kNR; ++l) acc[r][l] += a * b[l];
        }
      }
      for (int64_t r = 0; r < m; ++r) {
        const int64_t i = row + r;
        float dist[kNR];
        for (int64_t l = 0; l < kNR; ++l)
          dist[l] = std::max((p.xsq[i] - 2.0f * acc[r][l]) + p.csq[q * kNR + l], 0.0f);
        RoundEpilogue(p, i, q, dist, &d2n[r], bacc + ((i - r0) / p.block) * p.tpad);
      }
    }
  }
}

#ifdef JKM_X86
__attribute__((target("avx2,fma"))) void RoundRowsAvx2(const RoundProblem& p, int64_t r0,
                                                       int64_t r1, double* bacc) {
  const int64_t d = p.d;
  const __m256 zero = _mm256_setzero_ps();
  const __m256 two = _mm256_set1_ps(2.0f);
  for (int64_t row = r0; row < r1; row += kMR) {
    const int64_t m = std::min(kMR, r1 - row);
    // Rows past the range read row r0 again (their results are dropped).
    const float* xr[kMR];
    for (int64_t r = 0; r < kMR; ++r) xr[r] = p.x + (r < m ? row + r : r0) * d;
    float d2n[kMR];
    for (int64_t q = 0; q < p.tpad / kNR; ++q) {
      const float* b = p.packed + q * d * kNR;
      __m256 c00 = zero, c01 = zero, c10 = zero, c11 = zero, c20 = zero, c21 = zero;
      __m256 c30 = zero, c31 = zero, c40 = zero, c41 = zero, c50 = zero, c51 = zero;
      for (int64_t j = 0; j < d; ++j, b += kNR) {
        const __m256 b0 = _mm256_loadu_ps(b);
        const __m256 b1 = _mm256_loadu_ps(b + 8);
        __m256 a = _mm256_broadcast_ss(xr[0] + j);
        c00 = _mm256_fmadd_ps(a, b0, c00);
        c01 = _mm256_fmadd_ps(a, b1, c01);
        a = _mm256_broadcast_ss(xr[1] + j);
        c10 = _mm256_fmadd_ps(a, b0, c10);
        c11 = _mm256_fmadd_ps(a, b1, c11);
        a = _mm256_broadcast_ss(xr[2] + j);
        c20 = _mm256_fmadd_ps(a, b0, c20);
        c21 = _mm256_fmadd_ps(a, b1, c21);
        a = _mm256_broadcast_ss(xr[3] + j);
        c30 = _mm256_fmadd_ps(a, b0, c30);
        c31 = _mm256_fmadd_ps(a, b1, c31);
        a = _mm256_broadcast_ss(xr[4] + j);
        c40 = _mm256_fmadd_ps(a, b0, c40);
        c41 = _mm256_fmadd_ps(a, b1, c41);
        a = _mm256_broadcast_ss(xr[5] + j);
        c50 = _mm256_fmadd_ps(a, b0, c50);
        c51 = _mm256_fmadd_ps(a, b1, c51);
      }
      const __m256 acc[kMR][2] = {{c00, c01}, {c10, c11}, {c20, c21},
                                  {c30, c31}, {c40, c41}, {c50, c51}};
      const __m256 csq0 = _mm256_loadu_ps(p.csq + q * kNR);
      const __m256 csq1 = _mm256_loadu_ps(p.csq + q * kNR + 8);
      const __m256i cand0 =
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p.cand + q * kNR));
      const __m256i cand1 =
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p.cand + q * kNR + 8));
      for (int64_t r = 0; r < m; ++r) {
        const int64_t i = row + r;
        const __m256 xsq = _mm256_set1_ps(p.xsq[i]);
        // (xsq - 2 prod) + csq: 2 prod is exact, so the fused form rounds as XLA's.
        __m256 v0 = _mm256_max_ps(
            _mm256_add_ps(_mm256_fnmadd_ps(two, acc[r][0], xsq), csq0), zero);
        const __m256 v1 = _mm256_max_ps(
            _mm256_add_ps(_mm256_fnmadd_ps(two, acc[r][1], xsq), csq1), zero);
        if (q == 0) {
          float v = std::min(p.d2[i], _mm256_cvtss_f32(v0));
          if (p.cand[0] == i) v = 0.0f;
          d2n[r] = v;
          p.d2out[i] = v;
        }
        const __m256 cap = _mm256_set1_ps(d2n[r]);
        const __m256i iv = _mm256_set1_epi32(static_cast<int32_t>(i));
        const __m256 self0 = _mm256_castsi256_ps(_mm256_cmpeq_epi32(cand0, iv));
        const __m256 self1 = _mm256_castsi256_ps(_mm256_cmpeq_epi32(cand1, iv));
        const __m256 dc0 = _mm256_andnot_ps(self0, _mm256_min_ps(cap, v0));
        const __m256 dc1 = _mm256_andnot_ps(self1, _mm256_min_ps(cap, v1));
        const __m256d wi = _mm256_set1_pd(static_cast<double>(p.w[i]));
        double* a = bacc + ((i - r0) / p.block) * p.tpad + q * kNR;
        _mm256_storeu_pd(a, _mm256_fmadd_pd(wi, _mm256_cvtps_pd(_mm256_castps256_ps128(dc0)),
                                            _mm256_loadu_pd(a)));
        _mm256_storeu_pd(a + 4, _mm256_fmadd_pd(wi, _mm256_cvtps_pd(_mm256_extractf128_ps(dc0, 1)),
                                                _mm256_loadu_pd(a + 4)));
        _mm256_storeu_pd(a + 8, _mm256_fmadd_pd(wi, _mm256_cvtps_pd(_mm256_castps256_ps128(dc1)),
                                                _mm256_loadu_pd(a + 8)));
        _mm256_storeu_pd(a + 12, _mm256_fmadd_pd(wi, _mm256_cvtps_pd(_mm256_extractf128_ps(dc1, 1)),
                                                 _mm256_loadu_pd(a + 12)));
      }
    }
  }
}
#endif

ffi::Error PpRoundImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> xsq,
                       ffi::Buffer<ffi::F32> w, ffi::Buffer<ffi::F32> d2,
                       ffi::Buffer<ffi::F32> c, ffi::Buffer<ffi::F32> csq,
                       ffi::Buffer<ffi::S32> cand, int64_t block,
                       ffi::ResultBuffer<ffi::F32> d2out, ffi::ResultBuffer<ffi::F32> pot,
                       ffi::ResultBuffer<ffi::F32> bsum) {
  auto xd = x.dimensions();
  auto cd = c.dimensions();
  if (xd.size() != 2 || cd.size() != 2 || xd[1] != cd[1] || cd[0] < 2 || block < 1) {
    return ffi::Error::InvalidArgument("jaxkmeans k-means++ round: inconsistent shapes");
  }
  const int64_t n = xd[0], d = xd[1], t1 = cd[0], t = t1 - 1;
  const int64_t nb = (n + block - 1) / block;
  const size_t nn = static_cast<size_t>(n), tt = static_cast<size_t>(t1);
  if (xsq.element_count() != nn || w.element_count() != nn || d2.element_count() != nn ||
      csq.element_count() != tt || cand.element_count() != tt ||
      bsum->element_count() != static_cast<size_t>(t * nb)) {
    return ffi::Error::InvalidArgument("jaxkmeans k-means++ round: inconsistent shapes");
  }
  const int64_t tpad = (t1 + kNR - 1) / kNR * kNR;
  std::vector<float> packed(static_cast<size_t>(tpad * d), 0.0f);
  std::vector<float> csq_pad(static_cast<size_t>(tpad), 0.0f);
  std::vector<int32_t> cand_pad(static_cast<size_t>(tpad), -1);
  for (int64_t j = 0; j < t1; ++j) {
    csq_pad[j] = csq.typed_data()[j];
    cand_pad[j] = cand.typed_data()[j];
    const int64_t q = j / kNR, l = j % kNR;
    for (int64_t k = 0; k < d; ++k) packed[(q * d + k) * kNR + l] = c.typed_data()[j * d + k];
  }
  const RoundProblem p{x.typed_data(), xsq.typed_data(), w.typed_data(), d2.typed_data(),
                       cand_pad.data(), packed.data(), csq_pad.data(), n, d, t, tpad, block,
                       d2out->typed_data()};
  // Work items are runs of whole blocks (a function of n and block only).
  const int64_t per = std::max<int64_t>(1, 4096 / block);
  const int64_t items = (nb + per - 1) / per;
  std::vector<double> acc(static_cast<size_t>(nb * tpad), 0.0);
#ifdef JKM_X86
  const bool avx2 = HasAvx2();
#endif
  ParallelFor(pool, items, [&](int64_t item) {
    const int64_t b0 = item * per, b1 = std::min(nb, b0 + per);
    const int64_t r0 = b0 * block, r1 = std::min(n, b1 * block);
    double* a = acc.data() + b0 * tpad;
#ifdef JKM_X86
    if (avx2) {
      RoundRowsAvx2(p, r0, r1, a);
      return;
    }
#endif
    RoundRowsGeneric(p, r0, r1, a);
  });
  float* bs = bsum->typed_data();
  for (int64_t j = 0; j < t; ++j) {
    double s = 0.0;
    for (int64_t b = 0; b < nb; ++b) {
      const double v = acc[b * tpad + 1 + j];
      bs[j * nb + b] = static_cast<float>(v);
      s += v;
    }
    pot->typed_data()[j] = static_cast<float>(s);
  }
  return ffi::Error::Success();
}


// ------------------------------------------------------------ sparse (CSR) rows
//
// jaxkmeans_sparse_assign_f32 / jaxkmeans_sparse_lloyd_f32: the same two results for
// rows given as CSR (indptr (n+1,), cols and vals of the stored entries, base (n,) the
// per-row base: 1 for cosine's unit rows; empty: ||x||^2, computed here). The centers are prepared as for the
// dense kernels but in the frame of the origin 0 (sparse rows are never shifted):
// dist = max(base + min_j (<x, cp_j> + bias_j), 0), the nearest center chosen by the
// score alone (the base would round away differences). The centers are transposed once per call
// into (d, k) so that each stored entry (j, v) adds v * cpt[j, :] (k contiguous floats)
// to its row's k scores: nnz * k multiply-adds, never a densified row. Per-center sums
// go by cluster: rows are grouped by label (in row order) and each cluster's rows are
// added into a float64 accumulator of d entries, so results do not depend on threads.

struct SparseProblem {
  const int32_t* indptr;
  const int32_t* cols;
  const float* vals;
  const float* base;
  const float* cpt;   // (d, k)
  const float* bias;  // (k,)
  int64_t n, d, k;
  int32_t* labels;
  float* dist;
};

constexpr int64_t kSparseRowsPerBlock = 256;

void SparseNearestRange(const SparseProblem& p, int64_t r0, int64_t r1, float* acc) {
  const int64_t k = p.k;
  for (int64_t i = r0; i < r1; ++i) {
    std::fill(acc, acc + k, 0.0f);
    const int64_t e1 = p.indptr[i + 1];
    for (int64_t e = p.indptr[i]; e < e1; ++e) {
      const float v = p.vals[e];
      const float* row = p.cpt + static_cast<int64_t>(p.cols[e]) * k;
      for (int64_t c = 0; c < k; ++c) acc[c] += v * row[c];
    }
    // The nearest center by score <x, cp> + bias alone (the row's base is the same for
    // every center; adding it first would round away differences between centers).
    float best = std::numeric_limits<float>::infinity();
    int32_t lab = 0;
    for (int64_t c = 0; c < k; ++c) {
      const float sc = acc[c] + p.bias[c];
      if (sc < best) {
        best = sc;
        lab = static_cast<int32_t>(c);
      }
    }
    float b = 0.0f;
    if (p.base != nullptr) {
      b = p.base[i];
    } else {  // ||x||^2 of the row
      for (int64_t e = p.indptr[i]; e < e1; ++e) b += p.vals[e] * p.vals[e];
    }
    p.labels[i] = lab;
    p.dist[i] = std::max(b + best, 0.0f);
  }
}

void SparseNearest(ffi::ThreadPool& pool, const SparseProblem& p) {
  const int64_t blocks = (p.n + kSparseRowsPerBlock - 1) / kSparseRowsPerBlock;
  ParallelFor(pool, blocks, [&](int64_t b) {
    std::vector<float> acc(static_cast<size_t>(p.k));
    const int64_t r0 = b * kSparseRowsPerBlock;
    SparseNearestRange(p, r0, std::min(p.n, r0 + kSparseRowsPerBlock), acc.data());
  });
}

std::vector<float> TransposeCenters(const float* cp, int64_t k, int64_t d) {
  std::vector<float> cpt(static_cast<size_t>(k * d));
  for (int64_t c = 0; c < k; ++c)
    for (int64_t j = 0; j < d; ++j) cpt[j * k + c] = cp[c * d + j];
  return cpt;
}

ffi::Error SparseShapes(ffi::Buffer<ffi::S32>& indptr, ffi::Buffer<ffi::S32>& cols,
                        ffi::Buffer<ffi::F32>& vals, ffi::Buffer<ffi::F32>& base,
                        ffi::Buffer<ffi::F32>& cp, ffi::Buffer<ffi::F32>& bias) {
  const int64_t n = static_cast<int64_t>(indptr.element_count()) - 1;
  auto cd = cp.dimensions();
  if (n < 0 || cols.element_count() != vals.element_count() ||
      (base.element_count() != static_cast<size_t>(n) && base.element_count() != 0) ||
      cd.size() != 2 || cd[0] < 1 ||
      bias.element_count() != static_cast<size_t>(cd[0])) {
    return ffi::Error::InvalidArgument("jaxkmeans sparse kernel: inconsistent shapes");
  }
  const int32_t* ptr = indptr.typed_data();
  const int64_t nnz = static_cast<int64_t>(cols.element_count());
  if (n > 0 && (ptr[0] < 0 || ptr[n] > nnz)) {
    return ffi::Error::InvalidArgument("jaxkmeans sparse kernel: row pointers out of range");
  }
  return ffi::Error::Success();
}

ffi::Error SparseAssignImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::S32> indptr,
                            ffi::Buffer<ffi::S32> cols, ffi::Buffer<ffi::F32> vals,
                            ffi::Buffer<ffi::F32> base, ffi::Buffer<ffi::F32> cp,
                            ffi::Buffer<ffi::F32> bias, ffi::ResultBuffer<ffi::S32> labels,
                            ffi::ResultBuffer<ffi::F32> dist) {
  if (auto err = SparseShapes(indptr, cols, vals, base, cp, bias); err.failure()) return err;
  const int64_t n = static_cast<int64_t>(indptr.element_count()) - 1;
  const int64_t k = cp.dimensions()[0], d = cp.dimensions()[1];
  const std::vector<float> cpt = TransposeCenters(cp.typed_data(), k, d);
  const SparseProblem p{indptr.typed_data(), cols.typed_data(), vals.typed_data(),
                        base.element_count() ? base.typed_data() : nullptr,
                        cpt.data(),          bias.typed_data(),
                        n, d, k, labels->typed_data(), dist->typed_data()};
  SparseNearest(pool, p);
  return ffi::Error::Success();
}

ffi::Error SparseLloydImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::S32> indptr,
                           ffi::Buffer<ffi::S32> cols, ffi::Buffer<ffi::F32> vals,
                           ffi::Buffer<ffi::F32> base, ffi::Buffer<ffi::F32> w,
                           ffi::Buffer<ffi::F32> cp, ffi::Buffer<ffi::F32> bias,
                           ffi::ResultBuffer<ffi::S32> labels, ffi::ResultBuffer<ffi::F32> dist,
                           ffi::ResultBuffer<ffi::F32> sums, ffi::ResultBuffer<ffi::F32> counts,
                           ffi::ResultBuffer<ffi::F32> loss) {
  if (auto err = SparseShapes(indptr, cols, vals, base, cp, bias); err.failure()) return err;
  const int64_t n = static_cast<int64_t>(indptr.element_count()) - 1;
  const int64_t k = cp.dimensions()[0], d = cp.dimensions()[1];
  if (w.element_count() != static_cast<size_t>(n)) {
    return ffi::Error::InvalidArgument("jaxkmeans sparse kernel: weights must be (n,)");
  }
  const std::vector<float> cpt = TransposeCenters(cp.typed_data(), k, d);
  const SparseProblem p{indptr.typed_data(), cols.typed_data(), vals.typed_data(),
                        base.element_count() ? base.typed_data() : nullptr,
                        cpt.data(),          bias.typed_data(),
                        n, d, k, labels->typed_data(), dist->typed_data()};
  SparseNearest(pool, p);
  // Rows grouped by cluster, in row order (a counting sort of the labels).
  const int32_t* lab = p.labels;
  std::vector<int64_t> start(static_cast<size_t>(k + 1), 0);
  for (int64_t i = 0; i < n; ++i) ++start[lab[i] + 1];
  for (int64_t c = 0; c < k; ++c) start[c + 1] += start[c];
  std::vector<int64_t> order(static_cast<size_t>(n));
  {
    std::vector<int64_t> fill(start.begin(), start.end() - 1);
    for (int64_t i = 0; i < n; ++i) order[fill[lab[i]]++] = i;
  }
  const float* wv = w.typed_data();
  const int32_t* ptr = p.indptr;
  float* out = sums->typed_data();
  std::vector<double> cnt(static_cast<size_t>(k)), cl(static_cast<size_t>(k));
  ParallelFor(pool, k, [&](int64_t c) {
    std::vector<double> acc(static_cast<size_t>(d), 0.0);
    double wc = 0.0, lc = 0.0;
    for (int64_t q = start[c]; q < start[c + 1]; ++q) {
      const int64_t i = order[q];
      const double wi = static_cast<double>(wv[i]);
      wc += wi;
      lc += wi * static_cast<double>(p.dist[i]);
      if (wi == 0.0) continue;
      for (int64_t e = ptr[i]; e < ptr[i + 1]; ++e) {
        acc[p.cols[e]] += wi * static_cast<double>(p.vals[e]);
      }
    }
    float* o = out + c * d;
    for (int64_t j = 0; j < d; ++j) o[j] = static_cast<float>(acc[j]);
    cnt[c] = wc;
    cl[c] = lc;
  });
  double total = 0.0;
  for (int64_t c = 0; c < k; ++c) {
    counts->typed_data()[c] = static_cast<float>(cnt[c]);
    total += cl[c];
  }
  *loss->typed_data() = static_cast<float>(total);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxkmeansAssignF32, AssignImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x
                                  .Arg<ffi::Buffer<ffi::F32>>()  // offset
                                  .Arg<ffi::Buffer<ffi::F32>>()  // cp
                                  .Arg<ffi::Buffer<ffi::F32>>()  // bias
                                  .Ret<ffi::Buffer<ffi::S32>>()  // labels
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dist
);

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxkmeansLloydF32, LloydImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w
                                  .Arg<ffi::Buffer<ffi::F32>>()  // offset
                                  .Arg<ffi::Buffer<ffi::F32>>()  // cp
                                  .Arg<ffi::Buffer<ffi::F32>>()  // bias
                                  .Attr<bool>("weighted")
                                  .Ret<ffi::Buffer<ffi::S32>>()  // labels
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dist
                                  .Ret<ffi::Buffer<ffi::F32>>()  // sums
                                  .Ret<ffi::Buffer<ffi::F32>>()  // counts
                                  .Ret<ffi::Buffer<ffi::F32>>()  // loss
);

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxkmeansAssignFlatIndexedF32, AssignFlatImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x, flat
                                  .Arg<ffi::Buffer<ffi::S32>>()  // index, or empty
                                  .Arg<ffi::Buffer<ffi::F32>>()  // offset
                                  .Arg<ffi::Buffer<ffi::F32>>()  // cp
                                  .Arg<ffi::Buffer<ffi::F32>>()  // bias
                                  .Attr<int64_t>("start")
                                  .Attr<int64_t>("rows")
                                  .Attr<int64_t>("cols")
                                  .Ret<ffi::Buffer<ffi::S32>>()  // labels
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dist
);

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxkmeansLloydFlatIndexedF32, LloydFlatImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x, flat
                                  .Arg<ffi::Buffer<ffi::S32>>()  // index, or empty
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w
                                  .Arg<ffi::Buffer<ffi::F32>>()  // offset
                                  .Arg<ffi::Buffer<ffi::F32>>()  // cp
                                  .Arg<ffi::Buffer<ffi::F32>>()  // bias
                                  .Attr<bool>("weighted")
                                  .Attr<int64_t>("start")
                                  .Attr<int64_t>("rows")
                                  .Attr<int64_t>("cols")
                                  .Ret<ffi::Buffer<ffi::S32>>()  // labels
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dist
                                  .Ret<ffi::Buffer<ffi::F32>>()  // sums
                                  .Ret<ffi::Buffer<ffi::F32>>()  // counts
                                  .Ret<ffi::Buffer<ffi::F32>>()  // loss
);

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxkmeansPpRoundF32, PpRoundImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x (n, d) prepared
                                  .Arg<ffi::Buffer<ffi::F32>>()  // xsq (n,)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w (n,)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // d2 (n,)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // [p; candidates] (1+t, d)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // their squares (1+t,)
                                  .Arg<ffi::Buffer<ffi::S32>>()  // their rows (1+t,)
                                  .Attr<int64_t>("block")
                                  .Ret<ffi::Buffer<ffi::F32>>()  // d2' (n,)
                                  .Ret<ffi::Buffer<ffi::F32>>()  // pot (t,)
                                  .Ret<ffi::Buffer<ffi::F32>>()  // block sums (t, nb)
);

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxkmeansSparseAssignF32, SparseAssignImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::S32>>()  // indptr (n + 1,)
                                  .Arg<ffi::Buffer<ffi::S32>>()  // cols (nnz,)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // vals (nnz,)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // base (n,)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // cp (k, d)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // bias (k,)
                                  .Ret<ffi::Buffer<ffi::S32>>()  // labels
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dist
);

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxkmeansSparseLloydF32, SparseLloydImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::S32>>()  // indptr (n + 1,)
                                  .Arg<ffi::Buffer<ffi::S32>>()  // cols (nnz,)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // vals (nnz,)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // base (n,)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w (n,)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // cp (k, d)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // bias (k,)
                                  .Ret<ffi::Buffer<ffi::S32>>()  // labels
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dist
                                  .Ret<ffi::Buffer<ffi::F32>>()  // sums (k, d)
                                  .Ret<ffi::Buffer<ffi::F32>>()  // counts (k,)
                                  .Ret<ffi::Buffer<ffi::F32>>()  // loss ()
);

// What this library was built against, read by the Python loader (ctypes) BEFORE it
// registers the handlers: XLA rejects a handler whose FFI API version it does not
// support, and a rejected registration made before JAX's CPU backend starts would make
// that backend fail to start.
#if defined(_WIN32)
#define JKM_EXPORT extern "C" __declspec(dllexport)
#else
#define JKM_EXPORT extern "C" __attribute__((visibility("default")))
#endif

#ifndef JAXKMEANS_BUILT_JAXLIB
#define JAXKMEANS_BUILT_JAXLIB ""
#endif

JKM_EXPORT int JaxkmeansFfiApiMajor() { return XLA_FFI_API_MAJOR; }
JKM_EXPORT int JaxkmeansFfiApiMinor() { return XLA_FFI_API_MINOR; }
// The jaxlib version whose headers were used ("" when unknown, e.g. a manual build).
JKM_EXPORT const char* JaxkmeansBuiltJaxlib() { return JAXKMEANS_BUILT_JAXLIB; }
// The micro-kernel family this CPU runs ("avx2+fma" or "portable").
JKM_EXPORT const char* JaxkmeansKernelIsa() {
#ifdef JKM_X86
  return HasAvx2() ? "avx2+fma" : "portable";
#else
  return "portable";
#endif
}
