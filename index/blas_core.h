// The BLAS kernels FAISS's k-means, list assignment and batched exact search
// run on (through sgemm).
//
// OpenBLAS chooses its kernels for the CPU when it is loaded. A release that
// predates the CPU does not recognise it and falls back to its Prescott (SSE3)
// kernels: Debian 12's OpenBLAS 0.3.21 does so on Emerald Rapids (family 6,
// model 207), where its sgemm then runs about 6 times slower than its
// AVX-512 kernels (4,000 x 4,000: 2.5 s against 0.41 s).
// Cairn checks this once, before main, and switches OpenBLAS to the kernels
// the CPU supports. It changes nothing when OPENBLAS_CORETYPE is set (the
// operator's choice), when OpenBLAS chose anything but its fallback, or when
// the BLAS is not OpenBLAS with runtime kernel choice.
#ifndef CAIRN_INDEX_BLAS_CORE_H_
#define CAIRN_INDEX_BLAS_CORE_H_

#include <string>
#include <string_view>

namespace cairn::index {

// What the process's BLAS runs, for logs: "OpenBLAS SkylakeX", with
// " (switched from Prescott)" when Cairn changed it; "" when the BLAS is not
// OpenBLAS.
std::string BlasCore();

// True when Cairn switched OpenBLAS's kernels (segment.cc refers to it, so
// that every program with segments has the check linked in).
bool BlasCoreSwitched();

// The OpenBLAS kernels to switch to from `current` on a CPU with these
// features; "" to keep `current`. Only OpenBLAS's fallback is replaced.
std::string_view BetterBlasCore(std::string_view current, bool avx512, bool avx2_fma, bool avx);

}  // namespace cairn::index

#endif  // CAIRN_INDEX_BLAS_CORE_H_
