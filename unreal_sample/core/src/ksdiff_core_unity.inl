// The whole core as one translation unit, for hosts that compile it inside their own build
// rather than linking the CMake library: the Unreal module includes this file from
// Private/KsdiffCore.cpp, so the core is compiled by the engine's compiler and standard library.
//
// Hosts define macros that the libraries use as plain identifiers. Unreal's `check(expr)` is the
// one that matters: msgpack-c declares member functions named `check`; Windows headers may
// define `min`/`max`, which break std::numeric_limits<T>::max(). The macros are saved, cleared
// while the core compiles, and restored. (tests/unity_check.cpp compiles this file with
// such macros defined, in ctest, so the guard itself is tested.)
#pragma push_macro("check")
#pragma push_macro("verify")
#pragma push_macro("ensure")
#pragma push_macro("min")
#pragma push_macro("max")
#undef check
#undef verify
#undef ensure
#undef min
#undef max

#ifndef MSGPACK_NO_BOOST
#define MSGPACK_NO_BOOST 1  // msgpack-c without Boost: Unreal has no Boost
#endif

#include "protocol.cpp"
#include "curve.cpp"
#include "jitter_buffer.cpp"
#include "subscriber.cpp"
#include "live_link_feed.cpp"
#include "line_client.cpp"

#pragma pop_macro("max")
#pragma pop_macro("min")
#pragma pop_macro("ensure")
#pragma pop_macro("verify")
#pragma pop_macro("check")
