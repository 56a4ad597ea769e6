// The Live Link source: a thin adapter. The protocol core (ksdiff::Subscriber on its worker
// thread, ksdiff::LiveLinkFeed) does the work; this class owns them and forwards the feed's two
// outputs to ILiveLinkClient (see FKsdiffLiveLinkClientSink in the .cpp).
#pragma once

#include "CoreMinimal.h"
#include "ILiveLinkSource.h"
#include "KsdiffLiveLinkSourceSettings.h"

#include <memory>

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

private:
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
