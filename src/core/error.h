// One exception type for every user-facing failure. The message is the whole story:
// it names the file / tensor / field, what was expected and what was found.
#pragma once
#include <stdexcept>
#include <string>

namespace parscale {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

// Throws parscale::Error(message) when `condition` is false.
inline void check(bool condition, const std::string& message) {
  if (!condition) throw Error(message);
}

}  // namespace parscale
