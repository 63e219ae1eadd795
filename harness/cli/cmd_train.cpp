// `train`: one variant on one task; writes the run file even when the run fails.
#include <cstdio>

#include <fmt/format.h>

#include "args.hpp"
#include "train/train.hpp"
#include "commands.hpp"

namespace ab::cli {

int cmd_train(int argc, char** argv, int first) {
  const auto flags = with_common({
      {"variant", "NAME", "token mixer (attnbench list variants)"},
      {"task", "NAME", "task (attnbench list tasks)"},
      {"set", "GROUP.KEY=VALUE", "override a parameter: variant.*, task.*, model.*, train.* (attnbench describe NAME)", true},
      {"seed", "S", "seed for data, initialisation, dropout and batching (default 0)"},
      {"out", "FILE", "where to write the run file (JSON)"},
      {"quiet", "", "no progress lines"},
  });
  Args args(argc, argv, first, "train", flags);
  if (args.print_help("train --variant V --task T [--set k=v ...] [--seed S] --out FILE",
                      "Train, select the best validation checkpoint, test it, and write one run file.")) return 0;
  const std::string variant = args.require("variant"), task = args.require("task"), out = args.require("out");
  apply_common(args);
  const RunConfig cfg = resolve_run_config(variant, task, args.all("set"),
                                           static_cast<uint64_t>(args.get_int("seed", 0, 0, INT64_MAX)),
                                           static_cast<int>(args.get_int("threads", 0, 0, kMaxThreads)));
  check_writable(out);
  const Json context = run_context(std::vector<std::string>(argv, argv + argc));
  // The run so far goes to OUT.partial as it goes (OUT keeps any previous result until the run
  // ends): a run killed by a time limit (a sweep's) leaves its resolved task, its curve and status
  // "running" for the failure record.
  const std::string partial_path = out + ".partial";
  Json doc = train_run(cfg, !args.has("quiet"), nullptr, [&](const Json& partial) {
    Json p = partial;
    p["context"] = context;
    write_json_atomic(partial_path, p);
  });
  doc["context"] = context;
  write_json_atomic(out, doc);
  std::remove(partial_path.c_str());
  const Json& m = doc["metrics"];
  if (doc["status"] == "ok") {
    fmt::print("{} on {}: test accuracy {:.4f} (best valid {:.4f} at step {}), {:.1f} s training, {:.0f} tokens/s, "
               "peak {:.1f} MiB tracked\nrun file: {}\n",
               variant, task, m["test_accuracy"].get<double>(), m["best_valid_accuracy"].get<double>(),
               m["best_step"].get<int64_t>(), m["train_seconds"].get<double>(), m["tokens_per_second"].get<double>(),
               m["peak_bytes"].get<double>() / 1048576.0, out);
    return 0;
  }
  fmt::print(stderr, "attnbench: run {}: {}\nrun file: {}\n", doc["status"].get<std::string>(),
             doc["error"].get<std::string>(), out);
  return doc.value("error_kind", "") == "usage" ? 2 : 1;
}

}  // namespace ab::cli
