// No allocation per frame: the decoder alone, and the client's whole receive path (topic check,
// decode, drop accounting, jitter buffer, sinks) measured on its own worker thread through an
// in-memory transport. GC.GetAllocatedBytesForCurrentThread counts every managed allocation of
// the calling thread (Mono implements it; a positive control below proves it sees them).
using System;
using System.Collections.Generic;
using System.Text;
using System.Threading;
using NUnit.Framework;

namespace Ksdiff.Tests
{
    [TestFixture]
    public class AllocationTests
    {
        [Test]
        public void TheMeasureSeesAllocations()
        {
            Assert.GreaterOrEqual(Allocations.Measure(() => GC.KeepAlive(new byte[100]), 10), 1000);
        }

        [Test]
        public void DecodingFramesAllocatesNothing()
        {
            var decoder = new Decoder();
            byte[] golden = Golden.Bytes("frame");
            byte[] future = Golden.Bytes("frame_future_minor"); // unknown keys skipped, no strings made
            Assert.AreEqual(0L, Allocations.Measure(() => decoder.Decode(golden, 0, golden.Length), 10000));
            Assert.AreEqual(0L, Allocations.Measure(() => decoder.Decode(future, 0, future.Length), 10000));
        }

        [Test]
        public void SamplingTheJitterBufferAllocatesNothing()
        {
            var jb = new JitterBuffer();
            var f = new Frame { Stream = "s", Fps = 30 };
            var pose = new Pose();
            int i = 0;
            double t;
            Action step = () =>
            {
                f.Index = (ulong)i;
                f.TAudio = i / 30.0;
                jb.Push(f, i / 30.0);
                jb.Sample("s", i / 30.0 + 0.01, pose, out t);
                i++;
            };
            for (int k = 0; k < 600; k++) step(); // fills the pose pool
            Assert.AreEqual(0L, Allocations.Measure(step, 5000));
        }

        [Test]
        public void TheClientsReceivePathAllocatesNothingPerFrame()
        {
            // The warm-up fills the jitter buffer's pose pool: these frames come far faster than
            // real time, so none is past and the stream holds up to its bound (MaxLineFrames).
            const int warmup = JitterBuffer.MaxLineFrames + 500, measured = 3000;
            var transport = new ScriptedTransport();
            for (int i = 0; i < warmup + measured + 1; i++)
                transport.Published.Enqueue(new KeyValuePair<string, byte[]>(Protocol.FrameTopic("npc1"), Payload.Frame("npc1", (ulong)i, 0.5f).Build()));
            transport.MeasureAt(warmup, warmup + measured);
            var sink = new CountingSink();
            using (var client = new KsdiffClient(new ClientOptions { Transport = () => transport, PollIntervalMs = 1 }))
            {
                client.AddFrameSink(sink);
                client.Start();
                Assert.IsTrue(transport.Measured.WaitOne(TimeSpan.FromSeconds(30)), "the frames were not consumed");
                Assert.IsTrue(Wait.Until(() => client.Status().Frames >= warmup + measured, 10));
                Assert.AreEqual(0UL, client.Status().BadMessages, client.Status().LastError);
            }
            Assert.GreaterOrEqual(sink.Count, warmup + measured);
            Assert.AreEqual(0L, transport.AllocatedBytes, "bytes allocated on the worker over " + measured + " frames");
        }

        sealed class CountingSink : IFrameSink
        {
            public int Count;
            public void OnFrame(Frame frame, double arrivalS) { Count++; }
        }
    }

    // An in-memory transport: serves queued PUB messages and replies, records what is sent, or
    // takes nothing while Full (ZeroMQ's send queue full, or no connection). It also reads the
    // worker thread's allocation counter when it serves message `from` and message `to`.
    public sealed class ScriptedTransport : ITransport
    {
        public readonly Queue<KeyValuePair<string, byte[]>> Published = new Queue<KeyValuePair<string, byte[]>>();
        public readonly Queue<byte[]> Replies = new Queue<byte[]>();
        public readonly List<byte[]> Sent = new List<byte[]>();
        public volatile bool Full;
        public readonly ManualResetEvent Measured = new ManualResetEvent(false);
        public long AllocatedBytes = -1;
        int _served, _from = -1, _to = -1;
        long _start;
        readonly object _lock = new object();

        public void MeasureAt(int from, int to)
        {
            _from = from;
            _to = to;
        }

        public void Open(TransportOptions options) { }
        public void Subscribe(string topic) { }
        public void Unsubscribe(string topic) { }

        public Readiness Wait(int timeoutMs)
        {
            lock (_lock)
            {
                if (Published.Count > 0) return Readiness.Published;
                if (Replies.Count > 0) return Readiness.Reply;
            }
            Thread.Sleep(Math.Min(timeoutMs, 1));
            return Readiness.None;
        }

        public bool TryReceivePublished(MessageBuffer topic, MessageBuffer payload, out int parts)
        {
            parts = 0;
            KeyValuePair<string, byte[]> next;
            lock (_lock)
            {
                if (_served == _from) _start = GC.GetAllocatedBytesForCurrentThread();
                if (_served == _to)
                {
                    AllocatedBytes = GC.GetAllocatedBytesForCurrentThread() - _start;
                    Measured.Set();
                }
                if (Published.Count == 0) return false;
                next = Published.Dequeue();
                _served++;
            }
            // Topics are ASCII: copied byte by byte, no encoder buffers.
            topic.Ensure(next.Key.Length);
            for (int i = 0; i < next.Key.Length; i++) topic.Data[i] = (byte)next.Key[i];
            topic.Length = next.Key.Length;
            payload.Ensure(next.Value.Length);
            Buffer.BlockCopy(next.Value, 0, payload.Data, 0, next.Value.Length);
            payload.Length = next.Value.Length;
            parts = 2;
            return true;
        }

        public bool TryReceiveReply(MessageBuffer payload, out int parts)
        {
            parts = 0;
            byte[] next;
            lock (_lock)
            {
                if (Replies.Count == 0) return false;
                next = Replies.Dequeue();
            }
            payload.Ensure(next.Length);
            Buffer.BlockCopy(next, 0, payload.Data, 0, next.Length);
            payload.Length = next.Length;
            parts = 1;
            return true;
        }

        public bool TrySend(byte[] payload)
        {
            if (Full) return false;
            lock (_lock) Sent.Add(payload);
            return true;
        }

        public void Reply(byte[] payload)
        {
            lock (_lock) Replies.Enqueue(payload);
        }

        // The messages sent so far, decoded.
        public List<Message> SentMessages()
        {
            lock (_lock) return Sent.ConvertAll(b => new Decoder().Decode(b));
        }

        public int TakeDisconnects() { return 0; }

        public void Dispose() { }
    }
}
