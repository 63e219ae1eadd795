#pragma once
// The tracking allocator's timeline, for `check --trace-memory`: while a recorder is set, the
// live total after every allocation is appended to it, so that the moment of a peak can be
// followed across sizes. One recorder at a time, process-wide; not part of the SDK.
#include <cstdint>
#include <vector>

namespace ab {

// nullptr stops recording.
void set_allocation_recorder(std::vector<int64_t>* live_after_each_allocation);

}  // namespace ab
