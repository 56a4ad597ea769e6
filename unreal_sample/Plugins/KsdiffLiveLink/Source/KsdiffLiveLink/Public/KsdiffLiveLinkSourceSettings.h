// Settings of a ksdiff-runtime Live Link source (shown in the Live Link panel when the source
// is selected, saved in Live Link presets).
#pragma once

#include "CoreMinimal.h"
#include "LiveLinkSourceSettings.h"

#include "KsdiffLiveLinkSourceSettings.generated.h"

/** Where a source connects: what the creation panel asks for, and the connection string. */
USTRUCT()
struct KSDIFFLIVELINK_API FKsdiffLiveLinkConnectionSettings
{
	GENERATED_BODY()

	/** The runtime's PUB endpoint, as given to `ksdiff-runtime serve --pub`. */
	UPROPERTY(EditAnywhere, Category = "Connection")
	FString Endpoint = TEXT("tcp://127.0.0.1:5555");

	/** Only this stream ("mic", "npc1", ...). Empty: every stream, one subject per stream. */
	UPROPERTY(EditAnywhere, Category = "Connection")
	FString StreamFilter;

	/**
	 * CurveZMQ, for a runtime listening beyond loopback (it requires keys there): the runtime's
	 * public certificate, `server.key` as `ksdiff-runtime keys` wrote it. A path on this machine
	 * (relative: from the project folder). Empty, with ClientSecretKeyFile: plain TCP, as a
	 * runtime on this machine serves.
	 */
	UPROPERTY(EditAnywhere, Category = "Connection|CURVE")
	FString ServerKeyFile;

	/**
	 * This client's own certificate with its secret key (`NAME.key_secret`); the runtime's
	 * --curve-clients folder must hold its `NAME.key`. A path on this machine (relative: from the
	 * project folder).
	 */
	UPROPERTY(EditAnywhere, Category = "Connection|CURVE")
	FString ClientSecretKeyFile;
};

/**
 * Defaults to Live Link's EngineTime mode: each frame is stamped with the engine-clock time at
 * which its audio instant should be seen (first frame's arrival + JitterMargin + t_audio), and
 * Live Link interpolates between stamped frames. Never stamped with arrival time.
 */
UCLASS()
class KSDIFFLIVELINK_API UKsdiffLiveLinkSourceSettings : public ULiveLinkSourceSettings
{
	GENERATED_BODY()

public:
	UKsdiffLiveLinkSourceSettings();

	/**
	 * How far behind the first frame's arrival a stream is shown: frames delayed by less than
	 * this (network, inference jitter) still come in time. A frame later than this moves the
	 * stream's timeline instead of being skipped. Applies to streams that start after a change.
	 */
	UPROPERTY(EditAnywhere, Category = "ksdiff-runtime", meta = (ForceUnits = s, ClampMin = "0.0", ClampMax = "1.0"))
	float JitterMargin = 0.05f;

	/** Head and eye curves are radians times this (57.29578 gives degrees). Weights are unscaled. */
	UPROPERTY(EditAnywhere, Category = "ksdiff-runtime", meta = (ClampMin = "0.0"))
	float AngleScale = 1.0f;

	/** Subject name = this prefix + the stream id (e.g. "ksd_" gives "ksd_mic"). */
	UPROPERTY(EditAnywhere, Category = "ksdiff-runtime")
	FString SubjectPrefix;
};
