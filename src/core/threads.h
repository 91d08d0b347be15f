// Thread control. Kernels parallelise with OpenMP (a persistent pool); this sets its size.
#pragma once

namespace parscale {

// Sets the number of worker threads (n <= 0: all hardware threads). Returns the number in use.
int set_num_threads(int n);
int num_threads();

}  // namespace parscale
