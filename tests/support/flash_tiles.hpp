#pragma once
// Flash-attention tiles for the finite-difference checks on 9 positions: smaller than the sequence
// and dividing it in neither pass, so every ragged edge tile of forward and backward is
// differentiated.
#include "attnbench/kernels/flash_attention.hpp"

namespace ab::test {

inline FlashAttentionOptions ragged_small_tiles() {
  return {.block_q = 4, .block_k = 3, .bwd_block_q = 2, .bwd_block_k = 4};
}

}  // namespace ab::test
