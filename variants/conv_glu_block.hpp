#pragma once
// The block around a per-channel long convolution that safari's S4 and long-conv layers share
// (s4d, long_conv): y = conv(u) + D u (the skip), then GLU(GELU(y) W_out + b_out).
#include <cstdint>

#include "attnbench/variant.hpp"

namespace ab_conv_glu {

class ConvGluMixer : public ab::Mixer {
 protected:
  explicit ConvGluMixer(int64_t d_model) : d_(d_model) {}

  // skip D [D] ~ N(0, 1), W_out [D, 2D] Xavier-uniform, b_out [2D] = 0; after the layer's own
  // parameters (the order names the checkpoint's tensors).
  void add_output_params(ab::RngStream skip, ab::RngStream out) {
    skip_ = add_param("skip", ab::init_normal({d_}, 1.0f, skip));
    w_out_ = add_param("w_out", ab::init_xavier_uniform(d_, 2 * d_, out));
    b_out_ = add_param("b_out", ab::Tensor::zeros({2 * d_}));
  }

  // conv, u: [B, N, D] -> GLU(GELU(conv + D u) W_out + b_out) [B, N, D]
  ab::Var output(const ab::Var& conv, const ab::Var& u) const {
    return glu_out(ab::gelu(ab::add(conv, ab::mul(u, skip_))));
  }

  // [B, N, D] -> GLU(h W_out + b_out) [B, N, D]
  ab::Var glu_out(const ab::Var& h) const {
    const ab::Var z = ab::linear(h, w_out_, b_out_);  // [B, N, 2D]
    return ab::mul(ab::slice(z, 2, 0, d_), ab::sigmoid(ab::slice(z, 2, d_, d_)));
  }

  int64_t d_;
  ab::Var skip_, w_out_, b_out_;
};

}  // namespace ab_conv_glu
