// The run-file reader a resumed sweep uses to decide which cells are done.
#include "train/train.hpp"
#include "fuzz_common.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::expect_clean([&] { (void)ab::run_file_status(fuzz::text(data, size)); });
  return 0;
}
