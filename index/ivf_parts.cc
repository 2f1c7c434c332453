#include "index/ivf_parts.h"

#include <faiss/IndexIVF.h>
#include <faiss/IndexIVFPQ.h>
#include <faiss/impl/ProductQuantizer.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "index/catch_faiss.h"

namespace cairn::index {

using idx_t = faiss::Index::idx_t;

absl::Status InstallCoarseCentroids(faiss::IndexIVF* ivf, const float* centroids) {
  return CatchFaiss("installing centroids", [&] {
    ivf->quantizer->reset();
    ivf->quantizer->add(static_cast<idx_t>(ivf->nlist), centroids);
    ivf->quantizer->is_trained = true;
  });
}

absl::Status TrainIvfPqWithCodebooks(faiss::IndexIVFPQ* ivf, const float* codebooks, const float* x,
                                     size_t n) {
  faiss::ProductQuantizer& pq = ivf->pq;
  if (!ivf->quantizer->is_trained || static_cast<size_t>(ivf->quantizer->ntotal) != ivf->nlist) {
    return absl::FailedPreconditionError("the quantizer does not hold the index's centroids");
  }
  if (ivf->do_polysemous_training) {
    // FAISS would reorder the codebooks after training them.
    return absl::FailedPreconditionError("polysemous training reorders the codebooks");
  }
  // With exactly ksub rows FAISS copies them into the centroids instead.
  if (n <= pq.ksub) {
    return absl::InvalidArgumentError(
        absl::StrCat("training an IVF-PQ index takes more than ", pq.ksub, " vectors, not ", n));
  }
  // Enough rows that FAISS's k-means does not warn (ksub * its minimum per
  // centroid); none of them moves a centroid (no iterations), and more would
  // only cost the coarse assignment of the residuals.
  const size_t rows = std::min(n, std::max(pq.ksub * std::max(pq.cp.min_points_per_centroid, 1), pq.ksub + 1));
  const size_t floats = pq.M * pq.ksub * pq.dsub;
  pq.centroids.assign(codebooks, codebooks + floats);
  // Hot start with no iterations: FAISS's k-means of each sub-space keeps
  // the centroids it starts from, and the rest of train() runs as usual.
  const auto train_type = pq.train_type;
  const int niter = pq.cp.niter;
  pq.train_type = faiss::ProductQuantizer::Train_hot_start;
  pq.cp.niter = 0;
  absl::Status st = CatchFaiss("training", [&] { ivf->train(static_cast<idx_t>(rows), x); });
  pq.train_type = train_type;
  pq.cp.niter = niter;
  if (!st.ok()) return st;
  if (pq.centroids.size() != floats || std::memcmp(pq.centroids.data(), codebooks, floats * sizeof(float)) != 0) {
    return absl::InternalError("FAISS changed the given PQ codebooks while training");
  }
  return absl::OkStatus();
}

absl::Status AddIvfPqCodes(faiss::IndexIVFPQ* ivf, size_t n, const int64_t* lists, const int32_t* codes) {
  if (!ivf->is_trained) return absl::FailedPreconditionError("the index is not trained");
  const faiss::ProductQuantizer& pq = ivf->pq;
  const size_t coarse = ivf->coarse_code_size();
  const size_t stride = coarse + pq.code_size;
  std::vector<uint8_t> packed(n * stride, 0);
  for (size_t i = 0; i < n; ++i) {
    if (lists[i] < 0 || static_cast<size_t>(lists[i]) >= ivf->nlist) {
      return absl::InvalidArgumentError(absl::StrCat("list ", lists[i], " out of range"));
    }
    uint8_t* code = packed.data() + i * stride;
    ivf->encode_listno(lists[i], code);
    faiss::PQEncoderGeneric enc(code + coarse, static_cast<int>(pq.nbits));
    for (size_t j = 0; j < pq.M; ++j) {
      const int32_t c = codes[i * pq.M + j];
      if (c < 0 || static_cast<size_t>(c) >= pq.ksub) {
        return absl::InvalidArgumentError(absl::StrCat("PQ code ", c, " out of range"));
      }
      enc.encode(static_cast<uint64_t>(c));
    }
  }
  return CatchFaiss("adding codes", [&] { ivf->add_sa_codes(static_cast<idx_t>(n), packed.data(), nullptr); });
}

void IvfResiduals(const faiss::IndexIVF& ivf, size_t n, const float* x, const int64_t* lists, float* out) {
  ivf.quantizer->compute_residual_n(static_cast<idx_t>(n), x, out, lists);
}

}  // namespace cairn::index
