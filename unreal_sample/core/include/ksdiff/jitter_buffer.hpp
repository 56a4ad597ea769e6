// Scheduling frames on the audio clock (SPEC 6), not by their arrival time.
//
// A frame animates instant `t_audio` of its stream's audio. A receiver shows it at local time
// `offset + t_audio`. Two ways to fix a stream's offset:
//
//   * Live input (SPEC 6.2, a microphone): the first frame anchors it,
//         offset = arrival(first frame) - t_audio(first frame) + margin
//     so network and compute jitter smaller than `margin` never reaches the screen. A frame that
//     arrives after its own show time means the runtime stalled for longer than the margin: the
//     stream re-anchors on that frame (the offset grows, the motion pauses briefly instead of
//     skipping).
//   * Audio the game plays itself (SPEC 6.1, an NPC line): the game knows the local time T at
//     which the line's audio starts playing (e.g. latency_ms after its first push, the latency
//     the runtime states in stream_opened/stream_start since 1.2) and anchors the stream there:
//     offset = T, for good. A frame that comes after its instant was shown is simply late (the
//     audio is never slowed down for it).
//
// StreamClock is that mapping alone (the Live Link source uses it: Live Link interpolates
// itself). JitterBuffer adds the frames and samples them at any local time, interpolating
// linearly between the two frames around it, for hosts that render on their own tick.
// All times are seconds; local times come from whatever monotonic clock the caller uses.
#pragma once

#include "ksdiff/protocol.hpp"

#include <array>
#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace ksdiff {

// Bounds on what waits for the game's audio (SPEC 6.1), shared by JitterBuffer and LiveLinkFeed.
//
// A line is pushed whole, up to stream_opened.max_ahead_s (20 s by default) ahead of its audio,
// so all of its frames can be buffered before the first is shown: 20 s is 600 frames at 30 fps
// (1200 at 60) plus the ease to rest. A stream keeps at most kMaxLineFrames of them; over that,
// the newest go, never frames still to be shown before them (the start of the line).
inline constexpr std::size_t kMaxLineFrames = 2048;
// A line that awaits anchor() and has ended is forgotten this long after its last frame came if
// the game never anchors it (its audio never played).
inline constexpr double kUnanchoredLineTimeoutS = 60.0;
// anchor() on a stream of which nothing is known yet waits for that stream's frames; if the first
// one then comes more than this after its show time on that anchor, the anchor was a late one (for
// a line already played out and forgotten) and it lapses: the new stream anchors by itself.
inline constexpr double kStaleAnchorS = 5.0;

class StreamClock {
 public:
  explicit StreamClock(double margin_s = 0.05) : margin_s_(margin_s) {}

  // Local time at which to show the frame of audio time `t_audio` that arrived at local time
  // `arrival_s`. Anchors on the first call; re-anchors when the newest frame so far arrives
  // after its show time (a stall). An older frame arriving out of order never moves the
  // timeline: it is only in the past.
  double schedule(double t_audio, double arrival_s);

  bool anchored() const noexcept { return offset_.has_value(); }
  double offset() const noexcept { return offset_.value_or(0.0); }
  double margin() const noexcept { return margin_s_; }
  // A new margin applies from the next anchoring (a jump now would be visible).
  void set_margin(double margin_s) noexcept { margin_s_ = margin_s; }
  std::uint64_t reanchors() const noexcept { return reanchors_; }
  bool scheduled_any() const noexcept { return newest_t_audio_.has_value(); }  // since the last reset()
  // Audio time 0 plays at local time `offset`, for good: schedule() never re-anchors after this.
  void fix(double offset) noexcept {
    offset_ = offset;
    fixed_ = true;
  }
  bool on_audio_clock() const noexcept { return fixed_; }  // fixed by fix(): never moves
  void reset() noexcept {
    offset_.reset();
    newest_t_audio_.reset();
    fixed_ = false;
  }

 private:
  double margin_s_;
  bool fixed_ = false;
  std::optional<double> offset_;
  std::optional<double> newest_t_audio_;
  std::uint64_t reanchors_ = 0;
};

// What a frame moves: the part of a Frame that is interpolated.
struct Pose {
  std::array<float, kNumBlendshapes> blendshapes{};
  std::array<float, 3> head{};  // [pitch, yaw, roll], radians
  std::array<float, 4> gaze{};  // [leftYaw, leftPitch, rightYaw, rightPitch], radians
};

enum class PlayState {
  unknown,  // no frame of this stream yet
  waiting,  // before the first frame's show time, or awaiting anchor(): the first frame's pose
  playing,  // between two frames: interpolated
  holding,  // after the newest frame and the stream goes on: starved, newest pose held
  ended,    // past the final frame of an ended stream: its pose; the stream is then forgotten
};

struct Sample {
  PlayState state = PlayState::unknown;
  Pose pose;
  double t_audio = 0.0;  // the audio instant the pose shows
};

class JitterBuffer {
 public:
  // Over max_frames_per_stream buffered frames, a stream drops the oldest if it is past (the next
  // frame's show time has come), otherwise its newest: frames still to be shown are never dropped
  // for later ones. The default holds a whole line (see kMaxLineFrames).
  explicit JitterBuffer(double margin_s = 0.05, std::size_t max_frames_per_stream = kMaxLineFrames);

  // Adds a frame that arrived at local time `arrival_s`; returns its show time (NaN while the
  // stream awaits anchor()). Frames may come in any order (they are kept sorted by t_audio); a
  // repeated t_audio replaces the frame. A frame with `last` ends its stream. A frame after the
  // end starts a new stream with that id (its stream_start was missed, and maybe its first
  // frames: it can start at any seq), except an exact repeat (same seq, t_audio and pose) of a
  // frame the ended stream still holds, which is ignored (it returns that frame's show time).
  // Thread-safe (push from a network thread, sample from a render thread).
  double push(const Frame& frame, double arrival_s);

  // The stream's audio starts playing at local time `audio_start_s` on the clock sample() is
  // given (SPEC 6.1): its frames are shown at audio_start_s + t_audio, and its timeline never
  // moves again. Call it before or after the stream's frames arrive. On a stream with no frame
  // (nor await_anchor) yet, it is for the next frames of that id unless they come far too late
  // for it (kStaleAnchorS): an anchor given after its line played out then lapses.
  void anchor(const std::string& stream, double audio_start_s);
  // The stream's frames wait for anchor() (sample() says `waiting`) instead of anchoring on
  // their arrival: call it before they come (when opening the line whose audio you will play).
  // Forgets an older stream of that id. A line that ends and is not anchored within
  // kUnanchoredLineTimeoutS of its last frame is forgotten.
  void await_anchor(const std::string& stream);

  // No more frames for `stream` (its stream_end): what is buffered still plays, then the
  // stream reports `ended` and is forgotten, so a new stream with that id anchors afresh.
  // Ignored for a stream awaiting anchor() that has no frame yet (the end of an older stream).
  void end_stream(const std::string& stream);
  // Forgets a stream at once (a new stream_start for its id, a runtime restart).
  void reset_stream(const std::string& stream);
  void clear();

  // The pose of `stream` at local time `local_s`. Frames older than the one before `local_s`
  // are dropped, so sample with a non-decreasing clock.
  Sample sample(const std::string& stream, double local_s);

  std::size_t buffered(const std::string& stream) const;
  std::optional<double> offset(const std::string& stream) const;
  std::uint64_t reanchors(const std::string& stream) const;
  std::vector<std::string> streams() const;

 private:
  struct HeldFrame {
    std::uint64_t seq = 0;
    Pose pose;
  };
  struct StreamState {
    explicit StreamState(double margin_s) : timeline(margin_s) {}
    StreamClock timeline;
    std::map<double, HeldFrame> frames;  // by t_audio
    bool ended = false;
    bool await_anchor = false;  // frames wait for anchor() instead of anchoring themselves
    bool pending_anchor = false;  // anchor() came before any frame or await_anchor()
    double last_arrival_s = 0.0;
  };

  // Whether `frame` is an exact repeat (seq, t_audio, pose) of a frame `s` holds.
  static bool is_held_repeat(const StreamState& s, const Frame& frame);
  // Forgets the ended lines that awaited anchor() in vain (kUnanchoredLineTimeoutS before `now_s`).
  void forget_unanchored(double now_s);

  mutable std::mutex mutex_;
  double margin_s_;
  std::size_t max_frames_;
  std::map<std::string, StreamState> streams_;
};

// Linear interpolation of every weight and angle; w = 0 gives `a`, w = 1 gives `b`.
Pose lerp(const Pose& a, const Pose& b, double w) noexcept;

}  // namespace ksdiff
