// `parscale` command-line entry point: builds one CLI11 subcommand per registered command,
// runs the one chosen, and turns any error into one clear line on stderr and exit code 1.
#include <algorithm>
#include <cstdio>
#include <exception>
#include <map>

#include "cli/registry.h"

namespace parscale::cli {
std::vector<Command>& command_registry() {
  static std::vector<Command> registry;
  return registry;
}
}  // namespace parscale::cli

int main(int argc, char** argv) {
  using namespace parscale::cli;
  CLI::App app{"parscale: run, fine-tune and measure Parallel-Scaled (ParScale) language models"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "parscale 0.1.0");
  auto& registry = command_registry();
  std::sort(registry.begin(), registry.end(),
            [](const Command& a, const Command& b) { return a.name < b.name; });
  std::map<CLI::App*, std::function<int()>> runners;
  for (auto& command : registry) {
    CLI::App* sub = app.add_subcommand(command.name, command.help);
    runners[sub] = command.setup(*sub);
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    for (auto& [sub, run] : runners) {
      if (sub->parsed()) return run();
    }
  } catch (const std::exception& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "parscale: error: %s\n", e.what());
    return 1;
  }
  return 1;
}
