// Data-parallel process group. With MPI (built when CMake finds it) and the process started by
// mpirun/mpiexec, ranks average gradients with MPI_Allreduce; otherwise a single process.
#pragma once
#include <cstdint>

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
  // Whether MPI support was compiled in.
  static bool mpi_available();

 private:
  int rank_ = 0, size_ = 1;
  bool initialised_ = false;
};

}  // namespace parscale::train
