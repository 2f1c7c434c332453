// The nearest of k centroids to each of many rows: how an IVF index assigns
// the points it adds to its lists, and how k-means assigns its training
// points on every iteration.
//
// FAISS's IndexFlat does it with one sgemm per block of rows and centroids,
// then keeps each row's best through a result handler one score at a time;
// in Debian's baseline build that scalar pass costs about as much as the
// product itself (an IVF-Flat load of 1M x 128 spent 17% of its CPU there).
// Here the same product is followed by a SIMD scan of each row's scores.
#ifndef CAIRN_INDEX_NEAREST_H_
#define CAIRN_INDEX_NEAREST_H_

#include <cstddef>
#include <cstdint>

#include "index/distance.h"

namespace cairn::index {

// For each of the n rows of x (d floats each), the index of the nearest of
// the k centroids (k x d floats) into labels[i], and its score into
// distances[i] when distances is not null. With l2, nearest is the smallest
// squared Euclidean distance (the score; never negative); without, the
// largest inner product (the score). Ties go to the lower index. k == 0
// gives every row -1 (and an infinite score, as FAISS does). `level` caps
// the SIMD level of the scan (tests compare the levels).
void NearestCentroids(const float* x, size_t n, const float* centroids, size_t k, size_t d, bool l2,
                      int64_t* labels, float* distances, SimdLevel level = ActiveSimdLevel());

}  // namespace cairn::index

#endif  // CAIRN_INDEX_NEAREST_H_
