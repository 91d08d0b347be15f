// Rows of a parallel-scaling-law data set: (N non-embedding parameters, P streams, final loss).
#pragma once
#include <string>
#include <vector>

namespace parscale::research {

struct ScalingRow {
  double params = 0;  // N: non-embedding parameters, ParScale parameters included (> 0)
  double streams = 1; // P: number of parallel streams (>= 1)
  double loss = 0;    // final training loss in nats (> 0)
  std::string origin; // "file:line" (CSV) or "file[row]" (JSON), for error messages
};

// CSV: '#' comment lines and blank lines are skipped; the first other line is a header that
// must name the columns N, P and loss (case-insensitive; extra columns are ignored).
std::vector<ScalingRow> parse_scaling_csv(const std::string& text, const std::string& source);
// JSON: an array of objects with numeric fields "N", "P", "loss" (or {"rows": [...]}).
std::vector<ScalingRow> parse_scaling_json(const std::string& text, const std::string& source);
// Reads a file; JSON if the name ends in .json or the content starts with '[' or '{', else CSV.
// Every failure throws parscale::Error naming the file, the row and the field.
std::vector<ScalingRow> load_scaling_rows(const std::string& path);

}  // namespace parscale::research
