// Data-parallel process group. With MPI (built when CMake finds it) and the process started by
// mpirun/mpiexec, ranks average gradients with MPI_Allreduce; otherwise a single process.
#pragma once
#include <cstdint>
#include <string>

namespace parscale::train {

class ProcessGroup {
 public:
  // Initialises MPI when this process was launched by an MPI launcher (OMPI_COMM_WORLD_SIZE,
  // PMI_SIZE or PMIX_RANK in the environment); finalises it in the destructor.
  ProcessGroup();
  ~ProcessGroup();
  ProcessGroup(const ProcessGroup&) = delete;
  ProcessGroup& operator=(const ProcessGroup&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  bool root() const { return rank_ == 0; }
  // Element-wise sum over ranks, in place (no-op for one process).
  void allreduce_sum(float* data, int64_t n) const;
  void allreduce_sum(double* data, int64_t n) const;
  void barrier() const;
  // Ends the whole job after a failure on this rank: prints "parscale: error on rank r of n:
  // <message>" to stderr, then MPI_Abort(MPI_COMM_WORLD, 1), so that no other rank stays blocked
  // in a collective this rank will never join. For one process it only throws Error(message).
  [[noreturn]] void abort_job(const std::string& message) const;
  // Whether MPI support was compiled in.
  static bool mpi_available();

 private:
  int rank_ = 0, size_ = 1;
  bool initialised_ = false;
};

}  // namespace parscale::train
