// The creation panel of the Live Link "+ Source" menu: endpoint, stream filter and, for a runtime
// beyond loopback, the two CURVE key files; then Add.
#pragma once

#include "CoreMinimal.h"
#include "KsdiffLiveLinkSourceSettings.h"
#include "Widgets/DeclarativeSyntaxSupport.h"
#include "Widgets/SCompoundWidget.h"

class SEditableTextBox;

DECLARE_DELEGATE_OneParam(FOnKsdiffConnectionAccepted, FKsdiffLiveLinkConnectionSettings);

class SKsdiffLiveLinkSourcePanel : public SCompoundWidget
{
public:
	SLATE_BEGIN_ARGS(SKsdiffLiveLinkSourcePanel) {}
		SLATE_EVENT(FOnKsdiffConnectionAccepted, OnConnectionAccepted)
	SLATE_END_ARGS()

	void Construct(const FArguments& InArgs);

private:
	FKsdiffLiveLinkConnectionSettings Current() const;
	FText ValidationMessage() const;  // empty when the input is usable
	bool IsInputValid() const { return ValidationMessage().IsEmpty(); }
	FReply OnAddClicked();

	TSharedPtr<SEditableTextBox> EndpointBox;
	TSharedPtr<SEditableTextBox> FilterBox;
	TSharedPtr<SEditableTextBox> ServerKeyBox;
	TSharedPtr<SEditableTextBox> ClientKeyBox;
	FOnKsdiffConnectionAccepted OnConnectionAccepted;
};
