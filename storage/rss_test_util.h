// Test helpers: what this process holds in memory, and its peak since a
// reset, from /proc (Linux).
#ifndef CAIRN_STORAGE_RSS_TEST_UTIL_H_
#define CAIRN_STORAGE_RSS_TEST_UTIL_H_

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>

namespace cairn::testing_util {

// A field of /proc/self/status in bytes ("VmRSS:", "VmHWM:"); 0 when absent.
inline uint64_t ProcStatusBytes(const char* field) {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind(field, 0) == 0) return std::strtoull(line.c_str() + std::strlen(field), nullptr, 10) * 1024;
  }
  return 0;
}

// Resets the peak (VmHWM) to what the process holds now; false when the
// kernel cannot (no /proc/self/clear_refs).
inline bool ResetPeakRss() {
  std::ofstream f("/proc/self/clear_refs");
  f << "5";
  f.close();
  return !f.fail() && ProcStatusBytes("VmHWM:") > 0;
}

// Under AddressSanitizer freed memory stays resident a while (its
// quarantine): peak-memory checks of code that frees as it goes do not hold.
#if defined(__SANITIZE_ADDRESS__)
inline constexpr bool kAddressSanitizer = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
inline constexpr bool kAddressSanitizer = true;
#else
inline constexpr bool kAddressSanitizer = false;
#endif
#else
inline constexpr bool kAddressSanitizer = false;
#endif

}  // namespace cairn::testing_util

#endif  // CAIRN_STORAGE_RSS_TEST_UTIL_H_
