// The optimiser and the one training step that `train` runs and the bench's train_step cell times.
#include "train/optimizer.hpp"

#include <algorithm>
#include <cmath>

#include "core/backend/onednn.hpp"

namespace ab {

double lr_at(const Json& tp, int64_t step) {  // step is 1-based
  const double lr = tp["lr"].get<double>();
  // The decay's horizon is its own setting, so that more steps need not mean another curve.
  const int64_t warmup = tp["warmup"].get<int64_t>(), horizon = tp.value("schedule_steps", int64_t{0}),
                steps = horizon > 0 ? horizon : tp["steps"].get<int64_t>();
  const double t = static_cast<double>(step);
  const double warm = warmup > 0 ? std::min(1.0, t / static_cast<double>(warmup)) : 1.0;
  const double frac = steps > warmup ? std::clamp((t - warmup) / static_cast<double>(steps - warmup), 0.0, 1.0) : 0.0;
  const std::string sched = tp["schedule"];
  double g = 1.0;
  if (sched == "cosine") g = 0.5 * (1.0 + std::cos(M_PI * frac));
  else if (sched == "linear") g = 1.0 - frac;
  else if (sched == "rsqrt") g = std::sqrt(std::max<double>(1, warmup)) / std::sqrt(std::max<double>(t, std::max<int64_t>(1, warmup)));
  return lr * warm * g;
}

AdamW::AdamW(std::vector<std::pair<std::string, Var>> p, const Json& tp, const std::vector<std::string>& no_decay)
    : params(std::move(p)), beta1(tp["beta1"]), beta2(tp["beta2"]), eps(tp["eps"]), wd(tp["weight_decay"]) {
  for (auto& [n, var] : params) {
    decay.push_back(var.rank() >= 2 && std::find(no_decay.begin(), no_decay.end(), n) == no_decay.end());
    m.push_back(Tensor::zeros(var.shape()));
    v.push_back(Tensor::zeros(var.shape()));
  }
}

double AdamW::step(double lr, double clip) {
  double sq = 0;
  for (auto& [n, var] : params)
    if (var.grad().defined()) {
      const float* g = var.grad().data();
      for (int64_t i = 0; i < var.grad().numel(); ++i) sq += static_cast<double>(g[i]) * g[i];
    }
  const double norm = std::sqrt(sq);
  if (!std::isfinite(norm)) return norm;
  const float gscale = clip > 0 && norm > clip ? static_cast<float>(clip / norm) : 1.f;
  ++t;
  const double bc1 = 1 - std::pow(beta1, t), bc2 = 1 - std::pow(beta2, t);
  for (size_t k = 0; k < params.size(); ++k) {
    Var& var = params[k].second;
    if (!var.grad().defined()) continue;
    float* w = var.value_mut().data();
    const float* g = var.grad().data();
    float* mp = m[k].data();
    float* vp = v[k].data();
    const float b1 = static_cast<float>(beta1), b2 = static_cast<float>(beta2);
    const float step_size = static_cast<float>(lr / bc1), inv_bc2 = static_cast<float>(1.0 / bc2);
    const float e = static_cast<float>(eps), decay_mul = decay[k] ? static_cast<float>(1.0 - lr * wd) : 1.f;
    kernels::parallel_for(var.value().numel(), kernels::kGrain, [&](int64_t b, int64_t end) {
      for (int64_t i = b; i < end; ++i) {
        const float gi = g[i] * gscale;
        mp[i] = b1 * mp[i] + (1 - b1) * gi;
        vp[i] = b2 * vp[i] + (1 - b2) * gi * gi;
        w[i] = w[i] * decay_mul - step_size * mp[i] / (std::sqrt(vp[i] * inv_bc2) + e);
      }
    });
    var.zero_grad();
  }
  return norm;
}

StepResult train_step(Model& model, AdamW& opt, const Batch& batch, const Json& tp, int64_t step) {
  Var loss = cross_entropy(model.forward(batch, true, step), batch.labels);
  loss.backward();
  const double lr = lr_at(tp, step);
  const double grad_norm = opt.step(lr, tp["clip_norm"].get<double>());
  return {loss.value()[0], grad_norm, lr};
}

}  // namespace ab
