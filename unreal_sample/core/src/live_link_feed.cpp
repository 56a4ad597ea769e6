#include "ksdiff/live_link_feed.hpp"

#include <cctype>
#include <iterator>
#include <utility>
#include <numeric>

namespace ksdiff {

LiveLinkSink::~LiveLinkSink() = default;

const std::array<std::string, kLiveLinkCurveCount>& live_link_curve_names() {
  static const std::array<std::string, kLiveLinkCurveCount> names = [] {
    std::array<std::string, kLiveLinkCurveCount> out;
    for (std::size_t i = 0; i < kNumBlendshapes; ++i) {
      std::string name(kBlendshapeNames[i]);
      name[0] = static_cast<char>(std::toupper(static_cast<unsigned char>(name[0])));
      out[i] = name;
    }
    const char* angles[] = {"HeadYaw",    "HeadPitch",    "HeadRoll",     "LeftEyeYaw", "LeftEyePitch",
                            "LeftEyeRoll", "RightEyeYaw", "RightEyePitch", "RightEyeRoll"};
    for (std::size_t i = 0; i < 9; ++i) out[kNumBlendshapes + i] = angles[i];
    return out;
  }();
  return names;
}

LiveLinkFeed::LiveLinkFeed(LiveLinkSink& sink, FeedConfig initial) : sink_(sink), config_(std::move(initial)) {
  std::iota(source_index_.begin(), source_index_.end(), std::size_t{0});
}

void LiveLinkFeed::set_config(const FeedConfig& new_config) {
  std::lock_guard<std::mutex> lock(mutex_);
  config_ = new_config;
  for (auto& entry : clocks_) entry.second.set_margin(new_config.margin_s);
}

FeedConfig LiveLinkFeed::config() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return config_;
}

FeedStatus LiveLinkFeed::status() const {
  std::lock_guard<std::mutex> lock(mutex_);
  FeedStatus out = status_;
  out.subjects = declared_.size();
  return out;
}

void LiveLinkFeed::on_hello(const Hello& hello) {
  std::lock_guard<std::mutex> lock(mutex_);
  // Build the name -> index map from the runtime's own list (SPEC 9.4). If it is not a
  // permutation of the 52 ARKit names, keep the canonical order and say so in the status.
  std::array<std::size_t, kNumBlendshapes> order{};
  bool ok = hello.blendshapes.size() == kNumBlendshapes;
  for (std::size_t k = 0; ok && k < kNumBlendshapes; ++k) {
    ok = false;
    for (std::size_t j = 0; j < hello.blendshapes.size(); ++j) {
      if (hello.blendshapes[j] == kBlendshapeNames[k]) {
        order[k] = j;
        ok = true;
        break;
      }
    }
  }
  status_.schema_ok = ok;
  if (ok) {
    source_index_ = order;
    status_.schema_error.clear();
  } else {
    status_.schema_error = "the runtime's hello does not list the 52 ARKit blendshapes";
  }
}

void LiveLinkFeed::anchor(const std::string& stream, double audio_start_s) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto held = held_.find(stream);
    if (held == held_.end() && clocks_.count(stream) == 0) pending_anchors_.insert(stream);
    auto clock = clocks_.try_emplace(stream, config_.margin_s).first;
    clock->second.reset();
    clock->second.fix(audio_start_s);
    // Held frames: push them below. Already being pushed by another anchor(): they take the new
    // clock from the next batch on.
    if (held == held_.end() || held->second.replaying) return;
    held->second.replaying = true;
  }
  // The held frames are stamped under the lock, in batches; the stream stays held until none is
  // left, so a frame the worker delivers meanwhile queues behind them (stamped on the same clock,
  // pushed after them) and its `last` or stream_end does not drop the clock under them.
  for (;;) {
    std::vector<std::pair<SubjectFrame, bool>> batch;  // with `declare`
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto held = held_.find(stream);
      if (held == held_.end() || !held->second.replaying) return;  // a restart, a new await meanwhile
      if (held->second.frames.empty()) {
        if (held->second.ended) clocks_.erase(stream);  // the next stream with this id has its own
        held_.erase(held);
        return;
      }
      for (const auto& [frame, arrival_s] : held->second.frames) {
        bool declare = false;
        SubjectFrame out = stamp(frame, arrival_s, false, declare);
        batch.emplace_back(std::move(out), declare);
      }
      held->second.frames.clear();
    }
    for (const auto& [out, declare] : batch) deliver(out, declare);
  }
}

void LiveLinkFeed::await_anchor(const std::string& stream) {
  std::lock_guard<std::mutex> lock(mutex_);
  clocks_.erase(stream);
  pending_anchors_.erase(stream);
  held_[stream] = Held{};
}

void LiveLinkFeed::on_frame(const Frame& frame, double arrival_s) {
  SubjectFrame out;
  bool declare = false;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    // Forget the ended lines that awaited their anchor in vain.
    for (auto it = held_.begin(); it != held_.end();) {
      const Held& h = it->second;
      const bool in_vain = h.ended && !h.replaying && arrival_s > h.last_arrival_s + kUnanchoredLineTimeoutS;
      it = in_vain ? held_.erase(it) : std::next(it);
    }
    if (auto held = held_.find(frame.stream); held != held_.end()) {
      // Shown once anchor() says when its audio plays. Over the bound the line keeps its start.
      Held& h = held->second;
      if (h.frames.size() < kMaxLineFrames) h.frames.emplace_back(frame, arrival_s);
      h.last_arrival_s = arrival_s;
      if (frame.last) h.ended = true;
      return;
    }
    if (pending_anchors_.erase(frame.stream) > 0) {
      // The first frame on an anchor given before any: far too late for it, the anchor was for
      // a line that had already played out.
      auto clock = clocks_.find(frame.stream);
      if (clock != clocks_.end() && arrival_s > clock->second.offset() + frame.t_audio + kStaleAnchorS) {
        clocks_.erase(clock);
      }
    }
    out = stamp(frame, arrival_s, true, declare);
  }
  // Outside the lock: the sink may take its time (Live Link copies the data).
  deliver(out, declare);
}

SubjectFrame LiveLinkFeed::stamp(const Frame& frame, double arrival_s, bool end_clock, bool& declare) {
  SubjectFrame out;
  out.subject = config_.subject_prefix + frame.stream;
  declare = declared_.insert(out.subject).second;

  auto timeline = clocks_.try_emplace(frame.stream, config_.margin_s).first;
  const std::uint64_t reanchors_before = timeline->second.reanchors();
  out.world_time_s = timeline->second.schedule(frame.t_audio, arrival_s);
  status_.reanchors += timeline->second.reanchors() - reanchors_before;
  if (frame.last && end_clock) clocks_.erase(timeline);  // the next stream with this id has its own clock

  for (std::size_t k = 0; k < kNumBlendshapes; ++k) out.values[k] = frame.blendshapes[source_index_[k]];
  const float s = config_.angle_scale;
  const std::size_t a = kNumBlendshapes;
  // Wire order: head [pitch, yaw, roll], gaze [leftYaw, leftPitch, rightYaw, rightPitch].
  out.values[a + 0] = frame.head[1] * s;  // HeadYaw
  out.values[a + 1] = frame.head[0] * s;  // HeadPitch
  out.values[a + 2] = frame.head[2] * s;  // HeadRoll
  out.values[a + 3] = frame.gaze[0] * s;  // LeftEyeYaw
  out.values[a + 4] = frame.gaze[1] * s;  // LeftEyePitch
  out.values[a + 5] = 0.0f;               // LeftEyeRoll
  out.values[a + 6] = frame.gaze[2] * s;  // RightEyeYaw
  out.values[a + 7] = frame.gaze[3] * s;  // RightEyePitch
  out.values[a + 8] = 0.0f;               // RightEyeRoll
  ++status_.frames_pushed;
  out.frame_index = frame.index;
  out.fps = frame.fps;
  out.t_audio = frame.t_audio;
  out.last = frame.last;
  return out;
}

void LiveLinkFeed::deliver(const SubjectFrame& frame, bool declare) {
  if (declare) {
    const auto& names = live_link_curve_names();
    sink_.declare_subject(frame.subject, std::vector<std::string>(names.begin(), names.end()));
  }
  sink_.push_frame(frame);
}

void LiveLinkFeed::on_stream_start(const StreamStart& start) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (auto held = held_.find(start.stream); held != held_.end() && held->second.ended) {
    // A new stream with the id of a held line that has ended: that line (never anchored, or
    // being pushed) is over, and the new one was not awaited.
    held_.erase(held);
    clocks_.erase(start.stream);
    return;
  }
  // A new audio clock starting at t_audio 0 -- unless the game already said when this line's
  // audio plays (anchor) or will say it (await_anchor): the stream_start can come after that.
  auto clock = clocks_.find(start.stream);
  if (clock != clocks_.end() && !clock->second.on_audio_clock()) clocks_.erase(clock);
}

void LiveLinkFeed::on_stream_end(const StreamEnd& end) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (auto held = held_.find(end.stream); held != held_.end()) {
    // Held frames still wait for their anchor (or are being pushed on its clock: it stays until
    // they are). A line awaited with no frame yet has not started: this end is an older stream's.
    if (!held->second.frames.empty() || held->second.replaying) held->second.ended = true;
    return;
  }
  clocks_.erase(end.stream);
  pending_anchors_.erase(end.stream);
}

void LiveLinkFeed::on_runtime_restart(const std::string&, const std::string&) {
  std::lock_guard<std::mutex> lock(mutex_);
  clocks_.clear();  // every stream of the old process is gone; subjects stay declared
  pending_anchors_.clear();
  held_.clear();
}

}  // namespace ksdiff
