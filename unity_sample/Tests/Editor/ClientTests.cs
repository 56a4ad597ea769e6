// The client over the libzmq transport against a stand-in runtime on loopback: subscriptions,
// decoding, drops, bad input, replies matched by req, restart detection, reconnection, streams
// lost with a dropped connection (and staying lost while frames still come), requests that time out
// (withdrawn from the outbox unsent, a stream opened too late ended), end_streams and the audio of
// lines sent again after a busy (an in-memory transport holds sends back), open_stream and
// set_controls sent again once a later request's answer shows them unread (not merely slow ones),
// and failed at once, never sent again, when they left on a connection that dropped (a hello, and a
// set_controls of the runtime's own mic, go again), audio after end_stream refused, a stream lost by
// Stop failing here after Start (its audio and end_stream still queued dropped, an open of its id
// while stopped opening nothing; the runtime's mic still tuned), the outbox's bound, an absent
// runtime, a bad endpoint, CURVE, Start and Stop racing on several threads (the worker's own
// included). The same client logic runs over NetMQ in Unity.
using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.IO;
using System.Linq;
using System.Threading;
using NUnit.Framework;

namespace Ksdiff.Tests
{
    [TestFixture]
    [Category("LibZmq")]
    public class ClientTests : LibZmqFixture
    {
        KsdiffClient Client(FakeRuntime rt, string[] streams = null, CurveKeys curve = null, string pub = null, string router = null,
                            Action<ClientOptions> configure = null)
        {
            var options = new ClientOptions
            {
                PubEndpoint = pub ?? rt.PubEndpoint, RouterEndpoint = router ?? rt.RouterEndpoint, Streams = streams,
                Curve = curve, Transport = () => new LibZmqTransport(), HelloTimeoutS = 2.5,
            };
            if (configure != null) configure(options);
            var c = Keep(new KsdiffClient(options));
            c.Start();
            return c;
        }

        // Opens `stream` and answers it with stream_opened.
        static void Open(FakeRuntime rt, KsdiffClient c, string stream)
        {
            PendingRequest open = c.OpenStream(new OpenStream { Stream = stream });
            var r = rt.Receive();
            rt.Reply(r.Key, FakeRuntime.StreamOpened(stream, ((OpenStream)new Decoder().Decode(r.Value)).Req.Value));
            Assert.IsTrue(open.Wait(TimeSpan.FromSeconds(10)));
            Assert.IsTrue(open.Reply is StreamOpened, "" + open.Reply);
        }

        // Opens a stream with no id (the runtime picks one) and answers it with stream_opened for `picked`.
        static void OpenPicked(FakeRuntime rt, KsdiffClient c, string picked)
        {
            PendingRequest open = c.OpenStream(new OpenStream());
            var r = rt.Receive();
            rt.Reply(r.Key, FakeRuntime.StreamOpened(picked, ((OpenStream)new Decoder().Decode(r.Value)).Req.Value));
            Assert.IsTrue(open.Wait(TimeSpan.FromSeconds(10)));
            Assert.IsTrue(open.Reply is StreamOpened, "" + open.Reply);
        }

        // Free ports, nothing bound to them.
        static void FreeEndpoints(out string pub, out string router)
        {
            using (var probe = new FakeRuntime())
            {
                pub = probe.PubEndpoint;
                router = probe.RouterEndpoint;
            }
        }

        static List<ClientEvent> Events(KsdiffClient c)
        {
            var events = new List<ClientEvent>();
            c.DrainEvents(events);
            return events;
        }

        // Publishes hellos until the client has one (the first may precede the subscription).
        static void Handshake(FakeRuntime rt, KsdiffClient c, string instance)
        {
            rt.WaitSubscribed(Protocol.HelloTopic);
            rt.Publish(Protocol.HelloTopic, FakeRuntime.Hello(instance));
            Assert.IsTrue(Wait.Until(() => c.Status().Instance == instance, 10), "no hello reached the client");
        }

        [Test]
        public void FramesArriveDecodedWithDropsCountedAndBadInputRefused()
        {
            var rt = Keep(new FakeRuntime());
            KsdiffClient c = Client(rt);
            Assert.AreEqual(ClientState.Connecting, c.Status().State);
            Handshake(rt, c, "A");
            Assert.AreEqual(ClientState.Live, c.Status().State);
            Assert.AreEqual(ClientState.Live, c.State);
            rt.WaitSubscribed(Protocol.FrameTopic("npc1"));
            rt.Publish(Protocol.StreamTopic("npc1"), FakeRuntime.StreamStart("npc1"));
            foreach (ulong seq in new ulong[] { 0, 1, 2, 5, 6 }) rt.Publish(Protocol.FrameTopic("npc1"), FakeRuntime.Frame("npc1", seq, 0.1f * seq));
            // Refused: a frame on another stream's topic, a malformed payload, a 3-part message,
            // an unknown topic; ignored: a newer runtime's message type.
            rt.Publish(Protocol.FrameTopic("npc2"), FakeRuntime.Frame("npc1", 7));
            rt.Publish(Protocol.FrameTopic("npc1"), new byte[] { 0xc1 });
            rt.PublishRaw(System.Text.Encoding.ASCII.GetBytes(Protocol.FrameTopic("npc1")), new byte[] { 0x80 }, new byte[] { 0x80 });
            rt.Publish("ksd1/frame/", FakeRuntime.Frame("npc1", 8));
            rt.Publish(Protocol.StatsTopic, Payload.Of("mood").Build());
            rt.Publish(Protocol.FrameTopic("npc1"), FakeRuntime.Frame("npc1", 9, 0.9f, true));
            rt.Publish(Protocol.StreamTopic("npc1"), FakeRuntime.StreamEnd("npc1", "ended", 10));
            Assert.IsTrue(Wait.Until(() => c.Stream("npc1") != null && c.Stream("npc1").EndReason == "ended", 10), "no stream_end");
            ClientStatus st = c.Status();
            StreamStatus s = st.Streams["npc1"];
            Assert.AreEqual(6UL, s.Frames);
            Assert.AreEqual(2UL + 2UL, s.Dropped, "seq 3, 4 and 7, 8 never came");
            Assert.AreEqual(9UL, s.LastIndex);
            Assert.AreEqual("sdk", s.Source);
            Assert.AreEqual(100.0, s.LatencyP95Ms.Value, 1e-6);
            Assert.AreEqual(4UL, st.BadMessages, st.LastError);
            Assert.AreEqual(1UL, st.Ignored);
            var kinds = Events(c).Select(e => e.Kind).ToList();
            Assert.IsTrue(kinds.Contains(ClientEventKind.StreamStart) && kinds.Contains(ClientEventKind.StreamEnd));
            Assert.AreEqual(4, kinds.Count(k => k == ClientEventKind.BadMessage));
            // The frames went into the jitter buffer, and play out to the last one.
            var pose = new Pose();
            double t;
            double offset = c.Buffer.Offset("npc1").Value;
            Assert.AreEqual(PlayState.Playing, c.Buffer.Sample("npc1", offset + 5.5 / 30.0, pose, out t));
            Assert.AreEqual(0.55f, pose.Blendshapes[17], 1e-5);
            Assert.AreEqual(PlayState.Ended, c.Buffer.Sample("npc1", offset + 10 / 30.0, pose, out t));
        }

        [Test]
        public void AStreamFilterSubscribesOnlyItsTopicsNotAPrefixOfOthers()
        {
            var rt = Keep(new FakeRuntime());
            KsdiffClient c = Client(rt, new[] { "npc1" });
            Handshake(rt, c, "A");
            rt.WaitSubscribed(Protocol.FrameTopic("npc1"));
            rt.Publish(Protocol.FrameTopic("npc10"), FakeRuntime.Frame("npc10", 0));
            rt.Publish(Protocol.FrameTopic("npc1"), FakeRuntime.Frame("npc1", 0));
            Assert.IsTrue(Wait.Until(() => c.Status().Frames == 1, 10));
            rt.Publish(Protocol.FrameTopic("npc1"), FakeRuntime.Frame("npc1", 1));
            Assert.IsTrue(Wait.Until(() => c.Status().Frames == 2, 10));
            Assert.IsNull(c.Stream("npc10"), "npc10's frames are not subscribed");
        }

        [Test]
        public void AStreamIsNeverEndedBeforeItsLastFrameReachedTheSinksAndTheBuffer()
        {
            // The runtime publishes a stream's last frame, then its stream_end. A game that acts on
            // the end (a line Done, a face reset) must not get that frame afterwards: while a sink
            // is still handed the last frame, the stream is not Ended, no StreamEnd event is out,
            // and the jitter buffer already has the frame. (The sink blocks on the last frame until
            // the test has looked; every wait is bounded.)
            var rt = Keep(new FakeRuntime());
            KsdiffClient c = Client(rt);
            Handshake(rt, c, "A");
            var sink = new GateSink();
            c.AddFrameSink(sink);
            rt.WaitSubscribed(Protocol.FrameTopic("line9"));
            rt.Publish(Protocol.StreamTopic("line9"), FakeRuntime.StreamStart("line9"));
            for (ulong seq = 0; seq < 3; seq++) rt.Publish(Protocol.FrameTopic("line9"), FakeRuntime.Frame("line9", seq, 0.1f, seq == 2));
            rt.Publish(Protocol.StreamTopic("line9"), FakeRuntime.StreamEnd("line9", "ended", 3));
            try
            {
                Assert.IsTrue(sink.InLast.Wait(TimeSpan.FromSeconds(10)), "the last frame never reached the sink");
                StreamStatus s = c.Stream("line9");
                Assert.IsFalse(s.Ended, "Ended while a sink is still being handed the last frame");
                Assert.AreEqual(2UL, s.Frames, "the status counts a frame once the sinks have it");
                Assert.IsFalse(Events(c).Any(e => e.Kind == ClientEventKind.StreamEnd), "StreamEnd before the last frame was delivered");
                var pose = new Pose();
                double shown;
                c.Buffer.Sample("line9", 1e6, pose, out shown);
                Assert.AreEqual(2 / 30.0, shown, 1e-9, "the buffer has the last frame before the sinks");
            }
            finally
            {
                sink.Release.Set();
            }
            Assert.IsTrue(Wait.Until(() => c.Stream("line9").Ended, 10));
            Assert.AreEqual(3UL, c.Stream("line9").Frames);
            Assert.IsTrue(Wait.Until(() => Events(c).Any(e => e.Kind == ClientEventKind.StreamEnd), 10));
        }

        // Holds the worker thread inside OnFrame for a stream's last frame until Release is set.
        sealed class GateSink : IFrameSink
        {
            public readonly System.Threading.ManualResetEventSlim InLast = new System.Threading.ManualResetEventSlim();
            public readonly System.Threading.ManualResetEventSlim Release = new System.Threading.ManualResetEventSlim();

            public void OnFrame(Frame frame, double arrivalS)
            {
                if (!frame.Last) return;
                InLast.Set();
                Release.Wait(TimeSpan.FromSeconds(10));
            }
        }

        [Test]
        public void RepliesAreMatchedByReqNotByOrder()
        {
            var rt = Keep(new FakeRuntime());
            KsdiffClient c = Client(rt);
            Handshake(rt, c, "A");
            PendingRequest open = c.OpenStream(new OpenStream { Stream = "line1", SampleRate = 48000, Channels = 1, Format = "f32le" });
            var r1 = rt.Receive();
            var o = (OpenStream)new Decoder().Decode(r1.Value);
            Assert.AreEqual(open.Req, o.Req.Value);
            PendingRequest end = c.EndStream("line1");
            PendingRequest hello = c.RequestHello();
            var r2 = rt.Receive();
            var r3 = rt.Receive();
            ulong endReq = ((EndStream)new Decoder().Decode(r2.Value)).Req.Value;
            ulong helloReq = ((Hello)new Decoder().Decode(r3.Value)).Req.Value;
            // Protocol 1.1 answers end_stream when the stream has finished: after later requests.
            rt.Reply(r1.Key, FakeRuntime.StreamOpened("line1", o.Req.Value));
            rt.Reply(r3.Key, FakeRuntime.Hello("A", helloReq));
            Assert.IsTrue(hello.Wait(TimeSpan.FromSeconds(10)));
            Assert.IsTrue(open.Wait(TimeSpan.FromSeconds(10)));
            Assert.IsFalse(end.IsDone);
            rt.Reply(r2.Key, FakeRuntime.StreamEnded("line1", 42, endReq));
            Assert.IsTrue(end.Wait(TimeSpan.FromSeconds(10)));
            Assert.AreEqual("line1", ((StreamOpened)open.Reply).Stream);
            Assert.AreEqual(42UL, ((StreamEnded)end.Reply).Frames);
            Assert.AreEqual(helloReq, ((Hello)hello.Reply).Req.Value);
        }

        [Test]
        public void ErrorRepliesReachTheirRequestOrTheirStream()
        {
            var rt = Keep(new FakeRuntime());
            KsdiffClient c = Client(rt);
            Handshake(rt, c, "A");
            PendingRequest open = c.OpenStream(new OpenStream { Stream = "busy1" });
            var r = rt.Receive();
            rt.Reply(r.Key, FakeRuntime.Error("busy", "open_stream", "busy1", ((OpenStream)new Decoder().Decode(r.Value)).Req));
            Assert.IsTrue(open.Wait(TimeSpan.FromSeconds(10)));
            Assert.AreEqual(ErrorCode.Busy, ((ErrorReply)open.Reply).ErrorCode);
            // Audio has no req: its errors land on the stream. Protocol 1.1's forbidden is known;
            // a code from the future acts as internal.
            c.SendAudio("busy1", 0, 0, new byte[8], 0, 8);
            var a = rt.Receive();
            Assert.AreEqual(MessageType.Audio, new Decoder().Decode(a.Value).Type);
            rt.Reply(a.Key, FakeRuntime.Error("forbidden", "audio", "busy1", null));
            rt.Reply(a.Key, FakeRuntime.Error("overheated", "audio", "busy1", null));
            Assert.IsTrue(Wait.Until(() => c.Stream("busy1").Errors.Count == 2, 10));
            List<ErrorReply> errors = c.Stream("busy1").Errors;
            Assert.AreEqual(ErrorCode.Forbidden, errors[0].ErrorCode);
            Assert.AreEqual(ErrorCode.Internal, errors[1].ErrorCode);
            // busy1's open_stream was refused: it never was this client's, so its forbidden audio
            // is not a stream lost with a reconnect.
            Assert.IsFalse(c.Stream("busy1").OpenedHere);
            Assert.IsNull(c.Stream("busy1").EndReason);
        }

        [Test]
        public void AStreamThisClientOpenedIsLostWhenTheRuntimeRefusesItAsForbiddenOrUnknown()
        {
            // After a reconnect the runtime keeps the stream for the old connection (SPEC 1,
            // Ownership): its audio and end_stream are refused with forbidden, or unknown_stream
            // once its idle timeout ended it. Such a stream is lost, as with a restart.
            var rt = Keep(new FakeRuntime());
            KsdiffClient c = Client(rt);
            Handshake(rt, c, "A");
            Open(rt, c, "mine");
            Open(rt, c, "mine2");
            Events(c);
            c.SendAudio("mine", 0, 0, new byte[8], 0, 8);
            var a = rt.Receive();
            rt.Reply(a.Key, FakeRuntime.Error("forbidden", "audio", "mine", null));
            Assert.IsTrue(Wait.Until(() => c.Stream("mine").Ended, 10), "a forbidden stream of ours is not marked lost");
            Assert.AreEqual("reconnect", c.Stream("mine").EndReason);
            Assert.AreEqual(1, c.Stream("mine").Errors.Count, "the error is kept too");
            List<ClientEvent> events = Events(c);
            Assert.IsTrue(events.Any(e => e.Kind == ClientEventKind.StreamLost && e.Stream == "mine"), string.Join("\n", events));
            // end_stream refused with unknown_stream (a req, and no stream in the error): its request's stream.
            PendingRequest end = c.EndStream("mine2");
            var r = rt.Receive();
            rt.Reply(r.Key, FakeRuntime.Error("unknown_stream", "end_stream", null, ((EndStream)new Decoder().Decode(r.Value)).Req));
            Assert.IsTrue(end.Wait(TimeSpan.FromSeconds(10)));
            Assert.AreEqual(ErrorCode.UnknownStream, ((ErrorReply)end.Reply).ErrorCode);
            Assert.AreEqual("reconnect", c.Stream("mine2").EndReason);
            Assert.IsTrue(Events(c).Any(e => e.Kind == ClientEventKind.StreamLost && e.Stream == "mine2"));
            // Another client's stream, refused as forbidden, is not ours to lose.
            rt.WaitSubscribed(Protocol.StreamTopicPrefix);
            rt.Publish(Protocol.StreamTopic("theirs"), FakeRuntime.StreamStart("theirs"));
            Assert.IsTrue(Wait.Until(() => c.Stream("theirs") != null, 10));
            PendingRequest set = c.SetControls("theirs", new Controls().SetMood(Protocol.MoodHappy));
            var sr = rt.Receive();
            rt.Reply(sr.Key, FakeRuntime.Error("forbidden", "set_controls", "theirs", ((SetControls)new Decoder().Decode(sr.Value)).Req));
            Assert.IsTrue(set.Wait(TimeSpan.FromSeconds(10)));
            Assert.IsFalse(c.Stream("theirs").Ended);
            Assert.IsNull(c.Stream("theirs").EndReason);
        }

        [Test]
        public void ADroppedConnectionLosesTheStreamsThisClientOpened()
        {
            // The DEALER's monitor reports the drop: every stream this client opened is lost at
            // once (the next connection has another routing id), before any refusal could say so.
            var rt = Keep(new FakeRuntime());
            KsdiffClient c = Client(rt);
            Handshake(rt, c, "A");
            Open(rt, c, "mine");
            c.OpenStream(new OpenStream { Stream = "unanswered" }); // goes out, never answered
            rt.Receive();
            Events(c);
            rt.Dispose(); // the connection drops
            Assert.IsTrue(Wait.Until(() => c.Stream("mine").Ended, 10), "the dropped connection did not lose the stream");
            Assert.AreEqual("reconnect", c.Stream("mine").EndReason);
            ClientEvent lost = Events(c).FirstOrDefault(e => e.Kind == ClientEventKind.StreamLost);
            Assert.IsNotNull(lost);
            Assert.AreEqual("mine", lost.Stream);
            Assert.IsTrue(lost.Text.Contains("connection"), lost.Text);
            // An open_stream without its reply is not known to be held: not lost (its request fails,
            // never sent again: the runtime may have carried it out for the connection that dropped).
            Assert.IsFalse(c.Stream("unanswered").Ended);
        }

        [Test]
        public void ARequestWithoutAReplyFailsAfterItsTimeout()
        {
            var rt = Keep(new FakeRuntime());
            rt.AnswerHellos = false; // the hello's reply is the one lost
            KsdiffClient c = Client(rt, configure: o => o.RequestTimeoutS = 0.3);
            Handshake(rt, c, "A");
            var watch = Stopwatch.StartNew();
            PendingRequest hello = c.RequestHello();
            PendingRequest end = c.EndStream("line1", 1.0); // end_stream: its own timeout
            var h = rt.Receive();
            rt.Receive(); // received, never answered (as when the connection drops with the reply)
            Assert.IsTrue(hello.Wait(TimeSpan.FromSeconds(5)), "a request without a reply waits forever");
            Assert.GreaterOrEqual(watch.Elapsed.TotalSeconds, 0.3);
            Assert.IsNull(hello.Reply);
            Assert.IsTrue(hello.Failure.Contains("hello: no reply from the runtime at " + rt.RouterEndpoint), hello.Failure);
            Assert.IsFalse(end.IsDone, "end_stream has its own timeout");
            Assert.IsTrue(end.Wait(TimeSpan.FromSeconds(5)));
            Assert.GreaterOrEqual(watch.Elapsed.TotalSeconds, 1.0);
            Assert.IsTrue(end.Failure.Contains("end_stream: no reply"), end.Failure);
            // A reply after the deadline changes nothing: no request waits for it any more.
            Events(c);
            rt.Reply(h.Key, FakeRuntime.Hello("A", ((Hello)new Decoder().Decode(h.Value)).Req));
            Assert.IsTrue(Wait.Until(() => Events(c).Any(e => e.Kind == ClientEventKind.Hello), 10));
            Assert.AreEqual(0UL, c.Status().BadMessages);
            Assert.IsTrue(hello.Failure.Contains("no reply"));
        }

        [Test]
        public void TheOutboxKeepsRequestsAndDropsTheOldestAudioBeyondItsBound()
        {
            // No runtime: the DEALER queues only on a live connection (ZMQ_IMMEDIATE), so ZeroMQ
            // takes nothing and every message waits in the client's outbox, whose bound drops the
            // oldest audio, never a request. When the runtime comes, it gets the requests and
            // the newest audio, in order: nothing stale from ZeroMQ's own queue.
            string pub, router;
            FreeEndpoints(out pub, out router);
            const long bound = 20000;
            // (the hellos wait for their reply all along: one that fails in the outbox is withdrawn)
            KsdiffClient c = Client(null, null, null, pub, router, o => { o.OutboxMaxBytes = bound; o.RequestTimeoutS = 60; });
            PendingRequest first = c.RequestHello();
            const int sent = 50;
            var pcm = new byte[1000];
            for (ulong seq = 0; seq < sent; seq++) c.SendAudio("mic1", seq, null, pcm, 0, pcm.Length);
            PendingRequest last = c.RequestHello();
            // Every audio message has the same size (seq < 128), so do the hellos (req < 128).
            long audioBytes = Requests.Audio("mic1", 0, null, pcm, 0, pcm.Length).Length;
            long helloBytes = Requests.Hello(first.Req).Length;
            int kept = (int)((bound - 2 * helloBytes) / audioBytes);
            Assert.IsTrue(Wait.Until(() => c.Status().Unsent == (ulong)(sent - kept), 10),
                          "unsent " + c.Status().Unsent + ", expected " + (sent - kept));
            Assert.IsTrue(c.Status().LastError.Contains("unsent audio was dropped"), c.Status().LastError);

            var rt = Keep(new FakeRuntime(pub, router));
            var got = new List<Message>();
            while (got.Count == 0 || !(got[got.Count - 1] is Hello && ((Hello)got[got.Count - 1]).Req == last.Req))
                got.Add(new Decoder().Decode(rt.Receive().Value));
            Assert.AreEqual(kept + 2, got.Count);
            Assert.AreEqual(first.Req, ((Hello)got[0]).Req.Value);
            for (int i = 0; i < kept; i++) Assert.AreEqual((ulong)(sent - kept + i), ((Audio)got[1 + i]).Seq, "the newest audio, in order");
            Assert.IsNull(rt.TryReceive(0.2), "nothing more");
            Assert.AreEqual((ulong)(sent - kept), c.Status().Unsent);
        }

        [Test]
        public void BeyondItsBoundTheOutboxDropsALiveStreamsAudioBeforeALines()
        {
            // No runtime yet: a line's audio waits in the outbox with a mic's that keeps coming.
            // Past the bound the mic's oldest audio goes, not the line's (every frame of a line is
            // wanted, however late); the oldest audio went whoever's it was, the line's first.
            string pub, router;
            FreeEndpoints(out pub, out router);
            var pcm = new byte[1000];
            long lineBytes = Requests.Audio("npc", 0, 0, pcm, 0, pcm.Length).Length;
            long bound = 3 * lineBytes + 5000;
            KsdiffClient c = Client(null, null, null, pub, router, o => { o.OutboxMaxBytes = bound; o.RequestTimeoutS = 60; });
            PendingRequest open = c.OpenStream(new OpenStream { Stream = "npc", Mode = Protocol.ModeLine, SampleRate = 16000, Channels = 1, Format = "f32le" });
            for (ulong seq = 0; seq < 3; seq++) c.SendAudio("npc", seq, seq * 250, pcm, 0, pcm.Length);
            for (ulong seq = 0; seq < 50; seq++) c.SendAudio("mic1", seq, null, pcm, 0, pcm.Length);
            Assert.IsTrue(Wait.Until(() => c.Status().Unsent > 0, 10), "the bound dropped nothing");

            var rt = Keep(new FakeRuntime(pub, router));
            var lineAudio = new List<ulong>();
            var w = Stopwatch.StartNew();
            while (lineAudio.Count < 3 && w.Elapsed.TotalSeconds < 10)
            {
                KeyValuePair<byte[], byte[]>? r = rt.TryReceive(0.05);
                if (!r.HasValue) continue;
                Message m = new Decoder().Decode(r.Value.Value);
                if (m is OpenStream) rt.Reply(r.Value.Key, FakeRuntime.StreamOpened("npc", ((OpenStream)m).Req.Value, null, null, Protocol.ModeLine));
                if (m is Audio && ((Audio)m).Stream == "npc") lineAudio.Add(((Audio)m).Seq);
            }
            Assert.AreEqual("0 1 2", string.Join(" ", lineAudio), "the line's audio, all of it, in order");
            Assert.IsTrue(open.Wait(TimeSpan.FromSeconds(10)));
        }

        [Test]
        public void RequestsThatFailInTheOutboxAreNeverSentButEndStream()
        {
            // No runtime: every request waits in the outbox. Those that fail there (timed out, or
            // abandoned by their caller) are withdrawn: sent when the runtime comes, an open_stream
            // opened a stream nobody used (held until the runtime's idle timeout), a set_controls
            // changed what its caller was told had failed. end_stream still goes: it frees its stream.
            string pub, router;
            FreeEndpoints(out pub, out router);
            KsdiffClient c = Client(null, null, null, pub, router, o => o.RequestTimeoutS = 0.3);
            PendingRequest open = c.OpenStream(new OpenStream { Stream = "never" });
            PendingRequest set = c.SetControls("mic", new Controls().SetMood(Protocol.MoodHappy));
            PendingRequest hello = c.RequestHello();
            PendingRequest end = c.EndStream("gone", 0.3);
            PendingRequest given = c.OpenStream(new OpenStream { Stream = "given-up" });
            Assert.IsTrue(c.Abandon(given, "the line gave up"));
            Assert.IsFalse(c.Abandon(given, "again"), "abandoned once");
            Assert.AreEqual("the line gave up", given.Failure);
            foreach (PendingRequest p in new[] { open, set, hello, end })
            {
                Assert.IsTrue(p.Wait(TimeSpan.FromSeconds(5)), p.Type + " never failed");
                Assert.IsTrue(p.Failure.Contains("no reply"), p.Failure);
            }
            Assert.IsTrue(Wait.Until(() => c.Status().Withdrawn == 4, 10), "withdrawn " + c.Status().Withdrawn);
            Assert.IsFalse(c.Stream("never").OpenedHere, "an open_stream that failed opened nothing here");
            Assert.IsFalse(c.Stream("given-up").OpenedHere);

            var rt = Keep(new FakeRuntime(pub, router)); // the runtime comes
            PendingRequest marker = c.RequestHello();
            var got = new List<Message>();
            while (got.Count == 0 || !(got[got.Count - 1] is Hello && ((Hello)got[got.Count - 1]).Req == marker.Req))
                got.Add(new Decoder().Decode(rt.Receive().Value));
            Assert.AreEqual(2, got.Count, string.Join(", ", got.Select(m => m.Type)));
            Assert.AreEqual("gone", ((EndStream)got[0]).Stream);
            Assert.AreEqual(4UL, c.Status().Withdrawn);
            Assert.AreEqual(0UL, c.Status().Unsent);
        }

        [Test]
        public void AStreamOpenedAfterItsRequestFailedIsEndedQuietly()
        {
            // The open_stream left, and its stream_opened came after the request had failed (timed
            // out, or abandoned by its caller): nobody will use the stream, so the client ends it at
            // once; the replies to those end_streams change nothing.
            var rt = Keep(new FakeRuntime());
            KsdiffClient c = Client(rt, configure: o => o.RequestTimeoutS = 0.3);
            Handshake(rt, c, "A");
            PendingRequest late = c.OpenStream(new OpenStream { Stream = "late" });
            var r1 = rt.Receive();
            Assert.IsTrue(late.Wait(TimeSpan.FromSeconds(5)));
            Assert.IsTrue(late.Failure.Contains("no reply"), late.Failure);
            PendingRequest given = c.OpenStream(new OpenStream { Stream = "given-up" });
            var r2 = rt.Receive();
            Assert.IsTrue(c.Abandon(given, "the line gave up"));
            Events(c);
            rt.Reply(r1.Key, FakeRuntime.StreamOpened("late", ((OpenStream)new Decoder().Decode(r1.Value)).Req.Value));
            rt.Reply(r2.Key, FakeRuntime.StreamOpened("given-up", ((OpenStream)new Decoder().Decode(r2.Value)).Req.Value));
            var e1 = rt.Receive();
            var e2 = rt.Receive();
            var end1 = (EndStream)new Decoder().Decode(e1.Value);
            var end2 = (EndStream)new Decoder().Decode(e2.Value);
            Assert.AreEqual("late", end1.Stream);
            Assert.AreEqual("given-up", end2.Stream);
            rt.Reply(e1.Key, FakeRuntime.StreamEnded("late", 0, end1.Req.Value));
            rt.Reply(e2.Key, FakeRuntime.Error("unknown_stream", "end_stream", "given-up", end2.Req)); // gone already
            PendingRequest marker = c.RequestHello(); // after those replies: they were handled when it is answered
            var m = rt.Receive();
            rt.Reply(m.Key, FakeRuntime.Hello("A", ((Hello)new Decoder().Decode(m.Value)).Req));
            Assert.IsTrue(marker.Wait(TimeSpan.FromSeconds(10)));
            Assert.IsNull(rt.TryReceive(0.2), "nothing more");
            List<ClientEvent> events = Events(c);
            Assert.IsFalse(events.Any(e => e.Kind == ClientEventKind.Error || e.Kind == ClientEventKind.BadMessage), string.Join("\n", events));
            Assert.AreEqual(0UL, c.Status().BadMessages);
            foreach (string s in new[] { "late", "given-up" })
            {
                Assert.IsFalse(c.Stream(s).OpenedHere, s + " is not this client's");
                Assert.AreEqual(0, c.Stream(s).Errors.Count, s);
            }
            Assert.AreEqual(0UL, c.Status().Withdrawn, "both had left");
        }

        [Test]
        public void AnEndStreamSentAgainAfterBusyTakesTheFirstOnesAnswerAndDropsItsCopys()
        {
            // SPEC 4.6 "A client past its share": a busy with neither req nor stream, after the
            // end_stream left, says it may have been dropped unread; once Protocol.BusyWindowS has
            // passed without its answer, the client sends it again. Here the first one was read after
            // all: the copy is answered unknown_stream (the stream is ending), then the first one's
            // stream_ended comes. The request gets that; the stream is not lost, and has no error.
            var rt = Keep(new FakeRuntime());
            KsdiffClient c = Client(rt);
            Handshake(rt, c, "A");
            Open(rt, c, "npc1");
            var watch = Stopwatch.StartNew();
            PendingRequest end = c.EndStream("npc1");
            var first = rt.Receive();
            ulong req = ((EndStream)new Decoder().Decode(first.Value)).Req.Value;
            rt.Reply(first.Key, FakeRuntime.Error("busy", null, null, null));
            var copy = rt.Receive();
            Assert.GreaterOrEqual(watch.Elapsed.TotalSeconds, Protocol.BusyWindowS, "sent again only once the drops were over");
            Assert.AreEqual(req, ((EndStream)new Decoder().Decode(copy.Value)).Req.Value);
            Assert.IsFalse(end.IsDone);
            rt.Reply(copy.Key, FakeRuntime.Error("unknown_stream", "end_stream", "npc1", req));
            rt.Reply(first.Key, FakeRuntime.StreamEnded("npc1", 30, req));
            Assert.IsTrue(end.Wait(TimeSpan.FromSeconds(10)));
            Assert.IsTrue(end.Reply is StreamEnded, "" + end.Reply);
            Assert.IsNull(rt.TryReceive(0.3), "sent twice, not more");
            Assert.AreEqual(1UL, c.Status().Resent);
            Assert.AreEqual(0, c.Stream("npc1").Errors.Count);
            Assert.AreNotEqual("reconnect", c.Stream("npc1").EndReason, "not lost");
            List<ClientEvent> errors = Events(c).Where(e => e.Kind == ClientEventKind.Error).ToList();
            Assert.AreEqual(1, errors.Count, string.Join("\n", errors)); // the busy
        }

        [Test]
        public void AfterBusyAnEndStreamStillInTheOutboxIsNotSentAgainOnlyOneThatHadLeft()
        {
            // SPEC 4.6 "A client past its share": a busy with neither req nor stream says the runtime
            // dropped this client's requests unread for up to Protocol.BusyWindowS. An end_stream that
            // had not left by the end of that window was not among them: it goes once, with no copy
            // queued behind it (as the Python SDK). One that had left, still unanswered, goes again.
            // An in-memory transport holds the sends back (ZeroMQ's queue full, or no connection).
            var transport = new ScriptedTransport { Full = true };
            KsdiffClient c = Keep(new KsdiffClient(new ClientOptions { Transport = () => transport }));
            c.Start();
            PendingRequest end = c.EndStream("npc1");
            transport.Reply(FakeRuntime.Error("busy", null, null, null));
            Assert.IsTrue(Wait.Until(() => Events(c).Any(e => e.Kind == ClientEventKind.Error), 10), "the busy was not read");
            System.Threading.Thread.Sleep((int)(1000 * (Protocol.BusyWindowS + 0.3))); // the drops are over; the end_stream is still held back
            transport.Full = false;
            Assert.IsTrue(Wait.Until(() => transport.SentMessages().Count > 0, 10), "the end_stream never left");
            System.Threading.Thread.Sleep(200);
            Assert.AreEqual(1, transport.SentMessages().Count(m => m is EndStream), "nothing of it was dropped: one is enough");
            Assert.AreEqual(0UL, c.Status().Resent);
            // It left: a busy now may have dropped it, so once these drops are over it goes again.
            transport.Reply(FakeRuntime.Error("busy", null, null, null));
            Assert.IsTrue(Wait.Until(() => transport.SentMessages().Count(m => m is EndStream) == 2, 10), "not sent again");
            Assert.AreEqual(1UL, c.Status().Resent);
            Assert.AreEqual(end.Req, ((EndStream)transport.SentMessages().Last()).Req.Value);
            Assert.IsFalse(end.IsDone);
        }

        [Test]
        public void AfterBusyTheAudioOfLinesGoesAgainInOrderAheadOfTheirNewerAudioAndEndStream()
        {
            // SPEC 4.6 "A client past its share": a busy with neither req nor stream says the runtime
            // dropped this client's requests unread, audio included, from the first one after the
            // last request it answered, until the drops are over (at most Protocol.BusyWindowS). NPC
            // lines pushed whole at once lose their audio so. Meanwhile the client holds what it
            // would send (but a live stream's audio: it wants the present); once they are over, the
            // audio of lines (mode line) it may have dropped goes again, in its order (each message
            // keeps its at_sample: the runtime takes only what it lacks), then each line's newer
            // messages, one at a time: a line's next message leaves once the runtime has answered a
            // request (a hello probe) sent after the one before. A live stream's is not sent again.
            var transport = new ScriptedTransport();
            KsdiffClient c = Keep(new KsdiffClient(new ClientOptions { Transport = () => transport }));
            c.Start();
            var opens = new[]
            {
                c.OpenStream(new OpenStream { Stream = "line1", Mode = Protocol.ModeLine }),
                c.OpenStream(new OpenStream { Stream = "line2", Mode = Protocol.ModeLine }),
                c.OpenStream(new OpenStream { Stream = "live1", Mode = Protocol.ModeLive }),
            };
            Assert.IsTrue(Wait.Until(() => transport.SentMessages().Count == 3, 10), "the open_streams never left");
            foreach (OpenStream o in transport.SentMessages().Cast<OpenStream>())
                transport.Reply(FakeRuntime.StreamOpened(o.Stream, o.Req.Value, 20, 300, o.Mode));
            foreach (PendingRequest open in opens)
            {
                Assert.IsTrue(open.Wait(TimeSpan.FromSeconds(10)));
                Assert.IsTrue(open.Reply is StreamOpened, "" + open.Reply);
            }
            var pcm = new byte[4000]; // 1000 float32 samples, mono
            c.SendAudio("line1", 0, 0, pcm, 0, pcm.Length);
            c.SendAudio("live1", 0, 0, pcm, 0, pcm.Length);
            c.SendAudio("line1", 1, 1000, pcm, 0, pcm.Length); // waits: line1's audio before it is not known read
            c.SendAudio("line2", 0, 0, pcm, 0, pcm.Length);
            // Each line's first message, the live audio, and the hello probe after them.
            Assert.IsTrue(Wait.Until(() => transport.SentMessages().Count == 7, 10), "the audio and the probe never left");
            Assert.AreEqual("audio line1 0 @0, audio live1 0 @0, audio line2 0 @0, Hello",
                            string.Join(", ", transport.SentMessages().Skip(3).Select(Describe)));
            var watch = Stopwatch.StartNew(); // the drops end Protocol.BusyWindowS after the busy is read, later than this
            transport.Reply(FakeRuntime.Error("busy", null, null, null)); // all of them (the probe too) dropped unread
            Assert.IsTrue(Wait.Until(() => Events(c).Any(e => e.Kind == ClientEventKind.Error), 10), "the busy was not read");
            c.SendAudio("line2", 1, 1000, pcm, 0, pcm.Length); // newer audio: held until the drops are over
            c.SendAudio("live1", 1, 1000, pcm, 0, pcm.Length); // a live stream's: it goes
            PendingRequest end = c.EndStream("line1");
            var answered = new HashSet<ulong>();
            Assert.IsTrue(Wait.Until(() => AnswerHellos(transport, answered, 7) && NotHellos(transport, 7).Count == 6, 10),
                          "not all left after the drops: " + string.Join(", ", NotHellos(transport, 7).Select(Describe)));
            Assert.GreaterOrEqual(watch.Elapsed.TotalSeconds, Protocol.BusyWindowS, "a line's message left while the drops lasted");
            Assert.AreEqual(string.Join(", ", new[]
            {
                "audio live1 1 @1000",                      // a live stream's audio goes while the drops last
                "audio line1 0 @0", "audio line2 0 @0",     // sent again once they are over, in their order
                "audio line1 1 @1000", "audio line2 1 @1000", // then the lines' newer audio
                "end_stream line1 " + end.Req,              // and line1's end after all its audio
            }), string.Join(", ", NotHellos(transport, 7).Select(Describe)));
            Assert.AreEqual(2UL, c.Status().Resent, "2 audio messages");
            Assert.IsFalse(end.IsDone);
        }

        [Test]
        public void AfterBusyALinesAudioNeverGoesToAStreamOpenedAgainWithItsId()
        {
            // A line ended (its end_stream answered), and its id was opened again for a new line
            // before the drops of a busy were over: the old line's audio, matched by id, went again
            // to the new one (frames of the old line's tail in the new line). Only the new one's goes.
            var transport = new ScriptedTransport();
            KsdiffClient c = Keep(new KsdiffClient(new ClientOptions { Transport = () => transport }));
            c.Start();
            var answered = new HashSet<ulong>();
            PendingRequest open = c.OpenStream(new OpenStream { Stream = "npc", Mode = Protocol.ModeLine });
            Assert.IsTrue(Wait.Until(() => transport.SentMessages().Count == 1, 10), "the open_stream never left");
            transport.Reply(FakeRuntime.StreamOpened("npc", open.Req, 20, 300, Protocol.ModeLine));
            Assert.IsTrue(open.Wait(TimeSpan.FromSeconds(10)) && open.Reply is StreamOpened, "" + open.Reply);
            var pcm = new byte[4000];
            c.SendAudio("npc", 0, 0, pcm, 0, pcm.Length);
            PendingRequest end = c.EndStream("npc");
            Assert.IsTrue(Wait.Until(() => AnswerHellos(transport, answered, 0) && NotHellos(transport, 0).Count == 3, 10),
                          "the audio and end_stream never left");
            transport.Reply(FakeRuntime.StreamEnded("npc", 2, end.Req));
            Assert.IsTrue(end.Wait(TimeSpan.FromSeconds(10)), "the end_stream was not answered");
            PendingRequest again = c.OpenStream(new OpenStream { Stream = "npc", Mode = Protocol.ModeLine });
            Assert.IsTrue(Wait.Until(() => AnswerHellos(transport, answered, 0) && NotHellos(transport, 0).Count == 4, 10),
                          "the second open_stream never left");
            transport.Reply(FakeRuntime.StreamOpened("npc", again.Req, 20, 300, Protocol.ModeLine));
            Assert.IsTrue(again.Wait(TimeSpan.FromSeconds(10)) && again.Reply is StreamOpened, "" + again.Reply);
            c.SendAudio("npc", 0, 0, pcm, 0, 400); // the new line's own audio
            // It left, and the probe after it: both dropped unread.
            Assert.IsTrue(Wait.Until(() => transport.SentMessages().Count > 0 && transport.SentMessages().Last() is Hello &&
                                           NotHellos(transport, 0).Count == 5, 10), "the new audio never left");
            int before = transport.SentMessages().Count;
            transport.Reply(FakeRuntime.Error("busy", null, null, null));
            Assert.IsTrue(Wait.Until(() => AnswerHellos(transport, answered, before) && c.Status().Resent > 0 &&
                                           NotHellos(transport, 0).Count == 6, 10), "nothing went again after the drops");
            // Anything else that would go again goes in the same pass of the client's loop, which ends
            // with the probe after the copy.
            Assert.IsTrue(Wait.Until(() => transport.SentMessages().Skip(before).SkipWhile(m => !(m is Audio)).Any(m => m is Hello), 10),
                          "no probe after the copy");
            List<Message> after = NotHellos(transport, 0).Skip(5).ToList();
            Assert.AreEqual("audio npc 0 @0", string.Join(", ", after.Select(Describe)));
            Assert.AreEqual(100, ((Audio)after[0]).Pcm.Length / 4, "the new line's 100 samples, not the old 1000");
            Assert.AreEqual(1UL, c.Status().Resent);
        }

        [Test]
        public void AudioOfALineSentLongBeforeABusyAndDroppedInItsWindowIsSentAgain()
        {
            // The runtime read nothing of this client for longer than a busy window (the audio waited
            // in ZeroMQ's and TCP's queues), then read the line's audio, past its share, and dropped
            // it. The client sent again only what had left less than Protocol.BusyWindowS before the
            // busy: this was lost, and the line ended on nothing. What may have been dropped is
            // everything sent after the last request the runtime answered (it reads a connection's
            // messages in order), however long ago (SPEC 4.6, "A client past its share").
            var rt = Keep(new FakeRuntime());
            rt.AnswerHellos = false; // the test answers them, or drops them unread
            KsdiffClient c = Client(rt);
            Handshake(rt, c, "A");
            OpenLine(rt, c, "late");
            var pcm = new byte[4000];
            var watch = Stopwatch.StartNew();
            c.SendAudio("late", 0, 0, pcm, 0, pcm.Length);
            // The runtime reads nothing for longer than a window (the time passing is what is tested).
            Assert.IsTrue(Wait.Until(() => watch.Elapsed.TotalSeconds > 1.5 * Protocol.BusyWindowS, 10));
            var audio = rt.Receive();
            Assert.AreEqual("audio late 0 @0", Describe(new Decoder().Decode(audio.Value)));
            DropWhatCame(rt); // the hello probes after it: dropped unread too
            rt.Reply(audio.Key, FakeRuntime.Error("busy", null, null, null));
            Assert.AreEqual("audio late 0 @0", Describe(NextAnsweringHellos(rt)), "the dropped audio was not sent again");
            Assert.AreEqual(1UL, c.Status().Resent);
        }

        [Test]
        public void ALinesAudioSentWhileTheDropsLastGoesAfterTheCopiesOfWhatWasDropped()
        {
            // A line pushed more audio, and ended, while the drops a busy told of lasted: that went
            // at once, reached the runtime before the copy of the audio it had dropped, and the
            // runtime filled the gap with silence (the copy then filled nothing) or ended the stream
            // first. The client now holds a line's messages until the drops are over, and the copies
            // go first.
            var rt = Keep(new FakeRuntime());
            rt.AnswerHellos = false; // the test answers them, or drops them unread
            KsdiffClient c = Client(rt);
            Handshake(rt, c, "A");
            OpenLine(rt, c, "queued");
            var pcm = new byte[4000];
            c.SendAudio("queued", 0, 0, pcm, 0, pcm.Length);
            var audio = rt.Receive(); // dropped unread
            Assert.AreEqual("audio queued 0 @0", Describe(new Decoder().Decode(audio.Value)));
            DropWhatCame(rt);
            rt.Reply(audio.Key, FakeRuntime.Error("busy", null, null, null));
            Assert.IsTrue(Wait.Until(() => Events(c).Any(e => e.Kind == ClientEventKind.Error), 10), "the busy was not read");
            c.SendAudio("queued", 1, 1000, pcm, 0, pcm.Length); // while the drops last
            PendingRequest end = c.EndStream("queued");
            var after = new List<string>();
            for (int i = 0; i < 3; i++) after.Add(Describe(NextAnsweringHellos(rt)));
            Assert.AreEqual("audio queued 0 @0, audio queued 1 @1000, end_stream queued " + end.Req, string.Join(", ", after));
            Assert.AreEqual(1UL, c.Status().Resent);
        }

        [Test]
        public void ALinesNextMessageWaitsUntilTheRuntimeHasReadTheOneBefore()
        {
            // A line's audio was dropped unread, and the busy saying so was still on its way when the
            // line pushed more and ended: both left at once, were read once the drops had ended, and
            // the stream ended on a gap of silence before the copy came. A line's next message now
            // leaves only once the runtime has answered a request sent after the one before (a hello
            // probe follows a line's messages for that), so the copy goes first.
            var rt = Keep(new FakeRuntime());
            rt.AnswerHellos = false; // the test answers them, or drops them unread
            KsdiffClient c = Client(rt);
            Handshake(rt, c, "A");
            OpenLine(rt, c, "inflight");
            var pcm = new byte[4000];
            c.SendAudio("inflight", 0, 0, pcm, 0, pcm.Length);
            var audio = rt.Receive(); // dropped unread; the busy is not sent yet
            Assert.AreEqual("audio inflight 0 @0", Describe(new Decoder().Decode(audio.Value)));
            c.SendAudio("inflight", 1, 1000, pcm, 0, pcm.Length);
            PendingRequest end = c.EndStream("inflight");
            for (KeyValuePair<byte[], byte[]>? m = rt.TryReceive(0.3); m.HasValue; m = rt.TryReceive(0.3))
            {
                // The hello probes after the audio, dropped unread too; nothing of the line.
                Assert.AreEqual("Hello", Describe(new Decoder().Decode(m.Value.Value)), "a line's message left before the one before was read");
            }
            rt.Reply(audio.Key, FakeRuntime.Error("busy", null, null, null));
            var after = new List<string>();
            for (int i = 0; i < 3; i++) after.Add(Describe(NextAnsweringHellos(rt)));
            Assert.AreEqual("audio inflight 0 @0, audio inflight 1 @1000, end_stream inflight " + end.Req, string.Join(", ", after));
            Assert.AreEqual(1UL, c.Status().Resent);
        }

        [Test]
        public void AHelloRequestLeavesOnlyAfterTheLinesMessagesQueuedBeforeIt()
        {
            // A hello's reply says the runtime read everything queued before it: NpcLine sends one
            // after a line's audio and ends the line once it is answered with no busy for that audio.
            // A line's messages now wait their turn (each once the one before is known read): the
            // hello went ahead of them, and the line ended before its audio was refused.
            var rt = Keep(new FakeRuntime()); // answers every hello, the client's probes too
            KsdiffClient c = Client(rt);
            Handshake(rt, c, "A");
            OpenLine(rt, c, "barrier");
            var pcm = new byte[4000];
            c.SendAudio("barrier", 0, 0, pcm, 0, pcm.Length);
            c.SendAudio("barrier", 1, 1000, pcm, 0, pcm.Length);
            PendingRequest marker = c.RequestHello();
            var seen = new List<string>();
            while (true)
            {
                Message m = new Decoder().Decode(rt.Receive().Value);
                var hello = m as Hello;
                if (hello != null && hello.Req == marker.Req) break;
                if (hello == null) seen.Add(Describe(m));
            }
            Assert.AreEqual("audio barrier 0 @0, audio barrier 1 @1000", string.Join(", ", seen), "the hello overtook the line's audio");
            Assert.IsTrue(marker.Wait(TimeSpan.FromSeconds(10)) && marker.Reply is Hello, "" + marker.Reply);
        }

        [Test]
        public void AnOpenStreamDroppedUnreadAfterABusyGoesAgainOnceALaterRequestIsAnsweredAndTheStreamOpens()
        {
            // SPEC 4.6 "A client past its share": the runtime read this open_stream past the client's
            // share and dropped it unread, with a busy; it then waited for its request timeout (an NPC's
            // line that never started). The runtime answers open_stream as it reads it, and reads a
            // connection's messages in order: once the drops are over a hello probe follows, and its
            // answer shows the open_stream was never read, so it goes again.
            var rt = Keep(new FakeRuntime());
            rt.AnswerHellos = false; // the test answers them, or drops them unread
            KsdiffClient c = Client(rt, configure: o => o.RequestTimeoutS = 30); // no timeout ends the wait here
            Handshake(rt, c, "A");
            PendingRequest open = c.OpenStream(new OpenStream { Stream = "npc", Mode = Protocol.ModeLine });
            var first = rt.Receive();
            Assert.AreEqual(open.Req, ((OpenStream)new Decoder().Decode(first.Value)).Req);
            rt.Reply(first.Key, FakeRuntime.Error("busy", null, null, null)); // it was dropped unread
            var again = NextAnsweringHellos(rt) as OpenStream; // the probes after it are read, and answered
            Assert.IsNotNull(again, "the open_stream was not sent again");
            Assert.AreEqual(open.Req, again.Req);
            Assert.AreEqual("npc", again.Stream);
            rt.Reply(first.Key, FakeRuntime.StreamOpened("npc", open.Req, 20, 300, Protocol.ModeLine));
            Assert.IsTrue(open.Wait(TimeSpan.FromSeconds(10)), "the open_stream was not answered");
            Assert.IsTrue(open.Reply is StreamOpened, "" + open.Reply);
            Assert.IsTrue(c.Stream("npc").OpenedHere);
            Assert.AreEqual(1UL, c.Status().Resent);
            Assert.AreEqual(0UL, c.Status().Withdrawn);
        }

        [Test]
        public void ASetControlsDroppedUnreadAfterABusyGoesAgainOnceALaterRequestIsAnswered()
        {
            // The same for a live stream's set_controls: a mood change the game asked for is not lost,
            // nor does its call wait for its request timeout.
            var rt = Keep(new FakeRuntime());
            rt.AnswerHellos = false; // the test answers them, or drops them unread
            KsdiffClient c = Client(rt, configure: o => o.RequestTimeoutS = 30);
            Handshake(rt, c, "A");
            Open(rt, c, "mic");
            PendingRequest set = c.SetControls("mic", new Controls().SetMood(Protocol.MoodHappy));
            var first = rt.Receive();
            Assert.AreEqual(set.Req, ((SetControls)new Decoder().Decode(first.Value)).Req);
            rt.Reply(first.Key, FakeRuntime.Error("busy", null, null, null)); // it was dropped unread
            var again = NextAnsweringHellos(rt) as SetControls;
            Assert.IsNotNull(again, "the set_controls was not sent again");
            Assert.AreEqual(set.Req, again.Req);
            Assert.AreEqual(Protocol.MoodHappy, again.Controls.Mood);
            rt.Reply(first.Key, ControlsSet("mic", Protocol.MoodHappy, set.Req));
            Assert.IsTrue(set.Wait(TimeSpan.FromSeconds(10)), "the set_controls was not answered");
            var done = set.Reply as ControlsSet;
            Assert.IsNotNull(done, "" + set.Reply);
            Assert.AreEqual(Protocol.MoodHappy, done.Controls.Mood);
            Assert.AreEqual(1UL, c.Status().Resent);
        }

        [Test]
        public void ASetControlsSentAgainTakesTheRefusalOfItsCopyAsItsAnswer()
        {
            // Sent again because the runtime never read it, a request has no other copy on its way:
            // the copy's refusal is its answer. (An end_stream's copy refused unknown_stream is not:
            // its first copy, read after all, is ending the stream.) The refusal was dropped as a
            // copy's, and the call waited for its request timeout.
            var rt = Keep(new FakeRuntime());
            rt.AnswerHellos = false; // the test answers them, or drops them unread
            KsdiffClient c = Client(rt, configure: o => o.RequestTimeoutS = 30);
            Handshake(rt, c, "A");
            Open(rt, c, "npc1");
            PendingRequest set = c.SetControls("npc1", new Controls().SetMood(Protocol.MoodHappy));
            var first = rt.Receive();
            rt.Reply(first.Key, FakeRuntime.Error("busy", null, null, null)); // it was dropped unread
            Assert.IsTrue(NextAnsweringHellos(rt) is SetControls, "the set_controls was not sent again");
            // The runtime ended the stream meanwhile (its idle timeout): the copy is refused.
            rt.Reply(first.Key, FakeRuntime.Error("unknown_stream", "set_controls", "npc1", set.Req));
            Assert.IsTrue(set.Wait(TimeSpan.FromSeconds(10)), "the refusal of the copy did not reach the call");
            var refused = set.Reply as ErrorReply;
            Assert.IsNotNull(refused, "" + set.Reply);
            Assert.AreEqual(ErrorCode.UnknownStream, refused.ErrorCode);
            Assert.AreEqual(1UL, c.Status().Resent);
        }

        [Test]
        public void AnOpenStreamWhoseAnswerIsMerelySlowPastABusysWindowIsSentOnlyOnce()
        {
            // The open_stream left before the busy came, and the runtime read it only once its drops
            // were over (it waited in the queues on the way), and carried it out. Unanswered when the
            // window ended is no proof that it was dropped: a copy would open a second stream (no id:
            // the runtime picks one). Only the answer to a request sent after it is, and the runtime
            // answers in order, the open_stream first.
            var rt = Keep(new FakeRuntime());
            rt.AnswerHellos = false; // the test answers them, in the runtime's order
            KsdiffClient c = Client(rt, configure: o => o.RequestTimeoutS = 30);
            Handshake(rt, c, "A");
            Open(rt, c, "mic");
            var pcm = new byte[4000];
            c.SendAudio("mic", 0, 0, pcm, 0, pcm.Length);
            var audio = rt.Receive(); // read past the client's share: dropped unread, its busy not sent yet
            PendingRequest open = c.OpenStream(new OpenStream()); // an id of the runtime's choice
            var slow = rt.Receive(); // on its way: the runtime reads it once the drops are over
            Assert.AreEqual(open.Req, ((OpenStream)new Decoder().Decode(slow.Value)).Req);
            rt.Reply(audio.Key, FakeRuntime.Error("busy", null, null, null));
            Assert.IsTrue(Wait.Until(() => Events(c).Any(e => e.Kind == ClientEventKind.Error), 10), "the busy was not read");
            // The client's window ends Protocol.BusyWindowS after it read the busy: the time passing,
            // with the open_stream unanswered, is what is tested.
            var watch = Stopwatch.StartNew();
            Assert.IsTrue(Wait.Until(() => watch.Elapsed.TotalSeconds > 1.5 * Protocol.BusyWindowS, 10));
            rt.Reply(slow.Key, FakeRuntime.StreamOpened("sdk-1", open.Req));
            Assert.IsTrue(open.Wait(TimeSpan.FromSeconds(10)), "the open_stream was not answered");
            Assert.IsTrue(open.Reply is StreamOpened, "" + open.Reply);
            // Everything the client sent until a hello after it was answered: its probes, answered
            // now (after the open_stream, as the runtime reads them), and no copy.
            PendingRequest marker = c.RequestHello();
            int copies = 0;
            while (true)
            {
                var r = rt.Receive();
                Message m = new Decoder().Decode(r.Value);
                if (m is OpenStream) copies++;
                var hello = m as Hello;
                if (hello == null) continue;
                rt.Reply(r.Key, FakeRuntime.Hello("A", hello.Req));
                if (hello.Req == marker.Req) break;
            }
            Assert.IsTrue(marker.Wait(TimeSpan.FromSeconds(10)) && marker.Reply is Hello, "" + marker.Reply);
            Assert.AreEqual(0, copies, "the open_stream was sent twice: the runtime would open a second stream");
            Assert.AreEqual(0UL, c.Status().Resent);
            Assert.IsTrue(c.Stream("sdk-1").OpenedHere);
        }

        [Test]
        public void AnOpenStreamTheRuntimeReadOnAConnectionThatThenDroppedFailsAtOnceAndIsNeverSentAgain()
        {
            // SPEC 4.6: the runtime read the open_stream and opened "npc" for this connection, and the
            // connection dropped with its answer. Sent again on the next connection, it would be
            // refused busy "already open" (the id is held for the old connection until the runtime's
            // idle timeout ends it) for an open that had worked; without an id it would open a second
            // stream. So it fails at once, saying why, and a stream opened with another id works.
            DroppedWithARequestOnItsWay drop = DropTheConnectionWithARequestOnItsWay(
                c => c.OpenStream(new OpenStream { Stream = "npc", Mode = Protocol.ModeLine }), theRuntimeReadIt: true);
            AssertFailedAsLostOnTheWay(drop.Request);
            Assert.IsTrue(drop.Request.Failure.Contains("a runtime still running ends stream 'npc' after its idle timeout"), drop.Request.Failure);
            Assert.IsFalse(drop.Client.Stream("npc").OpenedHere, "opened here, though no stream_opened came");
            AssertAnotherStreamOpensAndTheRequestIsNeverSentAgain(drop);
        }

        [Test]
        public void AnOpenStreamTheRuntimeNeverReadBeforeItsConnectionDroppedFailsAtOnceAndIsNeverSentAgain()
        {
            // The runtime dropped the open_stream unread (past its share), and then the connection
            // dropped. The client cannot tell this from an open_stream read whose answer was lost
            // with the connection: both end unanswered when the connection drops, so it fails the
            // same way rather than risk a second stream.
            DroppedWithARequestOnItsWay drop = DropTheConnectionWithARequestOnItsWay(
                c => c.OpenStream(new OpenStream()), theRuntimeReadIt: false); // an id of the runtime's choice
            AssertFailedAsLostOnTheWay(drop.Request);
            Assert.IsTrue(drop.Request.Failure.Contains("a runtime still running ends the stream after its idle timeout"), drop.Request.Failure);
            AssertAnotherStreamOpensAndTheRequestIsNeverSentAgain(drop);
        }

        [Test]
        public void ASetControlsTheRuntimeReadOnAConnectionThatThenDroppedFailsAtOnceAndIsNeverSentAgain()
        {
            // The runtime carried the set_controls out for the connection that opened "mic", and the
            // connection dropped with its answer (and with the stream: the next connection has
            // another routing id). A copy on the next connection would be refused: the call learns
            // now why it failed, not a refusal of a copy, nor a timeout.
            DroppedWithARequestOnItsWay drop = DropTheConnectionWithARequestOnItsWay(
                c => c.SetControls("mic", new Controls().SetMood(Protocol.MoodHappy)), theRuntimeReadIt: true);
            AssertFailedAsLostOnTheWay(drop.Request);
            Assert.AreEqual("reconnect", drop.Client.Stream("mic").EndReason, "the stream was not lost with the connection");
            AssertNeverSentAgain(drop);
        }

        [Test]
        public void ASetControlsTheRuntimeNeverReadBeforeItsConnectionDroppedFailsAtOnceAndIsNeverSentAgain()
        {
            DroppedWithARequestOnItsWay drop = DropTheConnectionWithARequestOnItsWay(
                c => c.SetControls("mic", new Controls().SetMood(Protocol.MoodHappy)), theRuntimeReadIt: false);
            AssertFailedAsLostOnTheWay(drop.Request);
            AssertNeverSentAgain(drop);
        }

        [Test]
        public void AHelloRequestThatLeftOnAConnectionThatDroppedGoesAgainOnTheNextOne()
        {
            // A hello carried out twice does no harm: lost with the connection, it goes again once a
            // probe's answer on the next connection shows it was not answered there, and its call
            // gets the runtime's hello rather than a timeout.
            var first = new FakeRuntime();
            first.AnswerHellos = false; // it dies with the connection, unanswered
            string pub = first.PubEndpoint, router = first.RouterEndpoint;
            KsdiffClient c = Client(first, configure: o => o.RequestTimeoutS = 30); // no timeout ends the wait here
            Handshake(first, c, "A");
            PendingRequest hello = c.RequestHello();
            Assert.AreEqual(hello.Req, ((Hello)new Decoder().Decode(first.Receive().Value)).Req);
            first.Dispose(); // the connection drops
            var second = Keep(new FakeRuntime(pub, router)); // the network is back: it answers every hello it reads
            var received = new List<ulong?>(); // the reqs of what it reads
            Assert.IsTrue(Wait.Until(() =>
            {
                KeyValuePair<byte[], byte[]>? r = second.TryReceive(0.05);
                if (r.HasValue) received.Add(ReqOf(new Decoder().Decode(r.Value.Value)));
                return hello.IsDone;
            }, 10), "the hello was not sent again");
            Assert.IsTrue(received.Contains(hello.Req), "answered without a copy of it");
            Assert.IsTrue(hello.Reply is Hello, "" + hello.Reply + " " + hello.Failure);
            Assert.AreEqual(1UL, c.Status().Resent);
        }

        [Test]
        public void ASetControlsOfTheRuntimesOwnMicThatLeftOnAConnectionThatDroppedGoesAgainOnTheNextAndItsCallerGetsTheCopysAnswer()
        {
            // A VTuber's control panel sets the mood of the runtime's own "mic" stream (not opened by
            // this client). The runtime carried it out, and the connection dropped with its answer.
            // The mic lost nothing with the connection and a second copy sets the same controls, so,
            // as in the Python SDK, it goes again on the next connection (SPEC 4.6) and the call gets
            // the copy's answer instead of a failure for nothing.
            DroppedWithTheMicsSetControlsOnItsWay drop = DropTheConnectionWithTheMicsSetControlsOnItsWay();
            drop.Next.Reply(drop.Copy.Key, ControlsSet("mic", Protocol.MoodHappy, drop.Request.Req));
            Assert.IsTrue(drop.Request.Wait(TimeSpan.FromSeconds(10)), "the copy's answer did not reach the call");
            var done = drop.Request.Reply as ControlsSet;
            Assert.IsNotNull(done, "" + drop.Request.Reply + " " + drop.Request.Failure);
            Assert.AreEqual(Protocol.MoodHappy, done.Controls.Mood);
            Assert.AreEqual(1UL, drop.Client.Status().Resent);
            Assert.IsFalse(drop.Client.Stream("mic").Ended, "the runtime's mic is not this client's to lose");
        }

        [Test]
        public void ASetControlsOfTheRuntimesOwnMicSentAgainAfterADropTakesTheRefusalOfItsCopyAsItsAnswer()
        {
            // The runtime came back without its mic (it restarted with no microphone; its first hello
            // is not read yet): the copy is refused unknown_stream. That refusal is the call's answer:
            // it is not taken for the answer to an "other copy" and dropped (the call would then
            // wait for its request timeout), nor does it make the runtime's mic a stream this client lost.
            DroppedWithTheMicsSetControlsOnItsWay drop = DropTheConnectionWithTheMicsSetControlsOnItsWay();
            drop.Next.Reply(drop.Copy.Key, FakeRuntime.Error("unknown_stream", "set_controls", "mic", drop.Request.Req));
            Assert.IsTrue(drop.Request.Wait(TimeSpan.FromSeconds(10)), "the refusal of the copy did not reach the call");
            var refused = drop.Request.Reply as ErrorReply;
            Assert.IsNotNull(refused, "" + drop.Request.Reply + " " + drop.Request.Failure);
            Assert.AreEqual(ErrorCode.UnknownStream, refused.ErrorCode);
            Assert.IsNull(drop.Client.Stream("mic").EndReason, "the runtime's mic was marked lost here");
        }

        // The runtime's own mic's set_controls that left on a connection that dropped, the client,
        // the runtime that answers on the next connection, and the copy it received there.
        sealed class DroppedWithTheMicsSetControlsOnItsWay
        {
            public KsdiffClient Client;
            public PendingRequest Request;
            public FakeRuntime Next;
            public KeyValuePair<byte[], byte[]> Copy;
        }

        // A client that knows the runtime's "mic" (its stream_start: source "mic", not opened here)
        // sets its mood; the runtime takes the request off its socket and the connection drops, the
        // runtime still running (it goes and comes back on the same ports). Returns once the copy of
        // the set_controls has reached the next runtime (which answers the client's probes), before
        // it is answered; fails at once if the call failed instead.
        DroppedWithTheMicsSetControlsOnItsWay DropTheConnectionWithTheMicsSetControlsOnItsWay()
        {
            var first = new FakeRuntime();
            string pub = first.PubEndpoint, router = first.RouterEndpoint;
            KsdiffClient c = Client(first, configure: o => o.RequestTimeoutS = 30); // an outcome within seconds is no timeout
            Handshake(first, c, "A");
            first.WaitSubscribed(Protocol.StreamTopicPrefix);
            first.Publish(Protocol.StreamTopic("mic"), FakeRuntime.StreamStart("mic", "mic"));
            Assert.IsTrue(Wait.Until(() => c.Stream("mic") != null, 10), "the mic's stream_start did not come");
            Assert.IsFalse(c.Stream("mic").OpenedHere);
            PendingRequest set = c.SetControls("mic", new Controls().SetMood(Protocol.MoodHappy));
            Assert.AreEqual(set.Req, ReqOf(new Decoder().Decode(first.Receive().Value)), "not the set_controls");
            first.Dispose(); // the connection drops, the set_controls' answer with it
            var next = Keep(new FakeRuntime(pub, router)); // it answers every hello, the client's probes too
            KeyValuePair<byte[], byte[]>? copy = null;
            Assert.IsTrue(Wait.Until(() =>
            {
                KeyValuePair<byte[], byte[]>? r = next.TryReceive(0.05);
                if (r.HasValue && new Decoder().Decode(r.Value.Value) is SetControls) copy = r;
                return copy.HasValue || set.IsDone;
            }, 10), "the set_controls was neither sent again nor failed");
            Assert.IsTrue(copy.HasValue, "not sent again: " + set.Failure + " " + set.Reply);
            var sent = (SetControls)new Decoder().Decode(copy.Value.Value);
            Assert.AreEqual(set.Req, sent.Req);
            Assert.AreEqual(Protocol.MoodHappy, sent.Controls.Mood);
            Assert.IsFalse(set.IsDone, "the call had its outcome before its copy was answered: " + set.Failure + " " + set.Reply);
            return new DroppedWithTheMicsSetControlsOnItsWay { Client = c, Request = set, Next = next, Copy = copy.Value };
        }

        // A request that left on a connection that then dropped, the client, and the runtime that
        // answers on the next connection.
        sealed class DroppedWithARequestOnItsWay
        {
            public KsdiffClient Client;
            public PendingRequest Request;
            public FakeRuntime Next;
        }

        // `send` queues a request (on "mic", opened first, when it is a set_controls); the runtime
        // takes it off its socket and the connection drops, the runtime still running (it goes and
        // comes back on the same ports as the same instance, as when the network drops). When
        // `theRuntimeReadIt`, it had read it and carried it out, and its answer goes to the routing
        // id of the connection that dropped: the ROUTER drops it, as the runtime's does. Otherwise it
        // dropped the request unread. The request's outcome is waited for before the next runtime is
        // there: a failure then came without any reply.
        DroppedWithARequestOnItsWay DropTheConnectionWithARequestOnItsWay(Func<KsdiffClient, PendingRequest> send, bool theRuntimeReadIt)
        {
            var first = new FakeRuntime();
            string pub = first.PubEndpoint, router = first.RouterEndpoint;
            KsdiffClient c = Client(first, configure: o => o.RequestTimeoutS = 30); // a failure within seconds is no timeout
            Handshake(first, c, "A");
            Open(first, c, "mic");
            PendingRequest request = send(c);
            var received = first.Receive();
            Assert.AreEqual(request.Req, ReqOf(new Decoder().Decode(received.Value)), "not the request");
            first.Dispose(); // the connection drops
            Assert.IsTrue(request.Wait(TimeSpan.FromSeconds(5)), request.Type + " did not fail when its connection dropped");
            var next = Keep(new FakeRuntime(pub, router)); // it answers every hello, the client's probes too
            if (theRuntimeReadIt)
            {
                byte[] answer = request.Type == "open_stream"
                    ? FakeRuntime.StreamOpened(request.Stream ?? "sdk-1", request.Req)
                    : ControlsSet("mic", Protocol.MoodHappy, request.Req);
                next.Reply(received.Key, answer); // to the connection that dropped: lost
            }
            return new DroppedWithARequestOnItsWay { Client = c, Request = request, Next = next };
        }

        static void AssertFailedAsLostOnTheWay(PendingRequest request)
        {
            Assert.IsNull(request.Reply, "" + request.Reply);
            string why = request.Failure;
            Assert.IsTrue(why.StartsWith(request.Type + ": the connection to the runtime at ", StringComparison.Ordinal), why);
            Assert.IsTrue(why.Contains("dropped while it was on its way; the runtime may have carried it out for that connection, " +
                                       "so it is not sent again"), why);
            Assert.IsTrue(why.Contains("open a new stream, with another id"), why);
        }

        // A stream opened with another id once the connection dropped (waiting in the outbox until the
        // next connection is there) opens on the next connection, and the failed open_stream is never
        // sent again.
        void AssertAnotherStreamOpensAndTheRequestIsNeverSentAgain(DroppedWithARequestOnItsWay drop)
        {
            PendingRequest again = drop.Client.OpenStream(new OpenStream { Stream = "npc-2" });
            KeyValuePair<byte[], byte[]> r;
            Message m;
            do
            {
                r = drop.Next.Receive();
                m = new Decoder().Decode(r.Value);
            } while (m is Hello); // the client's probes, answered
            Assert.AreEqual(again.Req, ReqOf(m), "not the new open_stream: " + Describe(m) + " " + ReqOf(m));
            drop.Next.Reply(r.Key, FakeRuntime.StreamOpened("npc-2", again.Req));
            Assert.IsTrue(again.Wait(TimeSpan.FromSeconds(10)) && again.Reply is StreamOpened, "" + again.Reply + " " + again.Failure);
            AssertNeverSentAgain(drop);
        }

        // What the next runtime receives, until the answers to two hello requests came (a request the
        // client took for unread would go again after the first answer, ahead of the second hello),
        // holds no copy of the request.
        void AssertNeverSentAgain(DroppedWithARequestOnItsWay drop)
        {
            var received = new List<string>();
            int copies = 0;
            for (int n = 0; n < 2; n++)
            {
                PendingRequest marker = drop.Client.RequestHello();
                while (true)
                {
                    Message m = new Decoder().Decode(drop.Next.Receive().Value);
                    if (m is Hello && ((Hello)m).Req == marker.Req) break;
                    if (m is Hello) continue; // the client's probes, answered
                    received.Add(Describe(m) + " " + ReqOf(m));
                    if (ReqOf(m) == drop.Request.Req) copies++;
                }
                Assert.IsTrue(marker.Wait(TimeSpan.FromSeconds(10)) && marker.Reply is Hello, "" + marker.Reply);
            }
            Assert.AreEqual(0, copies, drop.Request.Type + " was sent again on the next connection: " + string.Join(", ", received));
            Assert.AreEqual(0UL, drop.Client.Status().Resent);
        }

        static ulong? ReqOf(Message m)
        {
            if (m is OpenStream) return ((OpenStream)m).Req;
            if (m is SetControls) return ((SetControls)m).Req;
            if (m is Hello) return ((Hello)m).Req;
            return null;
        }

        [Test]
        public void AHelloRequestDroppedUnreadAfterABusyGoesAgainBehindTheCopyOfTheLinesAudioBeforeIt()
        {
            // A hello's reply says the runtime read everything queued before it (NpcLine ends a line
            // after such a barrier). Dropped unread with the line's audio that left just before it,
            // it goes again once a probe's answer shows it unread, but behind the copy of that audio:
            // ahead of it, its answer would say the runtime read audio it had not.
            var rt = Keep(new FakeRuntime());
            rt.AnswerHellos = false; // the test answers them, or drops them unread
            KsdiffClient c = Client(rt, configure: o => o.RequestTimeoutS = 30);
            Handshake(rt, c, "A");
            OpenLine(rt, c, "npc");
            var pcm = new byte[4000];
            c.SendAudio("npc", 0, 0, pcm, 0, pcm.Length);
            c.SendAudio("npc", 1, 1000, pcm, 0, pcm.Length); // leaves once the one before is known read
            PendingRequest marker = c.RequestHello();        // leaves after both
            Assert.AreEqual("audio npc 0 @0", Describe(new Decoder().Decode(rt.Receive().Value)));
            var probe = rt.Receive();
            var probeHello = new Decoder().Decode(probe.Value) as Hello;
            Assert.IsTrue(probeHello != null && probeHello.Req != marker.Req, "no probe after the line's audio");
            rt.Reply(probe.Key, FakeRuntime.Hello("A", probeHello.Req)); // the first audio was read
            var audio = rt.Receive();
            Assert.AreEqual("audio npc 1 @1000", Describe(new Decoder().Decode(audio.Value)));
            var sent = new Decoder().Decode(rt.Receive().Value) as Hello;
            Assert.IsTrue(sent != null && sent.Req == marker.Req, "the hello request did not follow the line's audio");
            DropWhatCame(rt); // the probe after them: dropped unread too
            rt.Reply(audio.Key, FakeRuntime.Error("busy", null, null, null)); // the audio and the hello were dropped unread
            var after = new List<string>();
            while (after.Count < 2)
            {
                var r = rt.Receive();
                Message m = new Decoder().Decode(r.Value);
                var hello = m as Hello;
                if (hello != null) rt.Reply(r.Key, FakeRuntime.Hello("A", hello.Req)); // read, in order
                if (hello == null) after.Add(Describe(m));
                else if (hello.Req == marker.Req) after.Add("hello " + hello.Req);
            }
            Assert.AreEqual("audio npc 1 @1000, hello " + marker.Req, string.Join(", ", after));
            Assert.IsTrue(marker.Wait(TimeSpan.FromSeconds(10)) && marker.Reply is Hello, "" + marker.Reply);
            Assert.AreEqual(2UL, c.Status().Resent, "the audio and the hello");
        }

        // A controls_set reply that says `mood` is in force.
        static byte[] ControlsSet(string stream, string mood, ulong req)
        {
            return Payload.Of("controls_set").Set("stream", Payload.Str(stream))
                .Set("controls", w => { w.MapHeader(1); w.Str("mood"); w.Str(mood); }).Set("req", Payload.UInt(req)).Build();
        }

        // Opens `stream` in mode line and answers it with stream_opened.
        static void OpenLine(FakeRuntime rt, KsdiffClient c, string stream)
        {
            PendingRequest open = c.OpenStream(new OpenStream { Stream = stream, Mode = Protocol.ModeLine });
            var r = rt.Receive();
            rt.Reply(r.Key, FakeRuntime.StreamOpened(stream, ((OpenStream)new Decoder().Decode(r.Value)).Req.Value, 20, 300, Protocol.ModeLine));
            Assert.IsTrue(open.Wait(TimeSpan.FromSeconds(10)));
            Assert.IsTrue(open.Reply is StreamOpened, "" + open.Reply);
        }

        // Reads, and drops unread as a runtime past its share does, the requests that came already.
        static void DropWhatCame(FakeRuntime rt)
        {
            while (rt.TryReceive(0.05).HasValue) { }
        }

        // The next request that is not a hello, answering each hello (the client's probes: a line's
        // next message leaves once a request sent after its previous one is answered) as a runtime does.
        static Message NextAnsweringHellos(FakeRuntime rt)
        {
            while (true)
            {
                var r = rt.Receive();
                Message m = new Decoder().Decode(r.Value);
                var hello = m as Hello;
                if (hello == null) return m;
                rt.Reply(r.Key, FakeRuntime.Hello("A", hello.Req));
            }
        }

        // Answers each hello request sent from the `from`th message on, once, as a runtime does (the
        // client's probes); true, to be used inside a Wait.Until condition.
        static bool AnswerHellos(ScriptedTransport transport, HashSet<ulong> answered, int from)
        {
            foreach (Message m in transport.SentMessages().Skip(from))
            {
                var hello = m as Hello;
                if (hello != null && hello.Req.HasValue && answered.Add(hello.Req.Value)) transport.Reply(FakeRuntime.Hello("A", hello.Req));
            }
            return true;
        }

        // The messages sent from the `from`th on, less the hellos (the client's probes).
        static List<Message> NotHellos(ScriptedTransport transport, int from)
        {
            return transport.SentMessages().Skip(from).Where(m => !(m is Hello)).ToList();
        }

        static string Describe(Message m)
        {
            var a = m as Audio;
            if (a != null) return "audio " + a.Stream + " " + a.Seq + " @" + a.AtSample;
            var e = m as EndStream;
            if (e != null) return "end_stream " + e.Stream + " " + e.Req;
            return m.Type.ToString();
        }

        [Test]
        public void AudioAfterEndStreamIsRefusedHereAndNotSentUntilTheStreamIsOpenedAgain()
        {
            // The runtime takes no audio for a stream that is ending (SPEC 4.6 audio: unknown_stream):
            // SendAudio after EndStream throws as that, and sends nothing (as the Python SDK's push()
            // after end()). A stream opened again under the id takes audio again.
            var rt = Keep(new FakeRuntime());
            KsdiffClient c = Client(rt);
            Handshake(rt, c, "A");
            Open(rt, c, "mic1");
            PendingRequest end = c.EndStream("mic1");
            var e = rt.Receive();
            var refused = Assert.Throws<ProtocolException>(() => c.SendAudio("mic1", 7, null, new byte[640], 0, 640));
            Assert.AreEqual(ErrorCode.UnknownStream, refused.Code);
            Assert.IsNull(rt.TryReceive(0.3), "audio after end_stream was sent");
            rt.Reply(e.Key, FakeRuntime.StreamEnded("mic1", 0, ((EndStream)new Decoder().Decode(e.Value)).Req.Value));
            Assert.IsTrue(end.Wait(TimeSpan.FromSeconds(10)));
            Open(rt, c, "mic1");
            c.SendAudio("mic1", 0, null, new byte[640], 0, 640);
            Assert.AreEqual(MessageType.Audio, new Decoder().Decode(rt.Receive().Value).Type);
            Assert.IsFalse(Events(c).Any(ev => ev.Kind == ClientEventKind.StreamLost));
        }

        [Test]
        public void AnUnknownStreamAnswerAfterItsEndStreamLeftDoesNotLoseTheEndingStream()
        {
            // Once its end_stream left, the runtime answers what else comes for the stream with
            // unknown_stream (it is ending it): not a loss. The stream ends normally with its
            // stream_end and stream_ended, and no StreamLost. (The end_stream's own unknown_stream
            // is a loss: AStreamThisClientOpenedIsLostWhenTheRuntimeRefusesItAsForbiddenOrUnknown.)
            var rt = Keep(new FakeRuntime());
            KsdiffClient c = Client(rt);
            Handshake(rt, c, "A");
            rt.WaitSubscribed(Protocol.StreamTopicPrefix);
            Open(rt, c, "npc1");
            Events(c);
            PendingRequest end = c.EndStream("npc1");
            var e = rt.Receive();
            ulong req = ((EndStream)new Decoder().Decode(e.Value)).Req.Value;
            PendingRequest set = c.SetControls("npc1", new Controls().SetMood(Protocol.MoodHappy));
            var sr = rt.Receive();
            rt.Reply(sr.Key, FakeRuntime.Error("unknown_stream", "set_controls", "npc1", ((SetControls)new Decoder().Decode(sr.Value)).Req));
            Assert.IsTrue(set.Wait(TimeSpan.FromSeconds(10)));
            Assert.AreEqual(ErrorCode.UnknownStream, ((ErrorReply)set.Reply).ErrorCode);
            Assert.IsFalse(c.Stream("npc1").Ended, "lost while it was ending");
            Assert.IsNull(c.Stream("npc1").EndReason);
            rt.Publish(Protocol.StreamTopic("npc1"), FakeRuntime.StreamEnd("npc1", "ended", 3));
            rt.Reply(e.Key, FakeRuntime.StreamEnded("npc1", 3, req));
            Assert.IsTrue(end.Wait(TimeSpan.FromSeconds(10)));
            Assert.IsTrue(end.Reply is StreamEnded, "" + end.Reply);
            Assert.IsTrue(Wait.Until(() => c.Stream("npc1").EndReason == "ended", 10));
            List<ClientEvent> events = Events(c);
            Assert.IsFalse(events.Any(ev => ev.Kind == ClientEventKind.StreamLost), string.Join("\n", events));
        }

        [Test]
        public void AStreamLostHereStaysLostThoughFramesStillComeUntilItStartsAgain()
        {
            // Lost client-side (reconnect, restart), a stream may still have frames on the way (the
            // runtime animates the audio it has for the old connection): they count, but do not erase
            // the loss, as a frame after a real end (a new stream reusing the id) resets the record.
            // A new stream_start for the id does; so does OpenStream.
            var rt = Keep(new FakeRuntime());
            KsdiffClient c = Client(rt);
            Handshake(rt, c, "A");
            rt.WaitSubscribed(Protocol.FrameTopicPrefix);
            rt.WaitSubscribed(Protocol.StreamTopicPrefix);
            Open(rt, c, "npc1");
            rt.Publish(Protocol.FrameTopic("npc1"), FakeRuntime.Frame("npc1", 0));
            Assert.IsTrue(Wait.Until(() => c.Stream("npc1").Frames == 1, 10));
            c.SendAudio("npc1", 0, null, new byte[640], 0, 640);
            var a = rt.Receive();
            rt.Reply(a.Key, FakeRuntime.Error("forbidden", "audio", "npc1", null)); // the connection that opened it dropped
            Assert.IsTrue(Wait.Until(() => c.Stream("npc1").EndReason == "reconnect", 10), "not lost");
            rt.Publish(Protocol.FrameTopic("npc1"), FakeRuntime.Frame("npc1", 1));
            Assert.IsTrue(Wait.Until(() => c.Stream("npc1").Frames != 1 || c.Stream("npc1").EndReason != "reconnect", 10), "the frame never came");
            StreamStatus s = c.Stream("npc1");
            Assert.AreEqual("reconnect", s.EndReason, "a frame erased the loss");
            Assert.IsTrue(s.Ended);
            Assert.AreEqual(2UL, s.Frames);
            // The same after a restart.
            Open(rt, c, "npc2");
            rt.Publish(Protocol.HelloTopic, FakeRuntime.Hello("B"));
            Assert.IsTrue(Wait.Until(() => c.Stream("npc2").EndReason == "restart", 10), "not lost");
            rt.Publish(Protocol.FrameTopic("npc2"), FakeRuntime.Frame("npc2", 5));
            Assert.IsTrue(Wait.Until(() => c.Stream("npc2").Frames == 1, 10), "the frame never came");
            Assert.AreEqual("restart", c.Stream("npc2").EndReason, "a frame erased the loss");
            // A new stream under the id: its stream_start resets the record.
            rt.Publish(Protocol.StreamTopic("npc1"), FakeRuntime.StreamStart("npc1"));
            Assert.IsTrue(Wait.Until(() => c.Stream("npc1").EndReason == null, 10), "a new stream_start kept the loss");
            Assert.IsFalse(c.Stream("npc1").Ended);
            Assert.AreEqual(0UL, c.Stream("npc1").Frames);
            // A real end, then a frame (a new stream reusing the id, its start missed): reset as ever.
            rt.Publish(Protocol.StreamTopic("npc1"), FakeRuntime.StreamEnd("npc1", "ended", 0));
            Assert.IsTrue(Wait.Until(() => c.Stream("npc1").EndReason == "ended", 10));
            rt.Publish(Protocol.FrameTopic("npc1"), FakeRuntime.Frame("npc1", 0));
            Assert.IsTrue(Wait.Until(() => c.Stream("npc1").EndReason == null && c.Stream("npc1").Frames == 1, 10), "not reset");
        }

        [Test]
        public void ARuntimePickedIdGivenAgainAfterARestartIsANewStreamThoughItsStartIsMissed()
        {
            // The runtime picks ids sdk-1, sdk-2, ... afresh after a restart: the id of a stream lost
            // with the old process comes back in stream_opened for a new open_stream. That opens it
            // again, as OpenStream with the id does: its frames count for a live stream even when its
            // stream_start is missed (the loss no longer holds them back).
            var rt = Keep(new FakeRuntime());
            KsdiffClient c = Client(rt);
            Handshake(rt, c, "A");
            rt.WaitSubscribed(Protocol.FrameTopicPrefix);
            OpenPicked(rt, c, "sdk-1");
            rt.Publish(Protocol.HelloTopic, FakeRuntime.Hello("B")); // a restart: sdk-1 lost
            Assert.IsTrue(Wait.Until(() => c.Stream("sdk-1").EndReason == "restart", 10), "not lost");
            OpenPicked(rt, c, "sdk-1"); // the new process gives sdk-1 again; its stream_start is missed
            StreamStatus s = c.Stream("sdk-1");
            Assert.IsFalse(s.Ended, "a runtime-picked id opened again still reads as lost: " + s.EndReason);
            Assert.IsNull(s.EndReason);
            Assert.IsTrue(s.OpenedHere);
            c.SendAudio("sdk-1", 0, null, new byte[640], 0, 640);
            rt.Receive();
            for (ulong i = 0; i < 3; i++) rt.Publish(Protocol.FrameTopic("sdk-1"), FakeRuntime.Frame("sdk-1", i));
            Assert.IsTrue(Wait.Until(() => c.Stream("sdk-1").Frames >= 3, 10), "the frames never came: " + c.Stream("sdk-1").Frames);
            s = c.Stream("sdk-1");
            Assert.IsFalse(s.Ended, "the new stream reads as ended while its frames flow: " + s.EndReason);
            Assert.IsNull(s.EndReason);
            Assert.AreEqual(3UL, s.Frames);
            // A later loss of the new stream is seen.
            rt.Publish(Protocol.HelloTopic, FakeRuntime.Hello("C"));
            Assert.IsTrue(Wait.Until(() => c.Stream("sdk-1").EndReason == "restart", 10), "the new stream's loss went unseen");
        }

        [Test]
        public void ARuntimePickedIdGivenAgainAfterARestartStaysOpenedHereWhenItsStartComesAfterStreamOpened()
        {
            var rt = Keep(new FakeRuntime());
            KsdiffClient c = Client(rt);
            Handshake(rt, c, "A");
            rt.WaitSubscribed(Protocol.StreamTopicPrefix);
            OpenPicked(rt, c, "sdk-1");
            rt.Publish(Protocol.HelloTopic, FakeRuntime.Hello("B")); // a restart: sdk-1 lost
            Assert.IsTrue(Wait.Until(() => c.Stream("sdk-1").EndReason == "restart", 10), "not lost");
            OpenPicked(rt, c, "sdk-1");
            rt.Publish(Protocol.StreamTopic("sdk-1"), FakeRuntime.StreamStart("sdk-1"));
            Assert.IsTrue(Wait.Until(() => Events(c).Any(e => e.Kind == ClientEventKind.StreamStart && e.Stream == "sdk-1"), 10), "no stream_start");
            StreamStatus s = c.Stream("sdk-1");
            Assert.IsFalse(s.Ended);
            Assert.IsTrue(s.OpenedHere, "a stream_start after stream_opened dropped OpenedHere");
        }

        [Test]
        public void ARestartIsSeenByItsInstanceAndFailsWhatTheOldRuntimeHeld()
        {
            var rt = Keep(new FakeRuntime());
            KsdiffClient c = Client(rt);
            Handshake(rt, c, "A");
            PendingRequest open = c.OpenStream(new OpenStream { Stream = "mine" });
            var r = rt.Receive();
            rt.Reply(r.Key, FakeRuntime.StreamOpened("mine", ((OpenStream)new Decoder().Decode(r.Value)).Req.Value));
            Assert.IsTrue(open.Wait(TimeSpan.FromSeconds(10)));
            rt.Publish(Protocol.FrameTopic("mine"), FakeRuntime.Frame("mine", 0));
            PendingRequest end = c.EndStream("mine"); // never answered by the old runtime
            rt.Receive();
            Assert.IsTrue(Wait.Until(() => c.Status().Frames == 1, 10));
            Events(c);
            rt.Publish(Protocol.HelloTopic, FakeRuntime.Hello("B"));
            Assert.IsTrue(Wait.Until(() => c.Status().Instance == "B", 10));
            Assert.IsTrue(end.Wait(TimeSpan.FromSeconds(10)));
            Assert.IsNull(end.Reply);
            Assert.IsTrue(end.Failure.Contains("restarted"), end.Failure);
            Assert.AreEqual("restart", c.Stream("mine").EndReason);
            Assert.IsFalse(c.Buffer.Contains("mine"), "the jitter buffer forgot the old runtime's streams");
            var kinds = Events(c).Select(e => e.Kind).ToList();
            Assert.IsTrue(kinds.Contains(ClientEventKind.RuntimeRestart));
            Assert.IsTrue(kinds.Contains(ClientEventKind.StreamLost));
            // A late hello of the old process is not another restart.
            rt.Publish(Protocol.HelloTopic, FakeRuntime.Hello("A"));
            rt.Publish(Protocol.HelloTopic, FakeRuntime.Hello("B"));
            Assert.IsTrue(Wait.Until(() => Events(c).Any(e => e.Kind == ClientEventKind.Hello && ((Hello)e.Message).Instance == "B"), 10));
            Assert.AreEqual(1UL, c.Status().Restarts);
            Assert.AreEqual("B", c.Status().Instance);
        }

        [Test]
        public void TheClientReconnectsToARuntimeThatComesBackOnTheSamePorts()
        {
            var first = new FakeRuntime();
            string pub = first.PubEndpoint, router = first.RouterEndpoint;
            KsdiffClient c = Client(first);
            Handshake(first, c, "A");
            first.Dispose(); // the runtime goes away ...
            Assert.IsTrue(Wait.Until(() => c.State == ClientState.Stale, 10), "no Stale state without hellos");
            var second = Keep(new FakeRuntime(pub, router)); // ... and a new process binds the same ports
            Handshake(second, c, "B");
            Assert.AreEqual(ClientState.Live, c.Status().State);
            Assert.AreEqual(1UL, c.Status().Restarts);
            // Requests reach the new process too.
            PendingRequest hello = c.RequestHello();
            var r = second.Receive();
            second.Reply(r.Key, FakeRuntime.Hello("B", ((Hello)new Decoder().Decode(r.Value)).Req));
            Assert.IsTrue(hello.Wait(TimeSpan.FromSeconds(10)));
        }

        [Test]
        public void AnAbsentRuntimeLeavesTheClientConnectingAndStopIsPrompt()
        {
            // Free ports, nothing bound to them.
            string pub, router;
            using (var probe = new FakeRuntime())
            {
                pub = probe.PubEndpoint;
                router = probe.RouterEndpoint;
            }
            KsdiffClient c = Client(null, null, null, pub, router);
            PendingRequest hello = c.RequestHello();
            Assert.IsFalse(hello.Wait(TimeSpan.FromMilliseconds(300)));
            Assert.AreEqual(ClientState.Connecting, c.Status().State);
            var watch = Stopwatch.StartNew();
            c.Stop();
            Assert.Less(watch.Elapsed.TotalSeconds, 1.0, "stop must not hang on an absent runtime");
            Assert.AreEqual(ClientState.Stopped, c.Status().State);
            Assert.IsTrue(hello.IsDone);
            Assert.IsNotNull(hello.Failure);
        }

        [Test]
        public void ABadEndpointFailsWithTheReason()
        {
            var c = Keep(new KsdiffClient(new ClientOptions { PubEndpoint = "tcp://nowhere:notaport", Transport = () => new LibZmqTransport() }));
            c.Start();
            Assert.IsTrue(Wait.Until(() => c.Status().State == ClientState.Failed, 10));
            Assert.IsTrue(c.Status().LastError.Contains("nowhere"), c.Status().LastError);
        }

        [Test]
        public void CurveKeysFromCertificateFilesOpenACurveRuntimeAndOnlyWithTheRightServerKey()
        {
            if (!LibZmq.HasCurve()) Assert.Ignore("this libzmq has no CURVE support");
            string serverPublic, serverSecret, clientPublic, clientSecret, otherPublic, otherSecret;
            LibZmq.CurveKeypair(out serverPublic, out serverSecret);
            LibZmq.CurveKeypair(out clientPublic, out clientSecret);
            LibZmq.CurveKeypair(out otherPublic, out otherSecret);
            string dir = Path.Combine(Path.GetTempPath(), "ksdiff-curve-" + Guid.NewGuid().ToString("N"));
            Directory.CreateDirectory(dir);
            try
            {
                // Certificate files as pyzmq's zmq.auth.create_certificates writes them.
                WriteCertificate(Path.Combine(dir, "server.key"), serverPublic, null);
                WriteCertificate(Path.Combine(dir, "client.key_secret"), clientPublic, clientSecret);
                CurveKeys keys = CurveKeys.FromCertificateFiles(Path.Combine(dir, "server.key"), Path.Combine(dir, "client.key_secret"));
                Assert.AreEqual(serverPublic, keys.ServerPublicKey);
                Assert.AreEqual(clientSecret, keys.ClientSecretKey);

                var rt = Keep(new FakeRuntime(curve: new CurveKeysForServer { PublicKey = serverPublic, SecretKey = serverSecret }));
                KsdiffClient plain = Client(rt);                                                   // no CURVE at all
                KsdiffClient wrong = Client(rt, null, new CurveKeys(otherPublic, clientPublic, clientSecret)); // wrong server key
                KsdiffClient good = Client(rt, null, keys);
                Handshake(rt, good, "A"); // the server sees only the good client's subscription
                for (int i = 0; i < 3; i++) rt.Publish(Protocol.HelloTopic, FakeRuntime.Hello("A"));
                PendingRequest hello = good.RequestHello();
                var r = rt.Receive();
                rt.Reply(r.Key, FakeRuntime.Hello("A", ((Hello)new Decoder().Decode(r.Value)).Req));
                Assert.IsTrue(hello.Wait(TimeSpan.FromSeconds(10)), "the DEALER speaks CURVE too");
                Assert.AreEqual(ClientState.Live, good.Status().State);
                Assert.AreEqual(0UL, plain.Status().Messages, "a client without CURVE gets nothing");
                Assert.AreEqual(0UL, wrong.Status().Messages, "a client with the wrong server key gets nothing");
            }
            finally
            {
                Directory.Delete(dir, true);
            }
        }

        [Test]
        public void CertificateFilesWrittenByPyzmqLoad()
        {
            // tests/test_unity_core.py writes them with zmq.auth.create_certificates.
            string dir = Environment.GetEnvironmentVariable("KSDIFF_PYZMQ_CERTS");
            if (string.IsNullOrEmpty(dir)) Assert.Ignore("KSDIFF_PYZMQ_CERTS not set (pyzmq-written certificates)");
            CurveKeys keys = CurveKeys.FromCertificateFiles(Path.Combine(dir, "server.key"), Path.Combine(dir, "client.key_secret"));
            Assert.AreEqual(32, keys.ServerPublicKeyBytes.Length);
            Assert.AreEqual(File.ReadAllText(Path.Combine(dir, "expected_server_public.txt")).Trim(), keys.ServerPublicKey);
            Assert.AreEqual(File.ReadAllText(Path.Combine(dir, "expected_client_secret.txt")).Trim(), keys.ClientSecretKey);
            Assert.Throws<FormatException>(() => CurveKeys.FromCertificateFiles(Path.Combine(dir, "server.key"), Path.Combine(dir, "client.key")));
        }

        static void WriteCertificate(string path, string publicKey, string secretKey)
        {
            var lines = new List<string>
            {
                "#   ****  Generated by a test  ****", "#   ZeroMQ CURVE Certificate", "", "metadata", "curve",
                "    public-key = \"" + publicKey + "\"",
            };
            if (secretKey != null) lines.Add("    secret-key = \"" + secretKey + "\"");
            File.WriteAllLines(path, lines.ToArray());
        }

        // --- Start and Stop from several threads -----------------------------------------------
        // A MonoBehaviour starts the client in OnEnable and stops it in OnDisable or a domain reload,
        // a game may do either from a loading thread, a frame sink on the worker thread itself: a
        // client runs one worker at most (workers share the client's worker-only state), and Stop
        // returns once the worker it stopped is gone (its sockets closed before NetMQ's cleanup).

        // Counts real libzmq transports from their making to the end of their Dispose: two open at
        // once means two workers ran together; one open when Stop returned means Stop did not wait
        // for its worker. Counts too what each took from its worker (subscriptions and messages),
        // and can hold the worker inside the first of those, in the middle of its Flush.
        sealed class TransportCount
        {
            readonly object _lock = new object();
            readonly List<int> _taken = new List<int>(); // per transport, in the order made
            int _open, _maxOpen, _made, _takenAll;

            // When not null: the first subscription or message taken (by any transport) waits in
            // the transport until it is set; FirstHeld tells the test it waits.
            public ManualResetEventSlim HoldFirst;
            public readonly ManualResetEventSlim FirstHeld = new ManualResetEventSlim();

            public int Open { get { lock (_lock) return _open; } }
            public int MaxOpen { get { lock (_lock) return _maxOpen; } }
            public int Made { get { lock (_lock) return _made; } }
            public int Taken(int transport) { lock (_lock) return transport < _taken.Count ? _taken[transport] : 0; }

            public ITransport Make()
            {
                int index;
                lock (_lock)
                {
                    index = _made++;
                    _taken.Add(0);
                    _open++;
                    _maxOpen = Math.Max(_maxOpen, _open);
                }
                return new CountedTransport(this, index, new LibZmqTransport());
            }

            public void Closed() { lock (_lock) _open--; }

            public void Took(int transport)
            {
                bool first;
                lock (_lock)
                {
                    _taken[transport]++;
                    first = ++_takenAll == 1;
                }
                if (first && HoldFirst != null)
                {
                    FirstHeld.Set();
                    HoldFirst.Wait(TimeSpan.FromSeconds(10)); // bounded: a test that never lets go fails on its own
                }
            }
        }

        sealed class CountedTransport : ITransport
        {
            readonly TransportCount _count;
            readonly int _index;
            readonly ITransport _inner;
            bool _disposed;

            public CountedTransport(TransportCount count, int index, ITransport inner)
            {
                _count = count;
                _index = index;
                _inner = inner;
            }

            public void Open(TransportOptions options) { _inner.Open(options); }

            public void Subscribe(string topic)
            {
                _inner.Subscribe(topic);
                _count.Took(_index);
            }

            public void Unsubscribe(string topic) { _inner.Unsubscribe(topic); }
            public Readiness Wait(int timeoutMs) { return _inner.Wait(timeoutMs); }
            public bool TryReceivePublished(MessageBuffer topic, MessageBuffer payload, out int parts) { return _inner.TryReceivePublished(topic, payload, out parts); }
            public bool TryReceiveReply(MessageBuffer payload, out int parts) { return _inner.TryReceiveReply(payload, out parts); }

            public bool TrySend(byte[] payload)
            {
                bool sent = _inner.TrySend(payload);
                if (sent) _count.Took(_index);
                return sent;
            }

            public int TakeDisconnects() { return _inner.TakeDisconnects(); }

            public void Dispose()
            {
                if (_disposed) return;
                _disposed = true;
                try { _inner.Dispose(); }
                finally { _count.Closed(); } // counted closed only once its sockets are
            }
        }

        // Runs `action` on the worker thread, inside the sink call of the first frame only.
        sealed class FirstFrameSink : IFrameSink
        {
            readonly Action _action;
            int _calls;

            public FirstFrameSink(Action action) { _action = action; }

            public void OnFrame(Frame frame, double arrivalS)
            {
                if (Interlocked.Increment(ref _calls) == 1) _action();
            }
        }

        // A client over counted transports, with `onFirstFrame` run by its worker on the first frame
        // it gets (published once the client subscribed).
        KsdiffClient CountedClient(FakeRuntime rt, TransportCount transports, Action<KsdiffClient> onFirstFrame)
        {
            KsdiffClient c = Client(rt, configure: o => o.Transport = transports.Make);
            c.AddFrameSink(new FirstFrameSink(() => onFirstFrame(c)));
            rt.WaitSubscribed(Protocol.FrameTopic("npc1"));
            rt.Publish(Protocol.FrameTopic("npc1"), FakeRuntime.Frame("npc1", 0));
            return c;
        }

        // The client's (one) worker works: a hello request goes out and its answer comes back.
        static void AssertAnswersHello(FakeRuntime rt, KsdiffClient c)
        {
            AssertAnswered(rt, c.RequestHello());
        }

        // Receives the requests that come (the stand-in answers hellos) until `hello` has its outcome.
        static void AssertAnswered(FakeRuntime rt, PendingRequest hello)
        {
            var watch = Stopwatch.StartNew();
            while (!hello.IsDone && watch.Elapsed.TotalSeconds < 10) rt.TryReceive(0.05);
            Assert.IsTrue(hello.IsDone, "no answer to a hello request");
            Assert.IsTrue(hello.Reply is Hello, "" + hello.Reply + " " + hello.Failure);
        }

        // Holds the worker inside its transport (its first subscription or message, which `queueFirst`
        // queues), stops the client on another thread (that Stop waits for the worker), starts it
        // again and has `queueAfter` queue more while the stopped worker is still in its Flush, then
        // lets it go. Returns once the Stop returned.
        static void StopAndStartWhileTheWorkerIsInItsFlush(KsdiffClient c, TransportCount transports, Action queueFirst, Action queueAfter)
        {
            queueFirst();
            Assert.IsTrue(transports.FirstHeld.Wait(TimeSpan.FromSeconds(10)), "the worker took nothing");
            var stopper = new Thread(c.Stop) { IsBackground = true, Name = "stopper" };
            stopper.Start();
            Assert.IsTrue(Wait.Until(() => c.State == ClientState.Stopped, 10), "Stop never took effect");
            c.Start(); // the new worker waits for the old one to end
            queueAfter();
            transports.HoldFirst.Set();
            Assert.IsTrue(stopper.Join(TimeSpan.FromSeconds(10)), "Stop never returned");
        }

        [Test]
        public void StopThenStartFromAFrameSinkOnTheWorkerLeavesExactlyOneWorkerRunning()
        {
            var rt = Keep(new FakeRuntime());
            var transports = new TransportCount();
            var restarted = new ManualResetEventSlim();
            KsdiffClient c = CountedClient(rt, transports, client =>
            {
                client.Stop();  // cannot wait for its own thread: the worker ends once this call returns
                client.Start(); // a new worker, which must not run beside the one ending
                restarted.Set();
            });
            Assert.IsTrue(restarted.Wait(TimeSpan.FromSeconds(10)), "the sink got no frame");
            Assert.IsTrue(Wait.Until(() => transports.Made == 2 && transports.Open == 1, 5),
                          "made " + transports.Made + " transports, " + transports.Open + " open: the worker that stopped itself still runs");
            AssertAnswersHello(rt, c);
            c.Stop();
            Assert.AreEqual(0, transports.Open, "a worker still ran after Stop returned");
            Assert.AreEqual(1, transports.MaxOpen, "two workers ran at once");
        }

        [Test]
        public void AStartWhileTheWorkerThatStoppedItselfIsStillInItsCallbackRunsOneWorkerOnly()
        {
            var rt = Keep(new FakeRuntime());
            var transports = new TransportCount();
            var stopped = new ManualResetEventSlim();
            var started = new ManualResetEventSlim();
            KsdiffClient c = CountedClient(rt, transports, client =>
            {
                client.Stop();
                stopped.Set();
                // Still in its callback (the old worker draining) while another thread starts the
                // client again.
                Assert.IsTrue(started.Wait(TimeSpan.FromSeconds(10)), "the test thread never started the client");
            });
            Assert.IsTrue(stopped.Wait(TimeSpan.FromSeconds(10)), "the sink got no frame");
            Assert.AreEqual(ClientState.Stopped, c.State);
            c.Start(); // returns at once: the new worker waits for the old one to end
            started.Set();
            Assert.IsTrue(Wait.Until(() => transports.Made == 2 && transports.Open == 1, 5),
                          "made " + transports.Made + " transports, " + transports.Open + " open: the stopped worker still runs");
            AssertAnswersHello(rt, c);
            c.Stop();
            Assert.AreEqual(0, transports.Open, "a worker still ran after Stop returned");
            Assert.AreEqual(1, transports.MaxOpen, "two workers ran at once");
        }

        [Test]
        public void AStopOnAWorkerThatIsStillEndingStopsTheNewWorkerWithoutWaitingForIt()
        {
            var rt = Keep(new FakeRuntime());
            var transports = new TransportCount();
            var stopped = new ManualResetEventSlim();
            var started = new ManualResetEventSlim();
            var stoppedAgain = new ManualResetEventSlim();
            KsdiffClient c = CountedClient(rt, transports, client =>
            {
                client.Stop();
                stopped.Set();
                Assert.IsTrue(started.Wait(TimeSpan.FromSeconds(10)), "the test thread never started the client");
                // The new worker waits for this one to end: waiting for it here would never end.
                client.Stop();
                stoppedAgain.Set();
            });
            Assert.IsTrue(stopped.Wait(TimeSpan.FromSeconds(10)), "the sink got no frame");
            c.Start();
            started.Set();
            Assert.IsTrue(stoppedAgain.Wait(TimeSpan.FromSeconds(10)), "Stop on the old worker hung");
            Assert.AreEqual(ClientState.Stopped, c.State);
            c.Stop();
            Assert.AreEqual(0, transports.Open, "a worker still ran after Stop returned");
            Assert.AreEqual(1, transports.MaxOpen, "two workers ran at once");
        }

        [Test]
        public void StopOnAnotherThreadReturnsOnlyOnceAWorkerThatStoppedItselfHasEnded()
        {
            var rt = Keep(new FakeRuntime());
            var transports = new TransportCount();
            var stopped = new ManualResetEventSlim();
            var release = new ManualResetEventSlim();
            KsdiffClient c = CountedClient(rt, transports, client =>
            {
                client.Stop();
                stopped.Set();
                Assert.IsTrue(release.Wait(TimeSpan.FromSeconds(10)), "the test thread never released the sink");
            });
            Assert.IsTrue(stopped.Wait(TimeSpan.FromSeconds(10)), "the sink got no frame");
            // The worker is stopped but not gone: a domain reload's Stop must wait for it, its
            // sockets closed before NetMQ's cleanup.
            release.Set();
            c.Stop();
            Assert.AreEqual(0, transports.Open, "Stop returned while the worker still ran");
            Assert.AreEqual(1, transports.Made);
        }

        [Test]
        public void AWorkerStoppedInTheMiddleOfSendingLeavesWhatWasQueuedAfterItsStopToTheNextWorker()
        {
            var rt = Keep(new FakeRuntime());
            var transports = new TransportCount { HoldFirst = new ManualResetEventSlim() };
            KsdiffClient c = Client(rt, configure: o => o.Transport = transports.Make);
            PendingRequest first = null, second = null;
            StopAndStartWhileTheWorkerIsInItsFlush(c, transports, () => first = c.RequestHello(), () => second = c.RequestHello());
            // Sent on the stopped worker's connection, closing, the second hello's answer would be lost.
            Assert.AreEqual(1, transports.Taken(0), "the stopped worker sent a request queued after its stop");
            Assert.IsNotNull(first.Failure, "the request pending at the stop failed");
            AssertAnswered(rt, second);
            c.Stop();
            Assert.AreEqual(0, transports.Open);
            Assert.AreEqual(1, transports.MaxOpen, "two workers ran at once");
        }

        [Test]
        public void AWorkerStoppedInTheMiddleOfSubscribingLeavesTheSubscriptionsQueuedAfterItsStopToTheNextWorker()
        {
            var rt = Keep(new FakeRuntime());
            var transports = new TransportCount { HoldFirst = new ManualResetEventSlim() };
            // A stream filter: a stream opened here is subscribed by the worker (its first Flush).
            KsdiffClient c = Client(rt, new[] { "npc1" }, configure: o => o.Transport = transports.Make);
            StopAndStartWhileTheWorkerIsInItsFlush(c, transports, () => c.OpenStream(new OpenStream { Stream = "npc2" }),
                                                   () => c.OpenStream(new OpenStream { Stream = "npc3" }));
            // Subscribed on the stopped worker's socket, closing, npc3's frames would never come.
            Assert.AreEqual(1, transports.Taken(0), "the stopped worker took a subscription queued after its stop");
            rt.WaitSubscribed(Protocol.FrameTopic("npc3"));
            rt.Publish(Protocol.FrameTopic("npc3"), FakeRuntime.Frame("npc3", 0));
            Assert.IsTrue(Wait.Until(() => c.Stream("npc3") != null && c.Stream("npc3").Frames == 1, 10), "npc3's frame never came");
            c.Stop();
            Assert.AreEqual(0, transports.Open);
            Assert.AreEqual(1, transports.MaxOpen, "two workers ran at once");
        }

        [Test]
        public void AfterStopAndStartTheStreamsOpenedBeforeTheStopFailAtOnceOnTheCallersSideAndNothingIsSent()
        {
            // Stop closed the connection that owned "mine" (SPEC 1, Ownership): the stream is lost.
            // A game that goes on feeding it after Start gets what EndStream gives (SendAudio throws
            // unknown_stream, nothing sent), not audio sent for the runtime to refuse later, which the
            // game would only see as an error event. Its set_controls and end_stream fail at once too.
            var rt = Keep(new FakeRuntime());
            KsdiffClient c = Client(rt);
            Handshake(rt, c, "A");
            Open(rt, c, "mine");
            PendingRequest opening = c.OpenStream(new OpenStream { Stream = "opening" });
            rt.Receive(); // read, not answered yet when the client stops: it fails with the stop
            c.Stop();
            c.Start();
            Assert.AreEqual("the client stopped", opening.Failure);
            foreach (string stream in new[] { "mine", "opening" })
            {
                var refused = Assert.Throws<ProtocolException>(() => c.SendAudio(stream, 1, null, new byte[640], 0, 640));
                Assert.AreEqual(ErrorCode.UnknownStream, refused.Code);
                Assert.IsTrue(refused.Message.Contains("was lost when the client stopped"), refused.Message);
            }
            Assert.IsFalse(c.Stream("opening").OpenedHere, "its open_stream failed: not known to be this client's");
            PendingRequest set = c.SetControls("mine", new Controls().SetMood(Protocol.MoodHappy));
            PendingRequest end = c.EndStream("mine");
            foreach (PendingRequest p in new[] { set, end })
            {
                Assert.IsTrue(p.IsDone, p.Type + " waits for an answer that cannot come");
                Assert.IsNull(p.Reply, "" + p.Reply);
                Assert.IsTrue(p.Failure.Contains("was lost when the client stopped"), p.Failure);
            }
            AssertTheNextConnectionSendsNothingBeforeAHello(rt, c);
            // A stream opened again under the id, on the new connection, takes audio again.
            Open(rt, c, "mine");
            c.SendAudio("mine", 0, null, new byte[640], 0, 640);
            Assert.AreEqual(MessageType.Audio, new Decoder().Decode(rt.Receive().Value).Type);
        }

        // A client whose first connection is `refusing` (a test holds what it sends there); the next
        // connections, after a Stop and Start, are plain libzmq.
        KsdiffClient ClientRefusingOnItsFirstConnection(FakeRuntime rt, RefusingTransport refusing)
        {
            int made = 0;
            return Client(rt, configure: o => o.Transport = () => Interlocked.Increment(ref made) == 1 ? (ITransport)refusing : new LibZmqTransport());
        }

        [Test]
        public void AudioStillInTheOutboxWhenTheClientStopsIsNeverSentOnTheNextConnection()
        {
            // The runtime took nothing for a while (ZeroMQ's queue full) and the audio waited in the
            // outbox when the game stopped the client: its stream went with the connection, so the
            // audio is dropped (counted Unsent, as on a dropped connection), not sent after Start.
            var rt = Keep(new FakeRuntime());
            var refusing = new RefusingTransport();
            KsdiffClient c = ClientRefusingOnItsFirstConnection(rt, refusing);
            Handshake(rt, c, "A");
            Open(rt, c, "mine");
            refusing.Refuse = true;
            c.SendAudio("mine", 0, 0, new byte[640], 0, 640);
            Assert.IsTrue(Wait.Until(() => refusing.Refused > 0, 10), "the worker never tried to send the audio");
            c.Stop();
            c.Start();
            AssertTheNextConnectionSendsNothingBeforeAHello(rt, c);
            Assert.AreEqual(1UL, c.Status().Unsent);
        }

        [Test]
        public void AfterStopAndStartASetControlsOfTheRuntimesOwnMicStillGoesAndGetsItsAnswer()
        {
            // Stop loses only the streams this client opened (their connection closed). The runtime's
            // own mic, tuned from a VTuber's control panel, belongs to no connection: after Start its
            // set_controls goes to the runtime as before, not refused here as "lost when the client stopped".
            var rt = Keep(new FakeRuntime());
            KsdiffClient c = Client(rt);
            Handshake(rt, c, "A");
            rt.WaitSubscribed(Protocol.StreamTopicPrefix);
            rt.Publish(Protocol.StreamTopic("mic"), FakeRuntime.StreamStart("mic", "mic"));
            Assert.IsTrue(Wait.Until(() => c.Stream("mic") != null, 10), "the mic's stream_start did not come");
            c.Stop();
            c.Start();
            PendingRequest set = c.SetControls("mic", new Controls().SetMood(Protocol.MoodHappy));
            Assert.IsNull(set.Failure, "refused here");
            KeyValuePair<byte[], byte[]> r;
            Message m;
            do
            {
                r = rt.Receive();
                m = new Decoder().Decode(r.Value);
            } while (m is Hello); // the client's probes
            Assert.IsTrue(m is SetControls, Describe(m));
            rt.Reply(r.Key, ControlsSet("mic", Protocol.MoodHappy, set.Req));
            Assert.IsTrue(set.Wait(TimeSpan.FromSeconds(10)) && set.Reply is ControlsSet, "" + set.Reply + " " + set.Failure);
            Assert.IsNull(c.Stream("mic").EndReason, "the runtime's mic was marked lost here");
        }

        [Test]
        public void AnOpenStreamThatFailsAtOnceWhileTheClientIsStoppedDoesNotReopenTheIdLostByTheStop()
        {
            // Unity enables components in no set order: a game's mic component opens "mine" again
            // before the client's component has started the client. That open_stream fails at once,
            // never sent ("the client is not running"): it opened nothing, so after Start "mine" is
            // still the stream the stop lost (SendAudio throws, nothing sent), not a stream this
            // client opened and waits on, whose audio goes out for the runtime to refuse.
            var rt = Keep(new FakeRuntime());
            KsdiffClient c = Client(rt);
            Handshake(rt, c, "A");
            Open(rt, c, "mine");
            c.Stop();
            PendingRequest reopen = c.OpenStream(new OpenStream { Stream = "mine" });
            Assert.AreEqual("the client is not running", reopen.Failure);
            c.Start();
            StreamStatus mine = c.Stream("mine");
            Assert.IsFalse(mine.OpenedHere && !mine.Ended, "an open_stream never sent made 'mine' a stream this client holds");
            Assert.AreEqual("reconnect", mine.EndReason, "the stop's loss was wiped");
            var refused = Assert.Throws<ProtocolException>(() => c.SendAudio("mine", 1, null, new byte[640], 0, 640));
            Assert.AreEqual(ErrorCode.UnknownStream, refused.Code);
            AssertTheNextConnectionSendsNothingBeforeAHello(rt, c);
        }

        [Test]
        public void AnEndStreamStillInTheOutboxWhenTheClientStopsIsNeverSentAndCannotMakeTheIdOpenedAgainLost()
        {
            // A game ends its own "mine" stream while the runtime takes nothing (ZeroMQ's queue full),
            // stops the client (a scene change), starts it and opens "mine" again. The end_stream
            // failed with the stop; sent on the next connection it could only be refused (the new
            // connection owns nothing of the old one's: forbidden, or unknown_stream once the
            // runtime's idle timeout ended the old stream), and that refusal, naming "mine", would
            // mark the stream opened since lost ("reconnect") while the runtime feeds it.
            var rt = Keep(new FakeRuntime());
            var refusing = new RefusingTransport();
            KsdiffClient c = ClientRefusingOnItsFirstConnection(rt, refusing);
            Handshake(rt, c, "A");
            Open(rt, c, "mine");
            refusing.Refuse = true;
            PendingRequest end = c.EndStream("mine");
            Assert.IsTrue(Wait.Until(() => refusing.Refused > 0, 10), "the worker never tried to send the end_stream");
            c.Stop();
            c.Start();
            Assert.AreEqual("the client stopped", end.Failure);
            PendingRequest reopen = c.OpenStream(new OpenStream { Stream = "mine" });
            // The runtime answers as the real one does once its idle timeout ended the old stream.
            var received = new List<string>();
            while (true)
            {
                KeyValuePair<byte[], byte[]> r = rt.Receive();
                Message m = new Decoder().Decode(r.Value);
                if (m is Hello) continue; // the client's probes
                received.Add(Describe(m));
                if (m is EndStream) rt.Reply(r.Key, FakeRuntime.Error("unknown_stream", "end_stream", "mine", ((EndStream)m).Req));
                if (!(m is OpenStream)) continue;
                rt.Reply(r.Key, FakeRuntime.StreamOpened("mine", ((OpenStream)m).Req.Value));
                break;
            }
            Assert.IsTrue(reopen.Wait(TimeSpan.FromSeconds(10)) && reopen.Reply is StreamOpened, "" + reopen.Reply + " " + reopen.Failure);
            StreamStatus mine = c.Stream("mine");
            Assert.IsNull(mine.EndReason, "the stream opened again was marked lost by the old end_stream's refusal");
            Assert.IsTrue(mine.OpenedHere && !mine.Ended);
            Assert.AreEqual("OpenStream", string.Join(", ", received), "sent for the stopped connection's stream");
            Assert.AreEqual(1UL, c.Status().Withdrawn, "the end_stream is a request withdrawn unsent");
        }

        // A hello request, queued now, is the first message the runtime reads that is not a hello
        // (the outbox keeps its order: whatever was queued before it would have come first).
        static void AssertTheNextConnectionSendsNothingBeforeAHello(FakeRuntime rt, KsdiffClient c)
        {
            PendingRequest marker = c.RequestHello();
            var received = new List<string>();
            while (true)
            {
                Message m = new Decoder().Decode(rt.Receive().Value);
                if (m is Hello && ((Hello)m).Req == marker.Req) break;
                if (!(m is Hello)) received.Add(Describe(m)); // (other hellos: the client's probes)
            }
            Assert.AreEqual(0, received.Count, "sent for the stopped connection's stream: " + string.Join(", ", received));
            Assert.IsTrue(marker.Wait(TimeSpan.FromSeconds(10)) && marker.Reply is Hello, "" + marker.Reply + " " + marker.Failure);
        }

        // libzmq, but while Refuse is set every send is refused, as when the runtime takes nothing
        // (ZeroMQ's queue is full): what the client sends waits in its outbox.
        sealed class RefusingTransport : ITransport
        {
            readonly ITransport _inner = new LibZmqTransport();
            int _refused;
            public volatile bool Refuse;
            public int Refused { get { return Volatile.Read(ref _refused); } }
            public void Open(TransportOptions options) { _inner.Open(options); }
            public void Subscribe(string topic) { _inner.Subscribe(topic); }
            public void Unsubscribe(string topic) { _inner.Unsubscribe(topic); }
            public Readiness Wait(int timeoutMs) { return _inner.Wait(timeoutMs); }
            public bool TryReceivePublished(MessageBuffer topic, MessageBuffer payload, out int parts) { return _inner.TryReceivePublished(topic, payload, out parts); }
            public bool TryReceiveReply(MessageBuffer payload, out int parts) { return _inner.TryReceiveReply(payload, out parts); }
            public bool TrySend(byte[] payload)
            {
                if (!Refuse) return _inner.TrySend(payload);
                Interlocked.Increment(ref _refused);
                return false;
            }
            public int TakeDisconnects() { return _inner.TakeDisconnects(); }
            public void Dispose() { _inner.Dispose(); }
        }

        [Test]
        public void StartAndStopRacingOnManyThreadsNeverRunTwoWorkersAndStopAlwaysWaitsForItsWorker()
        {
            var rt = Keep(new FakeRuntime());
            var transports = new TransportCount();
            KsdiffClient c = Client(rt, configure: o => o.Transport = transports.Make);
            const int threadCount = 4;
            const int calls = 250; // per thread: under a second here, a worker made for about one call in four
            var go = new Barrier(threadCount);
            var errors = new List<Exception>();
            var threads = new List<Thread>();
            for (int t = 0; t < threadCount; t++)
            {
                var random = new Random(t); // seeded: the same calls each run, the interleavings vary
                var thread = new Thread(() =>
                {
                    try
                    {
                        go.SignalAndWait(TimeSpan.FromSeconds(10));
                        for (int i = 0; i < calls; i++)
                        {
                            if (random.Next(2) == 0) c.Start();
                            else c.Stop();
                        }
                    }
                    catch (Exception e)
                    {
                        lock (errors) errors.Add(e);
                    }
                }) { IsBackground = true, Name = "start-stop " + t };
                threads.Add(thread);
                thread.Start();
            }
            foreach (Thread thread in threads) Assert.IsTrue(thread.Join(TimeSpan.FromSeconds(60)), "Start/Stop hung (a deadlock?)");
            Assert.AreEqual(0, errors.Count, string.Join("\n", errors));
            Assert.AreEqual(1, transports.MaxOpen, "two workers ran at once");
            c.Stop();
            Assert.AreEqual(0, transports.Open, "a worker still ran after Stop returned (" + transports.Made + " made)");
            // Started again, the client has its one worker, which works.
            c.Start();
            Assert.AreNotEqual(ClientState.Stopped, c.State);
            AssertAnswersHello(rt, c);
            c.Stop();
            Assert.AreEqual(0, transports.Open, "a worker still ran after Stop returned");
            Assert.AreEqual(1, transports.MaxOpen, "two workers ran at once");
        }
    }

    [TestFixture]
    public class CurveKeyTests
    {
        [Test]
        public void Z85RoundTripsAndMatchesTheSpecsExample()
        {
            // rfc.zeromq.org/spec:32's test vector.
            byte[] hello = { 0x86, 0x4F, 0xD2, 0x6F, 0xB5, 0x59, 0xF7, 0x5B };
            Assert.AreEqual("HelloWorld", Z85.Encode(hello));
            Assert.AreEqual(hello, Z85.Decode("HelloWorld"));
            var key = new byte[32];
            new Random(1).NextBytes(key);
            Assert.AreEqual(key, Z85.Decode(Z85.Encode(key)));
        }

        [Test]
        public void BadKeysAreRefused()
        {
            string good = Z85.Encode(new byte[32]);
            Assert.Throws<FormatException>(() => new CurveKeys(good.Substring(1), good, good));      // 39 chars
            Assert.Throws<FormatException>(() => new CurveKeys(good, good.Replace('0', '"'), good)); // not Z85
            Assert.Throws<FormatException>(() => new CurveKeys("%%%%%" + good.Substring(5), good, good)); // above 2^32
            Assert.IsNotNull(new CurveKeys(good, good, good));
        }
    }
}
