#pragma once
// Internal compute layer. oneDNN does GEMM, softmax, layer norm and eltwise (primitives cached by
// shape); ab::parallel_for (TBB) runs the loops oneDNN has nothing for. oneDNN is never called
// inside a parallel_for body.
#include <cstdint>
#include <vector>

#include "attnbench/parallel.hpp"

namespace ab {
class Tensor;
}

namespace ab::kernels {

using ab::parallel_for;  // the house parallel loop (attnbench/parallel.hpp)

inline constexpr int64_t kGrain = 1 << 14;  // elements per task for streaming loops

// Keep flags [B * N] (1 real key, 0 padded) from an additive key mask [B, 1, 1, N] (0 keep, -inf
// drop); empty when mask is null. Throws std::invalid_argument naming `op` for another shape.
std::vector<float> key_keep_flags(const Tensor* mask, int64_t B, int64_t N, const char* op);

void add_inplace(float* y, const float* x, int64_t n);  // y += x

// ---- oneDNN ----
// c[b] (+)= op(a[b]) @ op(b[b]) + bias, with op = transpose when the flag is set.
// Logical shapes: op(a): [batch, M, K], op(b): [batch or 1, K, N], c: [batch, M, N], bias: [N].
// Storage: a is [batch, M, K] or, transposed, [batch, K, M]; b likewise; c is contiguous.
// b_batch is `batch` or 1 (shared). accumulate adds into c instead of overwriting it.
void matmul(const float* a, const float* b, float* c, int64_t batch, int64_t b_batch, int64_t M, int64_t N,
            int64_t K, bool trans_a, bool trans_b, const float* bias = nullptr, bool accumulate = false);

// Input precision of matmul (process-wide; default fp32). bf16 rounds a and b to bfloat16 and
// lets oneDNN multiply them with fp32 accumulation and output (AVX512_BF16 / AMX hardware).
// Hand-written kernels (flash attention, scans) stay fp32.
enum class MatmulPrecision { fp32, bf16 };
void set_matmul_precision(MatmulPrecision p);
MatmulPrecision matmul_precision();

// Row softmax of x[rows, cols] -> y; backward from y and dy.
void softmax_forward(const float* x, float* y, int64_t rows, int64_t cols);
void softmax_backward(const float* y, const float* dy, float* dx, int64_t rows, int64_t cols);

// x[rows, cols] -> y, saving mean and variance [rows].
void layer_norm_forward(const float* x, const float* gamma, const float* beta, float* y, float* mean,
                        float* variance, int64_t rows, int64_t cols, float eps);
// oneDNN 2.6 asks for the shift argument in backward too, though the gradient does not use it.
void layer_norm_backward(const float* x, const float* dy, const float* gamma, const float* beta, const float* mean,
                         const float* variance, float* dx, float* dgamma, float* dbeta, int64_t rows,
                         int64_t cols, float eps);

enum class Eltwise { gelu, relu, elu, exp, sigmoid, silu };
// Whether backward needs the output (true) or the input (false).
bool eltwise_backward_uses_output(Eltwise kind);
void eltwise_forward(Eltwise kind, float alpha, const float* x, float* y, int64_t n);
// `saved` is the output or the input, as eltwise_backward_uses_output says.
void eltwise_backward(Eltwise kind, float alpha, const float* saved, const float* dy, float* dx, int64_t n);

void set_threads(int n);
int threads();
const char* onednn_version();
const char* tbb_version();

}  // namespace ab::kernels
