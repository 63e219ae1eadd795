// Each task's parameter handling and generation: the first byte picks the task, the remaining
// lines are key=value parameters (as `--set task.key=value` gives them). Split sizes are capped
// and lengths above 2048 skipped so that every input runs in milliseconds.
#include <sstream>

#include "attnbench/task.hpp"
#include "fuzz_common.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const auto names = ab::TaskRegistry::instance().names();
  const ab::TaskSpec& spec = ab::TaskRegistry::instance().get(names[data[0] % names.size()]);
  ab::Json given = ab::Json::object();
  std::istringstream lines(fuzz::text(data + 1, size - 1));
  for (std::string line; std::getline(lines, line);) {
    const auto eq = line.find('=');
    if (eq != std::string::npos) given[line.substr(0, eq)] = line.substr(eq + 1);
  }
  for (const char* k : {"train_size", "valid_size", "test_size"}) given[k] = "4";
  if (given.contains("source")) given.erase("source");  // files are the loaders' tests' business
  fuzz::expect_clean([&] {
    const ab::Json params = ab::resolve_params(spec.params, given, "fuzz");
    for (const auto& [k, v] : params.items())
      if (v.is_number() && v.get<double>() > 2048 && k != "seed") return;
    auto task = spec.make(params, 1);
    if (task->seq_len() > 2048) return;
    for (ab::Split s : {ab::Split::train, ab::Split::valid, ab::Split::test})
      for (int64_t i = 0; i < std::min<int64_t>(task->split_size(s), 4); ++i) {
        const ab::Example ex = task->example(s, i);
        for (int32_t t : ex.input)
          if (t < 0 || t >= task->vocab_size()) {
            std::fprintf(stderr, "finding: token %d outside the vocabulary [0, %lld)\n", t,
                         static_cast<long long>(task->vocab_size()));
            std::abort();
          }
      }
  });
  return 0;
}
