// A compile-only stand-in of the part of NetMQ's API that Runtime/NetMQ uses, written from NetMQ's
// source (github.com/zeromq/netmq, src/NetMQ/, master at 1ab9ad07, June 2025; the NuGet package
// 4.0.1.x that NuGetForUnity installs has the same members). Never run: every body is `throw null`.
// Only what the package uses, with NetMQ's names, kinds, signatures and base classes; the
// overloads that take part in resolving the package's calls are included.
using System;

namespace NetMQ
{
    // PollEvents.cs: [Flags] enum PollEvents { None, PollIn, PollOut, PollError }.
    [Flags]
    public enum PollEvents
    {
        None = 0x0,
        PollIn = 0x1,
        PollOut = 0x2,
        PollError = 0x4,
    }

    // SocketEvents.cs: [Flags] enum SocketEvents.
    [Flags]
    public enum SocketEvents
    {
        Connected = 1,
        ConnectDelayed = 2,
        ConnectRetried = 4,
        Listening = 8,
        BindFailed = 16,
        Accepted = 32,
        AcceptFailed = 64,
        Closed = 128,
        CloseFailed = 256,
        Disconnected = 512,
        All = Connected | ConnectDelayed | ConnectRetried | Listening | BindFailed | Accepted | AcceptFailed | Closed | CloseFailed | Disconnected,
    }

    // Msg.cs: struct Msg; int Size; int Offset; byte[] Data; bool HasMore; bool IsInitialised; InitEmpty(); Close().
    public struct Msg
    {
        public int Size => throw null;
        public int Offset => throw null;
        public byte[] Data => throw null;
        public bool HasMore => throw null;
        public bool IsInitialised => throw null;
        public void InitEmpty() => throw null;
        public void Close() => throw null;
    }

    // NetMQCertificate.cs: class NetMQCertificate; (), (byte[] secretKey, byte[] publicKey), (string secretKey, string publicKey).
    public class NetMQCertificate
    {
        public NetMQCertificate() => throw null;
        public NetMQCertificate(byte[] secretKey, byte[] publicKey) => throw null;
        public NetMQCertificate(string secretKey, string publicKey) => throw null;
    }

    // SocketOptions.cs: class SocketOptions; the properties below, with their types.
    public class SocketOptions
    {
        public TimeSpan Linger { get => throw null; set => throw null; }
        public TimeSpan ReconnectInterval { get => throw null; set => throw null; }
        public TimeSpan ReconnectIntervalMax { get => throw null; set => throw null; }
        public long MaxMsgSize { get => throw null; set => throw null; }
        public int ReceiveHighWatermark { get => throw null; set => throw null; }
        public bool DelayAttachOnConnect { get => throw null; set => throw null; }
        public NetMQCertificate CurveCertificate { get => throw null; set => throw null; }
        public byte[] CurveServerKey { get => throw null; set => throw null; }
        public TimeSpan HeartbeatInterval { get => throw null; set => throw null; }
        public TimeSpan HeartbeatTimeout { get => throw null; set => throw null; }
    }

    // IOutgoingSocket.cs: interface IOutgoingSocket { bool TrySend(ref Msg msg, TimeSpan timeout, bool more); }
    public interface IOutgoingSocket
    {
        bool TrySend(ref Msg msg, TimeSpan timeout, bool more);
    }

    // IReceivingSocket.cs: interface IReceivingSocket { bool TryReceive(ref Msg msg, TimeSpan timeout); }
    public interface IReceivingSocket
    {
        bool TryReceive(ref Msg msg, TimeSpan timeout);
    }

    // INetMQSocket.cs: interface INetMQSocket : IOutgoingSocket, IReceivingSocket, ISocketPollable, IDisposable.
    public interface INetMQSocket : IOutgoingSocket, IReceivingSocket, ISocketPollable, IDisposable
    {
    }

    // ISocketPollable.cs: interface ISocketPollable { NetMQSocket Socket { get; } bool IsDisposed { get; } }
    public interface ISocketPollable
    {
        NetMQSocket Socket { get; }
        bool IsDisposed { get; }
    }

    // NetMQSocket.cs: abstract class NetMQSocket : INetMQSocket (constructors internal); Options; Connect(string address);
    // virtual TryReceive/TrySend; Monitor(string endpoint, SocketEvents events = SocketEvents.All); Dispose().
    public abstract class NetMQSocket : INetMQSocket
    {
        internal NetMQSocket() => throw null;
        public SocketOptions Options => throw null;
        public void Connect(string address) => throw null;
        public virtual bool TryReceive(ref Msg msg, TimeSpan timeout) => throw null;
        public virtual bool TrySend(ref Msg msg, TimeSpan timeout, bool more) => throw null;
        public void Monitor(string endpoint, SocketEvents events = SocketEvents.All) => throw null;
        public bool IsDisposed => throw null;
        NetMQSocket ISocketPollable.Socket => throw null;
        public void Dispose() => throw null;
    }

    // OutgoingSocketExtensions.cs: static class; the byte[] TrySendFrame overloads.
    public static class OutgoingSocketExtensions
    {
        public static bool TrySendFrame(this IOutgoingSocket socket, TimeSpan timeout, byte[] data, int length, bool more = false) => throw null;
        public static bool TrySendFrame(this IOutgoingSocket socket, TimeSpan timeout, byte[] data, bool more = false) => throw null;
        public static bool TrySendFrame(this IOutgoingSocket socket, byte[] data, bool more = false) => throw null;
        public static bool TrySendFrame(this IOutgoingSocket socket, byte[] data, int length, bool more = false) => throw null;
    }

    // NetMQSelector.cs: sealed class NetMQSelector; nested sealed class Item (NetMQSocket socket, PollEvents @event) with
    // PollEvents ResultEvent { get; set; }; bool Select(Item[] items, int itemsCount, long timeout).
    public sealed class NetMQSelector
    {
        public sealed class Item
        {
            public Item(NetMQSocket socket, PollEvents @event) => throw null;
            public NetMQSocket Socket => throw null;
            public PollEvents Event => throw null;
            public PollEvents ResultEvent { get => throw null; set => throw null; }
        }

        public bool Select(Item[] items, int itemsCount, long timeout) => throw null;
    }

    // NetMQConfig.cs: static class NetMQConfig; static void Cleanup(bool block = true).
    public static class NetMQConfig
    {
        public static void Cleanup(bool block = true) => throw null;
    }
}

namespace NetMQ.Sockets
{
    // Sockets/SubscriberSocket.cs: class SubscriberSocket : NetMQSocket; (string? connectionString = null);
    // virtual Subscribe(string topic), Unsubscribe(string topic) (and their byte[] overloads).
    public class SubscriberSocket : NetMQSocket
    {
        public SubscriberSocket(string connectionString = null) => throw null;
        public virtual void Subscribe(string topic) => throw null;
        public virtual void Subscribe(byte[] topic) => throw null;
        public virtual void Unsubscribe(string topic) => throw null;
        public virtual void Unsubscribe(byte[] topic) => throw null;
    }

    // Sockets/DealerSocket.cs: class DealerSocket : NetMQSocket; (string? connectionString = null).
    public class DealerSocket : NetMQSocket
    {
        public DealerSocket(string connectionString = null) => throw null;
    }

    // Sockets/PairSocket.cs: class PairSocket : NetMQSocket; (string? connectionString = null).
    public class PairSocket : NetMQSocket
    {
        public PairSocket(string connectionString = null) => throw null;
    }
}
