#include "research/scaling_data.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"

namespace parscale::research {
namespace {

std::string trim(const std::string& s) {
  size_t b = 0, e = s.size();
  while (b < e && std::isspace(static_cast<unsigned char>(s[b]))) ++b;
  while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1]))) --e;
  return s.substr(b, e - b);
}

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::vector<std::string> split_csv_line(const std::string& line) {
  std::vector<std::string> cells;
  std::string cell;
  for (char c : line) {
    if (c == ',') {
      cells.push_back(trim(cell));
      cell.clear();
    } else {
      cell += c;
    }
  }
  cells.push_back(trim(cell));
  return cells;
}

double parse_number(const std::string& cell, const std::string& where, const std::string& field) {
  check(!cell.empty(), where + ": field '" + field + "' is empty, expected a number");
  size_t used = 0;
  double value = 0;
  try {
    value = std::stod(cell, &used);
  } catch (const std::exception&) {
    throw Error(where + ": field '" + field + "' = '" + cell + "' is not a number");
  }
  check(used == cell.size(), where + ": field '" + field + "' = '" + cell + "' is not a number");
  return value;
}

// The value rules every row obeys, whatever its format.
void validate_row(const ScalingRow& row) {
  auto fmt = [](double v) {
    std::ostringstream o;
    o << v;
    return o.str();
  };
  check(std::isfinite(row.params) && row.params > 0,
        row.origin + ": field 'N' must be a positive parameter count, found " + fmt(row.params));
  check(std::isfinite(row.streams) && row.streams >= 1,
        row.origin + ": field 'P' must be >= 1 (number of parallel streams), found " +
            fmt(row.streams));
  check(std::isfinite(row.loss) && row.loss > 0,
        row.origin + ": field 'loss' must be positive, found " + fmt(row.loss));
}

}  // namespace

std::vector<ScalingRow> parse_scaling_csv(const std::string& text, const std::string& source) {
  std::istringstream in(text);
  std::string line;
  int line_no = 0;
  int col_n = -1, col_p = -1, col_loss = -1;
  size_t header_cells = 0;
  bool have_header = false;
  std::vector<ScalingRow> rows;
  while (std::getline(in, line)) {
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    std::string t = trim(line);
    if (t.empty() || t[0] == '#') continue;
    std::vector<std::string> cells = split_csv_line(t);
    std::string where = source + ":" + std::to_string(line_no);
    if (!have_header) {
      for (size_t i = 0; i < cells.size(); ++i) {
        std::string name = lower(cells[i]);
        if (name == "n") col_n = static_cast<int>(i);
        if (name == "p") col_p = static_cast<int>(i);
        if (name == "loss") col_loss = static_cast<int>(i);
      }
      std::string missing;
      if (col_n < 0) missing += " N";
      if (col_p < 0) missing += " P";
      if (col_loss < 0) missing += " loss";
      check(missing.empty(), where + ": header '" + t + "' lacks column(s):" + missing +
                                 " (expected a header naming N,P,loss)");
      header_cells = cells.size();
      have_header = true;
      continue;
    }
    check(cells.size() == header_cells,
          where + ": row has " + std::to_string(cells.size()) + " fields, the header has " +
              std::to_string(header_cells));
    ScalingRow row;
    row.origin = where;
    row.params = parse_number(cells[col_n], where, "N");
    row.streams = parse_number(cells[col_p], where, "P");
    row.loss = parse_number(cells[col_loss], where, "loss");
    validate_row(row);
    rows.push_back(row);
  }
  check(have_header, source + ": no header line found (expected a CSV header naming N,P,loss)");
  check(!rows.empty(), source + ": no data rows after the header");
  return rows;
}

std::vector<ScalingRow> parse_scaling_json(const std::string& text, const std::string& source) {
  nlohmann::json doc;
  try {
    doc = nlohmann::json::parse(text);
  } catch (const nlohmann::json::parse_error& e) {
    throw Error(source + ": malformed JSON at byte " + std::to_string(e.byte) +
                " (expected an array of {\"N\", \"P\", \"loss\"} objects)");
  }
  if (doc.is_object() && doc.contains("rows")) doc = doc["rows"];
  check(doc.is_array(), source + ": expected a JSON array of rows (or {\"rows\": [...]}), found " +
                            std::string(doc.type_name()));
  std::vector<ScalingRow> rows;
  for (size_t i = 0; i < doc.size(); ++i) {
    const auto& item = doc[i];
    std::string where = source + "[" + std::to_string(i) + "]";
    check(item.is_object(), where + ": expected an object with N, P, loss, found " +
                                std::string(item.type_name()));
    ScalingRow row;
    row.origin = where;
    for (const char* field : {"N", "P", "loss"}) {
      check(item.contains(field), where + ": missing field '" + field + "'");
      check(item[field].is_number(), where + ": field '" + field + "' is not a number (found " +
                                         std::string(item[field].type_name()) + ")");
    }
    row.params = item["N"].get<double>();
    row.streams = item["P"].get<double>();
    row.loss = item["loss"].get<double>();
    validate_row(row);
    rows.push_back(row);
  }
  check(!rows.empty(), source + ": no rows");
  return rows;
}

std::vector<ScalingRow> load_scaling_rows(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  check(static_cast<bool>(in), path + ": cannot open scaling data file");
  std::stringstream buffer;
  buffer << in.rdbuf();
  std::string text = buffer.str();
  std::string first = trim(text).substr(0, 1);
  bool is_json = (path.size() >= 5 && lower(path.substr(path.size() - 5)) == ".json") ||
                 first == "[" || first == "{";
  return is_json ? parse_scaling_json(text, path) : parse_scaling_csv(text, path);
}

}  // namespace parscale::research
