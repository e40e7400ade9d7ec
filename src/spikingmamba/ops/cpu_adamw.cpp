// Compiled CPU AdamW: one step of every parameter tensor of an optimiser in one OpenMP parallel region.
// torch's fused AdamW runs one parallel region per tensor; on a shared machine each region waits for
// all its threads to be scheduled, so a model's ~70 tensors cost ~70 waits per step. Here the tensors'
// elements are cut into pieces of at most kPiece and the pieces shared out dynamically.
//
// Per element, torch's per-tensor AdamW (decoupled weight decay) in the same float operations and
// order (FMAs only where torch's vectorised lerp and addcmul have them; no other contraction), with the per-tensor scalars computed in double by the caller
// (ops/cpu_adamw.py): decay = 1 - lr wd, step_size = lr / (1 - beta1^t), bc2_sqrt = sqrt(1 - beta2^t):
//   p *= decay;  m = lerp(m, g, 1 - beta1);  v = v beta2 + ((1 - beta2) g) g
//   p += -step_size m / (sqrt(v) / bc2_sqrt + eps)

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace {

constexpr int64_t kPiece = 1 << 14;  // elements per work piece

struct Piece {
  int64_t tensor, begin, end;
};

// The scalars of one tensor, as float (torch converts a Python scalar to the tensor's dtype)
struct Scalars {
  float decay, w, w_minus_one, beta2, one_minus_beta2, bc2_sqrt, eps, neg_step_size;
};

void update(float* p, const float* g, float* m, float* v, int64_t n, const Scalars& s) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float pi = p[i] * s.decay;
    const float mi = m[i], gi = g[i];
    // torch's vectorised lerp: fma(weight, end - self, self) for weight < 0.5, else
    // fma(weight - 1, end - self, end)
    const float m_new = s.w < 0.5f ? std::fma(s.w, gi - mi, mi) : std::fma(s.w_minus_one, gi - mi, gi);
    const float v_new = std::fma(s.one_minus_beta2 * gi, gi, v[i] * s.beta2);   // addcmul: fma(value t1, t2, self)
    const float denom = std::sqrt(v_new) / s.bc2_sqrt + s.eps;
    m[i] = m_new;
    v[i] = v_new;
    p[i] = pi + s.neg_step_size * m_new / denom;        // addcdiv: self + value * t1 / t2
  }
}

}  // namespace

extern "C" {

// params, grads, exp_avgs, exp_avg_sqs: `count` pointers to float32 tensors of numel[i] elements;
// per tensor: decay, lerp weight (1 - beta1), beta2, bc2_sqrt, eps, step_size (doubles).
void adamw_step_f32(int64_t count, float* const* params, const float* const* grads, float* const* exp_avgs,
                    float* const* exp_avg_sqs, const int64_t* numel, const double* decay, const double* weight,
                    const double* beta2, const double* bc2_sqrt, const double* eps, const double* step_size,
                    int threads) {
  std::vector<Piece> pieces;
  std::vector<Scalars> scalars(count);
  for (int64_t t = 0; t < count; ++t) {
    scalars[t] = Scalars{float(decay[t]), float(weight[t]), float(weight[t]) - 1.f, float(beta2[t]),
                         float(1.0 - beta2[t]), float(bc2_sqrt[t]), float(eps[t]), float(-step_size[t])};
    for (int64_t b = 0; b < numel[t]; b += kPiece) pieces.push_back({t, b, std::min(numel[t], b + kPiece)});
  }
  const int64_t n_pieces = static_cast<int64_t>(pieces.size());
#pragma omp parallel for num_threads(threads) schedule(dynamic)
  for (int64_t i = 0; i < n_pieces; ++i) {
    const Piece& pc = pieces[i];
    const int64_t t = pc.tensor;
    update(params[t] + pc.begin, grads[t] + pc.begin, exp_avgs[t] + pc.begin, exp_avg_sqs[t] + pc.begin,
           pc.end - pc.begin, scalars[t]);
  }
}

}  // extern "C"
