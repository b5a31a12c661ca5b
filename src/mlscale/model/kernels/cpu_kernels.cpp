// Fused CPU kernels for a Llama block in fp32 training.
//
// Autograd runs RMSNorm's backward as eight elementwise passes, SwiGLU's activation as
// silu, a multiply, and in backward a silu_backward that evaluates the exponential again,
// and rotate-half rotary as eight half-width passes and a concatenation. On a CPU, where
// the matrix multiplies already run near peak, those passes over memory are what is left
// to save: each kernel here reads its inputs once and writes its outputs once. Causal
// attention over short contexts (at the end) keeps a whole row of scores in L1 instead of
// calling a tiled GEMM per block. `cpu_kernels.py` builds this file on first use (cached)
// and holds the same arithmetic in PyTorch ops, the reference the tests compare against.
#include <ATen/Functions.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <algorithm>
#include <tuple>
#include <vector>

using at::Tensor;

namespace {

void check_fp32_cpu(const Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat, "mlscale cpu kernels: ", name,
              " must be a float32 CPU tensor, got ", t.scalar_type(), " on ", t.device());
}

// exp(x) for float, written so the compiler vectorises the loops that call it (libm's
// expf is a scalar call). Cody-Waite range reduction x = n ln2 + r, |r| <= ln2/2, and
// Cephes' degree-6 polynomial for e^r: within 2 ulp of expf over [-87.3, 88.3]. Outside
// it the argument is clamped, so exp(-inf) is 1.2e-38 and exp(inf) 2.2e38, not 0 and inf:
// enough for sigmoid and softmax, which only need the saturated ends. NaN stays NaN.
inline __attribute__((always_inline)) float exp_f32(float x) {
  x = x < -87.3f ? -87.3f : x;
  x = x > 88.3f ? 88.3f : x;
  const float round_magic = 12582912.f;  // 1.5 * 2^23: adding and subtracting it rounds
  const float n = (x * 1.44269504088896341f + round_magic) - round_magic;
  float r = x - n * 0.693359375f;  // ln2 split in two for an exact product with n
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.f;
  const float whole = n == n ? n : 0.f;  // converting NaN to an integer is undefined
  const int32_t bits = (static_cast<int32_t>(whole) + 127) << 23;  // 2^n, n in [-126, 127]
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

// Row loops. Each takes its pointers as arguments: written inline in the
// parallel_for lambdas, whose captures are references, the compiler must assume every
// float store may change them and reloads them in the inner loops (3x slower).

// With rstd = 1 / sqrt(mean(x^2) + eps), xhat = x * rstd and g' = grad * w:
// dx = rstd * (g' - xhat * mean(g' * xhat)), and grad_w (the partial sum of these rows)
// += grad * xhat. rstd is recomputed from the row of x, which is read anyway.
void rms_norm_backward_rows(const float* grad, const float* x, const float* w, float eps, float* grad_x,
                            float* grad_w, int64_t begin, int64_t end, int64_t C) {
  const float inv_c = 1.f / static_cast<float>(C);
  for (int64_t i = begin; i < end; ++i) {
    const float* gr = grad + i * C;
    const float* xr = x + i * C;
    float* out = grad_x + i * C;
    float sum_sq = 0.f;
#pragma omp simd reduction(+ : sum_sq)
    for (int64_t c = 0; c < C; ++c) sum_sq += xr[c] * xr[c];
    const float r = 1.f / std::sqrt(sum_sq * inv_c + eps);
    float dot = 0.f;
#pragma omp simd reduction(+ : dot)
    for (int64_t c = 0; c < C; ++c) {
      const float xhat = xr[c] * r;
      grad_w[c] += gr[c] * xhat;
      dot += gr[c] * w[c] * xhat;
    }
    const float mean = dot * inv_c;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) out[c] = (gr[c] * w[c] - xr[c] * r * mean) * r;
  }
}

// h rows are [gate | up]: a = silu(gate) * up and sig = sigmoid(gate), kept so that
// backward needs no second exponential.
void swiglu_rows(const float* h, float* a, float* sig, int64_t begin,
                 int64_t end, int64_t F) {
  for (int64_t i = begin; i < end; ++i) {
    const float* gate = h + i * 2 * F;
    const float* up = gate + F;
    float* ar = a + i * F;
    float* sr = sig + i * F;
#pragma omp simd
    for (int64_t c = 0; c < F; ++c) {
      const float s = 1.f / (1.f + exp_f32(-gate[c]));
      sr[c] = s;
      ar[c] = gate[c] * s * up[c];
    }
  }
}

// d up = grad * silu(gate), d gate = grad * up * sig * (1 + gate * (1 - sig)).
void swiglu_backward_rows(const float* grad, const float* h, const float* sig, float* grad_h,
                          int64_t begin, int64_t end, int64_t F) {
  for (int64_t i = begin; i < end; ++i) {
    const float* gate = h + i * 2 * F;
    const float* up = gate + F;
    const float* g = grad + i * F;
    const float* s = sig + i * F;
    float* d_gate = grad_h + i * 2 * F;
    float* d_up = d_gate + F;
#pragma omp simd
    for (int64_t c = 0; c < F; ++c) {
      d_up[c] = g[c] * (gate[c] * s[c]);
      d_gate[c] = g[c] * up[c] * (s[c] * (1.f + gate[c] * (1.f - s[c])));
    }
  }
}

// Rotary embedding of q and k out of one [B, T, H + 2 KV, D] projection, in transformers'
// rotate-half layout (channel d pairs with d + D/2; cos/sin rows repeat their half-width
// angles): out = x * cos + rotate_half(x) * sin, written straight into the
// [B, heads, T, D] layout attention takes; v is copied across unrotated.
void qkv_rope_rows(const float* qkv, const float* cos, const float* sin, float* q, float* k, float* v,
                   int64_t begin, int64_t end, int64_t T, int64_t H, int64_t KV, int64_t D, bool per_row_tables) {
  const int64_t half = D / 2, width = H + 2 * KV;
  for (int64_t row = begin; row < end; ++row) {
    const int64_t b = row / T, t = row % T;
    const float* c = cos + (per_row_tables ? row : t) * D;
    const float* s = sin + (per_row_tables ? row : t) * D;
    for (int64_t head = 0; head < width; ++head) {
      const float* x = qkv + (row * width + head) * D;
      float* out = head < H        ? q + ((b * H + head) * T + t) * D
                   : head < H + KV ? k + ((b * KV + head - H) * T + t) * D
                                   : v + ((b * KV + head - H - KV) * T + t) * D;
      if (head >= H + KV) {
        std::memcpy(out, x, D * sizeof(float));
        continue;
      }
#pragma omp simd
      for (int64_t d = 0; d < half; ++d) {
        const float x1 = x[d], x2 = x[d + half];
        out[d] = x1 * c[d] + -x2 * s[d];
        out[d + half] = x2 * c[d + half] + x1 * s[d + half];
      }
    }
  }
}

// Gradient of qkv_rope_rows: the inverse rotation of the q and k gradients (given with
// any strides over batch, head and time) and the v gradient, into [B, T, H + 2 KV, D].
struct HeadGrads {
  const float* data;
  int64_t heads, stride_b, stride_h, stride_t;
};

void qkv_rope_backward_rows(HeadGrads gq, HeadGrads gk, HeadGrads gv, const float* cos, const float* sin,
                            float* grad, int64_t begin, int64_t end, int64_t T, int64_t D, bool per_row_tables) {
  const int64_t half = D / 2, width = gq.heads + gk.heads + gv.heads;
  for (int64_t row = begin; row < end; ++row) {
    const int64_t b = row / T, t = row % T;
    const float* c = cos + (per_row_tables ? row : t) * D;
    const float* s = sin + (per_row_tables ? row : t) * D;
    for (int64_t head = 0; head < width; ++head) {
      const bool is_q = head < gq.heads, is_k = !is_q && head < gq.heads + gk.heads;
      const HeadGrads& src = is_q ? gq : is_k ? gk : gv;
      const int64_t h = is_q ? head : is_k ? head - gq.heads : head - gq.heads - gk.heads;
      const float* g = src.data + b * src.stride_b + h * src.stride_h + t * src.stride_t;
      float* out = grad + (row * width + head) * D;
      if (!is_q && !is_k) {
        std::memcpy(out, g, D * sizeof(float));
        continue;
      }
#pragma omp simd
      for (int64_t d = 0; d < half; ++d) {
        const float g1 = g[d], g2 = g[d + half];
        out[d] = g1 * c[d] + g2 * s[d + half];
        out[d + half] = g2 * c[d + half] - g1 * s[d];
      }
    }
  }
}

// Causal attention for short sequences, one (batch, head) at a time with everything in
// L1/L2, FlashAttention's scheme without tiling (a row of scores is at most T floats):
// forward keeps each row's log-sum-exp, backward recomputes the probabilities from it.
// Rows go in blocks of 4 and channels in 8-wide vectors (GCC/Clang vector extensions),
// so each key or value vector loaded feeds four multiply-adds held in registers.
// Grouped-query heads: q head h reads kv head h / (H / KV), as repeat_interleave does.
// Needs T % 4 == 0 and D % 8 == 0 (the Python side checks, else takes SDPA). Masked keys
// get weight 0, which keeps a NaN or inf in a later key or value out of an earlier row
// only outside that row's block of 4 (0 * NaN is NaN); SDPA spreads it to every row.
// Attention differs from SDPA in summation order anyway, so its products and sums may
// fuse into FMAs (the rest of this file keeps PyTorch's unfused rounding).
#pragma GCC push_options
#pragma GCC optimize("fp-contract=fast")
typedef float v8f __attribute__((vector_size(32)));
constexpr int64_t kRows = 4, kLanes = 8;

inline v8f load8(const float* p) {
  v8f v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store8(float* p, v8f v) { std::memcpy(p, &v, sizeof v); }

struct AttentionShape {
  int64_t B, H, KV, T, D, Tp;  // Tp: T rounded up to whole vectors (padded key columns)
  float scale;
};

// [T, D] -> [D, Tp], padding columns T..Tp with zeros.
inline void transpose_block(const float* src, float* dst, int64_t T, int64_t D, int64_t Tp) {
  for (int64_t d = 0; d < D; ++d) {
    for (int64_t t = 0; t < T; ++t) dst[d * Tp + t] = src[t * D + d];
    for (int64_t t = T; t < Tp; ++t) dst[d * Tp + t] = 0.f;
  }
}

// s[r][j] = scale * (x[r] . cols[:, j]) for 4 rows x (row stride x_stride) and keys
// j < n (rounded up to a vector), cols a [D, Tp] transposed block; s rows are Tp long.
inline void block_scores(const float* x, int64_t x_stride, const float* cols, float* s, int64_t n, int64_t D,
                         int64_t Tp, float scale) {
  for (int64_t j = 0; j < n; j += kLanes) {
    v8f acc0 = {}, acc1 = {}, acc2 = {}, acc3 = {};
    for (int64_t d = 0; d < D; ++d) {
      const v8f c = load8(cols + d * Tp + j);
      acc0 += x[d] * c;
      acc1 += x[x_stride + d] * c;
      acc2 += x[2 * x_stride + d] * c;
      acc3 += x[3 * x_stride + d] * c;
    }
    store8(s + j, acc0 * scale);
    store8(s + Tp + j, acc1 * scale);
    store8(s + 2 * Tp + j, acc2 * scale);
    store8(s + 3 * Tp + j, acc3 * scale);
  }
}

// out[r][:] = sum_{j < n} w[r][j] * rows[j][:] for 4 rows (rows [*, D], out row stride
// out_stride, w rows Tp long).
inline void block_mix(const float* w, const float* rows, float* out, int64_t out_stride, int64_t n, int64_t D,
                      int64_t Tp) {
  for (int64_t d = 0; d < D; d += kLanes) {
    v8f acc0 = {}, acc1 = {}, acc2 = {}, acc3 = {};
    for (int64_t j = 0; j < n; ++j) {
      const v8f r = load8(rows + j * D + d);
      acc0 += w[j] * r;
      acc1 += w[Tp + j] * r;
      acc2 += w[2 * Tp + j] * r;
      acc3 += w[3 * Tp + j] * r;
    }
    store8(out + d, acc0);
    store8(out + out_stride + d, acc1);
    store8(out + 2 * out_stride + d, acc2);
    store8(out + 3 * out_stride + d, acc3);
  }
}

// rows[j][:] += sum_r w[r][j] * x[r][:] for j < n (the transpose of block_mix, for dK
// and dV; x rows at stride x_stride, w rows Tp long).
inline void block_scatter(const float* w, const float* x, int64_t x_stride, float* rows, int64_t n, int64_t D,
                          int64_t Tp) {
  for (int64_t d = 0; d < D; d += kLanes) {
    const v8f x0 = load8(x + d), x1 = load8(x + x_stride + d), x2 = load8(x + 2 * x_stride + d),
              x3 = load8(x + 3 * x_stride + d);
    for (int64_t j = 0; j < n; ++j) {
      float* r = rows + j * D + d;
      store8(r, load8(r) + w[j] * x0 + w[Tp + j] * x1 + w[2 * Tp + j] * x2 + w[3 * Tp + j] * x3);
    }
  }
}

// q, k, v: [B, heads, T, D] contiguous. out: [B, T, H, D] memory (what the output
// projection reads); lse: [B, H, T].
void attention_heads(const float* q, const float* k, const float* v, float* out, float* lse, AttentionShape a,
                     int64_t begin, int64_t end) {
  const int64_t T = a.T, D = a.D, Tp = a.Tp, group = a.H / a.KV, out_stride = a.H * D;
  std::vector<float> k_t(D * Tp), s(kRows * Tp);
  for (int64_t bh = begin; bh < end; ++bh) {
    const int64_t b = bh / a.H, h = bh % a.H, kvh = b * a.KV + h / group;
    const float* Q = q + bh * T * D;
    transpose_block(k + kvh * T * D, k_t.data(), T, D, Tp);
    for (int64_t i0 = 0; i0 < T; i0 += kRows) {
      const int64_t n = i0 + kRows;  // causal: keys up to the block's last row
      block_scores(Q + i0 * D, D, k_t.data(), s.data(), n, D, Tp, a.scale);
      for (int64_t r = 0; r < kRows; ++r) {
        float* sr = s.data() + r * Tp;
        const int64_t keys = i0 + r + 1;
        float m = sr[0];
        for (int64_t j = 1; j < keys; ++j) m = sr[j] > m ? sr[j] : m;
        float l = 0.f;
#pragma omp simd reduction(+ : l)
        for (int64_t j = 0; j < keys; ++j) {
          sr[j] = exp_f32(sr[j] - m);
          l += sr[j];
        }
        const float inv_l = 1.f / l;
#pragma omp simd
        for (int64_t j = 0; j < keys; ++j) sr[j] *= inv_l;
        for (int64_t j = keys; j < n; ++j) sr[j] = 0.f;  // masked
        lse[bh * T + i0 + r] = m + std::log(l);
      }
      block_mix(s.data(), v + kvh * T * D, out + ((b * T + i0) * a.H + h) * D, out_stride, n, D, Tp);
    }
  }
}

// Backward for the q heads of kv heads [begin, end) (so dK and dV have one writer each):
// p = exp(s - lse), dV += p^T dO, dp = dO V^T, ds = p * (dp - rowsum(dO * O)),
// dQ = scale * ds K, dK += scale * ds^T Q. dout and out are in [B, T, H, D] memory.
void attention_backward_heads(const float* q, const float* k, const float* v, const float* out,
                              const float* dout, const float* lse, float* dq, float* dk, float* dv,
                              AttentionShape a, int64_t begin, int64_t end) {
  const int64_t T = a.T, D = a.D, Tp = a.Tp, group = a.H / a.KV, row_stride = a.H * D;
  std::vector<float> k_t(D * Tp), v_t(D * Tp), p(kRows * Tp), ds(kRows * Tp);
  for (int64_t bg = begin; bg < end; ++bg) {
    const int64_t b = bg / a.KV, g = bg % a.KV;
    const float* K = k + bg * T * D;
    float* dK = dk + bg * T * D;
    float* dV = dv + bg * T * D;
    std::fill(dK, dK + T * D, 0.f);
    std::fill(dV, dV + T * D, 0.f);
    transpose_block(K, k_t.data(), T, D, Tp);
    transpose_block(v + bg * T * D, v_t.data(), T, D, Tp);
    for (int64_t h = g * group; h < (g + 1) * group; ++h) {
      const int64_t bh = b * a.H + h;
      const float* Q = q + bh * T * D;
      for (int64_t i0 = 0; i0 < T; i0 += kRows) {
        const int64_t n = i0 + kRows;
        const float* o = out + ((b * T + i0) * a.H + h) * D;
        const float* dO = dout + ((b * T + i0) * a.H + h) * D;
        block_scores(Q + i0 * D, D, k_t.data(), p.data(), n, D, Tp, a.scale);
        block_scores(dO, row_stride, v_t.data(), ds.data(), n, D, Tp, 1.f);  // dp
        for (int64_t r = 0; r < kRows; ++r) {
          float* pr = p.data() + r * Tp;
          float* dsr = ds.data() + r * Tp;
          const int64_t keys = i0 + r + 1;
          const float row_lse = lse[bh * T + i0 + r];
          float di = 0.f;
#pragma omp simd reduction(+ : di)
          for (int64_t d = 0; d < D; ++d) di += dO[r * row_stride + d] * o[r * row_stride + d];
#pragma omp simd
          for (int64_t j = 0; j < keys; ++j) {
            pr[j] = exp_f32(pr[j] - row_lse);
            dsr[j] = pr[j] * (dsr[j] - di) * a.scale;
          }
          for (int64_t j = keys; j < n; ++j) pr[j] = dsr[j] = 0.f;  // masked
        }
        block_mix(ds.data(), K, dq + (bh * T + i0) * D, D, n, D, Tp);
        block_scatter(ds.data(), Q + i0 * D, D, dK, n, D, Tp);
        block_scatter(p.data(), dO, row_stride, dV, n, D, Tp);
      }
    }
  }
}
#pragma GCC pop_options

// ---------------------------------------------------------------------------- operators
// grad_w is summed in fixed blocks of rows, one partial each, then over the blocks: the
// same result for any thread count, and a short float sum per block.
constexpr int64_t kNormBlock = 64;

std::tuple<Tensor, Tensor> rms_norm_backward(const Tensor& grad_in, const Tensor& x_in, const Tensor& w_in,
                                             double eps) {
  check_fp32_cpu(grad_in, "grad");
  check_fp32_cpu(x_in, "x");
  check_fp32_cpu(w_in, "weight");
  TORCH_CHECK(x_in.dim() >= 1 && x_in.size(-1) > 0, "mlscale cpu kernels: rms_norm_backward needs rows of width > 0");
  const Tensor g = grad_in.contiguous(), x = x_in.contiguous(), w = w_in.contiguous();
  const int64_t C = x.size(-1), N = x.numel() / C;
  TORCH_CHECK(g.numel() == x.numel() && w.numel() == C, "mlscale cpu kernels: rms_norm_backward got grad of ",
              g.numel(), " and weight of ", w.numel(), " elements for ", N, " rows of ", C);
  const int64_t blocks = (N + kNormBlock - 1) / kNormBlock;
  Tensor grad_x = at::empty_like(x, at::MemoryFormat::Contiguous);
  Tensor partial = at::zeros({std::max<int64_t>(blocks, 1), C}, x.options());
  const float* gp = g.const_data_ptr<float>();
  const float* xp = x.const_data_ptr<float>();
  const float* wp = w.const_data_ptr<float>();
  float* gxp = grad_x.mutable_data_ptr<float>();
  float* pp = partial.mutable_data_ptr<float>();
  const float feps = static_cast<float>(eps);
  at::parallel_for(0, blocks, 1, [=](int64_t begin, int64_t end) {
    for (int64_t blk = begin; blk < end; ++blk) {
      rms_norm_backward_rows(gp, xp, wp, feps, gxp, pp + blk * C, blk * kNormBlock,
                             std::min(N, (blk + 1) * kNormBlock), C);
    }
  });
  return {grad_x, partial.sum(0)};
}

std::tuple<Tensor, Tensor> swiglu_forward(const Tensor& h_in) {
  check_fp32_cpu(h_in, "h");
  const Tensor h = h_in.contiguous();
  TORCH_CHECK(h.dim() >= 1 && h.size(-1) > 0 && h.size(-1) % 2 == 0,
              "mlscale cpu kernels: swiglu needs [gate | up] rows of even width > 0, got ", h.sizes());
  const int64_t F = h.size(-1) / 2, N = h.numel() / (2 * F);
  Tensor a = at::empty({N, F}, h.options()), sig = at::empty({N, F}, h.options());
  const float* hp = h.const_data_ptr<float>();
  float* ap = a.mutable_data_ptr<float>();
  float* sp = sig.mutable_data_ptr<float>();
  at::parallel_for(0, N, 8, [=](int64_t begin, int64_t end) { swiglu_rows(hp, ap, sp, begin, end, F); });
  return {a, sig};
}

Tensor swiglu_backward(const Tensor& grad_in, const Tensor& h_in, const Tensor& sig_in) {
  check_fp32_cpu(grad_in, "grad");
  check_fp32_cpu(h_in, "h");
  const Tensor ga = grad_in.contiguous(), h = h_in.contiguous(), sig = sig_in.contiguous();
  TORCH_CHECK(h.dim() >= 1 && h.size(-1) > 0 && h.size(-1) % 2 == 0,
              "mlscale cpu kernels: swiglu needs [gate | up] rows of even width > 0, got ", h.sizes());
  const int64_t F = h.size(-1) / 2, N = h.numel() / (2 * F);
  TORCH_CHECK(ga.numel() == N * F && sig.numel() == N * F,
              "mlscale cpu kernels: swiglu_backward got mismatched shapes");
  Tensor grad_h = at::empty({N, 2 * F}, h.options());
  const float* gp = ga.const_data_ptr<float>();
  const float* hp = h.const_data_ptr<float>();
  const float* sp = sig.const_data_ptr<float>();
  float* op = grad_h.mutable_data_ptr<float>();
  at::parallel_for(0, N, 8, [=](int64_t begin, int64_t end) { swiglu_backward_rows(gp, hp, sp, op, begin, end, F); });
  return grad_h;
}

// Rotary tables: [T, D] shared by the batch, or [B, T, D] per row (packed examples).
void check_tables(const Tensor& cos, const Tensor& sin, int64_t B, int64_t T, int64_t D) {
  check_fp32_cpu(cos, "cos");
  check_fp32_cpu(sin, "sin");
  const bool shared = cos.dim() == 2 && cos.size(0) == T && cos.size(1) == D;
  const bool per_row = cos.dim() == 3 && cos.size(0) == B && cos.size(1) == T && cos.size(2) == D;
  TORCH_CHECK((shared || per_row) && sin.sizes() == cos.sizes(),
              "mlscale cpu kernels: rotary tables must be [T, D] or [B, T, D], got ", cos.sizes());
}

std::tuple<Tensor, Tensor, Tensor> qkv_rope_forward(const Tensor& qkv_in, const Tensor& cos_in,
                                                    const Tensor& sin_in, int64_t n_head, int64_t kv_heads) {
  check_fp32_cpu(qkv_in, "qkv");
  TORCH_CHECK(qkv_in.dim() == 4 && qkv_in.size(2) == n_head + 2 * kv_heads && qkv_in.size(3) % 2 == 0,
              "mlscale cpu kernels: qkv must be [B, T, n_head + 2 kv_heads, even head_dim], got ", qkv_in.sizes());
  const Tensor qkv = qkv_in.contiguous(), cos = cos_in.contiguous(), sin = sin_in.contiguous();
  const int64_t B = qkv.size(0), T = qkv.size(1), D = qkv.size(3);
  check_tables(cos, sin, B, T, D);
  Tensor q = at::empty({B, n_head, T, D}, qkv.options());
  Tensor k = at::empty({B, kv_heads, T, D}, qkv.options());
  Tensor v = at::empty({B, kv_heads, T, D}, qkv.options());
  const float* xp = qkv.const_data_ptr<float>();
  const float* cp = cos.const_data_ptr<float>();
  const float* sp = sin.const_data_ptr<float>();
  float* qp = q.mutable_data_ptr<float>();
  float* kp = k.mutable_data_ptr<float>();
  float* vp = v.mutable_data_ptr<float>();
  const bool per_row = cos.dim() == 3;
  at::parallel_for(0, B * T, 4, [=](int64_t begin, int64_t end) {
    qkv_rope_rows(xp, cp, sp, qp, kp, vp, begin, end, T, n_head, kv_heads, D, per_row);
  });
  return {q, k, v};
}

Tensor qkv_rope_backward(const Tensor& gq_in, const Tensor& gk_in, const Tensor& gv_in, const Tensor& cos_in,
                         const Tensor& sin_in) {
  const Tensor* grads[3] = {&gq_in, &gk_in, &gv_in};
  Tensor g[3];
  for (int i = 0; i < 3; ++i) {
    check_fp32_cpu(*grads[i], "a q/k/v gradient");
    TORCH_CHECK(grads[i]->dim() == 4, "mlscale cpu kernels: q/k/v gradients must be [B, heads, T, D]");
    // any layout over batch, heads and time is read in place; channels must be dense
    g[i] = grads[i]->stride(3) == 1 ? *grads[i] : grads[i]->contiguous();
  }
  const int64_t B = g[0].size(0), T = g[0].size(2), D = g[0].size(3);
  const int64_t H = g[0].size(1), KV = g[1].size(1);
  TORCH_CHECK(g[1].sizes() == g[2].sizes() && g[1].size(0) == B && g[1].size(2) == T && g[1].size(3) == D &&
                  D % 2 == 0,
              "mlscale cpu kernels: q/k/v gradients have mismatched shapes");
  const Tensor cos = cos_in.contiguous(), sin = sin_in.contiguous();
  check_tables(cos, sin, B, T, D);
  Tensor grad = at::empty({B, T, H + 2 * KV, D}, g[0].options());
  auto view = [](const Tensor& t) {
    return HeadGrads{t.const_data_ptr<float>(), t.size(1), t.stride(0), t.stride(1), t.stride(2)};
  };
  const HeadGrads hq = view(g[0]), hk = view(g[1]), hv = view(g[2]);
  const float* cp = cos.const_data_ptr<float>();
  const float* sp = sin.const_data_ptr<float>();
  float* op = grad.mutable_data_ptr<float>();
  const bool per_row = cos.dim() == 3;
  at::parallel_for(0, B * T, 4, [=](int64_t begin, int64_t end) {
    qkv_rope_backward_rows(hq, hk, hv, cp, sp, op, begin, end, T, D, per_row);
  });
  return grad;
}


AttentionShape attention_shape(const Tensor& q, const Tensor& k, const Tensor& v) {
  check_fp32_cpu(q, "q");
  check_fp32_cpu(k, "k");
  check_fp32_cpu(v, "v");
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && k.sizes() == v.sizes() && q.size(0) == k.size(0) &&
                  q.size(2) == k.size(2) && q.size(3) == k.size(3) && k.size(1) > 0 && q.size(1) % k.size(1) == 0,
              "mlscale cpu kernels: attention needs q [B, H, T, D] and k, v [B, KV, T, D] with KV dividing H, got ",
              q.sizes(), " and ", k.sizes());
  TORCH_CHECK(q.size(2) % kRows == 0 && q.size(3) % kLanes == 0,
              "mlscale cpu kernels: attention needs T divisible by 4 and D by 8, got T=", q.size(2), " D=", q.size(3));
  const int64_t T = q.size(2), Tp = (T + kLanes - 1) / kLanes * kLanes;
  return {q.size(0), q.size(1), k.size(1), T, q.size(3), Tp, static_cast<float>(1.0 / std::sqrt(q.size(3)))};
}

// Returns out as a [B, H, T, D] view of [B, T, H, D] memory, and lse [B, H, T].
std::tuple<Tensor, Tensor> causal_attention_forward(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in) {
  const AttentionShape a = attention_shape(q_in, k_in, v_in);
  const Tensor q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous();
  Tensor out = at::empty({a.B, a.T, a.H, a.D}, q.options());
  Tensor lse = at::empty({a.B, a.H, a.T}, q.options());
  const float* qp = q.const_data_ptr<float>();
  const float* kp = k.const_data_ptr<float>();
  const float* vp = v.const_data_ptr<float>();
  float* op = out.mutable_data_ptr<float>();
  float* lp = lse.mutable_data_ptr<float>();
  at::parallel_for(0, a.B * a.H, 1, [=](int64_t begin, int64_t end) {
    attention_heads(qp, kp, vp, op, lp, a, begin, end);
  });
  return {out.transpose(1, 2), lse};
}

// out and grad_out are [B, H, T, D] views of [B, T, H, D] memory (as forward returns and
// the output projection's backward gives); returns dq [B, H, T, D], dk and dv [B, KV, T, D].
std::tuple<Tensor, Tensor, Tensor> causal_attention_backward(const Tensor& grad_in, const Tensor& q_in,
                                                             const Tensor& k_in, const Tensor& v_in,
                                                             const Tensor& out_in, const Tensor& lse_in) {
  const AttentionShape a = attention_shape(q_in, k_in, v_in);
  check_fp32_cpu(grad_in, "grad");
  const Tensor q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous(), lse = lse_in.contiguous();
  // [B, T, H, D] memory for both: a no-op for what forward returned
  const Tensor out = out_in.transpose(1, 2).contiguous(), dout = grad_in.transpose(1, 2).contiguous();
  TORCH_CHECK(out_in.sizes() == q_in.sizes() && grad_in.sizes() == q_in.sizes() &&
                  lse.sizes() == at::IntArrayRef({a.B, a.H, a.T}),
              "mlscale cpu kernels: attention backward needs grad and out shaped like q ", q_in.sizes(),
              " and lse [B, H, T], got ", grad_in.sizes(), ", ", out_in.sizes(), " and ", lse.sizes());
  Tensor dq = at::empty_like(q), dk = at::empty_like(k), dv = at::empty_like(v);
  const float* qp = q.const_data_ptr<float>();
  const float* kp = k.const_data_ptr<float>();
  const float* vp = v.const_data_ptr<float>();
  const float* op = out.const_data_ptr<float>();
  const float* gp = dout.const_data_ptr<float>();
  const float* lp = lse.const_data_ptr<float>();
  float* dqp = dq.mutable_data_ptr<float>();
  float* dkp = dk.mutable_data_ptr<float>();
  float* dvp = dv.mutable_data_ptr<float>();
  at::parallel_for(0, a.B * a.KV, 1, [=](int64_t begin, int64_t end) {
    attention_backward_heads(qp, kp, vp, op, gp, lp, dqp, dkp, dvp, a, begin, end);
  });
  return {dq, dk, dv};
}

}  // namespace

TORCH_LIBRARY(mlscale, m) {
  m.def("rms_norm_backward(Tensor grad, Tensor x, Tensor weight, float eps) -> (Tensor, Tensor)");
  m.def("swiglu_forward(Tensor h) -> (Tensor, Tensor)");
  m.def("swiglu_backward(Tensor grad, Tensor h, Tensor sig) -> Tensor");
  m.def("qkv_rope_forward(Tensor qkv, Tensor cos, Tensor sin, int n_head, int kv_heads) -> (Tensor, Tensor, Tensor)");
  m.def("causal_attention_forward(Tensor q, Tensor k, Tensor v) -> (Tensor, Tensor)");
  m.def("causal_attention_backward(Tensor grad, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse) -> (Tensor, Tensor, Tensor)");
  m.def("qkv_rope_backward(Tensor grad_q, Tensor grad_k, Tensor grad_v, Tensor cos, Tensor sin) -> Tensor");
}

TORCH_LIBRARY_IMPL(mlscale, CPU, m) {
  m.impl("rms_norm_backward", rms_norm_backward);
  m.impl("swiglu_forward", swiglu_forward);
  m.impl("swiglu_backward", swiglu_backward);
  m.impl("qkv_rope_forward", qkv_rope_forward);
  m.impl("qkv_rope_backward", qkv_rope_backward);
  m.impl("causal_attention_forward", causal_attention_forward);
  m.impl("causal_attention_backward", causal_attention_backward);
}
