// The shared parts of task generators (attnbench/task_helpers.hpp).
#include "attnbench/task_helpers.hpp"

#include <bit>
#include <stdexcept>
#include <unordered_set>
#include <utility>

#include <fmt/format.h>

namespace ab {

int split_index(Split s) {
  switch (s) {
    case Split::train: return 0;
    case Split::valid: return 1;
    case Split::test: return 2;
  }
  throw std::out_of_range("unknown split");
}

ParamSpec null_int_param(std::string name, std::string doc, double lo, double hi) {
  return ParamSpec{std::move(name), ParamType::integer, Json(), std::move(doc), lo, hi, {}};
}

ParamSpec null_bool_param(std::string name, std::string doc) {
  return ParamSpec{std::move(name), ParamType::boolean, Json(), std::move(doc), -1e300, 1e300, {}};
}

SplitTask::SplitTask(std::string name, const Json& params, uint64_t seed, const char* large_preset)
    : name_(std::move(name)), params_(params), seed_(seed),
      large_(large_preset && params.contains("preset") && params.at("preset") == large_preset) {}

Json SplitTask::preset_default(const char* key, Json small, Json large) {
  if (params_.at(key).is_null()) params_[key] = large_ ? std::move(large) : std::move(small);
  return params_.at(key);
}

int SplitTask::checked_split(Split s, int64_t index) const {
  const int k = split_index(s);
  if (index < 0 || index >= sizes_[k])
    throw std::out_of_range(
        fmt::format("task '{}': {} index {} is out of range [0, {})", name_, split_name(s), index, sizes_[k]));
  return k;
}

int64_t SplitTask::flat_index(int k, int64_t index) const {
  for (int j = 0; j < k; ++j) index += sizes_[j];
  return index;
}

RngStream SplitTask::split_stream(uint64_t stream, int k, uint64_t sub) const {
  return RngStream(seed_, Purpose::data, stream, static_cast<uint64_t>(k), sub);
}

namespace {
uint64_t hash_sequence(const std::vector<int32_t>& v) {
  uint64_t h = 0x9E3779B97F4A7C15ull ^ v.size();
  for (int32_t t : v) {
    h ^= static_cast<uint64_t>(static_cast<uint32_t>(t)) + 0x632BE59BD9B4E019ull;
    h = std::rotl(h * 0xBF58476D1CE4E5B9ull, 31) * 0x94D049BB133111EBull;
  }
  return h ^ (h >> 29);
}
}  // namespace

void SplitTask::dedupe_splits(const std::function<std::vector<int32_t>(int k, uint64_t stream)>& input,
                              std::array<std::vector<uint64_t>, 3>& kept, std::array<int64_t, 3>& draws) const {
  constexpr Split kSplits[3] = {Split::train, Split::valid, Split::test};
  for (int k = 0; k < 3; ++k) {
    std::unordered_set<uint64_t> seen;
    seen.reserve(static_cast<size_t>(sizes_[k]) * 2);
    uint64_t stream = 0;
    const uint64_t budget = static_cast<uint64_t>(sizes_[k]) * 20 + 100000;
    while (static_cast<int64_t>(kept[k].size()) < sizes_[k]) {
      if (stream >= budget)
        throw UsageError(fmt::format(
            "task '{}': only {} distinct {} sequences after {} draws, {} requested; lower the split size, raise "
            "vocab_size or seq_len, or set dedupe=false",
            name_, kept[k].size(), split_name(kSplits[k]), stream, sizes_[k]));
      if (seen.insert(hash_sequence(input(k, stream))).second) kept[k].push_back(stream);
      ++stream;
    }
    draws[k] = static_cast<int64_t>(stream);
  }
}

}  // namespace ab
