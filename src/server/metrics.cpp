#include "server/metrics.h"

#include <cstdio>
#include <cstdlib>

namespace parscale::server {

namespace {

// The shortest of %.15g / %.17g that reads back exactly (0.005, not 0.0050000000000000001).
std::string num(double v) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.15g", v);
  if (std::strtod(buf, nullptr) != v) std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

void header(std::string& out, const char* name, const char* type, const char* help) {
  out += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
}

void sample(std::string& out, const std::string& name, const std::string& labels, double v) {
  out += name;
  if (!labels.empty()) out += "{" + labels + "}";
  out += " " + num(v) + "\n";
}

// Cumulative buckets, as Prometheus wants, from the engine's per-bucket counts.
void histogram(std::string& out, const std::string& name, const std::string& labels, const Histogram& h) {
  uint64_t cum = 0;
  const std::string sep = labels.empty() ? "" : labels + ",";
  for (size_t i = 0; i < h.bounds.size(); ++i) {
    cum += i < h.counts.size() ? h.counts[i] : 0;
    sample(out, name + "_bucket", sep + "le=\"" + num(h.bounds[i]) + "\"", static_cast<double>(cum));
  }
  sample(out, name + "_bucket", sep + "le=\"+Inf\"", static_cast<double>(h.count));
  sample(out, name + "_sum", labels, h.sum);
  sample(out, name + "_count", labels, static_cast<double>(h.count));
}

}  // namespace

std::string render_metrics(const EngineStats& s, const HttpCounters& http) {
  std::string out;
  auto per_p = [&](const char* name, const char* type, const char* help, auto get) {
    header(out, name, type, help);
    for (const auto& [p, v] : s.per_streams) sample(out, name, "streams=\"" + std::to_string(p) + "\"", static_cast<double>(get(v)));
  };
  using PS = EngineStats::PerStreams;
  per_p("parscale_requests_running", "gauge", "Requests in the running batch, by P.", [](const PS& v) { return v.running; });
  per_p("parscale_requests_waiting", "gauge", "Requests waiting for a batch slot, by P.", [](const PS& v) { return v.waiting; });
  per_p("parscale_requests_total", "counter", "Requests submitted to the engine, by P.", [](const PS& v) { return v.requests_total; });
  per_p("parscale_prompt_tokens_total", "counter", "Prompt tokens of submitted requests, by P.", [](const PS& v) { return v.prompt_tokens_total; });
  per_p("parscale_cached_prompt_tokens_total", "counter", "Prompt tokens taken from the prefix cache, by P.",
        [](const PS& v) { return v.cached_prompt_tokens_total; });
  per_p("parscale_generation_tokens_total", "counter", "Generated tokens, by P.", [](const PS& v) { return v.generation_tokens_total; });
  header(out, "parscale_time_to_first_token_seconds", "histogram", "Seconds from submission to the first generated token, by P.");
  for (const auto& [p, v] : s.per_streams)
    histogram(out, "parscale_time_to_first_token_seconds", "streams=\"" + std::to_string(p) + "\"", v.time_to_first_token);
  header(out, "parscale_kv_pages_used", "gauge", "KV pages held by sequences.");
  sample(out, "parscale_kv_pages_used", "", static_cast<double>(s.kv_pages_used));
  header(out, "parscale_kv_pages_total", "gauge", "KV pages in the pool.");
  sample(out, "parscale_kv_pages_total", "", static_cast<double>(s.kv_pages_total));
  header(out, "parscale_kv_pages_cached", "gauge", "Free KV pages that still hold a cached prompt prefix.");
  sample(out, "parscale_kv_pages_cached", "", static_cast<double>(s.kv_pages_cached));
  header(out, "parscale_kv_page_tokens", "gauge", "Token slots per KV page.");
  sample(out, "parscale_kv_page_tokens", "", static_cast<double>(s.page_tokens));
  header(out, "parscale_steps_total", "counter", "Scheduler steps (forward passes).");
  sample(out, "parscale_steps_total", "", static_cast<double>(s.steps));
  header(out, "parscale_preemptions_total", "counter", "Sequences preempted for lack of KV pages.");
  sample(out, "parscale_preemptions_total", "", static_cast<double>(s.preemptions));
  header(out, "parscale_step_seconds", "histogram", "Duration of one scheduler step.");
  histogram(out, "parscale_step_seconds", "", s.step_seconds);
  header(out, "parscale_http_responses_total", "counter", "HTTP responses, by status.");
  for (const auto& [code, n] : http.responses_by_status)
    sample(out, "parscale_http_responses_total", "code=\"" + std::to_string(code) + "\"", static_cast<double>(n));
  header(out, "parscale_http_disconnects_total", "counter", "Requests cancelled because the client disconnected.");
  sample(out, "parscale_http_disconnects_total", "", static_cast<double>(http.disconnects));
  return out;
}

}  // namespace parscale::server
