// Fused CPU kernels for the elementwise parts of a Llama block in fp32 training.
//
// Autograd runs RMSNorm's backward as eight elementwise passes, SwiGLU's activation as
// silu, a multiply, and in backward a silu_backward that evaluates the exponential again,
// and rotate-half rotary as eight half-width passes and a concatenation. On a CPU, where
// the matrix multiplies already run near peak, those passes over memory are what is left
// to save: each kernel here reads its inputs once and writes its outputs once.
// `cpu_kernels.py` builds this file on first use (cached)
// and holds the same arithmetic in PyTorch ops, for machines without a compiler and as
// the reference the tests compare against.
#include <ATen/Functions.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <tuple>

using at::Tensor;

namespace {

void check_fp32_cpu(const Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat, "mlscale cpu kernels: ", name,
              " must be a float32 CPU tensor, got ", t.scalar_type(), " on ", t.device());
}

// exp(x) for float, written so the compiler vectorises the loops that call it (libm's
// expf is a scalar call). Cody-Waite range reduction x = n ln2 + r, |r| <= ln2/2, and
// Cephes' degree-6 polynomial for e^r: within 2 ulp of expf over [-87.3, 88.3], outside
// which the argument is clamped (sigmoid only needs the saturated ends); NaN stays NaN.
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
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;  // 2^n
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

// Row loops. Each takes its pointers as arguments: written inline in the
// parallel_for lambdas, whose captures are references, the compiler must assume every
// float store may change them and reloads them in the inner loops (3x slower).

// With rstd = 1 / sqrt(mean(x^2) + eps), xhat = x * rstd and g' = grad * w:
// dx = rstd * (g' - xhat * mean(g' * xhat)), and grad_w (this thread's partial sum over
// its rows) += grad * xhat. rstd is recomputed from the row of x, which is read anyway.
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
void swiglu_backward_rows(const float* grad, const float* h, const float* sig, float* grad_h, float* a,
                          int64_t begin, int64_t end, int64_t F) {
  for (int64_t i = begin; i < end; ++i) {
    const float* gate = h + i * 2 * F;
    const float* up = gate + F;
    const float* g = grad + i * F;
    const float* s = sig + i * F;
    float* d_gate = grad_h + i * 2 * F;
    float* d_up = d_gate + F;
    float* ar = a + i * F;
#pragma omp simd
    for (int64_t c = 0; c < F; ++c) {
      const float act = gate[c] * s[c];
      ar[c] = act * up[c];
      d_up[c] = g[c] * act;
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

// ---------------------------------------------------------------------------- operators
// Rows go to threads in fixed static chunks, each with its own grad_w partial, summed in
// thread order: the same result on every run with the same thread count.
std::tuple<Tensor, Tensor> rms_norm_backward(const Tensor& grad_in, const Tensor& x_in, const Tensor& w_in,
                                             double eps) {
  check_fp32_cpu(grad_in, "grad");
  check_fp32_cpu(x_in, "x");
  check_fp32_cpu(w_in, "weight");
  const Tensor g = grad_in.contiguous(), x = x_in.contiguous(), w = w_in.contiguous();
  const int64_t C = x.size(-1), N = x.numel() / C;
  TORCH_CHECK(g.numel() == x.numel() && w.numel() == C, "mlscale cpu kernels: rms_norm_backward got grad of ",
              g.numel(), " and weight of ", w.numel(), " elements for ", N, " rows of ", C);
  Tensor grad_x = at::empty_like(x, at::MemoryFormat::Contiguous);
  Tensor partial = at::zeros({at::get_num_threads(), C}, x.options());
  const float* gp = g.const_data_ptr<float>();
  const float* xp = x.const_data_ptr<float>();
  const float* wp = w.const_data_ptr<float>();
  float* gxp = grad_x.mutable_data_ptr<float>();
  float* pp = partial.mutable_data_ptr<float>();
  const float feps = static_cast<float>(eps);
  at::parallel_for(0, N, 16, [=](int64_t begin, int64_t end) {
    rms_norm_backward_rows(gp, xp, wp, feps, gxp, pp + at::get_thread_num() * C, begin, end, C);
  });
  return {grad_x, partial.sum(0)};
}

std::tuple<Tensor, Tensor> swiglu_forward(const Tensor& h_in) {
  check_fp32_cpu(h_in, "h");
  const Tensor h = h_in.contiguous();
  TORCH_CHECK(h.size(-1) % 2 == 0, "mlscale cpu kernels: swiglu needs [gate | up] rows of even width");
  const int64_t F = h.size(-1) / 2, N = h.numel() / (2 * F);
  Tensor a = at::empty({N, F}, h.options()), sig = at::empty({N, F}, h.options());
  const float* hp = h.const_data_ptr<float>();
  float* ap = a.mutable_data_ptr<float>();
  float* sp = sig.mutable_data_ptr<float>();
  at::parallel_for(0, N, 8, [=](int64_t begin, int64_t end) { swiglu_rows(hp, ap, sp, begin, end, F); });
  return {a, sig};
}

std::tuple<Tensor, Tensor> swiglu_backward(const Tensor& grad_in, const Tensor& h_in, const Tensor& sig_in) {
  check_fp32_cpu(grad_in, "grad");
  check_fp32_cpu(h_in, "h");
  const Tensor ga = grad_in.contiguous(), h = h_in.contiguous(), sig = sig_in.contiguous();
  const int64_t F = h.size(-1) / 2, N = h.numel() / (2 * F);
  TORCH_CHECK(ga.numel() == N * F && sig.numel() == N * F,
              "mlscale cpu kernels: swiglu_backward got mismatched shapes");
  Tensor grad_h = at::empty({N, 2 * F}, h.options()), a = at::empty({N, F}, h.options());
  const float* gp = ga.const_data_ptr<float>();
  const float* hp = h.const_data_ptr<float>();
  const float* sp = sig.const_data_ptr<float>();
  float* op = grad_h.mutable_data_ptr<float>();
  float* ap = a.mutable_data_ptr<float>();
  at::parallel_for(0, N, 8, [=](int64_t begin, int64_t end) { swiglu_backward_rows(gp, hp, sp, op, ap, begin, end, F); });
  return {grad_h, a};
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

}  // namespace

TORCH_LIBRARY(mlscale, m) {
  m.def("rms_norm_backward(Tensor grad, Tensor x, Tensor weight, float eps) -> (Tensor, Tensor)");
  m.def("swiglu_forward(Tensor h) -> (Tensor, Tensor)");
  m.def("swiglu_backward(Tensor grad, Tensor h, Tensor sig) -> (Tensor, Tensor)");
  m.def("qkv_rope_forward(Tensor qkv, Tensor cos, Tensor sin, int n_head, int kv_heads) -> (Tensor, Tensor, Tensor)");
  m.def("qkv_rope_backward(Tensor grad_q, Tensor grad_k, Tensor grad_v, Tensor cos, Tensor sin) -> Tensor");
}

TORCH_LIBRARY_IMPL(mlscale, CPU, m) {
  m.impl("rms_norm_backward", rms_norm_backward);
  m.impl("swiglu_forward", swiglu_forward);
  m.impl("swiglu_backward", swiglu_backward);
  m.impl("qkv_rope_forward", qkv_rope_forward);
  m.impl("qkv_rope_backward", qkv_rope_backward);
}
