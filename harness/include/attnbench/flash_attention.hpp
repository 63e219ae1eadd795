#pragma once
// Forwarding header, kept for plugins written against plugin ABI 3: the fused kernels now live in
// attnbench/kernels/. Include "attnbench/kernels/flash_attention.hpp" instead; this file goes with ABI 5.
#include "attnbench/kernels/flash_attention.hpp"
