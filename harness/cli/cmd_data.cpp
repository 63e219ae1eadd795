// `data`: generated examples as JSON lines (split, index, input, [input2], target, [text]).
#include <fstream>
#include <iostream>

#include <fmt/format.h>

#include "args.hpp"
#include "io/png.hpp"
#include "attnbench/task.hpp"
#include "core/utf8.hpp"
#include "train/train.hpp"
#include "commands.hpp"

namespace ab::cli {

int cmd_data(int argc, char** argv, int first) {
  const auto flags = with_common({
      {"task", "NAME", "task (attnbench list tasks)"},
      {"set", "task.KEY=VALUE", "override a task parameter", true},
      {"seed", "S", "seed (default 0)"},
      {"split", "NAME", "train, valid or test (default train)"},
      {"count", "K", "number of examples (default 10)"},
      {"out", "FILE", "JSONL output file ('-' = standard output)"},
      {"png", "FILE", "also draw the examples as a PNG grid with their labels (image tasks: image, pathfinder)"},
  });
  Args args(argc, argv, first, "data", flags);
  if (args.print_help("data --task T [--set task.k=v] --count K --out FILE [--png FILE]",
                      "Dump generated examples (and draw those of image tasks).")) return 0;
  const std::string task_name = args.require("task"), out_path = args.require("out");
  apply_common(args);
  const TaskSpec& spec = TaskRegistry::instance().get(task_name);
  const Json given = group_sets(args, "task", "data");
  const Json params = resolve_params(spec.params, given, fmt::format("task '{}'", task_name));
  const std::vector<std::string> splits = {"train", "valid", "test"};
  const std::string split_text = args.get("split", "train");
  Split split;
  if (split_text == "train") split = Split::train;
  else if (split_text == "valid") split = Split::valid;
  else if (split_text == "test") split = Split::test;
  else throw UsageError("data: " + unknown_name_message("split", split_text, splits));
  auto task = spec.make(params, static_cast<uint64_t>(args.get_int("seed", 0, 0, INT64_MAX)));
  const int64_t available = task->split_size(split);
  const int64_t count = args.get_int("count", 10, 1, INT64_MAX);
  if (count > available)
    throw UsageError(fmt::format("data: --count {} exceeds the {} split's {} examples; nearest valid value: {}", count,
                                 split_text, available, available));
  if (args.has("png")) {
    check_writable(args.get("png", ""));
    if (!write_preview_png(*task, split, count, args.get("png", "")))
      throw UsageError(fmt::format("data: --png draws image tasks only, and '{}' has no images; image tasks: image, "
                                   "pathfinder",
                                   task_name));
  }
  std::ofstream file;
  if (out_path != "-") {
    file.open(out_path);
    if (!file) throw std::runtime_error(fmt::format("cannot write '{}'", out_path));
  }
  std::ostream& out = out_path == "-" ? std::cout : file;
  for (int64_t i = 0; i < count; ++i) {
    const Example ex = task->example(split, i);
    Json line = {{"split", split_text}, {"index", i}, {"input", ex.input}};
    if (!ex.input2.empty()) line["input2"] = ex.input2;
    line["target"] = ex.target.size() == 1 && task->kind() != TaskKind::per_position ? Json(ex.target[0]) : Json(ex.target);
    if (!ex.text.empty()) line["text"] = valid_utf8(ex.text);  // a file's bytes (source=lra_files)
    out << line.dump() << '\n';
  }
  if (!out) throw std::runtime_error(fmt::format("writing '{}' failed", out_path));
  if (out_path != "-") fmt::print(stderr, "wrote {} {} examples of '{}' to {}\n", count, split_text, task_name, out_path);
  if (args.has("png")) fmt::print(stderr, "drew them in {}\n", args.get("png", ""));
  return 0;
}

}  // namespace ab::cli
