// The SVG writer: tick placement and a rendered figure's structure.
#include <gtest/gtest.h>

#include "core/error.h"
#include "research/svg.h"

using namespace parscale::research::svg;

TEST(Svg, LinearTicksAreNiceSteps) {
  const std::vector<double> want{0.975, 1.0, 1.025, 1.05, 1.075};
  const std::vector<double> got = linear_ticks(0.97, 1.09, 5);
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(got[i], want[i], 1e-12);
  EXPECT_EQ(linear_ticks(0, 10, 5), (std::vector<double>{0, 2, 4, 6, 8, 10}));
  EXPECT_THROW(linear_ticks(1, 1), parscale::Error);
}

TEST(Svg, LogTicksAtOneTwoFive) {
  EXPECT_EQ(log_ticks(4e8, 6e9), (std::vector<double>{5e8, 1e9, 2e9, 5e9}));
}

TEST(Svg, RendersPanelsSeriesArrowsAndEscapesText) {
  Figure f;
  f.title = "a < b & c";
  f.columns = 2;
  for (int i = 0; i < 2; ++i) {
    Panel p;
    p.title = "panel";
    Series s;
    s.label = "P = 8";
    s.x = {1, 2, 3};
    s.y = {3, 2, 1};
    s.marker = Marker::star;
    p.series.push_back(s);
    Arrow a;
    a.x0 = 1;
    a.x1 = 2;
    a.y0 = a.y1 = 2;
    a.text = "22x";
    p.arrows.push_back(a);
    f.panels.push_back(p);
  }
  const std::string svg = render(f);
  EXPECT_EQ(svg.rfind("<svg", 0), 0u);
  EXPECT_NE(svg.find("a &lt; b &amp; c"), std::string::npos);
  EXPECT_EQ(svg.find("a < b"), std::string::npos);
  size_t polylines = 0;
  for (size_t at = svg.find("<polyline"); at != std::string::npos; at = svg.find("<polyline", at + 1)) ++polylines;
  EXPECT_EQ(polylines, 2u);
  EXPECT_NE(svg.find(">22x</text>"), std::string::npos);
  EXPECT_NE(svg.find("</svg>"), std::string::npos);
}
