// Compiled CPU SI-LIF neuron with its SGC path: the forward and the backward each in one pass.
// The math is `silif_ref` in neurons/silif.py (docs/PERFORMANCE.md); every element is computed with
// the same float operations in the same order as those torch ops (no FMA contraction, no fast-math),
// so x_out and dx equal the reference exactly; only dtheta, a sum over rows, is summed in another
// order (in double).
//
// Shapes: x, x_out, spikes, grad, dx (rows, c), contiguous; theta (c); dtheta_part (parts, c) double.
// sgc: 0 none (x_out = x_hat), 1 residual, 2 gradient (docs of neurons/silif.py).

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace {

template <typename T>
struct Spike {        // s = clip(round(x / theta), lo, hi) and x_hat = theta * s for one element
  T th, u, s, x_hat;
  Spike(T x, T theta, T theta_min, T lo, T hi) {
    th = theta < theta_min ? theta_min : theta;    // theta.clamp(min=theta_min); NaN stays NaN
    u = x / th;
    T r = std::nearbyint(u);                        // round half to even, as torch.round
    s = r < lo ? lo : (r > hi ? hi : r);            // clamp_(lo, hi); NaN stays NaN
    x_hat = th * s;
  }
};

template <typename T, int kSgc>
void forward_rows(const T* x, const T* theta, int64_t row0, int64_t row1, int64_t c, T theta_min, T lo, T hi,
                  T lam, T* out, T* spikes) {
  for (int64_t r = row0; r < row1; ++r) {
    const T* xr = x + r * c;
    T* outr = out + r * c;
    T* sr = spikes ? spikes + r * c : nullptr;
#pragma omp simd
    for (int64_t j = 0; j < c; ++j) {
      Spike<T> sp(xr[j], theta[j], theta_min, lo, hi);
      if (kSgc == 1) {
        outr[j] = sp.x_hat + lam * (xr[j] - sp.x_hat);
      } else if (kSgc == 2) {
        outr[j] = sp.x_hat + lam * ((xr[j] - xr[j]) - (sp.x_hat - sp.x_hat));
      } else {
        outr[j] = sp.x_hat;
      }
      if (sr) sr[j] = sp.s;
    }
  }
}

// Per element (autograd's order, sgc on): g_hat = g + (-(g lam)); g_s = g_hat theta; g_u = g_s * (alpha
// inside [lo, hi], else 0); dx = g lam + g_u / theta; dtheta += g_hat s + (-g_u) ((x / theta) / theta).
template <typename T, bool kSgc>
void backward_rows(const T* x, const T* theta, const T* grad, int64_t row0, int64_t row1, int64_t c,
                   T theta_min, T lo, T hi, T lam, T alpha, T* dx, double* dtheta) {
  for (int64_t r = row0; r < row1; ++r) {
    const T* xr = x + r * c;
    const T* gr = grad + r * c;
    T* dxr = dx + r * c;
#pragma omp simd
    for (int64_t j = 0; j < c; ++j) {
      Spike<T> sp(xr[j], theta[j], theta_min, lo, hi);
      T g = gr[j];
      T g_hat = kSgc ? g + (-(g * lam)) : g;
      T g_s = g_hat * sp.th;
      T g_u = g_s * ((sp.u >= lo && sp.u <= hi) ? alpha : T(0));
      T d_div = g_u / sp.th;
      dxr[j] = kSgc ? g * lam + d_div : d_div;
      dtheta[j] += double(g_hat * sp.s) + double(-g_u * (sp.u / sp.th));
    }
  }
}

inline int64_t rows_of(int64_t rows, int part, int parts, int64_t* row0) {
  int64_t per = rows / parts, extra = rows % parts;
  *row0 = part * per + std::min<int64_t>(part, extra);
  return *row0 + per + (part < extra ? 1 : 0);
}

template <typename T>
void forward(const T* x, const T* theta, int64_t rows, int64_t c, double theta_min, int lo, int hi, double lam,
             int sgc, T* out, T* spikes, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int part = 0; part < threads; ++part) {
    int64_t row0, row1 = rows_of(rows, part, threads, &row0);
    const T tm = T(theta_min), l = T(lo), h = T(hi), lm = T(lam);
    if (sgc == 1) forward_rows<T, 1>(x, theta, row0, row1, c, tm, l, h, lm, out, spikes);
    else if (sgc == 2) forward_rows<T, 2>(x, theta, row0, row1, c, tm, l, h, lm, out, spikes);
    else forward_rows<T, 0>(x, theta, row0, row1, c, tm, l, h, lm, out, spikes);
  }
}

template <typename T>
void backward(const T* x, const T* theta, const T* grad, int64_t rows, int64_t c, double theta_min, int lo,
              int hi, double lam, int sgc, double alpha, T* dx, double* dtheta_part, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int part = 0; part < threads; ++part) {
    int64_t row0, row1 = rows_of(rows, part, threads, &row0);
    double* dtheta = dtheta_part + part * c;
    std::fill(dtheta, dtheta + c, 0.0);
    const T tm = T(theta_min), l = T(lo), h = T(hi), lm = T(lam), a = T(alpha);
    if (sgc) backward_rows<T, true>(x, theta, grad, row0, row1, c, tm, l, h, lm, a, dx, dtheta);
    else backward_rows<T, false>(x, theta, grad, row0, row1, c, tm, l, h, lm, a, dx, dtheta);
  }
}

}  // namespace

extern "C" {

void neuron_forward_f32(const float* x, const float* theta, int64_t rows, int64_t c, double theta_min, int lo,
                        int hi, double lam, int sgc, float* out, float* spikes, int threads) {
  forward(x, theta, rows, c, theta_min, lo, hi, lam, sgc, out, spikes, threads);
}
void neuron_forward_f64(const double* x, const double* theta, int64_t rows, int64_t c, double theta_min, int lo,
                        int hi, double lam, int sgc, double* out, double* spikes, int threads) {
  forward(x, theta, rows, c, theta_min, lo, hi, lam, sgc, out, spikes, threads);
}
void neuron_backward_f32(const float* x, const float* theta, const float* grad, int64_t rows, int64_t c,
                         double theta_min, int lo, int hi, double lam, int sgc, double alpha, float* dx,
                         double* dtheta_part, int threads) {
  backward(x, theta, grad, rows, c, theta_min, lo, hi, lam, sgc, alpha, dx, dtheta_part, threads);
}
void neuron_backward_f64(const double* x, const double* theta, const double* grad, int64_t rows, int64_t c,
                         double theta_min, int lo, int hi, double lam, int sgc, double alpha, double* dx,
                         double* dtheta_part, int threads) {
  backward(x, theta, grad, rows, c, theta_min, lo, hi, lam, sgc, alpha, dx, dtheta_part, threads);
}

}  // extern "C"
