#include "KsdiffLiveLinkSource.h"

#include "HAL/PlatformTime.h"
#include "Misc/ScopeLock.h"
#include "ILiveLinkClient.h"
#include "LiveLinkTypes.h"
#include "Misc/FrameRate.h"
#include "Misc/Paths.h"
#include "Misc/QualifiedFrameTime.h"
#include "Roles/LiveLinkBasicRole.h"

#include "ksdiff/curve.hpp"
#include "ksdiff/live_link_feed.hpp"
#include "ksdiff/subscriber.hpp"

#define LOCTEXT_NAMESPACE "KsdiffLiveLinkSource"

// The only place that talks to Live Link. Called on the subscriber's worker thread: both
// ILiveLinkClient calls are the _AnyThread ones.
class FKsdiffLiveLinkClientSink final : public ksdiff::LiveLinkSink
{
public:
	FKsdiffLiveLinkClientSink(ILiveLinkClient* InClient, FGuid InSourceGuid)
		: Client(InClient), SourceGuid(InSourceGuid)
	{
	}

	// Once per subject: the curve names (basic role: a list of named float properties). Pushing
	// static data clears the subject's buffered frames, which is why the feed does it only once.
	virtual void declare_subject(const std::string& Subject, const std::vector<std::string>& CurveNames) override
	{
		FLiveLinkStaticDataStruct StaticData(FLiveLinkBaseStaticData::StaticStruct());
		FLiveLinkBaseStaticData& Data = *StaticData.Cast<FLiveLinkBaseStaticData>();
		Data.PropertyNames.Reserve(static_cast<int32>(CurveNames.size()));
		for (const std::string& Name : CurveNames)
		{
			Data.PropertyNames.Add(FName(UTF8_TO_TCHAR(Name.c_str())));
		}
		Client->PushSubjectStaticData_AnyThread(Key(Subject), ULiveLinkBasicRole::StaticClass(), MoveTemp(StaticData));
	}

	virtual void push_frame(const ksdiff::SubjectFrame& Frame) override
	{
		FLiveLinkFrameDataStruct FrameData(FLiveLinkBaseFrameData::StaticStruct());
		FLiveLinkBaseFrameData& Data = *FrameData.Cast<FLiveLinkBaseFrameData>();
		Data.PropertyValues.SetNumUninitialized(static_cast<int32>(Frame.values.size()));
		for (int32 Index = 0; Index < Data.PropertyValues.Num(); ++Index)
		{
			Data.PropertyValues[Index] = Frame.values[static_cast<size_t>(Index)];
		}
		// When to show it, on the engine clock (the subscriber's clock is FPlatformTime::Seconds):
		// the audio instant it animates, not its arrival. Offset 0: the time is already engine time.
		Data.WorldTime = FLiveLinkWorldTime(Frame.world_time_s, 0.0);
		// The same instant as a frame number at the stream's own rate (index / fps = t_audio):
		// exact, and what Timecode mode and Take Recorder see.
		Data.MetaData.SceneTime = FQualifiedFrameTime(
			FFrameTime(FFrameNumber(static_cast<int32>(FMath::Min<uint64>(Frame.frame_index, MAX_int32)))),
			FFrameRate(Frame.fps, 1));
		Client->PushSubjectFrameData_AnyThread(Key(Frame.subject), MoveTemp(FrameData));
	}

private:
	FLiveLinkSubjectKey Key(const std::string& Subject) const
	{
		return FLiveLinkSubjectKey(SourceGuid, FName(UTF8_TO_TCHAR(Subject.c_str())));
	}

	ILiveLinkClient* Client;
	FGuid SourceGuid;
};

FCriticalSection FKsdiffLiveLinkSource::RunningLock;
TSet<FKsdiffLiveLinkSource*> FKsdiffLiveLinkSource::Running;

void FKsdiffLiveLinkSource::AnchorLine(const std::string& Stream, double AudioStartSeconds)
{
	FScopeLock Lock(&RunningLock);
	for (FKsdiffLiveLinkSource* Source : Running)
	{
		Source->Feed->anchor(Stream, AudioStartSeconds);
	}
}

void FKsdiffLiveLinkSource::AwaitLine(const std::string& Stream)
{
	FScopeLock Lock(&RunningLock);
	for (FKsdiffLiveLinkSource* Source : Running)
	{
		Source->Feed->await_anchor(Stream);
	}
}

FKsdiffLiveLinkSource::FKsdiffLiveLinkSource(const FKsdiffLiveLinkConnectionSettings& InConnection)
	: Connection(InConnection)
{
}

FKsdiffLiveLinkSource::~FKsdiffLiveLinkSource()
{
	Stop();
}

void FKsdiffLiveLinkSource::ReceiveClient(ILiveLinkClient* InClient, FGuid InSourceGuid)
{
	Stop();
	Sink = std::make_unique<FKsdiffLiveLinkClientSink>(InClient, InSourceGuid);
	Feed = std::make_unique<ksdiff::LiveLinkFeed>(*Sink);
	{
		FScopeLock Lock(&RunningLock);
		Running.Add(this);
	}

	ksdiff::SubscriberConfig Config;
	Config.endpoint = std::string(TCHAR_TO_UTF8(*Connection.Endpoint.TrimStartAndEnd()));
	Config.stream_filter = std::string(TCHAR_TO_UTF8(*Connection.StreamFilter.TrimStartAndEnd()));
	// CURVE keys from the certificate files, read here once (the core parses them and checks
	// the keys); the subscriber sets them on its socket before connecting. A relative path is
	// taken from the project folder (the editor's working directory is the engine's).
	SetupError.Reset();
	const auto KeyPath = [](const FString& Path)
	{
		const FString Trimmed = Path.TrimStartAndEnd();
		return Trimmed.IsEmpty() ? Trimmed : FPaths::ConvertRelativePathToFull(FPaths::ProjectDir(), Trimmed);
	};
	const FString ServerKeyFile = KeyPath(Connection.ServerKeyFile);
	const FString ClientSecretKeyFile = KeyPath(Connection.ClientSecretKeyFile);
	if (!ServerKeyFile.IsEmpty() || !ClientSecretKeyFile.IsEmpty())
	{
		if (ServerKeyFile.IsEmpty() || ClientSecretKeyFile.IsEmpty())
		{
			SetupError = TEXT("CURVE needs both key files: the runtime's server.key and this client's .key_secret");
			return;
		}
		try
		{
			Config.curve = ksdiff::curve_keys_from_files(std::string(TCHAR_TO_UTF8(*ServerKeyFile)),
				std::string(TCHAR_TO_UTF8(*ClientSecretKeyFile)));
		}
		catch (const ksdiff::CurveError& Error)
		{
			SetupError = UTF8_TO_TCHAR(Error.what());
			return;
		}
	}
	// Arrival times on the engine's clock, so the stamps compare with FApp::GetCurrentTime().
	Config.clock = [] { return FPlatformTime::Seconds(); };
	Subscriber = std::make_unique<ksdiff::Subscriber>(std::move(Config), *Feed);
	Subscriber->start();  // returns at once; ZeroMQ connects and reconnects in the background
}

void FKsdiffLiveLinkSource::InitializeSettings(ULiveLinkSourceSettings* Settings)
{
	ApplySettings(Settings);
}

void FKsdiffLiveLinkSource::OnSettingsChanged(ULiveLinkSourceSettings* Settings, const FPropertyChangedEvent& PropertyChangedEvent)
{
	ILiveLinkSource::OnSettingsChanged(Settings, PropertyChangedEvent);
	ApplySettings(Settings);
}

void FKsdiffLiveLinkSource::ApplySettings(const ULiveLinkSourceSettings* Settings)
{
	const UKsdiffLiveLinkSourceSettings* Ours = Cast<UKsdiffLiveLinkSourceSettings>(Settings);
	if (Ours == nullptr || !Feed)
	{
		return;
	}
	ksdiff::FeedConfig Config;
	Config.margin_s = Ours->JitterMargin;
	Config.angle_scale = Ours->AngleScale;
	Config.subject_prefix = std::string(TCHAR_TO_UTF8(*Ours->SubjectPrefix));
	Feed->set_config(Config);
}

bool FKsdiffLiveLinkSource::IsSourceStillValid() const
{
	// Valid while waiting for the runtime or while it is down: the subscriber reconnects by
	// itself, and some engine versions remove sources that report themselves invalid. Only a
	// source that cannot work (a bad endpoint or filter) or was stopped is invalid; the status
	// text tells the rest.
	if (!Subscriber)
	{
		return false;  // stopped, or could not start (SetupError)
	}
	const ksdiff::ConnectionState State = Subscriber->status().state;
	return State != ksdiff::ConnectionState::failed && State != ksdiff::ConnectionState::stopped;
}

bool FKsdiffLiveLinkSource::RequestSourceShutdown()
{
	Stop();  // joins the worker: bounded by its 20 ms poll plus the callback in progress
	return true;
}

void FKsdiffLiveLinkSource::Stop()
{
	{
		FScopeLock Lock(&RunningLock);
		Running.Remove(this);  // no hook reaches the Feed after this
	}
	if (Subscriber)
	{
		Subscriber->stop();  // after this, nothing calls the client any more
	}
	Subscriber.reset();
	Feed.reset();
	Sink.reset();
}

FText FKsdiffLiveLinkSource::GetSourceType() const
{
	return LOCTEXT("SourceType", "ksdiff-runtime");
}

FText FKsdiffLiveLinkSource::GetSourceMachineName() const
{
	if (Connection.StreamFilter.IsEmpty())
	{
		return FText::FromString(Connection.Endpoint);
	}
	return FText::Format(LOCTEXT("MachineFiltered", "{0} (stream {1})"), FText::FromString(Connection.Endpoint),
		FText::FromString(Connection.StreamFilter));
}

FText FKsdiffLiveLinkSource::GetSourceStatus() const
{
	if (!SetupError.IsEmpty())
	{
		return FText::Format(LOCTEXT("SetupFailed", "Error: {0}"), FText::FromString(SetupError));
	}
	if (!Subscriber)
	{
		return LOCTEXT("Stopped", "Stopped");
	}
	const ksdiff::SubscriberStatus Status = Subscriber->status();
	switch (Status.state)
	{
	case ksdiff::ConnectionState::live:
	{
		const ksdiff::FeedStatus Feeding = Feed->status();
		if (!Feeding.schema_ok)
		{
			return FText::FromString(UTF8_TO_TCHAR(Feeding.schema_error.c_str()));
		}
		if (Status.dropped_frames > 0)
		{
			return FText::Format(LOCTEXT("ActiveDrops", "Active ({0} frames lost)"), FText::AsNumber(Status.dropped_frames));
		}
		return LOCTEXT("Active", "Active");
	}
	case ksdiff::ConnectionState::connecting:
		if (!Status.handshake_error.empty())
		{
			// A runtime that refuses our keys (or needs some) sends nothing: say why.
			return FText::Format(LOCTEXT("HandshakeFailed", "Waiting for ksdiff-runtime: {0}"),
				FText::FromString(UTF8_TO_TCHAR(Status.handshake_error.c_str())));
		}
		return LOCTEXT("Connecting", "Waiting for ksdiff-runtime");
	case ksdiff::ConnectionState::stale:
		return LOCTEXT("Stale", "Not responding");
	case ksdiff::ConnectionState::failed:
		return FText::Format(LOCTEXT("Failed", "Error: {0}"), FText::FromString(UTF8_TO_TCHAR(Status.last_error.c_str())));
	case ksdiff::ConnectionState::stopped:
	default:
		return LOCTEXT("Stopped", "Stopped");
	}
}

TSubclassOf<ULiveLinkSourceSettings> FKsdiffLiveLinkSource::GetSettingsClass() const
{
	return UKsdiffLiveLinkSourceSettings::StaticClass();
}

#undef LOCTEXT_NAMESPACE
