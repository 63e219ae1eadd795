// The sweep-spec parser and grid expansion on arbitrary text.
#include "sweep/sweep.hpp"
#include "fuzz_common.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::expect_clean([&] {
    const ab::SweepSpec spec = ab::parse_sweep_spec(fuzz::text(data, size), "fuzz");
    for (const auto& c : spec.cells) (void)c.command("out.json");
  });
  return 0;
}
