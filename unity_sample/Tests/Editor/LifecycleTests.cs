// The client's life across Stop and Start, and while the runtime is away: a new run starts
// afresh (no busy window, line audio or stream of the old connection carried over), a worker
// stopped from its own frame sink touches nothing of the next run, and a probe the transport
// refuses is built once, not on every turn of the worker. Real libzmq sockets on loopback
// against FakeRuntime, ephemeral ports.
using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.Linq;
using NUnit.Framework;

namespace Ksdiff.Tests
{
    [TestFixture]
    [Category("LibZmq")]
    public class LifecycleTests : LibZmqFixture
    {
        KsdiffClient Client(FakeRuntime rt, Action<ClientOptions> configure = null)
        {
            var options = new ClientOptions
            {
                PubEndpoint = rt.PubEndpoint, RouterEndpoint = rt.RouterEndpoint,
                Transport = () => new LibZmqTransport(), HelloTimeoutS = 2.5,
            };
            if (configure != null) configure(options);
            var c = Keep(new KsdiffClient(options));
            c.Start();
            return c;
        }

        static void Handshake(FakeRuntime rt, KsdiffClient c, string instance)
        {
            rt.WaitSubscribed(Protocol.HelloTopic);
            rt.Publish(Protocol.HelloTopic, FakeRuntime.Hello(instance));
            Assert.IsTrue(Wait.Until(() => c.Status().Instance == instance, 10), "no hello reached the client");
        }

        static string Describe(Message m)
        {
            var a = m as Audio;
            if (a != null) return "audio " + a.Stream + " " + a.Seq + " @" + a.AtSample;
            var o = m as OpenStream;
            if (o != null) return "open_stream " + o.Stream;
            return m.Type.ToString();
        }

        // Counts the sends the DEALER refused (no connection, or its queue full).
        sealed class RefusalCounting : ITransport
        {
            readonly ITransport _inner = new LibZmqTransport();
            int _refused, _taken;
            public int Refused { get { return System.Threading.Volatile.Read(ref _refused); } }
            public int Taken { get { return System.Threading.Volatile.Read(ref _taken); } }
            public void Open(TransportOptions options) { _inner.Open(options); }
            public void Subscribe(string topic) { _inner.Subscribe(topic); }
            public void Unsubscribe(string topic) { _inner.Unsubscribe(topic); }
            public Readiness Wait(int timeoutMs) { return _inner.Wait(timeoutMs); }
            public bool TryReceivePublished(MessageBuffer topic, MessageBuffer payload, out int parts) { return _inner.TryReceivePublished(topic, payload, out parts); }
            public bool TryReceiveReply(MessageBuffer payload, out int parts) { return _inner.TryReceiveReply(payload, out parts); }
            public bool TrySend(byte[] payload)
            {
                bool ok = _inner.TrySend(payload);
                if (ok) System.Threading.Interlocked.Increment(ref _taken);
                else System.Threading.Interlocked.Increment(ref _refused);
                return ok;
            }
            public int TakeDisconnects() { return _inner.TakeDisconnects(); }
            public void Dispose() { _inner.Dispose(); }
        }

        [Test]
        public void AProbeThatTheTransportRefusesIsNotRetriedOnEveryPollWhileTheRuntimeIsAway()
        {
            // A hello left and its connection dropped: ProbeDue stays true once it is 1 s old. While
            // the runtime is away every TrySend fails; each worker turn (5 ms) builds a hello and
            // takes a req for it. Observable as the gap between two reqs the game takes 0.5 s apart.
            var rt = new FakeRuntime();
            rt.AnswerHellos = false;
            var counting = new RefusalCounting();
            KsdiffClient c = Client(rt, o => { o.RequestTimeoutS = 30; o.Transport = () => counting; });
            Handshake(rt, c, "A");
            PendingRequest hello = c.RequestHello();
            Assert.AreEqual(hello.Req, ((Hello)new Decoder().Decode(rt.Receive().Value)).Req);
            rt.Dispose(); // the connection drops; nothing listens any more
            var watch = Stopwatch.StartNew();
            int refusedBefore = counting.Refused;
            // The hello is > 1 s unanswered from 1 s on: 0.5 s of a probe due with nothing taking it.
            Assert.IsTrue(Wait.Until(() => watch.Elapsed.TotalSeconds > 1.5, 10));
            ulong first = hello.Req;
            ulong second = c.RequestHello().Req;
            Console.WriteLine("reqs taken by probe attempts: " + (second - first - 1) + "; sends refused " + (counting.Refused - refusedBefore));
            Assert.IsTrue(second - first < 10, "reqs taken by probe attempts in 0.5 s: " + (second - first - 1));
        }

        [Test]
        public void AStopAndStartDuringABusysWindowStartsTheNewConnectionAfresh()
        {
            // The game disables and enables its component (Stop, Start) right after a busy. The new
            // connection owns nothing of the old one: its first message should be what the game asks
            // now, not copies of the old connection's line audio held back until the old window ends.
            var rt = Keep(new FakeRuntime());
            rt.AnswerHellos = false;
            KsdiffClient c = Client(rt, o => o.RequestTimeoutS = 30);
            Handshake(rt, c, "A");
            PendingRequest open = c.OpenStream(new OpenStream { Stream = "old", Mode = Protocol.ModeLine });
            var r = rt.Receive();
            rt.Reply(r.Key, FakeRuntime.StreamOpened("old", open.Req, 20, 300, Protocol.ModeLine));
            Assert.IsTrue(open.Wait(TimeSpan.FromSeconds(10)));
            var pcm = new byte[4000];
            c.SendAudio("old", 0, 0, pcm, 0, pcm.Length);
            var audio = rt.Receive();
            Assert.AreEqual("audio old 0 @0", Describe(new Decoder().Decode(audio.Value)));
            rt.Reply(audio.Key, FakeRuntime.Error("busy", null, null, null));
            Assert.IsTrue(Wait.Until(() => { var e = new List<ClientEvent>(); c.DrainEvents(e); return e.Any(x => x.Kind == ClientEventKind.Error); }, 10));
            c.Stop();
            c.Start();
            var watch = Stopwatch.StartNew();
            c.OpenStream(new OpenStream { Stream = "new" });
            // The new connection's messages, hellos left aside (the probes), in the order they came.
            string oldId = Convert.ToBase64String(audio.Key);
            Message first = null;
            var seen = new List<string>();
            while (first == null)
            {
                var r2 = rt.Receive();
                Message m = new Decoder().Decode(r2.Value);
                bool fromNew = Convert.ToBase64String(r2.Key) != oldId;
                seen.Add((fromNew ? "new " : "old ") + Describe(m) + " +" + watch.Elapsed.TotalSeconds.ToString("F2") + "s");
                if (fromNew && !(m is Hello)) first = m;
            }
            Console.WriteLine(string.Join(", ", seen));
            Assert.AreEqual("open_stream new", Describe(first), "the new connection's first message: " + string.Join(", ", seen));
            Assert.AreEqual(0UL, c.Status().Resent);
        }

        [Test]
        public void AStreamOpenedHereIsNotKeptOpenAcrossAStopAndStart()
        {
            // After Stop the connection that owned the stream is gone (SPEC 1, Ownership).
            var rt = Keep(new FakeRuntime());
            KsdiffClient c = Client(rt);
            Handshake(rt, c, "A");
            PendingRequest open = c.OpenStream(new OpenStream { Stream = "mic" });
            var r = rt.Receive();
            rt.Reply(r.Key, FakeRuntime.StreamOpened("mic", open.Req));
            Assert.IsTrue(open.Wait(TimeSpan.FromSeconds(10)));
            c.Stop();
            c.Start();
            StreamStatus s = c.Stream("mic");
            Assert.IsTrue(s.Ended || s.EndReason != null, "still open here after Stop/Start: ended=" + s.Ended + " reason=" + s.EndReason);
        }

        // A libzmq transport that, once told, reports one dropped connection.
        sealed class DropReporting : ITransport
        {
            readonly ITransport _inner = new LibZmqTransport();
            public volatile bool ReportDrop;
            public void Open(TransportOptions options) { _inner.Open(options); }
            public void Subscribe(string topic) { _inner.Subscribe(topic); }
            public void Unsubscribe(string topic) { _inner.Unsubscribe(topic); }
            public Readiness Wait(int timeoutMs) { return _inner.Wait(timeoutMs); }
            public bool TryReceivePublished(MessageBuffer topic, MessageBuffer payload, out int parts) { return _inner.TryReceivePublished(topic, payload, out parts); }
            public bool TryReceiveReply(MessageBuffer payload, out int parts) { return _inner.TryReceiveReply(payload, out parts); }
            public bool TrySend(byte[] payload) { return _inner.TrySend(payload); }
            public int TakeDisconnects()
            {
                int n = _inner.TakeDisconnects();
                if (ReportDrop) { ReportDrop = false; n++; }
                return n;
            }
            public void Dispose() { _inner.Dispose(); }
        }

        sealed class OnceSink : IFrameSink
        {
            readonly Action _action;
            int _calls;
            public OnceSink(Action action) { _action = action; }
            public void OnFrame(Frame frame, double arrivalS)
            {
                if (System.Threading.Interlocked.Increment(ref _calls) == 1) _action();
            }
        }

        [Test]
        public void AWorkerStoppedFromItsSinkLeavesTheAudioQueuedForTheNextRunAlone()
        {
            // A frame sink stops and starts the client and queues audio for the new run; the old
            // worker, still ending its turn, learns its (old) connection dropped. What it does then
            // (ConnectionDropped: DropAudio(0)) is for its own connection, not the next run's.
            var rt = Keep(new FakeRuntime());
            var first = new DropReporting();
            int made = 0;
            var queued = new System.Threading.ManualResetEventSlim();
            var pcm = new byte[640];
            KsdiffClient c = Client(rt, o => o.Transport = () => System.Threading.Interlocked.Increment(ref made) == 1 ? (ITransport)first : new LibZmqTransport());
            c.AddFrameSink(new OnceSink(() =>
            {
                c.Stop();
                c.Start();
                c.SendAudio("mic", 0, null, pcm, 0, pcm.Length);
                first.ReportDrop = true; // seen by the ending worker once this call returns
                queued.Set();
            }));
            rt.WaitSubscribed(Protocol.FrameTopic("npc1"));
            rt.Publish(Protocol.FrameTopic("npc1"), FakeRuntime.Frame("npc1", 0));
            Assert.IsTrue(queued.Wait(TimeSpan.FromSeconds(10)), "the sink got no frame");
            Audio audio = null;
            var watch = Stopwatch.StartNew();
            while (audio == null && watch.Elapsed.TotalSeconds < 3)
            {
                KeyValuePair<byte[], byte[]>? r = rt.TryReceive(0.05);
                if (r.HasValue) audio = new Decoder().Decode(r.Value.Value) as Audio;
            }
            Assert.IsNotNull(audio, "the audio queued for the new run never left; Unsent " + c.Status().Unsent);
        }
    }
}
