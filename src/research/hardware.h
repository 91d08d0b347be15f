// Hardware descriptions for the roofline cost model.
#pragma once
#include <string>
#include <vector>

namespace parscale::research {

struct Hardware {
  std::string name;
  double peak_flops = 0;          // peak dense matmul FLOP/s at the compute precision
  double memory_bandwidth = 0;    // peak memory bandwidth, bytes/s
  double flop_efficiency = 1;     // achieved / peak FLOP/s, in (0, 1]
  double memory_efficiency = 1;   // achieved / peak bandwidth, in (0, 1]
  double capacity_bytes = 0;      // device memory; 0 = unlimited
  std::string note;               // where the numbers come from

  double effective_flops() const { return peak_flops * flop_efficiency; }
  double effective_bandwidth() const { return memory_bandwidth * memory_efficiency; }
  void validate() const;  // throws parscale::Error naming the bad field
};

// Datasheet presets (16-bit dense tensor-core FLOP/s, HBM/GDDR bandwidth). The efficiencies are
// upstream's defaults for the paper's analysis: FLOP 0.7, memory 0.9.
const std::vector<Hardware>& hardware_presets();
// A preset by name (case-insensitive): "a100-sxm-80gb", "h100-sxm-80gb", "h200-sxm-141gb",
// "rtx-4090", or "this-machine" (measured now with hardware_probe.h, efficiencies 1).
Hardware hardware_by_name(const std::string& name);
std::vector<std::string> hardware_names();

}  // namespace parscale::research
