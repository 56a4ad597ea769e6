// The NetMQ transport: the same ITransport as LibZmqTransport (which CI tests), over NetMQ, the
// pure C# ZeroMQ that Unity projects install with NuGetForUnity (NetMQ >= 4.0.1.6).
//
// This assembly compiles only with the scripting define KSDIFF_NETMQ (its asmdef's define
// constraint), so the package compiles before NetMQ is installed. It registers itself with
// KsdiffTransports when it loads.
//
// NetMQ in Unity:
//   * AsyncIO.ForceDotNet.Force() before any socket: NetMQ's default I/O completion ports do not
//     work under Unity's Mono; this selects the managed implementation.
//   * NetMQConfig.Cleanup(false) on quit, leaving play mode and before a domain reload, after the
//     clients are stopped (KsdiffTransports.ShutdownAll), or the editor hangs.
//   * Never a blocking receive on the main thread: the client's worker thread receives with
//     TryReceive and a zero timeout after a bounded Select.
//   * The DEALER queues only on a live connection (DelayAttachOnConnect, ZMQ_IMMEDIATE) and its
//     dropped connections are read from NetMQ's socket monitor (ITransport.TakeDisconnects).
using System;
using System.Threading;
using NetMQ;
using NetMQ.Sockets;
using UnityEngine;

namespace Ksdiff.Unity
{
    public sealed class NetMQTransport : ITransport
    {
        static int s_monitors; // each monitor binds its own inproc endpoint

        SubscriberSocket _sub;
        DealerSocket _dealer;
        PairSocket _monitor;
        NetMQSelector _selector;
        NetMQSelector.Item[] _items;
        Msg _msg;

        public void Open(TransportOptions o)
        {
            try
            {
                _sub = new SubscriberSocket();
                _dealer = new DealerSocket();
                foreach (NetMQSocket s in new NetMQSocket[] { _sub, _dealer })
                {
                    s.Options.Linger = TimeSpan.Zero; // closing never waits for unsent messages
                    s.Options.ReconnectInterval = TimeSpan.FromMilliseconds(o.ReconnectIntervalMs);
                    s.Options.ReconnectIntervalMax = TimeSpan.FromMilliseconds(o.ReconnectIntervalMaxMs);
                    s.Options.HeartbeatInterval = TimeSpan.FromMilliseconds(o.HeartbeatIntervalMs);
                    s.Options.HeartbeatTimeout = TimeSpan.FromMilliseconds(o.HeartbeatTimeoutMs);
                    s.Options.MaxMsgSize = o.MaxMessageBytes;
                    if (o.Curve != null)
                    {
                        // A CURVE client: the server's public key and our own pair, before connecting.
                        s.Options.CurveServerKey = o.Curve.ServerPublicKeyBytes;
                        s.Options.CurveCertificate = new NetMQCertificate(o.Curve.ClientSecretKeyBytes, o.Curve.ClientPublicKeyBytes);
                    }
                }
                _sub.Options.ReceiveHighWatermark = o.ReceiveHighWatermark;
                // Queue only on a live connection: nothing stale is replayed to a new one (ITransport.TrySend).
                _dealer.Options.DelayAttachOnConnect = true;
                // The DEALER's dropped connections (ITransport.TakeDisconnects), watched before it
                // connects: NetMQ sends one message per event to a PAIR it binds at this endpoint.
                string monitor = "inproc://ksdiff-dealer-monitor-" + Interlocked.Increment(ref s_monitors);
                _dealer.Monitor(monitor, SocketEvents.Disconnected);
                _monitor = new PairSocket();
                _monitor.Options.Linger = TimeSpan.Zero;
                _monitor.Connect(monitor);
                foreach (string topic in o.Topics) _sub.Subscribe(topic);
                _sub.Connect(o.PubEndpoint);
                _dealer.Connect(o.RouterEndpoint);
                _selector = new NetMQSelector();
                _items = new[] { new NetMQSelector.Item(_sub, PollEvents.PollIn), new NetMQSelector.Item(_dealer, PollEvents.PollIn) };
                _msg = new Msg();
                _msg.InitEmpty();
            }
            catch
            {
                Dispose();
                throw;
            }
        }

        public void Subscribe(string topic) { _sub.Subscribe(topic); }
        public void Unsubscribe(string topic) { _sub.Unsubscribe(topic); }

        public Readiness Wait(int timeoutMs)
        {
            _selector.Select(_items, _items.Length, timeoutMs);
            Readiness r = Readiness.None;
            if ((_items[0].ResultEvent & PollEvents.PollIn) != 0) r |= Readiness.Published;
            if ((_items[1].ResultEvent & PollEvents.PollIn) != 0) r |= Readiness.Reply;
            return r;
        }

        public bool TryReceivePublished(MessageBuffer topic, MessageBuffer payload, out int parts)
        {
            parts = ReceiveMultipart(_sub, topic, payload);
            return parts > 0;
        }

        public bool TryReceiveReply(MessageBuffer payload, out int parts)
        {
            parts = ReceiveMultipart(_dealer, payload, null);
            return parts > 0;
        }

        public bool TrySend(byte[] payload)
        {
            return _dealer.TrySendFrame(TimeSpan.Zero, payload, payload.Length, false);
        }

        public int TakeDisconnects()
        {
            // Only disconnects are asked for: each message is one (its content is not needed; NetMQ
            // frees the weak GCHandle an event carries only when its own monitor class reads it, so
            // each dropped connection leaves one behind: a few bytes, once per reconnect).
            int n = 0;
            while (ReceiveMultipart(_monitor, null, null) > 0) n++;
            return n;
        }

        // The first frames into `first` and `second` (the rest read and dropped); 0 when none waits.
        int ReceiveMultipart(NetMQSocket socket, MessageBuffer first, MessageBuffer second)
        {
            if (!socket.TryReceive(ref _msg, TimeSpan.Zero)) return 0;
            int n = 1;
            bool more = Copy(first);
            while (more)
            {
                // The rest of a multipart message is already here (ZeroMQ delivers all parts or none).
                if (!socket.TryReceive(ref _msg, TimeSpan.FromSeconds(1))) break;
                more = Copy(n == 1 ? second : null);
                n++;
            }
            return n;
        }

        bool Copy(MessageBuffer into)
        {
            if (into != null)
            {
                into.Ensure(_msg.Size);
                if (_msg.Size > 0) Buffer.BlockCopy(_msg.Data, _msg.Offset, into.Data, 0, _msg.Size);
                into.Length = _msg.Size;
            }
            bool more = _msg.HasMore;
            _msg.Close();
            _msg.InitEmpty();
            return more;
        }

        public void Dispose()
        {
            if (_monitor != null) { _monitor.Dispose(); _monitor = null; }
            if (_sub != null) { _sub.Dispose(); _sub = null; }
            if (_dealer != null) { _dealer.Dispose(); _dealer = null; }
            if (_msg.IsInitialised) _msg.Close();
        }
    }

    static class NetMQRegistration
    {
        // At load, on the main thread: before any socket exists (see the file's comment).
        static void Register()
        {
            AsyncIO.ForceDotNet.Force();
            KsdiffTransports.RegisterNetMQ(() => new NetMQTransport(), () => NetMQConfig.Cleanup(false));
        }

        [RuntimeInitializeOnLoadMethod(RuntimeInitializeLoadType.SubsystemRegistration)]
        static void InitPlayer() { Register(); }

#if UNITY_EDITOR
        [UnityEditor.InitializeOnLoadMethod]
        static void InitEditor() { Register(); }
#endif
    }
}
