// flowformer — Flow-Attention: linear attention made to compete by flow conservation.
// Wu et al. 2022, "Flowformer: Linearizing Transformers with Conservation Flows" (ICML); the
// reference is thuml/Flowformer `Flow_Attention` and `Flow_Attention_Causal`.
// Per head, phi = sigmoid, eps = 1e-6, N queries (sinks), M keys (sources; M = N here):
//   I_i = 1 / ((phi(q_i)+eps) . (sum_j phi(k_j) + eps))                 incoming flow of sink i
//   O_j = 1 / ((phi(k_j)+eps) . (sum_i phi(q_i) + eps))                 outgoing flow of source j
//   Ic_i = (phi(q_i)+eps) . (sum_j phi(k_j) O_j + eps)                  conserved incoming
//   Oc_j = clamp((phi(k_j)+eps) . (sum_i phi(q_i) I_i + eps), -1, 1)    conserved outgoing
//   a_i = sigmoid(Ic_i N / M)  (allocation),  c_j = softmax_j(Oc_j) M  (competition)
//   out_i = a_i (phi(q_i) I_i)^T sum_j phi(k_j) (c_j v_j)^T
// Causal form (Flow_Attention_Causal): every sum over j becomes a prefix sum over j <= i with the
// position normaliser n_i = i + 1 (I, O multiplied by n, Ic, Oc divided by n), the competition is
// exp(Oc_j) / sum_{t<=j} exp(Oc_t) * n_j, and the last product is the causal linear attention
// numerator ab::causal_linear_numerator of (phi(q) I / n, phi(k), c v).
// Composed of ops plus ab::cumsum / reciprocal / clamp (prefix_scan_attention.hpp): time
// O(B H N d^2), memory O(B N D) saved for backward (about 9 B N D floats bidirectional, 13 B N D causal; no
// N x N and no [N, d, d] buffer; bidirectional also the [d, d] state per head).
// Capabilities: bidirectional, causal, padding mask (padded tokens are neither sources nor sinks:
// their features are zeroed and their competition weight is 0; M counts the real keys in the
// bidirectional form; the causal normaliser n_i counts positions, exact when padding is at the end),
// decode (the causal form's prefix sums per head: sum phi(q), sum phi(k), sum phi(k) O,
// sum phi(q) I, the competition's running sum and the [d, d] state; constant in the length).
#include <algorithm>
#include <cmath>
#include <memory>
#include <vector>

#include "attnbench/kernels/decode.hpp"
#include "attnbench/kernels/prefix_scan_attention.hpp"
#include "attnbench/variant.hpp"

namespace {

class Flowformer final : public ab::AttentionMixer {
 public:
  explicit Flowformer(const ab::MixerConfig& cfg)
      : AttentionMixer(cfg), eps_(static_cast<float>(cfg.params.at("eps").get<double>())) {}

  static ab::VariantSpec spec() {
    ab::VariantSpec s =
        ab::variant_spec("flowformer", "kernel",
                         "Flow-Attention: sigmoid linear attention with conserved flows (competition + allocation)",
                         "Wu et al. 2022, Flowformer: Linearizing Transformers with Conservation Flows",
                         {ab::num_param("eps", 1e-6, "added to the features and flow sums", 1e-12, 1.0)},
                         {.causal = true, .bidirectional = true, .padding_mask = true, .decode = true});
    s.cost = [](const ab::CostArgs& a) {
      const double B = a.batch, N = a.length, D = a.d_model, H = a.heads, d = D / H;
      ab::Cost c;
      // projections + kv state and readout (4 N d^2 per head) + the flow sums (about 16 N d)
      c.flops = 8 * B * N * D * D + 4 * B * N * D * d + 16 * B * N * D;
      // Measured composition: the ops keep about 9 B N D + 6 B H N floats (bidirectional, plus the
      // [d, d] state per head) and 13 B N D + 10 B H N (causal: prefix sums and their products).
      c.activation_bytes = 4 * (a.causal ? 13 * B * N * D + 10 * B * H * N : 9 * B * N * D + 6 * B * H * N + B * H * d * d);
      c.state_bytes = 4 * B * H * (d * d + 4 * d + 1);
      // Peak in the flow op's backward: the saved tensors with y, the upstream gradient per head,
      // dq, dk, dv (5 B N D) and dWo.
      c.peak_bytes = c.activation_bytes + 4 * (5 * B * N * D + D * D);
      return c;
    };
    return s;
  }

  // q, k, v: [B, H, N, d] -> [B, H, N, d]
  ab::Var attend(const ab::Var& q, const ab::Var& k, const ab::Var& v, const ab::MixerContext& ctx) override {
    const int64_t B = q.dim(0), N = q.dim(2);
    ab::Var fq = ab::sigmoid(q), fk = ab::sigmoid(k);  // [B, H, N, d]
    const ab::Tensor keep = ab::keep_flags(ctx.key_mask, {B, 1, N, 1});  // undefined: no mask
    if (keep.defined()) {
      fq = ab::mul(fq, ab::Var(keep));
      fk = ab::mul(fk, ab::Var(keep));
    }
    const ab::Var fqe = ab::add_scalar(fq, eps_), fke = ab::add_scalar(fk, eps_);
    return ctx.causal ? causal(fq, fk, fqe, fke, v, keep) : bidirectional(fq, fk, fqe, fke, v, keep, ctx);
  }

  // Decoding: the causal form's prefix sums, one token at a time.
  struct State final : ab::DecodeState {
    ab::Tensor sums;     // [B, H, 4, d]: sum phi(q), sum phi(k), sum phi(k) O, sum phi(q) I
    ab::Tensor running;  // [B, H]: sum of exp(source) over the sources so far
    ab::Tensor s;        // [B, H, d, d]: sum phi(k) (c v)^T
    int64_t n = 0;       // tokens so far
    int64_t bytes() const override { return sums.bytes() + running.bytes() + s.bytes(); }
  };
  std::unique_ptr<ab::DecodeState> begin_decode(int64_t batch, const ab::MixerContext&) override {
    auto st = std::make_unique<State>();
    st->sums = ab::Tensor::zeros({batch, heads_, 4, head_dim_});
    st->running = ab::Tensor::zeros({batch, heads_});
    st->s = ab::Tensor::zeros({batch, heads_, head_dim_, head_dim_});
    return st;
  }
  // q, k, v: [B, H, 1, d] -> [B, H, 1, d]; the per-token form of causal() above.
  ab::Tensor attend_step(const ab::Tensor& q, const ab::Tensor& k, const ab::Tensor& v, ab::DecodeState& state,
                         const ab::MixerContext&) override {
    auto& st = static_cast<State&>(state);
    const int64_t d = head_dim_, BH = q.dim(0) * heads_;
    const float n = static_cast<float>(++st.n);
    auto sig = [](float x) { return 1.f / (1.f + std::exp(-x)); };
    ab::Tensor out = ab::Tensor::empty(q.shape());
    std::vector<float> fq(static_cast<size_t>(d)), fk(static_cast<size_t>(d));
    for (int64_t bh = 0; bh < BH; ++bh) {
      float* sq = st.sums.data() + bh * 4 * d;
      float *sk = sq + d, *sko = sq + 2 * d, *sqi = sq + 3 * d;
      float* S = st.s.data() + bh * d * d;
      const float *qr = q.data() + bh * d, *kr = k.data() + bh * d, *vr = v.data() + bh * d;
      for (int64_t c = 0; c < d; ++c) fq[c] = sig(qr[c]), fk[c] = sig(kr[c]), sq[c] += fq[c], sk[c] += fk[c];
      float dot_in = 0, dot_out = 0;
      for (int64_t c = 0; c < d; ++c) dot_in += (fq[c] + eps_) * (sk[c] + eps_), dot_out += (fk[c] + eps_) * (sq[c] + eps_);
      const float incoming = n / dot_in, outgoing = n / dot_out;
      float sink = 0, source = 0;
      for (int64_t c = 0; c < d; ++c) {
        sko[c] += fk[c] * outgoing;
        sqi[c] += fq[c] * incoming;
        sink += (fq[c] + eps_) * (sko[c] + eps_);
        source += (fk[c] + eps_) * (sqi[c] + eps_);
      }
      const float allocation = sig(sink / n), e = std::exp(std::clamp(source / n, -1.f, 1.f));
      st.running[bh] += e;
      const float competition = e / st.running[bh] * n;
      float* o = out.data() + bh * d;
      for (int64_t a = 0; a < d; ++a)
        for (int64_t c = 0; c < d; ++c) S[a * d + c] += fk[a] * vr[c] * competition;
      for (int64_t c = 0; c < d; ++c) {
        float acc = 0;
        for (int64_t a = 0; a < d; ++a) acc += fq[a] * S[a * d + c];
        o[c] = acc * incoming / n * allocation;
      }
    }
    return out;
  }

 private:
  // Row dot products x_i . y_i: [B, H, N, d] x [B, H, N, d] -> [B, H, N, 1]
  static ab::Var rowdot(const ab::Var& x, const ab::Var& y) {
    const ab::Var s = ab::sum_dim(ab::mul(x, y), 3);
    return ab::reshape(s, {x.dim(0), x.dim(1), x.dim(2), 1});
  }
  // x [B, H, N, d] against one vector per head y [B, H, d] -> [B, H, N, 1]
  static ab::Var against(const ab::Var& x, const ab::Var& y) {
    return ab::matmul(x, ab::reshape(y, {y.dim(0), y.dim(1), y.dim(2), 1}));
  }

  ab::Var bidirectional(const ab::Var& fq, const ab::Var& fk, const ab::Var& fqe, const ab::Var& fke, const ab::Var& v,
                        const ab::Tensor& keep, const ab::MixerContext& ctx) const {
    const int64_t B = fq.dim(0), H = fq.dim(1), N = fq.dim(2);
    const ab::Var sum_q = ab::sum_dim(fq, 2), sum_k = ab::sum_dim(fk, 2);              // [B, H, d]
    const ab::Var incoming = ab::reciprocal(against(fqe, ab::add_scalar(sum_k, eps_)));  // [B, H, N, 1]
    const ab::Var outgoing = ab::reciprocal(against(fke, ab::add_scalar(sum_q, eps_)));  // [B, H, N, 1]
    const ab::Var sink = against(fqe, ab::add_scalar(ab::sum_dim(ab::mul(fk, outgoing), 2), eps_));
    const ab::Var source =
        ab::clamp(against(fke, ab::add_scalar(ab::sum_dim(ab::mul(fq, incoming), 2), eps_)), -1.f, 1.f);
    const ab::Var allocation = ab::sigmoid(sink);  // N / M = 1 for self-attention
    // Competition: softmax over the (real) keys, times their count M.
    ab::Var competition = ab::softmax(ab::reshape(source, {B, H, 1, N}), ctx.key_mask);  // [B, H, 1, N]
    if (keep.defined()) {
      ab::Tensor count = ab::Tensor::zeros({B, 1, 1, 1});
      for (int64_t i = 0; i < B * N; ++i) count[i / N] += keep[i];
      competition = ab::mul(competition, ab::Var(count));
    } else {
      competition = ab::scale(competition, static_cast<float>(N));
    }
    competition = ab::reshape(competition, {B, H, N, 1});
    const ab::Var state = ab::matmul(fk, ab::mul(v, competition), true, false);  // [B, H, d, d]
    return ab::mul(ab::matmul(ab::mul(fq, incoming), state), allocation);        // [B, H, N, d]
  }

  ab::Var causal(const ab::Var& fq, const ab::Var& fk, const ab::Var& fqe, const ab::Var& fke, const ab::Var& v,
                 const ab::Tensor& keep) const {
    const int64_t N = fq.dim(2);
    ab::Tensor normal = ab::Tensor::empty({N, 1}), inv_normal = ab::Tensor::empty({N, 1});  // n_i = i + 1
    for (int64_t i = 0; i < N; ++i) {
      normal[i] = static_cast<float>(i + 1);
      inv_normal[i] = 1.f / static_cast<float>(i + 1);
    }
    const ab::Var nv(normal), inv(inv_normal);
    const ab::Var cum_q = ab::cumsum(fq, 2), cum_k = ab::cumsum(fk, 2);  // [B, H, N, d]
    const ab::Var incoming = ab::mul(ab::reciprocal(rowdot(fqe, ab::add_scalar(cum_k, eps_))), nv);  // [B, H, N, 1]
    const ab::Var outgoing = ab::mul(ab::reciprocal(rowdot(fke, ab::add_scalar(cum_q, eps_))), nv);
    const ab::Var sink = ab::mul(rowdot(fqe, ab::add_scalar(ab::cumsum(ab::mul(fk, outgoing), 2), eps_)), inv);
    const ab::Var source =
        ab::clamp(ab::mul(rowdot(fke, ab::add_scalar(ab::cumsum(ab::mul(fq, incoming), 2), eps_)), inv), -1.f, 1.f);
    const ab::Var allocation = ab::sigmoid(sink);
    ab::Var e = ab::exp(source);  // in [1/e, e]: no overflow
    ab::Var running = ab::cumsum(e, 2);
    if (keep.defined()) {  // padded keys do not compete; eps guards a padded prefix (sum 0)
      e = ab::mul(e, ab::Var(keep));
      running = ab::add_scalar(ab::cumsum(e, 2), eps_);
    }
    const ab::Var competition = ab::mul(ab::mul(e, ab::reciprocal(running)), nv);  // [B, H, N, 1]
    const ab::Var out =
        ab::causal_linear_numerator(ab::mul(fq, ab::mul(incoming, inv)), fk, ab::mul(v, competition));
    return ab::mul(out, allocation);  // [B, H, N, d]
  }

  float eps_;
};

}  // namespace

ATTNBENCH_REGISTER_VARIANT(Flowformer);
