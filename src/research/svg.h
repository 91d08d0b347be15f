// A small SVG chart writer: a figure is a grid of panels, each with axes, ticks, labelled
// series (lines and/or markers), arrows and text notes. Output is a self-contained SVG string.
#pragma once
#include <string>
#include <vector>

namespace parscale::research::svg {

enum class Marker { none, circle, star, square };

struct Series {
  std::string label;  // legend text; empty = not in the legend
  std::vector<double> x, y;
  std::string color = "#1f77b4";
  bool line = true;
  bool dashed = false;
  double line_width = 1.8;
  Marker marker = Marker::circle;
  double marker_size = 4;
};

struct Arrow {
  double x0 = 0, y0 = 0, x1 = 0, y1 = 0;  // data coordinates
  std::string color = "#d62728";
  bool dashed = false;
  std::string text;  // placed below the arrow, from its left end
};

struct Panel {
  std::string title, x_label, y_label;
  bool log_x = false;
  std::vector<Series> series;
  std::vector<Arrow> arrows;
  bool legend = true;
  // Axis ranges; when min >= max they are taken from the data with a 5% margin.
  double x_min = 0, x_max = 0, y_min = 0, y_max = 0;
  // Formats tick values on the x axis as parameter counts (500M, 1B, 2B...).
  bool x_as_count = false;
};

struct Figure {
  std::string title;
  int columns = 1;
  double panel_width = 420, panel_height = 320;
  std::vector<Panel> panels;
};

std::string render(const Figure& figure);
// Writes render(figure) to `path`; throws parscale::Error if the file cannot be written.
void write(const Figure& figure, const std::string& path);

// "Nice" tick positions covering [lo, hi] (about `target` of them), exposed for tests.
std::vector<double> linear_ticks(double lo, double hi, int target = 6);
std::vector<double> log_ticks(double lo, double hi);

}  // namespace parscale::research::svg
