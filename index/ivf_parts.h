// FAISS IVF indexes assembled from parts made outside FAISS (on the GPU):
// coarse centroids, product-quantizer codebooks and PQ codes. Each function
// leaves the index as FAISS's own train() or add() would have with those
// parts, so that the saved file is an ordinary FAISS index that the CPU path
// serves anywhere.
#ifndef CAIRN_INDEX_IVF_PARTS_H_
#define CAIRN_INDEX_IVF_PARTS_H_

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"

namespace faiss {
struct IndexIVF;
struct IndexIVFPQ;
}  // namespace faiss

namespace cairn::index {

// Puts nlist centroids (nlist * d floats) into the coarse quantizer. FAISS's
// train() then skips its own k-means (it does when the quantizer is trained
// and holds nlist centroids) and trains only what follows it.
absl::Status InstallCoarseCentroids(faiss::IndexIVF* ivf, const float* centroids);

// Trains an IVF-PQ index whose quantizer holds its centroids with the given
// PQ codebooks (M * ksub * dsub floats, FAISS's layout) in place of FAISS's
// k-means of the sub-spaces. FAISS's train() still does the rest (the
// precomputed tables), on at most ksub * 39 rows of x (n of them, which must
// be more than ksub). FailedPrecondition for polysemous training (FAISS
// reorders the codebooks); Internal if FAISS changed them.
absl::Status TrainIvfPqWithCodebooks(faiss::IndexIVFPQ* ivf, const float* codebooks, const float* x,
                                     size_t n);

// Adds n vectors to a trained IVF-PQ index from each one's list and the PQ
// code of its residual (codes[i * M + j]: sub-space j's centroid for vector i,
// as the index's pq.compute_codes would give). Ids are positions ntotal,
// ntotal + 1..., as add() gives them. Bad lists or codes are InvalidArgument
// and add nothing; a FAISS failure while adding (Internal) may leave part of
// the codes in the lists, and the index should then be dropped.
absl::Status AddIvfPqCodes(faiss::IndexIVFPQ* ivf, size_t n, const int64_t* lists, const int32_t* codes);

// The residuals of n vectors (n * d floats, out) from their lists' centroids
// in the index's quantizer.
void IvfResiduals(const faiss::IndexIVF& ivf, size_t n, const float* x, const int64_t* lists, float* out);

}  // namespace cairn::index

#endif  // CAIRN_INDEX_IVF_PARTS_H_
