#include "research/hardware.h"

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <sstream>

#include "core/error.h"
#include "research/hardware_probe.h"

namespace parscale::research {

void Hardware::validate() const {
  const std::string who = "hardware '" + name + "': ";
  check(peak_flops > 0, who + "peak FLOP/s must be > 0");
  check(memory_bandwidth > 0, who + "memory bandwidth must be > 0");
  check(flop_efficiency > 0 && flop_efficiency <= 1, who + "FLOP efficiency must be in (0, 1]");
  check(memory_efficiency > 0 && memory_efficiency <= 1,
        who + "memory efficiency must be in (0, 1]");
  check(capacity_bytes >= 0, who + "capacity must be >= 0");
}

const std::vector<Hardware>& hardware_presets() {
  constexpr double T = 1e12, G = 1e9, GiB = 1024.0 * 1024.0 * 1024.0;
  static const std::vector<Hardware> presets = {
      {"a100-sxm-80gb", 312 * T, 2039 * G, 0.7, 0.9, 80 * GiB,
       "NVIDIA A100 SXM 80GB datasheet: 312 TFLOP/s fp16/bf16 dense, 2039 GB/s (the paper's GPU)"},
      {"h100-sxm-80gb", 989.4 * T, 3352 * G, 0.7, 0.9, 80 * GiB,
       "NVIDIA H100 SXM5 80GB datasheet: 989.4 TFLOP/s bf16 dense, 3.35 TB/s"},
      {"h200-sxm-141gb", 989.4 * T, 4800 * G, 0.7, 0.9, 141 * GiB,
       "NVIDIA H200 SXM 141GB datasheet: 989.4 TFLOP/s bf16 dense, 4.8 TB/s"},
      {"rtx-4090", 165.2 * T, 1008 * G, 0.7, 0.9, 24 * GiB,
       "NVIDIA RTX 4090 (Ada whitepaper): 165.2 TFLOP/s fp16 tensor with fp32 accumulate, 1008 GB/s"},
  };
  return presets;
}

std::vector<std::string> hardware_names() {
  std::vector<std::string> names;
  for (const Hardware& h : hardware_presets()) names.push_back(h.name);
  names.push_back("this-machine");
  return names;
}

Hardware hardware_by_name(const std::string& requested) {
  std::string name = requested;
  for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  for (const Hardware& h : hardware_presets()) {
    if (h.name == name) return h;
  }
  if (name == "this-machine") {
    BandwidthProbe bw = measure_memory_bandwidth();
    FlopProbe fl = measure_fp32_fma_flops();
    Hardware h;
    h.name = "this-machine";
    h.peak_flops = fl.flops_per_second;
    h.memory_bandwidth = bw.bytes_per_second;
    h.flop_efficiency = 1;  // the probes measure achieved rates already
    h.memory_efficiency = 1;
    const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    h.capacity_bytes = pages > 0 && page > 0 ? static_cast<double>(pages) * page : 0;
    std::ostringstream note;
    note << "measured now: fp32 FMA " << fl.flops_per_second / 1e9 << " GFLOP/s on " << fl.threads
         << " threads; triad bandwidth " << bw.bytes_per_second / 1e9 << " GB/s on " << bw.threads
         << " threads";
    h.note = note.str();
    return h;
  }
  std::string names;
  for (const std::string& n : hardware_names()) names += (names.empty() ? "" : ", ") + n;
  throw Error("unknown hardware '" + requested + "' (expected one of: " + names + ")");
}

}  // namespace parscale::research
