// The passes over one sample's x for the two memory layouts the per-sample kernels take.
//   NCHW (contiguous):      x[c * HW + p], a channel is a contiguous row of HW pixels;
//   NHWC (channels_last):   x[p * C + c], a pixel is a contiguous row of C channels.
// Each policy offers the same five passes (forward: pool_channels, pool_pixels, apply; backward:
// reduce, row_dot, input_grad) and `at` for the max-pool routes, so cbam_sample.cpp and
// sample_backward.cpp write the orchestration once. In NHWC the per-pixel channel statistics of the
// spatial gate are contiguous reductions and the per-channel ones are vector accumulations over
// rows: no strided access in either layout. T is the storage type (float, double, half, bfloat16), A the accumulation type.
#pragma once
#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include "pool.h"
#include "nhwc_simd.h"

namespace cbam_cpu {
namespace sample {

// The gradient reaching y = x * mc * ms. With the fused block tail (Tail; out = relu(y + identity)) it
// is the incoming gradient where out > 0 and 0 elsewhere, as relu's backward gives. A compile-time
// flag, not a null test per element: gcc does not vectorise a reduction loop with a conditional load.
template <bool Tail, typename T, typename A>
inline A grad_at(const T* g, const T* o, int64_t i) {
  const A v = widen<A>(g[i]);
  if constexpr (Tail) return widen<A>(o[i]) > A(0) ? v : A(0);
  return v;
}

// y = x * w * s, or relu(y + id) with the fused block tail.
template <typename T, typename A>
inline T gated(T x, A w, A s, const T* id, int64_t i) {
  const A v = widen<A>(x) * w * s;
  return to_storage<T>(id == nullptr ? v : std::max(v + widen<A>(id[i]), A(0)));
}

template <typename A>
struct Scratch {  // per-thread buffers of the pixel passes
  std::vector<A> s, m, t;
  std::vector<int32_t> k;
  Scratch(int64_t C) : s(std::max(kBlock, C)), m(kBlock), k(kBlock) {}
};

// Mean, max and first argmax over the C channel rows (`stride` apart) of x * mc for `len` pixels.
template <typename T, typename A>
inline void pool_block(const T* x, int64_t C, int64_t stride, int64_t len, const A* mc, bool need_idx, A* s_avg,
                       A* s_max, int32_t* is, Scratch<A>& w) {
  spatial_block(x, C, stride, len, mc, need_idx, w.s.data(), s_max, w.k.data());
  for (int64_t i = 0; i < len; ++i) s_avg[i] = w.s[i] / static_cast<A>(C);
  if (need_idx) std::copy(w.k.begin(), w.k.begin() + len, is);
}

constexpr int64_t kReduceBlock = 4096;

struct NCHW {
  static constexpr bool kRowRoutes = false;  // the max-pool routes are added after input_grad
  static int64_t at(int64_t c, int64_t p, int64_t /*C*/, int64_t HW) { return c * HW + p; }

  // Per channel: mean, max and first argmax over the HW pixels.
  template <typename T, typename A>
  static void pool_channels(const T* x, int64_t C, int64_t HW, bool need_idx, A* avg, A* mx, int32_t* ic) {
    for (int64_t c = 0; c < C; ++c) row_pool(x + c * HW, HW, need_idx, avg + c, mx + c, need_idx ? ic + c : nullptr);
  }

  // Per pixel: mean, max and first argmax channel of x * mc.
  template <typename T, typename A>
  static void pool_pixels(const T* x, int64_t C, int64_t HW, const A* mc, bool need_idx, A* s_avg, A* s_max,
                          int32_t* is, Scratch<A>& w) {
    for (int64_t p0 = 0; p0 < HW; p0 += kBlock) {
      const int64_t len = std::min(kBlock, HW - p0);
      pool_block(x + p0, C, HW, len, mc, need_idx, s_avg + p0, s_max + p0, need_idx ? is + p0 : nullptr, w);
    }
  }

  template <typename T, typename A>
  static void apply(const T* x, int64_t C, int64_t HW, const A* mc, const A* ms, const T* id, T* y) {
    for (int64_t c = 0; c < C; ++c) {
      const A w = mc[c];
      const T* xr = x + c * HW;
      const T* ir = id ? id + c * HW : nullptr;
      T* yr = y + c * HW;
      // kVecElementwise: elementwise_avx2.h, in builds with F16C; elsewhere this branch is discarded
      // uninstantiated, so its calls need no declaration there
      if constexpr (kVecElementwise<T, A>) {
        apply_plane(xr, HW, w, ms, ir, yr);
        continue;
      }
      _Pragma("omp simd")
      for (int64_t p = 0; p < HW; ++p) yr[p] = gated(xr[p], w, ms[p], ir, p);
    }
  }

  // dmc[c] += sum_p g x ms[p];  dms[p] += sum_c g x mc[c]  (one read of g and x; g masked by o > 0
  // where the block tail's output o is given).
  template <typename T, typename A>
  static void reduce(const T* g, const T* o, const T* x, int64_t C, int64_t HW, const A* mc, const A* ms, A* dmc,
                     A* dms, Scratch<A>& w) {
    // blocks of up to kReduceBlock pixels: each channel's segment of g, o and x is a longer sequential
    // read (the prefetchers ramp up per segment); the per-pixel sums (16 KB at most) stay in L1
    const int64_t block = std::min(HW, kReduceBlock);
    if (static_cast<int64_t>(w.s.size()) < block) w.s.resize(block);
    A* acc = w.s.data();
    for (int64_t p0 = 0; p0 < HW; p0 += block) {
      const int64_t len = std::min(block, HW - p0);
      for (int64_t i = 0; i < len; ++i) acc[i] = 0;
      for (int64_t c = 0; c < C; ++c) {
        const int64_t r = c * HW + p0;
        dmc[c] += grad_row(g + r, o ? o + r : nullptr, x + r, len, mc[c], ms + p0, acc);
      }
      for (int64_t i = 0; i < len; ++i) dms[p0 + i] += acc[i];
    }
  }

  // dmc[c] += sum_p x[c, p] a[p]  (acc: C values of scratch, for NHWC)
  template <typename T, typename A>
  static void row_dot(const T* x, int64_t C, int64_t HW, const A* a, A* dmc, A* /*acc*/) {
    for (int64_t c = 0; c < C; ++c) {
      dmc[c] += dot_row(x + c * HW, a, HW);
    }
  }

  // dx = g mc ms + mc a[p] + off[c]; did = g (both before the max-pool routes).
  template <typename T, typename A>
  static void input_grad(const T* g, const T* o, int64_t C, int64_t HW, const A* mc, const A* ms, const A* a,
                         const A* off, T* dx, T* did) {
    if (o) input_grad_t<true>(g, o, C, HW, mc, ms, a, off, dx, did);
    else input_grad_t<false>(g, o, C, HW, mc, ms, a, off, dx, did);
  }

  template <bool Tail, typename T, typename A>
  static void input_grad_t(const T* g, const T* o, int64_t C, int64_t HW, const A* mc, const A* ms, const A* a,
                         const A* off, T* dx, T* did) {
    for (int64_t c = 0; c < C; ++c) {
      const A w = mc[c], b = off[c];
      const int64_t r = c * HW;
      if constexpr (kVecElementwise<T, A>) {
        input_grad_plane(g + r, Tail ? o + r : nullptr, HW, w, ms, a, b, dx + r, did ? did + r : nullptr);
        continue;
      }
      _Pragma("omp simd")
      for (int64_t p = 0; p < HW; ++p) {
        const A gv = grad_at<Tail, T, A>(g, o, r + p);
        dx[r + p] = to_storage<T>(dx_value(gv, w, ms[p], a[p], b));
        if (did) did[r + p] = to_storage<T>(gv);
      }
    }
  }
};

struct NHWC {
  static constexpr bool kRowRoutes = true;  // input_grad adds the max-pool routes (RowRoutes)
  static int64_t at(int64_t c, int64_t p, int64_t C, int64_t /*HW*/) { return p * C + c; }

  // Per channel over the HW pixel rows: running sum, max and first argmax in C-long vectors.
  template <typename T, typename A>
  static void pool_channels(const T* x, int64_t C, int64_t HW, bool need_idx, A* avg, A* mx, int32_t* ic) {
    if constexpr (kWideRows<T, A>) {
      if (wide_rows<T>(C, HW)) return pool_channels_rows16(x, C, HW, need_idx, avg, mx, ic);
    }
    if constexpr (kNhwc16<T, A>) {
      if (C % 16 == 0) return pool_channels_16(x, C, HW, need_idx, avg, mx, ic);
    }
    for (int64_t c = 0; c < C; ++c) { avg[c] = 0; mx[c] = -std::numeric_limits<A>::infinity(); }
    if (need_idx) std::fill(ic, ic + C, 0);
    for (int64_t p = 0; p < HW; ++p) {
      const T* row = x + p * C;
      if (need_idx) {
        const int32_t pi = static_cast<int32_t>(p);
        _Pragma("omp simd")
        for (int64_t c = 0; c < C; ++c) {
          const A v = widen<A>(row[c]);
          avg[c] += v;
          const bool gt = v > mx[c];  // strict: the first maximum keeps the route
          mx[c] = gt ? v : mx[c];
          ic[c] = gt ? pi : ic[c];
        }
      } else {
        _Pragma("omp simd")
        for (int64_t c = 0; c < C; ++c) {
          const A v = widen<A>(row[c]);
          avg[c] += v;
          mx[c] = v > mx[c] ? v : mx[c];
        }
      }
    }
    for (int64_t c = 0; c < C; ++c) avg[c] /= static_cast<A>(HW);
  }

  // Per pixel: the C-long row of x * mc reduced to mean, max and first argmax (row_pool). Short rows
  // would pay a few horizontal reductions per pixel for a handful of channels: there a block of
  // pixels is transposed into w.t (C rows of `len` pixels; register tiles where C is a multiple of 16,
  // nhwc_simd.h) and reduced down the channels as NCHW does (spatial_block), with the same strict->
  // tie rule. "Short" is C < kWideRow for element-wise transposes, and C <= kTiledMaxChannels (per
  // ISA) for register tiles.
  static constexpr int64_t kWideRow = 64;

  // Whether the per-channel reductions walk the sample once, row by row (kWideRows builds): for wide
  // rows of a sample past L1. A smaller sample stays in L1 across the per-16-channel walks, whose sums
  // stay in registers (128x64x7x7 channels_last: the single walk 1.14x slower on an AVX2 build).
  static constexpr int64_t kWideRowMinBytes = 64 << 10;
  template <typename T>
  static bool wide_rows(int64_t C, int64_t HW) {
    return C % 16 == 0 && C >= kWideRow && C * HW * static_cast<int64_t>(sizeof(T)) > kWideRowMinBytes;
  }

  template <typename T, typename A>
  static bool short_rows(int64_t C) {
    if constexpr (kNhwc16<T, A>) {
      if (C % 16 == 0) return C <= kTiledMaxChannels;
    }
    return C < kWideRow;
  }

  template <typename T, typename A>
  static void pool_pixels(const T* x, int64_t C, int64_t HW, const A* mc, bool need_idx, A* s_avg, A* s_max,
                          int32_t* is, Scratch<A>& w) {
    if (short_rows<T, A>(C)) return pool_pixels_short(x, C, HW, mc, need_idx, s_avg, s_max, is, w);
    A* t = w.s.data();
    for (int64_t p = 0; p < HW; ++p)
      row_pool_scaled(x + p * C, mc, C, need_idx, s_avg + p, s_max + p, need_idx ? is + p : nullptr, t);
  }

  template <typename T, typename A>
  static void pool_pixels_short(const T* x, int64_t C, int64_t HW, const A* mc, bool need_idx, A* s_avg,
                                A* s_max, int32_t* is, Scratch<A>& w) {
    const int64_t block = std::max<int64_t>(16, std::min<int64_t>(kBlock, 4096 / std::max<int64_t>(C, 1)) / 16 * 16);
    w.t.resize(C * block);
    A* t = w.t.data();
    for (int64_t p0 = 0; p0 < HW; p0 += block) {
      const int64_t len = std::min(block, HW - p0);
      int64_t i0 = 0;
      if constexpr (kNhwc16<T, A>) {
        if (C % 16 == 0) {
          i0 = len / 16 * 16;
          transpose_tiles(x + p0 * C, C, i0, t, len);
        }
      }
      for (int64_t i = i0; i < len; ++i) {
        const T* row = x + (p0 + i) * C;
        for (int64_t c = 0; c < C; ++c) t[c * len + i] = widen<A>(row[c]);
      }
      pool_block(t, C, len, len, mc, need_idx, s_avg + p0, s_max + p0, need_idx ? is + p0 : nullptr, w);
    }
  }

  template <typename T, typename A>
  static void apply(const T* x, int64_t C, int64_t HW, const A* mc, const A* ms, const T* id, T* y) {
    if constexpr (kRows16<T, A>) {
      if (C % 16 == 0) {
        if (id) return apply_rows16<true>(x, C, HW, mc, ms, id, y);
        return apply_rows16<false>(x, C, HW, mc, ms, id, y);
      }
    }
    if constexpr (kVecElementwise<T, A>) {
      if (C % 8 == 0) return apply_rows(x, C, HW, mc, ms, id, y);
    }
    for (int64_t p = 0; p < HW; ++p) {
      const A s = ms[p];
      const int64_t r = p * C;
      const T* ir = id ? id + r : nullptr;
      _Pragma("omp simd")
      for (int64_t c = 0; c < C; ++c) y[r + c] = gated(x[r + c], mc[c], s, ir, c);
    }
  }

  template <typename T, typename A>
  static void reduce(const T* g, const T* o, const T* x, int64_t C, int64_t HW, const A* mc, const A* ms, A* dmc,
                     A* dms, Scratch<A>& w) {
    if (o) reduce_t<true>(g, o, x, C, HW, mc, ms, dmc, dms, w);
    else reduce_t<false>(g, o, x, C, HW, mc, ms, dmc, dms, w);
  }

  template <bool Tail, typename T, typename A>
  static void reduce_t(const T* g, const T* o, const T* x, int64_t C, int64_t HW, const A* mc, const A* ms, A* dmc,
                     A* dms, Scratch<A>& w) {
    if constexpr (kWideRows<T, A>) {
      if (wide_rows<T>(C, HW)) return reduce_rows16<Tail>(g, o, x, C, HW, mc, ms, dmc, dms, w.s.data());
    }
    if constexpr (kNhwc16<T, A>) {
      if (C % 16 == 0) return reduce_16<Tail>(g, o, x, C, HW, mc, ms, dmc, dms);
    }
    for (int64_t p = 0; p < HW; ++p) {
      const A s = ms[p];
      const int64_t r = p * C;
      A dot = 0;
      _Pragma("omp simd reduction(+:dot)")
      for (int64_t c = 0; c < C; ++c) {
        const A v = grad_at<Tail, T, A>(g, o, r + c) * widen<A>(x[r + c]);
        dmc[c] += v * s;
        dot += v * mc[c];
      }
      dms[p] += dot;
    }
  }

  template <typename T, typename A>
  static void row_dot(const T* x, int64_t C, int64_t HW, const A* a, A* dmc, A* acc) {
    if constexpr (kWideRows<T, A>) {
      if (wide_rows<T>(C, HW)) return row_dot_rows16(x, C, HW, a, dmc, acc);
    }
    if constexpr (kNhwc16<T, A>) {
      if (C % 16 == 0) return row_dot_16(x, C, HW, a, dmc);
    }
    for (int64_t p = 0; p < HW; ++p) {
      const A ap = a[p];
      const T* row = x + p * C;
      _Pragma("omp simd")
      for (int64_t c = 0; c < C; ++c) dmc[c] += widen<A>(row[c]) * ap;
    }
  }

  // dx = g mc ms[p] + mc a[p] + off[c] with rt's routes (RowRoutes); did = g.
  template <typename T, typename A>
  static void input_grad(const T* g, const T* o, int64_t C, int64_t HW, const A* mc, const A* ms, const A* a,
                         const A* off, T* dx, T* did, const RowRoutes<A>& rt) {
    if (rt.cp) input_grad_r<2>(g, o, C, HW, mc, ms, a, off, dx, did, rt);
    else input_grad_r<1>(g, o, C, HW, mc, ms, a, off, dx, did, rt);
  }

  template <int R, typename T, typename A>
  static void input_grad_r(const T* g, const T* o, int64_t C, int64_t HW, const A* mc, const A* ms, const A* a,
                           const A* off, T* dx, T* did, const RowRoutes<A>& rt) {
    if (o) input_grad_t<true, R>(g, o, C, HW, mc, ms, a, off, dx, did, rt);
    else input_grad_t<false, R>(g, o, C, HW, mc, ms, a, off, dx, did, rt);
  }

  template <bool Tail, int R, typename T, typename A>
  static void input_grad_t(const T* g, const T* o, int64_t C, int64_t HW, const A* mc, const A* ms, const A* a,
                           const A* off, T* dx, T* did, const RowRoutes<A>& rt) {
    if constexpr (kRows16<T, A>) {
      if (C % 16 == 0) return input_grad_rows16<Tail, R>(g, o, C, HW, mc, ms, a, off, dx, did, &rt);
    }
    if constexpr (kVecElementwise<T, A>) {
      if (C % 8 == 0) return input_grad_rows<R>(g, Tail ? o : nullptr, C, HW, mc, ms, a, off, dx, did, &rt);
    }
    for (int64_t p = 0; p < HW; ++p) {
      const A s = ms[p], ap = a[p], sv = rt.sv[p];
      const int64_t r = p * C, sc = rt.sc[p];
      _Pragma("omp simd")
      for (int64_t c = 0; c < C; ++c) {
        const A gv = grad_at<Tail, T, A>(g, o, r + c);
        A v = dx_value(gv, mc[c], s, ap, off[c]);
        v = c == sc ? v + sv : v;
        if constexpr (R > 1) v = rt.cp[c] == p ? v + rt.cv[c] : v;
        dx[r + c] = to_storage<T>(v);
        if (did) did[r + c] = to_storage<T>(gv);
      }
    }
  }
};

}  // namespace sample
}  // namespace cbam_cpu

// Calls RUN<Layout, scalar_t>(...) for x's memory layout and dtype.
#define CBAM_DISPATCH_LAYOUT(x, name, RUN, ...)                                       \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, (x).scalar_type(), name, [&] { \
    if (is_nhwc(x)) RUN<NHWC, scalar_t>(__VA_ARGS__);                                  \
    else RUN<NCHW, scalar_t>(__VA_ARGS__);                                             \
  })

