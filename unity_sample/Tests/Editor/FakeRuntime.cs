// A stand-in runtime on loopback for the client tests: an XPUB (it reports each subscription it
// receives, so a test waits for the client's subscription instead of sleeping) and a ROUTER,
// through the libzmq P/Invoke binding. Plus encoders for the runtime's messages.
using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.Text;
using System.Threading;
using NUnit.Framework;

namespace Ksdiff.Tests
{
    public sealed class FakeRuntime : IDisposable
    {
        readonly ZmqContext _context;
        ZmqSocket _pub, _router;
        readonly MessageBuffer[] _parts = { new MessageBuffer(), new MessageBuffer() };
        readonly MessageBuffer _overflow = new MessageBuffer();
        readonly HashSet<string> _subscriptions = new HashSet<string>();

        public string PubEndpoint { get; private set; }
        public string RouterEndpoint { get; private set; }

        // Every hello request received is answered at once (with no instance: it is no restart), as
        // the runtime does, and still handed to the test: the client sends hellos of its own after a
        // line's messages (a line's next message leaves once a request sent after its previous one
        // is answered). Off for a test that plays a runtime dropping requests unread.
        public bool AnswerHellos = true;

        // Binds free ports (or the given endpoints: a runtime coming back on the same ports).
        public FakeRuntime(string pub = "tcp://127.0.0.1:*", string router = "tcp://127.0.0.1:*", CurveKeysForServer curve = null)
        {
            _context = new ZmqContext();
            _pub = new ZmqSocket(_context, LibZmq.XPUB);
            _pub.Set(LibZmq.XPUB_VERBOSE, 1);
            _router = new ZmqSocket(_context, LibZmq.ROUTER);
            if (curve != null)
            {
                foreach (ZmqSocket s in new[] { _pub, _router })
                {
                    s.Set(LibZmq.CURVE_SERVER, 1);
                    s.Set(LibZmq.CURVE_SECRETKEY, Z85.Decode(curve.SecretKey));
                }
            }
            _pub.Bind(pub);
            _router.Bind(router);
            PubEndpoint = _pub.LastEndpoint();
            RouterEndpoint = _router.LastEndpoint();
        }

        // Skips the test (rather than failing it) where libzmq is not installed.
        public static void RequireLibZmq()
        {
            try
            {
                LibZmq.Version();
            }
            catch (DllNotFoundException e)
            {
                Assert.Ignore("libzmq not found (Debian: libzmq5): " + e.Message);
            }
        }

        // Waits until a subscriber's subscription to a topic starting with `prefix` has arrived.
        public void WaitSubscribed(string prefix, double timeoutS = 10)
        {
            var watch = Stopwatch.StartNew();
            var poller = new LibZmq.Poller(_pub);
            var ready = new bool[1];
            while (!Subscribed(prefix))
            {
                if (watch.Elapsed.TotalSeconds > timeoutS) Assert.Fail("no subscription to '" + prefix + "' within " + timeoutS + " s");
                if (!poller.Poll(50, ready) || !ready[0]) continue;
                bool more;
                while (_pub.Receive(_parts[0], out more))
                {
                    if (_parts[0].Length > 0 && _parts[0].Data[0] == 1)
                        _subscriptions.Add(Encoding.ASCII.GetString(_parts[0].Data, 1, _parts[0].Length - 1));
                }
            }
        }

        bool Subscribed(string prefix)
        {
            foreach (string s in _subscriptions)
            {
                if (prefix.StartsWith(s, StringComparison.Ordinal)) return true;
            }
            return false;
        }

        public void Publish(string topic, byte[] payload)
        {
            byte[] t = Encoding.ASCII.GetBytes(topic);
            _pub.Send(t, t.Length, true, false);
            _pub.Send(payload, payload.Length, false, false);
        }

        public void PublishRaw(params byte[][] parts)
        {
            for (int i = 0; i < parts.Length; i++) _pub.Send(parts[i], parts[i].Length, i + 1 < parts.Length, false);
        }

        // The next request: (the DEALER's routing id, the payload), within the timeout.
        public KeyValuePair<byte[], byte[]> Receive(double timeoutS = 10)
        {
            KeyValuePair<byte[], byte[]>? r = TryReceive(timeoutS);
            if (!r.HasValue) Assert.Fail("no request within " + timeoutS + " s");
            return r.Value;
        }

        public KeyValuePair<byte[], byte[]>? TryReceive(double timeoutS)
        {
            var watch = Stopwatch.StartNew();
            var poller = new LibZmq.Poller(_router);
            var ready = new bool[1];
            do
            {
                if (!poller.Poll(Math.Max(1, Math.Min(50, (int)(timeoutS * 1000))), ready) || !ready[0]) continue;
                int n = _router.ReceiveMultipart(_parts, _overflow);
                if (n != 2) Assert.Fail("a request of " + n + " frames");
                var request = new KeyValuePair<byte[], byte[]>(Copy(_parts[0]), Copy(_parts[1]));
                if (AnswerHellos) AnswerHello(request);
                return request;
            } while (watch.Elapsed.TotalSeconds < timeoutS);
            return null;
        }

        public void Reply(byte[] identity, byte[] payload)
        {
            _router.Send(identity, identity.Length, true, false);
            _router.Send(payload, payload.Length, false, false);
        }

        void AnswerHello(KeyValuePair<byte[], byte[]> request)
        {
            if (request.Value.Length > 64) return; // not a hello request ({v, type, req}): left undecoded, audio above all
            Message m;
            try
            {
                m = new Decoder().Decode(request.Value);
            }
            catch (ProtocolException)
            {
                return; // not a request of this protocol: the test looks at it
            }
            var hello = m as Hello;
            if (hello != null && hello.Req.HasValue) Reply(request.Key, Hello(null, hello.Req));
        }

        static byte[] Copy(MessageBuffer b)
        {
            var c = new byte[b.Length];
            Array.Copy(b.Data, c, b.Length);
            return c;
        }

        public void Dispose()
        {
            if (_pub != null) { _pub.Dispose(); _pub = null; }
            if (_router != null) { _router.Dispose(); _router = null; }
            _context.Dispose();
        }

        // --- the runtime's messages ------------------------------------------------------------

        public static byte[] Hello(string instance, ulong? req = null)
        {
            Payload p = Payload.Of("hello")
                .Set("runtime", Payload.Str("0.1.0-fake")).Set("fps", Payload.UInt(30)).Set("sample_rate", Payload.UInt(16000))
                .Set("blendshapes", StrArray(Protocol.BlendshapeNames)).Set("head", StrArray(Protocol.HeadNames))
                .Set("head_units", Payload.Str("rad")).Set("head_convention", Payload.Str("ARKit face frame"))
                .Set("gaze", StrArray(Protocol.GazeNames)).Set("gaze_units", Payload.Str("rad"))
                .Set("gaze_convention", Payload.Str("per eye")).Set("max_message_bytes", Payload.UInt(Protocol.MaxMessageBytes));
            if (instance != null) p.Set("instance", Payload.Str(instance));
            if (req.HasValue) p.Set("req", Payload.UInt(req.Value));
            return p.Build();
        }

        public static byte[] Frame(string stream, ulong seq, float jaw = 0f, bool last = false, long? latencyMs = 100)
        {
            Payload p = Payload.Frame(stream, seq, jaw, last).Set("published_ns", Payload.Int(5000000000L + (long)seq * 33333333L));
            p.Set("captured_ns", latencyMs.HasValue ? Payload.Int(5000000000L + (long)seq * 33333333L - latencyMs.Value * 1000000L) : Payload.Nil());
            return p.Build();
        }

        public static byte[] StreamStart(string stream, string source = "sdk")
        {
            return Payload.Of("stream_start").Set("stream", Payload.Str(stream)).Set("source", Payload.Str(source))
                .Set("published_ns", Payload.UInt(1)).Build();
        }

        public static byte[] StreamEnd(string stream, string reason, ulong frames, string source = "sdk")
        {
            return Payload.Of("stream_end").Set("stream", Payload.Str(stream)).Set("source", Payload.Str(source))
                .Set("reason", Payload.Str(reason)).Set("frames", Payload.UInt(frames)).Set("published_ns", Payload.UInt(2)).Build();
        }

        public static byte[] Stats(string stream, double p95)
        {
            return Payload.Of("stats").Set("uptime_s", Payload.F64(1)).Set("drops", Payload.UInt(0)).Set("published_ns", Payload.UInt(3))
                .Set("streams", w =>
                {
                    w.MapHeader(1);
                    w.Str(stream);
                    w.MapHeader(6);
                    w.Str("fps"); w.Float64(30);
                    w.Str("latency_p50_ms"); w.Float64(p95 / 2);
                    w.Str("latency_p95_ms"); w.Float64(p95);
                    w.Str("frames"); w.UInt(10);
                    w.Str("drops"); w.UInt(0);
                    w.Str("source"); w.Str("sdk");
                }).Build();
        }

        // maxAheadS: protocol 1.1's limit on audio pushed ahead of real time (null: a 1.0 runtime);
        // latencyMs, mode: protocol 1.2's stated latency and the stream's mode (null: a 1.1 runtime).
        public static byte[] StreamOpened(string stream, ulong req, double? maxAheadS = null, double? latencyMs = null, string mode = null)
        {
            Payload p = Payload.Of("stream_opened").Set("stream", Payload.Str(stream)).Set("fps", Payload.UInt(30)).Set("req", Payload.UInt(req));
            if (maxAheadS.HasValue) p.Set("max_ahead_s", Payload.F64(maxAheadS.Value));
            if (mode != null) p.Set("mode", Payload.Str(mode));
            if (latencyMs.HasValue) p.Set("latency_ms", Payload.F64(latencyMs.Value));
            return p.Build();
        }

        public static byte[] StreamEnded(string stream, ulong frames, ulong req)
        {
            return Payload.Of("stream_ended").Set("stream", Payload.Str(stream)).Set("frames", Payload.UInt(frames)).Set("req", Payload.UInt(req)).Build();
        }

        public static byte[] Error(string code, string requestType, string stream, ulong? req)
        {
            Payload p = Payload.Of("error").Set("code", Payload.Str(code)).Set("message", Payload.Str("refused: " + code))
                .Set("request_type", requestType == null ? Payload.Nil() : Payload.Str(requestType));
            if (stream != null) p.Set("stream", Payload.Str(stream));
            if (req.HasValue) p.Set("req", Payload.UInt(req.Value));
            return p.Build();
        }

        static Action<MsgPackWriter> StrArray(string[] items)
        {
            return w =>
            {
                w.ArrayHeader(items.Length);
                foreach (string s in items) w.Str(s);
            };
        }
    }

    // A server key pair for the CURVE tests.
    public sealed class CurveKeysForServer
    {
        public string PublicKey, SecretKey;
    }

    public static class Wait
    {
        // Polls `condition` until it holds or the deadline passes: waiting on an outcome with a
        // deadline, not sleeping to synchronise.
        public static bool Until(Func<bool> condition, double timeoutS)
        {
            var watch = Stopwatch.StartNew();
            while (!condition())
            {
                if (watch.Elapsed.TotalSeconds > timeoutS) return false;
                Thread.Sleep(2);
            }
            return true;
        }
    }
}
