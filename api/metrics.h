// Request metrics in Prometheus text format: counts per method and status
// code, latency histograms per method. Thread-safe; recording takes a short
// mutex (one map lookup), far below a request's cost.
#ifndef CAIRN_API_METRICS_H_
#define CAIRN_API_METRICS_H_

#include <array>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>

namespace cairn::api {

class RequestMetrics {
 public:
  // Upper bounds of the latency buckets, in seconds.
  static constexpr std::array<double, 14> kBuckets = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                                      0.1,    0.25,  0.5,    1,     2.5,   5,     10};

  void Record(const std::string& method, int code, double seconds);
  void AddPointsUpserted(uint64_t n);
  // Appends the metrics in Prometheus text exposition format.
  void AppendPrometheus(std::string* out) const;

 private:
  struct Histogram {
    std::array<uint64_t, kBuckets.size()> buckets{};
    uint64_t count = 0;
    double sum = 0;
  };
  mutable std::mutex mu_;
  std::map<std::pair<std::string, int>, uint64_t> counts_;  // guarded by mu_
  std::map<std::string, Histogram> latency_;                // guarded by mu_
  uint64_t points_upserted_ = 0;                            // guarded by mu_
};

}  // namespace cairn::api

#endif  // CAIRN_API_METRICS_H_
