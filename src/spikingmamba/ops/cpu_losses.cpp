// Compiled CPU distillation losses: the logit KL and the hidden-state matching term, each forward and
// backward in one pass over its rows (one OpenMP parallel region per call). The math is
// `kl_divergence_ref` and `hidden_state_loss_ref` in distill/losses.py (docs/PERFORMANCE.md); sums are
// taken in double, so both equal their references to float rounding.
//
// KL (per row r of V logits, a = z / T):  LSE = log sum_v exp(a_v)  (with the row's max taken out)
//   KL_r = sum_v p_t (a_t - a_s) - LSE_t + LSE_s,  p_t = exp(a_t - LSE_t)
//   loss = T^2 sum_r m_r KL_r / max(sum_r m_r, 1);   dz_s = g T m_r / count (p_s - p_t)
// The forward keeps LSE_s and LSE_t of every row (lse (rows, 2)); the backward recomputes p_s, p_t.
//
// Hidden states (L layers, rows r of d channels, weights w_i summing to 1):
//   e_ir = mean_c (h_s - h_t)^2 / den_ir,  den_ir = mean_c h_t^2 + eps (normalize) or 1
//   loss = sum_i w_i sum_r m_r e_ir / count;   dh_s = g coef_ir (h_s - h_t),  coef_ir = 2 w_i m_r / (count d den_ir)
// The forward keeps coef (L, rows); the backward is one multiply per element.
//
// mask m (rows) may be null (every row counts). Partial sums per thread (parts) are added in order.

#include <omp.h>

#include "cpu_math.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace {

template <typename T>
inline T expo(T v) { return std::exp(v); }
template <>
inline float expo<float>(float v) { return spikingmamba::exp_approx(v); }

inline void rows_of(int64_t rows, int part, int parts, int64_t* row0, int64_t* row1) {
  int64_t per = rows / parts, extra = rows % parts;
  *row0 = part * per + std::min<int64_t>(part, extra);
  *row1 = *row0 + per + (part < extra ? 1 : 0);
}

inline double mask_count(const double* mask, int64_t rows) {
  if (!mask) return double(rows);
  double count = 0;
  for (int64_t r = 0; r < rows; ++r) count += mask[r];
  return std::max(count, 1.0);
}

// log sum_v exp(z_v / T) of one row, in double
template <typename T>
double log_sum_exp(const T* z, int64_t v, double inv_t) {
  T mx = z[0];
  for (int64_t i = 1; i < v; ++i) mx = z[i] > mx ? z[i] : mx;
  const T scale = T(inv_t), shift = mx * scale;
  double s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < v; ++i) s += double(expo(z[i] * scale - shift));
  return double(shift) + std::log(s);
}

template <typename T>
double kl_forward(const T* zs, const T* zt, const double* mask, int64_t rows, int64_t v, double temperature,
                  T* lse, int threads) {
  const double inv_t = 1.0 / temperature, count = mask_count(mask, rows);
  std::vector<double> part(threads, 0.0);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int p = 0; p < threads; ++p) {
    int64_t row0, row1;
    rows_of(rows, p, threads, &row0, &row1);
    double acc = 0;
    for (int64_t r = row0; r < row1; ++r) {
      const T *s = zs + r * v, *t = zt + r * v;
      const double lse_s = log_sum_exp(s, v, inv_t), lse_t = log_sum_exp(t, v, inv_t);
      lse[2 * r] = T(lse_s);
      lse[2 * r + 1] = T(lse_t);
      if (mask && mask[r] == 0) continue;
      const T scale = T(inv_t), lt = T(lse_t);
      double cross = 0;                          // sum_v p_t (a_t - a_s)
#pragma omp simd reduction(+ : cross)
      for (int64_t i = 0; i < v; ++i) {
        const T at = t[i] * scale;
        cross += double(expo(at - lt)) * (double(at) - double(s[i] * scale));
      }
      acc += (cross - lse_t + lse_s) * (mask ? mask[r] : 1.0);
    }
    part[p] = acc;
  }
  double total = 0;
  for (double x : part) total += x;
  return total * temperature * temperature / count;
}

template <typename T>
void kl_backward(const T* zs, const T* zt, const double* mask, const T* lse, int64_t rows, int64_t v,
                 double temperature, double grad, T* dzs, int threads) {
  const double inv_t = 1.0 / temperature, count = mask_count(mask, rows);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int p = 0; p < threads; ++p) {
    int64_t row0, row1;
    rows_of(rows, p, threads, &row0, &row1);
    for (int64_t r = row0; r < row1; ++r) {
      const T *s = zs + r * v, *t = zt + r * v;
      T* d = dzs + r * v;
      const T k = T(grad * temperature * (mask ? mask[r] : 1.0) / count);
      if (k == T(0)) {
        std::fill(d, d + v, T(0));
        continue;
      }
      const T scale = T(inv_t), ls = lse[2 * r], lt = lse[2 * r + 1];
#pragma omp simd
      for (int64_t i = 0; i < v; ++i) d[i] = k * (expo(s[i] * scale - ls) - expo(t[i] * scale - lt));
    }
  }
}

// The (layer, row) pairs are shared out as one range of L * rows.
template <typename T>
double hidden_forward(int64_t layers, const T* const* hs, const T* const* ht, const double* w, const double* mask,
                      int64_t rows, int64_t d, int normalize, double eps, T* coef, int threads) {
  const double count = mask_count(mask, rows);
  std::vector<double> part(threads, 0.0);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int p = 0; p < threads; ++p) {
    int64_t q0, q1;
    rows_of(layers * rows, p, threads, &q0, &q1);
    double acc = 0;
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t i = q / rows, r = q % rows;
      const T *s = hs[i] + r * d, *t = ht[i] + r * d;
      double se = 0, st = 0;
#pragma omp simd reduction(+ : se, st)
      for (int64_t c = 0; c < d; ++c) {
        const double diff = double(s[c]) - double(t[c]);
        se += diff * diff;
        st += double(t[c]) * double(t[c]);
      }
      const double den = normalize ? st / double(d) + eps : 1.0;
      const double m = mask ? mask[r] : 1.0;
      acc += w[i] * m * (se / double(d)) / den;
      coef[q] = T(2.0 * w[i] * m / (count * double(d) * den));
    }
    part[p] = acc;
  }
  double total = 0;
  for (double x : part) total += x;
  return total / count;
}

template <typename T>
void hidden_backward(int64_t layers, const T* const* hs, const T* const* ht, T* const* dhs, const T* coef,
                     int64_t rows, int64_t d, double grad, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int p = 0; p < threads; ++p) {
    int64_t q0, q1;
    rows_of(layers * rows, p, threads, &q0, &q1);
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t i = q / rows, r = q % rows;
      const T *s = hs[i] + r * d, *t = ht[i] + r * d;
      T* out = dhs[i] + r * d;
      const T k = T(grad * double(coef[q]));
#pragma omp simd
      for (int64_t c = 0; c < d; ++c) out[c] = k * (s[c] - t[c]);
    }
  }
}

}  // namespace

#define LOSS_ENTRY_POINTS(T, SUFFIX)                                                                        \
  extern "C" double kl_forward_##SUFFIX(const T* zs, const T* zt, const double* mask, int64_t rows,        \
                                         int64_t v, double temperature, T* lse, int threads) {              \
    return kl_forward(zs, zt, mask, rows, v, temperature, lse, threads);                                    \
  }                                                                                                          \
  extern "C" void kl_backward_##SUFFIX(const T* zs, const T* zt, const double* mask, const T* lse,          \
                                        int64_t rows, int64_t v, double temperature, double grad, T* dzs,    \
                                        int threads) {                                                       \
    kl_backward(zs, zt, mask, lse, rows, v, temperature, grad, dzs, threads);                               \
  }                                                                                                          \
  extern "C" double hidden_forward_##SUFFIX(int64_t layers, const T* const* hs, const T* const* ht,         \
                                             const double* w, const double* mask, int64_t rows, int64_t d,  \
                                             int normalize, double eps, T* coef, int threads) {             \
    return hidden_forward(layers, hs, ht, w, mask, rows, d, normalize, eps, coef, threads);                 \
  }                                                                                                          \
  extern "C" void hidden_backward_##SUFFIX(int64_t layers, const T* const* hs, const T* const* ht,          \
                                            T* const* dhs, const T* coef, int64_t rows, int64_t d,           \
                                            double grad, int threads) {                                      \
    hidden_backward(layers, hs, ht, dhs, coef, rows, d, grad, threads);                                      \
  }

LOSS_ENTRY_POINTS(float, f32)
LOSS_ENTRY_POINTS(double, f64)
