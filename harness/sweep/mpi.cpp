// MPI scheduling of a sweep: rank 0 hands out cells one at a time as ranks ask for work; the
// other ranks run each cell as a child process (CellRunner) and report back. All ranks share the
// results directory, so `report` reads their cells as one set.
#ifdef ATTNBENCH_WITH_MPI
#include <mpi.h>

#include "sweep/runner.hpp"

namespace ab {
namespace {
constexpr int kTag = 7;
constexpr int kAskForWork = -1;  // a worker's first message; later ones carry the finished cell
constexpr int kNoMoreWork = -1;
}  // namespace

bool run_sweep_mpi(const std::vector<size_t>& todo, CellRunner& runner,
                   const std::function<void(size_t, const std::string&)>& finished) {
  int initialised = 0;
  MPI_Initialized(&initialised);
  if (!initialised) MPI_Init(nullptr, nullptr);
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  if (size < 2) {
    // A single rank has nobody to hand work to: it runs everything itself.
    for (size_t cell : todo) {
      runner.start(cell);
      while (runner.running())
        for (const auto& [c, st] : runner.poll()) finished(c, st);
    }
    MPI_Finalize();
    return true;
  }
  if (rank == 0) {
    size_t next = 0;
    int active = size - 1;
    while (active > 0) {
      int msg = 0;
      MPI_Status st;
      MPI_Recv(&msg, 1, MPI_INT, MPI_ANY_SOURCE, kTag, MPI_COMM_WORLD, &st);
      if (msg != kAskForWork) finished(static_cast<size_t>(msg), run_status(runner.run_file(static_cast<size_t>(msg))));
      int reply = next < todo.size() ? static_cast<int>(todo[next++]) : kNoMoreWork;
      if (reply == kNoMoreWork) --active;
      MPI_Send(&reply, 1, MPI_INT, st.MPI_SOURCE, kTag, MPI_COMM_WORLD);
    }
  } else {
    int msg = kAskForWork;
    for (;;) {
      MPI_Send(&msg, 1, MPI_INT, 0, kTag, MPI_COMM_WORLD);
      int cell = 0;
      MPI_Recv(&cell, 1, MPI_INT, 0, kTag, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
      if (cell == kNoMoreWork) break;
      runner.start(static_cast<size_t>(cell));
      while (runner.running()) runner.poll();
      msg = cell;
    }
  }
  MPI_Finalize();
  return rank == 0;
}

}  // namespace ab
#endif
