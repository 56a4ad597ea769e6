// LiveLinkFeed: what the Unreal source pushes to Live Link, checked without Unreal.
#include "harness.hpp"

#include "ksdiff/live_link_feed.hpp"

#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>

using namespace ksdiff;

namespace {

// Records what a Live Link client would receive.
class RecordingSink final : public LiveLinkSink {
 public:
  void declare_subject(const std::string& subject, const std::vector<std::string>& names) override {
    declared.emplace_back(subject, names);
  }
  void push_frame(const SubjectFrame& frame) override { frames.push_back(frame); }

  std::vector<std::pair<std::string, std::vector<std::string>>> declared;
  std::vector<SubjectFrame> frames;
};

Frame make_frame(const std::string& stream, std::uint64_t index, std::uint32_t fps = 30) {
  Frame f;
  f.stream = stream;
  f.seq = index;
  f.index = index;
  f.fps = fps;
  f.t_audio = static_cast<double>(index) / fps;
  for (std::size_t i = 0; i < kNumBlendshapes; ++i) f.blendshapes[i] = static_cast<float>(i) / 100.0f;
  f.head = {0.1f, 0.2f, 0.3f};           // pitch, yaw, roll
  f.gaze = {0.01f, 0.02f, 0.03f, 0.04f};  // leftYaw, leftPitch, rightYaw, rightPitch
  return f;
}

Hello runtime_hello(std::vector<std::string> names) {
  Hello h;
  h.from_runtime = true;
  h.blendshapes = std::move(names);
  return h;
}

std::vector<std::string> canonical_names() {
  return std::vector<std::string>(kBlendshapeNames.begin(), kBlendshapeNames.end());
}

}  // namespace

TEST_CASE("curve names are Live Link Face's, in its order") {
  // The ARKit Live Link curve list (see ../shared/design/ANCHORS.md, "Live Link Face UDP").
  const std::vector<std::string> expected = {
      "EyeBlinkLeft", "EyeLookDownLeft", "EyeLookInLeft", "EyeLookOutLeft", "EyeLookUpLeft",
      "EyeSquintLeft", "EyeWideLeft", "EyeBlinkRight", "EyeLookDownRight", "EyeLookInRight",
      "EyeLookOutRight", "EyeLookUpRight", "EyeSquintRight", "EyeWideRight", "JawForward", "JawLeft",
      "JawRight", "JawOpen", "MouthClose", "MouthFunnel", "MouthPucker", "MouthLeft", "MouthRight",
      "MouthSmileLeft", "MouthSmileRight", "MouthFrownLeft", "MouthFrownRight", "MouthDimpleLeft",
      "MouthDimpleRight", "MouthStretchLeft", "MouthStretchRight", "MouthRollLower", "MouthRollUpper",
      "MouthShrugLower", "MouthShrugUpper", "MouthPressLeft", "MouthPressRight", "MouthLowerDownLeft",
      "MouthLowerDownRight", "MouthUpperUpLeft", "MouthUpperUpRight", "BrowDownLeft", "BrowDownRight",
      "BrowInnerUp", "BrowOuterUpLeft", "BrowOuterUpRight", "CheekPuff", "CheekSquintLeft",
      "CheekSquintRight", "NoseSneerLeft", "NoseSneerRight", "TongueOut", "HeadYaw", "HeadPitch",
      "HeadRoll", "LeftEyeYaw", "LeftEyePitch", "LeftEyeRoll", "RightEyeYaw", "RightEyePitch",
      "RightEyeRoll"};
  const auto& names = live_link_curve_names();
  REQUIRE(names.size() == expected.size());
  for (std::size_t i = 0; i < expected.size(); ++i) EXPECT_EQ(names[i], expected[i]);
}

TEST_CASE("one subject per stream, its names pushed once, then every frame") {
  RecordingSink sink;
  LiveLinkFeed feed(sink, FeedConfig{0.05, 1.0f, "ksd_"});
  for (std::uint64_t i = 0; i < 5; ++i) {
    feed.on_frame(make_frame("npc1", i), 10.0 + 0.01 * i);
    feed.on_frame(make_frame("mic", i), 10.0 + 0.01 * i);
  }
  REQUIRE(sink.declared.size() == 2);
  EXPECT_EQ(sink.declared[0].first, std::string("ksd_npc1"));
  EXPECT_EQ(sink.declared[1].first, std::string("ksd_mic"));
  EXPECT_EQ(sink.declared[0].second.size(), kLiveLinkCurveCount);
  EXPECT_EQ(sink.frames.size(), 10u);
  EXPECT_EQ(feed.status().subjects, 2u);
  EXPECT_EQ(feed.status().frames_pushed, 10u);
}

TEST_CASE("values: weights by name, head and eyes in Live Link Face order, scaled") {
  RecordingSink sink;
  LiveLinkFeed feed(sink);
  feed.on_frame(make_frame("s", 0), 0.0);
  const SubjectFrame& f = sink.frames.at(0);
  EXPECT_EQ(f.values[17], 0.17f);  // JawOpen
  EXPECT_EQ(f.values[kNumBlendshapes + 0], 0.2f);   // HeadYaw   <- head[1]
  EXPECT_EQ(f.values[kNumBlendshapes + 1], 0.1f);   // HeadPitch <- head[0]
  EXPECT_EQ(f.values[kNumBlendshapes + 2], 0.3f);   // HeadRoll  <- head[2]
  EXPECT_EQ(f.values[kNumBlendshapes + 3], 0.01f);  // LeftEyeYaw
  EXPECT_EQ(f.values[kNumBlendshapes + 4], 0.02f);  // LeftEyePitch
  EXPECT_EQ(f.values[kNumBlendshapes + 5], 0.0f);   // LeftEyeRoll
  EXPECT_EQ(f.values[kNumBlendshapes + 6], 0.03f);  // RightEyeYaw
  EXPECT_EQ(f.values[kNumBlendshapes + 7], 0.04f);  // RightEyePitch
  EXPECT_EQ(f.values[kNumBlendshapes + 8], 0.0f);   // RightEyeRoll

  feed.set_config(FeedConfig{0.05, 10.0f, ""});
  feed.on_frame(make_frame("s", 1), 0.01);
  EXPECT_NEAR(sink.frames.at(1).values[kNumBlendshapes], 2.0, 1e-6);  // HeadYaw x 10
  EXPECT_EQ(sink.frames.at(1).values[17], 0.17f);                      // weights unscaled
}

TEST_CASE("a hello listing the names in another order is followed by name") {
  RecordingSink sink;
  LiveLinkFeed feed(sink);
  std::vector<std::string> names = canonical_names();
  std::swap(names[15], names[16]);  // jawLeft <-> jawRight on the wire
  feed.on_hello(runtime_hello(names));
  EXPECT(feed.status().schema_ok);
  feed.on_frame(make_frame("s", 0), 0.0);  // wire slot 15 carries jawRight now
  EXPECT_EQ(sink.frames.at(0).values[15], 0.16f);  // JawLeft
  EXPECT_EQ(sink.frames.at(0).values[16], 0.15f);  // JawRight

  std::vector<std::string> wrong = canonical_names();
  wrong[0] = "blink";
  feed.on_hello(runtime_hello(wrong));
  EXPECT(!feed.status().schema_ok);
  EXPECT(!feed.status().schema_error.empty());
  feed.on_frame(make_frame("s", 1), 0.0);  // the last good mapping stays in use
  EXPECT_EQ(sink.frames.at(1).values[15], 0.16f);
}

TEST_CASE("world time is the audio time on the local clock, not the arrival time") {
  RecordingSink sink;
  LiveLinkFeed feed(sink, FeedConfig{0.05, 1.0f, ""});
  // Arrivals jitter by up to 40 ms; show times follow t_audio exactly.
  const double arrivals[] = {100.0, 100.07, 100.07, 100.09, 100.17};
  for (std::uint64_t i = 0; i < 5; ++i) feed.on_frame(make_frame("n", i), arrivals[i]);
  for (std::uint64_t i = 0; i < 5; ++i) {
    EXPECT_NEAR(sink.frames[i].world_time_s, 100.05 + i / 30.0, 1e-9);
    EXPECT_EQ(sink.frames[i].frame_index, i);
    EXPECT_EQ(sink.frames[i].fps, 30u);
  }
  EXPECT_EQ(feed.status().reanchors, 0u);
  // A stall longer than the margin re-anchors (the timeline moves later, never back).
  feed.on_frame(make_frame("n", 5), 100.5);
  EXPECT_NEAR(sink.frames[5].world_time_s, 100.55, 1e-9);
  EXPECT_EQ(feed.status().reanchors, 1u);
}

TEST_CASE("each stream has its own clock; starts, ends and restarts reset it, not the subject") {
  RecordingSink sink;
  LiveLinkFeed feed(sink, FeedConfig{0.05, 1.0f, ""});
  feed.on_frame(make_frame("a", 0), 1.0);
  feed.on_frame(make_frame("b", 30), 2.0);  // joined b one second into its audio
  EXPECT_NEAR(sink.frames[0].world_time_s, 1.05, 1e-9);
  EXPECT_NEAR(sink.frames[1].world_time_s, 2.05, 1e-9);

  feed.on_stream_end(StreamEnd{"a", "sdk", "ended", 1, 0});
  feed.on_stream_start(StreamStart{"a", "sdk", 0});
  feed.on_frame(make_frame("a", 0), 5.0);  // a new stream "a": t_audio 0 again, anchored anew
  EXPECT_NEAR(sink.frames[2].world_time_s, 5.05, 1e-9);

  Frame last = make_frame("a", 1);
  last.last = true;
  feed.on_frame(last, 5.04);
  EXPECT(sink.frames[3].last);
  feed.on_frame(make_frame("a", 0), 9.0);  // after `last`, without a stream_start
  EXPECT_NEAR(sink.frames[4].world_time_s, 9.05, 1e-9);

  feed.on_runtime_restart("old", "new");
  feed.on_frame(make_frame("b", 0), 20.0);
  EXPECT_NEAR(sink.frames[5].world_time_s, 20.05, 1e-9);
  EXPECT_EQ(sink.declared.size(), 2u);  // subjects are declared once, whatever happens
}

TEST_CASE("a line awaiting its anchor is held, then stamped on the audio's start") {
  RecordingSink sink;
  LiveLinkFeed feed(sink);
  feed.await_anchor("npc");
  StreamStart start;
  start.stream = "npc";
  start.mode = "line";
  feed.on_stream_start(start);
  feed.on_frame(make_frame("npc", 0), 1.0);  // a line's frames come before its audio plays
  feed.on_frame(make_frame("npc", 3), 1.01);
  EXPECT(sink.frames.empty());
  feed.anchor("npc", 2.5);  // the game's "line playback started" at 2.5
  REQUIRE(sink.frames.size() == 2u);
  EXPECT_NEAR(sink.frames[0].world_time_s, 2.5, 1e-12);
  EXPECT_NEAR(sink.frames[1].world_time_s, 2.6, 1e-12);
  feed.on_frame(make_frame("npc", 30), 9.0);  // late by far: still on the audio's clock
  EXPECT_NEAR(sink.frames.back().world_time_s, 3.5, 1e-12);
  EXPECT_EQ(feed.status().reanchors, 0u);
}

TEST_CASE("an anchor given before the stream_start survives it") {
  RecordingSink sink;
  LiveLinkFeed feed(sink);
  feed.anchor("npc", 10.0);
  StreamStart start;
  start.stream = "npc";
  feed.on_stream_start(start);
  feed.on_frame(make_frame("npc", 6), 4.0);
  REQUIRE(sink.frames.size() == 1u);
  EXPECT_NEAR(sink.frames[0].world_time_s, 10.2, 1e-12);
  // Its end forgets the anchor: the next stream of the id is live again.
  StreamEnd end;
  end.stream = "npc";
  feed.on_stream_end(end);
  feed.on_stream_start(start);
  feed.on_frame(make_frame("npc", 0), 20.0);
  EXPECT_NEAR(sink.frames.back().world_time_s, 20.0 + FeedConfig{}.margin_s, 1e-12);
}

// --- bounds and races of held lines ---------------------------------------------------------------

namespace {

Frame last_frame(const std::string& stream, std::uint64_t index) {
  Frame f = make_frame(stream, index);
  f.last = true;
  return f;
}

StreamStart stream_start(const std::string& stream) {
  StreamStart start;
  start.stream = stream;
  return start;
}

StreamEnd stream_end(const std::string& stream) {
  StreamEnd end;
  end.stream = stream;
  return end;
}

}  // namespace

TEST_CASE("a held line is bounded, dropped by a new stream of its id or after a while") {
  RecordingSink sink;
  LiveLinkFeed feed(sink);
  // A line longer than the bound: it keeps its start.
  feed.await_anchor("long");
  const std::uint64_t n = kMaxLineFrames + 100;
  for (std::uint64_t i = 0; i < n; ++i) feed.on_frame(i + 1 == n ? last_frame("long", i) : make_frame("long", i), 1.0);
  feed.anchor("long", 2.0);
  REQUIRE(sink.frames.size() == kMaxLineFrames);
  EXPECT_EQ(sink.frames.front().frame_index, 0u);
  EXPECT_EQ(sink.frames.back().frame_index, kMaxLineFrames - 1);
  sink.frames.clear();

  // An awaited line ends, never anchored; the next stream with its id is not awaited: it is
  // pushed as it comes, and a late anchor does not dump the old line's frames.
  feed.await_anchor("npc");
  feed.on_stream_start(stream_start("npc"));
  for (std::uint64_t i = 0; i < 10; ++i) feed.on_frame(i == 9 ? last_frame("npc", i) : make_frame("npc", i), 3.0);
  feed.on_stream_end(stream_end("npc"));
  EXPECT(sink.frames.empty());
  feed.on_stream_start(stream_start("npc"));
  for (std::uint64_t i = 0; i < 5; ++i) feed.on_frame(make_frame("npc", i), 4.0 + i / 30.0);
  REQUIRE(sink.frames.size() == 5u);
  EXPECT_NEAR(sink.frames[0].world_time_s, 4.05, 1e-9);
  feed.anchor("npc", 5.0);
  EXPECT_EQ(sink.frames.size(), 5u);

  // An ended line never anchored is forgotten kUnanchoredLineTimeoutS after its last frame.
  feed.await_anchor("gone");
  feed.on_frame(last_frame("gone", 0), 600.0);
  feed.on_frame(make_frame("other", 0), 600.0 + kUnanchoredLineTimeoutS + 1.0);
  sink.frames.clear();
  feed.anchor("gone", 700.0);
  EXPECT(sink.frames.empty());
}

TEST_CASE("frames arriving while anchor() pushes the held ones queue behind, on the same clock") {
  // The sink blocks on the first held frame until the worker has delivered the line's last
  // frame and its stream_end: the interleaving the worker thread can produce, forced.
  struct BlockingSink final : LiveLinkSink {
    void declare_subject(const std::string&, const std::vector<std::string>&) override {}
    void push_frame(const SubjectFrame& frame) override {
      if (hook) hook(frame);
      std::lock_guard<std::mutex> lock(mutex);
      frames.push_back(frame);
    }
    std::function<void(const SubjectFrame&)> hook;
    std::mutex mutex;
    std::vector<SubjectFrame> frames;
  } sink;
  LiveLinkFeed feed(sink);
  feed.await_anchor("npc");
  for (std::uint64_t i = 0; i < 5; ++i) feed.on_frame(make_frame("npc", i), 1.0 + i * 0.001);

  std::mutex mutex;
  std::condition_variable cv;
  bool in_replay = false;
  bool worker_done = false;
  sink.hook = [&](const SubjectFrame& frame) {
    if (frame.frame_index != 0) return;
    std::unique_lock<std::mutex> lock(mutex);
    in_replay = true;
    cv.notify_all();
    EXPECT(cv.wait_for(lock, std::chrono::seconds(10), [&] { return worker_done; }));
  };
  std::thread worker([&] {
    {
      std::unique_lock<std::mutex> lock(mutex);
      if (!cv.wait_for(lock, std::chrono::seconds(10), [&] { return in_replay; })) return;
    }
    feed.on_frame(last_frame("npc", 5), 1.01);
    feed.on_stream_end(stream_end("npc"));
    std::lock_guard<std::mutex> lock(mutex);
    worker_done = true;
    cv.notify_all();
  });
  feed.anchor("npc", 50.0);  // the line's audio starts at 50
  worker.join();

  REQUIRE(sink.frames.size() == 6u);
  for (std::uint64_t i = 0; i < 6; ++i) {
    EXPECT_EQ(sink.frames[i].frame_index, i);
    EXPECT_NEAR(sink.frames[i].world_time_s, 50.0 + i / 30.0, 1e-9);
  }
  EXPECT(sink.frames.back().last);
  EXPECT_EQ(feed.status().reanchors, 0u);
  // The line ended: its clock went with it, the next stream with the id is live.
  sink.hook = nullptr;
  feed.on_stream_start(stream_start("npc"));
  feed.on_frame(make_frame("npc", 0), 100.0);
  EXPECT_NEAR(sink.frames.back().world_time_s, 100.0 + FeedConfig{}.margin_s, 1e-9);
}

TEST_CASE("an anchor given after its line ended does not capture the next stream") {
  RecordingSink sink;
  LiveLinkFeed feed(sink);
  feed.on_stream_start(stream_start("npc"));
  for (std::uint64_t i = 0; i < 3; ++i) feed.on_frame(i == 2 ? last_frame("npc", i) : make_frame("npc", i), 1.0);
  feed.on_stream_end(stream_end("npc"));
  feed.anchor("npc", 2.0);  // a late "line playback started"
  feed.on_stream_start(stream_start("npc"));  // a live stream with the id, 100 s later
  feed.on_frame(make_frame("npc", 0), 102.0);
  feed.on_frame(make_frame("npc", 1), 102.01);
  EXPECT_NEAR(sink.frames[3].world_time_s, 102.0 + FeedConfig{}.margin_s, 1e-9);
  EXPECT_NEAR(sink.frames[4].world_time_s, 102.0 + FeedConfig{}.margin_s + 1.0 / 30.0, 1e-9);
  // An anchor given before its line's frames, that come a little late for it, still holds.
  feed.anchor("line", 200.0);
  feed.on_stream_start(stream_start("line"));
  feed.on_frame(make_frame("line", 0), 200.0 + kStaleAnchorS - 0.5);
  EXPECT_NEAR(sink.frames.back().world_time_s, 200.0, 1e-12);
}

HARNESS_MAIN()
