#pragma once
// What a decoding mixer carries from one token to the next (Mixer::begin_decode / decode_step).
// Its own header, free of JSON, so that kernels with a decode form need not see the variant
// contract.
#include <cstdint>

namespace ab {

// The state of a batch of sequences being decoded.
class DecodeState {
 public:
  virtual ~DecodeState() = default;
  virtual int64_t bytes() const = 0;  // bytes held now (Cost::state_bytes predicts it)
};

}  // namespace ab
