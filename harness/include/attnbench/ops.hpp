#pragma once
// Differentiable operations. Each computes its result eagerly (oneDNN for GEMM, softmax, layer
// norm and eltwise; TBB loops elsewhere) and records its backward on the tape.
// Shapes: activations are [B, N, D]; per-head tensors [B, H, N, d].
#include <cstdint>
#include <optional>
#include <vector>

#include "attnbench/autograd.hpp"
#include "attnbench/rng.hpp"

namespace ab {

// ---- linear algebra ----
// a: [..., M, K] (or [..., K, M] if trans_a), b: [..., K, N] (or [..., N, K] if trans_b) -> [..., M, N].
// Batch dimensions of a and b must be equal, or b may be 2-D (shared by every batch).
Var matmul(const Var& a, const Var& b, bool trans_a = false, bool trans_b = false);
// x: [..., in], w: [in, out], bias: [out] (optional) -> [..., out]
Var linear(const Var& x, const Var& w, const Var& bias = Var());

// ---- elementwise with numpy-style broadcasting (right-aligned dimensions) ----
Var add(const Var& a, const Var& b);
Var sub(const Var& a, const Var& b);
Var mul(const Var& a, const Var& b);
Var scale(const Var& a, float s);
Var add_scalar(const Var& a, float s);

// ---- shape ----
Var reshape(const Var& a, Shape shape);
Var permute(const Var& a, const std::vector<int>& perm);
Var transpose(const Var& a, int d0, int d1);
Var slice(const Var& a, int dim, int64_t start, int64_t length);
Var concat(const std::vector<Var>& parts, int dim);

// ---- normalisation and activations ----
// Softmax over the last dimension. `additive_mask` (not differentiated) broadcasts against x,
// e.g. [B, 1, 1, N] for key padding (0 keep, -inf drop) or [N, N] for causality.
Var softmax(const Var& x, const Tensor* additive_mask = nullptr);
// x: [..., D], gamma, beta: [D]
Var layer_norm(const Var& x, const Var& gamma, const Var& beta, float eps = 1e-5f);
Var gelu(const Var& x);  // exact (erf) GELU
Var relu(const Var& x);
Var elu(const Var& x, float alpha = 1.0f);
Var exp(const Var& x);
Var sigmoid(const Var& x);
Var silu(const Var& x);

// ---- lookup, regularisation, reductions, losses ----
// ids: row-major [..] with values in [0, V); table: [V, D] -> [.., D]
Var embedding(const std::vector<int32_t>& ids, const Shape& ids_shape, const Var& table);
// Inverted dropout; the mask is a pure function of `stream`, so it can be replayed.
Var dropout(const Var& x, float p, const RngStream& stream, bool training);
Var sum(const Var& x);             // -> scalar [1]
Var mean(const Var& x);            // -> scalar [1]
Var sum_dim(const Var& x, int dim);  // removes `dim`
Var mean_dim(const Var& x, int dim);
// logits: [M, C]; labels: M values, `ignore_label` rows are not scored -> mean loss, scalar [1]
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
