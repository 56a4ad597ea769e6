// A minimal test harness: TEST_CASE registers a function, EXPECT records a failure and goes on,
// REQUIRE stops the test case. main() runs every case (or those whose name contains argv[1]
// when it starts with "--only=") and exits non-zero on any failure. Header-only, no dependency.
#pragma once

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

namespace harness {

struct Case {
  const char* name;
  std::function<void()> fn;
};

inline std::vector<Case>& cases() {
  static std::vector<Case> all;
  return all;
}

inline int& failures() {
  static int n = 0;
  return n;
}

struct Register {
  Register(const char* name, std::function<void()> fn) { cases().push_back({name, std::move(fn)}); }
};

struct Abort {};  // thrown by REQUIRE to leave the current case

inline void report(const char* file, int line, const std::string& what) {
  ++failures();
  std::fprintf(stderr, "  FAILED %s:%d: %s\n", file, line, what.c_str());
}

template <typename A, typename B>
std::string describe(const char* expr, const A& a, const B& b) {
  std::ostringstream out;
  out << expr << "  (" << a << " vs " << b << ")";
  return out.str();
}

inline int run_all(int argc, char** argv) {
  std::string only;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg.rfind("--only=", 0) == 0) only = arg.substr(7);
  }
  int ran = 0;
  for (const Case& c : cases()) {
    if (!only.empty() && std::string(c.name).find(only) == std::string::npos) continue;
    const int before = failures();
    std::fprintf(stderr, "[ RUN  ] %s\n", c.name);
    try {
      c.fn();
    } catch (const Abort&) {
    } catch (const std::exception& e) {
      report(__FILE__, __LINE__, std::string("uncaught exception: ") + e.what());
    }
    std::fprintf(stderr, "[ %s ] %s\n", failures() == before ? " OK " : "FAIL", c.name);
    ++ran;
  }
  std::fprintf(stderr, "%d test case(s), %d failure(s)\n", ran, failures());
  return failures() == 0 ? 0 : 1;
}

}  // namespace harness

#define HARNESS_CAT2(a, b) a##b
#define HARNESS_CAT(a, b) HARNESS_CAT2(a, b)
#define TEST_CASE(name)                                                            \
  static void HARNESS_CAT(test_fn_, __LINE__)();                                   \
  static const harness::Register HARNESS_CAT(test_reg_, __LINE__)(name, &HARNESS_CAT(test_fn_, __LINE__)); \
  static void HARNESS_CAT(test_fn_, __LINE__)()

#define EXPECT(cond)                                                   \
  do {                                                                 \
    if (!(cond)) harness::report(__FILE__, __LINE__, #cond);           \
  } while (0)
#define EXPECT_MSG(cond, msg)                                                          \
  do {                                                                                 \
    if (!(cond)) harness::report(__FILE__, __LINE__, std::string(#cond) + ": " + (msg)); \
  } while (0)
#define EXPECT_EQ(a, b)                                                                         \
  do {                                                                                          \
    const auto harness_a = (a); /* copies: (a) may be a member of a temporary */                \
    const auto harness_b = (b);                                                                 \
    if (!(harness_a == harness_b))                                                              \
      harness::report(__FILE__, __LINE__, harness::describe(#a " == " #b, harness_a, harness_b)); \
  } while (0)
#define EXPECT_NEAR(a, b, tol)                                                                  \
  do {                                                                                          \
    const double harness_a = (a), harness_b = (b);                                              \
    if (!(std::fabs(harness_a - harness_b) <= (tol)))                                           \
      harness::report(__FILE__, __LINE__, harness::describe(#a " ~= " #b, harness_a, harness_b)); \
  } while (0)
#define REQUIRE(cond)                                                  \
  do {                                                                 \
    if (!(cond)) {                                                     \
      harness::report(__FILE__, __LINE__, #cond);                      \
      throw harness::Abort{};                                          \
    }                                                                  \
  } while (0)
#define REQUIRE_MSG(cond, msg)                                                           \
  do {                                                                                   \
    if (!(cond)) {                                                                       \
      harness::report(__FILE__, __LINE__, std::string(#cond) + ": " + (msg));            \
      throw harness::Abort{};                                                            \
    }                                                                                    \
  } while (0)

#define HARNESS_MAIN() \
  int main(int argc, char** argv) { return harness::run_all(argc, argv); }
