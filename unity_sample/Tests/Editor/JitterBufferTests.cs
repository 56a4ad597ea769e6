// StreamClock and JitterBuffer: frames shown on their audio clock (SPEC 6), not on arrival.
using System;
using NUnit.Framework;

namespace Ksdiff.Tests
{
    [TestFixture]
    public class JitterBufferTests
    {
        const int JawOpen = 17;
        const double Margin = 0.05;

        // Frame `index` of `stream` at 30 fps: jawOpen = jaw, head yaw = yaw, left eye yaw = yaw / 2.
        static Frame MakeFrame(string stream, ulong index, float jaw, float yaw = 0f, bool last = false)
        {
            var f = new Frame { Stream = stream, Seq = index, Index = index, Fps = 30, TAudio = index / 30.0, Last = last };
            f.Blendshapes[JawOpen] = jaw;
            f.Head[1] = yaw;
            f.Gaze[0] = yaw / 2;
            return f;
        }

        static PlayState Sample(JitterBuffer jb, string stream, double now, out Pose pose)
        {
            pose = new Pose();
            double t;
            return jb.Sample(stream, now, pose, out t);
        }

        [Test]
        public void ClockAnchorsOnTheFirstFrameArrivalPlusTheMargin()
        {
            var clock = new StreamClock(Margin);
            Assert.IsFalse(clock.Anchored);
            // First frame t_audio 0.5 arrives at local 100: shown at 100.05; offset 99.55.
            Assert.AreEqual(100.05, clock.Schedule(0.5, 100.0), 1e-12);
            Assert.AreEqual(99.55, clock.Offset, 1e-12);
            // Later frames keep their audio spacing whatever their arrival jitter (within the margin).
            Assert.AreEqual(100.15, clock.Schedule(0.6, 100.13), 1e-12);
            Assert.AreEqual(100.25, clock.Schedule(0.7, 100.16), 1e-12);
            Assert.AreEqual(0UL, clock.Reanchors);
        }

        [Test]
        public void ClockReanchorsOnALateNewestFrameOnly()
        {
            var clock = new StreamClock(Margin);
            clock.Schedule(0.0, 10.0); // offset 10.05
            // t_audio 0.1 is due at 10.15 but arrives at 10.4 (a 250 ms stall).
            Assert.AreEqual(10.45, clock.Schedule(0.1, 10.4), 1e-12);
            Assert.AreEqual(1UL, clock.Reanchors);
            Assert.AreEqual(10.55, clock.Schedule(0.2, 10.55), 1e-12); // exactly on time is not late
            Assert.AreEqual(1UL, clock.Reanchors);
            Assert.Greater(clock.Schedule(0.3, 10.56), 10.55); // show times keep increasing
            // An older frame arriving out of order, past its time, does not move the timeline.
            Assert.AreEqual(10.60, clock.Schedule(0.25, 11.0), 1e-12);
            Assert.AreEqual(1UL, clock.Reanchors);
            // A fixed (audio) clock never moves.
            var audio = new StreamClock(Margin);
            audio.Fix(3.0);
            Assert.AreEqual(3.5, audio.Schedule(0.5, 99.0), 1e-12);
            Assert.AreEqual(0UL, audio.Reanchors);
        }

        [Test]
        public void FramesAreOrderedByAudioTimeNotArrival()
        {
            var jb = new JitterBuffer(Margin);
            double show2 = jb.Push(MakeFrame("npc1", 2, 1.0f), 0.0);
            jb.Push(MakeFrame("npc1", 0, 0.0f), 0.0);
            jb.Push(MakeFrame("npc1", 1, 0.5f), 0.0);
            Assert.AreEqual(Margin, show2, 1e-12);
            double offset = jb.Offset("npc1").Value;
            Assert.AreEqual(Margin - 2.0 / 30.0, offset, 1e-12);
            Assert.AreEqual(3, jb.Buffered("npc1"));
            Pose p;
            Assert.AreEqual(PlayState.Playing, Sample(jb, "npc1", offset + 0.5 / 30.0, out p)); // between frames 0 and 1
            Assert.AreEqual(0.25f, p.Blendshapes[JawOpen], 1e-6);
        }

        [Test]
        public void InterpolatesWeightsAndAnglesLinearly()
        {
            var jb = new JitterBuffer(Margin);
            jb.Push(MakeFrame("a", 0, 0.0f, 0.0f), 5.0);
            jb.Push(MakeFrame("a", 1, 1.0f, 0.3f), 5.01);
            double offset = jb.Offset("a").Value;
            Assert.AreEqual(5.05, offset, 1e-12);
            foreach (double w in new[] { 0.0, 0.25, 0.5, 0.75 })
            {
                var pose = new Pose();
                double t;
                Assert.AreEqual(PlayState.Playing, jb.Sample("a", offset + w / 30.0, pose, out t));
                Assert.AreEqual(w / 30.0, t, 1e-9);
                Assert.AreEqual(w, pose.Blendshapes[JawOpen], 1e-6);
                Assert.AreEqual(0.3 * w, pose.Head[1], 1e-6);
                Assert.AreEqual(0.15 * w, pose.Gaze[0], 1e-6);
            }
        }

        [Test]
        public void WaitingThenHoldingWhenStarvedThenPlayingAgain()
        {
            var jb = new JitterBuffer(Margin);
            Pose p;
            Assert.AreEqual(PlayState.Unknown, Sample(jb, "x", 0.0, out p));
            jb.Push(MakeFrame("x", 0, 0.2f), 1.0); // shown at 1.05
            Assert.AreEqual(PlayState.Waiting, Sample(jb, "x", 1.0, out p));
            Assert.AreEqual(0.2f, p.Blendshapes[JawOpen], 1e-6);
            jb.Push(MakeFrame("x", 1, 0.4f), 1.02);
            Assert.AreEqual(PlayState.Holding, Sample(jb, "x", 1.05 + 2.0 / 30.0, out p));
            Assert.AreEqual(0.4f, p.Blendshapes[JawOpen], 1e-6);
            Assert.AreEqual(1, jb.Buffered("x"));
            jb.Push(MakeFrame("x", 3, 0.8f), 1.1); // frame 2 was dropped: interpolate over the gap
            Assert.AreEqual(PlayState.Playing, Sample(jb, "x", 1.05 + 2.0 / 30.0, out p));
            Assert.AreEqual(0.6f, p.Blendshapes[JawOpen], 1e-6);
        }

        [Test]
        public void ALateFrameMovesALiveTimelineItIsNotSkipped()
        {
            var jb = new JitterBuffer(Margin);
            jb.Push(MakeFrame("late", 0, 0.0f), 0.0);
            jb.Push(MakeFrame("late", 1, 0.5f), 0.01);
            double show = jb.Push(MakeFrame("late", 2, 1.0f), 0.5); // due at 0.117: 383 ms late
            Assert.AreEqual(0.55, show, 1e-12);
            Assert.AreEqual(1UL, jb.Reanchors("late"));
            Pose p;
            Sample(jb, "late", 0.55, out p);
            Assert.AreEqual(1.0f, p.Blendshapes[JawOpen], 1e-6);
        }

        [Test]
        public void OnTheAudioClockFramesWaitForTheAnchorAndLateOnesAreSkipped()
        {
            var jb = new JitterBuffer(Margin);
            jb.AwaitAnchor("line");
            for (ulong i = 0; i < 3; i++) Assert.IsTrue(double.IsNaN(jb.Push(MakeFrame("line", i, 0.1f * (i + 1)), 50.0 + i)));
            Pose p;
            // Not anchored yet: the first pose, waiting, whatever the time.
            Assert.AreEqual(PlayState.Waiting, Sample(jb, "line", 1000.0, out p));
            Assert.AreEqual(0.1f, p.Blendshapes[JawOpen], 1e-6);
            jb.Anchor("line", 7.0); // the audio starts at 7.0 on the audio clock
            Assert.AreEqual(PlayState.Waiting, Sample(jb, "line", 6.99, out p));
            Assert.AreEqual(PlayState.Playing, Sample(jb, "line", 7.0 + 1.5 / 30.0, out p));
            Assert.AreEqual(0.25f, p.Blendshapes[JawOpen], 1e-6);
            // Starved at frame 3's time: the newest pose is held ...
            Assert.AreEqual(PlayState.Holding, Sample(jb, "line", 7.0 + 3.5 / 30.0, out p));
            // ... frame 3 comes late (its instant was shown): counted, the timeline stays.
            jb.Push(MakeFrame("line", 3, 0.4f), 90.0);
            jb.Push(MakeFrame("line", 4, 0.5f), 90.0);
            Assert.AreEqual(1UL, jb.LateFrames("line"));
            Assert.AreEqual(7.0, jb.Offset("line").Value, 1e-12);
            Assert.AreEqual(0UL, jb.Reanchors("line"));
            Assert.AreEqual(PlayState.Playing, Sample(jb, "line", 7.0 + 3.75 / 30.0, out p));
            Assert.AreEqual(0.475f, p.Blendshapes[JawOpen], 1e-6);
        }

        [Test]
        public void AnEndPlaysOutWhatIsBufferedThenForgetsTheStream()
        {
            var jb = new JitterBuffer(Margin);
            for (ulong i = 0; i < 3; i++) jb.Push(MakeFrame("npc", i, 0.1f * i), 2.0);
            jb.EndStream("npc"); // stream_end before its frames have been shown
            double offset = jb.Offset("npc").Value;
            Pose p;
            Assert.AreEqual(PlayState.Playing, Sample(jb, "npc", offset + 1.5 / 30.0, out p));
            Assert.AreEqual(PlayState.Ended, Sample(jb, "npc", offset + 3.0 / 30.0, out p));
            Assert.AreEqual(0.2f, p.Blendshapes[JawOpen], 1e-6);
            Assert.AreEqual(PlayState.Unknown, Sample(jb, "npc", offset + 4.0 / 30.0, out p));
            Assert.AreEqual(0, jb.Streams().Length);
            jb.Push(MakeFrame("npc", 0, 0.9f), 50.0); // the id is free: anchored afresh
            Assert.AreEqual(50.05, jb.Offset("npc").Value, 1e-12);
        }

        [Test]
        public void AFrameMarkedLastEndsTheStreamFramesAfterItStartANewOne()
        {
            var jb = new JitterBuffer(Margin);
            jb.Push(MakeFrame("s", 0, 0.0f), 0.0);
            jb.Push(MakeFrame("s", 1, 1.0f, 0f, true), 0.0);
            Pose p;
            Assert.AreEqual(PlayState.Ended, Sample(jb, "s", 0.05 + 2.0 / 30.0, out p));
            jb.Push(MakeFrame("s", 0, 0.3f), 9.0);
            Assert.AreEqual(9.05, jb.Offset("s").Value, 1e-12);
            jb.Push(MakeFrame("t", 5, 0.0f, 0f, true), 0.0); // even without sampling in between
            jb.Push(MakeFrame("t", 0, 0.0f), 20.0);
            Assert.AreEqual(20.05, jb.Offset("t").Value, 1e-12);
            Assert.AreEqual(1, jb.Buffered("t"));
        }

        [Test]
        public void EndsWithoutFramesResetsRepeatedTimesAndTheSizeBound()
        {
            var jb = new JitterBuffer(Margin, 4);
            jb.EndStream("nobody"); // harmless
            jb.Push(MakeFrame("e", 0, 0.0f), 0.0);
            jb.Push(MakeFrame("e", 0, 0.7f), 0.0); // same t_audio: replaces
            Assert.AreEqual(1, jb.Buffered("e"));
            Pose p;
            Sample(jb, "e", 0.0, out p);
            Assert.AreEqual(0.7f, p.Blendshapes[JawOpen], 1e-6);
            for (ulong i = 1; i < 10; i++) jb.Push(MakeFrame("e", i, 0.1f * i), 0.0);
            Assert.AreEqual(4, jb.Buffered("e")); // none shown yet: the newest went, frames 0..3 stay
            Assert.AreEqual(PlayState.Playing, Sample(jb, "e", 0.05, out p));
            Sample(jb, "e", 0.05 + 2.0 / 30.0, out p);
            Assert.AreEqual(0.2f, p.Blendshapes[JawOpen], 1e-6);
            Assert.AreEqual(2, jb.Buffered("e")); // sampling dropped frames 0 and 1
            // A live stream's past frames go first: frames 10..14 come at 0.3, when frames 2 and 3
            // are past; 2 goes (3 is still needed before 10), then the newest.
            for (ulong i = 10; i < 15; i++) jb.Push(MakeFrame("e", i, 0.1f * i), 0.3);
            Assert.AreEqual(4, jb.Buffered("e"));
            Sample(jb, "e", 0.05 + 3.0 / 30.0, out p);
            Assert.AreEqual(0.3f, p.Blendshapes[JawOpen], 1e-6);
            Sample(jb, "e", 0.05 + 11.5 / 30.0, out p);
            Assert.AreEqual(1.15f, p.Blendshapes[JawOpen], 1e-6);
            jb.ResetStream("e");
            Assert.AreEqual(PlayState.Unknown, Sample(jb, "e", 0.0, out p));
            jb.Push(MakeFrame("f", 0, 0.0f), 0.0);
            jb.Push(MakeFrame("g", 0, 0.0f), 0.0);
            Assert.AreEqual(2, jb.Streams().Length);
            jb.Clear();
            Assert.AreEqual(0, jb.Streams().Length);
        }

        // --- bounds and late messages ---------------------------------------------------------

        [Test]
        public void ALineOf20SecondsPushedWholeAndAwaitingItsAnchorKeepsItsStart()
        {
            var jb = new JitterBuffer(Margin); // the default bound
            jb.AwaitAnchor("npc");
            // max_ahead_s (20 s) of audio at 30 fps plus the 4 ease frames, all before the audio plays.
            const ulong n = 604;
            for (ulong i = 0; i < n; i++) jb.Push(MakeFrame("npc", i, 0.001f * i, 0f, i + 1 == n), 1.0);
            Assert.AreEqual((int)n, jb.Buffered("npc"));
            jb.Anchor("npc", 10.0);
            var pose = new Pose();
            double t;
            Assert.AreEqual(PlayState.Playing, jb.Sample("npc", 10.0, pose, out t));
            Assert.AreEqual(0.0, t, 1e-9);
            Assert.AreEqual(PlayState.Playing, jb.Sample("npc", 11.0, pose, out t));
            Assert.AreEqual(1.0, t, 1e-9);
            Assert.AreEqual(0.030f, pose.Blendshapes[JawOpen], 1e-6);
            Assert.AreEqual(PlayState.Ended, jb.Sample("npc", 10.0 + 603.0 / 30.0, pose, out t));

            // Over the bound, a waiting line loses its end, never its start.
            var small = new JitterBuffer(Margin, 4);
            small.AwaitAnchor("npc");
            for (ulong i = 0; i < 10; i++) small.Push(MakeFrame("npc", i, 0.1f * i), 1.0);
            Assert.AreEqual(4, small.Buffered("npc"));
            small.Anchor("npc", 2.0);
            Pose p;
            Sample(small, "npc", 2.0 + 1.5 / 30.0, out p);
            Assert.AreEqual(0.15f, p.Blendshapes[JawOpen], 1e-6);
            Assert.AreEqual(PlayState.Holding, Sample(small, "npc", 2.0 + 3.0 / 30.0, out p));
            // On the audio clock, what is past is what the face has passed (Sample's clock, not the
            // arrivals', which is another one: here far behind it): frames 4 and 5 come after the
            // face held frame 3 past their instants, so over the bound they go before 7 and 8.
            Assert.AreEqual(PlayState.Holding, Sample(small, "npc", 2.0 + 5.5 / 30.0, out p));
            for (ulong i = 4; i < 9; i++) small.Push(MakeFrame("npc", i, 0.1f * i), 0.5);
            Assert.AreEqual(4, small.Buffered("npc"));
            Assert.AreEqual(PlayState.Playing, Sample(small, "npc", 2.0 + 7.5 / 30.0, out p));
            Assert.AreEqual(0.75f, p.Blendshapes[JawOpen], 1e-6);
        }

        [Test]
        public void AnExactRepeatOfAHeldFrameAfterTheLastOneChangesNothing()
        {
            var jb = new JitterBuffer(Margin);
            for (ulong i = 0; i < 10; i++) jb.Push(MakeFrame("a", i, 0.1f * i, 0f, i == 9), 100.0 + i / 30.0);
            double offset = jb.Offset("a").Value;
            // Frame 8 again (same seq, t_audio and pose): ignored, it keeps its show time.
            Assert.AreEqual(offset + 8.0 / 30.0, jb.Push(MakeFrame("a", 8, 0.1f * 8), 100.0 + 10.0 / 30.0), 1e-12);
            // The last frame again, long after its show time: no re-anchoring, no new stream.
            Assert.AreEqual(offset + 9.0 / 30.0, jb.Push(MakeFrame("a", 9, 0.1f * 9, 0f, true), 102.0), 1e-12);
            Assert.AreEqual(10, jb.Buffered("a"));
            Assert.AreEqual(offset, jb.Offset("a").Value, 0.0);
            Assert.AreEqual(0UL, jb.Reanchors("a"));
            Assert.AreEqual(0UL, jb.LateFrames("a"));
            var pose = new Pose();
            double t;
            Assert.AreEqual(PlayState.Playing, jb.Sample("a", offset + 2.5 / 30.0, pose, out t));
            Assert.AreEqual(2.5 / 30.0, t, 1e-9);
            Assert.AreEqual(0.25f, pose.Blendshapes[JawOpen], 1e-6);
            Pose p;
            Assert.AreEqual(PlayState.Ended, Sample(jb, "a", offset + 9.5 / 30.0, out p)); // still ended after 9
            Assert.AreEqual(0, jb.Streams().Length);

            // Same seq and t_audio but another pose: not a repeat, a new stream of the id.
            var jb2 = new JitterBuffer(Margin);
            for (ulong i = 0; i < 4; i++) jb2.Push(MakeFrame("b", i, 0.1f * i, 0f, i == 3), 5.0);
            Assert.AreEqual(6.0 + Margin, jb2.Push(MakeFrame("b", 2, 0.9f), 6.0), 1e-12);
            Assert.AreEqual(1, jb2.Buffered("b"));
            Sample(jb2, "b", 6.1, out p);
            Assert.AreEqual(0.9f, p.Blendshapes[JawOpen], 1e-6);
            // A frame of the ended stream the buffer no longer holds (sampled past): a new stream too.
            var jb3 = new JitterBuffer(Margin);
            for (ulong i = 0; i < 4; i++) jb3.Push(MakeFrame("c", i, 0.1f * i, 0f, i == 3), 5.0);
            Assert.AreEqual(PlayState.Playing, Sample(jb3, "c", 5.05 + 2.5 / 30.0, out p)); // frames 0 and 1 dropped
            Assert.AreEqual(5.2 + Margin, jb3.Push(MakeFrame("c", 0, 0f), 5.2), 1e-12);
            Assert.AreEqual(1, jb3.Buffered("c"));
        }

        [Test]
        public void AReusedIdsNewStreamWhoseFirstFramesWereLostIsANewStream()
        {
            // The old stream's 10 frames come at once (a quality hop), `last` on the 10th; the next
            // stream of the id starts before they played out, its stream_start and frame 0 lost (a
            // run of PUB drops): seq 1..5 come first. They are a new timeline with their own poses,
            // not late frames of the old stream (which would show the old poses and end with it).
            var jb = new JitterBuffer(Margin);
            for (ulong i = 0; i < 10; i++) jb.Push(MakeFrame("npc", i, 0.1f, 0f, i == 9), 100.0);
            Assert.AreEqual(100.05 + Margin, jb.Push(MakeFrame("npc", 1, 0.9f), 100.05), 1e-12);
            for (ulong i = 2; i < 6; i++) jb.Push(MakeFrame("npc", i, 0.9f), 100.05);
            Assert.AreEqual(5, jb.Buffered("npc"));
            double offset = 100.05 - 1.0 / 30.0 + Margin;
            Assert.AreEqual(offset, jb.Offset("npc").Value, 1e-12);
            Pose p;
            Assert.AreEqual(PlayState.Waiting, Sample(jb, "npc", 100.06, out p));
            var pose = new Pose();
            double t;
            Assert.AreEqual(PlayState.Playing, jb.Sample("npc", offset + 2.5 / 30.0, pose, out t));
            Assert.AreEqual(2.5 / 30.0, t, 1e-9);
            Assert.AreEqual(0.9f, pose.Blendshapes[JawOpen], 1e-6);
            // It goes on (it has not ended with the old stream): starved, its newest pose held.
            Assert.AreEqual(PlayState.Holding, jb.Sample("npc", offset + 0.4, pose, out t));
            Assert.AreEqual(0.9f, pose.Blendshapes[JawOpen], 1e-6);
            Assert.AreEqual(5.0 / 30.0, t, 1e-9);

            // The same after an ended line that awaited its anchor in vain: the new stream replaces it.
            jb.AwaitAnchor("line");
            for (ulong i = 0; i < 10; i++) jb.Push(MakeFrame("line", i, 0.1f, 0f, i == 9), 200.0);
            Assert.AreEqual(201.0 + Margin, jb.Push(MakeFrame("line", 3, 0.9f), 201.0), 1e-12);
            Assert.AreEqual(1, jb.Buffered("line"));
            Assert.AreEqual(PlayState.Holding, Sample(jb, "line", 201.1, out p));
        }

        [Test]
        public void AnAnchorGivenAfterItsLinePlayedOutDoesNotCaptureTheNextStream()
        {
            double now = 1.0; // the buffer's own clock (the client's): arrivals here are on it too
            var jb = new JitterBuffer(Margin, JitterBuffer.MaxLineFrames, () => now);
            for (ulong i = 0; i < 3; i++) jb.Push(MakeFrame("npc", i, 0f, 0f, i == 2), 1.0 + i / 30.0);
            Pose p;
            Assert.AreEqual(PlayState.Ended, Sample(jb, "npc", 5.0, out p)); // played out and forgotten
            Assert.AreEqual(0, jb.Streams().Length);
            now = 5.0;
            jb.Anchor("npc", 5.0); // a late (or second) "line playback started"
            // The next stream with the id, a live one, a minute later (its stream_start first): it
            // anchors on its own arrival.
            now = 65.0;
            jb.BeginStream("npc");
            Assert.AreEqual(65.0 + Margin, jb.Push(MakeFrame("npc", 0, 0f), 65.0), 1e-12);
            now = 65.01;
            Assert.AreEqual(65.0 + Margin + 1.0 / 30.0, jb.Push(MakeFrame("npc", 1, 0f), 65.01), 1e-12);
            Assert.AreEqual(0UL, jb.Reanchors("npc"));
            // An anchor given before its line's frames, that come a little late for it, still holds,
            // whatever clock it is on (here an audio clock far from the arrivals').
            now = 70.0;
            jb.Anchor("line", 9000.0);
            now = 70.0 + JitterBuffer.StaleAnchorS - 0.5;
            Assert.AreEqual(9000.0, jb.Push(MakeFrame("line", 0, 0f), now), 1e-12);
            Assert.AreEqual(9000.0, jb.Offset("line").Value, 0.0);
        }

        [Test]
        public void ALineAwaitingItsAnchorInVainIsForgotten()
        {
            double now = 0.0;
            var jb = new JitterBuffer(Margin, JitterBuffer.MaxLineFrames, () => now);
            for (int k = 0; k < 3; k++)
            {
                string id = "line" + k;
                jb.AwaitAnchor(id);
                now = 1.0 + k;
                for (ulong i = 0; i < 100; i++) jb.Push(MakeFrame(id, i, 0f, 0f, i == 99), now);
                jb.EndStream(id);
            }
            Assert.AreEqual(3, jb.Streams().Length);
            Pose p;
            now = 1.0 + JitterBuffer.UnanchoredLineTimeoutS;
            Assert.AreEqual(PlayState.Waiting, Sample(jb, "line0", now, out p)); // not yet
            // A minute after their last frames, never anchored: forgotten (a sample or a push says
            // when, on the buffer's clock: a line is sampled on the audio clock).
            now = 2.5 + JitterBuffer.UnanchoredLineTimeoutS;
            Assert.AreEqual(PlayState.Unknown, Sample(jb, "line0", 0.0, out p));
            Assert.AreEqual(1, jb.Streams().Length);
            now = 100.0;
            jb.Push(MakeFrame("other", 0, 0f), now);
            Assert.AreEqual(1, jb.Streams().Length);
            Assert.AreEqual("other", jb.Streams()[0]);

            // A new stream with the id of an ended line that was never anchored is a new, live stream.
            jb.AwaitAnchor("npc");
            now = 200.0;
            for (ulong i = 0; i < 3; i++) jb.Push(MakeFrame("npc", i, 0f, 0f, i == 2), now);
            jb.EndStream("npc");
            now = 210.0;
            Assert.AreEqual(210.0 + Margin, jb.Push(MakeFrame("npc", 0, 0.7f), now), 1e-12);
            Assert.AreEqual(1, jb.Buffered("npc"));
            // A stream_end before any frame of an awaited line is an older stream's: the line
            // still waits (and its own stream_start keeps it).
            jb.AwaitAnchor("npc");
            jb.EndStream("npc");
            jb.BeginStream("npc");
            now = 220.0;
            Assert.IsTrue(double.IsNaN(jb.Push(MakeFrame("npc", 0, 0.1f), now)));
            jb.Anchor("npc", 221.0);
            Assert.AreEqual(PlayState.Holding, Sample(jb, "npc", 221.0, out p));
        }

        [Test]
        public void AnEndedStreamNobodyPlaysIsForgotten()
        {
            double now = 0.0;
            var jb = new JitterBuffer(Margin, JitterBuffer.MaxLineFrames, () => now);
            Pose p;
            // A 60 s line, all of its frames in within 10 s, played on the audio clock from 12 s on:
            // sampled as it plays, it is kept to its end, long after its last frame came.
            jb.AwaitAnchor("long");
            for (ulong i = 0; i < 1800; i++)
            {
                now = i / 180.0;
                jb.Push(MakeFrame("long", i, 0f, 0f, i == 1799), now);
            }
            jb.Anchor("long", 12.0);
            // An anchored line whose face stopped sampling it (the NPC was interrupted: its line lets
            // go of it, below), and a stream no face shows: ended, nobody will play them.
            jb.AwaitAnchor("hushed");
            for (ulong i = 0; i < 30; i++) jb.Push(MakeFrame("hushed", i, 0f, 0f, i == 29), now);
            jb.Anchor("hushed", 10.0);
            Assert.AreEqual(PlayState.Playing, Sample(jb, "hushed", 10.2, out p));
            for (ulong i = 0; i < 30; i++) jb.Push(MakeFrame("unseen", i, 0f, 0f, i == 29), now);
            jb.Push(MakeFrame("live", 0, 0f), now); // not ended: kept
            for (now = 12.0; now < 69.0; now += 0.5) Assert.AreEqual(PlayState.Playing, Sample(jb, "long", now, out p));
            Assert.AreEqual(new[] { "hushed", "live", "long", "unseen" }, Sorted(jb.Streams()), "a minute has not passed");
            now = 10.0 + JitterBuffer.UnanchoredLineTimeoutS + 0.5;
            Assert.AreEqual(PlayState.Playing, Sample(jb, "long", now, out p));
            // The stream no face shows is forgotten; not the line on the audio clock: the game
            // anchored it (and may be paused, ALineOnTheAudioClockOutlivesAPauseAndAnEarlyAnchor).
            // Its owner lets go of it (NpcLine.Cancel).
            Assert.AreEqual(new[] { "hushed", "live", "long" }, Sorted(jb.Streams()));
            jb.ResetStream("hushed");
            Assert.AreEqual(new[] { "live", "long" }, Sorted(jb.Streams()));
            Assert.AreEqual(PlayState.Ended, Sample(jb, "long", 72.5, out p));
            // A stream is kept while it is sampled, and forgotten a minute after the last time.
            for (ulong i = 0; i < 3; i++) jb.Push(MakeFrame("idle", i, 0f, 0f, i == 2), now);
            double fed = now;
            now = fed + 30;
            Assert.AreEqual(PlayState.Waiting, Sample(jb, "idle", 0.0, out p));
            now = fed + JitterBuffer.UnanchoredLineTimeoutS + 1;
            jb.Push(MakeFrame("live", 1, 0f), now);
            Assert.IsTrue(jb.Contains("idle"), "sampled 31 s ago");
            now = fed + 30 + JitterBuffer.UnanchoredLineTimeoutS + 1;
            jb.Push(MakeFrame("live", 2, 0f), now);
            Assert.AreEqual(new[] { "live" }, jb.Streams());
        }

        [Test]
        public void ALineOnTheAudioClockOutlivesAPauseAndAnEarlyAnchor()
        {
            // The buffer's clock is the client's (a Stopwatch): it runs on while the game is paused,
            // when Unity runs no LateUpdate and the audio clock stops.
            double now = 0.0;
            var jb = new JitterBuffer(Margin, JitterBuffer.MaxLineFrames, () => now);
            Pose p;
            // A 10 s line received whole within 1 s, its audio started at 2.0 (the audio clock and
            // the client's agree here), played 3 s, then the game is paused for 61 s.
            jb.AwaitAnchor("guard");
            for (ulong i = 0; i < 300; i++)
            {
                now = i / 300.0;
                jb.Push(MakeFrame("guard", i, 0.5f, 0f, i == 299), now);
            }
            jb.Anchor("guard", 2.0);
            double audio = 2.0;
            for (; audio < 5.0; audio += 1 / 60.0)
            {
                now = audio;
                Assert.AreEqual(PlayState.Playing, Sample(jb, "guard", audio, out p));
            }
            now += JitterBuffer.UnanchoredLineTimeoutS + 1;
            jb.Push(MakeFrame("other", 0, 0f, 0f, true), now); // any push or sample forgets what expired
            // Resumed: the audio goes on, and so does the face.
            var pose = new Pose();
            double shown;
            Assert.AreEqual(PlayState.Playing, jb.Sample("guard", audio, pose, out shown), "the paused line was forgotten");
            Assert.AreEqual(audio - 2.0, shown, 1e-9);
            Assert.AreEqual(0.5f, pose.Blendshapes[JawOpen]);
            Assert.AreEqual(PlayState.Ended, Sample(jb, "guard", 12.1, out p));
            Assert.IsFalse(jb.Contains("guard"), "played out");

            // A cutscene line whose audio the game schedules 90 s ahead (PlaybackStarted early):
            // nothing samples it until then.
            now = 1000.0;
            jb.AwaitAnchor("cut");
            for (ulong i = 0; i < 90; i++) jb.Push(MakeFrame("cut", i, 0.5f, 0f, i == 89), now);
            jb.Anchor("cut", now + 90.0);
            now += 90.0;
            Assert.AreEqual(PlayState.Playing, Sample(jb, "cut", now + 0.5, out p), "the early-anchored line was forgotten");
            Assert.AreEqual(0.5f, p.Blendshapes[JawOpen]);
            Assert.AreEqual(PlayState.Ended, Sample(jb, "cut", now + 3.5, out p));
            // (A line awaiting its anchor in vain is still forgotten: ALineAwaitingItsAnchorInVainIsForgotten.)
        }

        [Test]
        public void ADiscardedStreamDropsTheFramesThatStillCome()
        {
            double now = 0.0;
            var jb = new JitterBuffer(Margin, JitterBuffer.MaxLineFrames, () => now);
            Pose p;
            // A line cancelled after its first frames (NpcLine.Cancel): the runtime still sends the
            // rest. They never show: not on the audio clock, nor on the client's.
            jb.AwaitAnchor("npc");
            for (ulong i = 0; i < 5; i++) jb.Push(MakeFrame("npc", i, 0.8f), now);
            jb.Anchor("npc", 0.0);
            jb.Discard("npc");
            Assert.IsFalse(jb.Contains("npc"));
            Assert.IsTrue(jb.Discarding("npc"));
            for (ulong i = 5; i < 89; i++)
            {
                now = i / 300.0;
                Assert.IsTrue(double.IsNaN(jb.Push(MakeFrame("npc", i, (i % 2) * 0.8f), now)));
            }
            Assert.AreEqual(0, jb.Buffered("npc"));
            Assert.IsNull(jb.Offset("npc"));
            for (now = 0.4; now < 3.5; now += 1 / 60.0) Assert.AreEqual(PlayState.Unknown, Sample(jb, "npc", now, out p));
            Assert.AreEqual(new string[0], jb.Streams());
            jb.Anchor("npc", now); // late (the game's PlaybackStarted): ignored
            Assert.IsTrue(jb.Discarding("npc"));
            Assert.AreEqual(PlayState.Unknown, Sample(jb, "npc", now, out p));
            // Its last frame ends the discard: a later frame of the id is a new stream's.
            jb.Push(MakeFrame("npc", 89, 0f, 0f, true), now);
            Assert.IsFalse(jb.Discarding("npc"));
            Assert.IsFalse(jb.Contains("npc"));
            Assert.AreEqual(now + Margin, jb.Push(MakeFrame("npc", 0, 0.3f), now), 1e-12);
            // So do its stream_end, a new stream of the id (stream_start) and a new line with it.
            jb.Discard("a");
            jb.EndStream("a");
            Assert.IsFalse(jb.Discarding("a"));
            jb.Discard("b");
            jb.BeginStream("b");
            Assert.IsFalse(jb.Discarding("b"));
            jb.Discard("c");
            jb.AwaitAnchor("c");
            Assert.IsFalse(jb.Discarding("c"));
            Assert.IsTrue(jb.Contains("c"));
            jb.ResetStream("c");
            // A stream whose end the buffer has is just forgotten: nothing more of it comes.
            jb.Push(MakeFrame("e", 0, 0f, 0f, true), now);
            jb.Discard("e");
            Assert.IsFalse(jb.Discarding("e"));
            // A discard of which nothing comes lapses UnanchoredLineTimeoutS after the last sign of it.
            jb.Discard("d");
            double discarded = now;
            now = discarded + 30;
            jb.Push(MakeFrame("d", 7, 0.1f), now);
            now = discarded + JitterBuffer.UnanchoredLineTimeoutS + 1;
            Assert.AreEqual(PlayState.Unknown, Sample(jb, "x", now, out p));
            Assert.IsTrue(jb.Discarding("d"), "a frame of it came 31 s ago");
            now = discarded + 30 + JitterBuffer.UnanchoredLineTimeoutS + 1;
            Assert.AreEqual(PlayState.Unknown, Sample(jb, "x", now, out p));
            Assert.IsFalse(jb.Discarding("d"));
            // A runtime restart forgets it as any unfinished stream.
            jb.Discard("f");
            jb.ForgetUnfinished();
            Assert.IsFalse(jb.Discarding("f"));
        }

        [Test]
        public void AFaceShowsALineFromBeforeItsFirstFrameUntilItPlaysOut()
        {
            // KsdiffFaceDriver: KsdiffNpcVoice calls ShowLine right after the line's Start(), before
            // any frame of it came; the face samples it every LateUpdate.
            double now = 0.0;
            var jb = new JitterBuffer(Margin, JitterBuffer.MaxLineFrames, () => now);
            var line = new ShownLine();
            var pose = new Pose();
            double shown;
            Func<double, PlayState, bool> face = (audioNow, expected) =>
            {
                PlayState state = jb.Sample(line.Stream, audioNow, pose, out shown);
                Assert.AreEqual(expected, state);
                return line.Sampled(jb, state);
            };
            jb.AwaitAnchor("npc");
            line.Show("npc");
            Assert.IsTrue(face(0.0, PlayState.Unknown), "a line with no frame yet was dropped");
            Assert.IsTrue(face(0.1, PlayState.Unknown));
            for (ulong i = 0; i < 10; i++) jb.Push(MakeFrame("npc", i, 0.5f, 0f, i == 9), now);
            Assert.IsTrue(face(0.2, PlayState.Waiting));
            jb.Anchor("npc", 1.0);
            Assert.IsTrue(face(1.1, PlayState.Playing));
            Assert.AreEqual("npc", line.Stream);
            Assert.IsFalse(face(1.5, PlayState.Ended), "played out");
            Assert.IsNull(line.Stream);
            // A line let go of (cancelled, failed: Discard; forgotten) is dropped at its next sample.
            jb.AwaitAnchor("npc2");
            line.Show("npc2");
            Assert.IsTrue(face(2.0, PlayState.Unknown));
            jb.Discard("npc2");
            Assert.IsFalse(face(2.1, PlayState.Unknown));
            jb.AwaitAnchor("npc3");
            line.Show("npc3");
            jb.ResetStream("npc3");
            Assert.IsFalse(face(2.2, PlayState.Unknown));
            // StopLine stops only its own line.
            line.Show("npc4");
            line.Stop("npc3");
            Assert.AreEqual("npc4", line.Stream);
            line.Stop("npc4");
            Assert.IsNull(line.Stream);
            Assert.IsFalse(line.Sampled(jb, PlayState.Unknown));
        }

        static string[] Sorted(string[] ids)
        {
            System.Array.Sort(ids, System.StringComparer.Ordinal);
            return ids;
        }

        [Test]
        public void LerpEndpointsAreExact()
        {
            Pose a = new Pose(), b = new Pose(), c = new Pose();
            a.Blendshapes[3] = 0.25f;
            b.Blendshapes[3] = 0.75f;
            a.Head[2] = -0.5f;
            b.Head[2] = 0.5f;
            c.Lerp(a, b, 0.0);
            Assert.AreEqual(0.25f, c.Blendshapes[3]);
            c.Lerp(a, b, 1.0);
            Assert.AreEqual(0.75f, c.Blendshapes[3]);
            c.Lerp(a, b, 0.5);
            Assert.AreEqual(0.0f, c.Head[2]);
        }

        [Test]
        public void TheAudioClockIsInterpolatedBetweenItsSteps()
        {
            var clock = new AudioClock();
            const double step = 1024.0 / 48000; // 21.3 ms
            Assert.AreEqual(10.0, clock.Sample(10.0, 500.000, step), 1e-12);
            Assert.AreEqual(10.005, clock.Sample(10.0, 500.005, step), 1e-9);  // between steps: extrapolated
            Assert.AreEqual(10.0 + step, clock.Sample(10.0, 500.100, step), 1e-9); // never more than one step
            Assert.AreEqual(10.0 + step, clock.Sample(10.0 + step / 2, 500.101, step), 1e-9); // never backwards
            Assert.AreEqual(10.0 + 2 * step, clock.Sample(10.0 + 2 * step, 500.120, step), 1e-9);
        }
    }
}
