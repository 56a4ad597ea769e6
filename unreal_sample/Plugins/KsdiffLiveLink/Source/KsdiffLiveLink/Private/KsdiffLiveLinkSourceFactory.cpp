#include "KsdiffLiveLinkSourceFactory.h"

#include "KsdiffLiveLinkSource.h"
#include "SKsdiffLiveLinkSourcePanel.h"

#define LOCTEXT_NAMESPACE "KsdiffLiveLinkSourceFactory"

FText UKsdiffLiveLinkSourceFactory::GetSourceDisplayName() const
{
	return LOCTEXT("SourceDisplayName", "ksdiff-runtime");
}

FText UKsdiffLiveLinkSourceFactory::GetSourceTooltip() const
{
	return LOCTEXT("SourceTooltip", "Facial animation from speech: subscribes to a ksdiff-runtime over ZeroMQ (one subject per stream)");
}

TSharedPtr<SWidget> UKsdiffLiveLinkSourceFactory::BuildCreationPanel(FOnLiveLinkSourceCreated OnLiveLinkSourceCreated) const
{
	return SNew(SKsdiffLiveLinkSourcePanel)
		.OnConnectionAccepted(FOnKsdiffConnectionAccepted::CreateUObject(
			this, &UKsdiffLiveLinkSourceFactory::OnConnectionAccepted, OnLiveLinkSourceCreated));
}

void UKsdiffLiveLinkSourceFactory::OnConnectionAccepted(FKsdiffLiveLinkConnectionSettings Settings,
	FOnLiveLinkSourceCreated OnLiveLinkSourceCreated) const
{
	// Live Link stores the connection string in presets and gives it back to CreateSource.
	OnLiveLinkSourceCreated.ExecuteIfBound(MakeShared<FKsdiffLiveLinkSource>(Settings), ToConnectionString(Settings));
}

TSharedPtr<ILiveLinkSource> UKsdiffLiveLinkSourceFactory::CreateSource(const FString& ConnectionString) const
{
	return MakeShared<FKsdiffLiveLinkSource>(FromConnectionString(ConnectionString));
}

FString UKsdiffLiveLinkSourceFactory::ToConnectionString(const FKsdiffLiveLinkConnectionSettings& Settings)
{
	FString Text;
	FKsdiffLiveLinkConnectionSettings::StaticStruct()->ExportText(Text, &Settings, nullptr, nullptr, PPF_None, nullptr);
	return Text;
}

FKsdiffLiveLinkConnectionSettings UKsdiffLiveLinkSourceFactory::FromConnectionString(const FString& ConnectionString)
{
	FKsdiffLiveLinkConnectionSettings Settings;  // defaults for what the string does not set
	if (!ConnectionString.IsEmpty())
	{
		FKsdiffLiveLinkConnectionSettings::StaticStruct()->ImportText(*ConnectionString, &Settings, nullptr, PPF_None,
			GLog, FKsdiffLiveLinkConnectionSettings::StaticStruct()->GetName());
	}
	return Settings;
}

#undef LOCTEXT_NAMESPACE
