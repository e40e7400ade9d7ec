// Compiled CPU RMSNorm, forward and backward, one pass over each row (the row stays in L1). The math
// is `rms_norm_ref` in ops/rms_norm.py (docs/PERFORMANCE.md):
//
//   r = 1 / sqrt(mean_c(x^2) + eps)        y = w * (x * r)
//   dx = r (w g) - x r^3 mean_c(w g x)     dw = sum_rows g x r
//
// Shapes: x, g, y, dx (rows, d) contiguous; w (d); r (rows) saved by the forward; dw_part (parts, d)
// double, per-thread partial sums reduced in Python. Row sums are taken in double.
//
// With a residual (add_rms_norm): the forward takes h and m (may be null: x is given) and writes
// x = h + m before normalising it; the backward adds g_x, the gradient reaching x from its other uses
// (may be null), to dx: dh = dm = g_x + dx.

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace {

inline void rows_of(int64_t rows, int part, int parts, int64_t* row0, int64_t* row1) {
  int64_t per = rows / parts, extra = rows % parts;
  *row0 = part * per + std::min<int64_t>(part, extra);
  *row1 = *row0 + per + (part < extra ? 1 : 0);
}

template <typename T>
void forward(const T* h, const T* m, T* x, const T* w, int64_t rows, int64_t d, double eps, T* y, T* r_out,
             int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int part = 0; part < threads; ++part) {
    int64_t row0, row1;
    rows_of(rows, part, threads, &row0, &row1);
    for (int64_t i = row0; i < row1; ++i) {
      T* xr = x + i * d;
      if (m) {
        const T *hr = h + i * d, *mr = m + i * d;
#pragma omp simd
        for (int64_t c = 0; c < d; ++c) xr[c] = hr[c] + mr[c];
      }
      double ss = 0;
#pragma omp simd reduction(+ : ss)
      for (int64_t c = 0; c < d; ++c) ss += double(xr[c]) * double(xr[c]);
      const T r = T(1) / std::sqrt(T(ss / double(d)) + T(eps));
      if (r_out) r_out[i] = r;
      T* yr = y + i * d;
#pragma omp simd
      for (int64_t c = 0; c < d; ++c) yr[c] = w[c] * (xr[c] * r);
    }
  }
}

template <typename T>
void backward(const T* x, const T* w, const T* r_in, const T* g, const T* g_x, int64_t rows, int64_t d, T* dx,
              double* dw_part, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int part = 0; part < threads; ++part) {
    int64_t row0, row1;
    rows_of(rows, part, threads, &row0, &row1);
    double* dw = dw_part + part * d;
    std::fill(dw, dw + d, 0.0);
    for (int64_t i = row0; i < row1; ++i) {
      const T *xr = x + i * d, *gr = g + i * d;
      const T r = r_in[i];
      double dot = 0;
#pragma omp simd reduction(+ : dot)
      for (int64_t c = 0; c < d; ++c) {
        dot += double(w[c] * gr[c]) * double(xr[c]);
        dw[c] += double(gr[c] * (xr[c] * r));
      }
      const T k = T(dot / double(d)) * r * r * r;
      T* dxr = dx + i * d;
#pragma omp simd
      for (int64_t c = 0; c < d; ++c) dxr[c] = r * (w[c] * gr[c]) - xr[c] * k;
      if (g_x) {
        const T* gxr = g_x + i * d;
#pragma omp simd
        for (int64_t c = 0; c < d; ++c) dxr[c] = gxr[c] + dxr[c];
      }
    }
  }
}

}  // namespace

// x: the input (h, m null), or the output h + m; g_x may be null.
#define NORM_ENTRY_POINTS(T, SUFFIX)                                                                        \
  extern "C" void norm_forward_##SUFFIX(const T* h, const T* m, T* x, const T* w, int64_t rows, int64_t d,  \
                                         double eps, T* y, T* r, int threads) {                              \
    forward(h, m, x, w, rows, d, eps, y, r, threads);                                                       \
  }                                                                                                          \
  extern "C" void norm_backward_##SUFFIX(const T* x, const T* w, const T* r, const T* g, const T* g_x,      \
                                          int64_t rows, int64_t d, T* dx, double* dw_part, int threads) {    \
    backward(x, w, r, g, g_x, rows, d, dx, dw_part, threads);                                               \
  }

NORM_ENTRY_POINTS(float, f32)
NORM_ENTRY_POINTS(double, f64)
