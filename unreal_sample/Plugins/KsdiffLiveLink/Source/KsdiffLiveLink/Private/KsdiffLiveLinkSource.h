// The Live Link source: a thin adapter. The protocol core (ksdiff::Subscriber on its worker
// thread, ksdiff::LiveLinkFeed) does the work; this class owns them and forwards the feed's two
// outputs to ILiveLinkClient (see FKsdiffLiveLinkClientSink in the .cpp).
#pragma once

#include "CoreMinimal.h"
#include "HAL/CriticalSection.h"
#include "ILiveLinkSource.h"
#include "KsdiffLiveLinkSourceSettings.h"

#include <memory>
#include <string>

class ILiveLinkClient;
class FKsdiffLiveLinkClientSink;
namespace ksdiff
{
	class LiveLinkFeed;
	class Subscriber;
}

class FKsdiffLiveLinkSource : public ILiveLinkSource
{
public:
	explicit FKsdiffLiveLinkSource(const FKsdiffLiveLinkConnectionSettings& InConnection);
	virtual ~FKsdiffLiveLinkSource() override;

	//~ Begin ILiveLinkSource
	virtual void ReceiveClient(ILiveLinkClient* InClient, FGuid InSourceGuid) override;
	virtual void InitializeSettings(ULiveLinkSourceSettings* Settings) override;
	virtual bool IsSourceStillValid() const override;
	virtual bool RequestSourceShutdown() override;
	virtual FText GetSourceType() const override;
	virtual FText GetSourceMachineName() const override;
	virtual FText GetSourceStatus() const override;
	virtual TSubclassOf<ULiveLinkSourceSettings> GetSettingsClass() const override;
	virtual void OnSettingsChanged(ULiveLinkSourceSettings* Settings, const FPropertyChangedEvent& PropertyChangedEvent) override;
	//~ End ILiveLinkSource

	// Lines in sync (UKsdiffLineSync, the Blueprint hooks): on every running ksdiff source, the
	// stream's audio starts playing at AudioStartSeconds on FPlatformTime::Seconds (the clock the
	// frames' arrival times are on), or its frames wait for that (ksdiff::LiveLinkFeed).
	static void AnchorLine(const std::string& Stream, double AudioStartSeconds);
	static void AwaitLine(const std::string& Stream);

private:
	// The sources whose Feed exists, for the static hooks; Stop() leaves it before the Feed goes.
	static FCriticalSection RunningLock;
	static TSet<FKsdiffLiveLinkSource*> Running;

	void ApplySettings(const ULiveLinkSourceSettings* Settings);
	void Stop();

	FKsdiffLiveLinkConnectionSettings Connection;
	// Why the source could not start (unreadable CURVE key files); empty when it did.
	FString SetupError;
	// Destroyed in reverse order: the subscriber (and its thread) first, then what it calls.
	std::unique_ptr<FKsdiffLiveLinkClientSink> Sink;
	std::unique_ptr<ksdiff::LiveLinkFeed> Feed;
	std::unique_ptr<ksdiff::Subscriber> Subscriber;
};
