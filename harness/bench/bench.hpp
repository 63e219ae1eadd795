#pragma once
// Speed and memory measurement of mixers (or a whole-model training step) per shape: run_bench
// drives Google Benchmark over the cells and returns the run document; the rest is what the cells
// need (prepared workloads, memory predictions, calibration and fits).
#include <cstdint>
#include <map>
#include <memory>
#include <set>
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
// The largest settings bench takes, from its flags and from a sweep's bench block alike.
inline constexpr int64_t kMaxBenchLength = 1 << 24, kMaxBenchBatch = 1 << 20, kMaxBenchDModel = 1 << 16,
                         kMaxBenchHeads = 1 << 12, kMaxBenchRepetitions = 1000;

// The LRA-small model whose training step the train_step cell times (mean pooling, the model
// defaults otherwise), written down once.
struct TrainStepModelShape {
  int64_t layers, d_model, heads, mlp_dim;
};
inline constexpr TrainStepModelShape kTrainStepModel{2, 64, 2, 128};

// The `model` block of a bench run document: the mixer shape, the scope, the GEMM precision and
// the train_step model.
Json bench_model_json(const BenchShape& shape, const std::string& matmul_precision);

// One prepared cell: construction allocates the mixer (or model) and the input; run() does one
// iteration. fwd runs under NoGrad; fwd_bwd runs forward with the tape and backward from ones;
// train_step runs train_step() of `train` (forward, loss, backward, AdamW with the default train
// settings) on the kTrainStepModel model; decode feeds
// a context of `length` tokens through the carried state at construction (untimed) and then
// decodes one more token per iteration.
class BenchCell {
 public:
  virtual ~BenchCell() = default;
  virtual void run() = 0;
  virtual double flops() const = 0;  // per iteration
  virtual double bytes() const { return 0; }  // per iteration: unavoidable traffic (Cost::bytes); 0 = unknown
  virtual int64_t state_bytes() const { return 0; }  // decode: the carried state after the context
};

// Tokens decoded per timed repetition of a decode cell: few enough that the context stays
// about `length` (a KV cache grows by one token per iteration).
inline constexpr int64_t kDecodeTokensPerRepetition = 32;


// variant_params: resolved. Throws UsageError for an unsupported direction or shape.
std::unique_ptr<BenchCell> make_bench_cell(const VariantSpec& spec, const Json& variant_params, const BenchShape& shape,
                                           Direction dir, uint64_t seed);

// Bytes a cell is expected to need at its peak, from the variant's cost model; the memory
// guard skips cells above a limit instead of letting them swap or be killed.
double predicted_peak_bytes(const VariantSpec& spec, const Json& variant_params, const BenchShape& shape, Direction dir);

// Everything one `attnbench bench` measures, resolved.
struct BenchRequest {
  std::vector<std::string> variants;
  std::map<std::string, Json> params;  // per variant: resolved parameters
  std::vector<int64_t> lengths;
  std::vector<Direction> directions;
  BenchShape shape;  // length: taken from `lengths`
  int64_t repetitions = 5;
  std::string min_time = "0.1";  // seconds per repetition, as Google Benchmark reads it
  int64_t memory_limit = 0;      // cells predicted above it are skipped
  bool calibrate = true;         // measure the oneDNN GEMM rate first
  std::set<std::string> fidelity_inputs;  // {} = no fidelity; "random", "trained"
  int64_t fidelity_steps = 300;
  std::string matmul_precision = "fp32";
  uint64_t seed = 0;
  std::vector<std::string> command_line;  // recorded in the context
};

// Runs every cell and returns the bench run document (DESIGN §7). A cell that fails is recorded
// with its status; the document's status is "error" only when every cell failed. Prints a line
// per cell to stderr.
Json run_bench(const BenchRequest& request);

int64_t physical_memory_bytes();
void reset_peak_rss();     // resets the kernel's high-water mark (VmHWM) of this process
int64_t peak_rss_bytes_now();  // VmHWM

// The ceilings of this machine at a thread count, measured in the run whose cells they judge.
struct MachinePeaks {
  int threads = 1;
  double fma_fp32_gflops = 0;   // register-only FMA loop, 12 chains per thread (best of 7 tries)
  double fma_bf16_gflops = 0;   // vdpbf16ps loop; 0 = the CPU (or the build) has no bf16 dot product
  double bandwidth_gbs = 0;     // triad over 3 x 64 MiB, 3 x 4 bytes per element
  double gemm_fp32_gflops = 0;  // oneDNN's square fp32 matmul (calibrate_gemm_gflops); 0 = not measured
  Json to_json() const;
};
MachinePeaks calibrate_machine_peaks(int threads);

// GFLOP/s of a square fp32 oneDNN matmul (n x n x n), the median of `reps` timed runs.
double calibrate_gemm_gflops(int64_t n = 2048, int reps = 5);

// Least-squares slope of log(y) against log(x): the exponent of a power law y ~ x^k.
double fit_exponent(const std::vector<double>& x, const std::vector<double>& y);

}  // namespace ab
