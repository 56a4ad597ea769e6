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
  auto it = streams_.find(frame.stream);
  if (it != streams_.end() && it->second.ended && !it->second.await_anchor) {
    // Frames after the end belong to a new stream that reused the id (its stream_start was
    // missed): start it afresh rather than appending to the old timeline.
    streams_.erase(it);
    it = streams_.end();
  }
  if (it == streams_.end()) it = streams_.emplace(frame.stream, StreamState(margin_s_)).first;
  StreamState& s = it->second;

  double show_s = std::numeric_limits<double>::quiet_NaN();
  if (!s.await_anchor || s.timeline.on_audio_clock()) show_s = s.timeline.schedule(frame.t_audio, arrival_s);
  s.frames[frame.t_audio] = Pose{frame.blendshapes, frame.head, frame.gaze};
  while (s.frames.size() > max_frames_) s.frames.erase(s.frames.begin());
  if (frame.last) s.ended = true;
  return show_s;
}

void JitterBuffer::anchor(const std::string& stream, double audio_start_s) {
  std::lock_guard<std::mutex> lock(mutex_);
  StreamState& s = streams_.try_emplace(stream, margin_s_).first->second;
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
  if (it->second.frames.empty() && !it->second.await_anchor) {
    streams_.erase(it);  // nothing left to play
  } else {
    it->second.ended = true;
  }
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
    out.pose = frames.begin()->second;
    return out;
  }
  auto after = frames.upper_bound(t);  // first frame strictly after t
  if (after == frames.end()) {
    const auto newest = std::prev(frames.end());
    out.t_audio = newest->first;
    out.pose = newest->second;
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
  out.pose = lerp(before->second, after->second, w);
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
