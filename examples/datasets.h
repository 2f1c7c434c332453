// Datasets for examples, tests and benchmarks: Fashion-MNIST from Debian's
// dataset-fashion-mnist package (the ann-benchmarks split: 60,000 base
// vectors, 10,000 queries, 784 dimensions), and seeded synthetic clustered
// data of any size.
#ifndef CAIRN_EXAMPLES_DATASETS_H_
#define CAIRN_EXAMPLES_DATASETS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace cairn::datasets {

struct Dataset {
  std::string name;
  size_t dim = 0;
  std::vector<float> base;     // n x dim
  std::vector<float> queries;  // nq x dim
  std::vector<int> base_labels;  // class per base vector, when known
  size_t n() const { return dim ? base.size() / dim : 0; }
  size_t nq() const { return dim ? queries.size() / dim : 0; }
};

inline constexpr const char* kFashionMnistDir = "/usr/share/datasets/fashion-mnist";

// NotFound when the package is not installed; DataLoss for malformed files.
absl::StatusOr<Dataset> LoadFashionMnist(const std::string& dir = kFashionMnistDir);

// n base and nq query vectors around `clusters` Gaussian centers; the same
// seed always gives the same data.
Dataset Synthetic(size_t n, size_t nq, size_t dim, size_t clusters, uint64_t seed);

// Fraction of the true k nearest (truth, nq x k ids) found in `found`
// (nq x k ids; -1 for none).
double RecallAtK(const std::vector<int64_t>& truth, const std::vector<int64_t>& found,
                 size_t nq, size_t k);

}  // namespace cairn::datasets

#endif  // CAIRN_EXAMPLES_DATASETS_H_
