// CAIRN_CHECK: a broken invariant is a bug, not a status. It prints where
// and why, then aborts (house style: "Broken invariants are not statuses").
#ifndef CAIRN_REPLICATION_CHECK_H_
#define CAIRN_REPLICATION_CHECK_H_

#include <cstdio>
#include <cstdlib>

#define CAIRN_CHECK(cond, ...)                                                  \
  do {                                                                          \
    if (!(cond)) {                                                              \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s: ", __FILE__, __LINE__, #cond); \
      std::fprintf(stderr, __VA_ARGS__);                                        \
      std::fprintf(stderr, "\n");                                               \
      std::abort();                                                             \
    }                                                                           \
  } while (0)

#endif  // CAIRN_REPLICATION_CHECK_H_
