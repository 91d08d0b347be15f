// `parscale cost --measure`: the engine runs the configuration (random weights of the shape) and
// its measurement is printed beside the prediction.
#include "test_util.h"

using json = nlohmann::json;

namespace {

std::string bin() { return PARSCALE_BINARY; }

TEST(CostMeasure, RunsTheEngineAndReportsRatios) {
  std::string out, err;
  ASSERT_EQ(parscale::test::run_command(bin() + " cost --hidden 64 --intermediate 128 --layers 2 --heads 4 --kv-heads 2 "
                                                "--vocab 512 -P 2 --prefix-tokens 4 --input 16 --output 8 "
                                                "--hardware this-machine --measure --json",
                                        &out, &err),
            0)
      << err;
  json j = json::parse(out);
  ASSERT_TRUE(j.contains("measured")) << out;
  const double mem = j["measured"]["memory_bytes"].get<double>();
  const double lat = j["measured"]["latency_s"].get<double>();
  // The process holds at least the weights (2 bytes per parameter) and took some time.
  const double weights = 2.0 * (512.0 * 64 + 2 * (64.0 * 64 * 2 + 2 * 64.0 * 32 + 3 * 64.0 * 128));
  EXPECT_GT(mem, weights);
  EXPECT_LT(mem, 1e9);
  EXPECT_GT(lat, 0.0);
  EXPECT_NEAR(j["measured"]["memory_ratio"].get<double>(), mem / j["memory_bytes"].get<double>(), 1e-9);
  EXPECT_NEAR(j["measured"]["latency_ratio"].get<double>(), lat / j["latency_s"].get<double>(), 1e-9);
}

TEST(CostMeasure, RefusesShapesThatDoNotFit) {
  std::string out, err;
  EXPECT_EQ(parscale::test::run_command(bin() + " cost --hidden 16384 --intermediate 65536 --layers 200 --heads 128 "
                                                "--kv-heads 8 --vocab 151936 --measure",
                                        &out, &err),
            1);
  EXPECT_NE(err.find("more than 80% of this machine"), std::string::npos) << err;
}

}  // namespace
