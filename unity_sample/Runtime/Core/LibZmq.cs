// libzmq through P/Invoke: a thin socket wrapper and the ITransport built on it.
//
// This is the transport CI runs (Debian's libzmq5; NetMQ cannot be fetched there) and one a
// desktop build can use when it ships libzmq. Unity projects normally use the NetMQ transport
// (Runtime/NetMQ), which needs no native library. Both implement the same ITransport, so the
// client logic under test is the one Unity runs.
//
// Library name: "libzmq". Mono maps it to libzmq.so.5 through Ksdiff.Core.dll.config (Debian has
// no unversioned libzmq.so without the -dev package); Windows looks for libzmq.dll.
//
// In Unity it is compiled for the editor and desktop players only: mobile and console players
// cannot load a native libzmq this way (use NetMQ there). Outside Unity (CI) it is always compiled.
#if !UNITY_5_3_OR_NEWER || UNITY_EDITOR || UNITY_STANDALONE
using System;
using System.Runtime.InteropServices;
using System.Text;
using System.Threading;

namespace Ksdiff
{
    public static class LibZmq
    {
        const string Lib = "libzmq";

        public const int PAIR = 0, PUB = 1, SUB = 2, DEALER = 5, ROUTER = 6, XPUB = 9;
        public const int SUBSCRIBE = 6, UNSUBSCRIBE = 7, LINGER = 17, RECONNECT_IVL = 18,
            RECONNECT_IVL_MAX = 21, MAXMSGSIZE = 22, SNDHWM = 23, RCVHWM = 24, LAST_ENDPOINT = 32,
            IMMEDIATE = 39, XPUB_VERBOSE = 40, CURVE_SERVER = 47, CURVE_PUBLICKEY = 48, CURVE_SECRETKEY = 49,
            CURVE_SERVERKEY = 50, HEARTBEAT_IVL = 75, HEARTBEAT_TIMEOUT = 77;
        public const int EVENT_DISCONNECTED = 0x0200; // zmq_socket_monitor's event: a connection dropped
        public const int DONTWAIT = 1, SNDMORE = 2;
        public const short POLLIN = 1;
        public const int EINTR = 4;
        public const int ETERM = 156384765;
        // EAGAIN is 11 on Linux and Windows (libzmq's own errno values there), 35 on macOS.
        public static readonly int EAGAIN = IsMac() ? 35 : 11;

        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern IntPtr zmq_ctx_new();
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern int zmq_ctx_term(IntPtr context);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern IntPtr zmq_socket(IntPtr context, int type);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern int zmq_close(IntPtr socket);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern int zmq_setsockopt(IntPtr socket, int option, byte[] value, UIntPtr length);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern int zmq_getsockopt(IntPtr socket, int option, byte[] value, ref UIntPtr length);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern int zmq_bind(IntPtr socket, [MarshalAs(UnmanagedType.LPStr)] string endpoint);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern int zmq_connect(IntPtr socket, [MarshalAs(UnmanagedType.LPStr)] string endpoint);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern int zmq_socket_monitor(IntPtr socket, [MarshalAs(UnmanagedType.LPStr)] string endpoint, int events);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern int zmq_send(IntPtr socket, byte[] buffer, UIntPtr length, int flags);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern int zmq_msg_init(IntPtr msg);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern int zmq_msg_recv(IntPtr msg, IntPtr socket, int flags);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern IntPtr zmq_msg_data(IntPtr msg);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern UIntPtr zmq_msg_size(IntPtr msg);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern int zmq_msg_more(IntPtr msg);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern int zmq_msg_close(IntPtr msg);
        // `timeout` is a C long: pointer-sized on Linux/macOS; on 64-bit Windows a 32-bit long
        // is read from the low half of the same register.
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] static extern int zmq_poll([In, Out] PollItemUnix[] items, int count, IntPtr timeout);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl, EntryPoint = "zmq_poll")] static extern int zmq_poll_windows([In, Out] PollItemWindows[] items, int count, IntPtr timeout);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern int zmq_errno();
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] static extern IntPtr zmq_strerror(int errnum);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] static extern int zmq_curve_keypair(byte[] publicKey, byte[] secretKey);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] static extern int zmq_has([MarshalAs(UnmanagedType.LPStr)] string capability);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] static extern void zmq_version(out int major, out int minor, out int patch);

        // zmq_pollitem_t: the fd member is an int on POSIX, a SOCKET (pointer-sized) on Windows.
        [StructLayout(LayoutKind.Sequential)]
        struct PollItemUnix
        {
            public IntPtr Socket;
            public int Fd;
            public short Events;
            public short Revents;
        }

        [StructLayout(LayoutKind.Sequential)]
        struct PollItemWindows
        {
            public IntPtr Socket;
            public IntPtr Fd;
            public short Events;
            public short Revents;
        }

        static readonly bool Windows = Environment.OSVersion.Platform == PlatformID.Win32NT;

        static bool IsMac()
        {
            // Mono reports macOS as Unix; uname's answer is the reliable one but needs libc:
            // the presence of /System/Library is enough here.
            return Environment.OSVersion.Platform == PlatformID.MacOSX ||
                   (Environment.OSVersion.Platform == PlatformID.Unix && System.IO.Directory.Exists("/System/Library/CoreServices"));
        }

        public static string Version()
        {
            int a, b, c;
            zmq_version(out a, out b, out c);
            return a + "." + b + "." + c;
        }

        public static bool HasCurve() { return zmq_has("curve") == 1; }

        public static string LastError()
        {
            int e = zmq_errno();
            return Marshal.PtrToStringAnsi(zmq_strerror(e)) + " (errno " + e + ")";
        }

        // A new CURVE key pair as Z85 strings (libzmq must be built with libsodium/tweetnacl).
        public static void CurveKeypair(out string publicKey, out string secretKey)
        {
            var pub = new byte[41];
            var sec = new byte[41];
            if (zmq_curve_keypair(pub, sec) != 0) throw new TransportException("zmq_curve_keypair: " + LastError());
            publicKey = Encoding.ASCII.GetString(pub, 0, 40);
            secretKey = Encoding.ASCII.GetString(sec, 0, 40);
        }

        // Polls sockets for input; `ready[i]` tells which. The arrays are the caller's, reused
        // (no allocation per call). Returns false on EINTR (nothing ready).
        public sealed class Poller
        {
            readonly PollItemUnix[] _unix;
            readonly PollItemWindows[] _windows;

            public Poller(params ZmqSocket[] sockets)
            {
                _unix = new PollItemUnix[sockets.Length];
                _windows = new PollItemWindows[sockets.Length];
                for (int i = 0; i < sockets.Length; i++)
                {
                    _unix[i].Socket = sockets[i].Handle;
                    _unix[i].Events = POLLIN;
                    _windows[i].Socket = sockets[i].Handle;
                    _windows[i].Events = POLLIN;
                }
            }

            public int Count { get { return _unix.Length; } }

            public bool Poll(int timeoutMs, bool[] ready)
            {
                int rc;
                if (Windows)
                {
                    for (int i = 0; i < _windows.Length; i++) _windows[i].Revents = 0;
                    rc = zmq_poll_windows(_windows, _windows.Length, new IntPtr(timeoutMs));
                    for (int i = 0; i < _windows.Length; i++) ready[i] = (_windows[i].Revents & POLLIN) != 0;
                }
                else
                {
                    for (int i = 0; i < _unix.Length; i++) _unix[i].Revents = 0;
                    rc = zmq_poll(_unix, _unix.Length, new IntPtr(timeoutMs));
                    for (int i = 0; i < _unix.Length; i++) ready[i] = (_unix[i].Revents & POLLIN) != 0;
                }
                if (rc < 0)
                {
                    if (zmq_errno() == EINTR) return false;
                    throw new TransportException("zmq_poll: " + LastError());
                }
                return rc > 0;
            }
        }
    }

    public sealed class ZmqContext : IDisposable
    {
        public IntPtr Handle { get; private set; }

        public ZmqContext()
        {
            Handle = LibZmq.zmq_ctx_new();
            if (Handle == IntPtr.Zero) throw new TransportException("zmq_ctx_new: " + LibZmq.LastError());
        }

        // Blocks until every socket of the context is closed (they linger 0 here).
        public void Dispose()
        {
            if (Handle == IntPtr.Zero) return;
            while (LibZmq.zmq_ctx_term(Handle) != 0 && LibZmq.zmq_errno() == LibZmq.EINTR) { }
            Handle = IntPtr.Zero;
        }
    }

    public sealed class ZmqSocket : IDisposable
    {
        IntPtr _msg; // one zmq_msg_t (64 bytes), reused for every receive

        public IntPtr Handle { get; private set; }

        public ZmqSocket(ZmqContext context, int type)
        {
            Handle = LibZmq.zmq_socket(context.Handle, type);
            if (Handle == IntPtr.Zero) throw new TransportException("zmq_socket: " + LibZmq.LastError());
            _msg = Marshal.AllocHGlobal(64);
            Set(LibZmq.LINGER, 0); // closing never waits for unsent messages
        }

        public void Set(int option, int value) { Set(option, BitConverter.GetBytes(value)); }
        public void Set(int option, long value) { Set(option, BitConverter.GetBytes(value)); }

        public void Set(int option, byte[] value)
        {
            if (LibZmq.zmq_setsockopt(Handle, option, value, new UIntPtr((uint)value.Length)) != 0)
                throw new TransportException("zmq_setsockopt(" + option + "): " + LibZmq.LastError());
        }

        public void Bind(string endpoint)
        {
            if (LibZmq.zmq_bind(Handle, endpoint) != 0) throw new TransportException("bind " + endpoint + ": " + LibZmq.LastError());
        }

        public void Connect(string endpoint)
        {
            if (LibZmq.zmq_connect(Handle, endpoint) != 0) throw new TransportException("connect " + endpoint + ": " + LibZmq.LastError());
        }

        // libzmq reports the socket's `events` (LibZmq.EVENT_*) as messages on a PAIR socket it
        // binds at `endpoint` (inproc://): connect a PAIR there to read them.
        public void Monitor(string endpoint, int events)
        {
            if (LibZmq.zmq_socket_monitor(Handle, endpoint, events) != 0) throw new TransportException("zmq_socket_monitor: " + LibZmq.LastError());
        }

        // The endpoint the socket is bound to (tcp://127.0.0.1:PORT after binding port 0 / '*').
        public string LastEndpoint()
        {
            var buffer = new byte[256];
            var length = new UIntPtr((uint)buffer.Length);
            if (LibZmq.zmq_getsockopt(Handle, LibZmq.LAST_ENDPOINT, buffer, ref length) != 0)
                throw new TransportException("zmq_getsockopt: " + LibZmq.LastError());
            int n = (int)length.ToUInt32();
            return Encoding.ASCII.GetString(buffer, 0, n > 0 && buffer[n - 1] == 0 ? n - 1 : n);
        }

        // One frame. False when the send queue is full (dontWait) instead of blocking.
        public bool Send(byte[] data, int count, bool more, bool dontWait = true)
        {
            int flags = (more ? LibZmq.SNDMORE : 0) | (dontWait ? LibZmq.DONTWAIT : 0);
            while (true)
            {
                if (LibZmq.zmq_send(Handle, data, new UIntPtr((uint)count), flags) >= 0) return true;
                int e = LibZmq.zmq_errno();
                if (e == LibZmq.EINTR) continue;
                if (e == LibZmq.EAGAIN) return false;
                throw new TransportException("zmq_send: " + LibZmq.LastError());
            }
        }

        public bool Send(byte[] data, bool more = false) { return Send(data, data.Length, more); }

        // One frame into `into` (grown as needed). False when none is waiting (dontWait).
        public bool Receive(MessageBuffer into, out bool more, bool dontWait = true)
        {
            more = false;
            LibZmq.zmq_msg_init(_msg);
            try
            {
                while (LibZmq.zmq_msg_recv(_msg, Handle, dontWait ? LibZmq.DONTWAIT : 0) < 0)
                {
                    int e = LibZmq.zmq_errno();
                    if (e == LibZmq.EINTR) continue;
                    if (e == LibZmq.EAGAIN) return false;
                    throw new TransportException("zmq_msg_recv: " + LibZmq.LastError());
                }
                int size = (int)LibZmq.zmq_msg_size(_msg).ToUInt32();
                into.Ensure(size);
                if (size > 0) Marshal.Copy(LibZmq.zmq_msg_data(_msg), into.Data, 0, size);
                into.Length = size;
                more = LibZmq.zmq_msg_more(_msg) == 1;
                return true;
            }
            finally
            {
                LibZmq.zmq_msg_close(_msg);
            }
        }

        // A whole multipart message: the first frames into `parts` (as many as given), the rest
        // read and dropped. Returns the number of frames, 0 when none is waiting.
        public int ReceiveMultipart(MessageBuffer[] parts, MessageBuffer overflow)
        {
            bool more;
            if (!Receive(parts.Length > 0 ? parts[0] : overflow, out more)) return 0;
            int n = 1;
            while (more)
            {
                // The rest of a multipart message is already here (ZeroMQ delivers all or none).
                Receive(n < parts.Length ? parts[n] : overflow, out more, false);
                n++;
            }
            return n;
        }

        public void Dispose()
        {
            if (Handle != IntPtr.Zero)
            {
                LibZmq.zmq_close(Handle);
                Handle = IntPtr.Zero;
            }
            if (_msg != IntPtr.Zero)
            {
                Marshal.FreeHGlobal(_msg);
                _msg = IntPtr.Zero;
            }
        }
    }

    public sealed class LibZmqTransport : ITransport
    {
        static int s_monitors; // each monitor binds its own inproc endpoint

        ZmqContext _context;
        ZmqSocket _sub, _dealer, _monitor;
        LibZmq.Poller _poller;
        readonly bool[] _ready = new bool[2];
        readonly MessageBuffer[] _pubParts = new MessageBuffer[2];
        readonly MessageBuffer[] _replyParts = new MessageBuffer[1];
        readonly MessageBuffer[] _noParts = new MessageBuffer[0];
        readonly MessageBuffer _overflow = new MessageBuffer();

        public void Open(TransportOptions o)
        {
            _context = new ZmqContext();
            try
            {
                _sub = new ZmqSocket(_context, LibZmq.SUB);
                _dealer = new ZmqSocket(_context, LibZmq.DEALER);
                foreach (ZmqSocket s in new[] { _sub, _dealer })
                {
                    s.Set(LibZmq.RECONNECT_IVL, o.ReconnectIntervalMs);
                    s.Set(LibZmq.RECONNECT_IVL_MAX, o.ReconnectIntervalMaxMs);
                    s.Set(LibZmq.HEARTBEAT_IVL, o.HeartbeatIntervalMs);
                    s.Set(LibZmq.HEARTBEAT_TIMEOUT, o.HeartbeatTimeoutMs);
                    s.Set(LibZmq.MAXMSGSIZE, o.MaxMessageBytes);
                    if (o.Curve != null)
                    {
                        // A CURVE client: the server's public key and our own pair, before connecting.
                        s.Set(LibZmq.CURVE_SERVERKEY, o.Curve.ServerPublicKeyBytes);
                        s.Set(LibZmq.CURVE_PUBLICKEY, o.Curve.ClientPublicKeyBytes);
                        s.Set(LibZmq.CURVE_SECRETKEY, o.Curve.ClientSecretKeyBytes);
                    }
                }
                _sub.Set(LibZmq.RCVHWM, o.ReceiveHighWatermark);
                // Queue only on a live connection: nothing stale is replayed to a new one (ITransport.TrySend).
                _dealer.Set(LibZmq.IMMEDIATE, 1);
                // The DEALER's dropped connections (ITransport.TakeDisconnects), watched before it connects.
                string monitor = "inproc://ksdiff-dealer-monitor-" + Interlocked.Increment(ref s_monitors);
                _dealer.Monitor(monitor, LibZmq.EVENT_DISCONNECTED);
                _monitor = new ZmqSocket(_context, LibZmq.PAIR);
                _monitor.Connect(monitor);
                foreach (string topic in o.Topics) Subscribe(topic);
                _sub.Connect(o.PubEndpoint);
                _dealer.Connect(o.RouterEndpoint);
                _poller = new LibZmq.Poller(_sub, _dealer);
            }
            catch
            {
                Dispose();
                throw;
            }
        }

        public void Subscribe(string topic) { _sub.Set(LibZmq.SUBSCRIBE, Encoding.ASCII.GetBytes(topic)); }
        public void Unsubscribe(string topic) { _sub.Set(LibZmq.UNSUBSCRIBE, Encoding.ASCII.GetBytes(topic)); }

        public Readiness Wait(int timeoutMs)
        {
            if (!_poller.Poll(timeoutMs, _ready)) return Readiness.None;
            return (_ready[0] ? Readiness.Published : Readiness.None) | (_ready[1] ? Readiness.Reply : Readiness.None);
        }

        public bool TryReceivePublished(MessageBuffer topic, MessageBuffer payload, out int parts)
        {
            _pubParts[0] = topic;
            _pubParts[1] = payload;
            parts = _sub.ReceiveMultipart(_pubParts, _overflow);
            return parts > 0;
        }

        public bool TryReceiveReply(MessageBuffer payload, out int parts)
        {
            _replyParts[0] = payload;
            parts = _dealer.ReceiveMultipart(_replyParts, _overflow);
            return parts > 0;
        }

        public bool TrySend(byte[] payload) { return _dealer.Send(payload); }

        public int TakeDisconnects()
        {
            // One message per event (its id and value, then the endpoint); only disconnects are asked for.
            int n = 0;
            while (_monitor.ReceiveMultipart(_noParts, _overflow) > 0) n++;
            return n;
        }

        public void Dispose()
        {
            if (_monitor != null) { _monitor.Dispose(); _monitor = null; }
            if (_sub != null) { _sub.Dispose(); _sub = null; }
            if (_dealer != null) { _dealer.Dispose(); _dealer = null; }
            if (_context != null) { _context.Dispose(); _context = null; }
        }
    }
}
#endif
