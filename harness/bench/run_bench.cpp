// run_bench: time and memory per variant x length x direction. Google Benchmark is the timing
// engine (repetitions, median, warm-up, random interleaving); the tracking allocator is its memory
// manager. The run document's top-level `benchmarks` array is in Google Benchmark's JSON shape, so
// its compare.py reads it.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <memory>

#include <fmt/format.h>

#include "bench/bench.hpp"
#include "eval/fidelity.hpp"
#include "core/backend/onednn.hpp"
#include "results/run_file.hpp"

namespace ab {
namespace {

constexpr const char* kCrossoverReference = "softmax_tiled";

// Peak tracked bytes of the extra iteration Google Benchmark runs with a memory manager. The peak
// goes to the cell being run (`current`, set by the cell's benchmark function): Google Benchmark
// 1.7 keeps its memory results in a vector that reallocates, so Run::memory_result may dangle by
// the time runs are reported (AddressSanitizer caught the use after free).
class TrackingMemoryManager final : public benchmark::MemoryManager {
 public:
  int64_t* current = nullptr;
  void Start() override {
    allocs_ = memory_stats().allocations;
    scope_ = std::make_unique<PeakScope>();
  }
  void Stop(Result& r) override {
    r.max_bytes_used = scope_->peak_bytes();
    if (current) *current = std::max<int64_t>(*current, r.max_bytes_used);
    r.num_allocs = memory_stats().allocations - allocs_;
    scope_.reset();
  }
  void Stop(Result* r) override { Stop(*r); }
  // Restarts the peak from what is live now, inside the measured run: a mixer cell calls it once
  // prepared, so that its peak is that of the iterations above x, the upstream gradient and the
  // parameters (what Cost::peak_bytes declares). No-op outside the memory manager's run.
  void rebase() {
    if (!scope_) return;
    scope_.reset();
    scope_ = std::make_unique<PeakScope>();
  }

 private:
  std::unique_ptr<PeakScope> scope_;
  int64_t allocs_ = 0;
};

// Keeps every run Google Benchmark reports, and prints a line per median.
class Collector final : public benchmark::BenchmarkReporter {
 public:
  bool ReportContext(const Context&) override { return true; }
  void ReportRuns(const std::vector<Run>& runs) override {
    for (const auto& r : runs) {
      runs_.push_back(r);
      runs_.back().memory_result = nullptr;  // may dangle (see TrackingMemoryManager)
      if (r.run_type == Run::RT_Aggregate && r.aggregate_name == "median")
        fmt::print(stderr, "{:<60} {:>10.3f} ms (median)\n", r.run_name.function_name, r.GetAdjustedRealTime());
      if (r.error_occurred) fmt::print(stderr, "{:<60} error: {}\n", r.benchmark_name(), r.error_message);
    }
  }
  std::vector<Run> runs_;
};

struct Cell {
  std::string variant, name;
  Json params;
  BenchShape shape;
  Direction dir;
  double predicted = 0;          // the memory guard's figure (predicted_peak_bytes)
  double predicted_peak = 0;     // fwd_bwd: Cost::peak_bytes, comparable with peak_bytes
  std::string status = "ok", error;
  double flops = 0, bytes = 0;  // per iteration: the cost model's work and unavoidable traffic
  int64_t peak_rss = 0;
  int64_t peak_bytes = 0;  // tracked, from the memory manager's iteration
  int64_t setup_bytes = 0;  // tracked bytes the prepared cell holds (inputs, parameters, model, context)
  int64_t state_bytes = 0;  // decode cells
};

}  // namespace

Json run_bench(const BenchRequest& req) {
  const auto& reg = VariantRegistry::instance();
  const std::vector<std::string>& variants = req.variants;
  const std::map<std::string, Json>& params = req.params;
  const std::vector<int64_t>& lengths = req.lengths;
  const std::vector<Direction>& dirs = req.directions;
  const BenchShape& base = req.shape;
  const int64_t limit = req.memory_limit;
  const uint64_t seed = req.seed;
  const bool want_fidelity = !req.fidelity_inputs.empty();
  set_matmul_precision(req.matmul_precision);

  // Google Benchmark takes its settings as flags.
  std::vector<std::string> gb_args = {"attnbench", fmt::format("--benchmark_repetitions={}", req.repetitions),
                                      "--benchmark_enable_random_interleaving=true",
                                      fmt::format("--benchmark_min_time={}", req.min_time),
                                      "--benchmark_min_warmup_time=0.05"};
  std::vector<char*> gb_argv;
  for (auto& s : gb_args) gb_argv.push_back(s.data());
  int gb_argc = static_cast<int>(gb_argv.size());
  benchmark::Initialize(&gb_argc, gb_argv.data());

  Json context = run_context(req.command_line);
  // Other threads already wanting half the cores (and at least two: one passing thread is the
  // usual background of a quiet machine): worth a word, since the figures will show it.
  if (const int64_t others = context.value("runnable_at_start", int64_t{0}), cpus = context["logical_cpus"].get<int64_t>();
      others >= std::max<int64_t>(cpus / 2, 2)) {
    fmt::print(stderr, "note: {} other runnable threads on {} logical CPUs as the bench starts; timings taken beside "
                       "other work are slower and noisier (recorded as context.runnable_at_start and load_avg)\n",
               others, cpus);
  }
  MachinePeaks peaks;
  if (req.calibrate) {
    peaks = calibrate_machine_peaks(kernels::threads());
    peaks.gemm_fp32_gflops = calibrate_gemm_gflops();
    context["gemm_gflops_fp32"] = peaks.gemm_fp32_gflops;
    context["peaks"] = peaks.to_json();
    fmt::print(stderr, "peaks on {} threads: fp32 FMA {:.1f} GFLOP/s, bf16 {:.1f}, oneDNN fp32 GEMM 2048^3 {:.1f}, "
                       "triad {:.1f} GB/s\n",
               peaks.threads, peaks.fma_fp32_gflops, peaks.fma_bf16_gflops, peaks.gemm_fp32_gflops, peaks.bandwidth_gbs);
  }


  std::vector<std::unique_ptr<Cell>> cells;
  TrackingMemoryManager mm;
  for (const auto& v : variants)
    for (Direction d : dirs)
      for (int64_t n : lengths) {
        auto c = std::make_unique<Cell>();
        c->variant = v;
        c->params = params.at(v);
        c->shape = base;
        c->shape.length = n;
        c->dir = d;
        const bool model = d == Direction::train_step;
        c->name = fmt::format("{}/{}{}/B:{}/N:{}/D:{}/H:{}", v, direction_name(d), base.attend_only ? "/attend" : "",
                              base.batch, n, model ? kTrainStepModel.d_model : base.d_model,
                              model ? kTrainStepModel.heads : base.heads);
        c->predicted = predicted_peak_bytes(reg.get(v), c->params, c->shape, d);
        if (d == Direction::fwd_bwd && reg.get(v).cost && !base.attend_only)
          c->predicted_peak =
              reg.get(v).cost(CostArgs{base.batch, n, base.d_model, base.heads, &c->params, base.causal}).peak_bytes;
        const Capabilities& caps = reg.get(v).caps;
        const bool form_missing = d != Direction::decode && (base.causal ? !caps.causal : !caps.bidirectional);
        const bool not_attention = base.attend_only && !reg.get(v).attention_style;
        if ((d == Direction::decode && !caps.decode) || form_missing || not_attention) {
          c->status = "unsupported";
          c->error = d == Direction::decode
                         ? fmt::format("'{}' does not decode one token at a time (no 'decode' capability)", v)
                     : form_missing
                         ? fmt::format("'{}' has no {} form{}", v, base.causal ? "causal" : "bidirectional",
                                       base.causal ? "" : " (measure it with --causal)")
                         : fmt::format("'{}' is not attention-style (no attend(q, k, v)): drop --attend-only", v);
          fmt::print(stderr, "{:<60} unsupported: {}\n", c->name, c->error);
        } else if (c->predicted > static_cast<double>(limit)) {
          c->status = "skipped";
          c->error = fmt::format("predicted {:.3g} bytes exceed the memory limit of {} bytes (--memory-limit)",
                                 c->predicted, limit);
          fmt::print(stderr, "{:<60} skipped: {}\n", c->name, c->error);
        } else {
          Cell* cell = c.get();
          auto* b = benchmark::RegisterBenchmark(c->name.c_str(), [cell, &reg, &mm, seed](benchmark::State& st) {
            mm.current = &cell->peak_bytes;
            std::unique_ptr<BenchCell> work;
            try {
              const int64_t live_before = memory_stats().live_bytes;
              work = make_bench_cell(reg.get(cell->variant), cell->params, cell->shape, cell->dir, seed);
              cell->setup_bytes = memory_stats().live_bytes - live_before;
              // Mixer cells: the peak of the work alone (the model step and decoding keep the
              // peak above what was live before the cell was prepared).
              if (cell->dir == Direction::fwd || cell->dir == Direction::fwd_bwd) mm.rebase();
              cell->flops = work->flops();
              cell->bytes = work->bytes();
              cell->state_bytes = work->state_bytes();
              reset_peak_rss();
              for (auto _ : st) work->run();
              cell->peak_rss = std::max(cell->peak_rss, peak_rss_bytes_now());
            } catch (const std::exception& e) {
              cell->status = dynamic_cast<const std::bad_alloc*>(&e) ? "oom" : "error";
              cell->error = e.what();
              st.SkipWithError(e.what());
            }
          });
          b->UseRealTime()->Unit(benchmark::kMillisecond);
          if (d == Direction::decode) b->Iterations(kDecodeTokensPerRepetition);
        }
        cells.push_back(std::move(c));
      }

  benchmark::RegisterMemoryManager(&mm);
  Collector collector;
  benchmark::RunSpecifiedBenchmarks(&collector);
  benchmark::RegisterMemoryManager(nullptr);
  benchmark::Shutdown();

  // Gather per-repetition times and the aggregates per cell.
  std::map<std::string, const Cell*> by_name;
  for (const auto& c : cells) by_name[c->name] = c.get();
  Json gb = Json::array();
  std::map<std::string, std::vector<double>> times;
  std::map<std::string, double> medians;
  for (const auto& r : collector.runs_) {
    const std::string name = r.run_name.function_name;  // the registered cell name (run_name adds "/real_time")
    Json j = {{"name", r.benchmark_name()}, {"run_name", name},
              {"run_type", r.run_type == benchmark::BenchmarkReporter::Run::RT_Aggregate ? "aggregate" : "iteration"},
              {"repetitions", r.repetitions}, {"threads", r.threads}, {"iterations", r.iterations},
              {"real_time", r.GetAdjustedRealTime()}, {"cpu_time", r.GetAdjustedCPUTime()}, {"time_unit", "ms"}};
    if (r.run_type == benchmark::BenchmarkReporter::Run::RT_Aggregate) j["aggregate_name"] = r.aggregate_name;
    else j["repetition_index"] = r.repetition_index;
    if (r.error_occurred) j["error_occurred"] = true, j["error_message"] = r.error_message;
    if (auto c = by_name.find(name); c != by_name.end() && c->second->peak_bytes > 0)
      j["max_bytes_used"] = c->second->peak_bytes;
    if (!r.error_occurred) {
      if (r.run_type == benchmark::BenchmarkReporter::Run::RT_Iteration) times[name].push_back(r.GetAdjustedRealTime());
      else if (r.aggregate_name == "median") medians[name] = r.GetAdjustedRealTime();
    }
    gb.push_back(std::move(j));
  }

  Json entries = Json::array(), variants_json = Json::array();
  int failed = 0;
  for (const auto& v : variants) variants_json.push_back({{"name", v}, {"params", params.at(v)}});
  for (const auto& c : cells) {
    Json e = {{"variant", c->variant}, {"seq_len", c->shape.length}, {"direction", direction_name(c->dir)},
              {"batch", c->shape.batch}, {"predicted_bytes", c->predicted}};
    if (c->shape.attend_only) e["scope"] = "attend";
    // The declared peak of the mixer's forward+backward, on the same footing as peak_bytes (the
    // tracked peak above x, the upstream gradient and the parameters).
    if (c->dir == Direction::fwd_bwd && c->predicted_peak > 0) e["predicted_peak_bytes"] = c->predicted_peak;
    auto t = times.find(c->name);
    if (c->status == "ok" && (t == times.end() || t->second.empty())) c->status = "error", c->error = "no timing was recorded";
    if (c->status != "ok") {
      e["status"] = c->status;
      e["error"] = c->error;
      failed += c->status != "skipped" && c->status != "unsupported";  // declined, not failed
    } else {
      auto& ts = t->second;
      std::sort(ts.begin(), ts.end());
      const double med = medians.count(c->name) ? medians[c->name] : ts[ts.size() / 2];
      // A decode iteration is one token per sequence; the other directions do the whole sequence.
      const bool decode = c->dir == Direction::decode;
      const double tokens = static_cast<double>(c->shape.batch * (decode ? 1 : c->shape.length));
      e["status"] = "ok";
      e["median_ms"] = med;
      e["min_ms"] = ts.front();
      e["max_ms"] = ts.back();
      e["repetitions"] = ts.size();
      e["tokens_per_second"] = tokens / (med / 1e3);
      e["peak_bytes"] = c->peak_bytes;
      e["setup_bytes"] = c->setup_bytes;
      e["peak_rss_bytes"] = c->peak_rss;
      if (decode) e["state_bytes"] = c->state_bytes;
      e["flops"] = c->flops;
      e["gflops_per_second"] = c->flops / (med / 1e3) / 1e9;
      const double seconds = med / 1e3;
      if (c->bytes > 0) e["bytes"] = c->bytes;
      if (peaks.gemm_fp32_gflops > 0) e["fraction_of_gemm_peak"] = c->flops / seconds / 1e9 / peaks.gemm_fp32_gflops;
      if (peaks.fma_fp32_gflops > 0) {
        e["fraction_of_fma_peak"] = c->flops / seconds / 1e9 / peaks.fma_fp32_gflops;
        // The roofline: the time the FLOPs need at the FMA peak or the bytes at the triad
        // bandwidth, whichever is longer, over the time measured.
        if (c->bytes > 0)
          e["roofline_fraction"] =
              std::max(c->flops / (peaks.fma_fp32_gflops * 1e9), c->bytes / (peaks.bandwidth_gbs * 1e9)) / seconds;
      }
    }
    entries.push_back(std::move(e));
  }
  // A power-law exponent per variant and direction over the lengths measured.
  Json scaling = Json::array();
  for (const auto& v : variants)
    for (Direction d : dirs) {
      std::vector<double> xs, ys;
      for (const auto& e : entries)
        if (e["variant"] == v && e["direction"] == direction_name(d) && e["status"] == "ok")
          xs.push_back(e["seq_len"].get<double>()), ys.push_back(e["median_ms"].get<double>());
      if (xs.size() >= 2)
        scaling.push_back({{"variant", v}, {"direction", direction_name(d)}, {"exponent", fit_exponent(xs, ys)},
                           {"lengths", xs.size()}});
    }

  // Crossover against exact tiled attention (when it was measured): per variant and direction,
  // the smallest length from which the variant stays faster (null: not at the longest length).
  Json crossover = Json::array();
  if (std::count(variants.begin(), variants.end(), kCrossoverReference))
    for (const auto& v : variants)
      for (Direction d : dirs) {
        if (v == kCrossoverReference) continue;
        auto median_at = [&](const std::string& name, int64_t n) -> double {
          for (const auto& e : entries)
            if (e["variant"] == name && e["seq_len"] == n && e["direction"] == direction_name(d) && e["status"] == "ok")
              return e["median_ms"].get<double>();
          return NAN;
        };
        Json from = nullptr;
        for (int64_t n : lengths) {
          const double mine = median_at(v, n), ref = median_at(kCrossoverReference, n);
          if (std::isnan(mine) || std::isnan(ref)) continue;
          if (mine < ref) {
            if (from.is_null()) from = n;
          } else {
            from = nullptr;
          }
        }
        crossover.push_back({{"variant", v}, {"direction", direction_name(d)}, {"reference", kCrossoverReference},
                             {"faster_from_seq_len", from}});
      }

  // Approximation fidelity against exact attention, per variant, length and kind of input.
  Json fidelity = Json::array(), fidelity_source;
  if (want_fidelity) {
    std::unique_ptr<TrainedAttentionSource> trained;
    if (req.fidelity_inputs.count("trained")) {
      fmt::print("training the softmax model whose attention inputs the fidelity uses ({} steps, text, length 512)\n",
                 req.fidelity_steps);
      trained = std::make_unique<TrainedAttentionSource>("text", 512, req.fidelity_steps, seed);
      fidelity_source = trained->description();
    }
    for (int64_t n : lengths)
      for (const std::string kind : {"random", "trained"}) {
        if (!req.fidelity_inputs.count(kind)) continue;
        AttentionInputs in;
        Json where = {{"seq_len", n}, {"inputs", kind}};
        try {
          in = kind == "random"
                   ? random_attention_inputs(base.batch, base.heads, n, base.d_model / base.heads, seed)
                   : trained->capture(n, base.batch, 0);
        } catch (const std::exception& e) {
          where["error"] = e.what();
          fidelity.push_back(std::move(where));
          continue;
        }
        where["d_model"] = in.q.dim(1) * in.q.dim(3);
        where["heads"] = in.q.dim(1);
        for (const auto& v : variants) {
          Json f = where;
          f["variant"] = v;
          try {
            const double err = attention_fidelity(reg.get(v), params.at(v), in, base.causal, seed);
            if (std::isnan(err)) continue;  // not attention-style
            f["relative_error"] = err;
            const char* key = kind == "random" ? "relative_error_vs_softmax" : "relative_error_vs_softmax_trained";
            for (auto& e : entries)
              if (e["variant"] == v && e["seq_len"] == n && e["direction"] != "train_step") e[key] = err;
          } catch (const std::exception& e) {
            f["error"] = e.what();
          }
          fidelity.push_back(std::move(f));
        }
      }
  }

  const bool all_failed = failed == static_cast<int>(cells.size());
  Json doc = bench_run_header(variants_json, bench_model_json(base, req.matmul_precision), req.seed);
  if (all_failed) doc["status"] = "error", doc["error"] = "every cell failed";
  doc["metrics"] = {{"entries", entries}, {"scaling", scaling}};
  if (!crossover.empty()) doc["metrics"]["crossover"] = crossover;
  if (want_fidelity) doc["metrics"]["fidelity"] = fidelity;
  if (!fidelity_source.is_null()) doc["metrics"]["fidelity_source"] = fidelity_source;
  doc["benchmarks"] = gb;
  doc["context"] = context;
  return doc;
}

}  // namespace ab
