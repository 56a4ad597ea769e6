// Lines in sync, for Blueprints: the game plays an NPC line's audio itself and tells the ksdiff
// Live Link sources when it starts, so the line's frames are shown on the audio's clock
// (audio start + t_audio) rather than when they arrived. The runtime states the latency to allow
// for (latency_ms in stream_opened/stream_start, protocol 1.2): start the audio that long after
// pushing the line's first audio, and call Line Playback Started then.
#pragma once

#include "CoreMinimal.h"
#include "Kismet/BlueprintFunctionLibrary.h"

#include "KsdiffLineSync.generated.h"

UCLASS()
class UKsdiffLineSync : public UBlueprintFunctionLibrary
{
	GENERATED_BODY()

public:
	/** Hold the frames of stream StreamId until Line Playback Started says when its audio plays.
	 *  Call it before opening the line: a line's frames can arrive before its audio starts. */
	UFUNCTION(BlueprintCallable, Category = "Ksdiff|Lines", meta = (DisplayName = "Await Line Playback"))
	static void AwaitLinePlayback(const FString& StreamId);

	/** The audio of stream StreamId starts playing now, plus SecondsFromNow (negative: it started
	 *  that long ago). Its frames are then shown at that instant + their audio time, for good. */
	UFUNCTION(BlueprintCallable, Category = "Ksdiff|Lines", meta = (DisplayName = "Line Playback Started"))
	static void LinePlaybackStarted(const FString& StreamId, float SecondsFromNow = 0.0f);
};
