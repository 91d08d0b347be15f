#include "train/dist.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>

#include "core/error.h"

#ifdef PARSCALE_HAVE_MPI
#include <mpi.h>
#endif

namespace parscale::train {

bool ProcessGroup::mpi_available() {
#ifdef PARSCALE_HAVE_MPI
  return true;
#else
  return false;
#endif
}

ProcessGroup::ProcessGroup() {
  const bool launched = std::getenv("OMPI_COMM_WORLD_SIZE") || std::getenv("PMI_SIZE") || std::getenv("PMIX_RANK");
#ifdef PARSCALE_HAVE_MPI
  if (!launched) return;
  int already = 0;
  MPI_Initialized(&already);
  if (!already) {
    MPI_Init(nullptr, nullptr);
    initialised_ = true;
  }
  MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
  MPI_Comm_size(MPI_COMM_WORLD, &size_);
#else
  if (launched) {
    const char* n = std::getenv("OMPI_COMM_WORLD_SIZE");
    if (n && std::atoi(n) > 1)
      throw Error("train: started by an MPI launcher, but this parscale was built without MPI (install libopenmpi-dev and rebuild)");
  }
#endif
}

ProcessGroup::~ProcessGroup() {
#ifdef PARSCALE_HAVE_MPI
  if (initialised_) MPI_Finalize();
#endif
}

void ProcessGroup::allreduce_sum(float* data, int64_t n) const {
#ifdef PARSCALE_HAVE_MPI
  if (size_ == 1) return;
  constexpr int64_t kChunk = int64_t{1} << 28;
  for (int64_t off = 0; off < n; off += kChunk)
    MPI_Allreduce(MPI_IN_PLACE, data + off, static_cast<int>(std::min(kChunk, n - off)), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
#else
  (void)data;
  (void)n;
#endif
}

void ProcessGroup::allreduce_sum(double* data, int64_t n) const {
#ifdef PARSCALE_HAVE_MPI
  if (size_ == 1) return;
  MPI_Allreduce(MPI_IN_PLACE, data, static_cast<int>(n), MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
#else
  (void)data;
  (void)n;
#endif
}

void ProcessGroup::abort_job(const std::string& message) const {
#ifdef PARSCALE_HAVE_MPI
  if (size_ > 1) {
    std::fflush(stdout);
    std::fprintf(stderr, "parscale: error on rank %d of %d: %s (aborting all ranks)\n", rank_, size_, message.c_str());
    std::fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, 1);
    std::_Exit(1);  // MPI_Abort does not return; this keeps [[noreturn]] true if it ever did
  }
#endif
  throw Error(message);
}

void ProcessGroup::barrier() const {
#ifdef PARSCALE_HAVE_MPI
  if (size_ > 1) MPI_Barrier(MPI_COMM_WORLD);
#endif
}

}  // namespace parscale::train
