#include "cairn/options.h"

#include "absl/strings/str_cat.h"

namespace cairn {

std::string_view MetricName(Metric m) {
  switch (m) {
    case Metric::kL2: return "l2";
    case Metric::kInnerProduct: return "ip";
    case Metric::kCosine: return "cosine";
  }
  return "?";
}

std::string_view IndexTypeName(IndexType t) {
  switch (t) {
    case IndexType::kFlat: return "flat";
    case IndexType::kHnsw: return "hnsw";
    case IndexType::kIvfFlat: return "ivf_flat";
    case IndexType::kIvfPq: return "ivf_pq";
    case IndexType::kIvfSq8: return "ivf_sq8";
    case IndexType::kHnswSq: return "hnsw_sq";
  }
  return "?";
}

std::string_view PayloadTypeName(PayloadType t) {
  switch (t) {
    case PayloadType::kKeyword: return "keyword";
    case PayloadType::kInteger: return "integer";
    case PayloadType::kFloat: return "float";
    case PayloadType::kBool: return "bool";
  }
  return "?";
}

std::string_view DeviceName(Device d) {
  switch (d) {
    case Device::kAuto: return "auto";
    case Device::kCpu: return "cpu";
    case Device::kGpu: return "gpu";
  }
  return "?";
}

absl::StatusOr<Device> ParseDevice(std::string_view name) {
  for (Device d : {Device::kAuto, Device::kCpu, Device::kGpu}) {
    if (DeviceName(d) == name) return d;
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown device \"", std::string(name), "\" (auto, cpu, gpu)"));
}

std::string_view PqTablesName(PqTables t) {
  switch (t) {
    case PqTables::kAuto: return "auto";
    case PqTables::kOn: return "on";
    case PqTables::kOff: return "off";
  }
  return "?";
}

absl::StatusOr<PqTables> ParsePqTables(std::string_view name) {
  for (PqTables t : {PqTables::kAuto, PqTables::kOn, PqTables::kOff}) {
    if (PqTablesName(t) == name) return t;
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown pq_tables \"", std::string(name), "\" (auto, on, off)"));
}

absl::StatusOr<Metric> ParseMetric(std::string_view name) {
  for (Metric m : {Metric::kL2, Metric::kInnerProduct, Metric::kCosine}) {
    if (MetricName(m) == name) return m;
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown metric \"", std::string(name), "\" (l2, ip, cosine)"));
}

absl::StatusOr<IndexType> ParseIndexType(std::string_view name) {
  for (IndexType t : {IndexType::kFlat, IndexType::kHnsw, IndexType::kIvfFlat, IndexType::kIvfPq,
                      IndexType::kIvfSq8, IndexType::kHnswSq}) {
    if (IndexTypeName(t) == name) return t;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown index type \"", std::string(name), "\" (flat, hnsw, ivf_flat, ivf_pq, ivf_sq8, hnsw_sq)"));
}

absl::StatusOr<PayloadType> ParsePayloadType(std::string_view name) {
  for (PayloadType t : {PayloadType::kKeyword, PayloadType::kInteger, PayloadType::kFloat,
                        PayloadType::kBool}) {
    if (PayloadTypeName(t) == name) return t;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown payload type \"", std::string(name), "\" (keyword, integer, float, bool)"));
}

}  // namespace cairn
