// The logic of the Unreal Live Link source, without Unreal types.
//
// LiveLinkFeed is a SubscriberHandler: it turns the runtime's messages into what a Live Link
// source pushes -- one subject per stream, its curve names once, then one frame of curve values
// per protocol frame, stamped with the show time of the frame's audio instant (StreamClock),
// never with its arrival time. A LiveLinkSink receives that; the Unreal plugin's sink maps the
// two calls onto ILiveLinkClient::PushSubjectStaticData_AnyThread and
// PushSubjectFrameData_AnyThread and does nothing else, so everything here is tested in ctest.
#pragma once

#include "ksdiff/jitter_buffer.hpp"
#include "ksdiff/protocol.hpp"
#include "ksdiff/subscriber.hpp"

#include <array>
#include <cstdint>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <string_view>
#include <vector>

namespace ksdiff {

// The curves of a subject, named as Apple's ARKit Live Link source and the Live Link Face app
// name them (what MetaHuman's mh_arkit_mapping_pose expects): the 52 blendshapes capitalised
// ("eyeBlinkLeft" -> "EyeBlinkLeft"), then HeadYaw, HeadPitch, HeadRoll, LeftEyeYaw,
// LeftEyePitch, LeftEyeRoll, RightEyeYaw, RightEyePitch, RightEyeRoll (the rolls are always 0:
// the protocol has no eye roll).
inline constexpr std::size_t kLiveLinkCurveCount = kNumBlendshapes + 9;
const std::array<std::string, kLiveLinkCurveCount>& live_link_curve_names();

struct SubjectFrame {
  std::string subject;
  std::array<float, kLiveLinkCurveCount> values{};  // in live_link_curve_names() order
  double world_time_s = 0.0;  // show time on the subscriber's clock: offset + t_audio
  std::uint64_t frame_index = 0;  // the frame's `index` at `fps`: its audio time as a frame number
  std::uint32_t fps = 0;
  double t_audio = 0.0;
  bool last = false;
};

// Where the feed's output goes. Called on the subscriber's worker thread.
class LiveLinkSink {
 public:
  virtual ~LiveLinkSink();
  // Once per subject, before its first frame (Live Link: static data, basic role).
  virtual void declare_subject(const std::string& subject, const std::vector<std::string>& curve_names) = 0;
  virtual void push_frame(const SubjectFrame& frame) = 0;
};

struct FeedConfig {
  double margin_s = 0.05;     // jitter margin of the show times (see StreamClock)
  float angle_scale = 1.0f;   // head/eye angles are radians x this (57.29578 for degrees)
  std::string subject_prefix;  // subject name = prefix + stream id
};

struct FeedStatus {
  std::size_t subjects = 0;
  std::uint64_t frames_pushed = 0;
  std::uint64_t reanchors = 0;  // late frames that moved a stream's timeline
  bool schema_ok = true;        // the last hello's blendshape names are the 52 ARKit ones
  std::string schema_error;
};

class LiveLinkFeed final : public SubscriberHandler {
 public:
  LiveLinkFeed(LiveLinkSink& sink, FeedConfig initial = {});

  // Thread-safe: the host may change settings while frames flow. The margin applies from each
  // stream's next anchoring.
  void set_config(const FeedConfig& new_config);
  FeedConfig config() const;
  FeedStatus status() const;

  // Lines in sync (SPEC 6.1): the game plays a line's audio itself and says when it starts.
  // anchor(): the stream's audio starts playing at `audio_start_s` on the subscriber's clock;
  // its frames are stamped audio_start_s + t_audio from now on (never re-anchored), and the
  // frames held for it (await_anchor) are pushed at once, in order, before any that come
  // meanwhile. await_anchor(): hold this stream's frames until anchor() instead of stamping
  // them on arrival -- call it before opening the line, since a line's frames can come before
  // its audio plays. Both thread-safe.
  // Bounds (jitter_buffer.hpp): a held line keeps its first kMaxLineFrames frames; once ended,
  // it is dropped when a new stream with its id starts or kUnanchoredLineTimeoutS after its last
  // frame. An anchor() for a stream of which nothing is known lapses if that id's next frame
  // comes more than kStaleAnchorS after its show time on it (the anchor came after its line).
  void anchor(const std::string& stream, double audio_start_s);
  void await_anchor(const std::string& stream);

  void on_hello(const Hello& hello) override;
  void on_frame(const Frame& frame, double arrival_s) override;
  void on_stream_start(const StreamStart& start) override;
  void on_stream_end(const StreamEnd& end) override;
  void on_runtime_restart(const std::string& old_instance, const std::string& new_instance) override;

 private:
  LiveLinkSink& sink_;
  mutable std::mutex mutex_;
  FeedConfig config_;
  // source_index_[k]: where canonical blendshape k sits in the runtime's frames (identity
  // unless a hello lists the same 52 names in another order: SPEC 9.4, map by name).
  std::array<std::size_t, kNumBlendshapes> source_index_{};
  std::set<std::string> declared_;              // subjects whose curve names were pushed
  std::map<std::string, StreamClock> clocks_;   // by stream id: each stream has its audio clock
  // Anchors given before any frame or await_anchor() of their stream (see kStaleAnchorS).
  std::set<std::string> pending_anchors_;
  // A stream awaiting anchor(), with the frames (and arrival times) held for it, oldest first.
  struct Held {
    std::vector<std::pair<Frame, double>> frames;
    bool ended = false;      // its `last` frame or its stream_end came
    bool replaying = false;  // anchor() is pushing the frames: new ones queue behind them
    double last_arrival_s = 0.0;
  };
  std::map<std::string, Held> held_;
  FeedStatus status_;

  // What the sink gets for `frame`, stamped on its stream's clock. Needs mutex_ held. `declare`:
  // the frame's subject is new. The clock of a stream is forgotten on `last` if `end_clock`.
  SubjectFrame stamp(const Frame& frame, double arrival_s, bool end_clock, bool& declare);
  void deliver(const SubjectFrame& frame, bool declare);  // to the sink, without mutex_
};

}  // namespace ksdiff
