#pragma once
// A sweep's results directory: one writer per cell, and no litter from writers that died.
#include <filesystem>
#include <string>

#include "attnbench/params.hpp"

namespace ab {

// Locks `dir` for this process's lifetime (flock, released when the process ends however it ends).
// A whole sweep locks DIR/.lock exclusively; a shard (`shard` = "shard-i-of-n") or an MPI rank
// (`shared` = true) shares DIR/.lock with the others, and a shard also locks its own
// DIR/.lock.<shard> exclusively. The exclusive holder's pid is written in its lock file. A second
// sweep that would run the same cells gets a UsageError naming the holder's pid.
void lock_results_dir(const std::filesystem::path& dir, const std::string& shard, bool shared);

// Removes, in `dir`, temporary files "<name>.tmp.<pid>" whose writer no longer runs (a killed
// sweep or cell); those of live writers (another shard) are left alone.
void remove_stale_temporaries(const std::filesystem::path& dir);

// The loaded plugins as the manifest records them: [{path, hash}].
Json plugins_record();
// For --resume: a UsageError naming every plugin that the manifest at `manifest` records and
// whose file now hashes differently (or is gone). Cells of two builds would be mixed otherwise.
// A missing or unreadable manifest records nothing.
void require_same_plugins(const std::filesystem::path& manifest);

}  // namespace ab
