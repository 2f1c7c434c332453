#include "index/blas_core.h"

#include <dlfcn.h>

#include <cstdlib>
#include <string>

namespace cairn::index {
namespace {

using CoreNameFn = char* (*)();
using InitFn = void (*)();

CoreNameFn CoreName() { return reinterpret_cast<CoreNameFn>(dlsym(RTLD_DEFAULT, "openblas_get_corename")); }

std::string& SwitchedFrom() {
  static std::string from;
  return from;
}

// Runs before main (a static initializer below), while no thread can be in
// a BLAS call: OpenBLAS reads its kernel table on every call.
bool SwitchBlasCore() {
  if (std::getenv("OPENBLAS_CORETYPE") != nullptr) return false;
  CoreNameFn name = CoreName();
  auto quit = reinterpret_cast<InitFn>(dlsym(RTLD_DEFAULT, "gotoblas_dynamic_quit"));
  auto init = reinterpret_cast<InitFn>(dlsym(RTLD_DEFAULT, "gotoblas_dynamic_init"));
  if (name == nullptr || quit == nullptr || init == nullptr || name() == nullptr) return false;
  const std::string current = name();
  __builtin_cpu_init();
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
                      __builtin_cpu_supports("avx512cd");
  const bool avx2_fma = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  const std::string_view better = BetterBlasCore(current, avx512, avx2_fma, __builtin_cpu_supports("avx"));
  if (better.empty()) return false;
  // gotoblas_dynamic_init reads the kernels to use from the environment,
  // as it does when OpenBLAS is loaded; the variable is removed again so
  // that child processes choose for themselves.
  setenv("OPENBLAS_CORETYPE", std::string(better).c_str(), 1);
  quit();
  init();
  unsetenv("OPENBLAS_CORETYPE");
  if (name() == nullptr || current == name()) return false;
  SwitchedFrom() = current;
  return true;
}

[[maybe_unused]] const bool kSwitched = SwitchBlasCore();

}  // namespace

std::string_view BetterBlasCore(std::string_view current, bool avx512, bool avx2_fma, bool avx) {
  if (current != "Prescott") return {};
  if (avx512) return "SkylakeX";
  if (avx2_fma) return "Haswell";
  if (avx) return "SandyBridge";
  return {};
}

bool BlasCoreSwitched() { return !SwitchedFrom().empty(); }

std::string BlasCore() {
  CoreNameFn name = CoreName();
  if (name == nullptr || name() == nullptr) return "";
  std::string out = std::string("OpenBLAS ") + name();
  if (!SwitchedFrom().empty()) out += " (switched from " + SwitchedFrom() + ")";
  return out;
}

}  // namespace cairn::index
