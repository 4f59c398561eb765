// The spatial gate's small dense parts on one sample: the k x k conv over the (2, H, W) descriptor map,
// its two gradients, and the gate's sigmoid. Generic loops for every accumulation type, and AVX-512
// float versions: the generic conv keeps one 16-lane accumulator per output block, so its k^2 * 2
// multiply-adds form one dependency chain (latency-bound: ~30 % of a 16-channel 28x28 ResNet
// sample's fused forward); the AVX-512 conv keeps 8 blocks of outputs (kRows rows of two column
// blocks, or of two kernels in the backward's adjoint) and the weight gradient up to 8 taps in
// independent registers. glibc's expf is scalar: the AVX-512 sigmoid is a
// polynomial exp scaled by 2^n (vscalefps), within 2 ulp of expf. conv_avx2.h does the same with
// 8-lane vectors where AVX-512 is absent.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace cbam_cpu {
namespace sample {

template <typename A>
inline A sigmoid(A z) { return A(1) / (A(1) + std::exp(-z)); }

// u[p] = sigmoid(sc * u[p] + sh) for n values.
template <typename A>
inline void sigmoid_affine(A* u, int64_t n, A sc, A sh) {
  for (int64_t p = 0; p < n; ++p) u[p] = sigmoid(sc * u[p] + sh);
}

constexpr int64_t kLanes = 16;  // outputs per register block of the k x k conv
constexpr int64_t kRows = 4;    // output rows per register block (AVX-512 conv)
#if !defined(__AVX512F__) && defined(__AVX2__) && defined(__FMA__)
constexpr int64_t kGradLanes = 8;   // du's row padding in the weight gradient: AVX2 loads 8 wide (7 -> 8, not 16)
#else
constexpr int64_t kGradLanes = 16;  // whole 16-lane blocks (AVX-512 and the generic loop)
#endif

// Copies the (ch, H, W) map `in` into buf as (ch, Hp, Wp) with zero borders: p = k / 2 columns left and
// right (Wp leaves room for a full 16-lane block past the last column) and p rows on top; below, p rows
// plus kRows - 1 more, so a block of kRows output rows at the bottom reads inside the buffer. The k x k
// taps need no bounds checks.
template <typename A>
inline void pad_map(const A* in, int64_t ch, int64_t H, int64_t W, int64_t k, std::vector<A>& buf, int64_t& Hp,
                    int64_t& Wp) {
  const int64_t pad = k / 2;
  Hp = H + 2 * pad + kRows - 1;
  Wp = (W + kLanes - 1) / kLanes * kLanes + 2 * pad;
  buf.assign(ch * Hp * Wp, A(0));
  for (int64_t ci = 0; ci < ch; ++ci)
    for (int64_t y = 0; y < H; ++y)
      std::copy(in + (ci * H + y) * W, in + (ci * H + y + 1) * W, buf.data() + (ci * Hp + y + pad) * Wp + pad);
}

// out[y, x] = bias + sum_{c, dy, dx} P[c, y + dy, x + dx] w[c, dy, dx] over a padded (ch, Hp, Wp) map P:
// each block of 16 outputs accumulates all ch k^2 taps in registers (one store per output).
template <typename A>
inline void correlate(const A* P, int64_t ch, int64_t Hp, int64_t Wp, const A* w, int64_t k, int64_t H, int64_t W,
                      A bias, A* out) {
  for (int64_t y = 0; y < H; ++y)
    for (int64_t x0 = 0; x0 < W; x0 += kLanes) {
      A acc[kLanes];
      for (int64_t l = 0; l < kLanes; ++l) acc[l] = bias;
      for (int64_t ci = 0; ci < ch; ++ci)
        for (int64_t dy = 0; dy < k; ++dy) {
          const A* src = P + (ci * Hp + y + dy) * Wp + x0;
          const A* wr = w + (ci * k + dy) * k;
          for (int64_t dx = 0; dx < k; ++dx) {
            const A wv = wr[dx];
            _Pragma("omp simd")
            for (int64_t l = 0; l < kLanes; ++l) acc[l] += wv * src[dx + l];
          }
        }
      const int64_t n = std::min(kLanes, W - x0);
      for (int64_t l = 0; l < n; ++l) out[y * W + x0 + l] = acc[l];
    }
}

// Two outputs from one padded input channel: out[s] = correlate(P, w + s k^2), s = 0, 1 (out[1] at out + H W).
template <typename A>
inline void correlate_pair(const A* P, int64_t Hp, int64_t Wp, const A* w, int64_t k, int64_t H, int64_t W, A* out) {
  correlate(P, 1, Hp, Wp, w, k, H, W, A(0), out);
  correlate(P, 1, Hp, Wp, w + k * k, k, H, W, A(0), out + H * W);
}

// The kernel's gradient over a padded (2, Hp, Wp) map P: dw[ci, dy, dx] = sum_{y,x} d[y, x] P[ci, y+dy, x+dx],
// d being du with rows padded by zeros to Wb (whole kGradLanes blocks). Each tap accumulates kGradLanes
// partial sums in registers over all rows (one horizontal sum per tap, not one per row).
template <typename A>
inline void weight_grad(const A* P, int64_t Hp, int64_t Wp, const A* d, int64_t H, int64_t Wb, int64_t k, A* dw) {
  for (int64_t ci = 0; ci < 2; ++ci)
    for (int64_t dy = 0; dy < k; ++dy)
      for (int64_t dx = 0; dx < k; ++dx) {
        A a[kGradLanes] = {};
        for (int64_t y = 0; y < H; ++y) {
          const A *src = P + (ci * Hp + y + dy) * Wp + dx, *dv = d + y * Wb;
          for (int64_t x0 = 0; x0 < Wb; x0 += kGradLanes) {
            _Pragma("omp simd")
            for (int64_t l = 0; l < kGradLanes; ++l) a[l] += dv[x0 + l] * src[x0 + l];
          }
        }
        A s = 0;
        for (int64_t l = 0; l < kGradLanes; ++l) s += a[l];
        dw[(ci * k + dy) * k + dx] = s;
      }
}

// The SIMD weight gradient, for a vector type V (V::reg, V::width, zero, load, fma, sum; avx512 below,
// avx2 in conv_avx2.h): NT taps of one kernel row at a time, NT a compile-time count so the NT
// accumulators live in registers (with a run-time count gcc kept them on the stack, a store and a
// reload per FMA: 3x slower), and each V::width-wide load of d serves all of them.
template <class V, int NT>
inline void weight_grad_taps(const float* src, int64_t Wp, const float* d, int64_t H, int64_t Wb, float* dw) {
  typename V::reg a[NT];
  for (int t = 0; t < NT; ++t) a[t] = V::zero();
  for (int64_t y = 0; y < H; ++y) {
    const float *s = src + y * Wp, *dv = d + y * Wb;
    for (int64_t x0 = 0; x0 < Wb; x0 += V::width) {
      const typename V::reg g = V::load(dv + x0);
#pragma GCC unroll 8
      for (int t = 0; t < NT; ++t) a[t] = V::fma(g, V::load(s + x0 + t), a[t]);
    }
  }
  for (int t = 0; t < NT; ++t) dw[t] = V::sum(a[t]);
}

template <class V>
inline void weight_grad_simd(const float* P, int64_t Hp, int64_t Wp, const float* d, int64_t H, int64_t Wb,
                             int64_t k, float* dw) {
  for (int64_t ci = 0; ci < 2; ++ci)
    for (int64_t dy = 0; dy < k; ++dy)
      for (int64_t dx0 = 0; dx0 < k; dx0 += 8) {
        const float* src = P + (ci * Hp + dy) * Wp + dx0;
        float* o = dw + (ci * k + dy) * k + dx0;
        switch (std::min<int64_t>(8, k - dx0)) {
          case 1: weight_grad_taps<V, 1>(src, Wp, d, H, Wb, o); break;
          case 2: weight_grad_taps<V, 2>(src, Wp, d, H, Wb, o); break;
          case 3: weight_grad_taps<V, 3>(src, Wp, d, H, Wb, o); break;
          case 4: weight_grad_taps<V, 4>(src, Wp, d, H, Wb, o); break;
          case 5: weight_grad_taps<V, 5>(src, Wp, d, H, Wb, o); break;
          case 6: weight_grad_taps<V, 6>(src, Wp, d, H, Wb, o); break;
          case 7: weight_grad_taps<V, 7>(src, Wp, d, H, Wb, o); break;
          default: weight_grad_taps<V, 8>(src, Wp, d, H, Wb, o); break;
        }
      }
}

// Cephes' expf: x = n ln2 + r with ln2 in two parts (exact n ln2 for |n| <= 2^11), and e^r =
// 1 + r + r^2 p(r) with p of degree 5 (coefficients highest first). For the vector exps below.
constexpr float kLog2e = 1.44269504088896341f, kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
constexpr float kExpPoly[6] = {1.9875691500e-4f, 1.3981999507e-3f, 8.3334519073e-3f,
                               4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f};

#if defined(__AVX512F__)
// exp(x): x = n ln2 + r with |r| <= ln2 / 2, a degree-7 polynomial (Cephes' expf coefficients) for
// e^r, and 2^n applied by vscalefps, which handles overflow to inf and underflow to 0 itself. The
// clamp keeps n finite for infinite x; NaN passes through (min/max return their second operand).
inline __m512 exp512(__m512 x) {
  x = _mm512_max_ps(_mm512_set1_ps(-104.0f), _mm512_min_ps(_mm512_set1_ps(89.0f), x));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(kLog2e)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Hi), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Lo), r);
  __m512 p = _mm512_set1_ps(kExpPoly[0]);
  for (int i = 1; i < 6; ++i) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kExpPoly[i]));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(p, n);
}

template <>
inline void sigmoid_affine<float>(float* u, int64_t n, float sc, float sh) {
  const __m512 a = _mm512_set1_ps(-sc), b = _mm512_set1_ps(-sh), one = _mm512_set1_ps(1.0f);
  for (int64_t p = 0; p < n; p += 16) {
    const __mmask16 m = n - p >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << (n - p)) - 1);
    const __m512 z = _mm512_fmadd_ps(a, _mm512_maskz_loadu_ps(m, u + p), b);  // -(sc u + sh)
    _mm512_mask_storeu_ps(u + p, m, _mm512_div_ps(one, _mm512_add_ps(one, exp512(z))));
  }
}

// One register block of the AVX-512 conv, 16-lane column blocks from x0: input row y0 + j feeds output
// row y0 + r through the kernel row j - r, so each load serves every row of the block. Eight independent
// accumulators keep both FMA pipes busy (four chains of 4-cycle FMAs fill one; 1.6x on a 28x28 map):
// Mode::wide takes 4 rows of two column blocks; on a last single block, Mode::split keeps two input
// channels' sums apart (added at the store) and Mode::pair forms two kernels' outputs (w and w + k^2,
// into out and out + H W) from each load of one input channel. Mode::narrow, 4 rows of one block, is
// the rest (8 rows of one block, sharing each load more, measured slower).
enum class Mode { narrow, wide, pair, split };

template <Mode M, int K>  // K > 0: the kernel size at compile time (dx unrolled, constant offsets: 1.7x)
inline void correlate_block(const float* P, int64_t ch, int64_t Hp, int64_t Wp, const float* w, int64_t k_,
                            int64_t H, int64_t W, float bias, int64_t y0, int64_t x0, float* out) {
  static_assert(kRows == 4, "a0-a3 and b0-b3 name the blocks' rows");
  const int64_t k = K > 0 ? K : k_;
  // named registers, not arrays: gcc kept conditionally updated __m512 arrays on the stack (2x slower)
  __m512 a0 = _mm512_set1_ps(bias), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
  if constexpr (M == Mode::split) b0 = b1 = b2 = b3 = _mm512_setzero_ps();
  for (int64_t ci = 0; ci < ch; ci += M == Mode::split ? 2 : 1) {
    const float *wa = w + ci * k * k, *wb = M == Mode::split ? wa + k * k : w + k * k;  // pair: kernel 2
    for (int64_t j = 0; j < kRows + k - 1; ++j) {
      const float* src = P + (ci * Hp + y0 + j) * Wp + x0;
      const int64_t d0 = j, d1 = j - 1, d2 = j - 2, d3 = j - 3;  // the kernel row feeding output row r
      const bool u0 = d0 < k, u1 = d1 >= 0 && d1 < k, u2 = d2 >= 0 && d2 < k, u3 = d3 >= 0 && d3 < k;
      for (int64_t dx = 0; dx < k; ++dx) {
        const __m512 v = _mm512_loadu_ps(src + dx);
        const __m512 u = M == Mode::wide ? _mm512_loadu_ps(src + kLanes + dx)
                                         : M == Mode::split ? _mm512_loadu_ps(src + Hp * Wp + dx) : v;
#define CBAM_ROW(r)                                                                                 \
  if (u##r) {                                                                                       \
    const __m512 q = _mm512_set1_ps(wa[d##r * k + dx]);                                             \
    a##r = _mm512_fmadd_ps(q, v, a##r);                                                             \
    if constexpr (M == Mode::wide) b##r = _mm512_fmadd_ps(q, u, b##r);                              \
    if constexpr (M == Mode::pair) b##r = _mm512_fmadd_ps(_mm512_set1_ps(wb[d##r * k + dx]), v, b##r); \
    if constexpr (M == Mode::split) b##r = _mm512_fmadd_ps(_mm512_set1_ps(wb[d##r * k + dx]), u, b##r); \
  }
        CBAM_ROW(0) CBAM_ROW(1) CBAM_ROW(2) CBAM_ROW(3)
#undef CBAM_ROW
      }
    }
  }
  const __m512 A[4] = {a0, a1, a2, a3}, B[4] = {b0, b1, b2, b3};
  auto mask = [&](int64_t from) {
    const int64_t n = std::min(kLanes, W - from);
    return n == kLanes ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << n) - 1);
  };
  const __mmask16 m0 = mask(x0), m1 = M == Mode::wide ? mask(x0 + kLanes) : m0;
  for (int64_t r = 0; r < std::min(kRows, H - y0); ++r) {
    float* o = out + (y0 + r) * W + x0;
    _mm512_mask_storeu_ps(o, m0, M == Mode::split ? _mm512_add_ps(A[r], B[r]) : A[r]);
    if constexpr (M == Mode::wide) _mm512_mask_storeu_ps(o + kLanes, m1, B[r]);
    if constexpr (M == Mode::pair) _mm512_mask_storeu_ps(o + H * W, m0, B[r]);
  }
}

// Blocks of two columns (Pair: for each kernel in turn), then the last single column block (Pair: both
// kernels from each load).
template <bool Pair, int K>
inline void correlate_blocks_k(const float* P, int64_t ch, int64_t Hp, int64_t Wp, const float* w, int64_t k,
                               int64_t H, int64_t W, float bias, float* out) {
  int64_t x0 = 0;
  for (; x0 + kLanes < W; x0 += 2 * kLanes)
    for (int64_t y0 = 0; y0 < H; y0 += kRows) {
      correlate_block<Mode::wide, K>(P, ch, Hp, Wp, w, k, H, W, bias, y0, x0, out);
      if (Pair) correlate_block<Mode::wide, K>(P, ch, Hp, Wp, w + k * k, k, H, W, bias, y0, x0, out + H * W);
    }
  if (x0 >= W) return;
  for (int64_t y0 = 0; y0 < H; y0 += kRows) {
    if (Pair) correlate_block<Mode::pair, K>(P, ch, Hp, Wp, w, k, H, W, bias, y0, x0, out);
    else if (ch % 2 == 0) correlate_block<Mode::split, K>(P, ch, Hp, Wp, w, k, H, W, bias, y0, x0, out);
    else correlate_block<Mode::narrow, K>(P, ch, Hp, Wp, w, k, H, W, bias, y0, x0, out);
  }
}

// The paper's k = 7 and the common k = 3 with the kernel size at compile time; others at run time.
template <bool Pair>
inline void correlate_blocks(const float* P, int64_t ch, int64_t Hp, int64_t Wp, const float* w, int64_t k, int64_t H,
                             int64_t W, float bias, float* out) {
  if (k == 7) correlate_blocks_k<Pair, 7>(P, ch, Hp, Wp, w, k, H, W, bias, out);
  else if (k == 3) correlate_blocks_k<Pair, 3>(P, ch, Hp, Wp, w, k, H, W, bias, out);
  else correlate_blocks_k<Pair, 0>(P, ch, Hp, Wp, w, k, H, W, bias, out);
}

template <>
inline void correlate<float>(const float* P, int64_t ch, int64_t Hp, int64_t Wp, const float* w, int64_t k,
                             int64_t H, int64_t W, float bias, float* out) {
  correlate_blocks<false>(P, ch, Hp, Wp, w, k, H, W, bias, out);
}

template <>
inline void correlate_pair<float>(const float* P, int64_t Hp, int64_t Wp, const float* w, int64_t k, int64_t H,
                                  int64_t W, float* out) {
  correlate_blocks<true>(P, 1, Hp, Wp, w, k, H, W, 0.0f, out);
}

struct Zmm {
  using reg = __m512;
  static constexpr int64_t width = 16;
  static reg zero() { return _mm512_setzero_ps(); }
  static reg load(const float* p) { return _mm512_loadu_ps(p); }
  static reg fma(reg a, reg b, reg c) { return _mm512_fmadd_ps(a, b, c); }
  static float sum(reg v) { return _mm512_reduce_add_ps(v); }
};

template <>
inline void weight_grad<float>(const float* P, int64_t Hp, int64_t Wp, const float* d, int64_t H, int64_t Wb,
                               int64_t k, float* dw) {
  weight_grad_simd<Zmm>(P, Hp, Wp, d, H, Wb, k, dw);
}
#endif

// out = bias + cross-correlation of the (2, H, W) map `in` with the (2, k, k) kernel, zero padding k/2.
template <typename A>
inline void conv_kxk(const A* in, int64_t H, int64_t W, const A* wc, int64_t k, A bias, A* out, std::vector<A>& buf) {
  int64_t Hp, Wp;
  pad_map(in, 2, H, W, k, buf, Hp, Wp);
  correlate(buf.data(), 2, Hp, Wp, wc, k, H, W, bias, out);
}

// The kernel's gradient of conv_kxk for one sample: dw[ci, dy, dx] = sum_{y,x} du[y, x] in[ci, y+dy-p, x+dx-p].
template <typename A>
inline void conv_kxk_weight_grad(const A* in, const A* du, int64_t H, int64_t W, int64_t k, A* dw,
                                 std::vector<A>& buf) {
  int64_t Hp, Wp;
  pad_map(in, 2, H, W, k, buf, Hp, Wp);
  const int64_t Wb = (W + kGradLanes - 1) / kGradLanes * kGradLanes;
  std::vector<A> d(H * Wb, A(0));
  for (int64_t y = 0; y < H; ++y) std::copy(du + y * W, du + (y + 1) * W, d.data() + y * Wb);
  weight_grad(buf.data(), Hp, Wp, d.data(), H, Wb, k, dw);
}

// The adjoint of conv_kxk: din[ci] = the correlation of the padded dout with ci's kernel flipped in both axes.
template <typename A>
inline void conv_kxk_adjoint(const A* dout, int64_t H, int64_t W, const A* wc, int64_t k, A* din,
                             std::vector<A>& buf) {
  int64_t Hp, Wp;
  pad_map(dout, 1, H, W, k, buf, Hp, Wp);
  std::vector<A> flipped(2 * k * k);
  A* f = flipped.data();
  for (int64_t ci = 0; ci < 2; ++ci)
    for (int64_t i = 0; i < k * k; ++i) f[ci * k * k + i] = wc[ci * k * k + k * k - 1 - i];
  correlate_pair(buf.data(), Hp, Wp, f, k, H, W, din);
}

}  // namespace sample
}  // namespace cbam_cpu

// Where the build has AVX2 but not AVX-512, float specialisations of the templates above (declared
// before any instantiation: the .cpp files that use them include this header first).
#if !defined(__AVX512F__) && defined(__AVX2__) && defined(__FMA__)
#include "conv_avx2.h"
#endif
