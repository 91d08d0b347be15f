#include "research/svg.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>
#include <sstream>

#include "core/error.h"

namespace parscale::research::svg {
namespace {

std::string esc(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      default: out += c;
    }
  }
  return out;
}

std::string num(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f", v);
  return buf;
}

std::string tick_label(double v, bool as_count) {
  char buf[32];
  if (as_count) {
    if (std::abs(v) >= 1e9) std::snprintf(buf, sizeof buf, "%gB", v / 1e9);
    else if (std::abs(v) >= 1e6) std::snprintf(buf, sizeof buf, "%gM", v / 1e6);
    else std::snprintf(buf, sizeof buf, "%g", v);
  } else {
    std::snprintf(buf, sizeof buf, "%g", std::abs(v) < 1e-12 ? 0.0 : v);
  }
  return buf;
}

// A five-pointed star path centred on (cx, cy).
std::string star_path(double cx, double cy, double r) {
  std::ostringstream p;
  for (int i = 0; i < 10; ++i) {
    const double radius = (i % 2 == 0) ? r : r * 0.45;
    const double angle = -M_PI / 2 + i * M_PI / 5;
    p << (i == 0 ? "M" : "L") << num(cx + radius * std::cos(angle)) << ","
      << num(cy + radius * std::sin(angle));
  }
  p << "Z";
  return p.str();
}

}  // namespace

std::vector<double> linear_ticks(double lo, double hi, int target) {
  check(hi > lo, "svg: empty axis range");
  const double raw = (hi - lo) / std::max(1, target);
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  double step = mag;
  for (double m : {1.0, 2.0, 2.5, 5.0, 10.0}) {
    if (m * mag >= raw) {
      step = m * mag;
      break;
    }
  }
  std::vector<double> ticks;
  // Each tick is an integer multiple of the step (no accumulated rounding).
  for (long n = static_cast<long>(std::ceil(lo / step - 1e-9)); n * step <= hi + step * 1e-9; ++n)
    ticks.push_back(static_cast<double>(n) * step);
  return ticks;
}

std::vector<double> log_ticks(double lo, double hi) {
  check(lo > 0 && hi > lo, "svg: log axis needs 0 < lo < hi");
  std::vector<double> ticks;
  for (double decade = std::pow(10.0, std::floor(std::log10(lo))); decade <= hi; decade *= 10)
    for (double m : {1.0, 2.0, 5.0})
      if (m * decade >= lo * (1 - 1e-9) && m * decade <= hi * (1 + 1e-9)) ticks.push_back(m * decade);
  if (ticks.size() < 2) {  // a narrow range: fall back to linear ticks on the log axis
    ticks = linear_ticks(lo, hi, 4);
    ticks.erase(std::remove_if(ticks.begin(), ticks.end(), [](double v) { return v <= 0; }),
                ticks.end());
  }
  return ticks;
}

std::string render(const Figure& figure) {
  const int cols = std::max(1, figure.columns);
  const int rows = static_cast<int>((figure.panels.size() + cols - 1) / cols);
  const double title_h = figure.title.empty() ? 0 : 34;
  const double W = cols * figure.panel_width, H = title_h + rows * figure.panel_height;
  std::ostringstream s;
  s << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << num(W) << "\" height=\"" << num(H)
    << "\" viewBox=\"0 0 " << num(W) << " " << num(H) << "\" font-family=\"DejaVu Sans, Arial, sans-serif\">\n";
  s << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  s << "<defs>";
  for (const char* color : {"#d62728", "#1f77b4", "#555555", "#000000"}) {
    std::string id = std::string("arrow") + (color + 1);
    s << "<marker id=\"" << id << "\" viewBox=\"0 0 10 10\" refX=\"9\" refY=\"5\" markerWidth=\"7\" "
      << "markerHeight=\"7\" orient=\"auto-start-reverse\"><path d=\"M0,0 L10,5 L0,10 z\" fill=\""
      << color << "\"/></marker>";
  }
  s << "</defs>\n";
  if (!figure.title.empty())
    s << "<text x=\"" << num(W / 2) << "\" y=\"23\" text-anchor=\"middle\" font-size=\"17\" "
      << "font-weight=\"bold\">" << esc(figure.title) << "</text>\n";

  for (size_t pi = 0; pi < figure.panels.size(); ++pi) {
    const Panel& panel = figure.panels[pi];
    const double ox = static_cast<double>(pi % cols) * figure.panel_width;
    const double oy = title_h + static_cast<double>(pi / cols) * figure.panel_height;
    const double left = ox + 62, right = ox + figure.panel_width - 14;
    const double top = oy + 30, bottom = oy + figure.panel_height - 48;

    // Data ranges.
    double xmin = panel.x_min, xmax = panel.x_max, ymin = panel.y_min, ymax = panel.y_max;
    if (!(xmax > xmin) || !(ymax > ymin)) {
      double dxmin = std::numeric_limits<double>::infinity(), dxmax = -dxmin;
      double dymin = dxmin, dymax = -dxmin;
      for (const Series& se : panel.series)
        for (size_t i = 0; i < se.x.size() && i < se.y.size(); ++i) {
          dxmin = std::min(dxmin, se.x[i]);
          dxmax = std::max(dxmax, se.x[i]);
          dymin = std::min(dymin, se.y[i]);
          dymax = std::max(dymax, se.y[i]);
        }
      for (const Arrow& a : panel.arrows) {
        dxmin = std::min({dxmin, a.x0, a.x1});
        dxmax = std::max({dxmax, a.x0, a.x1});
        dymin = std::min({dymin, a.y0, a.y1});
        dymax = std::max({dymax, a.y0, a.y1});
      }
      check(std::isfinite(dxmin) && std::isfinite(dymin), "svg: panel '" + panel.title + "' has no data");
      if (dxmax <= dxmin) dxmax = dxmin + 1;
      if (dymax <= dymin) dymax = dymin + 1;
      if (!(panel.x_max > panel.x_min)) {
        if (panel.log_x) {
          const double f = std::pow(dxmax / dxmin, 0.05);
          xmin = dxmin / f;
          xmax = dxmax * f;
        } else {
          xmin = dxmin - 0.05 * (dxmax - dxmin);
          xmax = dxmax + 0.05 * (dxmax - dxmin);
        }
      }
      if (!(panel.y_max > panel.y_min)) {
        ymin = dymin - 0.06 * (dymax - dymin);
        ymax = dymax + 0.06 * (dymax - dymin);
      }
    }
    auto X = [&](double v) {
      const double f = panel.log_x ? std::log(v / xmin) / std::log(xmax / xmin) : (v - xmin) / (xmax - xmin);
      return left + f * (right - left);
    };
    auto Y = [&](double v) { return bottom - (v - ymin) / (ymax - ymin) * (bottom - top); };

    s << "<g>\n";
    if (!panel.title.empty())
      s << "<text x=\"" << num((left + right) / 2) << "\" y=\"" << num(oy + 19)
        << "\" text-anchor=\"middle\" font-size=\"14\">" << esc(panel.title) << "</text>\n";
    // Ticks and grid.
    std::vector<double> xt = panel.log_x ? log_ticks(xmin, xmax) : linear_ticks(xmin, xmax);
    for (double v : xt) {
      const double x = X(v);
      s << "<line x1=\"" << num(x) << "\" y1=\"" << num(top) << "\" x2=\"" << num(x) << "\" y2=\""
        << num(bottom) << "\" stroke=\"#e6e6e6\"/>";
      s << "<line x1=\"" << num(x) << "\" y1=\"" << num(bottom) << "\" x2=\"" << num(x) << "\" y2=\""
        << num(bottom + 5) << "\" stroke=\"black\"/>";
      s << "<text x=\"" << num(x) << "\" y=\"" << num(bottom + 18) << "\" text-anchor=\"middle\" "
        << "font-size=\"11\">" << esc(tick_label(v, panel.x_as_count)) << "</text>\n";
    }
    for (double v : linear_ticks(ymin, ymax, 5)) {
      const double y = Y(v);
      s << "<line x1=\"" << num(left) << "\" y1=\"" << num(y) << "\" x2=\"" << num(right) << "\" y2=\""
        << num(y) << "\" stroke=\"#e6e6e6\"/>";
      s << "<line x1=\"" << num(left - 5) << "\" y1=\"" << num(y) << "\" x2=\"" << num(left) << "\" y2=\""
        << num(y) << "\" stroke=\"black\"/>";
      s << "<text x=\"" << num(left - 8) << "\" y=\"" << num(y + 4) << "\" text-anchor=\"end\" "
        << "font-size=\"11\">" << esc(tick_label(v, false)) << "</text>\n";
    }
    s << "<rect x=\"" << num(left) << "\" y=\"" << num(top) << "\" width=\"" << num(right - left)
      << "\" height=\"" << num(bottom - top) << "\" fill=\"none\" stroke=\"black\"/>\n";
    s << "<text x=\"" << num((left + right) / 2) << "\" y=\"" << num(bottom + 38)
      << "\" text-anchor=\"middle\" font-size=\"13\">" << esc(panel.x_label) << "</text>\n";
    s << "<text transform=\"translate(" << num(ox + 16) << "," << num((top + bottom) / 2)
      << ") rotate(-90)\" text-anchor=\"middle\" font-size=\"13\">" << esc(panel.y_label) << "</text>\n";

    // Series, clipped to the plot area.
    s << "<clipPath id=\"clip" << pi << "\"><rect x=\"" << num(left) << "\" y=\"" << num(top)
      << "\" width=\"" << num(right - left) << "\" height=\"" << num(bottom - top) << "\"/></clipPath>\n";
    s << "<g clip-path=\"url(#clip" << pi << ")\">\n";
    for (const Series& se : panel.series) {
      const size_t n = std::min(se.x.size(), se.y.size());
      if (se.line && n >= 2) {
        s << "<polyline fill=\"none\" stroke=\"" << se.color << "\" stroke-width=\"" << num(se.line_width)
          << "\"" << (se.dashed ? " stroke-dasharray=\"6,4\"" : "") << " points=\"";
        for (size_t i = 0; i < n; ++i) s << num(X(se.x[i])) << "," << num(Y(se.y[i])) << " ";
        s << "\"/>\n";
      }
      for (size_t i = 0; i < n; ++i) {
        const double cx = X(se.x[i]), cy = Y(se.y[i]), r = se.marker_size;
        if (se.marker == Marker::circle)
          s << "<circle cx=\"" << num(cx) << "\" cy=\"" << num(cy) << "\" r=\"" << num(r) << "\" fill=\""
            << se.color << "\" stroke=\"black\" stroke-width=\"0.6\"/>";
        else if (se.marker == Marker::star)
          s << "<path d=\"" << star_path(cx, cy, r * 1.5) << "\" fill=\"" << se.color
            << "\" stroke=\"black\" stroke-width=\"0.6\"/>";
        else if (se.marker == Marker::square)
          s << "<rect x=\"" << num(cx - r) << "\" y=\"" << num(cy - r) << "\" width=\"" << num(2 * r)
            << "\" height=\"" << num(2 * r) << "\" fill=\"" << se.color << "\" stroke=\"black\" stroke-width=\"0.6\"/>";
      }
      s << "\n";
    }
    for (const Arrow& a : panel.arrows) {
      std::string id = "arrow" + a.color.substr(1);
      s << "<line x1=\"" << num(X(a.x0)) << "\" y1=\"" << num(Y(a.y0)) << "\" x2=\"" << num(X(a.x1))
        << "\" y2=\"" << num(Y(a.y1)) << "\" stroke=\"" << a.color << "\" stroke-width=\"1.8\""
        << (a.dashed ? " stroke-dasharray=\"5,3\"" : "") << " marker-end=\"url(#" << id << ")\"/>\n";
    }
    s << "</g>\n";
    for (const Arrow& a : panel.arrows) {
      if (a.text.empty()) continue;
      // Below the arrow, starting just right of its tail; a white halo keeps it legible over lines.
      s << "<text x=\"" << num(std::min(X(a.x0), X(a.x1)) + 6) << "\" y=\""
        << num(std::max(Y(a.y0), Y(a.y1)) + 16) << "\" text-anchor=\"start\" font-size=\"12\" "
        << "font-weight=\"bold\" fill=\"" << a.color << "\" stroke=\"white\" stroke-width=\"3\" "
        << "paint-order=\"stroke\">" << esc(a.text) << "</text>\n";
    }
    // Legend (top right).
    if (panel.legend) {
      double ly = top + 14;
      for (const Series& se : panel.series) {
        if (se.label.empty()) continue;
        const double lx = right - 118;
        if (se.line)
          s << "<line x1=\"" << num(lx) << "\" y1=\"" << num(ly - 4) << "\" x2=\"" << num(lx + 20)
            << "\" y2=\"" << num(ly - 4) << "\" stroke=\"" << se.color << "\" stroke-width=\"2\""
            << (se.dashed ? " stroke-dasharray=\"6,4\"" : "") << "/>";
        if (se.marker == Marker::star)
          s << "<path d=\"" << star_path(lx + 10, ly - 4, 5) << "\" fill=\"" << se.color << "\" stroke=\"black\" stroke-width=\"0.5\"/>";
        else if (se.marker != Marker::none)
          s << "<circle cx=\"" << num(lx + 10) << "\" cy=\"" << num(ly - 4) << "\" r=\"3.5\" fill=\""
            << se.color << "\" stroke=\"black\" stroke-width=\"0.5\"/>";
        s << "<text x=\"" << num(lx + 26) << "\" y=\"" << num(ly) << "\" font-size=\"11\">" << esc(se.label)
          << "</text>\n";
        ly += 15;
      }
    }
    s << "</g>\n";
  }
  s << "</svg>\n";
  return s.str();
}

void write(const Figure& figure, const std::string& path) {
  std::string text = render(figure);
  std::ofstream out(path, std::ios::binary);
  check(static_cast<bool>(out), path + ": cannot open for writing the SVG plot");
  out << text;
  check(static_cast<bool>(out), path + ": write failed");
}

}  // namespace parscale::research::svg
