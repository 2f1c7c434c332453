#include "api/metrics.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace cairn::api {
namespace {

const char* CodeName(int code) {
  static const char* kNames[] = {"OK",          "CANCELLED",          "UNKNOWN",          "INVALID_ARGUMENT",
                                 "DEADLINE_EXCEEDED", "NOT_FOUND",    "ALREADY_EXISTS",   "PERMISSION_DENIED",
                                 "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",  "OUT_OF_RANGE",
                                 "UNIMPLEMENTED", "INTERNAL",         "UNAVAILABLE",      "DATA_LOSS",
                                 "UNAUTHENTICATED"};
  return code >= 0 && code <= 16 ? kNames[code] : "UNKNOWN";
}

}  // namespace

void RequestMetrics::Record(const std::string& method, int code, double seconds) {
  std::lock_guard l(mu_);
  ++counts_[{method, code}];
  Histogram& h = latency_[method];
  for (size_t i = 0; i < kBuckets.size(); ++i) {
    if (seconds <= kBuckets[i]) ++h.buckets[i];
  }
  ++h.count;
  h.sum += seconds;
}

void RequestMetrics::AddPointsUpserted(uint64_t n) {
  std::lock_guard l(mu_);
  points_upserted_ += n;
}

void RequestMetrics::AppendPrometheus(std::string* out) const {
  std::lock_guard l(mu_);
  absl::StrAppend(out, "# HELP cairn_requests_total gRPC requests by method and status code.\n",
                  "# TYPE cairn_requests_total counter\n");
  for (const auto& [key, n] : counts_) {
    absl::StrAppend(out, "cairn_requests_total{method=\"", key.first, "\",code=\"", CodeName(key.second),
                    "\"} ", n, "\n");
  }
  absl::StrAppend(out, "# HELP cairn_request_duration_seconds gRPC request latency by method.\n",
                  "# TYPE cairn_request_duration_seconds histogram\n");
  for (const auto& [method, h] : latency_) {
    for (size_t i = 0; i < kBuckets.size(); ++i) {
      absl::StrAppend(out, "cairn_request_duration_seconds_bucket{method=\"", method, "\",le=\"",
                      absl::StrFormat("%g", kBuckets[i]), "\"} ", h.buckets[i], "\n");
    }
    absl::StrAppend(out, "cairn_request_duration_seconds_bucket{method=\"", method, "\",le=\"+Inf\"} ", h.count,
                    "\n", "cairn_request_duration_seconds_sum{method=\"", method, "\"} ",
                    absl::StrFormat("%.6f", h.sum), "\n", "cairn_request_duration_seconds_count{method=\"",
                    method, "\"} ", h.count, "\n");
  }
  absl::StrAppend(out, "# HELP cairn_points_upserted_total Points written by upserts since start.\n",
                  "# TYPE cairn_points_upserted_total counter\n", "cairn_points_upserted_total ",
                  points_upserted_, "\n");
}

}  // namespace cairn::api
