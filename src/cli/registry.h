// Subcommand registry for the `parscale` CLI.
// Each src/cli/cmd_<name>.cpp defines one static `RegisterCommand` object; main.cpp builds
// the CLI11 app from the registry, so adding a subcommand never touches another file.
#pragma once
#include <CLI/CLI.hpp>
#include <functional>
#include <string>
#include <vector>

namespace parscale::cli {

// Called with the subcommand's CLI11 app; adds options and returns the function that runs
// the command after parsing (its return value is the process exit code).
using CommandSetup = std::function<std::function<int()>(CLI::App&)>;

struct Command {
  std::string name;
  std::string help;
  CommandSetup setup;
};

std::vector<Command>& command_registry();

struct RegisterCommand {
  RegisterCommand(std::string name, std::string help, CommandSetup setup) {
    command_registry().push_back({std::move(name), std::move(help), std::move(setup)});
  }
};

}  // namespace parscale::cli
