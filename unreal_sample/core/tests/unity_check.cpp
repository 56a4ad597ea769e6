// Compiles the core the way the Unreal module does (src/ksdiff_core_unity.inl: every source in
// one translation unit) with stand-ins for Unreal's assertion macros defined, and checks they
// survive. Catches name clashes between the sources and macro clashes with msgpack-c here,
// where the plugin itself cannot be compiled.
#define check(expr) static_cast<void>(expr)
#define verify(expr) static_cast<void>(expr)
#define ensure(expr) (!!(expr))

// The public headers, as the plugin's own files include them: with the engine's macros active.
#include "ksdiff/line_client.hpp"
#include "ksdiff/live_link_feed.hpp"
#include "ksdiff/subscriber.hpp"

#define min(a, b) (((a) < (b)) ? (a) : (b))  // as <windows.h> without NOMINMAX
#define max(a, b) (((a) > (b)) ? (a) : (b))

#include "ksdiff_core_unity.inl"

#include <cstdio>

int main() {
  int calls = 0;
  check(++calls);  // the host's macros are back after the core
  verify(++calls);
  const bool ok = ensure(calls == 2) && max(1, 2) == 2 && min(1, 2) == 1;
  // And the core is really there: decode the smallest valid message.
  const ksdiff::Message m = ksdiff::decode(ksdiff::encode_hello_request());
  if (!ok || m.type != "hello") {
    std::fprintf(stderr, "unity build check failed\n");
    return 1;
  }
  std::fprintf(stderr, "unity build check: the core compiles as one unit next to Unreal-like macros\n");
  return 0;
}
