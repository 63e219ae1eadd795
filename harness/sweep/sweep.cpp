#include "sweep/sweep.hpp"

#include <algorithm>
#include <cstdint>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include <fmt/format.h>

#include "bench/bench.hpp"
#include "core/hash.hpp"
#include "core/json_input.hpp"
#include "core/numbers.hpp"
#include "mixer/plugin_hint.hpp"
#include "train/train.hpp"
#include "attnbench/plugin.hpp"
#include "attnbench/variant.hpp"

namespace ab {
namespace {

std::string value_text(const Json& v) { return v.is_string() ? v.get<std::string>() : v.dump(); }

// 2.0 is the integer 2: one cell, one id, and accepted where an integer is wanted.
Json normal_number(const Json& v) {
  if (v.is_number_float()) {
    const double d = v.get<double>();
    if (std::isfinite(d) && std::floor(d) == d && std::fabs(d) < 9e15) return Json(static_cast<int64_t>(d));
  }
  return v;
}

// Sorted keys, so that the id does not depend on the order keys were written in.
Json canonical(const Json& j) {
  if (j.is_object()) {
    std::vector<std::string> keys;
    for (const auto& [k, v] : j.items()) keys.push_back(k);
    std::sort(keys.begin(), keys.end());
    Json out = Json::object();
    for (const auto& k : keys) out[k] = canonical(j.at(k));
    return out;
  }
  return j;
}

// Limits beyond these are typos (a cell of more than 30 days, more than 1 PiB of memory); 0 = none.
constexpr int64_t kMaxCellSeconds = 30 * 24 * 3600, kMaxCellBytes = int64_t(1) << 50;
// Expanding and validating more cells than this takes longer than any sweep of them could run.
constexpr double kMaxCells = 100000;

// An integer setting of the spec in [lo, hi] (2.0 counts as 2).
int64_t integer_in(const Json& given, const std::string& what, int64_t lo, int64_t hi) {
  const Json v = normal_number(given);
  if (!v.is_number_integer())
    throw UsageError(fmt::format("sweep spec: {} must be an integer in [{}, {}], got {}", what, lo, hi,
                                 v.is_number_float() ? number_text(v.get<double>()) : v.dump()));
  const int64_t n = v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(INT64_MAX) ? INT64_MAX : v.get<int64_t>();
  if (n < lo || n > hi)
    throw UsageError(fmt::format("sweep spec: {} = {} is out of range [{}, {}]; nearest valid value: {}", what,
                                 v.dump(), lo, hi, n < lo ? lo : hi));
  return n;
}

void require_keys(const Json& obj, const std::vector<std::string>& allowed, const std::string& where) {
  if (!obj.is_object()) throw UsageError(fmt::format("sweep spec: {} must be an object", where));
  for (const auto& [k, v] : obj.items())
    if (std::find(allowed.begin(), allowed.end(), k) == allowed.end())
      throw UsageError(fmt::format("sweep spec: {}", unknown_name_message(fmt::format("key in {}", where), k, allowed)));
}

// Applies one assignment ("variant", "task", "seed", "threads" or "group.key") to a cell.
void assign(SweepCell& c, const std::string& key, const Json& given, const std::string& where) {
  // grid.case: each value a bundle of settings that go together (one task's own axes beside
  // another's, e.g. MQAR's (L, K) pairs and selective copying in one grid).
  if (key == "case") {
    if (!given.is_object() || given.empty() || given.contains("case"))
      throw UsageError(fmt::format("sweep spec: {}: a 'case' must be an object of settings, e.g. "
                                   "{{\"task\": \"mqar\", \"task.seq_len\": 64}}, got {}", where, given.dump()));
    for (const auto& [k, v] : given.items()) assign(c, k, v, where);
    return;
  }
  const Json v = normal_number(given);
  if (v.is_number_float() && !std::isfinite(v.get<double>()))
    throw UsageError(
        fmt::format("sweep spec: {}: '{}' = {} is not a finite number", where, key, number_text(v.get<double>())));
  if (key == "variant" || key == "task") {
    if (!v.is_string()) throw UsageError(fmt::format("sweep spec: {}: '{}' must be a string", where, key));
    (key == "variant" ? c.variant : c.task) = v.get<std::string>();
  } else if (key == "seed" || key == "threads") {
    if (!v.is_number_integer() || v.get<int64_t>() < 0)
      throw UsageError(fmt::format("sweep spec: {}: '{}' must be a non-negative integer, got {}", where, key, v.dump()));
    if (key == "seed") c.seed = v.get<uint64_t>();
    else if (v.get<int64_t>() > kMaxThreads)
      throw UsageError(fmt::format("sweep spec: {}: threads = {} is out of range [0, {}]; nearest valid value: {}",
                                   where, v.dump(), kMaxThreads, kMaxThreads));
    else c.threads = v.get<int>();
  } else {
    const auto dot = key.find('.');
    const std::vector<std::string> groups = {"variant", "task", "model", "train"};
    if (dot == std::string::npos || std::find(groups.begin(), groups.end(), key.substr(0, dot)) == groups.end())
      throw UsageError(fmt::format("sweep spec: {}: key '{}' is neither variant, task, seed, threads nor a dotted "
                                   "parameter such as model.layers (groups: variant, task, model, train)",
                                   where, key));
    if (v.is_object() || v.is_array() || v.is_null())
      throw UsageError(fmt::format("sweep spec: {}: '{}' must be a single value, got {}", where, key, v.dump()));
    c.set[key] = v;
  }
}

void apply_block(SweepCell& c, const Json& block, const std::string& where) {
  for (const auto& [k, v] : block.items()) {
    if (k == "set") {
      if (!v.is_object()) throw UsageError(fmt::format("sweep spec: {}.set must be an object", where));
      for (const auto& [sk, sv] : v.items()) assign(c, sk, sv, where + ".set");
    } else {
      assign(c, k, v, where);
    }
  }
}

// One grid value: an object (a "setting" of a bundle axis) applies all its assignments together,
// for lists a cartesian product cannot express (MAD's one-factor-at-a-time changes).
void assign_axis(SweepCell& c, const std::string& key, const Json& value, const std::string& where) {
  if (value.is_object()) apply_block(c, value, where);
  else assign(c, key, value, where);
}

bool matches(const SweepCell& c, const Json& rule) {
  for (const auto& [k, v] : rule.items()) {
    if (k == "variant" && (!v.is_string() || c.variant != v.get<std::string>())) return false;
    if (k == "task" && (!v.is_string() || c.task != v.get<std::string>())) return false;
    if ((k == "seed" || k == "threads") &&
        (!normal_number(v).is_number_integer() || normal_number(v) != (k == "seed" ? Json(c.seed) : Json(c.threads))))
      return false;
    if (k != "variant" && k != "task" && k != "seed" && k != "threads" &&
        (!c.set.contains(k) || value_text(c.set[k]) != value_text(normal_number(v))))
      return false;
  }
  return true;
}

}  // namespace

std::vector<std::string> SweepCell::command(const std::string& out) const {
  std::vector<std::string> a;
  if (kind == "train") {
    a = {"train", "--variant", variant, "--task", task, "--seed", std::to_string(seed), "--quiet"};
    for (const auto& [k, v] : set.items()) a.push_back("--set"), a.push_back(k + "=" + value_text(v));
  } else {
    a = {"bench", "--variant", variant, "--seed", std::to_string(seed)};
    auto list = [&](const char* key) {
      std::string s;
      for (const auto& x : bench.at(key)) s += (s.empty() ? "" : ",") + value_text(x);
      return s;
    };
    a.insert(a.end(), {"--seq-len", list("seq_len"), "--direction", list("direction")});
    for (const char* k : {"batch", "d_model", "heads", "repetitions", "min_time"})
      if (bench.contains(k)) {
        std::string flag = std::string("--") + k;
        std::replace(flag.begin(), flag.end(), '_', '-');
        a.push_back(flag), a.push_back(value_text(bench[k]));
      }
    if (bench.value("causal", false)) a.push_back("--causal");
    if (bench.value("attend_only", false)) a.push_back("--attend-only");
    for (const auto& [k, v] : set.items()) a.push_back("--set"), a.push_back(k + "=" + value_text(v));
  }
  if (threads > 0) a.push_back("--threads"), a.push_back(std::to_string(threads));
  for (const auto& p : plugins) a.push_back("--plugin"), a.push_back(p);  // a copied command works alone
  a.push_back("--out");
  a.push_back(out);
  return a;
}

namespace {
// plugin_dir: where the spec's `plugins` are relative to, and loaded from; null: not loaded.
SweepSpec parse_and_expand(const std::string& text, const std::string& origin, const std::filesystem::path* plugin_dir) {
  const Json spec = parse_json_input(text, fmt::format("sweep spec {}", origin));
  require_keys(spec,
               {"name", "description", "plugins", "base", "grid", "per_variant", "per_task", "exclude", "limits",
                "bench", "protocol", "reproductions", "protocol_notes"},
               "the spec");
  const std::pair<const char*, Json::value_t> kinds[] = {
      {"name", Json::value_t::string},   {"description", Json::value_t::string}, {"base", Json::value_t::object},
      {"grid", Json::value_t::object},   {"per_variant", Json::value_t::object}, {"per_task", Json::value_t::object},
      {"exclude", Json::value_t::array}, {"limits", Json::value_t::object},      {"bench", Json::value_t::object},
      {"protocol", Json::value_t::object}, {"plugins", Json::value_t::array},
      {"reproductions", Json::value_t::array}, {"protocol_notes", Json::value_t::string}};
  for (const auto& [key, kind] : kinds)
    if (spec.contains(key) && spec[key].type() != kind)
      throw UsageError(fmt::format("sweep spec {}: '{}' must be of type {}, got {}", origin, key, Json(kind).type_name(),
                                   spec[key].type_name()));
  // Plugins first: the cells below name their variants and tasks. An unknown name's hint looks
  // for plugins next to the spec too.
  if (plugin_dir) add_plugin_hint_dir(*plugin_dir);
  for (const auto& p : spec.value("plugins", Json::array())) {
    if (!p.is_string() || p.get<std::string>().empty())
      throw UsageError(fmt::format("sweep spec {}: 'plugins' must list paths to plugin modules, got {}", origin, p.dump()));
    if (plugin_dir) load_plugin((*plugin_dir / p.get<std::string>()).lexically_normal().string());
  }
  SweepSpec out;
  out.raw = spec;
  out.name = spec.value("name", "sweep");
  SweepCell base;
  base.kind = "train";
  if (spec.contains("base")) {
    require_keys(spec["base"], {"variant", "task", "seed", "threads", "set"}, "base");
    apply_block(base, spec["base"], "base");
  }
  if (spec.contains("limits")) {
    const Json& l = spec["limits"];
    require_keys(l, {"seconds", "memory_bytes"}, "limits");
    if (l.contains("seconds"))
      out.time_limit_seconds = static_cast<double>(integer_in(l["seconds"], "limits.seconds", 0, kMaxCellSeconds));
    if (l.contains("memory_bytes"))
      out.memory_limit_bytes = integer_in(l["memory_bytes"], "limits.memory_bytes", 0, kMaxCellBytes);
  }

  // The grid: the cartesian product of its lists, in the order written.
  std::vector<std::pair<std::string, std::vector<Json>>> axes;
  if (spec.contains("grid")) {
    if (!spec["grid"].is_object()) throw UsageError("sweep spec: grid must be an object of lists");
    double cells = 1;  // the product of the list lengths, before anything is expanded
    std::string sizes;
    for (const auto& [k, v] : spec["grid"].items()) {
      if (!v.is_array()) throw UsageError(fmt::format("sweep spec: grid.{} must be a list, got {}", k, v.dump()));
      if (v.empty()) throw UsageError(fmt::format("sweep spec: grid.{} is an empty list: the sweep would have no cells", k));
      // A bundle axis: a name of its own (no dot, not a cell key) and objects of assignments as values.
      const bool bundle = std::any_of(v.begin(), v.end(), [](const Json& x) { return x.is_object(); });
      const bool plain_name = k.find('.') == std::string::npos && k != "variant" && k != "task" && k != "seed" &&
                              k != "threads";
      if (bundle && (!plain_name || !std::all_of(v.begin(), v.end(), [](const Json& x) { return x.is_object() && !x.empty(); })))
        throw UsageError(fmt::format("sweep spec: grid.{}: a list of settings (objects of assignments) needs a name of "
                                     "its own, e.g. \"setting\", and only non-empty objects as values", k));
      cells *= static_cast<double>(v.size());
      sizes += fmt::format("{}{} {}", sizes.empty() ? "" : " x ", v.size(), k);
    }
    if (cells > kMaxCells)
      throw UsageError(fmt::format("sweep spec {}: the grid has {:.0f} cells ({}), more than the {:.0f} a sweep takes; "
                                   "split it into several specs or shorten its lists",
                                   origin, cells, sizes, kMaxCells));
    for (const auto& [k, v] : spec["grid"].items()) axes.emplace_back(k, std::vector<Json>(v.begin(), v.end()));
  }
  // The protocol: grid axes tuned per cell of the others (the report keeps the best of them, as
  // Zoology and MAD do) and the accuracy that counts as solved.
  if (spec.contains("protocol")) {
    const Json& p = spec["protocol"];
    require_keys(p, {"tuned", "solved"}, "protocol");
    std::vector<std::string> grid_keys;
    for (const auto& axis : axes) grid_keys.push_back(axis.first);
    const Json tuned = p.value("tuned", Json::array());
    if (!tuned.is_array()) throw UsageError(fmt::format("sweep spec {}: protocol.tuned must be a list of grid axes", origin));
    for (const auto& k : tuned)
      if (!k.is_string() || std::find(grid_keys.begin(), grid_keys.end(), k.get<std::string>()) == grid_keys.end())
        throw UsageError(fmt::format("sweep spec {}: protocol.tuned: {}", origin,
                                     unknown_name_message("grid axis", k.is_string() ? k.get<std::string>() : k.dump(),
                                                          grid_keys)));
    if (p.contains("solved") && (!p["solved"].is_number() || p["solved"].get<double>() < 0 || p["solved"].get<double>() > 1))
      throw UsageError(fmt::format("sweep spec {}: protocol.solved must be an accuracy in [0, 1], got {}", origin,
                                   p["solved"].dump()));
  }
  // Published results the report checks (scripts/abresults.py reads the expectations' grammar):
  // here only their shape, so that a typo fails before hours of runs.
  for (const auto& e : spec.value("reproductions", Json::array())) {
    if (!e.is_object()) throw UsageError(fmt::format("sweep spec {}: reproductions must list objects", origin));
    require_keys(e, {"id", "source", "table", "where", "published", "expect", "note"}, "a reproduction");
    if (!e.contains("id") || !e["id"].is_string() || !e.contains("source") || !e["source"].is_string())
      throw UsageError(fmt::format("sweep spec {}: a reproduction needs a string id and source, got {}", origin,
                                   e.dump()));
    if (e.contains("where") && !e["where"].is_object())
      throw UsageError(fmt::format("sweep spec {}: reproduction '{}': where must be an object of settings", origin,
                                   e["id"].get<std::string>()));
    const Json expect = e.value("expect", Json());
    bool strings = expect.is_array() && !expect.empty();
    for (const auto& x : expect) strings = strings && x.is_string();
    if (!strings)
      throw UsageError(fmt::format("sweep spec {}: reproduction '{}': expect must list comparisons, e.g. "
                                   "\"acc(softmax) > acc(mamba)\"",
                                   origin, e["id"].get<std::string>()));
  }
  const Json per_variant = spec.value("per_variant", Json::object()), per_task = spec.value("per_task", Json::object());
  const Json exclude = spec.value("exclude", Json::array());
  for (const auto& rule : exclude)
    if (!rule.is_object() || rule.empty())
      throw UsageError(fmt::format("sweep spec: exclude must be a list of non-empty objects, got {}", rule.dump()));
  std::vector<size_t> rule_hits(exclude.size(), 0);
  std::set<std::string> grid_variants, grid_tasks;  // of every cell, excluded or not
  // Threads are part of a cell's identity only where the grid varies them (ids of other sweeps stay).
  const bool threads_axis = std::any_of(axes.begin(), axes.end(), [](const auto& a) { return a.first == "threads"; });
  std::vector<size_t> idx(axes.size(), 0);
  std::set<std::string> seen, checked;  // cell ids; configurations whose task and model were built
  bool more = spec.contains("grid") || !spec.contains("bench");
  while (more) {
    SweepCell c = base;
    std::string where = axes.empty() ? "the base cell" : "grid cell (";
    for (size_t a = 0; a < axes.size(); ++a) where += fmt::format("{}{}={}", a ? ", " : "", axes[a].first, value_text(axes[a].second[idx[a]]));
    if (!axes.empty()) where += ")";
    // Overrides per variant and per task first; the grid's own values win over them.
    for (size_t a = 0; a < axes.size(); ++a) assign_axis(c, axes[a].first, axes[a].second[idx[a]], where);
    if (per_variant.contains(c.variant)) apply_block(c, per_variant[c.variant], "per_variant." + c.variant);
    if (per_task.contains(c.task)) apply_block(c, per_task[c.task], "per_task." + c.task);
    for (size_t a = 0; a < axes.size(); ++a) assign_axis(c, axes[a].first, axes[a].second[idx[a]], where);
    grid_variants.insert(c.variant), grid_tasks.insert(c.task);
    bool excluded = false;
    for (size_t r = 0; r < exclude.size(); ++r)
      if (matches(c, exclude[r])) excluded = true, ++rule_hits[r];
    if (!excluded) {
      if (c.variant.empty() || c.task.empty())
        throw UsageError(fmt::format("sweep spec: {} has no {} (set it in base or grid)", where,
                                     c.variant.empty() ? "variant" : "task"));
      std::vector<std::string> sets;
      for (const auto& [k, v] : c.set.items()) sets.push_back(k + "=" + value_text(v));
      try {
        const RunConfig cfg = resolve_run_config(c.variant, c.task, sets, c.seed, c.threads);
        // Seeds change the data, not the constraints: one build per configuration.
        const Json config = {cfg.variant, cfg.variant_params, cfg.task, cfg.task_params, cfg.model_params};
        if (checked.insert(config.dump()).second) check_run_config(cfg);
      } catch (const UsageError& e) {
        throw UsageError(fmt::format("sweep spec: {}: {}", where, e.what()));
      }
      Json key = {{"kind", c.kind}, {"variant", c.variant}, {"task", c.task}, {"seed", c.seed}, {"set", c.set}};
      if (threads_axis) key["threads"] = c.threads;
      key = canonical(key);
      c.id = fmt::format("{}.{}.s{}.{:012x}", c.variant, c.task, c.seed, fnv1a64(key.dump()) & 0xFFFFFFFFFFFFull);
      if (seen.insert(c.id).second) out.cells.push_back(std::move(c));
    }
    // Next combination (odometer over the axes).
    more = false;
    for (size_t a = axes.size(); a-- > 0;) {
      if (++idx[a] < axes[a].second.size()) {
        more = true;
        break;
      }
      idx[a] = 0;
    }
  }

  // Overrides and exclusions that touch no cell are typos, not no-ops.
  const auto names_a_cell = [](const std::set<std::string>& names, const std::string& name, const std::string& what) {
    if (!names.count(name))
      throw UsageError(fmt::format("sweep spec: {}", unknown_name_message(what, name, {names.begin(), names.end()})));
  };
  for (const auto& [k, v] : per_variant.items())
    names_a_cell(grid_variants, k, "variant in per_variant (none of the grid's)");
  for (const auto& [k, v] : per_task.items()) names_a_cell(grid_tasks, k, "task in per_task (none of the grid's)");
  for (size_t r = 0; r < exclude.size(); ++r) {
    const Json& rule = exclude[r];
    if (rule.contains("variant")) names_a_cell(grid_variants, value_text(rule["variant"]), "variant in exclude");
    if (rule.contains("task")) names_a_cell(grid_tasks, value_text(rule["task"]), "task in exclude");
    if (rule_hits[r] == 0)
      throw UsageError(fmt::format("sweep spec: exclude rule {} matches no cell of the grid", exclude[r].dump()));
  }

  if (spec.contains("bench")) {
    const Json& b = spec["bench"];
    require_keys(b, {"variants", "seq_len", "direction", "batch", "d_model", "heads", "repetitions", "min_time", "causal",
                     "attend_only", "threads", "seed"},
                 "bench");
    for (const char* k : {"causal", "attend_only"})
      if (b.contains(k) && !b[k].is_boolean())
        throw UsageError(fmt::format("sweep spec: bench.{} must be true or false (got {})", k, b[k].dump()));
    if (!b.contains("variants") || !b["variants"].is_array() || b["variants"].empty())
      throw UsageError("sweep spec: bench.variants must be a non-empty list of variant names");
    for (const char* k : {"seq_len", "direction"})
      if (!b.contains(k) || !b[k].is_array() || b[k].empty())
        throw UsageError(fmt::format("sweep spec: bench.{} must be a non-empty list", k));
    for (const auto& d : b["direction"]) parse_direction(value_text(d));
    // What the bench command would refuse, refused before any cell runs.
    for (const auto& n : b["seq_len"]) integer_in(n, "bench.seq_len entry", 1, kMaxBenchLength);
    const BenchShape shape;
    const std::pair<const char*, int64_t> sizes[] = {{"batch", kMaxBenchBatch},
                                                     {"d_model", kMaxBenchDModel},
                                                     {"heads", kMaxBenchHeads},
                                                     {"repetitions", kMaxBenchRepetitions}};
    std::map<std::string, int64_t> got = {{"d_model", shape.d_model}, {"heads", shape.heads}};
    for (const auto& [k, hi] : sizes)
      if (b.contains(k)) got[k] = integer_in(b[k], fmt::format("bench.{}", k), 1, hi);
    if (got["d_model"] % got["heads"])
      throw UsageError(fmt::format("sweep spec: bench.d_model = {} is not a multiple of bench.heads = {}",
                                   got["d_model"], got["heads"]));
    for (const auto& v : b["variants"]) {
      SweepCell c;
      c.kind = "bench";
      c.variant = value_text(v);
      VariantRegistry::instance().get(c.variant);
      c.threads = base.threads;
      for (const char* k : {"seed", "threads"})
        if (b.contains(k)) assign(c, k, b[k], "bench");
      c.bench = b;
      c.bench.erase("variants");
      const Json key = canonical({{"kind", c.kind}, {"variant", c.variant}, {"seed", c.seed}, {"bench", c.bench}});
      c.id = fmt::format("bench.{}.{:012x}", c.variant, fnv1a64(key.dump()) & 0xFFFFFFFFFFFFull);
      out.cells.push_back(std::move(c));
    }
  }
  if (out.cells.empty()) throw UsageError("sweep spec: every cell is excluded: the sweep has nothing to run");
  std::vector<std::string> plugins;
  for (const auto& p : loaded_plugins()) plugins.push_back(p.path);
  for (auto& c : out.cells) c.plugins = plugins;
  return out;
}

}  // namespace

namespace {
SweepSpec parse_or_usage_error(const std::string& text, const std::string& origin, const std::filesystem::path* plugin_dir) {
  try {
    return parse_and_expand(text, origin, plugin_dir);
  } catch (const Json::exception& e) {  // a value of the wrong type somewhere deeper
    throw UsageError(fmt::format("sweep spec {}: a value has the wrong type: {}", origin, e.what()));
  }
}
}  // namespace

SweepSpec parse_sweep_spec(const std::string& text, const std::string& origin) {
  return parse_or_usage_error(text, origin, nullptr);
}

SweepSpec load_sweep_spec(const std::string& path) {
  std::ifstream f(path);
  if (!f) throw UsageError(fmt::format("cannot read sweep spec '{}'", path));
  std::stringstream ss;
  ss << f.rdbuf();
  const std::filesystem::path dir = std::filesystem::path(path).parent_path();
  const std::filesystem::path plugin_dir = dir.empty() ? std::filesystem::path(".") : dir;
  return parse_or_usage_error(ss.str(), path, &plugin_dir);
}

std::pair<int, int> parse_shard(const std::string& text) {
  int i = -1, n = -1;
  char slash = 0;
  std::istringstream in(text);
  if (!(in >> i >> slash >> n) || slash != '/' || !in.eof() || n < 1 || i < 0 || i >= n)
    throw UsageError(fmt::format("--shard '{}' must be i/n with 0 <= i < n, e.g. 0/4", text));
  return {i, n};
}

}  // namespace ab
