// Compiled CPU selective scan (Mamba's S6 recurrence), forward + hand-written backward.
// The math, the layout and the chunked recomputation are described in docs/SCAN.md; the Python
// side (cpu_scan.py) compiles this file once per machine and calls it through ctypes.
//
// Shapes (b=batch, l=length, d=d_inner, n=d_state); the last dimension of every tensor is contiguous,
// the others are given as strides (in elements):
//   x, dt, z (b, l, d)   A (d, n)   B, C (b, l, n)   D (d)   y, dy, dx, ddt, dz (b, l, d), contiguous
//   h_last, dh_last (b, d, n), contiguous   ckpt (b, n_chunks, n, d): the state before each chunk
//   dA (d, n), dD (d), dB, dC (b, l, n): sums of per-task partial sums (per batch row for dA, dD; per
//   group of channel blocks for dB, dC), kept by the kernel and reduced at its end
//
// Optional parts (mamba-ssm's selective_scan_fn has the first three): with `softplus` the kernel
// takes dt before its softplus (Delta = softplus(dt)); D (may be null) adds the skip D x to y; z
// (may be null) gates the output, y * silu(z); with `a_log` the A argument is A_log, A = -exp(A_log)
// (its gradient dA A). The backward recomputes the ungated y from the
// chunk's states, so nothing beyond the checkpoints is stored for them.
//
// The forward's work is split over (batch, block of channels); a block's states (block x n) stay in
// L1 while the time loop runs. The backward's over (batch, group of channel blocks): it walks the
// chunks from last to first and, per chunk and block, recomputes the chunk's states from its
// checkpoint into a per-thread buffer (chunk x n x block), then walks the chunk backwards (see
// backward_task).

#include <omp.h>

#include "cpu_math.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <vector>

namespace {

constexpr int64_t kBlock = 16;  // channels per block

struct Seq {            // a (b, l, last) tensor with a contiguous last dimension
  int64_t sb, sl;       // strides of b and l, in elements
};

using spikingmamba::FlushDenormals;

// exp of a decay argument dt * A <= 0. Below the clamp the true value is under the smallest normal
// number, so the result is unchanged after flushing; without it the vectorised exp leaves its fast
// path for every lane that underflows (large dt, e.g. fresh models).
template <typename T>
inline T decay(T arg) {
  constexpr T lowest = sizeof(T) == 4 ? T(-87) : T(-700);
  return std::exp(arg < lowest ? lowest : arg);
}

// float: the inlined SIMD exp of cpu_math.h.
template <>
inline float decay<float>(float arg) {
  return spikingmamba::exp_approx(arg);
}

template <typename T>
struct Args {
  const T *x, *dt, *A, *B, *C, *D, *z, *h0;  // h0 (b, d, n): the state before the first step, or null (zero)
  Seq sx, sdt, sB, sC, sz;
  int64_t batch, length, d, n, chunk;
  bool softplus, a_log;
  T a_at(int64_t i) const { return a_log ? -std::exp(A[i]) : A[i]; }   // A[i] of the flat (d, n) A
};

constexpr int kSoftplus = 1, kALog = 2;  // bits of the entry points' `options`

// torch's softplus (beta 1, threshold 20) and its derivative, the sigmoid; for float the inlined
// SIMD forms of cpu_math.h (no calls of the vector log1p and exp inside the loops).
template <typename T>
inline T softplus(T v) { return v > T(20) ? v : std::log1p(std::exp(v)); }
template <>
inline float softplus<float>(float v) { return spikingmamba::softplus_approx(v); }
template <typename T>
inline T sigmoid(T v) { return T(1) / (T(1) + std::exp(-v)); }
template <>
inline float sigmoid<float>(float v) { return spikingmamba::sigmoid_approx(v); }

// Delta's lanes from dt's (softplus(dt) or dt itself) and, when `dsp` is given, dDelta/ddt.
// (Separate branch-free loops over restrict pointers: the compiler vectorises them only so.)
template <typename T>
void delta_lanes(bool with_softplus, const T* __restrict raw, T* __restrict delta, T* __restrict dsp = nullptr) {
  if (!with_softplus) {
    std::copy(raw, raw + kBlock, delta);
    if (dsp) std::fill(dsp, dsp + kBlock, T(1));
    return;
  }
#pragma omp simd
  for (int64_t c = 0; c < kBlock; ++c) delta[c] = softplus(raw[c]);
  if (dsp) {
#pragma omp simd
    for (int64_t c = 0; c < kBlock; ++c) dsp[c] = raw[c] > T(20) ? T(1) : sigmoid(raw[c]);
  }
}

// A block of kBlock channels is the SIMD width of every inner loop (one AVX-512 register of floats):
// states and A are kept transposed, [k][lane], so no inner loop needs a horizontal sum.
// A tail block narrower than kBlock is padded with zeros (dt = x = A = 0: its lanes stay zero).
template <typename T>
struct Block {
  int64_t b, c0, width;
  // The block's lanes of one (b, t) row: in place when the block is full, else zero-padded into pad.
  const T* lanes(const T* row, T* pad) const {
    if (width == kBlock) return row + c0;
    std::fill(pad, pad + kBlock, T(0));
    std::copy(row + c0, row + c0 + width, pad);
    return pad;
  }
  void store(const T* src, T* dst) const { std::copy(src, src + width, dst + c0); }
};

// Arrays of T carved from one zeroed allocation: each starts on a 64-byte line (a block's lanes are
// one aligned vector, never split over two cache lines), array i at i lines past a 4 KiB boundary (a
// store to one array and a load from another at the same offset would otherwise be taken for the
// same address by the CPU and wait for each other: 4K aliasing).
template <typename T>
struct Arrays {
  std::vector<T> mem;
  std::vector<T*> at;
  explicit Arrays(std::initializer_list<int64_t> sizes) {
    constexpr int64_t line = 64 / sizeof(T), page = 4096 / sizeof(T);
    std::vector<int64_t> offsets;
    int64_t end = 0;
    for (int64_t size : sizes) {
      offsets.push_back((end + page - 1) / page * page + static_cast<int64_t>(offsets.size()) * line);
      end = offsets.back() + size;
    }
    mem.assign(end + line, T(0));
    const int64_t skew = static_cast<int64_t>(reinterpret_cast<uintptr_t>(mem.data()) / sizeof(T) % line);
    for (int64_t o : offsets) at.push_back(mem.data() + (line - skew) % line + o);
  }
};

template <typename T>
int64_t block_count(const Args<T>& a) { return (a.d + kBlock - 1) / kBlock; }

template <typename T>
Block<T> block(const Args<T>& a, int64_t b, int64_t i) {
  return Block<T>{b, i * kBlock, std::min(kBlock, a.d - i * kBlock)};
}

// A of every block, transposed: At[(i n + k) kBlock + lane] = A[i kBlock + lane][k] (zero past d).
// Filled once per kernel call by the threads together (the exp of A_log is not redone per task).
template <typename T>
void fill_At(const Args<T>& a, T* At) {
  const int64_t blocks = block_count(a);
#pragma omp for schedule(static)
  for (int64_t i = 0; i < blocks; ++i) {
    T* dst = At + i * a.n * kBlock;
    std::fill(dst, dst + a.n * kBlock, T(0));
    for (int64_t c = 0; c < std::min(kBlock, a.d - i * kBlock); ++c)
      for (int64_t k = 0; k < a.n; ++k) dst[k * kBlock + c] = a.a_at((i * kBlock + c) * a.n + k);
  }
}

// Transposed copies between the [k][lane] workspace and a (d, n) slice (h_last, dA).
template <typename T>
void store_dn(const Block<T>& blk, int64_t n, const T* src, T* dst_dn) {
  for (int64_t c = 0; c < blk.width; ++c)
    for (int64_t k = 0; k < n; ++k) dst_dn[(blk.c0 + c) * n + k] = src[k * kBlock + c];
}

// Forward of one (batch, channel block). h: n x kBlock workspace; At: the block's transposed A.
// Checkpoints are stored (n, d) per (batch, chunk): the state before the chunk's first step.
template <typename T>
void forward_block(const Args<T>& a, const Block<T>& blk, const T* At, T* y, T* h_last, T* ckpt, T* h) {
  const int64_t n = a.n, n_chunks = (a.length + a.chunk - 1) / a.chunk;
  alignas(64) T x_pad[kBlock], dt_pad[kBlock], delta[kBlock], z_pad[kBlock], D_pad[kBlock], w[kBlock],
      acc[kBlock];
  const T* Dv = a.D ? blk.lanes(a.D, D_pad) : nullptr;
  std::fill(h, h + n * kBlock, T(0));
  if (a.h0)  // h[k][lane] = h0[b][c0 + lane][k]
    for (int64_t c = 0; c < blk.width; ++c)
      for (int64_t k = 0; k < n; ++k) h[k * kBlock + c] = a.h0[(blk.b * a.d + blk.c0 + c) * n + k];
  for (int64_t t = 0; t < a.length; ++t) {
    if (ckpt && t % a.chunk == 0) {
      T* dst = ckpt + (blk.b * n_chunks + t / a.chunk) * n * a.d;
      for (int64_t k = 0; k < n; ++k) blk.store(h + k * kBlock, dst + k * a.d);
    }
    const T* xv = blk.lanes(a.x + blk.b * a.sx.sb + t * a.sx.sl, x_pad);
    const T* raw = blk.lanes(a.dt + blk.b * a.sdt.sb + t * a.sdt.sl, dt_pad);
    const T* Bt = a.B + blk.b * a.sB.sb + t * a.sB.sl;
    const T* Ct = a.C + blk.b * a.sC.sb + t * a.sC.sl;
    delta_lanes(a.softplus, raw, delta);
#pragma omp simd
    for (int64_t c = 0; c < kBlock; ++c) {
      w[c] = delta[c] * xv[c];
      acc[c] = Dv ? Dv[c] * xv[c] : T(0);
    }
    for (int64_t k = 0; k < n; ++k) {
      T* hk = h + k * kBlock;
      const T* Ak = At + k * kBlock;
      const T bk = Bt[k], ck = Ct[k];
#pragma omp simd
      for (int64_t c = 0; c < kBlock; ++c) {
        hk[c] = decay(delta[c] * Ak[c]) * hk[c] + w[c] * bk;
        acc[c] += hk[c] * ck;
      }
    }
    if (a.z) {
      const T* zv = blk.lanes(a.z + blk.b * a.sz.sb + t * a.sz.sl, z_pad);
#pragma omp simd
      for (int64_t c = 0; c < kBlock; ++c) acc[c] *= zv[c] * sigmoid(zv[c]);
    }
    blk.store(acc, y + (blk.b * a.length + t) * a.d);
  }
  store_dn(blk, n, h, h_last + blk.b * a.d * n);
}

template <typename T>
void forward(const Args<T>& a, T* y, T* h_last, T* ckpt, int threads) {
  const int64_t blocks = block_count(a);
  Arrays<T> At({blocks * a.n * kBlock});   // shared by the threads
#pragma omp parallel num_threads(threads)
  {
    FlushDenormals ftz;
    Arrays<T> h({a.n * kBlock});
    fill_At(a, At.at[0]);
#pragma omp for collapse(2) schedule(dynamic)
    for (int64_t b = 0; b < a.batch; ++b)
      for (int64_t i = 0; i < blocks; ++i)
        forward_block(a, block(a, b, i), At.at[0] + i * a.n * kBlock, y, h_last, ckpt, h.at[0]);
  }
}

// Backward. Reverse recurrence per channel c, state k, time t:
//   g = dL/dh[t] (+= dy[t] C[t]);  dC[t] += dy[t] h[t];  dw = g . B[t] (w = dt x);  dB[t] += w g;
//   g <- g a[t] (a = exp(dt A): now dL/dh[t-1] through h[t]);  gaa = g h[t-1];
//   ddt[t] = gaa . A + dw x;  dA += gaa dt;  dx = dw dt.
// With the optional parts, first (per t): the gate, y = sum_k h[t] C[t] + D x recomputed,
//   dy <- dout silu(z), dz = dout y silu'(z);  then dD += dy x, dx += dy D;  and ddt <- ddt sigmoid(dt).
//
// Work is split into tasks of (batch row, group of channel blocks). A task walks the chunks from
// last to first; within a chunk it takes its blocks one after the other: recompute the block's
// states, decays and per-step terms over the chunk from its checkpoint, then walk the chunk
// backwards. What a block carries from one chunk to the previous one (g, dA, dD) lives in the task's
// workspace, per block. The dB, dC terms (sums over channels) of all the task's blocks are added lane
// by lane into a chunk-sized buffer and reduced over the 16 lanes once per chunk, so the walk's
// inner loop has no horizontal sum.
template <typename T>
struct BackwardWork {
  T *g, *dA, *dD;        // per block of the task: blocks x n x kBlock (twice), blocks x kBlock
  T *h, *decay;          // the block's chunk: h (chunk + 1) x n x kBlock (the checkpoint first), decay chunk x n x kBlock
  T *delta, *dsp, *gy;   // the block's chunk, chunk x kBlock each: Delta, dDelta/ddt, dL/dy before the gate
  T *dB, *dC;            // the task's chunk: chunk x n x kBlock each, summed over its blocks lane by lane
  Arrays<T> arrays;
  BackwardWork(int64_t blocks, int64_t chunk, int64_t n)
      : arrays({blocks * n * kBlock, blocks * n * kBlock, blocks * kBlock, (chunk + 1) * n * kBlock,
                chunk * n * kBlock, chunk * kBlock, chunk * kBlock, chunk * kBlock, chunk * n * kBlock,
                chunk * n * kBlock}) {
    T** named[] = {&g, &dA, &dD, &h, &decay, &delta, &dsp, &gy, &dB, &dC};
    for (size_t i = 0; i < arrays.at.size(); ++i) *named[i] = arrays.at[i];
  }
};

template <typename T>
struct Grads {              // the backward's outputs (dz, dD_part, dh0 null where z, D, h0 are); per task:
  T *dx, *ddt, *dz, *dA_part, *dD_part, *dB, *dC, *dh0;  // dA_part, dD_part per batch row, dB, dC per group
};

// Steps [t0, t1) of one block, forward again from the state `start` (the chunk's checkpoint, (n, d)):
// h[t] and the decays a[t] into ws.h / ws.decay; per step Delta, the softplus derivative and
// gy = dL/d(scan + D x) = dout silu(z) into ws.delta / dsp / gy; and dz, which needs the ungated
// y = sum_k h[t] C[t] + D x, summed here as h[t] is made.
template <typename T>
void recompute_chunk(const Args<T>& a, const Block<T>& blk, int64_t t0, int64_t t1, const T* start, const T* At,
                     const T* Dv, const T* dy, const Grads<T>& out, BackwardWork<T>& ws) {
  const int64_t n = a.n, nk = n * kBlock;
  alignas(64) T x_pad[kBlock], dt_pad[kBlock], dy_pad[kBlock], z_pad[kBlock], w[kBlock], yv[kBlock],
      gz[kBlock];
  for (int64_t k = 0; k < n; ++k) {
    T* dst = ws.h + k * kBlock;
    const T* src = blk.lanes(start + k * a.d, dst);
    if (src != dst) std::copy(src, src + kBlock, dst);
  }
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t s = t - t0, row = (blk.b * a.length + t) * a.d;
    const T* xv = blk.lanes(a.x + blk.b * a.sx.sb + t * a.sx.sl, x_pad);
    const T* raw = blk.lanes(a.dt + blk.b * a.sdt.sb + t * a.sdt.sl, dt_pad);
    const T* Bt = a.B + blk.b * a.sB.sb + t * a.sB.sl;
    const T* Ct = a.C + blk.b * a.sC.sb + t * a.sC.sl;
    T *delta = ws.delta + s * kBlock, *dsp = ws.dsp + s * kBlock, *gy = ws.gy + s * kBlock;
    const T* hp = ws.h + s * nk;      // h[t-1]
    T* hc = ws.h + (s + 1) * nk;      // h[t]
    T* ac = ws.decay + s * nk;
    delta_lanes(a.softplus, raw, delta, dsp);
#pragma omp simd
    for (int64_t c = 0; c < kBlock; ++c) {
      w[c] = delta[c] * xv[c];
      yv[c] = Dv ? Dv[c] * xv[c] : T(0);
    }
    for (int64_t k = 0; k < n; ++k) {
      const int64_t o = k * kBlock;
      const T bk = Bt[k], ck = Ct[k];
#pragma omp simd
      for (int64_t c = 0; c < kBlock; ++c) {
        const T e = decay(delta[c] * At[o + c]);
        ac[o + c] = e;
        hc[o + c] = e * hp[o + c] + w[c] * bk;
        yv[c] += hc[o + c] * ck;
      }
    }
    const T* dout = blk.lanes(dy + row, dy_pad);
    if (a.z) {                                // the gate
      const T* zv = blk.lanes(a.z + blk.b * a.sz.sb + t * a.sz.sl, z_pad);
#pragma omp simd
      for (int64_t c = 0; c < kBlock; ++c) {
        const T sz = sigmoid(zv[c]);
        gy[c] = dout[c] * (zv[c] * sz);
        gz[c] = dout[c] * yv[c] * (sz * (T(1) + zv[c] * (T(1) - sz)));
      }
      blk.store(gz, out.dz + row);
    } else {
      std::copy(dout, dout + kBlock, gy);
    }
  }
}

// Walk steps [t1 - 1, t0] of one block backwards (after recompute_chunk), carrying the block's g and
// dA (n x kBlock) and dD (kBlock); adds its dB, dC terms into ws.dB / ws.dC lane by lane.
template <typename T>
void walk_chunk(const Args<T>& a, const Block<T>& blk, int64_t t0, int64_t t1, const T* At, const T* Dv,
                T* g, T* dA, T* dD, const Grads<T>& out, BackwardWork<T>& ws) {
  const int64_t n = a.n, nk = n * kBlock;
  alignas(64) T x_pad[kBlock], w[kBlock], dw[kBlock], ddt[kBlock];
  for (int64_t t = t1 - 1; t >= t0; --t) {
    const int64_t s = t - t0, row = (blk.b * a.length + t) * a.d;
    const T* xv = blk.lanes(a.x + blk.b * a.sx.sb + t * a.sx.sl, x_pad);
    const T* Bt = a.B + blk.b * a.sB.sb + t * a.sB.sl;
    const T* Ct = a.C + blk.b * a.sC.sb + t * a.sC.sl;
    const T *delta = ws.delta + s * kBlock, *dsp = ws.dsp + s * kBlock,
            *gy = ws.gy + s * kBlock;
    const T* hp = ws.h + s * nk;      // h[t-1]
    const T* hc = hp + nk;                   // h[t]
    const T* ac = ws.decay + s * nk;
    T *dBs = ws.dB + s * nk, *dCs = ws.dC + s * nk;
#pragma omp simd
    for (int64_t c = 0; c < kBlock; ++c) {
      w[c] = delta[c] * xv[c];
      dw[c] = 0;
      ddt[c] = 0;
    }
    for (int64_t k = 0; k < n; ++k) {
      const int64_t o = k * kBlock;
      const T bk = Bt[k], ck = Ct[k];
#pragma omp simd
      for (int64_t c = 0; c < kBlock; ++c) {
        const T gk = g[o + c] + gy[c] * ck;     // dL/dh[t]
        dCs[o + c] += gy[c] * hc[o + c];
        dBs[o + c] += w[c] * gk;
        dw[c] += gk * bk;
        const T gp = gk * ac[o + c];            // its part of dL/dh[t-1]
        const T gaa = gp * hp[o + c];
        ddt[c] += gaa * At[o + c];
        dA[o + c] += gaa * delta[c];
        g[o + c] = gp;
      }
    }
#pragma omp simd
    for (int64_t c = 0; c < kBlock; ++c) {
      ddt[c] = (ddt[c] + dw[c] * xv[c]) * dsp[c];
      dw[c] *= delta[c];                        // dx
      if (Dv) {
        dD[c] += gy[c] * xv[c];
        dw[c] += gy[c] * Dv[c];
      }
    }
    blk.store(dw, out.dx + row);
    blk.store(ddt, out.ddt + row);
  }
}

// One task: batch row b, channel blocks [i0, i1). `out` holds the task's own dB, dC (b, l, n) rows
// (of its group) and dA_part, dD_part rows (of its batch row).
template <typename T>
void backward_task(const Args<T>& a, int64_t b, int64_t i0, int64_t i1, const T* At_all, const T* dy,
                   const T* dh_last, const T* ckpt, const Grads<T>& out, BackwardWork<T>& ws) {
  const int64_t n = a.n, nk = n * kBlock, n_chunks = (a.length + a.chunk - 1) / a.chunk;
  alignas(64) T D_pad[kBlock];
  const int64_t blocks = i1 - i0;
  std::fill(ws.g, ws.g + blocks * nk, T(0));
  std::fill(ws.dA, ws.dA + blocks * nk, T(0));
  std::fill(ws.dD, ws.dD + blocks * kBlock, T(0));
  if (dh_last)
    for (int64_t i = i0; i < i1; ++i) {
      const Block<T> blk = block(a, b, i);
      for (int64_t c = 0; c < blk.width; ++c)
        for (int64_t k = 0; k < n; ++k)
          ws.g[(i - i0) * nk + k * kBlock + c] = dh_last[(b * a.d + blk.c0 + c) * n + k];
    }
  for (int64_t ci = n_chunks - 1; ci >= 0; --ci) {
    const int64_t t0 = ci * a.chunk, t1 = std::min(a.length, t0 + a.chunk);
    std::fill(ws.dB, ws.dB + (t1 - t0) * nk, T(0));
    std::fill(ws.dC, ws.dC + (t1 - t0) * nk, T(0));
    for (int64_t i = i0; i < i1; ++i) {
      const Block<T> blk = block(a, b, i);
      const T* At = At_all + i * nk;
      const T* Dv = a.D ? blk.lanes(a.D, D_pad) : nullptr;
      recompute_chunk(a, blk, t0, t1, ckpt + (b * n_chunks + ci) * n * a.d, At, Dv, dy, out, ws);
      walk_chunk(a, blk, t0, t1, At, Dv, ws.g + (i - i0) * nk, ws.dA + (i - i0) * nk,
                 ws.dD + (i - i0) * kBlock, out, ws);
    }
    for (int64_t t = t0; t < t1; ++t)           // the lanes' sums: dB, dC of this chunk's steps
      for (int64_t k = 0; k < n; ++k) {
        const T* vb = ws.dB + (t - t0) * nk + k * kBlock;
        const T* vc = ws.dC + (t - t0) * nk + k * kBlock;
        T sb = 0, sc = 0;
#pragma omp simd reduction(+ : sb, sc)
        for (int64_t c = 0; c < kBlock; ++c) {
          sb += vb[c];
          sc += vc[c];
        }
        out.dB[(b * a.length + t) * n + k] = sb;
        out.dC[(b * a.length + t) * n + k] = sc;
      }
  }
  for (int64_t i = i0; i < i1; ++i) {
    const Block<T> blk = block(a, b, i);
    store_dn(blk, n, ws.dA + (i - i0) * nk, out.dA_part + b * a.d * n);
    if (a.D) blk.store(ws.dD + (i - i0) * kBlock, out.dD_part + b * a.d);
    if (out.dh0) store_dn(blk, n, ws.g + (i - i0) * nk, out.dh0 + b * a.d * n);  // g = dL/dh[-1] after the walk
  }
}

template <typename T>
void backward(const Args<T>& a, const T* dy, const T* dh_last, const T* ckpt, const Grads<T>& out,
              int64_t parts, int threads) {
  const int64_t blocks = block_count(a), per_part = (blocks + parts - 1) / parts;
  const int64_t part_size = a.batch * a.length * a.n, dn = a.d * a.n;
  // per-task partial sums: every (batch row, block) writes its own dA, dD rows; dB, dC per part
  Arrays<T> At({blocks * a.n * kBlock});   // shared by the threads
  std::vector<T> dA_rows(a.batch * dn), dD_rows(a.D ? a.batch * a.d : 0),
      dB_parts(parts * part_size, T(0)), dC_parts(parts * part_size, T(0));
  const Grads<T> work{out.dx, out.ddt, out.dz, dA_rows.data(), a.D ? dD_rows.data() : nullptr, dB_parts.data(),
                      dC_parts.data(), out.dh0};
#pragma omp parallel num_threads(threads)
  {
    FlushDenormals ftz;
    BackwardWork<T> ws(per_part, a.chunk, a.n);
    fill_At(a, At.at[0]);
#pragma omp for collapse(2) schedule(dynamic)
    for (int64_t b = 0; b < a.batch; ++b)
      for (int64_t p = 0; p < parts; ++p) {
        Grads<T> part = work;
        part.dB += p * part_size;
        part.dC += p * part_size;
        backward_task(a, b, p * per_part, std::min(blocks, (p + 1) * per_part), At.at[0], dy, dh_last, ckpt,
                      part, ws);
      }
    // the reductions, in the same parallel region (after the loop's barrier)
#pragma omp for schedule(static) nowait
    for (int64_t i = 0; i < dn; ++i) {
      T s = 0;
      for (int64_t b = 0; b < a.batch; ++b) s += dA_rows[b * dn + i];
      out.dA_part[i] = a.a_log ? s * a.a_at(i) : s;          // dA_log = dA A
    }
    if (a.D) {
#pragma omp for schedule(static) nowait
      for (int64_t c = 0; c < a.d; ++c) {
        T s = 0;
        for (int64_t b = 0; b < a.batch; ++b) s += dD_rows[b * a.d + c];
        out.dD_part[c] = s;
      }
    }
#pragma omp for schedule(static)
    for (int64_t i = 0; i < part_size; ++i) {
      T sb = 0, sc = 0;
      for (int64_t p = 0; p < parts; ++p) {
        sb += dB_parts[p * part_size + i];
        sc += dC_parts[p * part_size + i];
      }
      out.dB[i] = sb;
      out.dC[i] = sc;
    }
  }
}

template <typename T>
Args<T> make_args(const T* x, const T* dt, const T* A, const T* B, const T* C, const T* D, const T* z,
                  const T* h0, const int64_t* strides, int64_t batch, int64_t length, int64_t d, int64_t n,
                  int64_t chunk, int options) {
  return Args<T>{x, dt, A, B, C, D, z, h0, {strides[0], strides[1]}, {strides[2], strides[3]},
                 {strides[4], strides[5]}, {strides[6], strides[7]}, {strides[8], strides[9]},
                 batch, length, d, n, chunk, (options & kSoftplus) != 0, (options & kALog) != 0};
}

}  // namespace

// C entry points. strides = (x.b, x.l, dt.b, dt.l, B.b, B.l, C.b, C.l, z.b, z.l); D, z may be null;
// options: kSoftplus (dt is taken before its softplus) | kALog (A is A_log); ckpt may be null (no
// backward); h0 (b, d, n), contiguous, may be null (a zero state); dz, dD, dh0 are null where z, D, h0
// are; dA (d, n), dD (d), dB, dC (b, l, n) are the full sums.
#define SCAN_ENTRY_POINTS(T, SUFFIX)                                                                    \
  extern "C" void scan_forward_##SUFFIX(const T* x, const T* dt, const T* A, const T* B, const T* C,    \
                                         const T* D, const T* z, const T* h0, const int64_t* strides,     \
                                         int64_t batch, int64_t length, int64_t d, int64_t n,             \
                                         int64_t chunk, int options, T* y, T* h_last, T* ckpt,            \
                                         int threads) {                                                   \
    forward(make_args(x, dt, A, B, C, D, z, h0, strides, batch, length, d, n, chunk, options), y, h_last, \
            ckpt, threads);                                                                               \
  }                                                                                                       \
  extern "C" void scan_backward_##SUFFIX(const T* x, const T* dt, const T* A, const T* B, const T* C,   \
                                          const T* D, const T* z, const T* h0, const int64_t* strides,    \
                                          int64_t batch, int64_t length, int64_t d, int64_t n,            \
                                          int64_t chunk, int options, const T* dy, const T* dh_last,      \
                                          const T* ckpt, T* dx, T* ddt, T* dz, T* dA, T* dD, T* dB,       \
                                          T* dC, T* dh0, int64_t parts, int threads) {                    \
    backward(make_args(x, dt, A, B, C, D, z, h0, strides, batch, length, d, n, chunk, options), dy,      \
             dh_last, ckpt, Grads<T>{dx, ddt, dz, dA, dD, dB, dC, dh0}, parts, threads);                  \
  }

SCAN_ENTRY_POINTS(float, f32)
SCAN_ENTRY_POINTS(double, f64)
