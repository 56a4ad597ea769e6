// Makes ksdiff-runtime sources: from the Live Link panel's "+ Source" menu (a small panel asking
// for the endpoint, the stream filter and, for a runtime beyond loopback, the CURVE key files) or
// from a preset's connection string.
#pragma once

#include "CoreMinimal.h"
#include "KsdiffLiveLinkSourceSettings.h"
#include "LiveLinkSourceFactory.h"

#include "KsdiffLiveLinkSourceFactory.generated.h"

UCLASS()
class KSDIFFLIVELINK_API UKsdiffLiveLinkSourceFactory : public ULiveLinkSourceFactory
{
	GENERATED_BODY()

public:
	virtual FText GetSourceDisplayName() const override;
	virtual FText GetSourceTooltip() const override;
	virtual EMenuType GetMenuType() const override { return EMenuType::SubPanel; }
	virtual TSharedPtr<SWidget> BuildCreationPanel(FOnLiveLinkSourceCreated OnLiveLinkSourceCreated) const override;
	virtual TSharedPtr<ILiveLinkSource> CreateSource(const FString& ConnectionString) const override;

	/** FKsdiffLiveLinkConnectionSettings <-> the text Live Link stores in presets. */
	static FString ToConnectionString(const FKsdiffLiveLinkConnectionSettings& Settings);
	static FKsdiffLiveLinkConnectionSettings FromConnectionString(const FString& ConnectionString);

private:
	void OnConnectionAccepted(FKsdiffLiveLinkConnectionSettings Settings, FOnLiveLinkSourceCreated OnLiveLinkSourceCreated) const;
};
