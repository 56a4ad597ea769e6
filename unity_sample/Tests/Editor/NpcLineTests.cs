// NpcLine against the stand-in runtime: what goes on the wire (open_stream in mode "line" with the
// transcript; for a 1.2 runtime the whole line at once within max_ahead_s, audio refused with busy
// sent again later, end_stream at once; for a 1.1 runtime f32le audio at the clip's pace with
// at_sample, then end_stream), when playback starts (the stated latency, or one from stats or
// frames, plus the margin, and never before the first frame), and the failures: an absent
// runtime (a line that gave its open up never opens a stream later), a refusal, a restart mid-line, a dropped connection,
// a client stopped by another thread while the line pushes (it fails, Update does not throw); and a line whose end_stream reply
// is lost ends with its stream_end, or fails in bounded time, never hangs.
using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.Linq;
using System.Threading;
using NUnit.Framework;

namespace Ksdiff.Tests
{
    [TestFixture]
    [Category("LibZmq")]
    public class NpcLineTests
    {
        FakeRuntime _rt;
        KsdiffClient _client;

        [SetUp]
        public void SetUp()
        {
            FakeRuntime.RequireLibZmq();
            _rt = new FakeRuntime();
            _client = new KsdiffClient(new ClientOptions
            {
                PubEndpoint = _rt.PubEndpoint, RouterEndpoint = _rt.RouterEndpoint, Transport = () => new LibZmqTransport(),
            });
            _client.Start();
            _rt.WaitSubscribed(Protocol.HelloTopic);
            _rt.Publish(Protocol.HelloTopic, FakeRuntime.Hello("A"));
            Assert.IsTrue(Wait.Until(() => _client.Status().State == ClientState.Live, 10));
        }

        [TearDown]
        public void TearDown()
        {
            if (_client != null) _client.Dispose();
            if (_rt != null) _rt.Dispose();
        }

        static float[] Tone(double seconds, int rate, int channels)
        {
            var s = new float[(int)(seconds * rate) * channels];
            for (int i = 0; i < s.Length; i++) s[i] = (float)(0.5 * Math.Sin(i * 0.05));
            return s;
        }

        // Runs `line` with the client's clock until `until` holds, answering the runtime's side
        // with `serve` for each request; the audio "starts" the moment the line asks.
        void Drive(NpcLine line, Func<bool> until, Action<KeyValuePair<byte[], byte[]>, Message> serve, double timeoutS = 10)
        {
            var watch = Stopwatch.StartNew();
            while (!until())
            {
                Assert.Less(watch.Elapsed.TotalSeconds, timeoutS, "line stuck in " + line.State + " " + line.Failure);
                line.Update();
                if (line.ShouldStartPlayback) line.PlaybackStarted(_client.Now());
                KeyValuePair<byte[], byte[]>? request = _rt == null ? null : _rt.TryReceive(0.005);
                if (request.HasValue) serve(request.Value, new Decoder().Decode(request.Value.Value));
            }
        }

        [Test]
        public void ALineGoesOutAtItsOwnPaceAndEndsWithEveryFrame()
        {
            const int rate = 48000, channels = 2;
            float[] clip = Tone(0.5, rate, channels);
            var line = new NpcLine(_client, clip, rate, channels, new NpcLineOptions { Stream = "npc-guard-1", Transcript = "Halt!", Seed = 3 });
            line.Start();
            OpenStream open = null;
            var audio = new List<Audio>();
            var audioTimes = new List<double>();
            double? playbackAt = null;
            double startedAt = _client.Now();
            ulong published = 0;
            Drive(line, () => line.State == NpcLineState.Done, (r, m) =>
            {
                if (m is OpenStream)
                {
                    open = (OpenStream)m;
                    _rt.Reply(r.Key, FakeRuntime.StreamOpened(open.Stream, open.Req.Value));
                }
                else if (m is Audio)
                {
                    audio.Add((Audio)m);
                    audioTimes.Add(_client.Now());
                    // The runtime's part: a frame per 1/30 s of audio received.
                    ulong samples = 0;
                    foreach (Audio a in audio) samples += (ulong)a.Pcm.Length / (4 * channels);
                    while ((published + 1) * rate / 30 <= samples)
                    {
                        _rt.Publish(Protocol.FrameTopic(open.Stream), FakeRuntime.Frame(open.Stream, published));
                        published++;
                    }
                }
                else if (m is EndStream)
                {
                    _rt.Publish(Protocol.FrameTopic(open.Stream), FakeRuntime.Frame(open.Stream, published, 0f, true));
                    _rt.Reply(r.Key, FakeRuntime.StreamEnded(open.Stream, published + 1, ((EndStream)m).Req.Value));
                }
                if (line.State == NpcLineState.Playing && !playbackAt.HasValue) playbackAt = _client.Now();
            });
            Assert.IsNull(line.Failure);
            Assert.AreEqual("npc-guard-1", open.Stream);
            Assert.AreEqual(Protocol.ModeLine, open.Mode, "asked for; a 1.1 runtime ignores it and says no mode");
            Assert.IsNull(line.Mode);
            Assert.AreEqual("Halt!", open.Transcript);
            Assert.AreEqual(3L, open.Seed.Value);
            Assert.AreEqual("f32le", open.Format);
            Assert.AreEqual(48000u, open.SampleRate);
            Assert.AreEqual(2u, open.Channels);
            // Every sample, in order, placed with at_sample, seq 0, 1, 2, ...
            var received = new List<float>();
            for (int i = 0; i < audio.Count; i++)
            {
                Assert.AreEqual((ulong)i, audio[i].Seq);
                Assert.AreEqual((ulong)(received.Count / channels), audio[i].AtSample.Value);
                for (int k = 0; k < audio[i].Pcm.Length; k += 4) received.Add(BitConverter.ToSingle(audio[i].Pcm, k));
                if (i + 1 < audio.Count) Assert.AreEqual(960 * channels * 4, audio[i].Pcm.Length, "20 ms messages");
            }
            Assert.AreEqual(clip, received.ToArray());
            // At the clip's pace: the last message goes out about 0.5 s after the first, not at once.
            Assert.Greater(audioTimes[audioTimes.Count - 1] - audioTimes[0], 0.4);
            // Nothing known about the latency yet: the default, plus the margin.
            Assert.IsFalse(line.LatencyWasKnown);
            Assert.AreEqual(0.3 + 0.06, line.PlaybackDelayS, 1e-9);
            Assert.GreaterOrEqual(playbackAt.Value - startedAt, 0.3, "playback waits for the latency");
            Assert.AreEqual(published + 1, line.Total.Value);
        }

        [Test]
        public void ALineForA12RuntimeGoesWholeAtOnceAndEndsAtOnce()
        {
            const int rate = 48000, channels = 2;
            float[] clip = Tone(1.0, rate, channels);
            var line = new NpcLine(_client, clip, rate, channels, new NpcLineOptions { Stream = "npc-line-1", MarginS = 0.02 });
            var recorder = new ClipRecorder("npc-line-1");
            _client.AddFrameSink(recorder);
            line.Start();
            OpenStream open = null;
            var audio = new List<Audio>();
            double endAt = -1;
            ulong published = 0;
            Drive(line, () => line.State == NpcLineState.Done, (r, m) =>
            {
                if (m is OpenStream)
                {
                    open = (OpenStream)m;
                    _rt.Reply(r.Key, FakeRuntime.StreamOpened(open.Stream, open.Req.Value, 20.0, 250.0, Protocol.ModeLine));
                }
                else if (m is Audio) audio.Add((Audio)m);
                else if (m is EndStream)
                {
                    endAt = _client.Now();
                    // A line: its frames as fast as the machine goes, long before their instants.
                    for (; published < 34; published++)
                        _rt.Publish(Protocol.FrameTopic(open.Stream), FakeRuntime.Frame(open.Stream, published, 0.1f, published == 33));
                    _rt.Reply(r.Key, FakeRuntime.StreamEnded(open.Stream, published, ((EndStream)m).Req.Value));
                }
            });
            Assert.IsNull(line.Failure);
            Assert.AreEqual(Protocol.ModeLine, open.Mode);
            Assert.AreEqual(Protocol.ModeLine, line.Mode);
            // The whole line in one message (1 s of 48 kHz stereo is 384 KB, under the 1 MiB limit),
            // every sample in place, then end_stream: all of it before playback was even due.
            Assert.AreEqual(1, audio.Count);
            var received = new List<float>();
            for (int i = 0; i < audio.Count; i++)
            {
                Assert.AreEqual((ulong)i, audio[i].Seq);
                Assert.AreEqual((ulong)(received.Count / channels), audio[i].AtSample.Value);
                for (int k = 0; k < audio[i].Pcm.Length; k += 4) received.Add(BitConverter.ToSingle(audio[i].Pcm, k));
            }
            Assert.AreEqual(clip, received.ToArray());
            Assert.Greater(endAt, 0);
            Assert.Less(endAt - line.FirstPushS, line.PlaybackDelayS, "end_stream went at once, not after the clip's duration");
            // Playback: the stated latency plus the margin after the first push.
            Assert.IsTrue(line.LatencyWasStated);
            Assert.AreEqual(0.25 + 0.02, line.PlaybackDelayS, 1e-9);
            double t0 = _client.Buffer.Offset("npc-line-1").Value; // Drive starts the audio the moment the line asks
            Assert.GreaterOrEqual(t0 - line.FirstPushS, line.PlaybackDelayS - 1e-9);
            Assert.AreEqual(34UL, line.Total.Value);
            Assert.AreEqual(34, recorder.Count, "Done: every frame has reached the sinks");
            Assert.AreEqual(0, line.BusyRefusals);
        }

        [Test]
        public void LineMessagesStayUnderTheSizeLimitAndWithinMaxAheadS()
        {
            int fit = (Protocol.MaxMessageBytes - NpcLine.MessageHeaderRoomBytes) / 8; // 48 kHz stereo f32le
            Assert.AreEqual(fit, NpcLine.LineChunkFrames(10.0, 48000, 2, null), "10 s do not fit: as much as does");
            Assert.Less(fit, 3 * 48000);
            Assert.AreEqual(160000, NpcLine.LineChunkFrames(10.0, 16000, 1, null), "10 s of 16 kHz mono fit");
            Assert.AreEqual(160000, NpcLine.LineChunkFrames(10.0, 16000, 1, 20.0));
            Assert.AreEqual(8000, NpcLine.LineChunkFrames(10.0, 16000, 1, 1.0), "max_ahead_s less the margin");
            Assert.AreEqual(1600, NpcLine.LineChunkFrames(10.0, 16000, 1, 0.2), "never under 0.1 s");
            Assert.AreEqual(1600, NpcLine.LineChunkFrames(0.1, 16000, 1, null));
        }

        [Test]
        public void AudioRefusedAsTooFarAheadIsSentAgainLaterAndTheLineEndsOnlyOnceAllIsTaken()
        {
            // A runtime whose real-time clock for the stream starts 1 s after our first push (a slow
            // hop): with max_ahead_s 1 s it refuses (busy, nothing taken) audio ending more than 1 s
            // ahead of that clock. The line must resend what was refused, leave no gap, and send
            // end_stream only after all of its audio was taken.
            const int rate = 16000;
            const double maxAheadS = 1.0, lagS = 1.0;
            float[] clip = Tone(1.6, rate, 1);
            var line = new NpcLine(_client, clip, rate, 1, new NpcLineOptions { Stream = "npc-busy" });
            line.Start();
            var taken = new List<float>();
            int refused = 0, gaps = 0, hellos = 0;
            bool endedWithAllTaken = false;
            Stopwatch sinceFirst = null;
            Drive(line, () => line.State == NpcLineState.Done, (r, m) =>
            {
                if (m is OpenStream) _rt.Reply(r.Key, FakeRuntime.StreamOpened("npc-busy", ((OpenStream)m).Req.Value, maxAheadS, 250.0, Protocol.ModeLine));
                else if (m is Hello)
                {
                    hellos++;
                    _rt.Reply(r.Key, FakeRuntime.Hello("A", ((Hello)m).Req.Value));
                }
                else if (m is Audio)
                {
                    var a = (Audio)m;
                    if (sinceFirst == null) sinceFirst = Stopwatch.StartNew();
                    double clock = Math.Max(0, sinceFirst.Elapsed.TotalSeconds - lagS);
                    double endS = (double)(a.AtSample.Value + (ulong)a.Pcm.Length / 4) / rate;
                    if (endS - clock > maxAheadS)
                    {
                        refused++;
                        _rt.Reply(r.Key, FakeRuntime.Error("busy", "audio", "npc-busy", null));
                        return;
                    }
                    int at = (int)a.AtSample.Value;
                    if (at > taken.Count) gaps++;
                    while (taken.Count < at) taken.Add(0f); // a gap is silence
                    for (int k = 0; k < a.Pcm.Length / 4; k++)
                    {
                        if (at + k >= taken.Count) taken.Add(BitConverter.ToSingle(a.Pcm, 4 * k)); // what it has is dropped
                    }
                }
                else if (m is EndStream)
                {
                    endedWithAllTaken = taken.Count == clip.Length;
                    for (ulong i = 0; i < 52; i++) _rt.Publish(Protocol.FrameTopic("npc-busy"), FakeRuntime.Frame("npc-busy", i, 0.1f, i == 51));
                    _rt.Reply(r.Key, FakeRuntime.StreamEnded("npc-busy", 52, ((EndStream)m).Req.Value));
                }
            });
            Assert.IsNull(line.Failure);
            Assert.Greater(refused, 0, "the stand-in refused some audio");
            Assert.AreEqual(refused, line.BusyRefusals);
            Assert.AreEqual(0, gaps, "no audio was skipped");
            Assert.AreEqual(clip, taken.ToArray(), "every sample taken, in place");
            Assert.IsTrue(endedWithAllTaken, "end_stream only after all of the line was taken");
            Assert.GreaterOrEqual(hellos, 1, "a line longer than max_ahead_s checks that nothing was refused before ending");
        }

        [Test]
        public void TheLatencyComesFromStatsAndFramesOfPushedStreams()
        {
            // A previous sdk stream whose frames showed 180 ms and whose stats said 240 ms.
            _rt.WaitSubscribed(Protocol.FrameTopicPrefix);
            _rt.Publish(Protocol.StreamTopic("old"), FakeRuntime.StreamStart("old", "sdk"));
            _rt.Publish(Protocol.FrameTopic("old"), FakeRuntime.Frame("old", 0, 0f, false, 180));
            _rt.Publish(Protocol.StatsTopic, FakeRuntime.Stats("old", 240));
            Assert.IsTrue(Wait.Until(() => _client.Status().LastStats != null && _client.Stream("old") != null && _client.Stream("old").StatsLatencyP95Ms.HasValue, 10));
            Assert.AreEqual(240.0, NpcLine.EstimateLatencyMs(_client.Status()).Value, 1e-9);
            var line = new NpcLine(_client, Tone(0.1, 16000, 1), 16000, 1, new NpcLineOptions { Stream = "npc-2", MarginS = 0.05 });
            line.Start();
            Drive(line, () => line.State != NpcLineState.Opening, (r, m) =>
            {
                if (m is OpenStream) _rt.Reply(r.Key, FakeRuntime.StreamOpened("npc-2", ((OpenStream)m).Req.Value));
            });
            Assert.IsTrue(line.LatencyWasKnown);
            Assert.IsFalse(line.LatencyWasStated, "a 1.1 runtime states none");
            Assert.AreEqual(0.24 + 0.05, line.PlaybackDelayS, 1e-9);
            // A mic stream only: its latency stands in (same model, same load).
            var status = new ClientStatus();
            status.Streams["mic"] = new StreamStatus { Stream = "mic", Source = "mic", LatencyP95Ms = 130, LastFrameS = 1 };
            Assert.AreEqual(130.0, NpcLine.EstimateLatencyMs(status).Value);
            status.Streams["npc"] = new StreamStatus { Stream = "npc", Source = "sdk", LatencyP95Ms = 110, LastFrameS = 1 };
            Assert.AreEqual(110.0, NpcLine.EstimateLatencyMs(status).Value, "sdk streams first");
            // The newest sdk stream speaks for the runtime's current load.
            status.Streams["npc0"] = new StreamStatus { Stream = "npc0", Source = "sdk", LatencyP95Ms = 900, StatsLatencyP95Ms = 950, LastFrameS = 0.5 };
            Assert.AreEqual(110.0, NpcLine.EstimateLatencyMs(status).Value);
            status.Streams["npc2"] = new StreamStatus { Stream = "npc2", Source = "sdk", LatencyP95Ms = 150, StatsLatencyP95Ms = 170, LastFrameS = 2 };
            Assert.AreEqual(170.0, NpcLine.EstimateLatencyMs(status).Value);
            Assert.AreEqual(110.0, NpcLine.EstimateLatencyMs(status, "npc2").Value, "the line's own stream is not evidence");
            Assert.IsNull(NpcLine.EstimateLatencyMs(new ClientStatus()));
        }

        [Test]
        public void TheLatencyAOneTwoRuntimeStatesWinsOverTheEstimate()
        {
            // Evidence of 240 ms from another stream; the runtime states 90 ms for this line.
            _rt.WaitSubscribed(Protocol.FrameTopicPrefix);
            _rt.Publish(Protocol.StreamTopic("old"), FakeRuntime.StreamStart("old", "sdk"));
            _rt.Publish(Protocol.StatsTopic, FakeRuntime.Stats("old", 240));
            _rt.Publish(Protocol.FrameTopic("old"), FakeRuntime.Frame("old", 0, 0f, false, 180));
            Assert.IsTrue(Wait.Until(() => _client.Stream("old") != null && _client.Stream("old").StatsLatencyP95Ms.HasValue, 10));
            var line = new NpcLine(_client, Tone(0.1, 16000, 1), 16000, 1, new NpcLineOptions { Stream = "npc-s", MarginS = 0.05 });
            line.Start();
            Drive(line, () => line.State != NpcLineState.Opening, (r, m) =>
            {
                if (m is OpenStream) _rt.Reply(r.Key, FakeRuntime.StreamOpened("npc-s", ((OpenStream)m).Req.Value, 20.0, 90.0));
            });
            Assert.IsTrue(line.LatencyWasStated);
            Assert.IsTrue(line.LatencyWasKnown);
            Assert.AreEqual(0.09 + 0.05, line.PlaybackDelayS, 1e-9);
            Assert.AreEqual(90.0, _client.Stream("npc-s").LatencyMs.Value, "the client keeps the stated latency");
        }

        [Test]
        public void PlaybackNeverStartsBeforeTheFirstFrame()
        {
            var line = new NpcLine(_client, Tone(1.0, 16000, 1), 16000, 1,
                                   new NpcLineOptions { Stream = "npc-slow", DefaultLatencyS = 0.05, MarginS = 0, FrameTimeoutS = 10 });
            line.Start();
            double opened = 0;
            int audioMessages = 0;
            Drive(line, () => audioMessages >= 20, (r, m) =>
            {
                if (m is OpenStream) { _rt.Reply(r.Key, FakeRuntime.StreamOpened("npc-slow", ((OpenStream)m).Req.Value)); opened = _client.Now(); }
                if (m is Audio) audioMessages++;
            });
            // 0.4 s of audio pushed (at its pace), the 50 ms delay long past, no frame: still buffering.
            Assert.Greater(_client.Now() - opened, 0.3);
            Assert.AreEqual(NpcLineState.Buffering, line.State);
            Assert.IsFalse(line.ShouldStartPlayback);
            _rt.Publish(Protocol.FrameTopic("npc-slow"), FakeRuntime.Frame("npc-slow", 0));
            Drive(line, () => line.State == NpcLineState.Playing, (r, m) => { });
            Assert.Greater(opened, 0);
        }

        [Test]
        public void AnAbsentRuntimeFailsTheLineWithinTheOpenTimeout()
        {
            _rt.Dispose(); // the runtime goes away after the client connected
            _rt = null;
            var line = new NpcLine(_client, Tone(0.2, 16000, 1), 16000, 1, new NpcLineOptions { Stream = "npc-3", OpenTimeoutS = 0.3 });
            line.Start();
            Assert.IsTrue(Wait.Until(() => line.Update() == NpcLineState.Failed, 5));
            Assert.IsTrue(line.Failure.Contains("no reply to open_stream"), line.Failure);
            Assert.IsFalse(line.ShouldStartPlayback);
        }

        [Test]
        public void ALineThatGaveUpOnItsOpenNeverOpensAStreamLater()
        {
            // The line's open timeout (0.3 s) is shorter than the client's request timeout (10 s): the
            // line gives its open_stream up, so a runtime that comes later never gets it.
            string pub, router;
            using (var probe = new FakeRuntime())
            {
                pub = probe.PubEndpoint;
                router = probe.RouterEndpoint;
            }
            using (var client = new KsdiffClient(new ClientOptions { PubEndpoint = pub, RouterEndpoint = router, Transport = () => new LibZmqTransport() }))
            {
                client.Start();
                var line = new NpcLine(client, Tone(0.2, 16000, 1), 16000, 1, new NpcLineOptions { Stream = "npc-5", OpenTimeoutS = 0.3 });
                line.Start();
                Assert.IsTrue(Wait.Until(() => line.Update() == NpcLineState.Failed, 5));
                Assert.IsTrue(line.Failure.Contains("no reply to open_stream"), line.Failure);
                Assert.IsTrue(Wait.Until(() => client.Status().Withdrawn == 1, 5), "the open_stream was not withdrawn");
                var cancelled = new NpcLine(client, Tone(0.2, 16000, 1), 16000, 1, new NpcLineOptions { Stream = "npc-6" });
                cancelled.Start();
                cancelled.Cancel();
                Assert.AreEqual("cancelled", cancelled.Failure);
                Assert.IsTrue(Wait.Until(() => client.Status().Withdrawn == 2, 5), "the cancelled line's open_stream was not withdrawn");
                using (var rt = new FakeRuntime(pub, router))
                {
                    PendingRequest marker = client.RequestHello();
                    var r = rt.Receive();
                    Message first = new Decoder().Decode(r.Value);
                    Assert.AreEqual(MessageType.Hello, first.Type, "a line's open_stream went out after the line gave it up");
                    Assert.AreEqual(marker.Req, ((Hello)first).Req.Value);
                }
            }
        }

        [Test]
        public void ARefusedOrLostLineFailsWithTheReason()
        {
            var busy = new NpcLine(_client, Tone(0.2, 16000, 1), 16000, 1, new NpcLineOptions { Stream = "npc-4" });
            busy.Start();
            Drive(busy, () => busy.State == NpcLineState.Failed, (r, m) =>
            {
                if (m is OpenStream) _rt.Reply(r.Key, FakeRuntime.Error("busy", "open_stream", "npc-4", ((OpenStream)m).Req));
            });
            Assert.IsTrue(busy.Failure.Contains("busy"), busy.Failure);

            var lost = new NpcLine(_client, Tone(2.0, 16000, 1), 16000, 1, new NpcLineOptions { Stream = "npc-5" });
            lost.Start();
            bool restarted = false;
            Drive(lost, () => lost.State == NpcLineState.Failed, (r, m) =>
            {
                if (m is OpenStream) _rt.Reply(r.Key, FakeRuntime.StreamOpened("npc-5", ((OpenStream)m).Req.Value));
                if (m is Audio && !restarted)
                {
                    restarted = true;
                    _rt.Publish(Protocol.HelloTopic, FakeRuntime.Hello("B")); // a new runtime process
                }
            });
            Assert.IsTrue(lost.Failure.Contains("restarted"), lost.Failure);

            Assert.Throws<ArgumentException>(() => new NpcLine(_client, new float[0], 16000, 1, new NpcLineOptions { Stream = "x" }));
            Assert.Throws<ProtocolException>(() => new NpcLine(_client, new float[1], 16000, 1, new NpcLineOptions { Stream = ".." }));
            // A bake's line checks what it is given as a line does.
            Assert.Throws<ArgumentException>(() => new OfflineLine(_client, new float[4], 16000, 0, new NpcLineOptions { Stream = "x" }));
            Assert.Throws<ArgumentException>(() => new OfflineLine(_client, new float[4], 4000, 1, new NpcLineOptions { Stream = "x" }));
            Assert.Throws<ArgumentNullException>(() => new OfflineLine(_client, null, 16000, 1, new NpcLineOptions { Stream = "x" }));
            Assert.Throws<ArgumentException>(() => new OfflineLine(_client, new float[3], 16000, 2, new NpcLineOptions { Stream = "x" }));
        }

        [Test]
        public void ALineWhoseEndStreamReplyIsLostEndsWithItsStreamEnd()
        {
            // The runtime publishes the last frame and stream_end (reason ended), then replies to
            // end_stream; the reply is lost (a dropped connection): stream_end ends the line.
            var line = new NpcLine(_client, Tone(0.5, 16000, 1), 16000, 1, new NpcLineOptions { Stream = "npc-noreply", MarginS = 0.02, FrameTimeoutS = 1 });
            line.Start();
            Drive(line, () => line.State == NpcLineState.Done || line.State == NpcLineState.Failed, (r, m) =>
            {
                if (m is OpenStream) _rt.Reply(r.Key, FakeRuntime.StreamOpened("npc-noreply", ((OpenStream)m).Req.Value, 20.0, 100.0, Protocol.ModeLine));
                if (m is EndStream)
                {
                    for (ulong i = 0; i < 16; i++) _rt.Publish(Protocol.FrameTopic("npc-noreply"), FakeRuntime.Frame("npc-noreply", i, 0.1f, i == 15));
                    _rt.Publish(Protocol.StreamTopic("npc-noreply"), FakeRuntime.StreamEnd("npc-noreply", "ended", 16));
                }
            }, 5);
            Assert.AreEqual(NpcLineState.Done, line.State, line.Failure);
            Assert.AreEqual(16UL, line.Total.Value, "the frame count from stream_end");
        }

        [Test]
        public void ALineWhoseEndNeverComesFailsInsteadOfHanging()
        {
            // Frames came, then neither end_stream's reply nor stream_end (the connection dropped
            // with them): the line fails once the clip, its latency and FrameTimeoutS have passed.
            var line = new NpcLine(_client, Tone(0.3, 16000, 1), 16000, 1, new NpcLineOptions { Stream = "npc-silent", MarginS = 0.02, FrameTimeoutS = 0.5 });
            line.Start();
            double endAt = -1;
            Drive(line, () => line.State == NpcLineState.Failed || line.State == NpcLineState.Done, (r, m) =>
            {
                if (m is OpenStream) _rt.Reply(r.Key, FakeRuntime.StreamOpened("npc-silent", ((OpenStream)m).Req.Value, 20.0, 100.0, Protocol.ModeLine));
                if (m is Audio) for (ulong i = 0; i < 3; i++) _rt.Publish(Protocol.FrameTopic("npc-silent"), FakeRuntime.Frame("npc-silent", i));
                if (m is EndStream) endAt = _client.Now();
            }, 5);
            Assert.AreEqual(NpcLineState.Failed, line.State);
            Assert.IsTrue(line.Failure.Contains("no reply to end_stream and no stream_end"), line.Failure);
            Assert.AreEqual(0.3 + 0.12 + 0.5, line.FinishTimeoutS, 1e-9);
            Assert.Greater(endAt, 0);
            Assert.GreaterOrEqual(_client.Now() - endAt, line.FinishTimeoutS - 0.05);
        }

        [Test]
        public void ALineRefusedAsForbiddenAfterAReconnectFailsAsLost()
        {
            // A reconnect: the runtime keeps the stream for the old connection and refuses the
            // line's audio from the new one with forbidden.
            var line = new NpcLine(_client, Tone(0.5, 16000, 1), 16000, 1, new NpcLineOptions { Stream = "npc-moved" });
            line.Start();
            Drive(line, () => line.State == NpcLineState.Failed || line.State == NpcLineState.Done, (r, m) =>
            {
                if (m is OpenStream) _rt.Reply(r.Key, FakeRuntime.StreamOpened("npc-moved", ((OpenStream)m).Req.Value));
                if (m is Audio) _rt.Reply(r.Key, FakeRuntime.Error("forbidden", "audio", "npc-moved", null));
            });
            Assert.AreEqual("the connection to the runtime dropped; the line was lost", line.Failure);
        }

        [Test]
        public void ALineWhoseConnectionDropsFailsAsLost()
        {
            var line = new NpcLine(_client, Tone(2.0, 16000, 1), 16000, 1, new NpcLineOptions { Stream = "npc-dropped" });
            line.Start();
            Drive(line, () => line.State == NpcLineState.Failed || line.State == NpcLineState.Done, (r, m) =>
            {
                if (m is OpenStream) _rt.Reply(r.Key, FakeRuntime.StreamOpened("npc-dropped", ((OpenStream)m).Req.Value));
                if (m is Audio && _rt != null)
                {
                    _rt.Dispose(); // the connection drops mid-line
                    _rt = null;
                }
            });
            Assert.AreEqual("the connection to the runtime dropped; the line was lost", line.Failure);
        }

        [Test]
        public void ALineWhoseClientAnotherThreadStopsAndStartsWhileItPushesFailsInsteadOfThrowingFromUpdate()
        {
            // Stop and Start may come from any thread (a frame sink, a tool's thread) while the game's
            // thread runs Update. Between the line's read of its stream's status (not lost yet) and
            // its pushes, the stop loses the stream and SendAudio throws for it (unknown_stream):
            // Update must turn that into the line's failure, not throw it into the game's frame.
            // The stop is kicked off on the first clock reading of the Update that gets the line's
            // stream_opened, so it lands in or around the pushes (20 s of audio: four 1 MiB messages).
            int gameThread = Thread.CurrentThread.ManagedThreadId;
            var clock = Stopwatch.StartNew();
            var kick = new AutoResetEvent(false);
            int armed = 0;
            var client = new KsdiffClient(new ClientOptions
            {
                PubEndpoint = _rt.PubEndpoint, RouterEndpoint = _rt.RouterEndpoint, Transport = () => new LibZmqTransport(),
                Clock = () =>
                {
                    if (Thread.CurrentThread.ManagedThreadId == gameThread && Interlocked.Exchange(ref armed, 0) == 1) kick.Set();
                    return clock.Elapsed.TotalSeconds;
                },
            });
            var thrown = new List<string>();
            var failures = new List<string>();
            bool done = false;
            var stopper = new Thread(() =>
            {
                while (!Volatile.Read(ref done))
                {
                    if (!kick.WaitOne(50)) continue;
                    client.Stop();
                    client.Start();
                }
            }) { IsBackground = true };
            try
            {
                client.Start();
                stopper.Start();
                float[] clip = Tone(20.0, 48000, 1);
                // The stop mostly lands before the pushes (the line then fails as stopped, or lost),
                // in them about once in seven lines: sixty make missing them all unlikely.
                for (int i = 0; i < 60; i++)
                {
                    string id = "npc-race-" + i;
                    var line = new NpcLine(client, clip, 48000, 1, new NpcLineOptions { Stream = id });
                    line.Start();
                    var watch = Stopwatch.StartNew();
                    while (line.State != NpcLineState.Failed && line.State != NpcLineState.Done)
                    {
                        Assert.Less(watch.Elapsed.TotalSeconds, 10, "line stuck in " + line.State);
                        try
                        {
                            line.Update();
                        }
                        catch (Exception e)
                        {
                            thrown.Add(e.GetType().Name + ": " + e.Message);
                            line.Cancel(); // the next line
                            break;
                        }
                        KeyValuePair<byte[], byte[]>? r = _rt.TryReceive(0.005);
                        if (!r.HasValue) continue;
                        var open = new Decoder().Decode(r.Value.Value) as OpenStream;
                        if (open == null) continue; // audio, end_stream: this runtime answers nothing else
                        _rt.Reply(r.Value.Key, FakeRuntime.StreamOpened(id, open.Req.Value, null, 100, Protocol.ModeLine));
                        // The stop starts with the Update that sees the reply.
                        Assert.IsTrue(Wait.Until(() => client.Stream(id).Mode == Protocol.ModeLine, 10), "no stream_opened reached the client");
                        Volatile.Write(ref armed, 1);
                    }
                    if (line.Failure != null) failures.Add(line.Failure);
                }
            }
            finally
            {
                Volatile.Write(ref done, true);
                stopper.Join();
                client.Dispose();
            }
            Assert.AreEqual(0, thrown.Count, "Update threw: " + string.Join(" | ", thrown));
            Console.WriteLine("  lines failed by SendAudio's refusal: " + failures.Count(f => f.Contains("was lost when the client stopped")) +
                              " of " + failures.Count);
        }

        // Reads the client's requests until an end_stream for `stream` comes (true) or `timeoutS` passes.
        bool EndStreamComes(string stream, double timeoutS)
        {
            var watch = Stopwatch.StartNew();
            while (watch.Elapsed.TotalSeconds < timeoutS)
            {
                KeyValuePair<byte[], byte[]>? r = _rt.TryReceive(0.05);
                if (!r.HasValue) continue;
                var end = new Decoder().Decode(r.Value.Value) as EndStream;
                if (end != null && end.Stream == stream) return true;
            }
            return false;
        }

        [Test]
        public void ALineThatFailsOnceItsStreamIsOpenEndsThatStream()
        {
            // Its audio refused (bad_audio): the runtime would otherwise go on animating the
            // stream, holding one of its streams, until the audio ran out and its idle timeout passed.
            var bad = new NpcLine(_client, Tone(0.5, 16000, 1), 16000, 1, new NpcLineOptions { Stream = "npc-bad" });
            bad.Start();
            bool endedBeforeFailing = false;
            Drive(bad, () => bad.State == NpcLineState.Failed, (r, m) =>
            {
                if (m is OpenStream) _rt.Reply(r.Key, FakeRuntime.StreamOpened("npc-bad", ((OpenStream)m).Req.Value, 20.0, 100.0, Protocol.ModeLine));
                if (m is Audio) _rt.Reply(r.Key, FakeRuntime.Error("bad_audio", "audio", "npc-bad", null));
                if (m is EndStream) endedBeforeFailing = true; // the whole line is within max_ahead_s: ended at once
            });
            Assert.IsTrue(bad.Failure.Contains("bad_audio"), bad.Failure);
            Assert.IsTrue(endedBeforeFailing || EndStreamComes("npc-bad", 2), "the failed line's stream was ended");

            // Opened by a 1.1 runtime (pushed at the clip's pace, not yet ended), then no frame came.
            var mute = new NpcLine(_client, Tone(3.0, 16000, 1), 16000, 1,
                                   new NpcLineOptions { Stream = "npc-mute", MarginS = 0.02, FrameTimeoutS = 0.3 });
            mute.Start();
            bool ended = false;
            Drive(mute, () => mute.State == NpcLineState.Failed, (r, m) =>
            {
                if (m is OpenStream) _rt.Reply(r.Key, FakeRuntime.StreamOpened("npc-mute", ((OpenStream)m).Req.Value));
                if (m is EndStream) ended = true;
            });
            Assert.IsTrue(mute.Failure.Contains("no frame"), mute.Failure);
            Assert.IsFalse(ended, "failed before the clip was all pushed");
            Assert.IsTrue(EndStreamComes("npc-mute", 2), "the failed line's stream was ended");

            // An offline line whose audio is refused ends its stream too.
            var offline = new OfflineLine(_client, Tone(3.0, 16000, 1), 16000, 1, new NpcLineOptions { Stream = "bake-bad" });
            offline.Start();
            var watch = Stopwatch.StartNew();
            bool offlineEnded = false;
            while (offline.Update() != OfflineLineState.Failed)
            {
                Assert.Less(watch.Elapsed.TotalSeconds, 10, "stuck in " + offline.State);
                KeyValuePair<byte[], byte[]>? r = _rt.TryReceive(0.005);
                if (!r.HasValue) continue;
                Message m = new Decoder().Decode(r.Value.Value);
                if (m is OpenStream) _rt.Reply(r.Value.Key, FakeRuntime.StreamOpened("bake-bad", ((OpenStream)m).Req.Value, 1.0));
                if (m is Audio) _rt.Reply(r.Value.Key, FakeRuntime.Error("bad_audio", "audio", "bake-bad", null));
                if (m is EndStream) offlineEnded = true;
            }
            Assert.IsTrue(offline.Failure.Contains("bad_audio"), offline.Failure);
            Assert.IsFalse(offlineEnded, "3 s within 1 s of max_ahead_s: not all pushed before the refusal");
            Assert.IsTrue(EndStreamComes("bake-bad", 2), "the failed offline line's stream was ended");
        }

        [Test]
        public void AnOfflineLineForA10RuntimePushesEverythingAtOnceAndCollectsEveryFrame()
        {
            const int rate = 16000;
            float[] clip = Tone(0.4, rate, 1);
            var line = new OfflineLine(_client, clip, rate, 1, new NpcLineOptions { Stream = "bake-1", Transcript = "Hi." });
            line.Start();
            var audio = new List<Audio>();
            var watch = Stopwatch.StartNew();
            while (line.Update() != OfflineLineState.Done)
            {
                Assert.AreNotEqual(OfflineLineState.Failed, line.State, line.Failure);
                Assert.Less(watch.Elapsed.TotalSeconds, 10, "stuck in " + line.State);
                KeyValuePair<byte[], byte[]>? r = _rt.TryReceive(0.005);
                if (!r.HasValue) continue;
                Message m = new Decoder().Decode(r.Value.Value);
                if (m is OpenStream)
                {
                    Assert.AreEqual(Protocol.ModeLine, ((OpenStream)m).Mode, "animated as a line: whole windows, not a live stream");
                    _rt.Reply(r.Value.Key, FakeRuntime.StreamOpened("bake-1", ((OpenStream)m).Req.Value));
                }
                if (m is Audio) audio.Add((Audio)m);
                if (m is EndStream)
                {
                    for (ulong i = 0; i < 12; i++) _rt.Publish(Protocol.FrameTopic("bake-1"), FakeRuntime.Frame("bake-1", i, 0.1f, i == 11));
                    _rt.Reply(r.Value.Key, FakeRuntime.StreamEnded("bake-1", 12, ((EndStream)m).Req.Value));
                }
            }
            Assert.AreEqual(1, audio.Count, "0.4 s in one message, sent at once");
            Assert.AreEqual(12UL, line.Total.Value);
            Assert.AreEqual(12, line.Recorder.Count);
            Assert.Less(watch.Elapsed.TotalSeconds, 0.4, "no pacing: faster than the clip");
        }

        [Test]
        public void AnOfflineLineKeepsItsAudioWithinMaxAheadSOfRealTime()
        {
            // A 1.1 runtime refuses audio more than max_ahead_s ahead of real time (busy, nothing
            // taken). With max_ahead_s 1 s the line may be 0.5 s ahead (AheadMarginS kept back): it
            // goes in 0.5 s messages, the first at once, the rest as time passes.
            const int rate = 16000;
            float[] clip = Tone(1.6, rate, 1);
            var line = new OfflineLine(_client, clip, rate, 1, new NpcLineOptions { Stream = "bake-2" });
            line.Start();
            var aheadS = new List<double>(); // per message: its audio end minus the time since the first
            Stopwatch sinceFirst = null;
            var watch = Stopwatch.StartNew();
            while (line.Update() != OfflineLineState.Done)
            {
                Assert.AreNotEqual(OfflineLineState.Failed, line.State, line.Failure);
                Assert.Less(watch.Elapsed.TotalSeconds, 10, "stuck in " + line.State);
                KeyValuePair<byte[], byte[]>? r = _rt.TryReceive(0.005);
                if (!r.HasValue) continue;
                Message m = new Decoder().Decode(r.Value.Value);
                if (m is OpenStream) _rt.Reply(r.Value.Key, FakeRuntime.StreamOpened("bake-2", ((OpenStream)m).Req.Value, 1.0));
                if (m is Audio)
                {
                    var a = (Audio)m;
                    if (sinceFirst == null) sinceFirst = Stopwatch.StartNew();
                    aheadS.Add((double)(a.AtSample.Value + (ulong)a.Pcm.Length / 4) / rate - sinceFirst.Elapsed.TotalSeconds);
                }
                if (m is EndStream)
                {
                    for (ulong i = 0; i < 48; i++) _rt.Publish(Protocol.FrameTopic("bake-2"), FakeRuntime.Frame("bake-2", i, 0.1f, i == 47));
                    _rt.Reply(r.Value.Key, FakeRuntime.StreamEnded("bake-2", 48, ((EndStream)m).Req.Value));
                }
            }
            Assert.AreEqual(4, aheadS.Count, "0.5 + 0.5 + 0.5 + 0.1 s");
            double room = 1.0 - OfflineLine.AheadMarginS;
            for (int i = 0; i < aheadS.Count; i++)
                Assert.LessOrEqual(aheadS[i], room + 0.05, "message " + i + " too far ahead of real time");
            Assert.GreaterOrEqual(aheadS[0], room - 0.1, "the first 0.5 s went at once");
            Assert.GreaterOrEqual(watch.Elapsed.TotalSeconds, 1.6 - room - 0.1, "paced: the clip's end waited for real time");
            Assert.AreEqual(48, line.Recorder.Count);
        }

        [Test]
        public void AGameThatStartsTheAudioItselfIsNotAskedToStartItAgain()
        {
            // A cutscene plays the line's audio when it chooses and says so at once; the runtime is
            // slower than the latency it stated (the frames come after playback was due).
            var line = new NpcLine(_client, Tone(1.0, 16000, 1), 16000, 1, new NpcLineOptions { Stream = "npc-cutscene", MarginS = 0.02 });
            Assert.Throws<InvalidOperationException>(() => line.PlaybackStarted(0.0), "before Start()");
            line.Start();
            double t0 = _client.Now();
            line.PlaybackStarted(t0);
            bool published = false, ended = false, asked = false;
            var watch = Stopwatch.StartNew();
            while (line.Update() != NpcLineState.Done)
            {
                Assert.Less(watch.Elapsed.TotalSeconds, 10, "line stuck in " + line.State + " " + line.Failure);
                Assert.AreNotEqual(NpcLineState.Failed, line.State, line.Failure);
                asked |= line.ShouldStartPlayback;
                if (!published && line.FirstPushS >= 0 && _client.Now() > line.FirstPushS + line.PlaybackDelayS + 0.05)
                {
                    published = true;
                    for (ulong i = 0; i < 34; i++) _rt.Publish(Protocol.FrameTopic("npc-cutscene"), FakeRuntime.Frame("npc-cutscene", i, 0.5f, i == 33));
                }
                if (published && !ended && _client.Stream("npc-cutscene").Frames == 34)
                {
                    ended = true; // once the line has seen its frames
                    _rt.Publish(Protocol.StreamTopic("npc-cutscene"), FakeRuntime.StreamEnd("npc-cutscene", "ended", 34));
                }
                KeyValuePair<byte[], byte[]>? r = _rt.TryReceive(0.005);
                if (!r.HasValue) continue;
                var open = new Decoder().Decode(r.Value.Value) as OpenStream;
                if (open != null) _rt.Reply(r.Value.Key, FakeRuntime.StreamOpened("npc-cutscene", open.Req.Value, 20.0, 50.0, Protocol.ModeLine));
            }
            asked |= line.ShouldStartPlayback;
            Assert.IsFalse(asked, "asked to start the audio it had started");
            Assert.AreEqual(t0, _client.Buffer.Offset("npc-cutscene").Value, 0.0, "the timeline is the game's");
            Assert.AreEqual(34UL, line.Total.Value);
            // A line plays once: starting it again (another utterance) is an error, not a silent no-op.
            Assert.Throws<InvalidOperationException>(() => line.Start());
        }

        [Test]
        public void ALineWhoseClientIsDisposedFailsAtOnce()
        {
            // A long line (60 s: the rest goes as real time passes) playing when the game disposes
            // the client (a scene unloads): the line fails at once instead of playing on, mute,
            // while its audio piles up in the stopped client.
            // The same for a bake going at real time (a 1.1 runtime's max_ahead_s of 1 s).
            var line = new NpcLine(_client, Tone(60.0, 16000, 1), 16000, 1, new NpcLineOptions { Stream = "npc-long" });
            var bake = new OfflineLine(_client, Tone(5.0, 16000, 1), 16000, 1, new NpcLineOptions { Stream = "bake-long" });
            line.Start();
            bake.Start();
            Drive(line, () => line.State == NpcLineState.Playing && bake.Update() == OfflineLineState.Collecting, (r, m) =>
            {
                var open = m as OpenStream;
                if (open != null) _rt.Reply(r.Key, open.Stream == "npc-long"
                    ? FakeRuntime.StreamOpened("npc-long", open.Req.Value, 20.0, 100.0, Protocol.ModeLine)
                    : FakeRuntime.StreamOpened("bake-long", open.Req.Value, 1.0));
                var audio = m as Audio;
                if (audio != null && audio.Stream == "npc-long" && audio.AtSample.Value == 0)
                    _rt.Publish(Protocol.FrameTopic("npc-long"), FakeRuntime.Frame("npc-long", 0));
            });
            _client.Dispose();
            Assert.AreEqual(NpcLineState.Failed, line.Update());
            Assert.IsTrue(line.Failure.Contains("stopped"), line.Failure);
            Assert.AreEqual(OfflineLineState.Failed, bake.Update());
            Assert.IsTrue(bake.Failure.Contains("stopped"), bake.Failure);
        }

        [Test]
        public void AnIdTakenByALineStillGoingIsRefusedWithoutHarmingThatLine()
        {
            // The game gives every line of its guard the id "guard" and speaks again while the
            // first line plays: the runtime would refuse the id (busy), and opening it here would
            // wipe the first line's frames from its face. Start() says so instead.
            _rt.WaitSubscribed(Protocol.FrameTopicPrefix);
            var first = new NpcLine(_client, Tone(3.0, 16000, 1), 16000, 1, new NpcLineOptions { Stream = "guard" });
            first.Start();
            Action<KeyValuePair<byte[], byte[]>, Message> runtime = (r, m) =>
            {
                if (m is OpenStream) _rt.Reply(r.Key, FakeRuntime.StreamOpened("guard", ((OpenStream)m).Req.Value, 20.0, 100.0, Protocol.ModeLine));
                if (m is EndStream) for (ulong i = 0; i < 60; i++) _rt.Publish(Protocol.FrameTopic("guard"), FakeRuntime.Frame("guard", i, 0.5f)); // more to come
            };
            Drive(first, () => first.State == NpcLineState.Finishing && _client.Stream("guard").Frames == 60, runtime);
            var again = new NpcLine(_client, Tone(1.0, 16000, 1), 16000, 1, new NpcLineOptions { Stream = "guard" });
            Assert.Throws<InvalidOperationException>(() => again.Start());
            var bake = new OfflineLine(_client, Tone(1.0, 16000, 1), 16000, 1, new NpcLineOptions { Stream = "guard" });
            Assert.Throws<InvalidOperationException>(() => bake.Start());
            Assert.AreEqual(NpcLineState.Idle, again.State);
            Assert.AreEqual(60, _client.Buffer.Buffered("guard"), "the first line's frames are still there");
            Assert.AreEqual(60UL, _client.Stream("guard").Frames);
            Assert.IsNull(_rt.TryReceive(0.1), "nothing was sent for the refused lines");
            // Once the first line has ended, its id may be used again.
            for (ulong i = 60; i < 94; i++) _rt.Publish(Protocol.FrameTopic("guard"), FakeRuntime.Frame("guard", i, 0.5f, i == 93));
            _rt.Publish(Protocol.StreamTopic("guard"), FakeRuntime.StreamEnd("guard", "ended", 94));
            Drive(first, () => first.State == NpcLineState.Done, runtime);
            var later = new NpcLine(_client, Tone(1.0, 16000, 1), 16000, 1, new NpcLineOptions { Stream = "guard" });
            later.Start();
            Assert.AreEqual(NpcLineState.Opening, later.State);
        }

        [Test]
        public void ALineReceivedWholePlaysOutThroughARuntimeRestart()
        {
            // A line in mode line arrives whole long before it has played; the runtime then
            // restarts (a supervisor brings it back). The frames are in hand: the lips go on with
            // the audio. A line still coming is lost with the old runtime.
            _rt.WaitSubscribed(Protocol.FrameTopicPrefix);
            var whole = new NpcLine(_client, Tone(3.0, 16000, 1), 16000, 1, new NpcLineOptions { Stream = "npc-whole" });
            var partial = new NpcLine(_client, Tone(3.0, 16000, 1), 16000, 1, new NpcLineOptions { Stream = "npc-partial" });
            whole.Start();
            partial.Start();
            Action<KeyValuePair<byte[], byte[]>, Message> runtime = (r, m) =>
            {
                if (m is OpenStream)
                {
                    var open = (OpenStream)m;
                    _rt.Reply(r.Key, FakeRuntime.StreamOpened(open.Stream, open.Req.Value, 20.0, 100.0, Protocol.ModeLine));
                }
                var end = m as EndStream;
                if (end != null && end.Stream == "npc-whole")
                {
                    for (ulong i = 0; i < 94; i++) _rt.Publish(Protocol.FrameTopic("npc-whole"), FakeRuntime.Frame("npc-whole", i, 0.5f, i == 93));
                    _rt.Publish(Protocol.StreamTopic("npc-whole"), FakeRuntime.StreamEnd("npc-whole", "ended", 94));
                    _rt.Reply(r.Key, FakeRuntime.StreamEnded("npc-whole", 94, end.Req.Value));
                }
                if (end != null && end.Stream == "npc-partial") // the first frames only, so far
                    for (ulong i = 0; i < 10; i++) _rt.Publish(Protocol.FrameTopic("npc-partial"), FakeRuntime.Frame("npc-partial", i, 0.5f));
            };
            Drive(whole, () => whole.State == NpcLineState.Done, runtime);
            Drive(partial, () => partial.State == NpcLineState.Finishing, runtime);
            double t0 = _client.Buffer.Offset("npc-whole").Value;
            _rt.Publish(Protocol.HelloTopic, FakeRuntime.Hello("B")); // a new runtime process
            Assert.IsTrue(Wait.Until(() => _client.Status().Restarts == 1, 10));
            Assert.AreEqual(NpcLineState.Failed, partial.Update());
            Assert.IsTrue(partial.Failure.Contains("restarted"), partial.Failure);
            Assert.IsFalse(_client.Buffer.Contains("npc-partial"), "the unfinished line is forgotten");
            var pose = new Pose();
            double shown;
            Assert.AreEqual(PlayState.Playing, _client.Buffer.Sample("npc-whole", t0 + 1.5, pose, out shown), "the whole line plays on");
            Assert.AreEqual(1.5, shown, 1e-9);
            Assert.AreEqual(0.5f, pose.Blendshapes[17]);
            Assert.AreEqual(PlayState.Ended, _client.Buffer.Sample("npc-whole", t0 + 3.2, pose, out shown));
            Assert.AreEqual(NpcLineState.Done, whole.Update());
        }

        [Test]
        public void ACancelledFailedOrBakedLineLeavesNothingInTheJitterBuffer()
        {
            // A client whose clock the test moves on: the buffer's bounds are on the client's clock.
            _client.Dispose();
            _client = null;
            _rt.Dispose();
            _rt = new FakeRuntime();
            double skewS = 0;
            var watch = Stopwatch.StartNew();
            using (var client = new KsdiffClient(new ClientOptions
            {
                PubEndpoint = _rt.PubEndpoint, RouterEndpoint = _rt.RouterEndpoint, Transport = () => new LibZmqTransport(),
                Clock = () => watch.Elapsed.TotalSeconds + skewS,
            }))
            {
                client.Start();
                _rt.WaitSubscribed(Protocol.FrameTopicPrefix);
                _rt.WaitSubscribed(Protocol.HelloTopic);
                _rt.Publish(Protocol.HelloTopic, FakeRuntime.Hello("A"));
                Assert.IsTrue(Wait.Until(() => client.State == ClientState.Live, 10));
                Func<NpcLine, Func<bool>, Action<KeyValuePair<byte[], byte[]>, Message>, bool> drive = (line, until, serve) =>
                {
                    var w = Stopwatch.StartNew();
                    while (!until())
                    {
                        if (w.Elapsed.TotalSeconds > 10) return false;
                        line.Update();
                        if (line.ShouldStartPlayback) line.PlaybackStarted(client.Now());
                        KeyValuePair<byte[], byte[]>? r = _rt.TryReceive(0.005);
                        if (r.HasValue) serve(r.Value, new Decoder().Decode(r.Value.Value));
                    }
                    return true;
                };

                // The NPC is interrupted while it speaks: its face stops showing the line, whose
                // frames the runtime goes on sending (a line in mode line was pushed whole).
                var cancelled = new NpcLine(client, Tone(1.0, 16000, 1), 16000, 1, new NpcLineOptions { Stream = "npc-hush" });
                cancelled.Start();
                Assert.IsTrue(drive(cancelled, () => cancelled.State == NpcLineState.Finishing, (r, m) =>
                {
                    if (m is OpenStream) _rt.Reply(r.Key, FakeRuntime.StreamOpened("npc-hush", ((OpenStream)m).Req.Value, 20.0, 100.0, Protocol.ModeLine));
                    if (m is EndStream) for (ulong i = 0; i < 5; i++) _rt.Publish(Protocol.FrameTopic("npc-hush"), FakeRuntime.Frame("npc-hush", i));
                }), "the line did not start playing: " + cancelled.State + " " + cancelled.Failure);
                Assert.IsNotNull(client.Buffer.Offset("npc-hush"), "anchored");
                var sampled = new Pose();
                double shown;
                client.Buffer.Sample("npc-hush", client.Now(), sampled, out shown); // the face shows it a moment
                cancelled.Cancel();
                Assert.IsFalse(client.Buffer.Contains("npc-hush"), "the cancelled line's frames are let go at once");
                // The rest of its frames still come: they never show, on any clock (a face showing
                // the line's id, or the newest stream, on the client's clock, would move its lips
                // with no audio).
                for (ulong i = 5; i < 33; i++) _rt.Publish(Protocol.FrameTopic("npc-hush"), FakeRuntime.Frame("npc-hush", i, (i % 2) * 0.8f));
                Assert.IsTrue(Wait.Until(() => client.Stream("npc-hush").Frames == 33, 10));
                for (int k = 0; k < 30; k++)
                {
                    Assert.AreEqual(PlayState.Unknown, client.Buffer.Sample("npc-hush", client.Now(), sampled, out shown), "a late frame of the cancelled line shows");
                    System.Threading.Thread.Sleep(10);
                }
                Assert.IsFalse(client.Buffer.Contains("npc-hush"));
                Assert.AreEqual(0, client.Buffer.Buffered("npc-hush"), "its late frames are dropped");
                Assert.IsTrue(client.Buffer.Discarding("npc-hush"));
                _rt.Publish(Protocol.FrameTopic("npc-hush"), FakeRuntime.Frame("npc-hush", 33, 0.1f, true));
                _rt.Publish(Protocol.StreamTopic("npc-hush"), FakeRuntime.StreamEnd("npc-hush", "ended", 34));
                Assert.IsTrue(Wait.Until(() => client.Stream("npc-hush").EndFrames.HasValue, 10));
                Assert.AreEqual(PlayState.Unknown, client.Buffer.Sample("npc-hush", client.Now(), sampled, out shown));
                Assert.IsFalse(client.Buffer.Contains("npc-hush"));
                Assert.IsFalse(client.Buffer.Discarding("npc-hush"), "its end came: nothing of it is left");

                // A line refused before any frame came (the runtime is at capacity).
                var refused = new NpcLine(client, Tone(0.2, 16000, 1), 16000, 1, new NpcLineOptions { Stream = "npc-refused" });
                refused.Start();
                Assert.IsTrue(drive(refused, () => refused.State == NpcLineState.Failed, (r, m) =>
                {
                    if (m is OpenStream) _rt.Reply(r.Key, FakeRuntime.Error("busy", "open_stream", "npc-refused", ((OpenStream)m).Req));
                }));
                Assert.IsFalse(client.Buffer.Contains("npc-refused"), "a refused line leaves no stream awaiting its anchor");

                // A bake: its frames are the recorder's.
                var bake = new OfflineLine(client, Tone(0.4, 16000, 1), 16000, 1, new NpcLineOptions { Stream = "bake-kept" });
                bake.Start();
                var bakeWatch = Stopwatch.StartNew();
                while (bake.Update() != OfflineLineState.Done)
                {
                    Assert.AreNotEqual(OfflineLineState.Failed, bake.State, bake.Failure);
                    Assert.Less(bakeWatch.Elapsed.TotalSeconds, 10, "stuck in " + bake.State);
                    KeyValuePair<byte[], byte[]>? r = _rt.TryReceive(0.005);
                    if (!r.HasValue) continue;
                    Message m = new Decoder().Decode(r.Value.Value);
                    if (m is OpenStream) _rt.Reply(r.Value.Key, FakeRuntime.StreamOpened("bake-kept", ((OpenStream)m).Req.Value));
                    if (m is EndStream)
                    {
                        for (ulong i = 0; i < 12; i++) _rt.Publish(Protocol.FrameTopic("bake-kept"), FakeRuntime.Frame("bake-kept", i, 0.1f, i == 11));
                        _rt.Reply(r.Value.Key, FakeRuntime.StreamEnded("bake-kept", 12, ((EndStream)m).Req.Value));
                    }
                }
                Assert.AreEqual(12, bake.Recorder.Count);
                Assert.IsFalse(client.Buffer.Contains("bake-kept"), "a bake's frames are not kept twice");

                // A bake that fails mid-way (its frames too slow for its TimeoutS), whose frames
                // still come: they are not kept either, nor shown as a new stream.
                var failed = new OfflineLine(client, Tone(0.4, 16000, 1), 16000, 1, new NpcLineOptions { Stream = "bake-failed" }) { TimeoutS = 0.0 };
                failed.Start();
                bakeWatch = Stopwatch.StartNew();
                while (failed.Update() != OfflineLineState.Failed)
                {
                    Assert.Less(bakeWatch.Elapsed.TotalSeconds, 10, "stuck in " + failed.State);
                    KeyValuePair<byte[], byte[]>? r = _rt.TryReceive(0.005);
                    if (!r.HasValue) continue;
                    Message m = new Decoder().Decode(r.Value.Value);
                    if (m is OpenStream) _rt.Reply(r.Value.Key, FakeRuntime.StreamOpened("bake-failed", ((OpenStream)m).Req.Value));
                    if (m is EndStream)
                    {
                        for (ulong i = 0; i < 5; i++) _rt.Publish(Protocol.FrameTopic("bake-failed"), FakeRuntime.Frame("bake-failed", i, 0.1f));
                        // answered: the bake fails for its frames alone (unanswered, the end_stream's own timeout,
                        // as long, failed it first now and then, with another reason)
                        _rt.Reply(r.Value.Key, FakeRuntime.StreamEnded("bake-failed", 12, ((EndStream)m).Req.Value));
                    }
                }
                Assert.IsTrue(failed.Failure.Contains("did not all come"), failed.Failure);
                for (ulong i = 5; i < 12; i++) _rt.Publish(Protocol.FrameTopic("bake-failed"), FakeRuntime.Frame("bake-failed", i, 0.1f, i == 11));
                Assert.IsTrue(Wait.Until(() => client.Stream("bake-failed").Frames == 12, 10));
                Assert.IsFalse(client.Buffer.Contains("bake-failed"), "a failed bake's late frames are kept");
                Assert.AreEqual(PlayState.Unknown, client.Buffer.Sample("bake-failed", client.Now(), sampled, out shown));

                // A minute on, nothing of them is left: the refused line's discard lapses with the
                // rest (any push or sample says when).
                skewS += JitterBuffer.UnanchoredLineTimeoutS + 1;
                _rt.Publish(Protocol.FrameTopic("other"), FakeRuntime.Frame("other", 0));
                Assert.IsTrue(Wait.Until(() => client.Stream("other") != null, 10));
                Assert.AreEqual(new[] { "other" }, client.Buffer.Streams());
            }
        }

        [Test]
        public void StreamIdsForLinesAreValidAndDistinct()
        {
            var random = new Random(1);
            string a = NpcLine.StreamIdFor("Guard (Captain) #2 / éclair", 1, random);
            string b = NpcLine.StreamIdFor("Guard (Captain) #2 / éclair", 1, random);
            Assert.IsTrue(Protocol.IsValidStreamId(a), a);
            Assert.IsTrue(a.StartsWith("Guard-Captain-2-clair-1-"), a);
            Assert.AreNotEqual(a, b);
            Assert.IsTrue(Protocol.IsValidStreamId(NpcLine.StreamIdFor(new string('x', 500), ulong.MaxValue, random)));
            Assert.IsTrue(NpcLine.StreamIdFor("..", 3, random).StartsWith("npc-3-"));
        }
    }
}
