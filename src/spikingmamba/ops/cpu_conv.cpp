// Compiled CPU causal depthwise conv1d + SiLU in the (batch, length, channels) layout, forward and
// backward, so the mixer needs no transposes, no padded output and no separate SiLU pass. The math is
// `causal_conv_silu_ref` in ops/causal_conv.py (docs/PERFORMANCE.md):
//
//   pre[t, c] = bias[c] + sum_k w[k, c] x[t - (K - 1) + k, c]   (x[< 0] = 0)      out = silu(pre)
//   g_pre = g silu'(pre),  silu'(p) = s (1 + p (1 - s)),  s = sigmoid(p)
//   dx[t, c] = sum_k w[k, c] g_pre[t + (K - 1) - k, c]     dw[k, c] = sum_{b,t} g_pre[t, c] x[t - (K - 1) + k, c]
//   dbias[c] = sum_{b,t} g_pre[t, c]
//
// Shapes: x (b, l, d) with a contiguous last dimension and strides (sxb, sxl) in elements; w (K, d),
// bias (d) or null; out, g, g_pre, dx (b, l, d) contiguous; dw_part (parts, K, d), dbias_part (parts, d)
// double, per-thread partial sums reduced in Python. Rows (b, t) are split over threads.

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace {

template <typename T>
inline T sigmoid(T p) {
  return T(1) / (T(1) + std::exp(-p));
}

inline void rows_of(int64_t rows, int part, int parts, int64_t* row0, int64_t* row1) {
  int64_t per = rows / parts, extra = rows % parts;
  *row0 = part * per + std::min<int64_t>(part, extra);
  *row1 = *row0 + per + (part < extra ? 1 : 0);
}

// pre-activation of row (bi, t) into pre[0:d]
template <typename T>
inline void pre_row(const T* x, int64_t sxb, int64_t sxl, const T* w, const T* bias, int64_t bi, int64_t t,
                    int64_t d, int64_t K, T* pre) {
#pragma omp simd
  for (int64_t c = 0; c < d; ++c) pre[c] = bias ? bias[c] : T(0);
  for (int64_t k = 0; k < K; ++k) {
    int64_t tt = t - (K - 1) + k;
    if (tt < 0) continue;
    const T* xr = x + bi * sxb + tt * sxl;
    const T* wk = w + k * d;
#pragma omp simd
    for (int64_t c = 0; c < d; ++c) pre[c] += wk[c] * xr[c];
  }
}

template <typename T>
void forward(const T* x, int64_t sxb, int64_t sxl, const T* w, const T* bias, int64_t b, int64_t l, int64_t d,
             int64_t K, T* out, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int part = 0; part < threads; ++part) {
    int64_t row0, row1;
    rows_of(b * l, part, threads, &row0, &row1);
    for (int64_t r = row0; r < row1; ++r) {
      T* o = out + r * d;
      pre_row(x, sxb, sxl, w, bias, r / l, r % l, d, K, o);
#pragma omp simd
      for (int64_t c = 0; c < d; ++c) o[c] = o[c] * sigmoid(o[c]);
    }
  }
}

template <typename T>
void backward(const T* x, int64_t sxb, int64_t sxl, const T* w, const T* bias, const T* g, int64_t b, int64_t l,
              int64_t d, int64_t K, T* g_pre, T* dx, double* dw_part, double* dbias_part, int threads) {
#pragma omp parallel num_threads(threads)
  {
    int part = omp_get_thread_num(), parts = omp_get_num_threads();
    int64_t row0, row1;
    rows_of(b * l, part, parts, &row0, &row1);
    double* dw = dw_part + part * K * d;
    double* dbias = dbias_part + part * d;
    std::fill(dw, dw + K * d, 0.0);
    std::fill(dbias, dbias + d, 0.0);
    for (int64_t r = row0; r < row1; ++r) {          // g_pre, and dw, dbias from this row
      int64_t bi = r / l, t = r % l;
      T* gp = g_pre + r * d;
      pre_row(x, sxb, sxl, w, bias, bi, t, d, K, gp);
      const T* gr = g + r * d;
#pragma omp simd
      for (int64_t c = 0; c < d; ++c) {
        T p = gp[c], s = sigmoid(p);
        gp[c] = gr[c] * (s * (T(1) + p * (T(1) - s)));
        dbias[c] += double(gp[c]);
      }
      for (int64_t k = 0; k < K; ++k) {
        int64_t tt = t - (K - 1) + k;
        if (tt < 0) continue;
        const T* xr = x + bi * sxb + tt * sxl;
        double* dwk = dw + k * d;
#pragma omp simd
        for (int64_t c = 0; c < d; ++c) dwk[c] += double(gp[c] * xr[c]);
      }
    }
#pragma omp barrier
    for (int64_t r = row0; r < row1; ++r) {          // dx needs g_pre of later rows (other threads')
      int64_t t = r % l;
      T* o = dx + r * d;
#pragma omp simd
      for (int64_t c = 0; c < d; ++c) o[c] = T(0);
      for (int64_t k = 0; k < K; ++k) {
        int64_t tt = t + (K - 1) - k;
        if (tt >= l) continue;
        const T* gp = g_pre + (r - t + tt) * d;
        const T* wk = w + k * d;
#pragma omp simd
        for (int64_t c = 0; c < d; ++c) o[c] += wk[c] * gp[c];
      }
    }
  }
}

}  // namespace

extern "C" {

void conv_forward_f32(const float* x, int64_t sxb, int64_t sxl, const float* w, const float* bias, int64_t b,
                      int64_t l, int64_t d, int64_t K, float* out, int threads) {
  forward(x, sxb, sxl, w, bias, b, l, d, K, out, threads);
}
void conv_forward_f64(const double* x, int64_t sxb, int64_t sxl, const double* w, const double* bias, int64_t b,
                      int64_t l, int64_t d, int64_t K, double* out, int threads) {
  forward(x, sxb, sxl, w, bias, b, l, d, K, out, threads);
}
void conv_backward_f32(const float* x, int64_t sxb, int64_t sxl, const float* w, const float* bias, const float* g,
                       int64_t b, int64_t l, int64_t d, int64_t K, float* g_pre, float* dx, double* dw_part,
                       double* dbias_part, int threads) {
  backward(x, sxb, sxl, w, bias, g, b, l, d, K, g_pre, dx, dw_part, dbias_part, threads);
}
void conv_backward_f64(const double* x, int64_t sxb, int64_t sxl, const double* w, const double* bias,
                       const double* g, int64_t b, int64_t l, int64_t d, int64_t K, double* g_pre, double* dx,
                       double* dw_part, double* dbias_part, int threads) {
  backward(x, sxb, sxl, w, bias, g, b, l, d, K, g_pre, dx, dw_part, dbias_part, threads);
}

}  // extern "C"
