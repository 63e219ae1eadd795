#include "bench/bench.hpp"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <limits>

#include <fmt/format.h>

#include "eval/fidelity.hpp"
#include "model/model.hpp"
#include "train/optimizer.hpp"
#include "train/train.hpp"
#include "core/backend/onednn.hpp"

namespace ab {

const char* direction_name(Direction d) {
  switch (d) {
    case Direction::fwd: return "fwd";
    case Direction::fwd_bwd: return "fwd_bwd";
    case Direction::train_step: return "train_step";
    case Direction::decode: return "decode";
  }
  return "?";
}

Direction parse_direction(const std::string& s) {
  if (s == "fwd") return Direction::fwd;
  if (s == "fwd_bwd") return Direction::fwd_bwd;
  if (s == "train_step") return Direction::train_step;
  if (s == "decode") return Direction::decode;
  throw UsageError(unknown_name_message("direction", s, {"fwd", "fwd_bwd", "train_step", "decode"}));
}

namespace {

Tensor random_input(const Shape& s, uint64_t seed) {
  RngStream r(seed, Purpose::check, 77);
  Tensor t = Tensor::empty(s);
  for (int64_t i = 0; i < t.numel(); ++i) t[i] = r.normal();
  return t;
}

class MixerCell final : public BenchCell {
 public:
  MixerCell(const VariantSpec& spec, const Json& params, const BenchShape& s, Direction dir, uint64_t seed)
      : dir_(dir) {
    mixer_ = spec.make(MixerConfig{s.d_model, s.heads, s.length, 0, seed, params});
    ctx_.causal = s.causal;
    ctx_.seed = seed;
    ctx_.training = false;  // dropout off: the timing is of the mixer's algorithm
    const bool grad = dir == Direction::fwd_bwd;
    const Cost c = spec.cost(CostArgs{s.batch, s.length, s.d_model, s.heads, &params, s.causal});
    double fwd_flops = c.flops;
    if (s.attend_only) {
      attn_ = dynamic_cast<AttentionMixer*>(mixer_.get());
      if (!attn_)
        throw UsageError(fmt::format("variant '{}' is not attention-style (no attend(q, k, v)); measure it "
                                     "without --attend-only", spec.name));
      // q, k, v: [B, H, N, d], the same draws as the fidelity's random inputs.
      AttentionInputs in = random_attention_inputs(s.batch, s.heads, s.length, s.d_model / s.heads, seed);
      for (Tensor* t : {&in.q, &in.k, &in.v}) qkv_.emplace_back(*t, grad);
      ones_ = Tensor::full(in.q.shape(), 1.f);
      // Every attention-style cost model counts the four D x D projections (2 B N D^2 each).
      fwd_flops = std::max(0.0, c.flops - 8.0 * s.batch * s.length * s.d_model * s.d_model);
    } else {
      x_ = Var(random_input({s.batch, s.length, s.d_model}, seed), grad);
      ones_ = Tensor::full({s.batch, s.length, s.d_model}, 1.f);
    }
    // Traffic no implementation avoids. Attend-only: q, k, v in and o out, [B, H, N, d] each.
    // The mixer: what its cost model declares, else x in, y out, the parameters read and what the
    // forward saves for backward written (Cost::bytes documents the default).
    double param_bytes = 0;
    for (auto& [n, p] : mixer_->parameters()) param_bytes += 4.0 * static_cast<double>(p.value().numel());
    const double fwd_bytes = s.attend_only ? 4.0 * 4 * s.batch * s.length * s.d_model
                             : c.bytes > 0 ? c.bytes
                                           : 4.0 * 2 * s.batch * s.length * s.d_model + param_bytes + c.activation_bytes;
    // A backward costs about twice a forward (two products per forward product; it reads what
    // the forward wrote and writes as much again).
    const double mult = dir == Direction::fwd ? 1.0 : 3.0;
    flops_ = mult * fwd_flops;
    bytes_ = mult * fwd_bytes;
  }
  void run() override {
    auto forward = [&] { return attn_ ? attn_->attend(qkv_[0], qkv_[1], qkv_[2], ctx_) : mixer_->forward(x_, ctx_); };
    if (dir_ == Direction::fwd) {
      NoGrad ng;
      forward();
      return;
    }
    Var y = forward();
    y.backward(ones_);
    if (attn_)
      for (auto& t : qkv_) t.zero_grad();
    else
      x_.zero_grad();
    for (auto& [n, p] : mixer_->parameters()) p.zero_grad();
  }
  double flops() const override { return flops_; }
  double bytes() const override { return bytes_; }

 private:
  Direction dir_;
  Var x_;                 // [B, N, D]: the mixer's input
  std::vector<Var> qkv_;  // attend-only: q, k, v [B, H, N, d]
  Tensor ones_;
  std::unique_ptr<Mixer> mixer_;
  AttentionMixer* attn_ = nullptr;  // attend-only: the mixer as an attention mixer
  MixerContext ctx_;
  double flops_ = 0, bytes_ = 0;
};

// Decoding after a context: time per generated token and the carried state's size.
class DecodeCell final : public BenchCell {
 public:
  DecodeCell(const VariantSpec& spec, const Json& params, const BenchShape& s, uint64_t seed)
      : token_(random_input({s.batch, 1, s.d_model}, seed + 1)) {
    const int64_t capacity = s.length + kDecodeTokensPerRepetition + 1;
    mixer_ = spec.make(MixerConfig{s.d_model, s.heads, capacity, 0, seed, params});
    ctx_.causal = true;
    ctx_.seed = seed;
    NoGrad ng;
    state_ = mixer_->begin_decode(s.batch, ctx_);
    const Tensor context = random_input({s.batch, s.length, s.d_model}, seed);
    Tensor x_t = Tensor::empty({s.batch, 1, s.d_model});
    for (int64_t t = 0; t < s.length; ++t) {  // context [B, N, D] -> one [B, 1, D] token at a time
      for (int64_t b = 0; b < s.batch; ++b)
        std::copy_n(context.data() + (b * s.length + t) * s.d_model, s.d_model, x_t.data() + b * s.d_model);
      mixer_->decode_step(x_t, *state_, ctx_);
    }
    state_bytes_ = state_->bytes();
    // The marginal forward cost of one more token: what a decoder must do per token.
    const Cost at = spec.cost(CostArgs{s.batch, s.length, s.d_model, s.heads, &params, true});
    const Cost next = spec.cost(CostArgs{s.batch, s.length + 1, s.d_model, s.heads, &params, true});
    flops_ = std::max(0.0, next.flops - at.flops);
  }
  void run() override {
    NoGrad ng;
    mixer_->decode_step(token_, *state_, ctx_);
  }
  double flops() const override { return flops_; }
  int64_t state_bytes() const override { return state_bytes_; }

 private:
  Tensor token_;
  std::unique_ptr<Mixer> mixer_;
  std::unique_ptr<DecodeState> state_;
  MixerContext ctx_;
  double flops_ = 0;
  int64_t state_bytes_ = 0;
};

// Random tokens of a fixed length: enough to drive the model for a timing.
class RandomTokens final : public Task {
 public:
  explicit RandomTokens(int64_t length) : length_(length) {}
  TaskKind kind() const override { return TaskKind::classify; }
  int64_t vocab_size() const override { return 16; }
  int64_t num_classes() const override { return 10; }
  int64_t seq_len() const override { return length_; }
  int64_t split_size(Split) const override { return 1 << 20; }
  Example example(Split, int64_t i) const override {
    RngStream r = RngStream(0, Purpose::data, 99).child(static_cast<uint64_t>(i));
    Example ex;
    for (int64_t k = 0; k < length_; ++k) ex.input.push_back(static_cast<int32_t>(r.range(1, 15)));
    ex.target = {static_cast<int32_t>(r.below(10))};
    return ex;
  }

 private:
  int64_t length_;
};

// One training step of the kTrainStepModel model, as `train` runs it (train_step: forward, loss,
// backward, AdamW with the default train settings).
class ModelStepCell final : public BenchCell {
 public:
  ModelStepCell(const VariantSpec& spec, const Json& params, const BenchShape& s, uint64_t seed)
      : task_(s.length), train_params_(resolve_params(train_param_specs(), Json::object(), "train")) {
    Json model_params = resolve_params(model_param_specs(), Json::object(), "model");
    model_params["layers"] = kTrainStepModel.layers;
    model_params["d_model"] = kTrainStepModel.d_model;
    model_params["heads"] = kTrainStepModel.heads;
    model_params["mlp_dim"] = kTrainStepModel.mlp_dim;
    model_params["causal"] = s.causal;
    model_ = std::make_unique<Model>(model_params, spec, params, task_, seed);
    opt_ = std::make_unique<AdamW>(model_->parameters(), train_params_, model_->no_decay_names());
    std::vector<int64_t> idx;
    for (int64_t i = 0; i < s.batch; ++i) idx.push_back(i);
    batch_ = make_batch(task_, Split::train, idx);
    const auto [L, d, h, mlp] = kTrainStepModel;
    const Cost c = spec.cost(CostArgs{s.batch, s.length, d, h, &params, s.causal});
    // Per layer: the mixer's forward x3 (forward and backward) plus the MLP's two d x mlp GEMMs
    // per token, x3.
    flops_ = static_cast<double>(L) * (3 * c.flops + 3 * 2 * 2.0 * s.batch * s.length * d * mlp);
  }
  void run() override { train_step(*model_, *opt_, batch_, train_params_, ++step_); }
  double flops() const override { return flops_; }

 private:
  RandomTokens task_;
  Json train_params_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<AdamW> opt_;
  Batch batch_;
  int64_t step_ = 0;
  double flops_ = 0;
};

}  // namespace

std::unique_ptr<BenchCell> make_bench_cell(const VariantSpec& spec, const Json& params, const BenchShape& shape,
                                           Direction dir, uint64_t seed) {
  if (dir == Direction::decode) {
    if (!spec.caps.decode)
      throw UsageError(fmt::format("variant '{}' does not decode one token at a time (no 'decode' capability)", spec.name));
    return std::make_unique<DecodeCell>(spec, params, shape, seed);
  }
  if (shape.causal && !spec.caps.causal) throw UsageError(fmt::format("variant '{}' has no causal form", spec.name));
  if (!shape.causal && !spec.caps.bidirectional)
    throw UsageError(fmt::format("variant '{}' is causal only; benchmark it with --causal", spec.name));
  if (shape.attend_only && dir != Direction::fwd && dir != Direction::fwd_bwd)
    throw UsageError(fmt::format("--attend-only measures the fwd and fwd_bwd directions, not {}", direction_name(dir)));
  if (dir == Direction::train_step) return std::make_unique<ModelStepCell>(spec, params, shape, seed);
  return std::make_unique<MixerCell>(spec, params, shape, dir, seed);
}


double predicted_peak_bytes(const VariantSpec& spec, const Json& params, const BenchShape& s, Direction dir) {
  if (dir == Direction::decode) {  // the state (grown by a few tokens) and one token's temporaries
    const Cost c = spec.cost(CostArgs{s.batch, s.length + kDecodeTokensPerRepetition, s.d_model, s.heads, &params, true});
    return c.state_bytes + 64.0 * s.batch * s.d_model * 4;
  }
  const bool model = dir == Direction::train_step;
  const int64_t d = model ? kTrainStepModel.d_model : s.d_model, h = model ? kTrainStepModel.heads : s.heads;
  const Cost c = spec.cost(CostArgs{s.batch, s.length, d, h, &params, s.causal});
  const double io = 4.0 * s.batch * s.length * d;
  // A mixer's forward+backward: the declared peak (Cost::peak_bytes, checked against the tracking
  // allocator by `attnbench check`) plus what the cell holds before it runs: x and the upstream
  // gradient of ones.
  if (dir == Direction::fwd_bwd && c.peak_bytes > 0) return c.peak_bytes + 2 * io;
  // Otherwise (forward only, the model step, or no declared peak): conservative multiples of the
  // saved tensors, measured on softmax: a forward holds about twice them at once (scores and
  // probabilities), forward+backward about three times, per layer of the model step.
  const double per_layer = (dir == Direction::fwd ? 2.0 : 3.0) * c.activation_bytes;
  return static_cast<double>(model ? kTrainStepModel.layers : 1) * per_layer + 4 * io;
}

Json bench_model_json(const BenchShape& s, const std::string& matmul_precision) {
  const auto [L, d, h, mlp] = kTrainStepModel;
  return {{"batch", s.batch}, {"d_model", s.d_model}, {"heads", s.heads}, {"causal", s.causal},
          {"scope", s.attend_only ? "attend" : "mixer"}, {"matmul_precision", matmul_precision},
          {"train_step_model", {{"layers", L}, {"d_model", d}, {"heads", h}, {"mlp_dim", mlp}}}};
}

int64_t physical_memory_bytes() {
  return static_cast<int64_t>(sysconf(_SC_PHYS_PAGES)) * static_cast<int64_t>(sysconf(_SC_PAGE_SIZE));
}

void reset_peak_rss() {
  std::ofstream f("/proc/self/clear_refs");
  if (f) f << "5";
}

int64_t peak_rss_bytes_now() {
  std::ifstream f("/proc/self/status");
  for (std::string line; std::getline(f, line);)
    if (line.rfind("VmHWM:", 0) == 0) return std::stoll(line.substr(6)) * 1024;
  return peak_rss_bytes();
}

double calibrate_gemm_gflops(int64_t n, int reps) {
  Tensor a = Tensor::full({n, n}, 0.5f), b = Tensor::full({n, n}, 0.25f), c = Tensor::empty({n, n});
  std::vector<double> rates;
  for (int r = 0; r < reps + 1; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    kernels::matmul(a.data(), b.data(), c.data(), 1, 1, n, n, n, false, false);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (r > 0) rates.push_back(2.0 * n * n * n / s / 1e9);  // the first run creates the primitive
  }
  std::sort(rates.begin(), rates.end());
  return rates[rates.size() / 2];
}

double fit_exponent(const std::vector<double>& x, const std::vector<double>& y) {
  const size_t n = std::min(x.size(), y.size());
  if (n < 2) return NAN;
  double sx = 0, sy = 0, sxx = 0, sxy = 0;
  for (size_t i = 0; i < n; ++i) {
    const double lx = std::log(x[i]), ly = std::log(y[i]);
    sx += lx, sy += ly, sxx += lx * lx, sxy += lx * ly;
  }
  const double den = n * sxx - sx * sx;
  return den == 0 ? NAN : (n * sxy - sx * sy) / den;
}

}  // namespace ab
