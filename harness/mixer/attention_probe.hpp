#pragma once
// Internal hook: while a probe is set on this thread, AttentionMixer::forward hands it the q, k, v
// [B, H, N, d] of every layer before attend(). Used by the trained-input fidelity (fidelity.cpp).
#include <functional>

#include "attnbench/tensor.hpp"

namespace ab {

using AttentionProbe = std::function<void(int layer, const Tensor& q, const Tensor& k, const Tensor& v)>;
AttentionProbe& attention_probe();  // thread-local; empty = off

}  // namespace ab
