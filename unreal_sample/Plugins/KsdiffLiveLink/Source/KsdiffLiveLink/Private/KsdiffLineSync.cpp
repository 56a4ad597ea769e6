#include "KsdiffLineSync.h"

#include "HAL/PlatformTime.h"
#include "KsdiffLiveLinkSource.h"

void UKsdiffLineSync::AwaitLinePlayback(const FString& StreamId)
{
	FKsdiffLiveLinkSource::AwaitLine(std::string(TCHAR_TO_UTF8(*StreamId)));
}

void UKsdiffLineSync::LinePlaybackStarted(const FString& StreamId, float SecondsFromNow)
{
	// FPlatformTime::Seconds: the clock the sources' subscribers stamp arrivals with.
	FKsdiffLiveLinkSource::AnchorLine(std::string(TCHAR_TO_UTF8(*StreamId)),
		FPlatformTime::Seconds() + static_cast<double>(SecondsFromNow));
}
