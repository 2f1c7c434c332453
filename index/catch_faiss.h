// FAISS reports errors by throwing; index code runs its FAISS calls through
// CatchFaiss so that no exception leaves index/.
#ifndef CAIRN_INDEX_CATCH_FAISS_H_
#define CAIRN_INDEX_CATCH_FAISS_H_

#include <exception>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace cairn::index {

// Runs fn(); an exception (FAISS's, bad_alloc...) becomes Internal
// "FAISS <what>: <message>".
template <typename Fn>
absl::Status CatchFaiss(std::string_view what, Fn&& fn) {
  try {
    fn();
    return absl::OkStatus();
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("FAISS ", std::string(what), ": ", e.what()));
  }
}

}  // namespace cairn::index

#endif  // CAIRN_INDEX_CATCH_FAISS_H_
