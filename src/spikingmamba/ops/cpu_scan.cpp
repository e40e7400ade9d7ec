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
// Work is split over (batch, block of channels); a block's states (block x n) stay in L1 while the
// time loop runs. The backward recomputes each chunk's states from its checkpoint into a per-task
// buffer (chunk x block x n), then walks the chunk backwards.

#include <omp.h>

#include "cpu_math.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
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

// torch's softplus (beta 1, threshold 20) and its derivative, the sigmoid
template <typename T>
inline T softplus(T v) { return v > T(20) ? v : std::log1p(std::exp(v)); }
template <typename T>
inline T sigmoid(T v) { return T(1) / (T(1) + std::exp(-v)); }

// A block of kBlock channels is the SIMD width of every inner loop (one AVX-512 register of floats):
// states and A are kept transposed, [k][lane], so no loop needs a horizontal sum except dB and dC.
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

// Delta's lanes for one (b, t) row: dt itself, or softplus(dt) into out (raw: dt's lanes, for the
// backward's softplus derivative).
template <typename T>
const T* delta_lanes(const Args<T>& a, const Block<T>& blk, int64_t t, T* raw_pad, T* out,
                     const T** raw = nullptr) {
  const T* r = blk.lanes(a.dt + blk.b * a.sdt.sb + t * a.sdt.sl, raw_pad);
  if (raw) *raw = r;
  if (!a.softplus) return r;
#pragma omp simd
  for (int64_t c = 0; c < kBlock; ++c) out[c] = softplus(r[c]);
  return out;
}

template <typename T>
void load_A(const Args<T>& a, const Block<T>& blk, T* At) {  // At[k][lane] = A[c0 + lane][k]
  std::fill(At, At + a.n * kBlock, T(0));
  for (int64_t c = 0; c < blk.width; ++c)
    for (int64_t k = 0; k < a.n; ++k) At[k * kBlock + c] = a.a_at((blk.c0 + c) * a.n + k);
}

// Transposed copies between the [k][lane] workspace and a (d, n) slice (h_last, dA) or an (n, d) one.
template <typename T>
void store_dn(const Block<T>& blk, int64_t n, const T* src, T* dst_dn) {
  for (int64_t c = 0; c < blk.width; ++c)
    for (int64_t k = 0; k < n; ++k) dst_dn[(blk.c0 + c) * n + k] = src[k * kBlock + c];
}

// Forward of one (batch, channel block). h: n x kBlock workspace. Checkpoints are stored (n, d) per
// (batch, chunk): the state before the chunk's first step.
template <typename T>
void forward_block(const Args<T>& a, const Block<T>& blk, T* y, T* h_last, T* ckpt, T* h, T* At) {
  const int64_t n = a.n, n_chunks = (a.length + a.chunk - 1) / a.chunk;
  alignas(64) T x_pad[kBlock], dt_pad[kBlock], delta[kBlock], z_pad[kBlock], D_pad[kBlock], w[kBlock],
      acc[kBlock];
  load_A(a, blk, At);
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
    const T* dtv = delta_lanes(a, blk, t, dt_pad, delta);
    const T* Bt = a.B + blk.b * a.sB.sb + t * a.sB.sl;
    const T* Ct = a.C + blk.b * a.sC.sb + t * a.sC.sl;
#pragma omp simd
    for (int64_t c = 0; c < kBlock; ++c) {
      w[c] = dtv[c] * xv[c];
      acc[c] = 0;
    }
    for (int64_t k = 0; k < n; ++k) {
      T* hk = h + k * kBlock;
      const T* Ak = At + k * kBlock;
      const T bk = Bt[k], ck = Ct[k];
#pragma omp simd
      for (int64_t c = 0; c < kBlock; ++c) {
        hk[c] = decay(dtv[c] * Ak[c]) * hk[c] + w[c] * bk;
        acc[c] += hk[c] * ck;
      }
    }
    if (Dv) {
#pragma omp simd
      for (int64_t c = 0; c < kBlock; ++c) acc[c] += Dv[c] * xv[c];
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
int64_t block_count(const Args<T>& a) { return (a.d + kBlock - 1) / kBlock; }

template <typename T>
Block<T> block(const Args<T>& a, int64_t b, int64_t i) {
  return Block<T>{b, i * kBlock, std::min(kBlock, a.d - i * kBlock)};
}

template <typename T>
void forward(const Args<T>& a, T* y, T* h_last, T* ckpt, int threads) {
  const int64_t blocks = block_count(a);
#pragma omp parallel num_threads(threads)
  {
    FlushDenormals ftz;
    std::vector<T> h(a.n * kBlock), At(a.n * kBlock);
#pragma omp for collapse(2) schedule(dynamic)
    for (int64_t b = 0; b < a.batch; ++b)
      for (int64_t i = 0; i < blocks; ++i) forward_block(a, block(a, b, i), y, h_last, ckpt, h.data(), At.data());
  }
}

// Backward of one (batch, channel block). Reverse recurrence per channel c, state k, time t:
//   g = dL/dh[t] (+= dy[t] C[t]);  dC[t] += dy[t] h[t];  dw = g . B[t] (w = dt x);  dB[t] += w g;
//   gaa = g h[t-1] a[t] (a = exp(dt A));  ddt[t] = gaa . A + dw x;  dA += gaa dt;  dx = dw dt;  g *= a.
// With the optional parts, first (per t): the gate, y = sum_k h[t] C[t] + D x recomputed,
//   dy <- dout silu(z), dz = dout y silu'(z);  then dD += dy x, dx += dy D;  and ddt <- ddt sigmoid(dt).
// The chunk's states and decays are first recomputed from its checkpoint into hbuf / abuf.
template <typename T>
struct BackwardWork {
  std::vector<T> hbuf, abuf, hstart, g, At, dA;
  BackwardWork(int64_t chunk, int64_t n)
      : hbuf(chunk * n * kBlock), abuf(chunk * n * kBlock), hstart(n * kBlock), g(n * kBlock),
        At(n * kBlock), dA(n * kBlock) {}
};

template <typename T>
struct Grads {              // the backward's outputs (dz, dD_part, dh0 null where z, D, h0 are); per task:
  T *dx, *ddt, *dz, *dA_part, *dD_part, *dB, *dC, *dh0;  // dA_part, dD_part per batch row, dB, dC per group
};

template <typename T>
void backward_block(const Args<T>& a, const Block<T>& blk, const T* dy, const T* dh_last, const T* ckpt,
                    const Grads<T>& out, BackwardWork<T>& ws) {
  const int64_t n = a.n, nk = n * kBlock, n_chunks = (a.length + a.chunk - 1) / a.chunk;
  alignas(64) T x_pad[kBlock], dt_pad[kBlock], delta[kBlock], dy_pad[kBlock], z_pad[kBlock], D_pad[kBlock],
      gy[kBlock], gz[kBlock], dD[kBlock], w[kBlock], dw[kBlock], ddt_a[kBlock];
  T *g = ws.g.data(), *At = ws.At.data(), *dA = ws.dA.data(), *hstart = ws.hstart.data();
  load_A(a, blk, At);
  const T* Dv = a.D ? blk.lanes(a.D, D_pad) : nullptr;
  std::fill(g, g + nk, T(0));
  std::fill(dA, dA + nk, T(0));
  std::fill(dD, dD + kBlock, T(0));
  if (dh_last)
    for (int64_t c = 0; c < blk.width; ++c)
      for (int64_t k = 0; k < n; ++k) g[k * kBlock + c] = dh_last[(blk.b * a.d + blk.c0 + c) * n + k];
  for (int64_t ci = n_chunks - 1; ci >= 0; --ci) {
    const int64_t t0 = ci * a.chunk, t1 = std::min(a.length, t0 + a.chunk);
    const T* src = ckpt + (blk.b * n_chunks + ci) * n * a.d;
    for (int64_t k = 0; k < n; ++k) {
      T* dst = hstart + k * kBlock;
      const T* h0 = blk.lanes(src + k * a.d, dst);
      if (h0 != dst) std::copy(h0, h0 + kBlock, dst);
    }
    for (int64_t t = t0; t < t1; ++t) {   // recompute h[t], a[t]
      const T* xv = blk.lanes(a.x + blk.b * a.sx.sb + t * a.sx.sl, x_pad);
      const T* dtv = delta_lanes(a, blk, t, dt_pad, delta);
      const T* Bt = a.B + blk.b * a.sB.sb + t * a.sB.sl;
      const T* hp = t == t0 ? hstart : ws.hbuf.data() + (t - t0 - 1) * nk;
      T* hc = ws.hbuf.data() + (t - t0) * nk;
      T* ac = ws.abuf.data() + (t - t0) * nk;
      for (int64_t k = 0; k < n; ++k) {
        const T bk = Bt[k];
        const int64_t o = k * kBlock;
#pragma omp simd
        for (int64_t c = 0; c < kBlock; ++c) {
          const T e = decay(dtv[c] * At[o + c]);
          ac[o + c] = e;
          hc[o + c] = e * hp[o + c] + dtv[c] * xv[c] * bk;
        }
      }
    }
    for (int64_t t = t1 - 1; t >= t0; --t) {   // walk the chunk backwards
      const T* xv = blk.lanes(a.x + blk.b * a.sx.sb + t * a.sx.sl, x_pad);
      const T* raw;
      const T* dtv = delta_lanes(a, blk, t, dt_pad, delta, &raw);
      const int64_t row = (blk.b * a.length + t) * a.d;
      const T* dout = blk.lanes(dy + row, dy_pad);
      const T* Bt = a.B + blk.b * a.sB.sb + t * a.sB.sl;
      const T* Ct = a.C + blk.b * a.sC.sb + t * a.sC.sl;
      const T* hc = ws.hbuf.data() + (t - t0) * nk;
      const T* hp = t == t0 ? hstart : ws.hbuf.data() + (t - t0 - 1) * nk;
      const T* ac = ws.abuf.data() + (t - t0) * nk;
      T* dBt = out.dB + (blk.b * a.length + t) * n;
      T* dCt = out.dC + (blk.b * a.length + t) * n;
      if (a.z) {                            // the gate: needs y, recomputed from h[t]
        const T* zv = blk.lanes(a.z + blk.b * a.sz.sb + t * a.sz.sl, z_pad);
        alignas(64) T yv[kBlock];
#pragma omp simd
        for (int64_t c = 0; c < kBlock; ++c) yv[c] = Dv ? Dv[c] * xv[c] : T(0);
        for (int64_t k = 0; k < n; ++k) {
          const T ck = Ct[k];
          const T* hk = hc + k * kBlock;
#pragma omp simd
          for (int64_t c = 0; c < kBlock; ++c) yv[c] += hk[c] * ck;
        }
#pragma omp simd
        for (int64_t c = 0; c < kBlock; ++c) {
          const T s = sigmoid(zv[c]);
          gy[c] = dout[c] * (zv[c] * s);
          gz[c] = dout[c] * yv[c] * (s * (T(1) + zv[c] * (T(1) - s)));
        }
        blk.store(gz, out.dz + row);
      } else {
        std::copy(dout, dout + kBlock, gy);
      }
#pragma omp simd
      for (int64_t c = 0; c < kBlock; ++c) {
        w[c] = dtv[c] * xv[c];
        dw[c] = 0;
        ddt_a[c] = 0;
      }
      for (int64_t k = 0; k < n; ++k) {
        const int64_t o = k * kBlock;
        const T bk = Bt[k], ck = Ct[k];
        T sb = 0, sc = 0;
#pragma omp simd reduction(+ : sb, sc)
        for (int64_t c = 0; c < kBlock; ++c) {
          const T gk = g[o + c] + gy[c] * ck;
          sc += gy[c] * hc[o + c];
          dw[c] += gk * bk;
          sb += w[c] * gk;
          const T gaa = gk * hp[o + c] * ac[o + c];
          ddt_a[c] += gaa * At[o + c];
          dA[o + c] += gaa * dtv[c];
          g[o + c] = gk * ac[o + c];
        }
        dBt[k] += sb;
        dCt[k] += sc;
      }
#pragma omp simd
      for (int64_t c = 0; c < kBlock; ++c) {
        ddt_a[c] += dw[c] * xv[c];
        dw[c] *= dtv[c];
        if (a.softplus) ddt_a[c] *= raw[c] > T(20) ? T(1) : sigmoid(raw[c]);
        if (Dv) {
          dD[c] += gy[c] * xv[c];
          dw[c] += gy[c] * Dv[c];
        }
      }
      blk.store(dw, out.dx + row);
      blk.store(ddt_a, out.ddt + row);
    }
  }
  store_dn(blk, n, dA, out.dA_part + blk.b * a.d * n);
  if (Dv) blk.store(dD, out.dD_part + blk.b * a.d);
  if (out.dh0) store_dn(blk, n, g, out.dh0 + blk.b * a.d * n);  // g = dL/dh[-1] after the walk
}

template <typename T>
void backward(const Args<T>& a, const T* dy, const T* dh_last, const T* ckpt, const Grads<T>& out,
              int64_t parts, int threads) {
  const int64_t blocks = block_count(a), per_part = (blocks + parts - 1) / parts;
  const int64_t part_size = a.batch * a.length * a.n, dn = a.d * a.n;
  // per-task partial sums: every (batch row, block) writes its own dA, dD rows; dB, dC accumulate per part
  std::vector<T> dA_rows(a.batch * dn), dD_rows(a.D ? a.batch * a.d : 0), dB_parts(parts * part_size, T(0)),
      dC_parts(parts * part_size, T(0));
  const Grads<T> work{out.dx, out.ddt, out.dz, dA_rows.data(), a.D ? dD_rows.data() : nullptr, dB_parts.data(),
                      dC_parts.data(), out.dh0};
#pragma omp parallel num_threads(threads)
  {
    FlushDenormals ftz;
    BackwardWork<T> ws(a.chunk, a.n);
#pragma omp for collapse(2) schedule(dynamic)
    for (int64_t b = 0; b < a.batch; ++b)
      for (int64_t p = 0; p < parts; ++p) {
        Grads<T> part = work;
        part.dB += p * part_size;
        part.dC += p * part_size;
        for (int64_t i = p * per_part; i < std::min(blocks, (p + 1) * per_part); ++i)
          backward_block(a, block(a, b, i), dy, dh_last, ckpt, part, ws);
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
