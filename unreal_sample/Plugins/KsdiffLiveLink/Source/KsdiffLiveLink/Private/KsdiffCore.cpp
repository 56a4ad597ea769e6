// The protocol core (unreal_sample/core/src), compiled into this module as one translation unit:
// built by the engine's compiler and standard library, with the engine's macros kept out of its
// way (see ksdiff_core_unity.inl, which ctest compiles with Unreal-like macros defined).
#include "CoreMinimal.h"

THIRD_PARTY_INCLUDES_START
#if PLATFORM_WINDOWS
#include "Windows/AllowWindowsPlatformTypes.h"  // zmq.h includes <winsock2.h>
#endif

#include "ksdiff_core_unity.inl"

#if PLATFORM_WINDOWS
#include "Windows/HideWindowsPlatformTypes.h"
#endif
THIRD_PARTY_INCLUDES_END
