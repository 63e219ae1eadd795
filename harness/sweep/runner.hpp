#pragma once
// Runs sweep cells as child processes (time and memory limits, failure records). Used by the
// local scheduler of `attnbench sweep` (cli/cmd_sweep.cpp) and by the MPI workers (sweep/mpi.cpp).
#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "sweep/sweep.hpp"

namespace ab {

class CellRunner {
 public:
  CellRunner(const SweepSpec& spec, std::filesystem::path dir, double time_limit, int64_t memory_limit)
      : spec_(spec), dir_(std::move(dir)), time_limit_(time_limit), memory_limit_(memory_limit) {}
  void start(size_t cell);
  // Waits up to `wait_ms` for a child to end; returns the cells that ended, with their status
  // (a failure record is written for a child that died without its run file).
  std::vector<std::pair<size_t, std::string>> poll(int wait_ms = 100);
  size_t running() const { return running_.size(); }
  std::filesystem::path run_file(size_t cell) const;

 private:
  // One version of a file: a run file written anew (temporary file + rename) has a new inode.
  struct FileVersion {
    uint64_t dev = 0, ino = 0;
    int64_t mtime_ns = -1;  // -1: no file
    bool operator==(const FileVersion&) const = default;
  };
  static FileVersion version_of(const std::filesystem::path& p);
  struct Child {
    pid_t pid;
    size_t cell;
    std::chrono::steady_clock::time_point start;
    FileVersion before;  // the cell's run file when the child started (a previous result, or none)
    bool timed_out = false;
  };
  const SweepSpec& spec_;
  std::filesystem::path dir_;
  double time_limit_;
  int64_t memory_limit_;
  std::vector<Child> running_;
};

// The status recorded in a run file, or "" if there is none or it cannot be read.
std::string run_status(const std::filesystem::path& p);

#ifdef ATTNBENCH_WITH_MPI
// Rank 0 hands cells out as ranks free up; every other rank runs one cell at a time.
// `finished(cell, status)` is called on rank 0. Returns on every rank when all cells are done:
// true on rank 0.
bool run_sweep_mpi(const std::vector<size_t>& todo, CellRunner& runner,
                   const std::function<void(size_t, const std::string&)>& finished);
#endif

}  // namespace ab
