// Scaling data loading: every malformed input fails with one line naming file, row and field.
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <string>

#include "core/error.h"
#include "research/scaling_data.h"

using namespace parscale::research;

namespace {

// Runs `f` and returns the parscale::Error message ("" if nothing was thrown).
template <typename F>
std::string error_of(F f) {
  try {
    f();
  } catch (const parscale::Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(ScalingData, ParsesCsvWithCommentsAndExtraColumns) {
  const auto rows = parse_scaling_csv("# comment\n\nsize,N,P,loss\n1.6B,1571472384,1,1.0817\nx,2e9,8,0.99\n", "t.csv");
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0].params, 1571472384.0);
  EXPECT_EQ(rows[1].streams, 8.0);
  EXPECT_EQ(rows[1].loss, 0.99);
  EXPECT_EQ(rows[0].origin, "t.csv:4");
}

TEST(ScalingData, ParsesJsonArrayAndRowsObject) {
  EXPECT_EQ(parse_scaling_json(R"([{"N":1e9,"P":2,"loss":1.1}])", "a.json").size(), 1u);
  const auto rows = parse_scaling_json(R"({"rows":[{"N":1e9,"P":1,"loss":1.2},{"N":2e9,"P":4,"loss":1.0}]})", "b.json");
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[1].origin, "b.json[1]");
}

TEST(ScalingData, MissingColumnNamed) {
  const std::string m = error_of([] { parse_scaling_csv("N,loss\n1e9,1.0\n", "d.csv"); });
  EXPECT_NE(m.find("d.csv:1"), std::string::npos) << m;
  EXPECT_NE(m.find("lacks column(s): P"), std::string::npos) << m;
}

TEST(ScalingData, BadValuesNameFileRowField) {
  std::string m = error_of([] { parse_scaling_csv("N,P,loss\n1e9,1,1.0\n1e9,0.5,1.0\n", "d.csv"); });
  EXPECT_NE(m.find("d.csv:3"), std::string::npos) << m;
  EXPECT_NE(m.find("'P' must be >= 1"), std::string::npos) << m;
  m = error_of([] { parse_scaling_csv("N,P,loss\n-5,1,1.0\n", "d.csv"); });
  EXPECT_NE(m.find("d.csv:2: field 'N' must be a positive"), std::string::npos) << m;
  m = error_of([] { parse_scaling_csv("N,P,loss\n1e9,1,0\n", "d.csv"); });
  EXPECT_NE(m.find("d.csv:2: field 'loss' must be positive"), std::string::npos) << m;
  m = error_of([] { parse_scaling_json(R"([{"N":1e9,"P":1,"loss":-1}])", "j.json"); });
  EXPECT_NE(m.find("j.json[0]: field 'loss' must be positive"), std::string::npos) << m;
}

TEST(ScalingData, MalformedCsvNamed) {
  std::string m = error_of([] { parse_scaling_csv("N,P,loss\n1e9,1\n", "d.csv"); });
  EXPECT_NE(m.find("d.csv:2: row has 2 fields, the header has 3"), std::string::npos) << m;
  m = error_of([] { parse_scaling_csv("N,P,loss\n1e9,two,1.0\n", "d.csv"); });
  EXPECT_NE(m.find("d.csv:2: field 'P' = 'two' is not a number"), std::string::npos) << m;
  m = error_of([] { parse_scaling_csv("N,P,loss\n1e9x,1,1.0\n", "d.csv"); });
  EXPECT_NE(m.find("field 'N' = '1e9x' is not a number"), std::string::npos) << m;
  m = error_of([] { parse_scaling_csv("# only a comment\n", "e.csv"); });
  EXPECT_NE(m.find("e.csv: no header"), std::string::npos) << m;
  m = error_of([] { parse_scaling_csv("N,P,loss\n", "e.csv"); });
  EXPECT_NE(m.find("e.csv: no data rows"), std::string::npos) << m;
}

TEST(ScalingData, MalformedJsonNamed) {
  std::string m = error_of([] { parse_scaling_json("[{\"N\": 1e9,", "j.json"); });
  EXPECT_NE(m.find("j.json: malformed JSON"), std::string::npos) << m;
  m = error_of([] { parse_scaling_json(R"([{"N":1e9,"loss":1.0}])", "j.json"); });
  EXPECT_NE(m.find("j.json[0]: missing field 'P'"), std::string::npos) << m;
  m = error_of([] { parse_scaling_json(R"([{"N":"big","P":1,"loss":1.0}])", "j.json"); });
  EXPECT_NE(m.find("j.json[0]: field 'N' is not a number"), std::string::npos) << m;
  m = error_of([] { parse_scaling_json(R"({"N":1})", "j.json"); });
  EXPECT_NE(m.find("j.json: expected a JSON array"), std::string::npos) << m;
}

TEST(ScalingData, LoadsFilesByContent) {
  const std::string path = testing::TempDir() + "/parscale_rows_test.txt";
  {
    std::ofstream(path) << R"([{"N":1e9,"P":2,"loss":1.1}])";
  }
  EXPECT_EQ(load_scaling_rows(path).size(), 1u);  // JSON recognised by its first character
  std::remove(path.c_str());
  const std::string m = error_of([&] { load_scaling_rows(path); });
  EXPECT_NE(m.find(path + ": cannot open"), std::string::npos) << m;
}
