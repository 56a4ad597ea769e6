// The transport: the two ZeroMQ sockets a client needs (SUB to the runtime's PUB, DEALER to its
// ROUTER, SPEC 1) behind one interface, so the client logic is the same over NetMQ (Unity) and
// libzmq through P/Invoke (CI, or desktop players that ship libzmq).
//
// ZeroMQ sockets are not thread-safe: a transport is created, used and disposed on one thread,
// the client's worker thread. Nothing here may block longer than Wait's timeout, so the worker
// notices a stop request promptly (a blocking receive would freeze the Unity editor).
using System;
using System.Collections.Generic;

namespace Ksdiff
{
    public sealed class TransportOptions
    {
        public string PubEndpoint = Protocol.DefaultPubEndpoint;
        public string RouterEndpoint = Protocol.DefaultRouterEndpoint;
        // Subscribed before connecting (SPEC 9.2), so nothing published after the connection is missed.
        public readonly List<string> Topics = new List<string>();
        public CurveKeys Curve;                    // null: plain TCP (a runtime on loopback)
        public int ReceiveHighWatermark = 10000;   // ZMQ_RCVHWM (SPEC 1: at least 1000)
        public int ReconnectIntervalMs = 100;      // ZMQ_RECONNECT_IVL: back soon after a runtime restart
        public int ReconnectIntervalMaxMs = 1000;  // ZMQ_RECONNECT_IVL_MAX
        public int HeartbeatIntervalMs = 1000;     // ZMTP pings notice a vanished remote host
        public int HeartbeatTimeoutMs = 3000;
        public long MaxMessageBytes = Protocol.SocketMaxMessageBytes; // ZMQ_MAXMSGSIZE
    }

    [Flags]
    public enum Readiness { None = 0, Published = 1, Reply = 2 }

    // A reusable receive buffer: grows to the largest message seen, then never allocates again.
    public sealed class MessageBuffer
    {
        public byte[] Data = new byte[2048];
        public int Length;

        public void Ensure(int size)
        {
            if (Data.Length >= size) return;
            int n = Data.Length;
            while (n < size) n *= 2;
            Data = new byte[n];
        }
    }

    public interface ITransport : IDisposable
    {
        // Creates the sockets, subscribes options.Topics and connects both. Connecting is
        // asynchronous (ZeroMQ retries until the runtime is there); a bad endpoint throws.
        void Open(TransportOptions options);
        void Subscribe(string topic);
        void Unsubscribe(string topic);
        // Waits at most `timeoutMs` for a message on either socket.
        Readiness Wait(int timeoutMs);
        // One whole PUB message if one is waiting: its first two frames copied into `topic` and
        // `payload`, `parts` = how many frames it had (2 for a valid one). False when none waits.
        bool TryReceivePublished(MessageBuffer topic, MessageBuffer payload, out int parts);
        // One whole reply on the DEALER, if one is waiting (1 frame for a valid one).
        bool TryReceiveReply(MessageBuffer payload, out int parts);
        // Queues one single-frame message on the DEALER without blocking; false when ZeroMQ's
        // send queue is full or there is no connection (retry later). The DEALER queues only on a
        // connection that is up (ZMQ_IMMEDIATE): ZeroMQ would otherwise keep up to its high
        // watermark of messages for an absent runtime and replay them, stale, on the next
        // connection, where the runtime refuses them (SPEC 1, Ownership). What the DEALER does
        // not take waits in the client's outbox, which is bounded.
        bool TrySend(byte[] payload);
        // How many times the DEALER's connection to the runtime dropped since the last call
        // (ZeroMQ's socket monitor; 0 almost always). ZeroMQ reconnects by itself, but the new
        // connection has another routing id and the runtime keeps each stream for the connection
        // that opened it (SPEC 1, Ownership): the client counts every stream it opened as lost.
        int TakeDisconnects();
    }

    public sealed class TransportException : Exception
    {
        public TransportException(string message) : base(message) { }
    }
}
