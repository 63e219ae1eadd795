// Test fixture plugin: variants that fail on purpose, so the tests can show that a failing plugin
// is isolated and recorded (sweep cells `crashed` / `failed` / `diverged`), never lost.
//   fault_crash: forward raises SIGSEGV at training step >= `crash_at_step` (default 0)
//   fault_throw: forward throws
//   fault_nan:   forward returns NaN from training step `nan_at_step` on
// With `garbage_output=true` each first prints bytes that are not UTF-8 (to its log) and puts them
// in its exception's message. Otherwise each is a learnable per-channel scaling of x.
#include <csignal>
#include <cmath>
#include <cstdio>
#include <limits>
#include <stdexcept>
#include <string>

#include "attnbench/variant.hpp"

namespace {

enum class Fault { crash, fail, nan };

template <Fault F>
class FaultMixer final : public ab::Mixer {
 public:
  explicit FaultMixer(const ab::MixerConfig& cfg)
      : at_(cfg.params.at("at_step").get<int64_t>()), garbage_(cfg.params.at("garbage_output").get<bool>()) {
    w_ = add_param("w", ab::Tensor::full({cfg.d_model}, 1.0f));
  }
  static ab::VariantSpec spec() {
    ab::VariantSpec s;
    s.name = F == Fault::crash ? "fault_crash" : F == Fault::fail ? "fault_throw" : "fault_nan";
    s.family = "test-fixture";
    s.summary = "fails on purpose (test fixture)";
    s.reference = "attnbench tests";
    s.params = {ab::int_param("at_step", 0, "training step from which the fault happens", 0, 1 << 30),
                ab::bool_param("garbage_output", false, "print bytes that are not UTF-8 before the fault")};
    s.caps = {.causal = true, .bidirectional = true};
    s.cost = [](const ab::CostArgs& a) {
      const double bnd = static_cast<double>(a.batch * a.length * a.d_model);
      ab::Cost c;
      c.flops = bnd;
      c.activation_bytes = 4 * bnd;
      c.peak_bytes = 4 * 3 * bnd;  // y, dx and the full-size product before the reduction to dw
      return c;
    };
    return s;
  }
  // x: [B, N, D] -> [B, N, D]
  ab::Var forward(const ab::Var& x, const ab::MixerContext& ctx) override {
    if (ctx.training && ctx.step >= at_) {
      static const char kGarbage[] = "bad bytes: \xff\xfe\xc3( \xed\xa0\x80 end";
      if (garbage_) std::fprintf(stderr, "%s\n", kGarbage), std::fflush(stderr);
      if constexpr (F == Fault::fail)
        if (garbage_) throw std::runtime_error(std::string("fault_throw: failing on purpose; ") + kGarbage);
      if constexpr (F == Fault::crash) std::raise(SIGSEGV);
      if constexpr (F == Fault::fail) throw std::runtime_error("fault_throw: failing on purpose");
      if constexpr (F == Fault::nan) return ab::scale(ab::mul(x, w_), std::numeric_limits<float>::quiet_NaN());
    }
    return ab::mul(x, w_);
  }

 private:
  int64_t at_;
  bool garbage_;
  ab::Var w_;
};

using FaultCrash = FaultMixer<Fault::crash>;
using FaultThrow = FaultMixer<Fault::fail>;
using FaultNan = FaultMixer<Fault::nan>;

}  // namespace

ATTNBENCH_REGISTER_VARIANT(FaultCrash);
ATTNBENCH_REGISTER_VARIANT(FaultThrow);
ATTNBENCH_REGISTER_VARIANT(FaultNan);
