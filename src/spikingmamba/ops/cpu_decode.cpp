// Compiled CPU decode step of a (spiking) Mamba LM, float32: one call per token for the whole model.
// The Python side (cpu_decode.py) describes the deployed model once in the structs below, compiles
// this file once per machine and calls it through ctypes; `MambaMixer.step` through the deployed
// modules is its oracle (tests/test_inference.py).
//
// Shapes: b=batch, d_model, d_inner, n=d_state, R=dt_rank, K=conv kernel, V=vocab.
//
// Projections. Every weight is stored transposed, Wt (c_in, c_out) row-major, so the weights one
// input channel drives are one contiguous row. y (b, c_out) = bias + sum over active channels i of
// v_i * Wt[i]. A spiking projection folds its neuron in: v_i = clip(round(x_i / theta_i), lo, hi)
// (computed exactly as torch does: true division, round half to even), and the channel is active
// where some batch row has v_i != 0, so only those rows of Wt are read. A dense projection uses
// v_i = x_i over every channel (the same kernel streaming all of Wt). Threads split the output
// columns; each reads every active row's slice of its columns once for all batch rows. At batch 1 a
// spiking projection also prefetches the active rows' lines ahead of the reads (RowPrefetch): scattered
// rows are separate short streams that the hardware prefetcher only picks up after a few misses each.
//
// Layer step (MambaMixer.step):  hn = rmsnorm(h);  x, z = in_proj(hn);  window = [conv, x];
// xc = silu(sum_k window_k taps_k + bias);  dt_low, B, C = x_proj(xc);  dt = softplus(dt_proj(dt_low));
// h_ssm = exp(dt A) h_ssm + dt x B;  y = (C . h_ssm + D x) silu(z);  h += out_proj(y).
//
// State layout: the kernel keeps each layer's recurrent state channels-last, conv (b, K-1, d_inner) and
// ssm (b, n, d_inner) (the transpose of MambaState's (b, d_inner, K-1) / (b, d_inner, n)), and reads
// the conv taps and A transposed likewise, so that the conv window and the scan step run over the
// channels with contiguous loads (cpu_decode.py owns such states and hands out transposed views).
//
// Compiled without -ffast-math: the neuron's division and rounding must match torch's bit for bit.

#include <omp.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "cpu_math.h"

namespace {

using spikingmamba::exp_approx;
using spikingmamba::softplus_approx;

struct Projection {
  const float* wt;       // (c_in, c_out)
  const float* bias;     // (c_out,) or null
  const float* theta;    // (c_in,) or (1,) neuron scales (clamped); null: dense, v = x
  int64_t theta_numel;
  int64_t c_in, c_out;
  float lo, hi;          // the neuron's spike range
  int64_t* counts;       // (3,) += non-zero spikes, distinct active rows, inputs seen; null: not counted
};

struct Layer {
  const float* norm_w;   // (d_model,)
  Projection in_proj, x_proj, dt_proj, out_proj;
  const float* taps;     // (K, d_inner), the conv taps transposed
  const float* conv_bias;// (d_inner,) or null
  const float* A;        // (n, d_inner), A = -exp(A_log) transposed
  const float* D;        // (d_inner,)
};

struct Model {
  int64_t d_model, d_inner, n, dt_rank, kernel, vocab, n_layer;
  float eps;
  const float* embeddings;  // (V, d_model)
  const Layer* layers;      // (n_layer,)
  const float* norm_f;      // (d_model,)
  Projection head;
};

constexpr int64_t kSlack = 16;          // entries after idx / val that a vector compaction may overwrite

// Scratch memory of one thread, grown on demand and kept (no allocation per step once warm).
struct Workspace {
  std::vector<float> h, hn, xz, xc, dbc, dt, gate, y, out, spikes, val;
  std::vector<int32_t> idx;
  void fit(const Model& m, int64_t b) {
    const int64_t widest = std::max({m.d_model, 2 * m.d_inner, m.dt_rank + 2 * m.n});
    h.resize(b * m.d_model), hn.resize(b * m.d_model), out.resize(b * m.d_model);
    xz.resize(b * 2 * m.d_inner), xc.resize(b * m.d_inner), dt.resize(b * m.d_inner), y.resize(b * m.d_inner);
    gate.resize(b * m.d_inner), dbc.resize(b * (m.dt_rank + 2 * m.n));
    fit_projection(widest, b);
  }
  void fit_projection(int64_t c_in, int64_t b) {
    if (static_cast<int64_t>(idx.size()) < c_in + kSlack) idx.resize(c_in + kSlack);
    if (static_cast<int64_t>(val.size()) < c_in * b + kSlack) val.resize(c_in * b + kSlack), spikes.resize(c_in * b);
  }
};

inline float silu(float v) { return v / (1.f + exp_approx(-v)); }

// The non-zero entries of s (c,) in channel order: their values into val, their channels into idx;
// returns their count. Writes up to kSlack entries past the count. With AVX-512, sixteen channels at
// a time (compare, compress, one store of each register); compact_nonzero_scalar is the plain loop
// (branch-free: every entry is stored, the count advances on non-zero ones), which also does the tail
// and runs alone without AVX-512. Tested through project == project_ref.
int64_t compact_nonzero_scalar(const float* s, int64_t i0, int64_t c, int32_t* idx, float* val, int64_t k) {
  for (int64_t i = i0; i < c; ++i) {
    val[k] = s[i];
    idx[k] = static_cast<int32_t>(i);
    k += s[i] != 0.f;
  }
  return k;
}

int64_t compact_nonzero(const float* s, int64_t c, int32_t* idx, float* val) {
  int64_t k = 0, i = 0;
#if defined(__AVX512F__)
  const __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  for (; i + 16 <= c; i += 16) {
    const __m512 v = _mm512_loadu_ps(s + i);
    const __mmask16 nz = _mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_NEQ_UQ);   // NaN counts, as in !=
    _mm512_storeu_ps(val + k, _mm512_maskz_compress_ps(nz, v));
    _mm512_storeu_si512(idx + k, _mm512_maskz_compress_epi32(nz, _mm512_add_epi32(_mm512_set1_epi32(i), lanes)));
    k += __builtin_popcount(nz);
  }
#endif
  return compact_nonzero_scalar(s, i, c, idx, val, k);
}

// The active input channels of x (b rows, row stride sx): their count k, their channels idx (k,)
// and values val (k, b). Dense: every channel, v = x. Two passes: the spikes of every channel
// (vectorised: the division and rounding are most of the work), then the compaction of the active
// ones (loads and stores only).
int64_t select_active(const Projection& p, const float* x, int64_t sx, int64_t b, Workspace& w) {
  const int64_t c = p.c_in;
  int32_t* __restrict idx = w.idx.data();
  float* __restrict val = w.val.data();
  if (p.theta == nullptr) {
    for (int64_t i = 0; i < c; ++i) {
      idx[i] = static_cast<int32_t>(i);
      for (int64_t r = 0; r < b; ++r) val[i * b + r] = x[r * sx + i];
    }
    return c;
  }
  float* __restrict spikes = w.spikes.data();                 // (b, c)
  const float lo = p.lo, hi = p.hi;
  for (int64_t r = 0; r < b; ++r) {
    const float* xr = x + r * sx;
    float* sr = spikes + r * c;
    if (p.theta_numel == 1) {
      const float th = p.theta[0];
#pragma omp simd
      for (int64_t i = 0; i < c; ++i) sr[i] = std::nearbyint(std::min(std::max(xr[i] / th, lo), hi));
    } else {
      const float* th = p.theta;
      // clip(round(q), lo, hi) == round(clip(q, lo, hi)) for integer lo, hi; nearbyint rounds half
      // to even, as torch.round
#pragma omp simd
      for (int64_t i = 0; i < c; ++i) sr[i] = std::nearbyint(std::min(std::max(xr[i] / th[i], lo), hi));
    }
  }
  int64_t k = 0, nonzero = 0;
  if (b == 1) {
    k = nonzero = compact_nonzero(spikes, c, idx, val);
  } else {
    for (int64_t i = 0; i < c; ++i) {
      bool any = false;
      for (int64_t r = 0; r < b; ++r) {
        const float s = spikes[r * c + i];
        val[k * b + r] = s;
        nonzero += s != 0.f;
        any |= s != 0.f;
      }
      idx[k] = static_cast<int32_t>(i);
      k += any;
    }
  }
  if (p.counts != nullptr) {
    p.counts[0] += nonzero;
    p.counts[1] += k;
    p.counts[2] += b * c;
  }
  return k;
}

// The row prefetch's distance and cache hint (build switches, so that benchmarks/bench_decode_kernels.py
// can compare other settings): 24 line steps ahead, non-temporal (locality 0: prefetchnta).
#ifndef SM_PREFETCH_AHEAD
#define SM_PREFETCH_AHEAD 24
#endif
#ifndef SM_PREFETCH_LOCALITY
#define SM_PREFETCH_LOCALITY 0
#endif
constexpr int64_t kLine = 16;                   // floats per 64-byte cache line
constexpr int64_t kAhead = SM_PREFETCH_AHEAD;   // line steps the software prefetch runs ahead of the reads

// Software prefetch of the weight rows one batch row's accumulation reads, in the order it reads them:
// tile by tile (columns [j0, j1) of each tile), group by group (eight active rows), one line of every row
// of the group per step. The reads follow this cursor kAhead steps behind, so about kAhead x 8 lines are
// in flight: across the end of a group's short rows (x_proj's 320 B, out_proj's 3 KB) into the next group
// and across the end of a tile into the next one, where the hardware prefetcher, which follows one
// stream of addresses at a time, would first have to notice each new row. Non-temporal: the lines go to
// L1 without displacing what the step reuses from L2 and L3 (the recurrent state, A, the conv window).
struct RowPrefetch {
  const float* wt;
  int64_t c_out, k, tile, t_end;
  const int32_t* idx;
  int64_t t, q, j, j1;                          // the next step: tile t, group rows [q, q+8), column j
  const float* row[8];                          // the group's rows

  RowPrefetch(const float* wt_, int64_t c_out_, const int32_t* idx_, int64_t k_, int64_t tile_, int64_t t0,
              int64_t t1)
      : wt(wt_), c_out(c_out_), k(k_), tile(tile_), t_end(k_ > 0 ? t1 : t0), idx(idx_), t(t0), q(0) {
    if (t < t_end) group();
  }

  void group() {                                // enter tile t, group q
    j = t * tile;
    j1 = std::min(c_out, j + tile);
    const int64_t rows = std::min<int64_t>(8, k - q);
    for (int64_t r = 0; r < 8; ++r) row[r] = wt + idx[q + (r < rows ? r : 0)] * c_out;
  }

  inline void step() {
    if (t >= t_end) return;
    for (int r = 0; r < 8; ++r) __builtin_prefetch(row[r] + j, 0, SM_PREFETCH_LOCALITY);
    j += kLine;
    if (j < j1) return;
    q += 8;
    if (q >= k) {
      q = 0;
      if (++t >= t_end) return;
    }
    group();
  }
};

// y[:, j0:j1] += sum_q val[q] Wt[idx[q], j0:j1] for one batch row, eight rows of Wt at a time (eight
// streams from memory in flight, one pass over y per eight rows), then the rest one by one.
void accumulate_row(const float* __restrict wt, int64_t c_out, const int32_t* idx, const float* val, int64_t k,
                    float* __restrict y, int64_t j0, int64_t j1) {
  int64_t q = 0;
  for (; q + 8 <= k; q += 8) {
    const float* __restrict w0 = wt + idx[q] * c_out;
    const float* __restrict w1 = wt + idx[q + 1] * c_out;
    const float* __restrict w2 = wt + idx[q + 2] * c_out;
    const float* __restrict w3 = wt + idx[q + 3] * c_out;
    const float* __restrict w4 = wt + idx[q + 4] * c_out;
    const float* __restrict w5 = wt + idx[q + 5] * c_out;
    const float* __restrict w6 = wt + idx[q + 6] * c_out;
    const float* __restrict w7 = wt + idx[q + 7] * c_out;
    const float* a = val + q;
#pragma omp simd
    for (int64_t j = j0; j < j1; ++j)
      y[j] += (a[0] * w0[j] + a[1] * w1[j] + a[2] * w2[j] + a[3] * w3[j]) +
              (a[4] * w4[j] + a[5] * w5[j] + a[6] * w6[j] + a[7] * w7[j]);
  }
  for (; q < k; ++q) {
    const float* __restrict w = wt + idx[q] * c_out;
    const float a = val[q];
#pragma omp simd
    for (int64_t j = j0; j < j1; ++j) y[j] += a * w[j];
  }
}

// y[:, j0:j1] += sum_q val[q] Wt[idx[q], j0:j1] for one batch row, eight rows of Wt at a time (eight
// streams from memory in flight, one pass over y per eight rows); the last group's missing rows repeat
// its first row with value 0 (adds exact zeros). Columns in steps of one cache line, each step also
// prefetching one line of every row kAhead steps ahead (`pf`, shared by the tiles of one call).
void accumulate_row_prefetch(const float* __restrict wt, int64_t c_out, const int32_t* idx, const float* val, int64_t k,
                    float* __restrict y, int64_t j0, int64_t j1, RowPrefetch& pf) {
  for (int64_t q = 0; q < k; q += 8) {
    const int64_t rows = std::min<int64_t>(8, k - q);
    const float* w[8];
    float a[8];
    for (int64_t r = 0; r < 8; ++r) {
      w[r] = wt + idx[q + (r < rows ? r : 0)] * c_out;
      a[r] = r < rows ? val[q + r] : 0.f;
    }
    const float* __restrict w0 = w[0];
    const float* __restrict w1 = w[1];
    const float* __restrict w2 = w[2];
    const float* __restrict w3 = w[3];
    const float* __restrict w4 = w[4];
    const float* __restrict w5 = w[5];
    const float* __restrict w6 = w[6];
    const float* __restrict w7 = w[7];
    const float a0 = a[0], a1 = a[1], a2 = a[2], a3 = a[3], a4 = a[4], a5 = a[5], a6 = a[6], a7 = a[7];
    {
      int64_t jb = j0;
      for (; jb + kLine <= j1; jb += kLine) {          // whole lines: one vector (or two) per row
        pf.step();
        float* __restrict yb = y + jb;
        const float *__restrict v0 = w0 + jb, *__restrict v1 = w1 + jb, *__restrict v2 = w2 + jb,
                    *__restrict v3 = w3 + jb, *__restrict v4 = w4 + jb, *__restrict v5 = w5 + jb,
                    *__restrict v6 = w6 + jb, *__restrict v7 = w7 + jb;
#pragma omp simd
        for (int64_t j = 0; j < kLine; ++j)
          yb[j] += (a0 * v0[j] + a1 * v1[j] + a2 * v2[j] + a3 * v3[j]) +
                   (a4 * v4[j] + a5 * v5[j] + a6 * v6[j] + a7 * v7[j]);
      }
      if (jb < j1) pf.step();
      for (int64_t j = jb; j < j1; ++j)
        y[j] += (a0 * w0[j] + a1 * w1[j] + a2 * w2[j] + a3 * w3[j]) +
                (a4 * w4[j] + a5 * w5[j] + a6 * w6[j] + a7 * w7[j]);
    }
  }
}

// The same for b rows: each row of Wt is read once per column tile and applied to every batch row
// whose value is non-zero.
void accumulate_batch(const float* __restrict wt, int64_t c_out, const int32_t* idx, const float* val, int64_t k,
                      int64_t b, float* __restrict y, int64_t j0, int64_t j1) {
  for (int64_t q = 0; q < k; ++q) {
    const float* __restrict w = wt + idx[q] * c_out;
    for (int64_t r = 0; r < b; ++r) {
      const float a = val[q * b + r];
      if (a == 0.f) continue;
      float* __restrict yr = y + r * c_out;
#pragma omp simd
      for (int64_t j = j0; j < j1; ++j) yr[j] += a * w[j];
    }
  }
}

constexpr int64_t kTileFloats = 8192;   // output columns x batch rows per tile: 32 KB, in L1/L2

// y (b, c_out) = p(x); x (b rows of stride sx).
void project(const Projection& p, const float* x, int64_t sx, int64_t b, float* y, Workspace& w, int threads) {
  const int64_t c_out = p.c_out;
  const int64_t k = select_active(p, x, sx, b, w);
  for (int64_t r = 0; r < b; ++r) {
    if (p.bias != nullptr) std::memcpy(y + r * c_out, p.bias, c_out * sizeof(float));
    else std::memset(y + r * c_out, 0, c_out * sizeof(float));
  }
  const int64_t tile = std::max<int64_t>(256, (kTileFloats / b) / 16 * 16);
  const int64_t tiles = (c_out + tile - 1) / tile;
  const int32_t* idx = w.idx.data();
  const float* val = w.val.data();
  auto run = [&](int64_t t0, int64_t t1) {                        // tiles [t0, t1)
    RowPrefetch pf(p.wt, c_out, idx, k, tile, t0, t1);
    // a dense projection's rows are one stream, which the hardware prefetcher follows (prefetching it too
    // made the dense step slower); more batch rows: accumulate_batch
    const bool prefetch = b == 1 && p.theta != nullptr;
    if (prefetch)
      for (int64_t s = 0; s < kAhead; ++s) pf.step();
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t j0 = t * tile, j1 = std::min(c_out, j0 + tile);
      if (b > 1) accumulate_batch(p.wt, c_out, idx, val, k, b, y, j0, j1);
      else if (prefetch) accumulate_row_prefetch(p.wt, c_out, idx, val, k, y, j0, j1, pf);
      else accumulate_row(p.wt, c_out, idx, val, k, y, j0, j1);
    }
  };
  if (threads > 1 && tiles > 1) {
    const int64_t n = std::min<int64_t>(threads, tiles);
#pragma omp parallel for num_threads(n) schedule(static)
    for (int64_t i = 0; i < n; ++i) run(tiles * i / n, tiles * (i + 1) / n);
  } else {
    run(0, tiles);
  }
}

void rmsnorm(const float* x, const float* weight, int64_t b, int64_t d, float eps, float* out) {
  for (int64_t r = 0; r < b; ++r) {
    const float* xr = x + r * d;
    float ss = 0.f;
#pragma omp simd reduction(+ : ss)
    for (int64_t i = 0; i < d; ++i) ss += xr[i] * xr[i];
    const float scale = 1.f / std::sqrt(ss / static_cast<float>(d) + eps);
    for (int64_t i = 0; i < d; ++i) out[r * d + i] = weight[i] * (xr[i] * scale);
  }
}

// The conv window of one batch row: xc = silu(sum_k window_k taps_k + bias) with window = [conv_in, x],
// and conv_out = the window's last K-1 columns. The conv state is stored (K-1, d_inner) and the taps
// (K, d_inner) (channels contiguous), so every pass is one contiguous vector loop over the channels;
// conv_in and conv_out may alias.
void conv_step(const Model& m, const Layer& L, const float* x, const float* conv_in, float* conv_out, float* xc) {
  const int64_t di = m.d_inner, K = m.kernel, S = K - 1;
#pragma omp simd
  for (int64_t d = 0; d < di; ++d) xc[d] = 0.f;
  for (int64_t j = 0; j < S; ++j) {
    const float* c = conv_in + j * di;
    const float* t = L.taps + j * di;
#pragma omp simd
    for (int64_t d = 0; d < di; ++d) xc[d] += c[d] * t[d];
  }
  const float* last = L.taps + S * di;
  const float* bias = L.conv_bias;
#pragma omp simd
  for (int64_t d = 0; d < di; ++d) {
    const float acc = xc[d] + x[d] * last[d];
    xc[d] = silu(bias != nullptr ? acc + bias[d] : acc);
  }
  if (S == 0) return;
  std::memmove(conv_out, conv_in + di, (S - 1) * di * sizeof(float));    // rows 1.. move up one
  std::memcpy(conv_out + (S - 1) * di, x, di * sizeof(float));
}

// The SSM state update and readout of one batch row: h_out = exp(dt A) h_in + dt x B and
// y = C . h_out per channel. The state is stored (n, d_inner) and A (n, d_inner), so each state entry j
// is one contiguous pass over the channels (channels across the SIMD lanes): no per-channel reduction,
// y accumulates over j in registers' worth of channels. h_in and h_out may alias.
void scan_step(const Model& m, const Layer& L, const float* dt, const float* xc, const float* Bv, const float* Cv,
               const float* h_in, float* h_out, float* __restrict y) {
  const int64_t di = m.d_inner, n = m.n;
#pragma omp simd
  for (int64_t d = 0; d < di; ++d) y[d] = 0.f;
  for (int64_t j = 0; j < n; ++j) {
    const float* a = L.A + j * di;
    const float* hin = h_in + j * di;
    float* hout = h_out + j * di;
    const float bj = Bv[j], cj = Cv[j];
#pragma omp simd
    for (int64_t d = 0; d < di; ++d) {
      const float hv = exp_approx(dt[d] * a[d]) * hin[d] + dt[d] * xc[d] * bj;
      hout[d] = hv;
      y[d] += hv * cj;
    }
  }
}

// One block on the residual stream w.h (b, d_model), in place; conv/ssm: this layer's state in and out
// in the kernel's layout (b, K-1, d_inner) and (b, n, d_inner), which may alias.
void layer_step(const Model& m, const Layer& L, int64_t b, const float* conv_in, const float* ssm_in,
                float* conv_out, float* ssm_out, Workspace& w, int threads) {
  const int64_t di = m.d_inner, n = m.n, K = m.kernel, R = m.dt_rank, P = R + 2 * n;
  rmsnorm(w.h.data(), L.norm_w, b, m.d_model, m.eps, w.hn.data());
  project(L.in_proj, w.hn.data(), m.d_model, b, w.xz.data(), w, threads);       // (b, 2 d_inner)
  for (int64_t r = 0; r < b; ++r)                                                // conv window + silu
    conv_step(m, L, w.xz.data() + r * 2 * di, conv_in + r * di * (K - 1), conv_out + r * di * (K - 1),
              w.xc.data() + r * di);
  project(L.x_proj, w.xc.data(), di, b, w.dbc.data(), w, threads);               // (b, R + 2n)
  project(L.dt_proj, w.dbc.data(), P, b, w.dt.data(), w, threads);               // (b, d_inner)
  for (int64_t r = 0; r < b; ++r) {                                              // scan step + gate
    float* dt = w.dt.data() + r * di;
    float* gate = w.gate.data() + r * di;
    const float* z = w.xz.data() + r * 2 * di + di;
#pragma omp simd
    for (int64_t d = 0; d < di; ++d) {
      dt[d] = softplus_approx(dt[d]);
      gate[d] = silu(z[d]);
    }
    const float* xc = w.xc.data() + r * di;
    float* y = w.y.data() + r * di;
    const float* Bv = w.dbc.data() + r * P + R;
    scan_step(m, L, dt, xc, Bv, Bv + n, ssm_in + r * di * n, ssm_out + r * di * n, y);
#pragma omp simd
    for (int64_t d = 0; d < di; ++d) y[d] = (y[d] + xc[d] * L.D[d]) * gate[d];
  }
  project(L.out_proj, w.y.data(), di, b, w.out.data(), w, threads);             // (b, d_model)
  for (int64_t i = 0; i < b * m.d_model; ++i) w.h[i] += w.out[i];
}

}  // namespace

extern "C" {

// One decode step: tokens (b,) -> out (b, V) logits (head != 0) or (b, d_model) normed hidden state.
// conv_in/ssm_in/conv_out/ssm_out: one pointer per layer, in the kernel's state layout (may alias).
// Returns 0, or 1 for a token id out of range.
int decode_step(const Model* m, const int64_t* tokens, int64_t b, const float* const* conv_in,
                const float* const* ssm_in, float* const* conv_out, float* const* ssm_out, float* out,
                int head, int threads) {
  for (int64_t r = 0; r < b; ++r)
    if (tokens[r] < 0 || tokens[r] >= m->vocab) return 1;
  spikingmamba::FlushDenormals ftz;
  thread_local Workspace w;
  w.fit(*m, b);
  for (int64_t r = 0; r < b; ++r)
    std::memcpy(w.h.data() + r * m->d_model, m->embeddings + tokens[r] * m->d_model, m->d_model * sizeof(float));
  for (int64_t l = 0; l < m->n_layer; ++l)
    layer_step(*m, m->layers[l], b, conv_in[l], ssm_in[l], conv_out[l], ssm_out[l], w, threads);
  if (!head) {
    rmsnorm(w.h.data(), m->norm_f, b, m->d_model, m->eps, out);
    return 0;
  }
  rmsnorm(w.h.data(), m->norm_f, b, m->d_model, m->eps, w.hn.data());
  project(m->head, w.hn.data(), m->d_model, b, out, w, threads);
  return 0;
}

// One projection on its own: y (b, c_out) = p(x), x (b, c_in) contiguous.
void project_f32(const Projection* p, const float* x, int64_t b, float* y, int threads) {
  thread_local Workspace w;
  w.fit_projection(p->c_in, b);
  project(*p, x, p->c_in, b, y, w, threads);
}

}  // extern "C"
