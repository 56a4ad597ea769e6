#include "SKsdiffLiveLinkSourcePanel.h"

#include "Widgets/Input/SButton.h"
#include "Widgets/Input/SEditableTextBox.h"
#include "Widgets/SBoxPanel.h"
#include "Widgets/Text/STextBlock.h"

#include "ksdiff/protocol.hpp"

#define LOCTEXT_NAMESPACE "KsdiffLiveLinkSourcePanel"

void SKsdiffLiveLinkSourcePanel::Construct(const FArguments& InArgs)
{
	OnConnectionAccepted = InArgs._OnConnectionAccepted;
	const FKsdiffLiveLinkConnectionSettings Defaults;

	ChildSlot
	[
		SNew(SVerticalBox)
		+ SVerticalBox::Slot().AutoHeight().Padding(4.0f)
		[
			SNew(SHorizontalBox)
			+ SHorizontalBox::Slot().FillWidth(0.4f).VAlign(VAlign_Center)
			[
				SNew(STextBlock).Text(LOCTEXT("EndpointLabel", "Runtime endpoint"))
			]
			+ SHorizontalBox::Slot().FillWidth(0.6f)
			[
				SAssignNew(EndpointBox, SEditableTextBox)
				.Text(FText::FromString(Defaults.Endpoint))
				.ToolTipText(LOCTEXT("EndpointTip", "The PUB endpoint of `ksdiff-runtime serve` (its --pub flag)"))
			]
		]
		+ SVerticalBox::Slot().AutoHeight().Padding(4.0f)
		[
			SNew(SHorizontalBox)
			+ SHorizontalBox::Slot().FillWidth(0.4f).VAlign(VAlign_Center)
			[
				SNew(STextBlock).Text(LOCTEXT("FilterLabel", "Stream filter"))
			]
			+ SHorizontalBox::Slot().FillWidth(0.6f)
			[
				SAssignNew(FilterBox, SEditableTextBox)
				.HintText(LOCTEXT("FilterHint", "all streams"))
				.ToolTipText(LOCTEXT("FilterTip", "One stream id (mic, npc1, ...), or empty for every stream; each stream is a subject"))
			]
		]
		+ SVerticalBox::Slot().AutoHeight().Padding(4.0f)
		[
			SNew(SHorizontalBox)
			+ SHorizontalBox::Slot().FillWidth(0.4f).VAlign(VAlign_Center)
			[
				SNew(STextBlock).Text(LOCTEXT("ServerKeyLabel", "Runtime key (CURVE)"))
			]
			+ SHorizontalBox::Slot().FillWidth(0.6f)
			[
				SAssignNew(ServerKeyBox, SEditableTextBox)
				.HintText(LOCTEXT("ServerKeyHint", "none: runtime on this machine"))
				.ToolTipText(LOCTEXT("ServerKeyTip", "For a runtime beyond loopback: the path of its server.key (made by `ksdiff-runtime keys`)"))
			]
		]
		+ SVerticalBox::Slot().AutoHeight().Padding(4.0f)
		[
			SNew(SHorizontalBox)
			+ SHorizontalBox::Slot().FillWidth(0.4f).VAlign(VAlign_Center)
			[
				SNew(STextBlock).Text(LOCTEXT("ClientKeyLabel", "This client's key (CURVE)"))
			]
			+ SHorizontalBox::Slot().FillWidth(0.6f)
			[
				SAssignNew(ClientKeyBox, SEditableTextBox)
				.HintText(LOCTEXT("ClientKeyHint", "none: runtime on this machine"))
				.ToolTipText(LOCTEXT("ClientKeyTip", "The path of this client's NAME.key_secret; the runtime's --curve-clients folder holds its NAME.key"))
			]
		]
		+ SVerticalBox::Slot().AutoHeight().Padding(4.0f)
		[
			SNew(STextBlock).Text(this, &SKsdiffLiveLinkSourcePanel::ValidationMessage)
		]
		+ SVerticalBox::Slot().AutoHeight().HAlign(HAlign_Right).Padding(4.0f)
		[
			SNew(SButton)
			.Text(LOCTEXT("Add", "Add"))
			.IsEnabled(this, &SKsdiffLiveLinkSourcePanel::IsInputValid)
			.OnClicked(this, &SKsdiffLiveLinkSourcePanel::OnAddClicked)
		]
	];
}

FKsdiffLiveLinkConnectionSettings SKsdiffLiveLinkSourcePanel::Current() const
{
	FKsdiffLiveLinkConnectionSettings Settings;
	Settings.Endpoint = EndpointBox.IsValid() ? EndpointBox->GetText().ToString().TrimStartAndEnd() : Settings.Endpoint;
	Settings.StreamFilter = FilterBox.IsValid() ? FilterBox->GetText().ToString().TrimStartAndEnd() : FString();
	Settings.ServerKeyFile = ServerKeyBox.IsValid() ? ServerKeyBox->GetText().ToString().TrimStartAndEnd() : FString();
	Settings.ClientSecretKeyFile = ClientKeyBox.IsValid() ? ClientKeyBox->GetText().ToString().TrimStartAndEnd() : FString();
	return Settings;
}

FText SKsdiffLiveLinkSourcePanel::ValidationMessage() const
{
	const FKsdiffLiveLinkConnectionSettings Settings = Current();
	if (!Settings.Endpoint.StartsWith(TEXT("tcp://")) && !Settings.Endpoint.StartsWith(TEXT("ipc://")))
	{
		return LOCTEXT("BadEndpoint", "The endpoint looks like tcp://127.0.0.1:5555");
	}
	// The same rule as the runtime (SPEC 2), from the protocol core.
	if (!Settings.StreamFilter.IsEmpty() && !ksdiff::is_valid_stream_id(TCHAR_TO_UTF8(*Settings.StreamFilter)))
	{
		return LOCTEXT("BadFilter", "A stream id is 1 to 64 of A-Z a-z 0-9 _ . - (not . or ..)");
	}
	// Both key files or neither (the files themselves are read when the source starts).
	if (Settings.ServerKeyFile.IsEmpty() != Settings.ClientSecretKeyFile.IsEmpty())
	{
		return LOCTEXT("HalfKeys", "CURVE needs both files: the runtime's server.key and this client's .key_secret");
	}
	return FText::GetEmpty();
}

FReply SKsdiffLiveLinkSourcePanel::OnAddClicked()
{
	if (IsInputValid())
	{
		OnConnectionAccepted.ExecuteIfBound(Current());
	}
	return FReply::Handled();
}

#undef LOCTEXT_NAMESPACE
