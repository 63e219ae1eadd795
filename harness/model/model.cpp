#include "model/model.hpp"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "attnbench/kernels/short_conv.hpp"

namespace ab {

namespace {
constexpr double kRotaryBase = 10000.0;  // RoFormer's; flash-attn's rotary_emb_base default, which MAD keeps

// MAD's posemb_sincos_1d(length, dim) (fairseq's table): row n = [sin(n f_0 .. n f_{h-1}),
// cos(n f_0 .. n f_{h-1})], h = dim / 2, f_i = exp(-i ln(10000) / (h - 1)); a 0 column if dim is odd.
Tensor mad_sincos(int64_t length, int64_t dim) {
  Tensor t = Tensor::zeros({length, dim});
  const int64_t h = dim / 2;
  const double step = h > 1 ? std::log(10000.0) / static_cast<double>(h - 1) : 0.0;
  for (int64_t n = 0; n < length; ++n)
    for (int64_t i = 0; i < h; ++i) {
      const double a = static_cast<double>(n) * std::exp(-static_cast<double>(i) * step);
      t[n * dim + i] = static_cast<float>(std::sin(a));
      t[n * dim + h + i] = static_cast<float>(std::cos(a));
    }
  return t;
}

// Transformer sinusoids of position `pos` over `dim` channels: sin and cos pairs of falling frequency.
void sinusoid_row(float* out, int64_t pos, int64_t dim, double base) {
  for (int64_t i = 0; i < dim; ++i) {
    const double freq = std::pow(base, -static_cast<double>(2 * (i / 2)) / static_cast<double>(dim));
    out[i] = static_cast<float>(i % 2 == 0 ? std::sin(pos * freq) : std::cos(pos * freq));
  }
}
}  // namespace

std::vector<ParamSpec> model_param_specs() {
  return {
      int_param("d_model", 64, "width of the residual stream", 1, 65536),
      int_param("layers", 2, "number of encoder blocks", 0, 256),
      int_param("heads", 4, "attention heads (d_model must be a multiple)", 1, 1024),
      int_param("mlp_dim", 128, "hidden width of each block's MLP and of the classifier head", 1, 1 << 20),
      enum_param("positions", "sinusoidal", {"none", "sinusoidal", "learned", "sinusoidal2d", "rotary"},
                 "position information added to the token embedding (LRA: sinusoidal); sinusoidal2d encodes "
                 "row and column of a square image raster in half the channels each (image tasks); rotary "
                 "rotates q and k of every attention-style layer by their position instead (RoFormer, base "
                 "10000, the whole head, half-split pairs as flash-attn's rotary that MAD's attention uses): "
                 "scores then depend on positions only through i - j; the other layers get no positions"),
      enum_param("pooling", "mean", {"mean", "cls", "last"},
                 "sequence summary for classification: masked mean over tokens, or a learned CLS token "
                 "prepended (LRA); last = MAD's autoencoder for per-position tasks (mad_compression): the "
                 "encoder's state at the last position alone, decoded at every position by a small MLP"),
      bool_param("padding_mask", true, "LRA convention: token 0 is padding, masked as a key and out of the mean"),
      bool_param("causal", false, "causal mixing (prefix only); needs a variant with the causal capability"),
      num_param("dropout", 0.1, "dropout after each mixer and in each MLP", 0.0, 0.95),
      ParamSpec{"mixers", ParamType::string, "",
                "per-layer mixer schedule for hybrids: variant names separated by commas, repeated cyclically "
                "over model.layers (their count must divide it), e.g. mamba,mamba,mamba,softmax = attention in "
                "every fourth layer; one entry may end in '*' to fill the layers the others leave, e.g. "
                "softmax,mamba* = attention in the first layer only. It must name --variant, whose layers take "
                "the variant.* settings; the other layers use their defaults. Empty = --variant in every layer",
                -1e300, 1e300, {}},
      int_param("kv_heads", 0,
                "grouped-query attention in the attention-style layers: k/v heads, each shared by heads/kv_heads "
                "query heads (1 = multi-query); must divide model.heads; 0 = model.heads (standard MHA)",
                0, 1024),
      int_param("short_conv", 0,
                "taps K of a causal depthwise convolution (per channel, with bias) added to the normed input of "
                "every layer's mixer (u + conv(u), as Based and Zoology's BaseConv), the local mixing Zoology "
                "gives every recurrent mixer; 0 = off",
                0, 256),
      bool_param("mlp", true,
                 "an MLP sublayer in every block; false = mixer-only blocks, as in Zoology (model.mlp_dim still "
                 "sets the classifier head's width)"),
      enum_param("mlp_type", "gelu", {"gelu", "swiglu"},
                 "the blocks' channel mixer: gelu = W2 GELU(x W1 + b1) + b2 (LRA); swiglu = W2 (SiLU(x W1) * x W3), "
                 "no biases, MAD's channel mixer (its hidden width for d_model 128 is 352: 8d/3 rounded up to "
                 "a multiple of 16; set model.mlp_dim); both of hidden width model.mlp_dim"),
      enum_param("positions_for", "all", {"all", "attention"},
                 "all: model.positions always; attention: only when some layer is attention-style "
                 "(AttentionMixer; 'attnbench list variants --json'), as Zoology gives positions to attention "
                 "models only (max_position_embeddings = 0 for the others)"),
  };
}

namespace {
std::string trim(const std::string& s) {
  const size_t a = s.find_first_not_of(" \t"), b = s.find_last_not_of(" \t");
  return a == std::string::npos ? std::string() : s.substr(a, b - a + 1);
}

std::vector<std::string> attention_style_names() {
  std::vector<std::string> out;
  for (const auto& n : VariantRegistry::instance().names())
    if (VariantRegistry::instance().get(n).attention_style) out.push_back(n);
  return out;
}
}  // namespace

std::vector<LayerMixer> plan_layers(const Json& mp, const VariantSpec& variant, const Json& variant_params) {
  const int64_t layers = mp.at("layers").get<int64_t>();
  const std::string text = trim(mp.value("mixers", ""));
  std::vector<LayerMixer> out;
  if (text.empty()) {
    out.assign(static_cast<size_t>(layers), LayerMixer{&variant, variant_params});
  } else {
    // Entries: names, at most one of them marked '*' (fills the layers the others leave).
    std::vector<std::string> names;
    int star = -1;
    for (size_t a = 0; a <= text.size();) {
      const size_t comma = std::min(text.find(',', a), text.size());
      std::string e = trim(text.substr(a, comma - a));
      if (!e.empty() && e.back() == '*') {
        if (star >= 0)
          throw UsageError(fmt::format("model.mixers = '{}' marks more than one entry with '*'; one entry fills the "
                                       "remaining layers, e.g. softmax,mamba*", text));
        star = static_cast<int>(names.size());
        e = trim(e.substr(0, e.size() - 1));
      }
      if (e.empty())
        throw UsageError(fmt::format("model.mixers = '{}' has an empty entry; write variant names separated by "
                                     "commas, e.g. mamba,mamba,mamba,softmax", text));
      names.push_back(e);
      a = comma + 1;
    }
    std::vector<const VariantSpec*> specs;
    for (const auto& n : names) {
      if (n == variant.name) {
        specs.push_back(&variant);
      } else if (const VariantSpec* s = VariantRegistry::instance().find(n)) {
        specs.push_back(s);
      } else {
        throw UsageError("model.mixers: " + unknown_name_message("variant", n, VariantRegistry::instance().names()));
      }
    }
    const auto count = static_cast<int64_t>(names.size());
    std::vector<size_t> order;  // entry index per layer
    if (star >= 0) {
      if (count - 1 > layers)
        throw UsageError(fmt::format("model.mixers = '{}' names {} fixed layers, more than model.layers = {}; nearest "
                                     "valid model.layers: {}", text, count - 1, layers, count - 1));
      for (int64_t e = 0; e < count; ++e)
        for (int64_t k = 0; k < (e == star ? layers - (count - 1) : 1); ++k) order.push_back(static_cast<size_t>(e));
    } else {
      if (layers % count != 0) {
        const int64_t lo = layers / count * count, hi = lo + count;
        throw UsageError(fmt::format("model.mixers = '{}' has {} entries, which repeat over the layers, but model.layers "
                                     "= {} is not a multiple of {}; nearest valid model.layers: {} (or end one entry "
                                     "with '*' to fill the remaining layers)",
                                     text, count, layers, count, lo > 0 && layers - lo <= hi - layers ? lo : hi));
      }
      for (int64_t l = 0; l < layers; ++l) order.push_back(static_cast<size_t>(l % count));
    }
    if (layers > 0 && std::find(names.begin(), names.end(), variant.name) == names.end())
      throw UsageError(fmt::format("model.mixers = '{}' does not name --variant '{}', whose variant.* settings would "
                                   "apply to no layer; pass one of its variants as --variant (e.g. --variant {})",
                                   text, variant.name, names.front()));
    for (const size_t e : order) {
      const VariantSpec* s = specs[e];
      out.push_back(LayerMixer{s, s == &variant ? variant_params : resolve_params(s->params, Json::object(), s->name)});
    }
  }
  // Every layer's form must exist.
  const bool causal = mp.at("causal").get<bool>();
  for (size_t l = 0; l < out.size(); ++l) {
    const VariantSpec& s = *out[l].spec;
    const std::string where = text.empty() ? "" : fmt::format(" (layer {} of model.mixers)", l);
    if (causal && !s.caps.causal)
      throw UsageError(fmt::format("variant '{}'{} has no causal form; set model.causal=false", s.name, where));
    if (!causal && !s.caps.bidirectional)
      throw UsageError(fmt::format("variant '{}'{} is causal only; set model.causal=true", s.name, where));
  }
  const int64_t kv = mp.value("kv_heads", int64_t{0}), heads = mp.at("heads").get<int64_t>();
  if (kv != 0) {
    if (kv > heads || heads % kv != 0) {
      int64_t best = 1;  // the divisor of heads nearest kv
      for (int64_t c = 1; c <= heads; ++c)
        if (heads % c == 0 && std::llabs(c - kv) < std::llabs(best - kv)) best = c;
      throw UsageError(fmt::format("model.kv_heads = {} must divide model.heads = {}; nearest valid kv_heads: {}", kv,
                                   heads, best));
    }
    if (std::none_of(out.begin(), out.end(), [](const LayerMixer& m) { return m.spec->attention_style; }))
      throw UsageError(fmt::format("model.kv_heads = {} shares k/v heads of attention-style layers (q/k/v "
                                   "projections), but no layer is one ('{}' is not); set model.kv_heads=0 or use an "
                                   "attention-style variant: {}",
                                   kv, out.empty() ? variant.name : out.front().spec->name,
                                   fmt::join(attention_style_names(), ", ")));
  }
  const bool any_attention =
      std::any_of(out.begin(), out.end(), [](const LayerMixer& m) { return m.spec->attention_style; });
  if (mp.value("positions", "") == "rotary") {
    // Rotary positions live in q and k: a model without them has nowhere to put them. With
    // positions_for=attention such a model gets no positions at all, as asked.
    if (!any_attention && mp.value("positions_for", "all") == "all")
      throw UsageError(fmt::format(
          "model.positions=rotary rotates q and k of attention-style layers, but no layer is one ('{}' is not); use "
          "model.positions=sinusoidal (or learned, none), model.positions_for=attention (no positions for models "
          "without attention, as MAD and Zoology), or an attention-style variant: {}",
          out.empty() ? variant.name : out.front().spec->name, fmt::join(attention_style_names(), ", ")));
    const int64_t d = mp.at("d_model").get<int64_t>();
    if (any_attention && heads > 0 && d % heads == 0 && (d / heads) % 2 != 0)
      throw UsageError(fmt::format("model.positions=rotary rotates pairs of channels, but the head width d_model / "
                                   "heads = {} / {} = {} is odd; nearest valid d_model: {}",
                                   d, heads, d / heads, std::max<int64_t>(2 * heads, (d + heads) / (2 * heads) * 2 * heads)));
  }
  if (mp.value("mlp_type", "gelu") != "gelu" && !mp.value("mlp", true))
    throw UsageError(fmt::format("model.mlp_type={} chooses the blocks' MLP, but model.mlp=false leaves them none; set "
                                 "model.mlp=true or drop model.mlp_type", mp.at("mlp_type").get<std::string>()));
  return out;
}

std::vector<std::string> mixer_schedule(const Json& mp, const VariantSpec& variant) {
  std::vector<std::string> names;
  for (const auto& m : plan_layers(mp, variant, Json::object())) names.push_back(m.spec->name);
  return names;
}

Batch make_batch(const Task& task, Split split, const std::vector<int64_t>& indices) {
  Batch b;
  b.size = static_cast<int64_t>(indices.size());
  b.length = task.seq_len();
  const bool pair = task.kind() == TaskKind::pair_classify, per_pos = task.kind() == TaskKind::per_position;
  b.tokens.assign(static_cast<size_t>(b.size * b.length), task.pad_id());
  if (pair) b.tokens2.assign(b.tokens.size(), task.pad_id());
  b.labels.assign(static_cast<size_t>(per_pos ? b.size * b.length : b.size), kIgnoreLabel);
  for (int64_t i = 0; i < b.size; ++i) {
    const Example ex = task.example(split, indices[i]);
    auto place = [&](const std::vector<int32_t>& src, std::vector<int32_t>& dst) {
      if (static_cast<int64_t>(src.size()) > b.length)
        throw std::runtime_error(fmt::format("task example {} of {} has {} tokens, more than seq_len {}", indices[i],
                                             split_name(split), src.size(), b.length));
      std::copy(src.begin(), src.end(), dst.begin() + i * b.length);
    };
    place(ex.input, b.tokens);
    if (pair) place(ex.input2, b.tokens2);
    if (per_pos) place(ex.target, b.labels);
    else b.labels[i] = ex.target.at(0);
  }
  return b;
}

struct Model::Block : Module {
  // conv_*: model.short_conv; ln2..w3: model.mlp (b1, b2 for gelu, w3 for swiglu)
  Var ln1_g, ln1_b, ln2_g, ln2_b, w1, b1, w2, b2, w3, conv_w, conv_b;
  std::unique_ptr<Mixer> mixer;
};

Model::Model(const Json& mp, const VariantSpec& variant, const Json& variant_params, const Task& task, uint64_t seed,
             int64_t max_length)
    : p_(mp), kind_(task.kind()), d_(mp.at("d_model").get<int64_t>()),
      task_length_(std::max(task.seq_len(), max_length)),
      vocab_(task.vocab_size()), classes_(task.num_classes()), pad_id_(task.pad_id()),
      cls_(mp.at("pooling") == "cls"), decoder_(mp.at("pooling") == "last"), use_mask_(mp.at("padding_mask").get<bool>()),
      causal_(mp.at("causal").get<bool>()), dropout_(static_cast<float>(mp.at("dropout").get<double>())),
      seed_(seed) {
  const int64_t heads = mp.at("heads").get<int64_t>(), mlp = mp.at("mlp_dim").get<int64_t>();
  const int layers = static_cast<int>(mp.at("layers").get<int64_t>());
  if (d_ % heads != 0)
    throw UsageError(fmt::format("model.d_model = {} is not a multiple of model.heads = {}; nearest valid d_model: {}",
                                 d_, heads, (d_ / heads + 1) * heads));
  if (kind_ == TaskKind::per_position && cls_)
    throw UsageError("model.pooling = cls does not fit a per-position task; use model.pooling=mean");
  if (decoder_ && kind_ != TaskKind::per_position)
    throw UsageError("model.pooling = last (MAD's autoencoder decoder) needs a per-position task such as "
                     "mad_compression; use model.pooling=mean or cls");
  layers_ = plan_layers(mp, variant, variant_params);
  model_length_ = task_length_ + (cls_ ? 1 : 0);
  auto init = [&](uint64_t a, uint64_t b = 0) { return RngStream(seed, Purpose::init, a, b); };

  tok_emb_ = add_param("tok_emb", init_normal({vocab_, d_}, 1.0f, init(1)));
  const bool positions = mp.value("positions_for", "all") == "all" ||
                         std::any_of(layers_.begin(), layers_.end(), [](const LayerMixer& m) { return m.spec->attention_style; });
  // model.positions=rotary: nothing at the embedding; the attention-style layers rotate q and k.
  const bool rotary = positions && mp.at("positions") == "rotary";
  if (!positions || rotary) {
    // model.positions_for=attention and no attention-style layer: no position information.
  } else if (mp.at("positions") == "learned") {
    pos_emb_ = add_param("pos_emb", init_normal({model_length_, d_}, 0.02f, init(2)));
  } else if (mp.at("positions") == "sinusoidal") {
    sinusoid_ = Tensor::empty({model_length_, d_});
    for (int64_t n = 0; n < model_length_; ++n) sinusoid_row(sinusoid_.data() + n * d_, n, d_, 10000.0);
  } else if (mp.at("positions") == "sinusoidal2d") {
    // Pixel p of a W x W raster: row p / W in the first half of the channels, column p % W in the
    // second; base 100 so that the frequencies span a grid of tens of pixels. The CLS row stays 0.
    const auto W = static_cast<int64_t>(std::llround(std::sqrt(static_cast<double>(task_length_))));
    if (W * W != task_length_ || d_ % 4 != 0 || task_length_ != task.seq_len())
      throw UsageError(fmt::format("model.positions=sinusoidal2d needs one square sequence length and a d_model that "
                                   "is a multiple of 4 (got length {}, d_model {}); use positions=sinusoidal",
                                   task_length_, d_));
    sinusoid_ = Tensor::zeros({model_length_, d_});
    for (int64_t p = 0; p < task_length_; ++p) {
      float* row = sinusoid_.data() + (p + (cls_ ? 1 : 0)) * d_;
      sinusoid_row(row, p / W, d_ / 2, 100.0);
      sinusoid_row(row + d_ / 2, p % W, d_ / 2, 100.0);
    }
  }
  if (cls_) cls_emb_ = add_param("cls", Tensor::zeros({1, 1, d_}));

  const bool with_mlp = mp.value("mlp", true), swiglu = mp.value("mlp_type", "gelu") == "swiglu";
  const int64_t taps = mp.value("short_conv", int64_t{0}), kv_heads = mp.value("kv_heads", int64_t{0});
  for (int l = 0; l < layers; ++l) {
    auto b = std::make_unique<Block>();
    b->ln1_g = b->add_param("ln1.gamma", Tensor::full({d_}, 1.f));
    b->ln1_b = b->add_param("ln1.beta", Tensor::zeros({d_}));
    if (taps > 0) {  // PyTorch Conv1d's default bound 1/sqrt(fan_in), as based's convolution
      b->conv_w = b->add_param("conv.w", init_uniform({d_, taps}, 1.0f / std::sqrt(static_cast<float>(taps)), init(10 + l, 3)));
      b->conv_b = b->add_param("conv.b", Tensor::zeros({d_}));
    }
    if (with_mlp) {
      b->ln2_g = b->add_param("ln2.gamma", Tensor::full({d_}, 1.f));
      b->ln2_b = b->add_param("ln2.beta", Tensor::zeros({d_}));
      b->w1 = b->add_param("mlp.w1", init_xavier_uniform(d_, mlp, init(10 + l, 1)));
      if (swiglu) {  // W1 gate, W3 value, W2 out; MAD's SwiGLU has no biases (bias=False)
        b->w3 = b->add_param("mlp.w3", init_xavier_uniform(d_, mlp, init(10 + l, 4)));
        b->w2 = b->add_param("mlp.w2", init_xavier_uniform(mlp, d_, init(10 + l, 2)));
      } else {  // registered in this order since the first release (the parameter order is the optimiser's)
        b->b1 = b->add_param("mlp.b1", Tensor::zeros({mlp}));
        b->w2 = b->add_param("mlp.w2", init_xavier_uniform(mlp, d_, init(10 + l, 2)));
        b->b2 = b->add_param("mlp.b2", Tensor::zeros({d_}));
      }
    }
    const LayerMixer& lm = layers_[static_cast<size_t>(l)];
    MixerConfig mc{d_, heads, model_length_, l, seed, lm.params, kv_heads};
    if (rotary && lm.spec->attention_style) mc.rotary_base = kRotaryBase;
    b->mixer = lm.spec->make(mc);
    b->add_child("mixer", b->mixer.get());
    add_child(fmt::format("blocks.{}", l), b.get());
    blocks_.push_back(std::move(b));
  }
  final_gamma_ = add_param("final_ln.gamma", Tensor::full({d_}, 1.f));
  final_beta_ = add_param("final_ln.beta", Tensor::zeros({d_}));
  if (decoder_) {
    // MAD's AutoEncoder decoder ("hard-coded non-expanding MLP decoder"), LayerNorm for its RMSNorm
    // as everywhere in this model: per output position n, the pooled state + row n of its sin-cos
    // table -> norm, Linear(d, d), GELU, norm, Linear(d, d), GELU -> norm, Linear(d, classes).
    dec_pos_ = mad_sincos(task_length_, d_);
    for (int k = 0; k < 3; ++k) {
      dec_g_[k] = add_param(fmt::format("decoder.ln{}.gamma", k + 1), Tensor::full({d_}, 1.f));
      dec_b_[k] = add_param(fmt::format("decoder.ln{}.beta", k + 1), Tensor::zeros({d_}));
    }
    for (int k = 0; k < 2; ++k) {
      dec_w_[k] = add_param(fmt::format("decoder.w{}", k + 1), init_xavier_uniform(d_, d_, init(6, k)));
      dec_bias_[k] = add_param(fmt::format("decoder.b{}", k + 1), Tensor::zeros({d_}));
    }
  }
  if (kind_ == TaskKind::per_position) {
    head_w2_ = add_param("head.w", init_xavier_uniform(d_, classes_, init(3)));
    head_b2_ = add_param("head.b", Tensor::zeros({classes_}));
  } else {
    const int64_t in = kind_ == TaskKind::pair_classify ? 4 * d_ : d_;
    head_w1_ = add_param("head.w1", init_xavier_uniform(in, mlp, init(4)));
    head_b1_ = add_param("head.b1", Tensor::zeros({mlp}));
    head_w2_ = add_param("head.w2", init_xavier_uniform(mlp, classes_, init(5)));
    head_b2_ = add_param("head.b2", Tensor::zeros({classes_}));
  }
}

Model::~Model() = default;

// tokens [B, N] -> pooled [B, D] (classification) or states [B, N, D] (per position)
Var Model::encode(const std::vector<int32_t>& tokens, int64_t B, int64_t N, bool training, int64_t step) {
  const int64_t L = N + (cls_ ? 1 : 0);
  Var x = embedding(tokens, {B, N}, tok_emb_);  // [B, N, D]
  if (cls_) x = concat({add(Var(Tensor::zeros({B, 1, d_})), cls_emb_), x}, 1);  // [B, L, D]
  // Positions: the first L rows of the tables (all of them at the longest length).
  if (pos_emb_.defined()) x = add(x, L == model_length_ ? pos_emb_ : slice(pos_emb_, 0, 0, L));
  else if (sinusoid_.defined())
    x = add(x, Var(L == model_length_ ? sinusoid_ : slice(Var(sinusoid_), 0, 0, L).value()));

  Tensor key_mask;
  Tensor keep;  // [B, L, 1]: 1 for real tokens (mean pooling weights)
  if (use_mask_) {
    std::vector<int32_t> mask_tokens = tokens;
    if (cls_) {  // the CLS position is never padding
      mask_tokens.assign(static_cast<size_t>(B * L), 1);
      for (int64_t b = 0; b < B; ++b)
        std::copy(tokens.begin() + b * N, tokens.begin() + (b + 1) * N, mask_tokens.begin() + b * L + 1);
    }
    key_mask = key_padding_mask(mask_tokens, B, L, pad_id_);
    keep = Tensor::empty({B, L, 1});
    for (int64_t i = 0; i < B * L; ++i) keep[i] = mask_tokens[i] == pad_id_ ? 0.f : 1.f;
  }
  MixerContext ctx;
  ctx.key_mask = key_mask.defined() ? &key_mask : nullptr;
  ctx.causal = causal_;
  ctx.training = training;
  ctx.seed = seed_;
  ctx.step = step;
  auto drop = [&](const Var& v, uint64_t layer, uint64_t site) {
    return dropout(v, dropout_, RngStream(seed_, Purpose::dropout, static_cast<uint64_t>(step), layer, site), training);
  };
  x = drop(x, 0, 0);
  for (size_t l = 0; l < blocks_.size(); ++l) {
    Block& b = *blocks_[l];
    ctx.layer = static_cast<int>(l);
    Var u = layer_norm(x, b.ln1_g, b.ln1_b);
    // Beside the identity, as Based's and Zoology's BaseConv: the mixer keeps each token and gains
    // its K - 1 predecessors (a plain conv, random at init, smears the tokens the mixer must match).
    // Causal whatever model.causal says: a layer's input never reads later tokens through it.
    if (b.conv_w.defined()) u = add(u, short_conv(u, b.conv_w, b.conv_b, /*causal=*/true));
    x = add(x, drop(b.mixer->forward(u, ctx), l + 1, 1));
    if (!b.w1.defined()) continue;  // model.mlp=false
    const Var v = layer_norm(x, b.ln2_g, b.ln2_b);  // [B, L, D] -> hidden h [B, L, mlp_dim]
    const Var h = b.w3.defined() ? mul(silu(linear(v, b.w1)), linear(v, b.w3))  // SwiGLU
                                 : gelu(linear(v, b.w1, b.b1));
    x = add(x, drop(linear(drop(h, l + 1, 2), b.w2, b.b2), l + 1, 3));
  }
  x = layer_norm(x, final_gamma_, final_beta_);
  if (kind_ == TaskKind::per_position) return x;
  if (cls_) return reshape(slice(x, 1, 0, 1), {B, d_});
  if (!keep.defined()) return mean_dim(x, 1);
  Tensor inv_count = Tensor::empty({B, 1});
  for (int64_t b = 0; b < B; ++b) {
    float c = 0;
    for (int64_t n = 0; n < L; ++n) c += keep[b * L + n];
    inv_count[b] = 1.f / std::max(c, 1.f);
  }
  return mul(sum_dim(mul(x, Var(keep)), 1), Var(inv_count));  // [B, D]
}

Var Model::forward(const Batch& batch, bool training, int64_t step) {
  const int64_t B = batch.size, N = batch.length;
  if (N < 1 || N > task_length_)
    throw std::invalid_argument(fmt::format("batch length {} is not in [1, {}], the lengths the model was built for", N,
                                            task_length_));
  Var h = encode(batch.tokens, B, N, training, step);
  if (decoder_) {  // MAD's AutoEncoder: everything the decoder knows is the last position's state
    Var x = add(slice(h, 1, N - 1, 1), Var(N == task_length_ ? dec_pos_ : slice(Var(dec_pos_), 0, 0, N).value()));
    for (int k = 0; k < 2; ++k) x = gelu(linear(layer_norm(x, dec_g_[k], dec_b_[k]), dec_w_[k], dec_bias_[k]));
    h = layer_norm(x, dec_g_[2], dec_b_[2]);  // [B, N, D]
  }
  if (kind_ == TaskKind::per_position) return linear(reshape(h, {B * N, d_}), head_w2_, head_b2_);
  if (kind_ == TaskKind::pair_classify) {
    Var h2 = encode(batch.tokens2, B, N, training, step);
    h = concat({h, h2, mul(h, h2), sub(h, h2)}, 1);  // [B, 4D]
  }
  return linear(relu(linear(h, head_w1_, head_b1_)), head_w2_, head_b2_);
}

}  // namespace ab
