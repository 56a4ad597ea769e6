// StreamClock and JitterBuffer: frames shown on their audio clock (SPEC 6), not on arrival.
#include "harness.hpp"

#include "ksdiff/jitter_buffer.hpp"

#include <cmath>

using namespace ksdiff;

namespace {

constexpr std::size_t kJawOpen = 17;
constexpr double kMargin = 0.05;

// Frame `index` of `stream` at 30 fps: jawOpen = jaw, head yaw = yaw, left eye yaw = yaw / 2.
Frame make_frame(const std::string& stream, std::uint64_t index, float jaw, float yaw = 0.0f,
                 bool last = false) {
  Frame f;
  f.stream = stream;
  f.seq = index;
  f.index = index;
  f.fps = 30;
  f.t_audio = static_cast<double>(index) / 30.0;
  f.blendshapes[kJawOpen] = jaw;
  f.head[1] = yaw;
  f.gaze[0] = yaw / 2;
  f.last = last;
  return f;
}

}  // namespace

TEST_CASE("clock: anchored by the first frame's arrival plus the margin") {
  StreamClock clock(kMargin);
  EXPECT(!clock.anchored());
  // First frame t_audio 0.5 arrives at local 100: shown at 100.05; offset = 99.55.
  EXPECT_NEAR(clock.schedule(0.5, 100.0), 100.05, 1e-12);
  EXPECT_NEAR(clock.offset(), 99.55, 1e-12);
  // Later frames keep their audio spacing whatever their arrival jitter (within the margin).
  EXPECT_NEAR(clock.schedule(0.6, 100.13), 100.15, 1e-12);  // 20 ms late on its spacing: fine
  EXPECT_NEAR(clock.schedule(0.7, 100.16), 100.25, 1e-12);  // early: fine
  EXPECT_EQ(clock.reanchors(), 0u);
}

TEST_CASE("clock: a frame arriving after its show time re-anchors") {
  StreamClock clock(kMargin);
  (void)clock.schedule(0.0, 10.0);  // offset 10.05
  // t_audio 0.1 should show at 10.15 but arrives at 10.4 (a 250 ms stall).
  EXPECT_NEAR(clock.schedule(0.1, 10.4), 10.45, 1e-12);
  EXPECT_EQ(clock.reanchors(), 1u);
  EXPECT_NEAR(clock.offset(), 10.35, 1e-12);
  // Exactly on time is not late.
  EXPECT_NEAR(clock.schedule(0.2, 10.55), 10.55, 1e-12);
  EXPECT_EQ(clock.reanchors(), 1u);
  // Show times keep increasing with t_audio across the re-anchoring.
  EXPECT(clock.schedule(0.3, 10.56) > 10.55);
  // An older frame arriving out of order, past its time, does not move the timeline.
  EXPECT_NEAR(clock.schedule(0.25, 11.0), 10.60, 1e-12);
  EXPECT_EQ(clock.reanchors(), 1u);
}

TEST_CASE("buffer: frames are ordered by audio time, not arrival") {
  JitterBuffer jb(kMargin);
  // Arrive out of order: 2, 0, 1 (all at local time 0).
  const double show2 = jb.push(make_frame("npc1", 2, 1.0f), 0.0);
  (void)jb.push(make_frame("npc1", 0, 0.0f), 0.0);
  (void)jb.push(make_frame("npc1", 1, 0.5f), 0.0);
  // Anchored on the first frame pushed (t_audio 2/30 at 0.0): offset = -2/30 + margin.
  EXPECT_NEAR(show2, kMargin, 1e-12);
  const double offset = *jb.offset("npc1");
  EXPECT_NEAR(offset, kMargin - 2.0 / 30.0, 1e-12);
  EXPECT_EQ(jb.buffered("npc1"), 3u);
  const Sample s = jb.sample("npc1", offset + 0.5 / 30.0);  // between frames 0 and 1
  EXPECT(s.state == PlayState::playing);
  EXPECT_NEAR(s.pose.blendshapes[kJawOpen], 0.25, 1e-6);
}

TEST_CASE("buffer: linear interpolation of weights and angles") {
  JitterBuffer jb(kMargin);
  (void)jb.push(make_frame("a", 0, 0.0f, 0.0f), 5.0);
  (void)jb.push(make_frame("a", 1, 1.0f, 0.3f), 5.01);
  const double offset = *jb.offset("a");
  EXPECT_NEAR(offset, 5.05, 1e-12);
  for (double w : {0.0, 0.25, 0.5, 0.75}) {
    const Sample s = jb.sample("a", offset + w / 30.0);
    EXPECT(s.state == PlayState::playing);
    EXPECT_NEAR(s.t_audio, w / 30.0, 1e-9);
    EXPECT_NEAR(s.pose.blendshapes[kJawOpen], w, 1e-6);
    EXPECT_NEAR(s.pose.head[1], 0.3 * w, 1e-6);
    EXPECT_NEAR(s.pose.gaze[0], 0.15 * w, 1e-6);
  }
}

TEST_CASE("buffer: waiting before the first frame, holding when starved, then playing again") {
  JitterBuffer jb(kMargin);
  EXPECT(jb.sample("x", 0.0).state == PlayState::unknown);
  (void)jb.push(make_frame("x", 0, 0.2f), 1.0);  // shown at 1.05
  Sample s = jb.sample("x", 1.0);
  EXPECT(s.state == PlayState::waiting);
  EXPECT_NEAR(s.pose.blendshapes[kJawOpen], 0.2, 1e-6);
  (void)jb.push(make_frame("x", 1, 0.4f), 1.02);
  s = jb.sample("x", 1.05 + 2.0 / 30.0);  // after frame 1; the stream goes on
  EXPECT(s.state == PlayState::holding);
  EXPECT_NEAR(s.pose.blendshapes[kJawOpen], 0.4, 1e-6);
  EXPECT_EQ(jb.buffered("x"), 1u);
  (void)jb.push(make_frame("x", 3, 0.8f), 1.1);  // frame 2 was dropped: interpolate over the gap
  s = jb.sample("x", 1.05 + 2.0 / 30.0);
  EXPECT(s.state == PlayState::playing);
  EXPECT_NEAR(s.pose.blendshapes[kJawOpen], 0.6, 1e-6);
}

TEST_CASE("buffer: a late frame moves the timeline, it is not skipped") {
  JitterBuffer jb(kMargin);
  (void)jb.push(make_frame("late", 0, 0.0f), 0.0);   // offset 0.05
  (void)jb.push(make_frame("late", 1, 0.5f), 0.01);  // shown at 0.05 + 1/30
  const double show = jb.push(make_frame("late", 2, 1.0f), 0.5);  // due at 0.117: 383 ms late
  EXPECT_NEAR(show, 0.55, 1e-12);
  EXPECT_EQ(jb.reanchors("late"), 1u);
  // The late frame itself is shown, at its new show time, and the frames before it too.
  EXPECT_NEAR(jb.sample("late", 0.55).pose.blendshapes[kJawOpen], 1.0, 1e-6);
}

TEST_CASE("buffer: a stream's end plays out what is buffered, then forgets the stream") {
  JitterBuffer jb(kMargin);
  for (std::uint64_t i = 0; i < 3; ++i) (void)jb.push(make_frame("npc", i, 0.1f * i), 2.0);
  jb.end_stream("npc");  // stream_end arrives before its frames have been shown
  const double offset = *jb.offset("npc");
  EXPECT(jb.sample("npc", offset + 1.5 / 30.0).state == PlayState::playing);
  const Sample end = jb.sample("npc", offset + 3.0 / 30.0);
  EXPECT(end.state == PlayState::ended);
  EXPECT_NEAR(end.pose.blendshapes[kJawOpen], 0.2, 1e-6);
  EXPECT(jb.sample("npc", offset + 4.0 / 30.0).state == PlayState::unknown);
  EXPECT(jb.streams().empty());
  // The id is free: a new stream anchors afresh.
  (void)jb.push(make_frame("npc", 0, 0.9f), 50.0);
  EXPECT_NEAR(*jb.offset("npc"), 50.05, 1e-12);
}

TEST_CASE("buffer: a frame marked last ends the stream; frames after it start a new one") {
  JitterBuffer jb(kMargin);
  (void)jb.push(make_frame("s", 0, 0.0f), 0.0);
  (void)jb.push(make_frame("s", 1, 1.0f, 0.0f, true), 0.0);
  EXPECT(jb.sample("s", 0.05 + 2.0 / 30.0).state == PlayState::ended);
  (void)jb.push(make_frame("s", 0, 0.3f), 9.0);
  EXPECT_NEAR(*jb.offset("s"), 9.05, 1e-12);
  // Even without sampling in between: frames after `last` are a new timeline.
  (void)jb.push(make_frame("t", 5, 0.0f, 0.0f, true), 0.0);
  (void)jb.push(make_frame("t", 0, 0.0f), 20.0);
  EXPECT_NEAR(*jb.offset("t"), 20.05, 1e-12);
  EXPECT_EQ(jb.buffered("t"), 1u);
}

TEST_CASE("buffer: an end without frames, resets, repeated times and the size bound") {
  JitterBuffer jb(kMargin, 4);
  jb.end_stream("nobody");  // harmless
  (void)jb.push(make_frame("e", 0, 0.0f), 0.0);
  (void)jb.push(make_frame("e", 0, 0.7f), 0.0);  // same t_audio: replaces
  EXPECT_EQ(jb.buffered("e"), 1u);
  EXPECT_NEAR(jb.sample("e", 0.0).pose.blendshapes[kJawOpen], 0.7, 1e-6);
  for (std::uint64_t i = 1; i < 10; ++i) (void)jb.push(make_frame("e", i, 0.1f * i), 0.0);
  EXPECT_EQ(jb.buffered("e"), 4u);  // none shown yet: the newest went, frames 0..3 stay
  EXPECT(jb.sample("e", 0.05).state == PlayState::playing);
  EXPECT_NEAR(jb.sample("e", 0.05 + 2.0 / 30.0).pose.blendshapes[kJawOpen], 0.2, 1e-6);
  EXPECT_EQ(jb.buffered("e"), 2u);  // sampling dropped frames 0 and 1
  // A live stream's past frames go first: frames 10..14 come at 0.3, when frames 2 and 3 are
  // past; 2 goes (3 is still needed before 10), then the newest.
  for (std::uint64_t i = 10; i < 15; ++i) (void)jb.push(make_frame("e", i, 0.1f * i), 0.3);
  EXPECT_EQ(jb.buffered("e"), 4u);
  EXPECT_NEAR(jb.sample("e", 0.05 + 3.0 / 30.0).pose.blendshapes[kJawOpen], 0.3, 1e-6);
  EXPECT_NEAR(jb.sample("e", 0.05 + 11.5 / 30.0).pose.blendshapes[kJawOpen], 1.15, 1e-6);
  jb.reset_stream("e");
  EXPECT(jb.sample("e", 0.0).state == PlayState::unknown);
  (void)jb.push(make_frame("f", 0, 0.0f), 0.0);
  (void)jb.push(make_frame("g", 0, 0.0f), 0.0);
  EXPECT_EQ(jb.streams().size(), 2u);
  jb.clear();
  EXPECT(jb.streams().empty());
}

TEST_CASE("lerp: endpoints are exact") {
  Pose a, b;
  a.blendshapes[3] = 0.25f;
  b.blendshapes[3] = 0.75f;
  a.head[2] = -0.5f;
  b.head[2] = 0.5f;
  EXPECT_EQ(lerp(a, b, 0.0).blendshapes[3], 0.25f);
  EXPECT_EQ(lerp(a, b, 1.0).blendshapes[3], 0.75f);
  EXPECT_EQ(lerp(a, b, 0.5).head[2], 0.0f);
}

// --- anchoring on the audio the game plays (SPEC 6.1, lines in sync) -----------------------------

TEST_CASE("clock: fixed on the audio clock, a late frame never re-anchors") {
  StreamClock clock(kMargin);
  clock.fix(20.0);
  EXPECT(clock.anchored() && clock.on_audio_clock());
  EXPECT_NEAR(clock.schedule(0.1, 25.0), 20.1, 1e-12);  // 4.9 s late: still shown at 20 + t_audio
  EXPECT_EQ(clock.reanchors(), 0u);
  EXPECT_NEAR(clock.offset(), 20.0, 1e-12);
  clock.reset();
  EXPECT(!clock.anchored() && !clock.on_audio_clock());
}

TEST_CASE("buffer: anchor() shows frames at the audio's start + t_audio, whenever they arrived") {
  JitterBuffer jb(kMargin);
  jb.await_anchor("npc");
  // Frames of a line arrive well ahead of the audio (line mode): they wait, unscheduled.
  EXPECT(std::isnan(jb.push(make_frame("npc", 0, 0.0f), 1.0)));
  EXPECT(std::isnan(jb.push(make_frame("npc", 3, 0.3f), 1.01)));
  Sample waiting = jb.sample("npc", 1.5);
  EXPECT(waiting.state == PlayState::waiting);
  EXPECT_EQ(waiting.pose.blendshapes[kJawOpen], 0.0f);
  EXPECT(!jb.offset("npc"));

  jb.anchor("npc", 2.0);  // the game's audio starts playing at local 2.0
  EXPECT(jb.offset("npc") == std::optional<double>(2.0));
  EXPECT(jb.sample("npc", 1.99).state == PlayState::waiting);
  const Sample mid = jb.sample("npc", 2.05);  // audio instant 0.05: half way from frame 0 to 3
  EXPECT(mid.state == PlayState::playing);
  EXPECT_NEAR(mid.t_audio, 0.05, 1e-9);
  EXPECT_NEAR(mid.pose.blendshapes[kJawOpen], 0.15f, 1e-6);
  // A frame arriving after the anchor is scheduled on it, however late it is: no re-anchoring.
  EXPECT_NEAR(jb.push(make_frame("npc", 6, 0.6f), 9.0), 2.2, 1e-12);
  EXPECT_EQ(jb.reanchors("npc"), 0u);
  EXPECT(jb.offset("npc") == std::optional<double>(2.0));
}

TEST_CASE("buffer: anchor() before any frame; the line ends and is forgotten once played") {
  JitterBuffer jb(kMargin);
  jb.anchor("npc", 5.0);
  EXPECT(jb.sample("npc", 5.0).state == PlayState::unknown);  // no frame yet
  EXPECT_NEAR(jb.push(make_frame("npc", 0, 0.2f), 4.0), 5.0, 1e-12);
  EXPECT_NEAR(jb.push(make_frame("npc", 1, 0.4f, 0.0f, true), 4.1), 5.0 + 1.0 / 30, 1e-12);
  jb.end_stream("npc");
  EXPECT(jb.sample("npc", 5.0).state == PlayState::playing);
  EXPECT(jb.sample("npc", 6.0).state == PlayState::ended);
  // A new stream with the id anchors on its own arrival again (live).
  EXPECT_NEAR(jb.push(make_frame("npc", 0, 0.0f), 7.0), 7.0 + kMargin, 1e-12);
}

TEST_CASE("buffer: a line that ends before its audio starts waits for its anchor") {
  JitterBuffer jb(kMargin);
  jb.await_anchor("npc");
  (void)jb.push(make_frame("npc", 0, 0.1f), 1.0);
  (void)jb.push(make_frame("npc", 1, 0.2f, 0.0f, true), 1.0);
  jb.end_stream("npc");  // all of it came faster than real time
  EXPECT_EQ(jb.buffered("npc"), 2u);
  EXPECT(jb.sample("npc", 3.0).state == PlayState::waiting);
  jb.anchor("npc", 3.0);
  EXPECT(jb.sample("npc", 3.0).state == PlayState::playing);
  EXPECT(jb.sample("npc", 3.5).state == PlayState::ended);
  EXPECT(jb.sample("npc", 3.6).state == PlayState::unknown);
}

// --- bounds and late messages -------------------------------------------------------------------

TEST_CASE("buffer: a 20 s line pushed whole and awaiting its anchor keeps its start") {
  JitterBuffer jb(kMargin);  // the default bound
  jb.await_anchor("npc");
  // max_ahead_s (20 s) of audio at 30 fps plus the 4 ease frames, all before the audio plays.
  const std::uint64_t n = 604;
  for (std::uint64_t i = 0; i < n; ++i) (void)jb.push(make_frame("npc", i, 0.001f * i, 0.0f, i + 1 == n), 1.0);
  EXPECT_EQ(jb.buffered("npc"), n);
  jb.anchor("npc", 10.0);
  const Sample first = jb.sample("npc", 10.0);
  EXPECT(first.state == PlayState::playing);
  EXPECT_NEAR(first.t_audio, 0.0, 1e-9);
  const Sample one = jb.sample("npc", 11.0);
  EXPECT(one.state == PlayState::playing);
  EXPECT_NEAR(one.t_audio, 1.0, 1e-9);
  EXPECT_NEAR(one.pose.blendshapes[kJawOpen], 0.030, 1e-6);
  EXPECT(jb.sample("npc", 10.0 + 603.0 / 30.0).state == PlayState::ended);

  // Over the bound, a waiting line loses its end, never its start.
  JitterBuffer small(kMargin, 4);
  small.await_anchor("npc");
  for (std::uint64_t i = 0; i < 10; ++i) (void)small.push(make_frame("npc", i, 0.1f * i), 1.0);
  EXPECT_EQ(small.buffered("npc"), 4u);
  small.anchor("npc", 2.0);
  EXPECT_NEAR(small.sample("npc", 2.0 + 1.5 / 30.0).pose.blendshapes[kJawOpen], 0.15, 1e-6);
  EXPECT(small.sample("npc", 2.0 + 3.0 / 30.0).state == PlayState::holding);
}

TEST_CASE("buffer: an exact repeat of a held frame after the last one changes nothing") {
  JitterBuffer jb(kMargin);
  for (std::uint64_t i = 0; i < 10; ++i) (void)jb.push(make_frame("a", i, 0.1f * i, 0.0f, i == 9), 100.0 + i / 30.0);
  const double offset = *jb.offset("a");
  // Frame 8 again (same seq, t_audio and pose): ignored, it keeps its show time.
  EXPECT_NEAR(jb.push(make_frame("a", 8, 0.1f * 8), 100.0 + 10.0 / 30.0), offset + 8.0 / 30.0, 1e-12);
  // The last frame again, long after its show time: no re-anchoring, no new stream.
  EXPECT_NEAR(jb.push(make_frame("a", 9, 0.1f * 9, 0.0f, true), 102.0), offset + 9.0 / 30.0, 1e-12);
  EXPECT_EQ(jb.buffered("a"), 10u);
  EXPECT(jb.offset("a") == std::optional<double>(offset));
  EXPECT_EQ(jb.reanchors("a"), 0u);
  const Sample s = jb.sample("a", offset + 2.5 / 30.0);
  EXPECT(s.state == PlayState::playing);
  EXPECT_NEAR(s.t_audio, 2.5 / 30.0, 1e-9);
  EXPECT_NEAR(s.pose.blendshapes[kJawOpen], 0.25, 1e-6);
  EXPECT(jb.sample("a", offset + 9.5 / 30.0).state == PlayState::ended);  // still ended after 9
  EXPECT(jb.streams().empty());

  // Same seq and t_audio but another pose: not a repeat, a new stream of the id.
  JitterBuffer jb2(kMargin);
  for (std::uint64_t i = 0; i < 4; ++i) (void)jb2.push(make_frame("b", i, 0.1f * i, 0.0f, i == 3), 5.0);
  EXPECT_NEAR(jb2.push(make_frame("b", 2, 0.9f), 6.0), 6.0 + kMargin, 1e-12);
  EXPECT_EQ(jb2.buffered("b"), 1u);
  EXPECT_NEAR(jb2.sample("b", 6.1).pose.blendshapes[kJawOpen], 0.9, 1e-6);
  // A frame of the ended stream the buffer no longer holds (sampled past): a new stream too.
  JitterBuffer jb3(kMargin);
  for (std::uint64_t i = 0; i < 4; ++i) (void)jb3.push(make_frame("c", i, 0.1f * i, 0.0f, i == 3), 5.0);
  EXPECT(jb3.sample("c", 5.05 + 2.5 / 30.0).state == PlayState::playing);  // frames 0 and 1 dropped
  EXPECT_NEAR(jb3.push(make_frame("c", 0, 0.0f), 5.2), 5.2 + kMargin, 1e-12);
  EXPECT_EQ(jb3.buffered("c"), 1u);
}

TEST_CASE("buffer: a reused id's new stream whose first frames were lost is a new stream") {
  // The old stream's 10 frames come at once (a quality hop), `last` on the 10th; the next stream
  // of the id starts before they played out, its stream_start and frame 0 lost (a run of PUB
  // drops): seq 1..5 come first. They are a new timeline with their own poses, not late frames
  // of the old stream (which would show the old poses and end with it).
  JitterBuffer jb(kMargin);
  for (std::uint64_t i = 0; i < 10; ++i) (void)jb.push(make_frame("npc", i, 0.1f, 0.0f, i == 9), 100.0);
  EXPECT_NEAR(jb.push(make_frame("npc", 1, 0.9f), 100.05), 100.05 + kMargin, 1e-12);
  for (std::uint64_t i = 2; i < 6; ++i) (void)jb.push(make_frame("npc", i, 0.9f), 100.05);
  EXPECT_EQ(jb.buffered("npc"), 5u);
  const double offset = 100.05 - 1.0 / 30.0 + kMargin;
  EXPECT_NEAR(*jb.offset("npc"), offset, 1e-12);
  EXPECT(jb.sample("npc", 100.06).state == PlayState::waiting);
  const Sample s = jb.sample("npc", offset + 2.5 / 30.0);
  EXPECT(s.state == PlayState::playing);
  EXPECT_NEAR(s.t_audio, 2.5 / 30.0, 1e-9);
  EXPECT_NEAR(s.pose.blendshapes[kJawOpen], 0.9, 1e-6);
  // It goes on (it has not ended with the old stream): starved, its newest pose held.
  const Sample held = jb.sample("npc", offset + 0.4);
  EXPECT(held.state == PlayState::holding);
  EXPECT_NEAR(held.pose.blendshapes[kJawOpen], 0.9, 1e-6);
  EXPECT_NEAR(held.t_audio, 5.0 / 30.0, 1e-9);

  // The same after an ended line that awaited its anchor in vain: the new stream replaces it.
  jb.await_anchor("line");
  for (std::uint64_t i = 0; i < 10; ++i) (void)jb.push(make_frame("line", i, 0.1f, 0.0f, i == 9), 200.0);
  EXPECT_NEAR(jb.push(make_frame("line", 3, 0.9f), 201.0), 201.0 + kMargin, 1e-12);
  EXPECT_EQ(jb.buffered("line"), 1u);
  EXPECT(jb.sample("line", 201.1).state == PlayState::holding);
}

TEST_CASE("buffer: an anchor given after its line played out does not capture the next stream") {
  JitterBuffer jb(kMargin);
  for (std::uint64_t i = 0; i < 3; ++i) (void)jb.push(make_frame("npc", i, 0.0f, 0.0f, i == 2), 1.0 + i / 30.0);
  EXPECT(jb.sample("npc", 5.0).state == PlayState::ended);  // played out and forgotten
  EXPECT(jb.streams().empty());
  jb.anchor("npc", 5.0);  // a late (or second) "line playback started"
  // The next stream with the id, a live one, a minute later: it anchors on its own arrival.
  EXPECT_NEAR(jb.push(make_frame("npc", 0, 0.0f), 65.0), 65.0 + kMargin, 1e-12);
  EXPECT_NEAR(jb.push(make_frame("npc", 1, 0.0f), 65.01), 65.0 + kMargin + 1.0 / 30.0, 1e-12);
  EXPECT_EQ(jb.reanchors("npc"), 0u);
  // An anchor given before its line's frames, that come a little late for it, still holds.
  jb.anchor("line", 70.0);
  EXPECT_NEAR(jb.push(make_frame("line", 0, 0.0f), 70.0 + kStaleAnchorS - 0.5), 70.0, 1e-12);
}

TEST_CASE("buffer: a line awaiting its anchor in vain is forgotten") {
  JitterBuffer jb(kMargin);
  for (int k = 0; k < 3; ++k) {
    const std::string id = "line" + std::to_string(k);
    jb.await_anchor(id);
    for (std::uint64_t i = 0; i < 100; ++i) (void)jb.push(make_frame(id, i, 0.0f, 0.0f, i == 99), 1.0 + k);
    jb.end_stream(id);
  }
  EXPECT_EQ(jb.streams().size(), 3u);
  EXPECT(jb.sample("line0", 1.0 + kUnanchoredLineTimeoutS).state == PlayState::waiting);  // not yet
  // A minute after their last frames, never anchored: forgotten (a sample or a push says when).
  EXPECT(jb.sample("line0", 2.5 + kUnanchoredLineTimeoutS).state == PlayState::unknown);
  EXPECT_EQ(jb.streams().size(), 1u);
  (void)jb.push(make_frame("other", 0, 0.0f), 100.0);
  EXPECT(jb.streams() == std::vector<std::string>{"other"});

  // A new stream with the id of an ended line that was never anchored is a new, live stream.
  jb.await_anchor("npc");
  for (std::uint64_t i = 0; i < 3; ++i) (void)jb.push(make_frame("npc", i, 0.0f, 0.0f, i == 2), 200.0);
  jb.end_stream("npc");
  EXPECT_NEAR(jb.push(make_frame("npc", 0, 0.7f), 210.0), 210.0 + kMargin, 1e-12);
  EXPECT_EQ(jb.buffered("npc"), 1u);
  // A stream_end before any frame of an awaited line is an older stream's: the line still waits.
  jb.await_anchor("npc");
  jb.end_stream("npc");
  EXPECT(std::isnan(jb.push(make_frame("npc", 0, 0.1f), 220.0)));
  jb.anchor("npc", 221.0);
  EXPECT(jb.sample("npc", 221.0).state == PlayState::holding);
}

HARNESS_MAIN()
