// `bench`: time and memory per variant x length x direction. Google Benchmark is the timing engine
// (repetitions, median, warm-up, random interleaving); the tracking allocator is its memory
// manager. Writes one run file whose top-level `benchmarks` array is in Google Benchmark's JSON
// shape, so its compare.py reads it.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <set>

#include <fmt/format.h>

#include "args.hpp"
#include "bench/bench.hpp"
#include "eval/fidelity.hpp"
#include "train/train.hpp"
#include "commands.hpp"

namespace ab::cli {
namespace {

std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= s.size()) {
    const size_t comma = s.find(',', start);
    const std::string item = s.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    if (!item.empty()) out.push_back(item);
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return out;
}

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
  double flops = 0;
  int64_t peak_rss = 0;
  int64_t peak_bytes = 0;  // tracked, from the memory manager's iteration
  int64_t setup_bytes = 0;  // tracked bytes the prepared cell holds (inputs, parameters, model, context)
  int64_t state_bytes = 0;  // decode cells
};

}  // namespace

int cmd_bench(int argc, char** argv, int first) {
  const auto flags = with_common({
      {"variant", "V[,V...]", "variants to measure (attnbench list variants)"},
      {"seq-len", "N[,N...]", "sequence lengths (default 1024,2048,4096)"},
      {"direction", "D[,D...]",
       "fwd, fwd_bwd (mixer alone), train_step (LRA-small model step), decode (per token after a context of "
       "--seq-len, with the carried state); default fwd,fwd_bwd"},
      {"batch", "B", "batch size (default 1)"},
      {"d-model", "D", "model width of the mixer cells (default 512)"},
      {"heads", "H", "heads of the mixer cells (default 8)"},
      {"causal", "", "measure the causal form"},
      {"attend-only", "", "fwd / fwd_bwd of attention-style variants: time attend(q, k, v) alone on random q, k, v "
                          "[B, H, N, d], without the q/k/v/output projections (FLOPs likewise); other variants "
                          "are recorded as unsupported"},
      {"set", "variant.KEY=VALUE", "a variant parameter (only with a single variant)", true},
      {"repetitions", "R", "timed repetitions per cell; the median is reported (default 5)"},
      {"min-time", "SECONDS", "minimum time per repetition (default 0.1)"},
      {"memory-limit", "BYTES", "skip cells predicted to need more (default: half the physical memory)"},
      {"no-calibration", "", "skip the oneDNN GEMM calibration"},
      {"fidelity", "", "also the relative error of each attention-style variant's output against exact softmax "
                       "attention on the same q, k, v, per length"},
      {"fidelity-inputs", "KIND",
       "random (q, k, v ~ N(0, 1) at the mixer shape; default), trained (q, k, v of the first attention layer of a "
       "softmax model trained for --fidelity-steps steps on the text task at length 512, captured at each length; "
       "d_model 64, 2 heads) or both; implies --fidelity"},
      {"fidelity-steps", "S", "training steps (batch 16) of the model behind --fidelity-inputs trained (default 300); "
                              "longer training gives more peaked attention"},
      {"matmul-precision", "P", "fp32 (default) or bf16: inputs of the oneDNN GEMMs rounded to bfloat16, fp32 "
                                "accumulation; hand-written kernels stay fp32"},
      {"seed", "S", "seed of the inputs and parameters (default 0)"},
      {"out", "FILE", "where to write the run file (JSON)"},
  });
  Args args(argc, argv, first, "bench", flags);
  if (args.has("help")) {
    fmt::print("{}", usage_text("bench --variant V[,V...] --seq-len N[,N...] [--direction fwd,fwd_bwd] --out FILE",
                                "Time and memory of each variant per length and direction (Google Benchmark).", flags));
    return 0;
  }
  const std::string out = args.require("out");
  const auto variants = split_list(args.require("variant"));
  apply_common(args);
  const auto& reg = VariantRegistry::instance();
  for (const auto& v : variants) reg.get(v);  // unknown names fail here, with the nearest
  if (variants.empty()) throw UsageError("bench: --variant names no variant");
  if (args.has("set") && variants.size() != 1)
    throw UsageError("bench: --set applies to a single variant; run one bench per parameter setting");
  std::vector<int64_t> lengths;
  for (const auto& s : split_list(args.get("seq-len", "1024,2048,4096"))) {
    char* end = nullptr;
    const long long n = std::strtoll(s.c_str(), &end, 10);
    if (*end != '\0' || n < 1 || n > (1 << 24))
      throw UsageError(fmt::format("bench: --seq-len entry '{}' must be an integer in [1, 16777216]", s));
    lengths.push_back(n);
  }
  std::vector<Direction> dirs;
  for (const auto& d : split_list(args.get("direction", "fwd,fwd_bwd"))) dirs.push_back(parse_direction(d));
  BenchShape base;
  base.batch = args.get_int("batch", 1, 1, 1 << 20);
  base.d_model = args.get_int("d-model", 512, 1, 1 << 16);
  base.heads = args.get_int("heads", 8, 1, 1 << 12);
  base.causal = args.has("causal");
  base.attend_only = args.has("attend-only");
  for (Direction d : dirs)
    if (base.attend_only && d != Direction::fwd && d != Direction::fwd_bwd)
      throw UsageError(fmt::format("bench: --attend-only measures the directions fwd and fwd_bwd, not '{}'; drop "
                                   "--attend-only or use --direction fwd,fwd_bwd",
                                   direction_name(d)));
  if (base.d_model % base.heads)
    throw UsageError(fmt::format("bench: --d-model {} is not a multiple of --heads {}", base.d_model, base.heads));
  const int64_t reps = args.get_int("repetitions", 5, 1, 1000);
  const std::string min_time = args.get("min-time", "0.1");
  const int64_t limit = args.get_int("memory-limit", physical_memory_bytes() / 2, 1, INT64_MAX);
  check_writable(out);
  const uint64_t seed = static_cast<uint64_t>(args.get_int("seed", 0, 0, INT64_MAX));
  const std::string precision = args.get("matmul-precision", "fp32");
  set_matmul_precision(precision);
  const bool want_fidelity = args.has("fidelity") || args.has("fidelity-inputs");
  const int64_t fidelity_steps = args.get_int("fidelity-steps", 300, 1, 1000000);
  std::set<std::string> fidelity_kinds;
  if (const std::string k = args.get("fidelity-inputs", "random"); k == "both")
    fidelity_kinds = {"random", "trained"};
  else if (k == "random" || k == "trained")
    fidelity_kinds = {k};
  else
    throw UsageError(unknown_name_message("--fidelity-inputs", k, {"random", "trained", "both"}));
  if (args.has("fidelity-steps") && !fidelity_kinds.count("trained"))
    throw UsageError("bench: --fidelity-steps trains the model behind --fidelity-inputs trained (or both); add that "
                     "option or drop --fidelity-steps");

  // Resolve each variant's parameters once.
  std::map<std::string, Json> params;
  for (const auto& v : variants) {
    Json given = Json::object();
    for (const auto& s : args.all("set")) {
      const auto eq = s.find('=');
      if (s.rfind("variant.", 0) != 0 || eq == std::string::npos || eq <= 8)
        throw UsageError(fmt::format("bench: malformed --set '{}': expected variant.key=value", s));
      given[s.substr(8, eq - 8)] = s.substr(eq + 1);
    }
    params[v] = resolve_params(reg.get(v).params, given, fmt::format("variant '{}'", v));
  }

  // Google Benchmark takes its settings as flags.
  std::vector<std::string> gb_args = {"attnbench", fmt::format("--benchmark_repetitions={}", reps),
                                      "--benchmark_enable_random_interleaving=true",
                                      fmt::format("--benchmark_min_time={}", min_time),
                                      "--benchmark_min_warmup_time=0.05"};
  std::vector<char*> gb_argv;
  for (auto& s : gb_args) gb_argv.push_back(s.data());
  int gb_argc = static_cast<int>(gb_argv.size());
  benchmark::Initialize(&gb_argc, gb_argv.data());

  Json context = run_context(std::vector<std::string>(argv, argv + argc));
  // Other threads already wanting half the cores (and at least two: one passing thread is the
  // usual background of a quiet machine): worth a word, since the figures will show it.
  if (const int64_t others = context.value("runnable_at_start", int64_t{0}), cpus = context["logical_cpus"].get<int64_t>();
      others >= std::max<int64_t>(cpus / 2, 2)) {
    fmt::print(stderr, "note: {} other runnable threads on {} logical CPUs as the bench starts; timings taken beside "
                       "other work are slower and noisier (recorded as context.runnable_at_start and load_avg)\n",
               others, cpus);
  }
  if (!args.has("no-calibration")) {
    const double g = calibrate_gemm_gflops();
    context["gemm_gflops_fp32"] = g;
    fmt::print(stderr, "oneDNN fp32 GEMM 2048^3: {:.1f} GFLOP/s\n", g);
  }
  const double gemm = context.value("gemm_gflops_fp32", 0.0);

  std::map<std::string, bool> attention_style;
  if (base.attend_only)
    for (const auto& v : variants) attention_style[v] = is_attention_style(reg.get(v), params[v], base);

  std::vector<std::unique_ptr<Cell>> cells;
  TrackingMemoryManager mm;
  for (const auto& v : variants)
    for (Direction d : dirs)
      for (int64_t n : lengths) {
        auto c = std::make_unique<Cell>();
        c->variant = v;
        c->params = params[v];
        c->shape = base;
        c->shape.length = n;
        c->dir = d;
        const bool model = d == Direction::train_step;
        c->name = fmt::format("{}/{}{}/B:{}/N:{}/D:{}/H:{}", v, direction_name(d), base.attend_only ? "/attend" : "",
                              base.batch, n, model ? 64 : base.d_model, model ? 2 : base.heads);
        c->predicted = predicted_peak_bytes(reg.get(v), c->params, c->shape, d);
        if (d == Direction::fwd_bwd && reg.get(v).cost && !base.attend_only)
          c->predicted_peak =
              reg.get(v).cost(CostArgs{base.batch, n, base.d_model, base.heads, &c->params, base.causal}).peak_bytes;
        const Capabilities& caps = reg.get(v).caps;
        const bool form_missing = d != Direction::decode && (base.causal ? !caps.causal : !caps.bidirectional);
        const bool not_attention = base.attend_only && !attention_style.at(v);
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
  for (const auto& v : variants) variants_json.push_back({{"name", v}, {"params", params[v]}});
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
      if (gemm > 0) e["fraction_of_gemm_peak"] = c->flops / (med / 1e3) / 1e9 / gemm;
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

  // Approximation fidelity against exact attention, per variant, length and kind of input.
  Json fidelity = Json::array(), fidelity_source;
  if (want_fidelity) {
    std::unique_ptr<TrainedAttentionSource> trained;
    if (fidelity_kinds.count("trained")) {
      fmt::print("training the softmax model whose attention inputs the fidelity uses ({} steps, text, length 512)\n",
                 fidelity_steps);
      trained = std::make_unique<TrainedAttentionSource>("text", 512, fidelity_steps, seed);
      fidelity_source = trained->description();
    }
    for (int64_t n : lengths)
      for (const std::string kind : {"random", "trained"}) {
        if (!fidelity_kinds.count(kind)) continue;
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
            const double err = attention_fidelity(reg.get(v), params[v], in, base.causal, seed);
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

  Json doc;
  doc["schema"] = "attnbench.run/1";
  doc["kind"] = "bench";
  const bool all_failed = failed == static_cast<int>(cells.size());
  doc["status"] = all_failed ? "error" : "ok";
  if (all_failed) doc["error"] = "every cell failed";
  doc["variants"] = variants_json;
  doc["task"] = nullptr;
  doc["model"] = {{"batch", base.batch}, {"d_model", base.d_model}, {"heads", base.heads}, {"causal", base.causal},
                  {"scope", base.attend_only ? "attend" : "mixer"}, {"matmul_precision", precision},
                  {"train_step_model", {{"layers", 2}, {"d_model", 64}, {"heads", 2}, {"mlp_dim", 128}}}};
  doc["train"] = nullptr;
  doc["seed"] = seed;
  doc["metrics"] = {{"entries", entries}, {"scaling", scaling}};
  if (want_fidelity) doc["metrics"]["fidelity"] = fidelity;
  if (!fidelity_source.is_null()) doc["metrics"]["fidelity_source"] = fidelity_source;
  doc["benchmarks"] = gb;
  doc["context"] = context;
  write_json_atomic(out, doc);
  const auto declined = std::count_if(cells.begin(), cells.end(),
                                      [](const auto& c) { return c->status == "skipped" || c->status == "unsupported"; });
  fmt::print("{} cells ({} failed, {} skipped or unsupported); run file: {}\n", cells.size(), failed, declined, out);
  return failed ? 1 : 0;
}

}  // namespace ab::cli
