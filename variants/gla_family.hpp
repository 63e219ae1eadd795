#pragma once
// What the variants on the gated linear attention kernel share (gla, gsa, hgrn2): the kernel's
// form and chunk parameters, the options read from them, the cost of one scan, and the layer
// around the kernel (Layer: widths, weights, head split, per-head output norm).
#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <fmt/format.h>

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

// The spec of a family member: a recurrent mixer, causal with decoding, bidirectional (causal
// plus anti-causal scans), padding mask; `of` names what the form computes.
inline ab::VariantSpec family_spec(std::string name, std::string summary, std::string reference, const std::string& of,
                                   std::vector<ab::ParamSpec> rest) {
  return ab::variant_spec(std::move(name), "recurrent", std::move(summary), std::move(reference),
                          with_form_params(of, std::move(rest)),
                          {.causal = true, .bidirectional = true, .padding_mask = true, .decode = true});
}

// `before`, expand_k and expand_v (the widths head_widths.hpp reads; gla, gsa) with fla's
// defaults, then `after`.
inline std::vector<ab::ParamSpec> with_widths(std::vector<ab::ParamSpec> before, double k_default, double v_default,
                                              std::vector<ab::ParamSpec> after) {
  auto width = [](const std::string& name, const std::string& of, double def) {
    return ab::num_param(name, def,
                         of + " width as a fraction of d_model (fla: " + fmt::format("{}", def) + "); " + name +
                             " D / heads must be whole",
                         0.0625, 4);
  };
  before.push_back(width("expand_k", "key", k_default));
  before.push_back(width("expand_v", "value", v_default));
  for (auto& a : after) before.push_back(std::move(a));
  return before;
}

// tau of a gate log alpha = logsigmoid(.) / tau, as 1 / tau (gla, gsa: gate_normalizer).
inline float inverse_gate_normalizer(const ab::Json& p) {
  return static_cast<float>(1.0 / p.at("gate_normalizer").get<double>());
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

// The base of the three mixers: d_model, heads, the per-head key and value widths, the kernel
// options, Xavier weights from the layer's init streams and the per-head LayerNorm over dv with
// an affine shared by the heads (fla: RMSNorm).
class Layer : public ab::Mixer {
 protected:
  Layer(const ab::MixerConfig& cfg, int64_t dk, int64_t dv)
      : d_model_(cfg.d_model), heads_(cfg.heads), dk_(dk), dv_(dv), seed_(cfg.seed), layer_(cfg.layer),
        opt_(options(cfg.params)) {}

  // A [in, out] Xavier-uniform weight from init stream `which`.
  ab::Var add_weight(const std::string& name, int64_t in, int64_t out, uint64_t which) {
    return add_param(name, ab::init_xavier_uniform(in, out, ab::RngStream(seed_, ab::Purpose::init, 1000 + layer_, which)));
  }
  // wq, wk [D, H dk] and wv [D, H dv] from init streams 0, 1, 2 (gla, gsa)
  void add_qkv() {
    wq_ = add_weight("wq", d_model_, heads_ * dk_, 0);
    wk_ = add_weight("wk", d_model_, heads_ * dk_, 1);
    wv_ = add_weight("wv", d_model_, heads_ * dv_, 2);
  }
  // norm_weight (ones) and norm_bias (zeros) [dv]
  void add_head_norm() {
    norm_w_ = add_param("norm_weight", ab::Tensor::full({dv_}, 1.f));
    norm_b_ = add_param("norm_bias", ab::Tensor::zeros({dv_}));
  }
  // [B, N, H d] -> [B, H, N, d]
  ab::Var heads(const ab::Var& t, int64_t d) const {
    return ab::permute(ab::reshape(t, {t.dim(0), t.dim(1), heads_, d}), {0, 2, 1, 3});
  }
  // o [B, H, N, dv] -> the per-head norm, heads merged: [B, N, H dv]
  ab::Var merged_norm(const ab::Var& o) const {
    const int64_t B = o.dim(0), N = o.dim(2);
    const ab::Var on = ab::layer_norm(ab::permute(o, {0, 2, 1, 3}), norm_w_, norm_b_);  // [B, N, H, dv]
    return ab::reshape(on, {B, N, heads_ * dv_});
  }

  int64_t d_model_, heads_, dk_, dv_;
  uint64_t seed_;
  int layer_;
  ab::GatedLinearAttentionOptions opt_;
  ab::Var wq_, wk_, wv_;  // wk_, wv_ unused by hgrn2
  ab::Var norm_w_, norm_b_;
};

}  // namespace ab_gla_family
