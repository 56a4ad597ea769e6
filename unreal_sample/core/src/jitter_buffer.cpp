#include "ksdiff/jitter_buffer.hpp"

#include <iterator>
#include <limits>

namespace ksdiff {

double StreamClock::schedule(double t_audio, double arrival_s) {
  const bool newest = !newest_t_audio_ || t_audio >= *newest_t_audio_;
  if (!offset_) {
    offset_ = arrival_s - t_audio + margin_s_;
  } else if (!fixed_ && newest && arrival_s > *offset_ + t_audio) {
    // The stream's newest frame is late: its show time has passed. Re-anchor so it is again
    // `margin` ahead; the offset only ever grows, so show times stay increasing with t_audio.
    offset_ = arrival_s - t_audio + margin_s_;
    ++reanchors_;
  }
  if (newest) newest_t_audio_ = t_audio;
  return *offset_ + t_audio;
}

Pose lerp(const Pose& a, const Pose& b, double w) noexcept {
  Pose out;
  const auto mix = [w](float x, float y) {
    return static_cast<float>(static_cast<double>(x) + (static_cast<double>(y) - x) * w);
  };
  for (std::size_t i = 0; i < a.blendshapes.size(); ++i) out.blendshapes[i] = mix(a.blendshapes[i], b.blendshapes[i]);
  for (std::size_t i = 0; i < a.head.size(); ++i) out.head[i] = mix(a.head[i], b.head[i]);
  for (std::size_t i = 0; i < a.gaze.size(); ++i) out.gaze[i] = mix(a.gaze[i], b.gaze[i]);
  return out;
}

JitterBuffer::JitterBuffer(double margin_s, std::size_t max_frames_per_stream)
    : margin_s_(margin_s), max_frames_(max_frames_per_stream < 2 ? 2 : max_frames_per_stream) {}

double JitterBuffer::push(const Frame& frame, double arrival_s) {
  std::lock_guard<std::mutex> lock(mutex_);
  forget_unanchored(arrival_s);
  auto it = streams_.find(frame.stream);
  if (it != streams_.end()) {
    const StreamState& old = it->second;
    if (old.ended && is_held_repeat(old, frame)) {
      // An exact repeat of a frame the ended stream still holds: nothing new (it neither wipes
      // the line nor starts a stream, nor moves the timeline). Its show time, as it was.
      const bool scheduled = !old.await_anchor || old.timeline.on_audio_clock();
      return scheduled ? old.timeline.offset() + frame.t_audio : std::numeric_limits<double>::quiet_NaN();
    }
    // Any other frame after the end belongs to a new stream that reused the id, its stream_start
    // missed (and maybe its first frames: drops come in runs, so it may start at any seq): start
    // it afresh rather than appending to the old timeline. One PUB/SUB connection delivers in
    // order, so a frame of the ended stream itself does not come after its `last`.
    const bool new_stream = old.ended;
    // An anchor() given before any frame, that this first frame comes far too late for, was late
    // for a line already played out: it must not hold the next stream with that id.
    const bool stale_anchor =
        old.pending_anchor && arrival_s > old.timeline.offset() + frame.t_audio + kStaleAnchorS;
    if (new_stream || stale_anchor) {
      streams_.erase(it);
      it = streams_.end();
    }
  }
  if (it == streams_.end()) it = streams_.emplace(frame.stream, StreamState(margin_s_)).first;
  StreamState& s = it->second;
  s.pending_anchor = false;
  s.last_arrival_s = arrival_s;

  double show_s = std::numeric_limits<double>::quiet_NaN();
  const bool scheduled = !s.await_anchor || s.timeline.on_audio_clock();
  if (scheduled) show_s = s.timeline.schedule(frame.t_audio, arrival_s);
  s.frames[frame.t_audio] = HeldFrame{frame.seq, Pose{frame.blendshapes, frame.head, frame.gaze}};
  if (s.frames.size() > max_frames_) {
    // Over the bound: drop the oldest frame if it is past (the next one's show time has come),
    // else the newest. Frames still to be shown (a whole line waiting for its audio) are never
    // dropped for later ones: a line too long for the bound loses its end, not its start.
    const double next_show_s = s.timeline.offset() + std::next(s.frames.begin())->first;
    if (scheduled && next_show_s <= arrival_s) {
      s.frames.erase(s.frames.begin());
    } else {
      s.frames.erase(std::prev(s.frames.end()));
    }
  }
  if (frame.last) s.ended = true;
  return show_s;
}

bool JitterBuffer::is_held_repeat(const StreamState& s, const Frame& frame) {
  const auto held = s.frames.find(frame.t_audio);
  if (held == s.frames.end() || held->second.seq != frame.seq) return false;
  const Pose& pose = held->second.pose;
  return pose.blendshapes == frame.blendshapes && pose.head == frame.head && pose.gaze == frame.gaze;
}

void JitterBuffer::forget_unanchored(double now_s) {
  for (auto it = streams_.begin(); it != streams_.end();) {
    const StreamState& s = it->second;
    const bool in_vain = s.ended && s.await_anchor && !s.timeline.on_audio_clock() &&
                         now_s > s.last_arrival_s + kUnanchoredLineTimeoutS;
    it = in_vain ? streams_.erase(it) : std::next(it);
  }
}

void JitterBuffer::anchor(const std::string& stream, double audio_start_s) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto [it, created] = streams_.try_emplace(stream, margin_s_);
  StreamState& s = it->second;
  if (created) s.pending_anchor = true;  // for the next frames of this id (see push)
  s.await_anchor = true;
  s.timeline.fix(audio_start_s);
}

void JitterBuffer::await_anchor(const std::string& stream) {
  std::lock_guard<std::mutex> lock(mutex_);
  streams_.erase(stream);
  streams_.emplace(stream, StreamState(margin_s_)).first->second.await_anchor = true;
}

void JitterBuffer::end_stream(const std::string& stream) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = streams_.find(stream);
  if (it == streams_.end()) return;
  if (!it->second.frames.empty()) {
    it->second.ended = true;
  } else if (!it->second.await_anchor) {
    streams_.erase(it);  // nothing left to play
  }  // else a line awaiting its anchor, no frame yet: the end is an older stream's
}

void JitterBuffer::reset_stream(const std::string& stream) {
  std::lock_guard<std::mutex> lock(mutex_);
  streams_.erase(stream);
}

void JitterBuffer::clear() {
  std::lock_guard<std::mutex> lock(mutex_);
  streams_.clear();
}

Sample JitterBuffer::sample(const std::string& stream, double local_s) {
  std::lock_guard<std::mutex> lock(mutex_);
  forget_unanchored(local_s);
  Sample out;
  auto it = streams_.find(stream);
  if (it == streams_.end() || it->second.frames.empty()) return out;  // unknown
  StreamState& s = it->second;
  auto& frames = s.frames;
  const bool unanchored = !s.timeline.anchored() || (s.await_anchor && !s.timeline.on_audio_clock());
  const double t = local_s - s.timeline.offset();  // the audio instant to show now

  if (unanchored || t < frames.begin()->first) {
    out.state = PlayState::waiting;
    out.t_audio = frames.begin()->first;
    out.pose = frames.begin()->second.pose;
    return out;
  }
  auto after = frames.upper_bound(t);  // first frame strictly after t
  if (after == frames.end()) {
    const auto newest = std::prev(frames.end());
    out.t_audio = newest->first;
    out.pose = newest->second.pose;
    if (s.ended) {
      out.state = PlayState::ended;
      streams_.erase(it);  // played out: a later stream with this id anchors afresh
    } else {
      out.state = PlayState::holding;
      frames.erase(frames.begin(), newest);  // keep only the newest: the rest is in the past
    }
    return out;
  }
  const auto before = std::prev(after);
  const double w = (t - before->first) / (after->first - before->first);
  out.state = PlayState::playing;
  out.t_audio = t;
  out.pose = lerp(before->second.pose, after->second.pose, w);
  frames.erase(frames.begin(), before);  // `before` is still needed by the next sample
  return out;
}

std::size_t JitterBuffer::buffered(const std::string& stream) const {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = streams_.find(stream);
  return it == streams_.end() ? 0 : it->second.frames.size();
}

std::optional<double> JitterBuffer::offset(const std::string& stream) const {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = streams_.find(stream);
  if (it == streams_.end() || !it->second.timeline.anchored()) return std::nullopt;
  return it->second.timeline.offset();
}

std::uint64_t JitterBuffer::reanchors(const std::string& stream) const {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = streams_.find(stream);
  return it == streams_.end() ? 0 : it->second.timeline.reanchors();
}

std::vector<std::string> JitterBuffer::streams() const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<std::string> out;
  for (const auto& entry : streams_) out.push_back(entry.first);
  return out;
}

}  // namespace ksdiff
