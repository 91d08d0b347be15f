// The chat page's files (src/server/web/), embedded into the binary at build time
// (embed_web.cmake): nothing is read from disk or fetched from the internet at run time.
#pragma once
#include <cstddef>
#include <vector>

namespace parscale::server {

struct WebAsset {
  const char* path;          // URL path, e.g. "/index.html"
  const char* content_type;  // e.g. "text/html; charset=utf-8"
  const char* data;
  size_t size;
};

const std::vector<WebAsset>& web_assets();

}  // namespace parscale::server
