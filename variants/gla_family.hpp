#pragma once
// What the variants on the gated linear attention kernel share (gla, gsa, hgrn2): the kernel's
// form and chunk parameters, the options read from them and the cost of one scan.
#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "attnbench/kernels/gated_linear_attention.hpp"
#include "attnbench/variant.hpp"

namespace ab_gla_family {

// form and chunk, first, then `rest`; `of` names what the form computes ("the recurrence").
inline std::vector<ab::ParamSpec> with_form_params(const std::string& of, std::vector<ab::ParamSpec> rest) {
  std::vector<ab::ParamSpec> params = {
      ab::enum_param("form", "chunked", {"chunked", "parallel", "recurrent"},
                     "computation of " + of + ": chunked (production), parallel (N x N), recurrent; equal results"),
      ab::int_param("chunk", 64, "chunk length of the chunked form", 1, 4096),
  };
  for (auto& r : rest) params.push_back(std::move(r));
  return params;
}

// The kernel options of the resolved parameters p (form, chunk).
inline ab::GatedLinearAttentionOptions options(const ab::Json& p) {
  ab::GatedLinearAttentionOptions opt;
  opt.form = ab::gla_form_from_string(p.at("form").get<std::string>());
  opt.chunk = p.at("chunk").get<int64_t>();
  return opt;
}

// Multiply-adds of one scan of N positions per (batch, head, direction) at key width K and value
// width V in the form of p: parallel N^2 (2K + V), recurrent 4 N K V, chunked N C (2K + V) + 4 N K V
// (the intra-chunk scores take K decays each).
inline double scan_flops(const ab::Json& p, double N, double K, double V) {
  const std::string form = p.at("form").get<std::string>();
  const double C = std::min<double>(N, double(p.at("chunk").get<int64_t>()));
  if (form == "parallel") return N * N * (2 * K + V);
  if (form == "recurrent") return 4 * N * K * V;
  return N * C * (2 * K + V) + 4 * N * K * V;
}

}  // namespace ab_gla_family
