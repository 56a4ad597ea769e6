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
  explicit JitterBuffer(double margin_s = 0.05, std::size_t max_frames_per_stream = 512);

  // Adds a frame that arrived at local time `arrival_s`; returns its show time (NaN while the
  // stream awaits anchor()). Frames may come in any order (they are kept sorted by t_audio); a
  // repeated t_audio replaces the frame. A frame with `last` ends its stream. Thread-safe (push
  // from a network thread, sample from a render thread).
  double push(const Frame& frame, double arrival_s);

  // The stream's audio starts playing at local time `audio_start_s` on the clock sample() is
  // given (SPEC 6.1): its frames are shown at audio_start_s + t_audio, and its timeline never
  // moves again. Call it before or after the stream's frames arrive.
  void anchor(const std::string& stream, double audio_start_s);
  // The stream's frames wait for anchor() (sample() says `waiting`) instead of anchoring on
  // their arrival: call it before they come (when opening the line whose audio you will play).
  // Forgets an older stream of that id.
  void await_anchor(const std::string& stream);

  // No more frames for `stream` (its stream_end): what is buffered still plays, then the
  // stream reports `ended` and is forgotten, so a new stream with that id anchors afresh.
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
  struct StreamState {
    explicit StreamState(double margin_s) : timeline(margin_s) {}
    StreamClock timeline;
    std::map<double, Pose> frames;  // by t_audio
    bool ended = false;
    bool await_anchor = false;  // frames wait for anchor() instead of anchoring themselves
  };

  mutable std::mutex mutex_;
  double margin_s_;
  std::size_t max_frames_;
  std::map<std::string, StreamState> streams_;
};

// Linear interpolation of every weight and angle; w = 0 gives `a`, w = 1 gives `b`.
Pose lerp(const Pose& a, const Pose& b, double w) noexcept;

}  // namespace ksdiff
