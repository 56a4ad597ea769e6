// The client of one runtime: frames and events from its PUB, requests and pushed audio to its
// ROUTER, all on one worker thread that owns the transport (ZeroMQ sockets are not
// thread-safe). Other threads (Unity's main thread) never touch the sockets: they queue what to
// send, read status snapshots, drain events, and sample the jitter buffer the worker fills.
//
//   * Reconnects by itself (ZeroMQ retries every 100 ms, up to 1 s) when the runtime is absent or
//     restarts; the state says whether hellos arrive (Connecting / Live / Stale).
//   * A restart is recognised by a never-seen hello `instance`: the old process's streams are
//     gone, so pending requests fail, streams this client opened are marked lost, seq tracking
//     and the jitter buffer start afresh (a stream whose end came, e.g. an NPC line received
//     whole, still plays out).
//   * A reconnect loses the streams this client opened too: the runtime keeps each stream for the
//     connection that opened it, and ZeroMQ's new connection has another routing id (SPEC 1,
//     Ownership). Seen as the DEALER's dropped connection (the transport's socket monitor), or
//     as a `forbidden` / `unknown_stream` refusal of such a stream's messages: the stream is
//     marked lost (EndReason "reconnect", a StreamLost event) and its queued audio dropped. A loss
//     stays while frames still come (the runtime animates the audio it has), until the id is
//     opened or started again (a stream_opened giving an id the runtime picked opens it again).
//     An `unknown_stream` for a stream this client is ending (its end_stream sent) is the runtime
//     ending it, not a loss, unless it answers that end_stream.
//   * After EndStream, SendAudio for that stream throws (unknown_stream) and sends nothing, until
//     the stream is opened again: the runtime takes no audio for a stream that is ending.
//   * Replies are matched by `req`, not by order (protocol 1.1 answers end_stream only once the
//     stream has finished, after later requests' replies). A request whose reply does not come
//     in time (RequestTimeoutS; end_stream is given its own) fails: a reply lost with a dropped
//     connection never leaves its caller waiting. So does one its caller gives up on (Abandon).
//   * The DEALER queues only on a live connection (ZMQ_IMMEDIATE); the rest waits in the
//     client's outbox, at most OutboxMaxBytes: beyond that the oldest audio is dropped, live
//     streams' before lines' (never a request), counted in ClientStatus.Unsent.
//   * A request that failed (timed out, abandoned, the runtime restarted) while still in the
//     outbox is withdrawn, never sent (ClientStatus.Withdrawn): sent later, an open_stream would
//     open a stream nobody uses, held until the runtime's idle timeout. end_stream is the
//     exception: ending its stream late still frees it. A stream_opened that comes for an
//     open_stream that failed after it left is answered with end_stream for that stream.
//   * A `busy` with neither req nor stream says the runtime dropped this client's requests unread
//     (too many for the streams it holds): an end_stream that left before those drops were over
//     (Protocol.BusyWindowS) and is still unanswered then is sent again, and the answer to its
//     other copy changes nothing (ClientStatus.Resent; SPEC 4.6, "A client past its share"). One
//     still in the outbox was not dropped: it is not copied. Before those: the audio of lines
//     (streams opened in mode "line", still open here) sent after the last request the runtime had
//     answered before the busy (it reads a connection's messages in order, however long they
//     waited on the way) goes again, in its order, ahead of anything queued since (audio sent with
//     its at_sample, as NpcLine and OfflineLine send it: the runtime takes only what it lacks of a
//     copy). Audio of lines is kept for that until the runtime is known to have read it (within
//     ClientOptions.ResendAudioMaxBytes). A live stream's is not: it wants the present, not the past.
//     While the drops last, nothing leaves but live streams' audio; and a line's next message
//     (audio, set_controls, end_stream) leaves only once the runtime has answered a request sent
//     after the line's previous one (a `hello` request follows the lines' messages for that), so
//     no copy comes after later audio, or the end_stream, of its line. A hello request
//     (RequestHello) still leaves only after everything queued before it: its reply says the
//     runtime read all that.
//   * hello, open_stream and set_controls are answered as the runtime reads them (end_stream once
//     its stream has ended), and a connection's messages are read in order: one still unanswered
//     once the runtime answered a request sent after it on the same connection was never read
//     (dropped unread after a busy), and it goes again (ClientStatus.Resent), numbered anew when
//     it leaves; an open_stream or set_controls ahead of what waits in the outbox, a hello behind
//     it (its reply says the runtime read all that). A hello probe follows such a request left
//     unanswered for ProbeAgainS (a busy's window ends Protocol.BusyWindowS after the busy came,
//     so after the request left, and no probe leaves before), again every ProbeAgainS. Merely
//     unanswered when a busy's window ends is no reason: still on its way, it is carried out when
//     read (a second open_stream would open a second stream). A request whose caller gave up
//     (timed out, abandoned) is not sent again.
//   * An open_stream, or a set_controls of a stream this client opened, that left on a connection
//     that then dropped fails at once and is never sent again (SPEC 4.6): the runtime may have read
//     it and carried it out for that connection, its answer lost with it (a copy would open a second
//     stream, or be refused busy "already open" for an open that worked). Its failure says so: open
//     a new stream, with another id. A hello lost that way goes again (harmless twice), and so does
//     a set_controls of a stream this client did not open (the runtime's own "mic", tuned from a
//     control panel: it lost nothing with the connection, and a second copy sets the same
//     controls), as in the Python SDK: once a probe's answer on the next connection shows it was
//     not answered there, its caller getting the copy's answer (a refusal too). Requests still in
//     the outbox go on the next connection.
//   * Stop closes the connection: the streams this client opened are lost with it (one still being
//     opened: its open_stream fails), and nothing still waiting in the outbox goes on the next
//     connection: audio dropped (ClientStatus.Unsent), requests withdrawn (ClientStatus.Withdrawn),
//     an end_stream too (the new connection owns none of those streams: its refusal, naming the id,
//     would mark lost a stream opened again with it). After a Start, SendAudio for such a stream
//     throws (unknown_stream) and its SetControls and EndStream fail at once, nothing sent, until
//     the id is opened again (an OpenStream while stopped fails at once and opens nothing).
//   * Frames: decoded into one reused Frame, checked against their topic, seq gaps counted as
//     drops, pushed into the jitter buffer and the frame sinks. No allocation per frame.
//   * A stream's events reach the game in the order the runtime published them: a frame is in the
//     jitter buffer and every sink before the status counts it (Frames, Ended on `last`), and a
//     stream_end is told to the buffer before the status and the StreamEnd event show it.
using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.Threading;

namespace Ksdiff
{
    public sealed class ClientOptions
    {
        public string PubEndpoint = Protocol.DefaultPubEndpoint;
        public string RouterEndpoint = Protocol.DefaultRouterEndpoint;
        // null: every stream's frames. Otherwise only these streams (and the ones this client opens).
        public string[] Streams;
        public bool SubscribeStats = true;
        public CurveKeys Curve;              // when the runtime requires CURVE (beyond loopback)
        public Func<ITransport> Transport;   // e.g. () => new LibZmqTransport(); called on the worker
        public int PollIntervalMs = 5;       // the longest a queued send or a stop waits
        public double HelloTimeoutS = 2.5;   // hello comes every second: without one this long, Stale
        public double RequestTimeoutS = 10;  // a request without its reply this long fails (EndStream takes its own); if it never left, it is never sent
        // Messages wait in the client's outbox while the runtime takes none (it is away: the
        // DEALER queues only on a live connection; or it stalls). Beyond this many bytes the
        // oldest audio is dropped (ClientStatus.Unsent): about 4 min of a 16 kHz float32 mic.
        public long OutboxMaxBytes = 16 << 20;
        // The lines' audio that left is kept until the runtime is known to have read it (it answered
        // a request sent after it), up to this many bytes (the oldest forgotten beyond), to send it
        // again should the runtime say it dropped this client's requests unread (busy; SPEC 4.6,
        // "A client past its share").
        public long ResendAudioMaxBytes = 256L << 20;
        public int ReceiveHighWatermark = 10000;
        public int MaxEvents = 1000;         // events kept for DrainEvents (the oldest are dropped)
        public double JitterMarginS = 0.05;  // the jitter buffer's margin for live streams
        public Func<double> Clock;           // local monotonic seconds; default: Stopwatch
    }

    public enum ClientState
    {
        Stopped,    // not started, or stopped
        Connecting, // started, no hello yet (runtime absent, wrong endpoint, or still joining)
        Live,       // a hello arrived within HelloTimeoutS
        Stale,      // had hellos, none recently: the runtime stopped or the network is down
        Failed,     // the transport could not be set up (bad endpoint, missing library): see LastError
    }

    // What the client knows about one stream.
    public sealed class StreamStatus
    {
        public string Stream;
        public string Source;           // from stream_start or stats; null when unknown
        public bool OpenedHere;         // this client opened it
        public bool Ended;              // its last frame or stream_end came
        public string EndReason;        // stream_end's reason; lost: "restart" (the runtime restarted), "reconnect" (the connection that opened it dropped)
        public ulong? EndFrames;        // stream_end's frame count; null until it came
        public ulong Frames;            // frames received
        public ulong Dropped;           // seq gaps: frames lost on the way (HWM, runtime overload)
        public ulong LastIndex;
        public double ReceiveFps;       // frames received over the last second
        public double? LatencyP95Ms;    // published - captured of the frames received (last 150)
        public double? StatsLatencyP95Ms; // the runtime's own figure from `stats`
        // 1.2, from stream_opened or stream_start (null from a 1.1 runtime): the stream's mode, and
        // the latency the runtime states for it: start playing its audio LatencyMs after its first
        // push and the frames are there in time.
        public string Mode;
        public double? LatencyMs;
        public double LastFrameS = -1;  // local clock
        public readonly List<ErrorReply> Errors = new List<ErrorReply>(); // errors about it (audio)
    }

    public sealed class ClientStatus
    {
        public ClientState State;
        public string PubEndpoint, RouterEndpoint;
        public string Instance;         // the runtime process's id (its hello's `instance`)
        public string RuntimeVersion;
        public string[] Blendshapes;    // the runtime hello's names, in wire order
        public ulong Messages, Frames, Dropped, BadMessages, Ignored, Restarts, EventsDropped;
        public ulong Unsent;            // audio messages dropped before they were sent (OutboxMaxBytes, or their stream was lost with the connection)
        public ulong Withdrawn;         // requests never sent: they failed (timed out, abandoned, the client stopped) while still in the outbox
        // Messages sent again once the runtime said it dropped this client's requests unread (busy)
        // and those drops were over: the audio of lines it may have dropped, then the end_streams
        // left unanswered; and the hello, open_stream and set_controls requests the runtime never
        // read (dropped unread), which the answer to a request sent after them shows, and the hellos
        // lost with a connection that dropped, and the set_controls of streams this client did not
        // open lost so (an open_stream, or a set_controls of a stream it opened, lost so fails instead).
        public ulong Resent;
        public double LastHelloS = -1;
        public string LastError;
        public Stats LastStats;
        public double LastStatsS = -1;
        public readonly Dictionary<string, StreamStatus> Streams = new Dictionary<string, StreamStatus>();
    }

    public enum ClientEventKind { Hello, RuntimeRestart, StreamStart, StreamEnd, Stats, BadMessage, Error, StreamLost }

    public sealed class ClientEvent
    {
        public ClientEventKind Kind;
        public double TimeS;
        public Message Message; // Hello, StreamStart, StreamEnd, Stats or ErrorReply
        public string Stream;
        public string Text;     // what happened, for a log

        public override string ToString() { return Kind + (Stream != null ? " " + Stream : "") + (Text != null ? ": " + Text : ""); }
    }

    // Called on the worker thread for every accepted frame; `frame` is reused after the call.
    public interface IFrameSink
    {
        void OnFrame(Frame frame, double arrivalS);
    }

    // A request waiting for its reply, matched by `req`.
    public sealed class PendingRequest
    {
        readonly object _lock = new object();
        public readonly ulong Req;
        public readonly string Type;
        public readonly string Stream;   // the stream it is about; null for hello
        public readonly double SentS;    // when it was queued (client clock)
        public readonly double TimeoutS; // no reply by SentS + TimeoutS: it fails
        internal byte[] Payload;         // what was sent, to send again (the runtime dropped it unread)
        internal bool Queued;            // (L) a copy of it waits in the outbox: it has not left since it was last queued
        internal bool Left;              // (L) it left for the runtime, once at least
        internal double LastSentS;       // (L) when it last left for the runtime (client clock)
        // (L) the number of the DEALER message it first left as (0: not yet): its answer proves the
        // runtime read every message up to that one (a connection's messages are read in order)
        internal ulong SentNo;
        internal bool Line;              // an open_stream in mode line (its stream's audio is sent again after a busy)
        Message _reply;
        string _failure;

        internal PendingRequest(ulong req, string type, string stream, double sentS, double timeoutS)
        {
            Req = req;
            Type = type;
            Stream = stream;
            SentS = sentS;
            TimeoutS = timeoutS;
        }

        public bool IsDone { get { lock (_lock) return _reply != null || _failure != null; } }
        // The reply (an ErrorReply when the runtime refused), or null while waiting.
        public Message Reply { get { lock (_lock) return _reply; } }
        // Why no reply will come (none in time, the runtime restarted, the client stopped, an
        // open_stream or a set_controls of a stream this client opened on its way when the connection
        // dropped, a stream lost when the client stopped), or null.
        public string Failure { get { lock (_lock) return _failure; } }

        // Blocks up to `timeout` (not on Unity's main thread: poll IsDone there).
        public bool Wait(TimeSpan timeout)
        {
            lock (_lock)
            {
                var watch = Stopwatch.StartNew();
                while (_reply == null && _failure == null)
                {
                    TimeSpan left = timeout - watch.Elapsed;
                    if (left <= TimeSpan.Zero) return false;
                    Monitor.Wait(_lock, left);
                }
                return true;
            }
        }

        internal void Complete(Message reply, string failure)
        {
            lock (_lock)
            {
                if (_reply != null || _failure != null) return;
                _reply = reply;
                _failure = failure;
                Monitor.PulseAll(_lock);
            }
        }
    }

    public sealed class KsdiffClient : IDisposable
    {
        const int LatencyWindow = 150;   // frames: 5 s at 30 fps
        const int ArrivalWindow = 256;   // arrival times kept for the receive rate
        const int MaxStreamsKept = 256;  // per-stream records (oldest ended ones go first)
        const int ResentKept = 1000;     // resent requests remembered, so the answer to a second copy changes nothing
        // A hello probe not answered within this time is taken as lost (dropped unread, or its answer
        // lost with a connection): another goes.
        const double ProbeAgainS = 1.0;
        const int ProbesKept = 64;       // hello probes awaiting their answer, remembered (the oldest forgotten beyond: lost ones)

        readonly ClientOptions _o;
        readonly Func<double> _clock;
        readonly object _lock = new object(); // guards everything below marked (L)
        public readonly JitterBuffer Buffer;

        // Start and Stop take turns under _lock; each Start makes a WorkerRun of its own, so a
        // worker only ever sees its own stop flag (a Start after a Stop never revives the old one).
        WorkerRun _current;  // (L) the running worker; null when stopped
        WorkerRun _last;     // (L) the latest worker started, stopped or not: Stop waits for it to end
        [ThreadStatic] static KsdiffClient t_workerOf; // on a worker thread: its client
        bool _failed;                                                 // (L)
        readonly ClientStatus _status = new ClientStatus();           // (L), minus Streams
        readonly Dictionary<string, Tracker> _streams = new Dictionary<string, Tracker>(); // (L)
        readonly Queue<ClientEvent> _events = new Queue<ClientEvent>();                     // (L)
        readonly Queue<Outgoing> _outbox = new Queue<Outgoing>();                          // (L)
        long _outboxBytes;                                                                 // (L)
        readonly Queue<KeyValuePair<bool, string>> _subscriptions = new Queue<KeyValuePair<bool, string>>(); // (L)
        readonly Dictionary<ulong, PendingRequest> _pending = new Dictionary<ulong, PendingRequest>();     // (L)
        bool _withdraw;                                 // (L) a request failed: take the outbox's failed requests out
        readonly HashSet<ulong> _orphanEnds = new HashSet<ulong>(); // (L) req of the end_stream of each stream opened too late
        readonly HashSet<ulong> _resent = new HashSet<ulong>();     // (L) req of the requests sent again, the latest ResentKept
        readonly Queue<ulong> _resentOrder = new Queue<ulong>();    // (L) the same, oldest first
        double? _busyAtS;                                           // (L) when the runtime last said it dropped requests unread
        // (L) the lines' audio that left and the runtime may not have read yet, in the order sent
        // (Outgoing.SentNo), within ResendAudioMaxBytes
        readonly Queue<Outgoing> _sentAudio = new Queue<Outgoing>();
        long _sentAudioBytes;                                       // (L)
        ulong _sentNo;                                              // (L) the number of the last message the DEALER took (1, 2, ...)
        // (L) the number of the latest message the runtime is known to have read: it answered a
        // request that left as that message or after it (it reads a connection's messages in order)
        ulong _readNo;
        // (L) _readNo when the busy came: the runtime may have dropped every message after it (it
        // answered what it read before the first one it dropped before the busy), until the drops ended
        ulong? _busyReadNo;
        readonly Dictionary<ulong, ulong> _probes = new Dictionary<ulong, ulong>(); // (L) req of each hello probe awaiting its answer -> its number
        readonly Queue<ulong> _probeOrder = new Queue<ulong>();                  // (L) the same reqs, oldest first
        ulong _openings;                                            // (L) streams opened by this client so far (Tracker.Opening)
        ulong _stops;                                               // (L) Stops so far (Outgoing.Stops)
        readonly HashSet<string> _seenInstances = new HashSet<string>();                   // (L)
        readonly List<IFrameSink> _sinks = new List<IFrameSink>();                         // (L)
        IFrameSink[] _sinkSnapshot = new IFrameSink[0];                                    // (L)
        long _nextReq;

        // Worker-thread only.
        ulong _lineSentNo;   // the number of the last line's message that left
        ulong _probeNo;      // the number of the last hello probe that left (0: none since the last busy's drops ended)
        double _probeAtS;    // when it left
        // The number of the last request answered as the runtime reads it (AnsweredAsRead) that left, and when.
        ulong _requestSentNo;
        double _requestSentAtS;
        ulong _pass;         // Flush's passes (Tracker.HeldPass)
        byte[] _unsentProbe; // a probe the transport refused, tried again as it is
        ulong _unsentProbeReq;
        readonly Queue<Outgoing> _held = new Queue<Outgoing>(); // what Flush holds back on this pass, in order
        readonly Decoder _decoder = new Decoder();
        readonly MessageBuffer _topic = new MessageBuffer(), _payload = new MessageBuffer();

        // A message for the DEALER, waiting in the outbox.
        struct Outgoing
        {
            public byte[] Payload;
            public bool Audio; // audio may be dropped when the outbox is full; requests never are
            public ulong Req;  // a request withdrawn if it fails before it is sent; 0: none (audio, end_stream)
            public PendingRequest Request; // the request it is (a copy of); null: audio, or an end_stream nobody waits for
            public string Stream; // audio: its stream
            public bool Placed;   // audio with its at_sample: a copy takes its own place (sent again after a busy)
            public double SentS;  // audio kept in _sentAudio: when it left (client clock)
            public ulong SentNo;  // audio kept in _sentAudio: the number of the message it left as
            public ulong Opening; // audio, or a line's request: the opening of its stream it was sent for (Tracker.Opening; 0: none)
            public ulong Stops;   // the client's Stops when it was queued: one queued before the latest Stop is dropped unsent (Withdraw)
            // The line it is of (its audio, set_controls, end_stream; null for anything else): a line's
            // messages leave one at a time, each once the runtime has read the one before.
            public Tracker Line;
        }

        // One run of the worker thread, from a Start to its Stop.
        sealed class WorkerRun
        {
            public Thread Thread;
            // The run before it: joined before this one touches the transport or the worker-only
            // state (it may still be ending: stopped from its own thread, it could not be joined).
            public Thread Previous;
            public volatile bool Stop; // set once, under _lock, by the Stop that ends this run
        }

        sealed class Tracker
        {
            public readonly StreamStatus Status = new StreamStatus();
            // Its stream_opened came: the runtime holds it for this connection. A dropped
            // connection loses only such streams (an open_stream still queued goes out on the next).
            public bool OpenConfirmed;
            // The end_stream this client queued for it (null: none since it opened it): no more audio
            // for it is sent; once that left, an unknown_stream (but its own answer) is the runtime
            // ending the stream, not a loss.
            public PendingRequest End;
            // Lost client-side (Lose: "restart", "reconnect"): the loss stays, whatever frames still
            // come, until the id starts afresh (OpenStream, stream_start) or the stream really ends.
            public bool Lost;
            // Opened (or being opened) by this client when it stopped: its connection closed with
            // Stop. Audio, set_controls and end_stream for it fail here, nothing sent, until the id
            // starts afresh (ResetTracker: OpenStream, stream_start).
            public bool Stopped;
            // This client opened it in mode line: its audio dropped unread after a busy goes again.
            public bool Line;
            // Which opening of the id by this client it is (the client's count of openings): audio of an
            // earlier stream of the id is never sent again to a later one.
            public ulong Opening;
            // The number of the last message of this opening of the line that left (0: none yet): its
            // next one waits until the runtime is known to have read it.
            public ulong SentNo;
            public ulong HeldPass; // the Flush pass that held one of its messages back: its later ones stay behind it
            public ulong? NextSeq;
            public readonly double[] Latencies = new double[LatencyWindow];
            public int LatencyCount, LatencyNext;
            public readonly double[] Arrivals = new double[ArrivalWindow];
            public int ArrivalCount, ArrivalNext;
        }

        public KsdiffClient(ClientOptions options)
        {
            if (options.Transport == null) throw new ArgumentException("ClientOptions.Transport is required");
            if (options.Streams != null) foreach (string s in options.Streams) Protocol.RequireStreamId(s);
            _o = options;
            if (_o.Clock != null) _clock = _o.Clock;
            else
            {
                Stopwatch watch = Stopwatch.StartNew();
                _clock = () => watch.Elapsed.TotalSeconds;
            }
            Buffer = new JitterBuffer(options.JitterMarginS, JitterBuffer.MaxLineFrames, _clock);
            _status.PubEndpoint = options.PubEndpoint;
            _status.RouterEndpoint = options.RouterEndpoint;
        }

        public double Now() { return _clock(); }

        // --- lifecycle ------------------------------------------------------------------------

        // Starts the worker; returns at once (connecting is asynchronous). Any thread, the worker's
        // own included (from a frame sink): a worker still ending after a Stop is waited for by the
        // new one, on its own thread, never by Start.
        public void Start()
        {
            lock (_lock)
            {
                if (_current != null) return;
                _failed = false;
                _status.LastError = null;
                var run = new WorkerRun { Previous = _last != null ? _last.Thread : null };
                run.Thread = new Thread(() => Run(run)) { IsBackground = true, Name = "ksdiff-client" };
                // Started before it is published, under the lock: a Stop never sees a run whose thread is
                // not started (Mono crashed joining one), not even after a Start that threw
                run.Thread.Start();
                _current = _last = run;
            }
        }

        // Stops the worker and waits for it to end (within about one poll interval); idempotent, any
        // thread. Pending requests fail, and the streams this client opened are lost ("reconnect"):
        // the runtime keeps each for the connection that opened it, which closes here. Nothing still
        // in the outbox is sent on the next connection (audio: ClientStatus.Unsent; requests, an
        // end_stream too: ClientStatus.Withdrawn), and after a Start SendAudio for
        // them throws and their SetControls and EndStream fail at once, until the id is opened
        // again (the runtime would refuse them: the new connection owns none of them). Call it before
        // NetMQConfig.Cleanup() / domain reload. On a worker thread (a frame sink) it cannot wait for
        // itself: the worker ends once the call that made it stop returns.
        public void Stop()
        {
            Thread last;
            List<PendingRequest> failed;
            lock (_lock)
            {
                if (_current != null)
                {
                    _current.Stop = true;
                    _current = null;
                    // The connection goes with the worker: what belonged to it is over (as when it drops).
                    double now = _clock();
                    foreach (Tracker t in _streams.Values)
                    {
                        if (!t.Status.OpenedHere || t.Status.Ended) continue;
                        if (t.OpenConfirmed) Lose(t, "reconnect", "the client stopped, and the stream's connection with it", now);
                        else t.Status.OpenedHere = false; // its open_stream fails below: not known to be this client's (GaveUp)
                        t.Stopped = true; // calls for it fail here from now on, nothing sent (SendAudio, Queue)
                    }
                    // The audio queued for those streams is dropped by the worker (Withdraw), the only
                    // thread that takes from the outbox: the stopped one may still be sending its head.
                    _stops++;
                    _busyAtS = null;
                    _busyReadNo = null;
                    _sentAudio.Clear();
                    _sentAudioBytes = 0;
                }
                last = _last != null ? _last.Thread : null;
                // With the stop itself: a Start right after it on another thread keeps its requests.
                failed = TakePending();
            }
            foreach (PendingRequest p in failed) p.Complete(null, "the client stopped");
            // The latest worker joins the one before it first, so once it ended every one has. A
            // worker thread (an older one still ending included: the latest waits for it) waits for none.
            if (last != null && t_workerOf != this) last.Join();
        }

        public void Dispose() { Stop(); }

        // --- what other threads read ------------------------------------------------------------

        // The connection state alone (no snapshot, nothing allocated).
        public ClientState State
        {
            get
            {
                double now = _clock();
                lock (_lock) return StateAt(now);
            }
        }

        ClientState StateAt(double now)
        {
            if (_failed) return ClientState.Failed;
            if (_current == null) return ClientState.Stopped;
            if (_status.LastHelloS < 0) return ClientState.Connecting;
            return now - _status.LastHelloS <= _o.HelloTimeoutS ? ClientState.Live : ClientState.Stale;
        }

        public ClientStatus Status()
        {
            double now = _clock();
            lock (_lock)
            {
                var s = new ClientStatus
                {
                    PubEndpoint = _status.PubEndpoint, RouterEndpoint = _status.RouterEndpoint,
                    Instance = _status.Instance, RuntimeVersion = _status.RuntimeVersion, Blendshapes = _status.Blendshapes,
                    Messages = _status.Messages, Frames = _status.Frames, Dropped = _status.Dropped,
                    BadMessages = _status.BadMessages, Ignored = _status.Ignored, Restarts = _status.Restarts,
                    EventsDropped = _status.EventsDropped, Unsent = _status.Unsent, Withdrawn = _status.Withdrawn,
                    Resent = _status.Resent,
                    LastHelloS = _status.LastHelloS, LastError = _status.LastError,
                    LastStats = _status.LastStats, LastStatsS = _status.LastStatsS,
                };
                s.State = StateAt(now);
                foreach (var kv in _streams) s.Streams[kv.Key] = Snapshot(kv.Value, now);
                return s;
            }
        }

        public StreamStatus Stream(string stream)
        {
            double now = _clock();
            lock (_lock)
            {
                Tracker t;
                return _streams.TryGetValue(stream, out t) ? Snapshot(t, now) : null;
            }
        }

        // Moves the queued events into `into`; returns how many.
        public int DrainEvents(List<ClientEvent> into)
        {
            lock (_lock)
            {
                int n = _events.Count;
                while (_events.Count > 0) into.Add(_events.Dequeue());
                return n;
            }
        }

        public void AddFrameSink(IFrameSink sink)
        {
            lock (_lock)
            {
                _sinks.Add(sink);
                _sinkSnapshot = _sinks.ToArray();
            }
        }

        public void RemoveFrameSink(IFrameSink sink)
        {
            lock (_lock)
            {
                _sinks.Remove(sink);
                _sinkSnapshot = _sinks.ToArray();
            }
        }

        // --- requests (any thread) ------------------------------------------------------------

        public PendingRequest RequestHello()
        {
            ulong req = NextReq();
            return Queue(req, "hello", null, Requests.Hello(req), _o.RequestTimeoutS);
        }

        // Opens a stream fed by this client's audio. With an explicit id (recommended) its frames
        // are subscribed before the request goes out, so the first frame cannot be missed.
        // Protocol 1.2: request.Mode (Protocol.ModeLine for a line whose audio is all there) and
        // request.Controls; the reply (StreamOpened) states the stream's LatencyMs, which
        // Stream(id).LatencyMs keeps too.
        public PendingRequest OpenStream(OpenStream request)
        {
            ulong req = NextReq();
            request.Req = req;
            byte[] payload = Requests.OpenStream(request); // throws for what the runtime would refuse
            lock (_lock)
            {
                // Not while stopped: the request fails at once, never sent (Queue), and opens nothing,
                // so the id keeps what it was (a stream lost by the Stop stays lost: Stopped). Under
                // the lock that queues it: a Start in between would queue it with the id untouched.
                if (request.Stream != null && _current != null)
                {
                    Tracker t = TrackerFor(request.Stream);
                    ResetTracker(t);
                    t.Status.OpenedHere = true;
                    t.OpenConfirmed = false;
                    t.End = null;
                    t.Line = request.Mode == Protocol.ModeLine;
                    t.Opening = ++_openings;
                    t.SentNo = 0; // a new line: its first message goes at once
                    if (_o.Streams != null) _subscriptions.Enqueue(new KeyValuePair<bool, string>(true, Protocol.FrameTopic(request.Stream)));
                }
                return Queue(req, "open_stream", request.Stream, payload, _o.RequestTimeoutS, request.Mode == Protocol.ModeLine);
            }
        }

        // Audio gets no reply unless it fails: errors arrive as events and in StreamStatus.Errors.
        // After EndStream for the stream (until it is opened again) it throws ProtocolException
        // (ErrorCode.UnknownStream) and sends nothing: the runtime takes no audio for a stream
        // that is ending, and would answer it with unknown_stream. The same for a stream that was
        // lost when the client stopped (Stop closed the connection that owned it).
        public void SendAudio(string stream, ulong seq, ulong? atSample, byte[] pcm, int offset, int count)
        {
            byte[] payload = Requests.Audio(stream, seq, atSample, pcm, offset, count);
            lock (_lock)
            {
                Tracker t;
                if (_streams.TryGetValue(stream, out t) && t.End != null)
                    throw new ProtocolException(ErrorCode.UnknownStream, "stream '" + stream + "' was ended (EndStream was called): " +
                                                                         "no audio was sent; open a new stream");
                if (t != null && t.Stopped)
                    throw new ProtocolException(ErrorCode.UnknownStream, LostByStop(stream) + ": no audio was sent; open a new stream");
                _outbox.Enqueue(new Outgoing { Payload = payload, Audio = true, Stream = stream, Placed = atSample.HasValue,
                                               Opening = t != null ? t.Opening : 0, Line = t != null && t.Line ? t : null, Stops = _stops });
                _outboxBytes += payload.Length;
            }
        }

        // Protocol 1.2 (the mood 1.3, the style 1.4): changes a stream's artists' controls (one
        // this client opened, or one the runtime plays itself, e.g. its "mic") from its next frames
        // on. The reply is ControlsSet with the controls now in force, in full, or an error:
        // bad_controls, forbidden (another client's stream), unknown_stream.
        public PendingRequest SetControls(string stream, Controls controls)
        {
            ulong req = NextReq();
            return Queue(req, "set_controls", stream, Requests.SetControls(stream, controls, req), _o.RequestTimeoutS);
        }

        public PendingRequest EndStream(string stream) { return EndStream(stream, _o.RequestTimeoutS); }

        // The reply comes once the stream has finished (protocol 1.1): a line whose audio went
        // whole is answered once all of it is animated, so give it time for that (NpcLine gives
        // the clip's duration and more). The stream_end the runtime publishes just before the
        // reply (Stream(id).EndReason "ended", EndFrames) tells the same, should the reply be lost.
        public PendingRequest EndStream(string stream, double timeoutS)
        {
            ulong req = NextReq();
            return Queue(req, "end_stream", stream, Requests.EndStream(stream, req), timeoutS);
        }

        ulong NextReq() { return (ulong)Interlocked.Increment(ref _nextReq); }

        PendingRequest Queue(ulong req, string type, string stream, byte[] payload, double timeoutS, bool line = false)
        {
            var p = new PendingRequest(req, type, stream, _clock(), timeoutS) { Payload = payload, Line = line };
            lock (_lock)
            {
                Tracker of;
                if (_current == null) p.Complete(null, "the client is not running");
                else if (stream != null && type != "open_stream" && _streams.TryGetValue(stream, out of) && of.Stopped)
                    p.Complete(null, type + ": " + LostByStop(stream) + ": nothing was sent; open a new stream"); // the runtime would refuse it
                else
                {
                    _pending[req] = p;
                    // end_stream is never withdrawn: sent late, it still frees its stream in the runtime.
                    p.Queued = true;
                    // Under the lock that queues it: no audio for the stream is queued behind it (SendAudio).
                    if (type == "end_stream") TrackerFor(stream).End = p;
                    // A line's set_controls and end_stream keep the line's order (after its audio).
                    of = LineOf(p);
                    _outbox.Enqueue(new Outgoing { Payload = payload, Audio = false, Req = type == "end_stream" ? 0 : req, Request = p,
                                                   Line = of, Opening = of != null ? of.Opening : 0, Stops = _stops });
                    _outboxBytes += payload.Length;
                }
            }
            return p;
        }

        static string LostByStop(string stream)
        {
            return "stream '" + stream + "' was lost when the client stopped (Stop closed the connection that opened it)";
        }

        // The line a request is of (set_controls, end_stream of a stream this client opened in mode
        // line), or null. Under _lock.
        Tracker LineOf(PendingRequest p)
        {
            Tracker t;
            if ((p.Type != "set_controls" && p.Type != "end_stream") || p.Stream == null || !_streams.TryGetValue(p.Stream, out t)) return null;
            return t.Line && t.Status.OpenedHere ? t : null;
        }

        // Gives up on a request before its own timeout (a line that stopped waiting for its
        // stream_opened): it fails with `why` at once. Still in the outbox, it is never sent (but an
        // end_stream); answered anyway, its reply changes nothing, and a stream it opened is ended.
        // False when it had its outcome already (its reply may be on the way to IsDone).
        public bool Abandon(PendingRequest request, string why)
        {
            lock (_lock)
            {
                PendingRequest p;
                if (!_pending.TryGetValue(request.Req, out p) || p != request) return false;
                _pending.Remove(request.Req);
                GaveUp(request);
            }
            request.Complete(null, why);
            return true;
        }

        // --- the worker ---------------------------------------------------------------------------

        void Run(WorkerRun run)
        {
            t_workerOf = this;
            if (run.Previous != null)
            {
                run.Previous.Join(); // one worker at a time: they share the worker-only state
                run.Previous = null; // not a chain of every run
            }
            ITransport transport = null;
            try
            {
                var topts = new TransportOptions
                {
                    PubEndpoint = _o.PubEndpoint, RouterEndpoint = _o.RouterEndpoint, Curve = _o.Curve,
                    ReceiveHighWatermark = _o.ReceiveHighWatermark,
                };
                topts.Topics.Add(Protocol.HelloTopic);
                topts.Topics.Add(Protocol.StreamTopicPrefix);
                if (_o.SubscribeStats) topts.Topics.Add(Protocol.StatsTopic);
                if (_o.Streams == null) topts.Topics.Add(Protocol.FrameTopicPrefix);
                else foreach (string s in _o.Streams) topts.Topics.Add(Protocol.FrameTopic(s));
                transport = _o.Transport();
                transport.Open(topts);
                Loop(transport, run);
            }
            catch (Exception e)
            {
                lock (_lock)
                {
                    // A stopped run's failure is not the client's (stopped, or started again since).
                    if (_current == run)
                    {
                        _failed = true;
                        _status.LastError = e.GetType().Name + ": " + e.Message;
                    }
                }
            }
            finally
            {
                if (transport != null)
                {
                    try { transport.Dispose(); }
                    catch (Exception e)
                    {
                        lock (_lock)
                        {
                            if (_last == run) _status.LastError = "closing the transport: " + e.Message; // none started since
                        }
                    }
                }
            }
        }

        void Loop(ITransport transport, WorkerRun run)
        {
            while (!run.Stop)
            {
                Flush(transport, run);
                Readiness ready = transport.Wait(_o.PollIntervalMs);
                // Drain what is queued, a bounded batch per socket so neither starves the other.
                for (int i = 0; i < 1000 && !run.Stop && (ready & Readiness.Published) != 0; i++)
                {
                    int parts;
                    if (!transport.TryReceivePublished(_topic, _payload, out parts)) break;
                    OnPublished(parts);
                }
                for (int i = 0; i < 1000 && !run.Stop && (ready & Readiness.Reply) != 0; i++)
                {
                    int parts;
                    if (!transport.TryReceiveReply(_payload, out parts)) break;
                    OnReply(parts);
                }
                // A stopped run touches nothing more: a Start since (from a frame sink) may own the state.
                if (run.Stop) break;
                // After the replies: those that came before the connection dropped still count.
                if (transport.TakeDisconnects() > 0) ConnectionDropped();
                ExpirePending(_clock());
                ResendDroppedRequests(); // after the replies were read, and with those whose caller gave up gone
                ResendDroppedEnds(_clock());
            }
        }

        // Subscriptions and queued sends, in order; a full send queue keeps the rest for later.
        // While the runtime drops this client's requests (a busy whose drops are not over: _busyAtS)
        // only live streams' audio leaves: the rest would be dropped too, and a line's audio must not
        // reach the runtime before the copies of what it dropped (ResendDroppedAudio). A line's
        // message waits while the line's previous one is not known to be read (_readNo), the line's
        // later ones behind it (other streams' messages go on): a hello probe then follows the lines'
        // messages that left, its answer telling the runtime read them, within a round trip.
        void Flush(ITransport transport, WorkerRun run)
        {
            while (true)
            {
                KeyValuePair<bool, string> sub;
                lock (_lock)
                {
                    // A stopped run takes nothing more from the queues: a Start since may own it.
                    if (_subscriptions.Count == 0 || run.Stop) break;
                    sub = _subscriptions.Dequeue();
                }
                if (sub.Key) transport.Subscribe(sub.Value);
                else transport.Unsubscribe(sub.Value);
            }
            bool holding;
            ulong readNo;
            lock (_lock)
            {
                if (_withdraw) Withdraw();
                holding = _busyAtS.HasValue;
                readNo = _readNo;
                _pass++;
            }
            bool refused = false; // the transport took no more: no connection, or ZeroMQ's queue is full
            while (true)
            {
                Outgoing next;
                lock (_lock)
                {
                    if (_outbox.Count == 0 || run.Stop) break;
                    next = _outbox.Peek();
                    if (MustWait(next, holding, readNo))
                    {
                        // Out of the outbox for this pass (its bytes still counted), put back in its place below.
                        _held.Enqueue(_outbox.Dequeue());
                        if (next.Line != null) next.Line.HeldPass = _pass;
                        continue;
                    }
                }
                if (!transport.TrySend(next.Payload)) // the runtime is away or slow
                {
                    refused = true;
                    break;
                }
                lock (_lock)
                {
                    _outbox.Dequeue();
                    _outboxBytes -= next.Payload.Length;
                    ulong no = ++_sentNo;
                    double now = _clock();
                    if (next.Request != null)
                    {
                        next.Request.Queued = false;
                        next.Request.Left = true;
                        next.Request.LastSentS = now; // it left now, not when it was queued (ResendDroppedEnds)
                        if (next.Request.SentNo == 0) next.Request.SentNo = no;
                        if (AnsweredAsRead(next.Request.Type))
                        {
                            _requestSentNo = no;
                            _requestSentAtS = now;
                        }
                    }
                    if (next.Line != null && next.Line.Opening == next.Opening)
                    {
                        next.Line.SentNo = no;
                        _lineSentNo = no;
                        if (next.Audio && next.Placed)
                        {
                            // Kept until known read: the runtime may yet say it dropped it unread (ResendDroppedAudio).
                            next.SentS = now;
                            next.SentNo = no;
                            _sentAudio.Enqueue(next);
                            _sentAudioBytes += next.Payload.Length;
                        }
                    }
                }
            }
            lock (_lock)
            {
                if (_held.Count > 0)
                {
                    // What was held goes back ahead of the rest, in its order (nothing allocated).
                    int rest = _outbox.Count;
                    while (_held.Count > 0) _outbox.Enqueue(_held.Dequeue());
                    for (; rest > 0; rest--) _outbox.Enqueue(_outbox.Dequeue());
                }
                // Forgets the audio the runtime is known to have read (before the busy, while its drops
                // last), and the oldest beyond ResendAudioMaxBytes (nothing allocated: this runs on every
                // turn of the worker's loop).
                ulong read = _busyReadNo ?? _readNo;
                while (_sentAudio.Count > 0 && (_sentAudio.Peek().SentNo <= read || _sentAudioBytes > _o.ResendAudioMaxBytes))
                    _sentAudioBytes -= _sentAudio.Dequeue().Payload.Length;
                readNo = _readNo;
            }
            double at = _clock();
            if (!holding && !refused && ProbeDue(readNo, at)) refused = !SendProbe(transport, at);
            lock (_lock)
            {
                // Only while the transport takes nothing: the lines' messages waiting for the runtime to
                // read what went before (or for the drops' end) are no sign of a runtime that is away
                // (NPC lines pushed whole at once would lose their audio).
                if (_outboxBytes <= _o.OutboxMaxBytes || !refused) return;
                int dropped = DropAudio(_o.OutboxMaxBytes);
                if (dropped == 0) return; // requests alone: they stay
                _status.Unsent += (ulong)dropped;
                _status.LastError = "the runtime at " + _o.RouterEndpoint + " has taken no message for a while: the oldest " +
                                    "unsent audio was dropped (ClientStatus.Unsent counts it)";
            }
        }

        // Whether a message at the head of the outbox stays there on this pass (under _lock): while
        // the drops last, all but live streams' audio; a line's message while the line's previous one
        // is not known read, or one of the line's earlier ones was held on this pass; a hello request
        // while anything queued before it is held (its reply says the runtime read all that: NpcLine
        // ends a line after such a barrier). A line lost or ended waits for nothing (the runtime takes
        // nothing more of it anyway).
        bool MustWait(Outgoing m, bool holding, ulong readNo)
        {
            if (holding && !(m.Audio && m.Line == null)) return true;
            if (m.Request != null && m.Request.Type == "hello" && _held.Count > 0) return true;
            Tracker t = m.Line;
            if (t == null || t.Opening != m.Opening || !t.Line || t.Lost || t.Status.Ended) return false;
            return t.HeldPass == _pass || t.SentNo > readNo;
        }

        // Whether a hello probe is due at `now`: its answer says the runtime read every message before
        // it (readNo: the last one known read). One follows the lines' messages at once (a line's next
        // one waits for it), and a request answered as read (AnsweredAsRead) left unanswered for
        // ProbeAgainS: dropped unread in a busy's window (which ends Protocol.BusyWindowS after the
        // busy came, so after the request left; nothing but live audio leaves before), or a hello
        // lost with a connection that dropped (ResendDroppedRequests). A probe unanswered for
        // ProbeAgainS is taken as lost too, and another follows. Worker only.
        bool ProbeDue(ulong readNo, double now)
        {
            if (_lineSentNo > readNo && (_probeNo < _lineSentNo || now - _probeAtS >= ProbeAgainS)) return true;
            if (_requestSentNo <= readNo) return false;
            return _probeNo < _requestSentNo ? now - _requestSentAtS >= ProbeAgainS : now - _probeAtS >= ProbeAgainS;
        }

        // The requests the runtime answers as it reads them (end_stream only once its stream has ended):
        // one still unanswered once a request sent after it was answered was never read.
        static bool AnsweredAsRead(string type)
        {
            return type == "hello" || type == "open_stream" || type == "set_controls";
        }

        // A hello request after the lines' messages that left: its answer says the runtime read them
        // (OnReply). False when the transport did not take it.
        bool SendProbe(ITransport transport, double now)
        {
            // One probe, built once: the transport refusing it (no connection) is retried on every
            // turn, with the same bytes (no allocation, no req taken per turn).
            if (_unsentProbe == null)
            {
                _unsentProbeReq = NextReq();
                _unsentProbe = Requests.Hello(_unsentProbeReq);
            }
            ulong req = _unsentProbeReq;
            if (!transport.TrySend(_unsentProbe)) return false;
            _unsentProbe = null;
            lock (_lock)
            {
                _probeNo = ++_sentNo;
                _probeAtS = now;
                _probes[req] = _probeNo;
                _probeOrder.Enqueue(req);
                while (_probeOrder.Count > ProbesKept) _probes.Remove(_probeOrder.Dequeue());
            }
            return true;
        }

        // The outbox less its oldest audio messages, down to `limit` bytes: live streams' first (a
        // live stream wants the present; a mic pushing faster than the runtime takes filled the
        // outbox and took the lines' audio with it), the lines' only if that is not enough (every
        // frame of a line is wanted, however late). Requests stay: they are small, and they fail on
        // their own when no reply comes. Returns how many were dropped. Under _lock, on the worker
        // (the only thread that takes from the outbox).
        int DropAudio(long limit)
        {
            int dropped = 0;
            foreach (bool linesToo in new[] { false, true })
            {
                for (int n = _outbox.Count; n > 0; n--) // once round the queue, keeping the order
                {
                    Outgoing m = _outbox.Dequeue();
                    if (m.Audio && _outboxBytes > limit && (linesToo || m.Line == null))
                    {
                        _outboxBytes -= m.Payload.Length;
                        dropped++;
                    }
                    else _outbox.Enqueue(m);
                }
            }
            return dropped;
        }

        // The outbox less the requests that failed before they were sent (no reply awaited any more):
        // counted in Withdrawn; and less everything queued before the latest Stop (Stop sets _withdraw):
        // the streams it was for went with that connection, and the runtime would refuse it on the
        // next (forbidden, unknown_stream). Its audio counts in Unsent, as on a dropped connection; its
        // requests in Withdrawn: every one of them failed with the stop, and an end_stream (never
        // withdrawn otherwise: late, it still frees its stream) can no longer free it, while its
        // refusal, naming the id, would mark lost a stream opened again with that id since.
        // Under _lock, on the worker (the only thread that takes from the outbox).
        void Withdraw()
        {
            _withdraw = false;
            for (int n = _outbox.Count; n > 0; n--) // once round the queue, keeping the order
            {
                Outgoing m = _outbox.Dequeue();
                if (m.Audio && m.Stops != _stops)
                {
                    _outboxBytes -= m.Payload.Length;
                    _status.Unsent++;
                }
                else if ((m.Req != 0 && !_pending.ContainsKey(m.Req)) || m.Stops != _stops)
                {
                    _outboxBytes -= m.Payload.Length;
                    _status.Withdrawn++;
                }
                else _outbox.Enqueue(m);
            }
        }

        // A request failed without its reply (under _lock): out of the outbox if it is still there,
        // and an open_stream's stream is not this client's (as when it is refused).
        void GaveUp(PendingRequest p)
        {
            _withdraw = true;
            Tracker t;
            if (p.Type == "open_stream" && p.Stream != null && _streams.TryGetValue(p.Stream, out t) && !t.OpenConfirmed && !t.Status.Ended)
                t.Status.OpenedHere = false;
        }

        // The DEALER's connection dropped. ZeroMQ reconnects by itself, but the new connection has
        // another routing id, and the runtime keeps each stream for the connection that opened it
        // (SPEC 1, Ownership): every stream this client opened is lost (the runtime ends it after
        // its idle timeout), and so is the audio still waiting to go to them. An open_stream, or a
        // set_controls of a stream this client opened, that left and is still unanswered fails at
        // once, and is never sent again (SPEC 4.6): the runtime may have read it and carried it out
        // for that connection, its answer lost with it, so a copy on the next connection would open
        // a second stream (no id), be refused busy "already open" for an open that worked, or be
        // refused as a stream the new connection does not own. A hello that left goes again
        // (ResendDroppedRequests): a second one is harmless; and so does a set_controls of a stream
        // this client did not open (the runtime's own mic): that stream lost nothing with the
        // connection, and a second copy sets the same controls (as the Python SDK does). Its caller
        // gets the copy's answer. Requests still in the outbox (never left, or a copy queued
        // again) go on the next connection. (One that left on the new connection, which ZeroMQ
        // makes 100 ms later, before the worker saw the drop, fails with them: the worker was held
        // up that long.) Completed outside the lock, as FailPending does.
        void ConnectionDropped()
        {
            double now = _clock();
            List<KeyValuePair<PendingRequest, string>> failed = null; // nothing allocated unless one fails
            lock (_lock)
            {
                foreach (Tracker t in _streams.Values)
                {
                    if (t.Status.OpenedHere && t.OpenConfirmed && !t.Status.Ended)
                        Lose(t, "reconnect", "the connection to the runtime dropped, and the stream with it", now);
                }
                _status.Unsent += (ulong)DropAudio(0);
                foreach (PendingRequest p in _pending.Values)
                {
                    if ((p.Type != "open_stream" && p.Type != "set_controls") || p.Queued || p.SentNo == 0) continue;
                    if (p.Type == "set_controls" && !OpenedHere(p.Stream)) continue; // it goes again: ResendDroppedRequests
                    if (failed == null) failed = new List<KeyValuePair<PendingRequest, string>>();
                    failed.Add(new KeyValuePair<PendingRequest, string>(p, LostOnTheWay(p)));
                }
                if (failed == null) return;
                foreach (KeyValuePair<PendingRequest, string> f in failed)
                {
                    _pending.Remove(f.Key.Req);
                    GaveUp(f.Key); // an open_stream's stream is not known to be this client's
                }
            }
            foreach (KeyValuePair<PendingRequest, string> f in failed) f.Key.Complete(null, f.Value);
        }

        // Whether this client opened `stream` (or is opening it). Under _lock.
        bool OpenedHere(string stream)
        {
            Tracker t;
            return stream != null && _streams.TryGetValue(stream, out t) && t.Status.OpenedHere;
        }

        // Why a request that left on a connection that dropped fails (ConnectionDropped; under _lock,
        // the streams already lost): an open_stream, or a set_controls of a stream this client opened.
        string LostOnTheWay(PendingRequest p)
        {
            string why = p.Type + ": the connection to the runtime at " + _o.RouterEndpoint + " dropped while it was on its way; " +
                         "the runtime may have carried it out for that connection, so it is not sent again: ";
            string stream = p.Stream != null ? "stream '" + p.Stream + "'" : "the stream";
            return why + "a runtime still running ends " + stream + " after its idle timeout (one that restarted never had it); " +
                   "open a new stream, with another id";
        }

        // Fails the requests whose reply is overdue: it was lost with a dropped connection, or the
        // runtime is away (the request still waits in the outbox) or stuck. Whoever waits on one
        // learns it, instead of waiting forever.
        void ExpirePending(double now)
        {
            List<PendingRequest> expired = null;
            lock (_lock)
            {
                foreach (KeyValuePair<ulong, PendingRequest> kv in _pending)
                {
                    if (now - kv.Value.SentS < kv.Value.TimeoutS) continue;
                    if (expired == null) expired = new List<PendingRequest>();
                    expired.Add(kv.Value);
                }
                if (expired == null) return;
                foreach (PendingRequest p in expired)
                {
                    _pending.Remove(p.Req);
                    GaveUp(p);
                }
            }
            foreach (PendingRequest p in expired)
                p.Complete(null, p.Type + ": no reply from the runtime at " + _o.RouterEndpoint + " within " + p.TimeoutS + " s");
        }

        // The runtime said (busy, neither req nor stream) that it dropped this client's requests unread,
        // until a window of at most Protocol.BusyWindowS ended: an end_stream that left before that end
        // and is still unanswered after it may have been dropped, so it goes again. One still in the
        // outbox (it never left, or its copy has not) was not dropped: no copy is queued behind it. A
        // second end_stream is harmless (SPEC 4.6, "A client past its share"); other requests go again
        // only once the answer to a request sent after them shows they were not read
        // (ResendDroppedRequests): merely unanswered, one may still be on its way.
        void ResendDroppedEnds(double now)
        {
            lock (_lock)
            {
                if (!_busyAtS.HasValue) return;
                double dropsEnd = _busyAtS.Value + Protocol.BusyWindowS;
                if (now < dropsEnd) return;
                ResendDroppedAudio(_busyAtS.Value);
                foreach (PendingRequest p in _pending.Values)
                {
                    if (p.Type != "end_stream" || p.Queued || p.LastSentS >= dropsEnd) continue;
                    p.Queued = true;
                    Tracker line = LineOf(p); // after the copies of its line's audio, one at a time
                    _outbox.Enqueue(new Outgoing { Payload = p.Payload, Audio = false, Request = p, Line = line,
                                                   Opening = line != null ? line.Opening : 0, Stops = _stops });
                    _outboxBytes += p.Payload.Length;
                    _status.Resent++;
                    RememberResent(p.Req);
                }
                _busyAtS = null;
            }
        }

        // The requests the runtime answers as it reads them (AnsweredAsRead) still unanswered behind
        // one it answered since (_readNo: it reads a connection's messages in order) were never read:
        // dropped unread after a busy, or a hello, or a set_controls of a stream this client did not
        // open, lost with a connection that dropped. (An open_stream, or a set_controls of a stream
        // this client opened, that left on a connection that dropped is not among them: it failed
        // then, since the runtime may have carried it out for that connection, its answer lost with
        // it: ConnectionDropped.) Each goes again, counted in Resent, numbered anew when it leaves. An
        // open_stream or set_controls goes ahead of what waits in the outbox, in their order (a
        // line's set_controls left only once the line's message before it was known read, so none
        // of the line's earlier messages waits to go again); a hello behind it: its answer tells the
        // runtime read all that was queued before it (NpcLine's barrier), so it overtakes nothing.
        // One whose caller gave up (timed out, abandoned) is no longer pending: it is not sent again.
        // A limit, as in the SDK: an answer the runtime could not deliver (the client read nothing
        // for long) is taken for a drop.
        // On the worker, after the replies were read (an answer that came is no reason to send it again).
        void ResendDroppedRequests()
        {
            lock (_lock)
            {
                List<PendingRequest> again = null; // nothing allocated unless something goes again
                foreach (PendingRequest p in _pending.Values)
                {
                    if (!AnsweredAsRead(p.Type) || p.Queued || p.SentNo == 0 || p.SentNo >= _readNo) continue;
                    if (again == null) again = new List<PendingRequest>();
                    again.Add(p);
                }
                if (again == null) return;
                again.Sort((a, b) => a.Req.CompareTo(b.Req));
                int queued = _outbox.Count, ahead = 0;
                foreach (PendingRequest p in again)
                {
                    if (p.Type == "hello") continue;
                    QueueAgain(p);
                    ahead++;
                }
                if (ahead > 0) for (int n = queued; n > 0; n--) _outbox.Enqueue(_outbox.Dequeue()); // what waited goes after them
                foreach (PendingRequest p in again)
                {
                    if (p.Type == "hello") QueueAgain(p);
                }
            }
        }

        // A copy of a request the runtime dropped unread, at the tail of the outbox (under _lock): it is
        // numbered anew when it leaves (its answer then says the runtime read everything up to the copy).
        void QueueAgain(PendingRequest p)
        {
            p.SentNo = 0;
            p.Queued = true;
            Tracker line = LineOf(p); // a line's set_controls keeps its place in the line's order
            _outbox.Enqueue(new Outgoing { Payload = p.Payload, Audio = false, Req = p.Req, Request = p, Line = line,
                                           Opening = line != null ? line.Opening : 0, Stops = _stops });
            _outboxBytes += p.Payload.Length;
            _status.Resent++;
            RememberResent(p.Req);
        }

        // A request sent again (under _lock): the answer to its other copy changes nothing (OnReply).
        void RememberResent(ulong req)
        {
            if (_resent.Add(req))
            {
                _resentOrder.Enqueue(req);
                if (_resentOrder.Count > ResentKept) _resent.Remove(_resentOrder.Dequeue());
            }
        }

        // Under _lock, on the worker, once the drops the runtime told of at `busyAtS` are over: the
        // audio of lines that left after the last message the runtime was known to have read when the
        // busy came (it answered a request sent as or after it: a connection's messages are read in
        // order, and what was read before the first one dropped was answered before the busy; a
        // message sent long before can have waited in ZeroMQ's and TCP's queues and been read in the
        // window) and before the drops ended goes again, in its order, at the head of the outbox
        // (ahead of audio queued since), so before the end_streams sent again. Nothing of lines left
        // while the drops lasted (Flush), and a line's next message leaves only once its previous one
        // is known read, so no later audio of a line reached the runtime before these copies. Lines
        // only, still open here (the same opening of the id: never to a stream opened again with it
        // since; not ended, not lost, their end_stream not answered): every frame of a line is
        // wanted, however late; a live stream wants the present, and the gap of the drops is silence
        // to it. Only audio sent with its at_sample is kept for this (NpcLine and OfflineLine place
        // all theirs): the runtime drops what it has of a copy (SPEC 4.6 audio), so it takes only
        // what it lacks; a copy without one would be appended to the line. Counted in Resent.
        void ResendDroppedAudio(double busyAtS)
        {
            ulong read = _busyReadNo ?? _readNo;
            _busyReadNo = null;
            _probeNo = 0; // a probe sent before may have been dropped unread: one follows the copies
            while (_sentAudio.Count > 0 && _sentAudio.Peek().SentNo <= read) _sentAudioBytes -= _sentAudio.Dequeue().Payload.Length;
            double last = busyAtS + Protocol.BusyWindowS;
            int queued = _outbox.Count, again = 0;
            for (int n = _sentAudio.Count; n > 0; n--) // once round the kept audio, keeping the order
            {
                Outgoing m = _sentAudio.Dequeue();
                Tracker t;
                if (m.SentS <= last && _streams.TryGetValue(m.Stream, out t) && t == m.Line && t.Opening == m.Opening &&
                    t.Line && t.Status.OpenedHere && !t.Status.Ended && (t.End == null || !t.End.IsDone))
                {
                    _sentAudioBytes -= m.Payload.Length; // kept again once it leaves again
                    _outbox.Enqueue(m);
                    _outboxBytes += m.Payload.Length;
                    again++;
                }
                else _sentAudio.Enqueue(m);
            }
            if (again == 0) return;
            for (int n = queued; n > 0; n--) _outbox.Enqueue(_outbox.Dequeue()); // what was queued before goes after them
            _status.Resent += (ulong)again;
        }

        void OnPublished(int parts)
        {
            double arrival = _clock();
            lock (_lock) _status.Messages++;
            if (parts != 2)
            {
                Bad("a PUB message has 2 frames [topic, payload], got " + parts);
                return;
            }
            TopicKind kind;
            int streamOffset, streamLength;
            if (!Protocol.TryParseTopic(_topic.Data, 0, _topic.Length, out kind, out streamOffset, out streamLength))
            {
                Bad("unknown topic '" + System.Text.Encoding.ASCII.GetString(_topic.Data, 0, Math.Min(_topic.Length, 80)) + "'");
                return;
            }
            Message msg;
            try
            {
                msg = _decoder.Decode(_payload.Data, 0, _payload.Length);
            }
            catch (ProtocolException e)
            {
                if (e.Code == ErrorCode.UnknownType)
                {
                    lock (_lock) _status.Ignored++; // a newer runtime's message type (SPEC 3.2)
                    return;
                }
                Bad(e.Message);
                return;
            }
            // The payload must agree with its topic (SPEC 2).
            switch (msg.Type)
            {
                case MessageType.Frame:
                    if (kind == TopicKind.Frame && SameStream(((Frame)msg).Stream, streamOffset, streamLength)) { OnFrame((Frame)msg, arrival); return; }
                    break;
                case MessageType.StreamStart:
                case MessageType.StreamEnd:
                    string sid = msg.Type == MessageType.StreamStart ? ((StreamStart)msg).Stream : ((StreamEnd)msg).Stream;
                    if (kind == TopicKind.Stream && SameStream(sid, streamOffset, streamLength)) { OnStreamEvent(msg, arrival); return; }
                    break;
                case MessageType.Hello:
                    if (kind == TopicKind.Hello && ((Hello)msg).FromRuntime) { OnHello((Hello)msg, arrival); return; }
                    break;
                case MessageType.Stats:
                    if (kind == TopicKind.Stats) { OnStats((Stats)msg, arrival); return; }
                    break;
            }
            Bad("a '" + msg.Type + "' message does not belong on topic '" +
                System.Text.Encoding.ASCII.GetString(_topic.Data, 0, Math.Min(_topic.Length, 80)) + "'");
        }

        bool SameStream(string stream, int offset, int length)
        {
            if (stream.Length != length) return false;
            for (int i = 0; i < length; i++)
            {
                if (stream[i] != (char)_topic.Data[offset + i]) return false;
            }
            return true;
        }

        // The frame goes to the jitter buffer and the sinks first, and only then into the status
        // other threads read: whoever sees a stream Ended (or its Frames count) knows the buffer and
        // every sink already have those frames, so a line is never Done, nor a face reset on its
        // end, with its last frame still on the way (events of a stream in the runtime's order).
        void OnFrame(Frame f, double arrival)
        {
            IFrameSink[] sinks;
            lock (_lock) sinks = _sinkSnapshot;
            Buffer.Push(f, arrival);
            for (int i = 0; i < sinks.Length; i++)
            {
                try { sinks[i].OnFrame(f, arrival); }
                catch (Exception e) { lock (_lock) _status.LastError = "frame sink: " + e.Message; }
            }
            lock (_lock)
            {
                Tracker t = TrackerFor(f.Stream);
                StreamStatus s = t.Status;
                if (s.Ended && !t.Lost)
                {
                    // A frame after the stream's end: a new stream reusing the id (its start missed).
                    // Not after a loss seen here (restart, reconnect): the runtime may still animate
                    // the audio it has, and the loss stays until the id is opened or started again.
                    ResetTracker(t);
                }
                ulong gap = t.NextSeq.HasValue && f.Seq > t.NextSeq.Value ? f.Seq - t.NextSeq.Value : 0;
                // seq below the expected one: the stream restarted under the same id; a stream
                // first seen mid-way (joined late) is not a loss either.
                t.NextSeq = f.Seq + 1;
                s.Frames++;
                s.Dropped += gap;
                s.LastIndex = f.Index;
                s.LastFrameS = arrival;
                _status.Frames++;
                _status.Dropped += gap;
                if (f.CapturedNs.HasValue)
                {
                    t.Latencies[t.LatencyNext] = (f.PublishedNs - f.CapturedNs.Value) / 1e6;
                    t.LatencyNext = (t.LatencyNext + 1) % LatencyWindow;
                    if (t.LatencyCount < LatencyWindow) t.LatencyCount++;
                }
                t.Arrivals[t.ArrivalNext] = arrival;
                t.ArrivalNext = (t.ArrivalNext + 1) % ArrivalWindow;
                if (t.ArrivalCount < ArrivalWindow) t.ArrivalCount++;
                if (f.Last)
                {
                    s.Ended = true; // protocol 1.1: every stream's final frame carries last
                    t.Lost = false; // really over: a later frame is a new stream reusing the id
                    t.NextSeq = null;
                }
            }
        }

        // The jitter buffer learns of the start or end before the status and the events do (as
        // for frames): a game that drains StreamEnd finds the buffer already told.
        void OnStreamEvent(Message msg, double arrival)
        {
            if (msg is StreamStart) Buffer.BeginStream(((StreamStart)msg).Stream);
            else Buffer.EndStream(((StreamEnd)msg).Stream);
            lock (_lock)
            {
                if (msg is StreamStart)
                {
                    var start = (StreamStart)msg;
                    Tracker t = TrackerFor(start.Stream);
                    bool opened = t.Status.OpenedHere && !t.Status.Ended;
                    ResetTracker(t); // a fresh stream: its frames start at seq 0
                    t.Status.OpenedHere = opened;
                    t.OpenConfirmed = opened && t.OpenConfirmed;
                    t.Status.Source = start.Source;
                    t.Status.Mode = start.Mode;
                    t.Status.LatencyMs = start.LatencyMs;
                    Emit(ClientEventKind.StreamStart, msg, start.Stream, null, arrival);
                }
                else
                {
                    var end = (StreamEnd)msg;
                    Tracker t = TrackerFor(end.Stream);
                    t.Status.Ended = true;
                    t.Status.EndReason = end.Reason;
                    t.Lost = false; // really over: a later frame is a new stream reusing the id
                    t.Status.EndFrames = end.Frames;
                    t.Status.Source = end.Source;
                    t.NextSeq = null;
                    Emit(ClientEventKind.StreamEnd, msg, end.Stream, end.Reason, arrival);
                }
            }
        }

        void OnStats(Stats stats, double arrival)
        {
            lock (_lock)
            {
                _status.LastStats = stats;
                _status.LastStatsS = arrival;
                foreach (var kv in stats.Streams)
                {
                    Tracker t;
                    if (!_streams.TryGetValue(kv.Key, out t)) continue;
                    t.Status.StatsLatencyP95Ms = kv.Value.LatencyP95Ms;
                    if (kv.Value.Source != null) t.Status.Source = kv.Value.Source;
                }
                Emit(ClientEventKind.Stats, stats, null, null, arrival);
            }
        }

        void OnHello(Hello hello, double arrival)
        {
            bool restarted = false;
            string old = null;
            lock (_lock)
            {
                _status.LastHelloS = arrival;
                _status.RuntimeVersion = hello.Runtime;
                _status.Blendshapes = hello.Blendshapes;
                // A never-seen instance is a new runtime process; one seen before is a late
                // message of an older one and changes nothing.
                if (hello.Instance != null && !_seenInstances.Contains(hello.Instance))
                {
                    _seenInstances.Add(hello.Instance);
                    if (_status.Instance != null)
                    {
                        restarted = true;
                        old = _status.Instance;
                        _status.Restarts++;
                    }
                    _status.Instance = hello.Instance;
                }
                Emit(ClientEventKind.Hello, hello, null, null, arrival);
                if (restarted)
                {
                    Emit(ClientEventKind.RuntimeRestart, hello, null, "instance " + old + " -> " + hello.Instance, arrival);
                    foreach (Tracker t in _streams.Values)
                    {
                        t.NextSeq = null;
                        if (t.Status.OpenedHere && !t.Status.Ended) Lose(t, "restart", "the runtime restarted and lost the stream", arrival);
                    }
                }
            }
            if (restarted)
            {
                // The buffer lets go of the old runtime's unfinished streams before the pending
                // requests fail, so whoever a failed request wakes already sees their frames gone.
                // Streams whose end came stay: a line received whole still plays with its audio.
                Buffer.ForgetUnfinished();
                FailPending("the runtime restarted (instance " + old + " -> " + hello.Instance + ")");
            }
        }

        void OnReply(int parts)
        {
            double arrival = _clock();
            if (parts != 1)
            {
                Bad("a DEALER message has 1 frame, got " + parts);
                return;
            }
            Message msg;
            try
            {
                msg = _decoder.Decode(_payload.Data, 0, _payload.Length);
            }
            catch (ProtocolException e)
            {
                Bad(e.Message);
                return;
            }
            ulong? req = null;
            PendingRequest p = null; // the request this replies to, taken from _pending
            switch (msg.Type)
            {
                case MessageType.Hello:
                    var hello = (Hello)msg;
                    if (!hello.FromRuntime) { Bad("a hello reply without the runtime's fields"); return; }
                    if (hello.Req.HasValue && TakeProbe(hello.Req.Value)) return; // it says what was read, nothing else
                    OnHello(hello, arrival);
                    req = hello.Req;
                    break;
                case MessageType.StreamOpened:
                    var opened = (StreamOpened)msg;
                    req = opened.Req;
                    lock (_lock)
                    {
                        // Taken at once, so that it cannot fail (Abandon) between this and its completion.
                        if (req.HasValue && _pending.TryGetValue(req.Value, out p)) _pending.Remove(req.Value);
                        if (p != null) Answered(p);
                        if (p == null)
                        {
                            // Its open_stream failed (timed out, abandoned) after it left: nobody will
                            // use the stream, so it is ended now rather than by the runtime's idle timeout.
                            ulong endReq = NextReq();
                            _orphanEnds.Add(endReq);
                            byte[] end = Requests.EndStream(opened.Stream, endReq);
                            _outbox.Enqueue(new Outgoing { Payload = end, Audio = false, Stops = _stops });
                            _outboxBytes += end.Length;
                            return;
                        }
                        Tracker t = TrackerFor(opened.Stream);
                        // An id the runtime picked may be one it gave before a restart (its ids start
                        // again at sdk-1): a stream lost or ended under it is over, and this one is
                        // opened again, as OpenStream with the id does; else a loss would hold the new
                        // stream's frames back and its start would not count it opened here. Only
                        // then: the frames of a stream_start that came first are this stream's.
                        if (p.Stream == null && (t.Status.Ended || t.Lost)) ResetTracker(t);
                        t.Status.OpenedHere = true;
                        t.OpenConfirmed = true;
                        t.Line = p.Line;
                        if (p.Stream == null)
                        {
                            t.End = null; // an id the runtime picked: maybe one it gave before a restart
                            t.Opening = ++_openings;
                            t.SentNo = 0;
                        }
                        if (opened.Mode != null) t.Status.Mode = opened.Mode;                 // 1.2
                        if (opened.LatencyMs.HasValue) t.Status.LatencyMs = opened.LatencyMs; // 1.2
                        // An id the runtime picked: subscribe its frames now (when filtering).
                        if (_o.Streams != null) _subscriptions.Enqueue(new KeyValuePair<bool, string>(true, Protocol.FrameTopic(opened.Stream)));
                    }
                    break;
                case MessageType.StreamEnded:
                    req = ((StreamEnded)msg).Req;
                    if (req.HasValue) lock (_lock) _orphanEnds.Remove(req.Value); // a late stream's end: nothing more
                    break;
                case MessageType.ControlsSet:
                    req = ((ControlsSet)msg).Req;
                    break;
                case MessageType.Error:
                    var error = (ErrorReply)msg;
                    req = error.Req;
                    lock (_lock)
                    {
                        if (req.HasValue && _orphanEnds.Remove(req.Value)) break; // a late stream's end refused: it is gone anyway
                        PendingRequest answered;
                        if (req.HasValue && _pending.TryGetValue(req.Value, out answered)) Answered(answered);
                        if (!req.HasValue && error.Stream == null && error.ErrorCode == ErrorCode.Busy)
                        {
                            _busyAtS = arrival; // past its share: this client's requests are dropped unread for a while
                            // What it read before was answered before this reply: all sent after may have
                            // been dropped. A busy whose drops are not over yet keeps its own, lower.
                            if (!_busyReadNo.HasValue) _busyReadNo = _readNo;
                        }
                        // A request sent again that is still pending: an end_stream's copy refused
                        // unknown_stream is its other copy ending the stream; any other request went
                        // again only once known unread, so its copy's refusal is its answer.
                        PendingRequest copyOf;
                        if (req.HasValue && _resent.Contains(req.Value) &&
                            (!_pending.TryGetValue(req.Value, out copyOf) ||
                             (copyOf.Type == "end_stream" && error.ErrorCode == ErrorCode.UnknownStream)))
                        {
                            req = null; // a copy's answer: the request was answered already, or its other copy is ending the stream
                            break;
                        }
                        PendingRequest awaiting;
                        if (!req.HasValue || !_pending.TryGetValue(req.Value, out awaiting)) awaiting = null;
                        string stream = error.Stream ?? (awaiting != null ? awaiting.Stream : null);
                        Tracker t;
                        if (stream == null || !_streams.TryGetValue(stream, out t)) t = null;
                        // An error no request waits for (audio has no req) belongs to its stream.
                        if (awaiting == null && error.Stream != null && t != null) t.Status.Errors.Add(error);
                        Emit(ClientEventKind.Error, error, stream, error.ToString(), arrival);
                        if (t == null) break;
                        if (awaiting != null && awaiting.Type == "open_stream")
                        {
                            // Refused (busy: the id is taken, maybe by another client): never this client's.
                            t.Status.OpenedHere = false;
                            t.OpenConfirmed = false;
                        }
                        else if ((error.ErrorCode == ErrorCode.Forbidden || error.ErrorCode == ErrorCode.UnknownStream) &&
                                 t.Status.OpenedHere && !t.Status.Ended && !EndingAnswer(t, error, awaiting))
                        {
                            // The runtime no longer takes this stream from this client: the connection
                            // that opened it dropped and ZeroMQ's new one has another routing id (SPEC
                            // 1, Ownership), and maybe its idle timeout has ended it since.
                            Lose(t, "reconnect", "the runtime refused the stream's " + (error.RequestType ?? "message") + " (" + error.Code +
                                                 "): the connection that opened it dropped", arrival);
                        }
                    }
                    break;
                default:
                    Bad("a '" + msg.Type + "' message is not a reply");
                    return;
            }
            if (p == null)
            {
                lock (_lock)
                {
                    if (req.HasValue && _pending.TryGetValue(req.Value, out p))
                    {
                        _pending.Remove(req.Value);
                        Answered(p);
                    }
                }
            }
            if (p != null) p.Complete(msg, null);
        }

        // A request was answered (under _lock): the runtime read every message up to the one it left
        // as (it reads a connection's messages in order, and answers after reading).
        void Answered(PendingRequest p)
        {
            if (p.SentNo > _readNo) _readNo = p.SentNo;
        }

        // The answer to a hello probe (SendProbe): the runtime read every message up to it. False for
        // any other hello reply.
        bool TakeProbe(ulong req)
        {
            lock (_lock)
            {
                ulong no;
                if (!_probes.TryGetValue(req, out no)) return false;
                _probes.Remove(req);
                if (no > _readNo) _readNo = no;
                return true;
            }
        }

        void Bad(string message)
        {
            lock (_lock)
            {
                _status.BadMessages++;
                _status.LastError = message;
                Emit(ClientEventKind.BadMessage, null, null, message, _clock());
            }
        }

        void FailPending(string why)
        {
            List<PendingRequest> failed;
            lock (_lock) failed = TakePending();
            foreach (PendingRequest p in failed) p.Complete(null, why);
        }

        // Every pending request, taken out to fail (under _lock; completed outside it).
        List<PendingRequest> TakePending()
        {
            var failed = new List<PendingRequest>(_pending.Values);
            _pending.Clear();
            _withdraw = true; // a stopped client started again, a new runtime: none of them goes out
            return failed;
        }

        // --- helpers (under _lock) --------------------------------------------------------------

        // A stream this client opened is gone without its stream_end (the runtime restarted, or the
        // connection that opened it dropped): ended, with the reason, and a StreamLost event.
        void Lose(Tracker t, string reason, string text, double time)
        {
            t.Status.Ended = true;
            t.Status.EndReason = reason;
            t.Lost = true;
            t.NextSeq = null;
            Emit(ClientEventKind.StreamLost, null, t.Status.Stream, text, time);
        }

        // unknown_stream for a stream whose end_stream this client sent, answering something else than
        // that end_stream (e.g. a set_controls after it): the runtime is ending the stream, or has
        // ended it (its stream_end tells how). Not a loss: the end_stream's own answer says if it was
        // gone already.
        static bool EndingAnswer(Tracker t, ErrorReply error, PendingRequest awaiting)
        {
            return error.ErrorCode == ErrorCode.UnknownStream && t.End != null && t.End.Left &&
                   (awaiting == null || awaiting.Type != "end_stream");
        }

        void Emit(ClientEventKind kind, Message msg, string stream, string text, double time)
        {
            if (_events.Count >= _o.MaxEvents)
            {
                _events.Dequeue();
                _status.EventsDropped++;
            }
            _events.Enqueue(new ClientEvent { Kind = kind, Message = msg, Stream = stream, Text = text, TimeS = time });
        }

        Tracker TrackerFor(string stream)
        {
            Tracker t;
            if (_streams.TryGetValue(stream, out t)) return t;
            if (_streams.Count >= MaxStreamsKept) Evict();
            t = new Tracker();
            t.Status.Stream = stream;
            _streams[stream] = t;
            return t;
        }

        // Forgets the stream record seen longest ago, ended ones first.
        void Evict()
        {
            string victim = null;
            double oldest = double.MaxValue;
            bool victimEnded = false;
            foreach (var kv in _streams)
            {
                bool ended = kv.Value.Status.Ended;
                if ((ended && !victimEnded) || (ended == victimEnded && kv.Value.Status.LastFrameS < oldest))
                {
                    victim = kv.Key;
                    oldest = kv.Value.Status.LastFrameS;
                    victimEnded = ended;
                }
            }
            if (victim != null) _streams.Remove(victim);
        }

        static void ResetTracker(Tracker t)
        {
            StreamStatus s = t.Status;
            s.Ended = false;
            s.EndReason = null;
            s.EndFrames = null;
            t.Lost = false;
            t.Stopped = false;
            s.Frames = 0;
            s.Dropped = 0;
            s.Errors.Clear();
            s.Mode = null;
            s.LatencyMs = null;
            t.NextSeq = null;
            t.LatencyCount = t.LatencyNext = 0;
            t.ArrivalCount = t.ArrivalNext = 0;
        }

        static StreamStatus Snapshot(Tracker t, double now)
        {
            StreamStatus s = t.Status;
            var copy = new StreamStatus
            {
                Stream = s.Stream, Source = s.Source, OpenedHere = s.OpenedHere, Ended = s.Ended, EndReason = s.EndReason, EndFrames = s.EndFrames,
                Frames = s.Frames, Dropped = s.Dropped, LastIndex = s.LastIndex, LastFrameS = s.LastFrameS,
                StatsLatencyP95Ms = s.StatsLatencyP95Ms, Mode = s.Mode, LatencyMs = s.LatencyMs,
            };
            copy.Errors.AddRange(s.Errors);
            int recent = 0;
            for (int i = 0; i < t.ArrivalCount; i++)
            {
                if (now - t.Arrivals[i] <= 1.0) recent++;
            }
            copy.ReceiveFps = recent;
            if (t.LatencyCount > 0)
            {
                var sorted = new double[t.LatencyCount];
                Array.Copy(t.Latencies, sorted, t.LatencyCount);
                Array.Sort(sorted);
                copy.LatencyP95Ms = sorted[(int)Math.Ceiling(0.95 * sorted.Length) - 1];
            }
            return copy;
        }
    }
}
