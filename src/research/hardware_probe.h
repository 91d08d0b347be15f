// Short measurements of this machine, for the cost model's "this-machine" hardware and for any
// tool that wants a roofline of the host CPU.
#pragma once

namespace parscale::research {

struct BandwidthProbe {
  double bytes_per_second = 0;  // best of the repetitions
  double bytes_moved = 0;       // per repetition
  int threads = 0;
};
// STREAM-style triad a[i] = b[i] + s * c[i] over three float arrays of `elements` each
// (default 3 x 128 MiB, far beyond any cache), on the thread pool; counts 12 bytes per element
// (two reads, one write; write-allocate traffic not counted, as STREAM does). Best of `repeats`.
BandwidthProbe measure_memory_bandwidth(long elements = 32L << 20, int repeats = 5);

struct FlopProbe {
  double flops_per_second = 0;  // fp32, counting an FMA as 2 FLOPs; best of the repetitions
  int threads = 0;
};
// Every pool thread runs `iterations` rounds of 64 independent fp32 FMAs held in registers.
FlopProbe measure_fp32_fma_flops(long iterations = 2'500'000, int repeats = 3);

}  // namespace parscale::research
