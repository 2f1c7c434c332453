// Status conventions for Cairn.
//
// Everything that can fail for reasons outside the programmer's control returns
// absl::Status or absl::StatusOr<T>. Codes say what the caller should do next:
//   InvalidArgument     fix the request (dimension, NaN, malformed filter, ...)
//   NotFound            the collection or point does not exist
//   AlreadyExists       the collection exists
//   FailedPrecondition  fix the state first (data dir locked, wrong format version,
//                       database refused writes after an I/O error: reopen it)
//   ResourceExhausted   request over a configured limit
//   DataLoss            a file is corrupt (checksum mismatch, truncated)
//   Internal            a bug or a library failure; the message says which
#ifndef CAIRN_STATUS_H_
#define CAIRN_STATUS_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define CAIRN_STATUS_CONCAT_INNER_(a, b) a##b
#define CAIRN_STATUS_CONCAT_(a, b) CAIRN_STATUS_CONCAT_INNER_(a, b)

// Evaluates `expr` (an absl::Status) and returns it from the enclosing function
// when it is not OK.
#define CAIRN_RETURN_IF_ERROR(expr)                  \
  do {                                               \
    ::absl::Status cairn_status_ = (expr);           \
    if (!cairn_status_.ok()) return cairn_status_;   \
  } while (0)

// `lhs = value of rexpr` when rexpr (an absl::StatusOr<T>) is OK; otherwise
// returns its status from the enclosing function. `lhs` may declare a variable:
//   CAIRN_ASSIGN_OR_RETURN(auto db, Database::Open(dir, options));
#define CAIRN_ASSIGN_OR_RETURN(lhs, rexpr)                                    \
  CAIRN_ASSIGN_OR_RETURN_IMPL_(CAIRN_STATUS_CONCAT_(cairn_statusor_, __LINE__), \
                               lhs, rexpr)
#define CAIRN_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, rexpr) \
  auto statusor = (rexpr);                                 \
  if (!statusor.ok()) return std::move(statusor).status(); \
  lhs = std::move(statusor).value()

#endif  // CAIRN_STATUS_H_
