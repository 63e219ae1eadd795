// `list` and `describe`: what is registered, with capabilities, defaults and cost models.
#include <algorithm>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "args.hpp"
#include "model/model.hpp"
#include "attnbench/task.hpp"
#include "train/train.hpp"
#include "attnbench/variant.hpp"
#include "commands.hpp"
#include "mixer/plugin_hint.hpp"

namespace ab::cli {
namespace {

Json caps_json(const Capabilities& c) {
  return {{"causal", c.causal}, {"bidirectional", c.bidirectional}, {"padding_mask", c.padding_mask},
          {"stochastic", c.stochastic}, {"length_dependent", c.length_dependent}, {"decode", c.decode}};
}

std::string caps_text(const Capabilities& c) {
  std::vector<std::string> v;
  if (c.bidirectional) v.push_back("bidir");
  if (c.causal) v.push_back("causal");
  if (c.padding_mask) v.push_back("pad-mask");
  if (c.stochastic) v.push_back("stochastic");
  if (c.length_dependent) v.push_back("len-dependent");
  if (c.decode) v.push_back("decode");
  return fmt::format("{}", fmt::join(v, ","));
}

Json variant_json(const VariantSpec& s, bool with_cost) {
  Json j = {{"name", s.name}, {"family", s.family}, {"summary", s.summary}, {"reference", s.reference},
            {"origin", s.origin}, {"capabilities", caps_json(s.caps)}, {"params", describe_params(s.params)},
            {"attention_style", s.attention_style}};  // q/k/v projections: model.kv_heads, positions_for
  if (with_cost && s.cost) {
    const Json defaults = resolve_params(s.params, Json::object(), s.name);
    Json cost = Json::array();
    for (int64_t n : {1024, 2048, 4096, 8192}) {
      const Cost c = s.cost({1, n, 512, 8, &defaults, false});
      cost.push_back({{"batch", 1}, {"seq_len", n}, {"d_model", 512}, {"heads", 8}, {"flops", c.flops},
                      {"activation_bytes", c.activation_bytes}, {"peak_bytes", c.peak_bytes}});
    }
    j["cost_examples"] = cost;
  }
  return j;
}

Json task_json(const TaskSpec& s) {
  return {{"name", s.name}, {"summary", s.summary}, {"reference", s.reference}, {"origin", s.origin},
          {"params", describe_params(s.params)}};
}

void print_params(const Json& params) {
  for (const auto& p : params) {
    std::string range;
    if (p.contains("choices")) range = fmt::format("one of {}", p["choices"].dump());
    else if (p.contains("min") || p.contains("max"))
      range = fmt::format("[{}, {}]", p.contains("min") ? p["min"].dump() : "-inf", p.contains("max") ? p["max"].dump() : "inf");
    fmt::print("  {:<18} {:<8} default {:<12} {}{}\n", p["name"].get<std::string>(), p["type"].get<std::string>(),
               p["default"].dump(), p["doc"].get<std::string>(), range.empty() ? "" : "  " + range);
  }
}

}  // namespace

int cmd_list(int argc, char** argv, int first) {
  const auto flags = with_common({{"json", "", "print JSON instead of a table"}});
  Args args(argc, argv, first, "list", flags, 1);
  if (args.print_help("list variants|tasks [--json]", "What is registered.")) return 0;
  const std::vector<std::string> kinds = {"variants", "tasks"};
  if (args.positional().empty()) throw UsageError("list: say what to list: 'variants' or 'tasks'");
  const std::string what = args.positional()[0];
  const bool json = args.has("json");
  if (what == "variants") {
    auto& reg = VariantRegistry::instance();
    Json all = Json::array();
    for (const auto& n : reg.names()) all.push_back(variant_json(reg.get(n), false));
    if (json) fmt::print("{}\n", all.dump(2));
    else {
      size_t wn = 0, wf = 0, wc = 0;  // column widths from the longest entry
      for (const auto& n : reg.names()) {
        const auto& s = reg.get(n);
        wn = std::max(wn, s.name.size()), wf = std::max(wf, s.family.size()), wc = std::max(wc, caps_text(s.caps).size());
      }
      for (const auto& n : reg.names()) {
        const auto& s = reg.get(n);
        fmt::print("{:<{}}  {:<{}}  {:<{}}  {}  [{}]\n", s.name, wn, s.family, wf, caps_text(s.caps), wc, s.summary,
                   s.origin);
      }
    }
  } else if (what == "tasks") {
    auto& reg = TaskRegistry::instance();
    Json all = Json::array();
    for (const auto& n : reg.names()) all.push_back(task_json(reg.get(n)));
    if (json) fmt::print("{}\n", all.dump(2));
    else {
      size_t wn = 0;
      for (const auto& n : reg.names()) wn = std::max(wn, n.size());
      for (const auto& n : reg.names()) fmt::print("{:<{}}  {}  [{}]\n", n, wn, reg.get(n).summary, reg.get(n).origin);
    }
  } else {
    throw UsageError("list: " + unknown_name_message("list", what, kinds));
  }
  return 0;
}

int cmd_describe(int argc, char** argv, int first) {
  const auto flags = with_common({{"json", "", "print JSON"}});
  Args args(argc, argv, first, "describe", flags, 1);
  if (args.has("help") || args.positional().empty()) {
    fmt::print("{}", usage_text("describe NAME [--json]",
                                "Parameters, defaults, capabilities and cost model of a variant or a task.\n"
                                "NAME may also be 'model' or 'train' for those parameter groups of --set.",
                                flags));
    return args.has("help") ? 0 : 2;
  }
  const std::string name = args.positional()[0];
  Json j;
  if (auto* v = VariantRegistry::instance().find(name)) {
    j = variant_json(*v, true);
    j["kind"] = "variant";
  } else if (auto* t = TaskRegistry::instance().find(name)) {
    j = task_json(*t);
    j["kind"] = "task";
  } else if (name == "model" || name == "train") {
    j = {{"name", name}, {"kind", "group"},
         {"params", describe_params(name == "model" ? model_param_specs() : train_param_specs())}};
  } else {
    auto names = VariantRegistry::instance().names();
    for (auto& t : TaskRegistry::instance().names()) names.push_back(t);
    names.push_back("model");
    names.push_back("train");
    throw UsageError(unknown_with_plugin_hint("variant or task", name, names));
  }
  if (args.has("json")) {
    fmt::print("{}\n", j.dump(2));
    return 0;
  }
  fmt::print("{} ({})\n", j["name"].get<std::string>(), j["kind"].get<std::string>());
  if (j.contains("summary")) fmt::print("  {}\n  reference: {}\n", j["summary"].get<std::string>(), j["reference"].get<std::string>());
  if (j.contains("origin")) fmt::print("  origin: {}\n", j["origin"].get<std::string>());
  if (j.contains("capabilities")) fmt::print("  capabilities: {}\n", j["capabilities"].dump());
  if (j.contains("attention_style"))
    fmt::print("  attention-style: {}\n", j["attention_style"].get<bool>() ? "yes (model.kv_heads applies)" : "no");
  fmt::print("parameters (--set {}.NAME=VALUE):\n", j["kind"] == "group" ? name : j["kind"].get<std::string>());
  print_params(j["params"]);
  if (j.contains("cost_examples")) {
    fmt::print("cost model (forward, per layer; B=1, D=512, H=8):\n");
    for (const auto& c : j["cost_examples"])
      fmt::print("  N={:<6} {:>10.3g} FLOP  {:>10.3g} bytes saved for backward  {:>10.3g} bytes peak fwd+bwd\n",
                 c["seq_len"].get<int64_t>(), c["flops"].get<double>(), c["activation_bytes"].get<double>(),
                 c["peak_bytes"].get<double>());
  }
  return 0;
}

}  // namespace ab::cli
