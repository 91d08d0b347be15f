// End-to-end: the parscale binary's fit and cost subcommands.
#include <gtest/gtest.h>

#include <sys/wait.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

namespace {

struct CliRun {
  int status;
  std::string out;  // stdout and stderr
};

CliRun run(const std::string& args) {
  const std::string cmd = std::string(PARSCALE_BINARY) + " " + args + " 2>&1";
  FILE* pipe = popen(cmd.c_str(), "r");
  if (!pipe) return {-1, ""};
  std::string out;
  std::array<char, 4096> buf{};
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), pipe)) > 0) out.append(buf.data(), n);
  const int status = pclose(pipe);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

std::string data(const std::string& name) {
  return std::string(PARSCALE_SOURCE_DIR) + "/data/scaling/" + name;
}

}  // namespace

TEST(CliFit, JsonFitOfThePileTable) {
  const CliRun r = run("fit --data " + data("pile.csv") + " --predict 1.6e9,8 --json");
  ASSERT_EQ(r.status, 0) << r.out;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_NEAR(j["law"]["E"].get<double>(), 1.2888, 0.02 * 1.2888);
  EXPECT_NEAR(j["law"]["k"].get<double>(), 0.3345, 0.02 * 0.3345);
  EXPECT_EQ(j["rows"].size(), 24u);
  ASSERT_EQ(j["predictions"].size(), 1u);
  const double k = j["law"]["k"].get<double>();
  EXPECT_NEAR(j["predictions"][0]["equivalent_N"].get<double>(), 1.6e9 * (k * std::log(8.0) + 1), 1.0);
}

TEST(CliFit, TextOutputAndPlot) {
  const std::string svg = testing::TempDir() + "/parscale_fit_test.svg";
  const CliRun r = run("fit --data " + data("stack_v2_python.csv") + " --plot " + svg);
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("E     = 0.69"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("equivalent parameters"), std::string::npos);
  std::ifstream in(svg);
  std::stringstream s;
  s << in.rdbuf();
  EXPECT_EQ(s.str().rfind("<svg", 0), 0u);
  EXPECT_NE(s.str().find("P = 8"), std::string::npos);
  std::remove(svg.c_str());
}

TEST(CliFit, BadInputIsOneClearLine) {
  const std::string path = testing::TempDir() + "/parscale_bad_rows.csv";
  {
    std::ofstream(path) << "N,P,loss\n1e9,1,1.1\n1e9,0,1.0\n";
  }
  const CliRun r = run("fit --data " + path);
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.out.find("parscale: error: " + path + ":3: field 'P' must be >= 1"), std::string::npos) << r.out;
  std::remove(path.c_str());
  const CliRun q = run("fit --data " + data("pile.csv") + " --predict 1e9");
  EXPECT_EQ(q.status, 1);
  EXPECT_NE(q.out.find("--predict '1e9': expected N,P"), std::string::npos) << q.out;
}

TEST(CliCost, SingleConfigurationJson) {
  const CliRun r = run("cost --model 4.4B -P 2 --batch 2 --json");
  ASSERT_EQ(r.status, 0) << r.out;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_NEAR(j["memory_bytes"].get<double>() / (1024.0 * 1024 * 1024), 8.950774, 1e-5);
  EXPECT_NEAR(j["latency_s"].get<double>(), 0.3535038, 1e-6);
  EXPECT_EQ(j["model"]["hidden"].get<long>(), 2560);
}

TEST(CliCost, PaperComparisonJsonAndPlot) {
  const std::string svg = testing::TempDir() + "/parscale_cost_test.svg";
  const CliRun r = run("cost --paper-comparison --json --data " + data("stack_v2_python.csv") + " --plot " + svg);
  ASSERT_EQ(r.status, 0) << r.out;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_NEAR(j["per_batch"][0]["comparison"]["memory_ratio"].get<double>(), 22.0, 3.3);
  EXPECT_NEAR(j["per_batch"][0]["comparison"]["latency_ratio"].get<double>(), 6.0, 0.9);
  EXPECT_NEAR(j["batch_averaged"]["comparison"]["memory_ratio"].get<double>(), 7.0, 1.05);
  EXPECT_NEAR(j["batch_averaged"]["comparison"]["latency_ratio"].get<double>(), 1.7, 0.255);
  std::ifstream in(svg);
  EXPECT_TRUE(in.good());
  std::remove(svg.c_str());
}

TEST(CliCost, MeasureAppliesToOneConfigurationOnly) {
  // The engine is linked (tests/test_cost_measure.cpp runs it); a whole paper comparison is not measured.
  const CliRun r = run("cost --measure --paper-comparison");
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.out.find("--measure applies to a single configuration"), std::string::npos) << r.out;
}
