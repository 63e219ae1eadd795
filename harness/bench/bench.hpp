#pragma once
// Speed and memory measurement of one mixer (or one whole-model training step) at one shape.
// The timing loop itself is Google Benchmark's, driven by `attnbench bench`; this header holds
// what the cells need: prepared workloads, memory predictions, calibration and fits.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "attnbench/variant.hpp"

namespace ab {

enum class Direction { fwd, fwd_bwd, train_step, decode };
const char* direction_name(Direction d);
Direction parse_direction(const std::string& s);  // UsageError naming the valid ones

struct BenchShape {
  int64_t batch = 1, length = 1024, d_model = 512, heads = 8;
  bool causal = false;
  // fwd / fwd_bwd of attention-style variants only: time attend(q, k, v) on q, k, v [B, H, N, d]
  // alone, without the mixer's q/k/v/output projections (the attention kernel's own speed).
  bool attend_only = false;
};

// One prepared cell: construction allocates the mixer (or model) and the input; run() does one
// iteration. fwd runs under NoGrad; fwd_bwd runs forward with the tape and backward from ones;
// train_step runs the LRA-small model's forward, loss, backward and AdamW update; decode feeds
// a context of `length` tokens through the carried state at construction (untimed) and then
// decodes one more token per iteration.
class BenchCell {
 public:
  virtual ~BenchCell() = default;
  virtual void run() = 0;
  virtual double flops() const = 0;  // per iteration
  virtual int64_t state_bytes() const { return 0; }  // decode: the carried state after the context
};

// Tokens decoded per timed repetition of a decode cell: few enough that the context stays
// about `length` (a KV cache grows by one token per iteration).
inline constexpr int64_t kDecodeTokensPerRepetition = 32;

// Whether the variant derives from AttentionMixer (has attend(q, k, v)): VariantSpec::attention_style
// (the parameters and the shape no longer matter).
bool is_attention_style(const VariantSpec& spec, const Json& variant_params, const BenchShape& shape);

// variant_params: resolved. Throws UsageError for an unsupported direction or shape.
std::unique_ptr<BenchCell> make_bench_cell(const VariantSpec& spec, const Json& variant_params, const BenchShape& shape,
                                           Direction dir, uint64_t seed);

// Bytes a cell is expected to need at its peak, from the variant's cost model; the memory
// guard skips cells above a limit instead of letting them swap or be killed.
double predicted_peak_bytes(const VariantSpec& spec, const Json& variant_params, const BenchShape& shape, Direction dir);

int64_t physical_memory_bytes();
void reset_peak_rss();     // resets the kernel's high-water mark (VmHWM) of this process
int64_t peak_rss_bytes_now();  // VmHWM

// GFLOP/s of a square fp32 oneDNN matmul (n x n x n), the median of `reps` timed runs.
double calibrate_gemm_gflops(int64_t n = 2048, int reps = 5);

// Least-squares slope of log(y) against log(x): the exponent of a power law y ~ x^k.
double fit_exponent(const std::vector<double>& x, const std::vector<double>& y);

}  // namespace ab
