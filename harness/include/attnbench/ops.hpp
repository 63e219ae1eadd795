#pragma once
// Differentiable operations. Each computes its result eagerly (oneDNN for GEMM, softmax, layer
// norm and eltwise; TBB loops elsewhere) and records its backward on the tape.
// Shapes: activations are [B, N, D]; per-head tensors [B, H, N, d].
// "saves:" says what an op keeps alive for backward when its inputs want gradients (nothing is
// kept under NoGrad): the terms of a variant's Cost::activation_bytes, which `attnbench check
// --trace-memory` measures. Tensors saved are shared with the caller (an input the caller keeps
// anyway costs nothing more); index lists are plain memory outside the tracking allocator.
#include <cstdint>
#include <optional>
#include <vector>

#include "attnbench/autograd.hpp"
#include "attnbench/rng.hpp"

namespace ab {

// ---- linear algebra ----
// a: [..., M, K] (or [..., K, M] if trans_a), b: [..., K, N] (or [..., N, K] if trans_b) -> [..., M, N].
// Batch dimensions of a and b must be equal, or b may be 2-D (shared by every batch).
// saves: a if b wants a gradient, b if a does.
Var matmul(const Var& a, const Var& b, bool trans_a = false, bool trans_b = false);
// x: [..., in], w: [in, out], bias: [out] (optional) -> [..., out]
// saves: x if w wants a gradient, w if x does.
Var linear(const Var& x, const Var& w, const Var& bias = Var());

// ---- elementwise with numpy-style broadcasting (right-aligned dimensions) ----
Var add(const Var& a, const Var& b);  // saves nothing
Var sub(const Var& a, const Var& b);  // saves nothing
Var mul(const Var& a, const Var& b);  // saves: b if a wants a gradient, a if b does
Var div(const Var& a, const Var& b);  // a / b; saves: b, and a too if b wants a gradient
// Elementwise max / min; a tie sends the gradient to a. saves: a, b.
Var maximum(const Var& a, const Var& b);
Var minimum(const Var& a, const Var& b);
Var scale(const Var& a, float s);       // saves nothing
Var add_scalar(const Var& a, float s);  // saves nothing

// ---- elementwise, one operand ----
Var reciprocal(const Var& x);  // 1 / x (x must not be 0); saves: y
Var sqrt(const Var& x);        // x >= 0; saves: y
Var rsqrt(const Var& x);       // 1 / sqrt(x), x > 0; saves: y
Var pow(const Var& x, float p);  // x^p (x > 0 unless p is a whole number); saves: x
Var abs(const Var& x);         // gradient sign(x), 0 at 0; saves: x
// min(max(x, lo), hi); the gradient is 0 where x is outside (lo, hi). saves: x
Var clamp(const Var& x, float lo, float hi);

// ---- shape ----
// Every shape op saves nothing.
Var reshape(const Var& a, Shape shape);
Var permute(const Var& a, const std::vector<int>& perm);
Var transpose(const Var& a, int d0, int d1);
Var slice(const Var& a, int dim, int64_t start, int64_t length);
Var concat(const std::vector<Var>& parts, int dim);
// x: [..., n, ...] (n at `dim`), index: ids in [0, n) shaped like x except at `dim` (any length m
// there) -> out shaped like index, out[.., j, ..] = x[.., index[.., j, ..], ..] (torch.gather).
// saves: index (a copy, 4 bytes per output element).
Var gather(const Var& x, int dim, const std::vector<int32_t>& index, const Shape& index_shape);

// ---- normalisation and activations ----
// Softmax over the last dimension. `additive_mask` (not differentiated) broadcasts against x,
// e.g. [B, 1, 1, N] for key padding (0 keep, -inf drop) or [N, N] for causality. saves: y
Var softmax(const Var& x, const Tensor* additive_mask = nullptr);
// log(softmax(x)) over the last dimension, computed stably. saves: y
Var log_softmax(const Var& x);
// x: [..., D], gamma, beta: [D]. saves: x, gamma, beta and 2 floats per row (mean, variance)
Var layer_norm(const Var& x, const Var& gamma, const Var& beta, float eps = 1e-5f);
// x / max(||x||_2, eps) along `dim` (torch.nn.functional.normalize). saves: y and 1 float per
// normalised vector (its norm)
Var l2_normalize(const Var& x, int dim = -1, float eps = 1e-12f);
Var gelu(const Var& x);  // exact (erf) GELU; saves: x
Var relu(const Var& x);  // saves: x
Var elu(const Var& x, float alpha = 1.0f);  // saves: x
Var exp(const Var& x);      // saves: y
Var sigmoid(const Var& x);  // saves: y
Var silu(const Var& x);     // saves: x

// ---- lookup, regularisation, reductions, losses ----
// ids: row-major [..] with values in [0, V); table: [V, D] -> [.., D]. saves: ids (a copy)
Var embedding(const std::vector<int32_t>& ids, const Shape& ids_shape, const Var& table);
// Inverted dropout; the mask is a pure function of `stream`, so it can be replayed.
// saves nothing (backward recomputes the mask)
Var dropout(const Var& x, float p, const RngStream& stream, bool training);
Var sum(const Var& x);             // -> scalar [1]; saves nothing
Var mean(const Var& x);            // -> scalar [1]; saves nothing
// Reductions along `dim`, which is removed, or kept with size 1 when keepdim. sum/mean save
// nothing; max_dim saves the position of each maximum (4 bytes per output; a tie picks the first).
Var sum_dim(const Var& x, int dim, bool keepdim = false);
Var mean_dim(const Var& x, int dim, bool keepdim = false);
Var max_dim(const Var& x, int dim, bool keepdim = false);
// Inclusive prefix sum along `dim` (any rank). saves nothing
Var cumsum(const Var& x, int dim);
// The k largest entries of each row of the last dimension, largest first (ties: lower index
// first): values [..., k] (differentiable; saves: indices) and their positions, row-major like values.
struct TopK {
  Var values;
  std::vector<int32_t> indices;
};
TopK topk(const Var& x, int64_t k);
// logits: [M, C]; labels: M values, `ignore_label` rows are not scored -> mean loss, scalar [1]
// saves: logits (and the labels)
inline constexpr int32_t kIgnoreLabel = -100;
Var cross_entropy(const Var& logits, const std::vector<int32_t>& labels, int32_t ignore_label = kIgnoreLabel);

// ---- non-differentiable helpers ----
// Tokens [B, N] -> additive key mask [B, 1, 1, N]: 0 where token != pad, -inf where token == pad.
Tensor key_padding_mask(const std::vector<int32_t>& tokens, int64_t batch, int64_t length, int32_t pad_id = 0);
// [N, N] additive mask, -inf above the diagonal.
Tensor causal_mask(int64_t length);
// What a key mask means (MixerContext::key_mask, additive [B, 1, 1, N]): a key is padded when its
// value is below -1e4 (-inf in the masks the harness builds), real otherwise. Softmax-style
// consumers add the value to their scores, where anything below -1e4 is a weight of exactly 0 in
// fp32 as well, so every variant and kernel reads the same mask the same way.
inline bool is_padded_key(float mask_value) { return mask_value < -1e4f; }
// Keep flags of a key mask [B, 1, 1, N], 1 real key and 0 padded (is_padded_key), shaped `shape`
// (B * N elements: [B, N], [B, N, 1] against x [B, N, D], [B, 1, N, 1] against heads
// [B, H, N, d]); an undefined tensor when key_mask is null.
Tensor keep_flags(const Tensor* key_mask, Shape shape);

// Threads for oneDNN's OpenMP runtime and TBB together; 0 = all cores.
void set_num_threads(int threads);
// Input precision of the oneDNN GEMMs, process-wide: "fp32" (default) or "bf16" (rounded inputs,
// fp32 accumulation). UsageError for another name or a CPU without a bf16 matmul.
void set_matmul_precision(const std::string& precision);
int num_threads();

}  // namespace ab
