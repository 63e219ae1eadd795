// `bench`: parses the flags into a BenchRequest, runs it (run_bench, bench/run_bench.cpp) and
// writes the run file.
#include <fmt/format.h>

#include "args.hpp"
#include "bench/bench.hpp"
#include "core/numbers.hpp"
#include "commands.hpp"
#include "results/run_file.hpp"

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
  if (args.print_help("bench --variant V[,V...] --seq-len N[,N...] [--direction fwd,fwd_bwd] --out FILE",
                      "Time and memory of each variant per length and direction (Google Benchmark).")) return 0;
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
    const auto n = parse_integer(s);
    if (!n || *n < 1 || *n > kMaxBenchLength)
      throw UsageError(fmt::format("bench: --seq-len entry '{}' must be an integer in [1, {}]", s, kMaxBenchLength));
    lengths.push_back(*n);
  }
  std::vector<Direction> dirs;
  for (const auto& d : split_list(args.get("direction", "fwd,fwd_bwd"))) dirs.push_back(parse_direction(d));
  BenchShape base;
  base.batch = args.get_int("batch", 1, 1, kMaxBenchBatch);
  base.d_model = args.get_int("d-model", 512, 1, kMaxBenchDModel);
  base.heads = args.get_int("heads", 8, 1, kMaxBenchHeads);
  base.causal = args.has("causal");
  base.attend_only = args.has("attend-only");
  for (Direction d : dirs)
    if (base.attend_only && d != Direction::fwd && d != Direction::fwd_bwd)
      throw UsageError(fmt::format("bench: --attend-only measures the directions fwd and fwd_bwd, not '{}'; drop "
                                   "--attend-only or use --direction fwd,fwd_bwd",
                                   direction_name(d)));
  if (base.d_model % base.heads)
    throw UsageError(fmt::format("bench: --d-model {} is not a multiple of --heads {}", base.d_model, base.heads));
  BenchRequest req;
  req.variants = variants;
  req.lengths = lengths;
  req.directions = dirs;
  req.shape = base;
  req.repetitions = args.get_int("repetitions", 5, 1, kMaxBenchRepetitions);
  req.min_time = args.get("min-time", "0.1");
  req.memory_limit = args.get_int("memory-limit", physical_memory_bytes() / 2, 1, INT64_MAX);
  check_writable(out);
  req.seed = static_cast<uint64_t>(args.get_int("seed", 0, 0, INT64_MAX));
  req.matmul_precision = args.get("matmul-precision", "fp32");
  set_matmul_precision(req.matmul_precision);  // refuses an unknown name before anything runs
  req.calibrate = !args.has("no-calibration");
  req.fidelity_steps = args.get_int("fidelity-steps", 300, 1, 1000000);
  if (args.has("fidelity") || args.has("fidelity-inputs")) {
    if (const std::string k = args.get("fidelity-inputs", "random"); k == "both")
      req.fidelity_inputs = {"random", "trained"};
    else if (k == "random" || k == "trained")
      req.fidelity_inputs = {k};
    else
      throw UsageError(unknown_name_message("--fidelity-inputs", k, {"random", "trained", "both"}));
  }
  if (args.has("fidelity-steps") && !req.fidelity_inputs.count("trained"))
    throw UsageError("bench: --fidelity-steps trains the model behind --fidelity-inputs trained (or both); add that "
                     "option or drop --fidelity-steps");

  // Resolve each variant's parameters once.
  for (const auto& v : variants) {
    const Json given = group_sets(args, "variant", "bench");
    req.params[v] = resolve_params(reg.get(v).params, given, fmt::format("variant '{}'", v));
  }
  req.command_line.assign(argv, argv + argc);

  const Json doc = run_bench(req);
  write_json_atomic(out, doc);
  int64_t failed = 0, declined = 0;
  for (const auto& e : doc["metrics"]["entries"]) {
    const std::string st = e["status"];
    declined += st == "skipped" || st == "unsupported";
    failed += st != "ok" && st != "skipped" && st != "unsupported";
  }
  fmt::print("{} cells ({} failed, {} skipped or unsupported); run file: {}\n", doc["metrics"]["entries"].size(), failed,
             declined, out);
  return failed ? 1 : 0;
}

}  // namespace ab::cli
