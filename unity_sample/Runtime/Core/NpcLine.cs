// An NPC line: a clip of audio pushed to the runtime as its own stream, then played so that
// lips and audio match (SPEC 6.1).
//
// Protocol 1.2 (the runtime answers open_stream with mode "line"): the line is opened in mode
// "line", its audio pushed whole at once (in messages of up to 10 s under the protocol's 1 MiB
// message limit, at most max_ahead_s ahead of real time, less a margin, like the Python SDK's
// StreamHandle.push, so the runtime animates it from one pass over all of it; audio refused with `busy` as too
// far ahead is sent again later) and end_stream sent at once, so the runtime animates it, tail
// included, as fast as the machine allows. The runtime states the latency it adds for the stream
// (latency_ms in stream_opened): playback starts that long, plus the margin, after the first
// push (as the Python SDK's LineSync), and every frame is there before its instant.
//
// A 1.1 runtime (no mode, no latency_ms in its reply) animates the stream live: the line then
// pushes its audio at the clip's own pace (20 ms messages, like a live source) and the latency
// is estimated (`stats` reports it per stream as latency_p95_ms, and every frame carries
// published_ns - captured_ns).
//
// Either way the clip starts playing `latency + margin` after the first push, once the first
// frame is there. The face then shows frame i at T0 + t_audio(i) on the audio clock (T0: when
// sample 0 leaves the speakers), whatever the frames' arrival times; a frame later than its
// instant is skipped, the audio never waits.
//
// Unity-free and thread-free: the owner (KsdiffNpcVoice, a test) calls Update() every tick (the
// line keeps time with the client's clock, the one its requests and frames are stamped with),
// starts the audio when ShouldStartPlayback turns true, and reports when it did with
// PlaybackStarted(T0).
//
// A line never waits forever: its end is end_stream's reply or the stream_end (reason "ended")
// the runtime publishes just before it, whichever comes (the reply can be lost with a dropped
// connection), and without either, or without its last frames, it fails DurationS +
// PlaybackDelayS + FrameTimeoutS after end_stream. A line whose connection dropped (the client
// marks its stream lost, reason "reconnect") fails at once: the runtime keeps the stream for the
// connection that opened it (SPEC 1, Ownership).
using System;
using System.Collections.Generic;

namespace Ksdiff
{
    public sealed class NpcLineOptions
    {
        public string Stream;                // the stream id: unique per line (frames are subscribed by it); Start() throws for the id of a line still going
        public string Transcript;            // what is said, if known (helps articulation)
        public long? Seed;                   // same audio + seed -> same motion
        public double ChunkS = 0.02;         // audio per message at the clip's pace (a 1.1 runtime; SPEC: 10-100 ms)
        public double LineChunkS = 10.0;     // audio per message when the line goes whole (mode "line"): at most this, under the message size limit and max_ahead_s
        public double BusyBackoffS = 0.25;   // after a `busy` for audio too far ahead: wait this long, and stay this much further inside max_ahead_s
        public double DefaultLatencyS = 0.3; // a 1.1 runtime, until its latency is known (stats / frames)
        public double MarginS = 0.06;        // on top of the stated or estimated latency
        public double OpenTimeoutS = 5.0;    // no stream_opened by then: the runtime is absent
        public double FrameTimeoutS = 5.0;   // no frame this long after it was due (or, after end_stream, after the line's end): give up
    }

    public enum NpcLineState
    {
        Idle,      // not started
        Opening,   // open_stream sent, waiting for stream_opened
        Buffering, // audio pushed (or being pushed), waiting for the latency to pass and the first frame
        Playing,   // the owner plays the audio; frames show on the audio clock
        Finishing, // every sample pushed, end_stream sent: waiting for its end (stream_ended or stream_end) and the last frame
        Done,      // every frame arrived (Total is the runtime's count)
        Failed,    // see Failure
    }

    public sealed class NpcLine
    {
        readonly KsdiffClient _client;
        readonly NpcLineOptions _o;
        readonly float[] _samples; // interleaved, -1..1
        readonly int _rate, _channels;
        readonly byte[] _chunk;

        PendingRequest _open, _end, _barrier;
        double _startS, _firstPushS = -1, _dueS;
        double? _maxAheadS;  // from stream_opened (null: a 1.0 runtime, no limit)
        int _lineChunkFrames; // sample frames per message in mode "line" (LineChunkFrames)
        double _backoffS;    // grows with each `busy` for audio too far ahead
        double _holdUntilS;  // after a `busy`: nothing is sent before this (client clock)
        bool _whole;         // mode "line": pushed whole, not at the clip's pace
        int _errorsSeen;     // of the stream's errors (StreamStatus.Errors), those acted on
        long _pushedFrames;  // sample frames sent
        ulong _seq;
        bool _playbackStarted;

        public NpcLineState State { get; private set; }
        public string Failure { get; private set; }
        public string Stream { get { return _o.Stream; } }
        public uint Fps { get; private set; }
        public ulong? Total { get; private set; }           // frames, from stream_ended (or stream_end when the reply was lost)
        public double PlaybackDelayS { get; private set; }  // chosen: latency (stated or estimated) + margin
        public bool LatencyWasKnown { get; private set; }   // false: DefaultLatencyS was used
        public bool LatencyWasStated { get; private set; }  // the runtime stated it (protocol 1.2)
        public string Mode { get; private set; }            // the stream's mode from stream_opened ("line"); null: a 1.1 runtime
        public double FirstPushS { get { return _firstPushS; } } // client clock; playback is due PlaybackDelayS later
        public int BusyRefusals { get; private set; }       // audio refused as too far ahead of real time, and sent again
        public double DurationS { get { return (double)_samples.Length / _channels / _rate; } }
        // After end_stream, the longest the line waits for its end and last frames: the clip plays
        // out after the latency, and FrameTimeoutS more.
        public double FinishTimeoutS { get { return DurationS + PlaybackDelayS + _o.FrameTimeoutS; } }
        // True from the moment the audio should start until PlaybackStarted is called.
        public bool ShouldStartPlayback { get; private set; }

        public NpcLine(KsdiffClient client, float[] interleaved, int sampleRate, int channels, NpcLineOptions options)
        {
            RequireLine(client, interleaved, sampleRate, channels, options);
            _client = client;
            _o = options;
            _samples = interleaved;
            _rate = sampleRate;
            _channels = channels;
            int framesPerChunk = Math.Max(ChunkFrames(options.ChunkS), LineChunkFrames(options.LineChunkS, sampleRate, channels, null));
            _chunk = new byte[framesPerChunk * channels * 4];
            State = NpcLineState.Idle;
        }

        // Opens the stream. The jitter buffer holds its frames until PlaybackStarted. A line plays
        // once: Start() again throws InvalidOperationException (another utterance, or the same one
        // again, is a new NpcLine with a new stream id).
        public void Start()
        {
            double now = _client.Now();
            if (State != NpcLineState.Idle)
                throw new InvalidOperationException("the line '" + _o.Stream + "' was started already (it is " + State +
                                                    "): a line plays once; make a new NpcLine, with a new stream id, to speak again");
            RequireIdFree(_client, _o.Stream);
            _startS = now;
            _client.Buffer.AwaitAnchor(_o.Stream);
            var request = new OpenStream
            {
                Stream = _o.Stream, SampleRate = (uint)_rate, Channels = (uint)_channels, Format = "f32le",
                Transcript = _o.Transcript, Seed = _o.Seed, Mode = Protocol.ModeLine, // a 1.1 runtime ignores the mode
            };
            try
            {
                _open = _client.OpenStream(request);
            }
            catch (ProtocolException e)
            {
                Fail("the line cannot be sent: " + e.Message);
                return;
            }
            State = NpcLineState.Opening;
        }

        // Advances the line; call every tick.
        public NpcLineState Update()
        {
            double now = _client.Now();
            if (State != NpcLineState.Idle && State != NpcLineState.Done && State != NpcLineState.Failed)
            {
                string gone = ClientGone(_client);
                if (gone != null) { Fail(gone); return State; }
            }
            switch (State)
            {
                case NpcLineState.Opening: Opening(now); break;
                case NpcLineState.Buffering:
                case NpcLineState.Playing:
                case NpcLineState.Finishing: Streaming(now); break;
            }
            return State;
        }

        // The audio started at `audioClockT0` (on the clock the face samples the buffer with,
        // e.g. AudioSettings.dspTime): frame i is shown at audioClockT0 + t_audio(i). Usually when
        // ShouldStartPlayback asked; a game that starts the audio itself (a cutscene's timing) may
        // call it earlier: the line then never asks for playback (frames that come after their
        // instant are skipped).
        public void PlaybackStarted(double audioClockT0)
        {
            if (State == NpcLineState.Idle) throw new InvalidOperationException("PlaybackStarted before Start(): start the line '" + _o.Stream + "' first");
            if (State == NpcLineState.Failed) return; // not shown (Failure says why): nothing to anchor
            _client.Buffer.Anchor(_o.Stream, audioClockT0);
            _playbackStarted = true;
            ShouldStartPlayback = false;
            if (State == NpcLineState.Buffering) State = NpcLineState.Playing;
        }

        // Ends the stream early (the NPC was interrupted); frames already sent still come. While
        // opening, the open_stream is given up (KsdiffClient.Abandon): never sent if it has not left,
        // and its stream ended by the client if the runtime opens it anyway.
        public void Cancel()
        {
            if (State == NpcLineState.Done || State == NpcLineState.Failed || State == NpcLineState.Idle) return;
            bool givenUp = State == NpcLineState.Opening && _client.Abandon(_open, "cancelled");
            if (!givenUp && _end == null) _end = _client.EndStream(_o.Stream); // opened (or its stream_opened is on the way)
            Fail("cancelled");
        }

        void Opening(double now)
        {
            if (!_open.IsDone)
            {
                if (now - _startS > _o.OpenTimeoutS)
                {
                    string why = "no reply to open_stream within " + _o.OpenTimeoutS + " s: is the runtime running at " +
                                 _client.Status().RouterEndpoint + "?";
                    _client.Abandon(_open, why); // a late stream_opened would otherwise leave the stream open
                    Fail(why);
                }
                return;
            }
            if (_open.Failure != null) { Fail(_open.Failure); return; }
            var error = _open.Reply as ErrorReply;
            if (error != null) { Fail("the runtime refused the line: " + error); return; }
            var opened = (StreamOpened)_open.Reply;
            Fps = opened.Fps;
            Mode = opened.Mode;
            _whole = opened.Mode == Protocol.ModeLine;
            _maxAheadS = opened.MaxAheadS;
            _lineChunkFrames = LineChunkFrames(_o.LineChunkS, _rate, _channels, _maxAheadS);
            // 1.2: the latency the runtime states for this stream (stream_opened, or its
            // stream_start); a 1.1 runtime states none: estimate it from other streams.
            StreamStatus status = _client.Stream(_o.Stream);
            double? latencyMs = opened.LatencyMs ?? (status != null ? status.LatencyMs : null);
            LatencyWasStated = latencyMs.HasValue;
            if (!latencyMs.HasValue) latencyMs = EstimateLatencyMs(_client.Status(), _o.Stream);
            LatencyWasKnown = latencyMs.HasValue;
            PlaybackDelayS = (latencyMs.HasValue ? latencyMs.Value / 1000.0 : _o.DefaultLatencyS) + _o.MarginS;
            _firstPushS = now;
            _dueS = now + PlaybackDelayS;
            State = NpcLineState.Buffering;
            Streaming(now);
        }

        void Streaming(double now)
        {
            // Before the snapshot: once the barrier's reply is in, the snapshot holds every error
            // for the audio sent before it (replies come in order, and the client records them so);
            // once end_stream's reply is in, it holds the loss the client marks for a refusal.
            bool barrierDone = _barrier != null && _barrier.IsDone;
            bool endDone = _end != null && _end.IsDone;
            StreamStatus s = _client.Stream(_o.Stream);
            if (s != null && s.EndReason != null && s.EndReason != "ended")
            {
                Fail(LostBecause(s.EndReason));
                return;
            }
            for (; s != null && _errorsSeen < s.Errors.Count; _errorsSeen++)
            {
                ErrorReply e = s.Errors[_errorsSeen];
                if (_whole && _maxAheadS.HasValue && _end == null && e.ErrorCode == ErrorCode.Busy && e.RequestType == "audio") Refused(now);
                else { Fail("the runtime refused the line's audio: " + e); return; }
            }

            if (_whole) PushWhole(now, barrierDone);
            else PushDue(now);
            if (State == NpcLineState.Failed) return; // its audio could not be sent (Send)

            if (State == NpcLineState.Buffering && _playbackStarted) State = NpcLineState.Playing; // the owner started it before asked
            if (State == NpcLineState.Buffering && !ShouldStartPlayback)
            {
                bool firstFrame = s != null && s.Frames > 0;
                if (now >= _dueS && firstFrame) ShouldStartPlayback = true;
                else if (now >= _dueS + _o.FrameTimeoutS) { Fail("no frame within " + _o.FrameTimeoutS + " s of its time"); return; }
            }

            if (!_whole && _pushedFrames * _channels == _samples.Length && _end == null) EndLine();
            if (_end != null && State == NpcLineState.Playing) State = NpcLineState.Finishing;
            if (_end != null) Finish(now, s, endDone);
        }

        // After end_stream: the line's end is its reply, or the stream_end (reason "ended") the
        // runtime publishes just before the reply, since the reply can be lost with a dropped
        // connection; either gives the frame count. Then Done once every frame is in (the last
        // one carries `last`, then stream_end). Without them within FinishTimeoutS: Failed.
        void Finish(double now, StreamStatus s, bool endDone)
        {
            if (!Total.HasValue && endDone && _end.Failure == null)
            {
                var error = _end.Reply as ErrorReply;
                if (error != null) { Fail("end_stream refused: " + error); return; }
                Total = ((StreamEnded)_end.Reply).Frames;
            }
            if (!Total.HasValue && s != null && s.EndReason == "ended" && s.EndFrames.HasValue) Total = s.EndFrames;
            if (Total.HasValue && _playbackStarted && s != null && s.Ended) { State = NpcLineState.Done; return; }
            // Checked before the request's failure: end_stream's own timeout is the same, so its
            // expiry reads as this, the line's reason.
            if (now - _end.SentS >= FinishTimeoutS)
            {
                Fail(Total.HasValue ? "the last frames did not come"
                                    : "no reply to end_stream and no stream_end within " + FinishTimeoutS.ToString("F1") +
                                      " s: the connection to the runtime may have dropped");
                return;
            }
            if (!Total.HasValue && endDone && _end.Failure != null) Fail(_end.Failure); // e.g. the client stopped
        }

        void EndLine() { _end = _client.EndStream(_o.Stream, FinishTimeoutS); }

        // What the protocol takes for a line (NpcLine, OfflineLine): ArgumentException otherwise.
        internal static void RequireLine(KsdiffClient client, float[] interleaved, int sampleRate, int channels, NpcLineOptions options)
        {
            if (client == null || interleaved == null || options == null) throw new ArgumentNullException();
            Protocol.RequireStreamId(options.Stream);
            if (channels < 1 || channels > Protocol.MaxChannels) throw new ArgumentException("channels must be 1..8");
            if (sampleRate < Protocol.MinSampleRate || sampleRate > Protocol.MaxSampleRate) throw new ArgumentException("sample rate must be 8000..192000 Hz");
            if (interleaved.Length == 0 || interleaved.Length % channels != 0) throw new ArgumentException("samples must be one or more whole sample frames");
        }

        // A line's id must not be that of a stream this client opened and has not seen end (a line
        // still playing, or cancelled and still being ended): the runtime would refuse it (busy),
        // and opening it here would already have wiped that line's frames and status.
        internal static void RequireIdFree(KsdiffClient client, string stream)
        {
            StreamStatus held = client.Stream(stream);
            if (held != null && held.OpenedHere && !held.Ended)
                throw new InvalidOperationException("the stream id '" + stream + "' is taken by a line of this client that has not ended: " +
                                                    "give each line its own id (NpcLine.StreamIdFor)");
        }

        // Why a line on this client cannot go on (it was stopped or disposed, or its transport
        // failed), or null: the line fails at once rather than waiting out its timeouts.
        internal static string ClientGone(KsdiffClient client)
        {
            ClientState state = client.State;
            if (state == ClientState.Stopped) return "the client stopped (Stop or Dispose)";
            if (state == ClientState.Failed) return "the client failed: " + client.Status().LastError;
            return null;
        }

        static string LostBecause(string reason)
        {
            if (reason == "restart") return "the runtime restarted and lost the line";
            if (reason == "reconnect") return "the connection to the runtime dropped; the line was lost";
            return "the runtime ended the line (reason " + reason + ")";
        }

        // A 1.1 runtime: sends the audio that is due at the clip's own pace, one chunk ahead, in
        // whole chunks (the last one may be shorter).
        void PushDue(double now)
        {
            long total = _samples.Length / _channels;
            int framesPerChunk = ChunkFrames(_o.ChunkS);
            long due = Math.Min(total, (long)Math.Ceiling((now - _firstPushS) * _rate) + framesPerChunk);
            while (_pushedFrames + framesPerChunk <= due || (due == total && _pushedFrames < total))
            {
                if (!Send((int)Math.Min(framesPerChunk, total - _pushedFrames))) return;
            }
        }

        // Mode "line": sends every chunk whose end lies within max_ahead_s (less the margin and any
        // backoff) of the time since the first push: the whole line at once unless it is longer.
        // Then end_stream, at once when no chunk can have been refused (the whole line within
        // max_ahead_s); otherwise after a hello whose reply proves no `busy` came for the audio
        // before it.
        void PushWhole(double now, bool barrierDone)
        {
            if (now < _holdUntilS) return;
            long total = _samples.Length / _channels;
            int framesPerChunk = _lineChunkFrames;
            double room = _maxAheadS.HasValue
                ? Math.Max(0.1, _maxAheadS.Value - OfflineLine.AheadMarginS - _backoffS) : double.PositiveInfinity;
            double allowedEndS = now - _firstPushS + room;
            while (_pushedFrames < total)
            {
                int n = (int)Math.Min(framesPerChunk, total - _pushedFrames);
                if ((double)(_pushedFrames + n) / _rate > allowedEndS) break;
                if (!Send(n)) return;
            }
            if (_pushedFrames < total || _end != null) return;
            if (!_maxAheadS.HasValue || DurationS <= _maxAheadS.Value) EndLine();
            else if (_barrier == null) _barrier = _client.RequestHello();
            else if (barrierDone)
            {
                if (_barrier.Failure != null) { Fail(_barrier.Failure); return; }
                EndLine(); // no busy before the barrier's reply (a busy rewinds and drops it)
            }
        }

        // Audio refused with `busy`: it would have been more than max_ahead_s ahead of real time;
        // nothing of it was taken. Only audio ending beyond max_ahead_s from the stream's start
        // can be refused (the runtime's clock starts with the first audio), so the line goes back
        // to the last whole chunk before that point and sends the rest again BusyBackoffS later,
        // and from then on that much further inside max_ahead_s: at_sample puts each chunk in its
        // place, and audio the runtime already has is dropped. SPEC 4.6 "audio", 6.
        void Refused(double now)
        {
            BusyRefusals++;
            _backoffS += _o.BusyBackoffS;
            _holdUntilS = now + _o.BusyBackoffS;
            int framesPerChunk = _lineChunkFrames;
            long safe = (long)Math.Floor(_maxAheadS.Value * _rate) / framesPerChunk * framesPerChunk;
            _pushedFrames = Math.Min(_pushedFrames, safe);
            _barrier = null; // a new barrier once the rest is sent again
        }

        // Sends the next `n` sample frames as one f32le message placed with at_sample. False, the line
        // failed, when the client refused it: the stream was lost when the client stopped, from
        // another thread (a frame sink) after this Update read the stream's status. Update never
        // throws that into the game's frame.
        bool Send(int n)
        {
            FloatBits.PutLittleEndian(_samples, (int)(_pushedFrames * _channels), n * _channels, _chunk);
            try
            {
                _client.SendAudio(_o.Stream, _seq++, (ulong)_pushedFrames, _chunk, 0, n * _channels * 4);
            }
            catch (ProtocolException e)
            {
                Fail("the line's audio could not be sent: " + e.Message);
                return false;
            }
            _pushedFrames += n;
            return true;
        }

        int ChunkFrames(double seconds) { return Math.Max(1, (int)Math.Round(seconds * _rate)); }

        // Sample frames per message of a line pushed whole: `seconds` of audio, but no more than fits
        // in one message under the protocol's size limit (room kept for the message's other fields),
        // nor more than max_ahead_s less the margin (a message further ahead is refused whole).
        public static int LineChunkFrames(double seconds, int rate, int channels, double? maxAheadS)
        {
            if (maxAheadS.HasValue) seconds = Math.Min(seconds, Math.Max(0.1, maxAheadS.Value - OfflineLine.AheadMarginS));
            long frames = (long)Math.Round(seconds * rate);
            long fit = (Protocol.MaxMessageBytes - MessageHeaderRoomBytes) / (4L * channels); // f32le
            return (int)Math.Max(1, Math.Min(frames, fit));
        }

        public const int MessageHeaderRoomBytes = 1024; // an audio message's fields besides its pcm: well under this

        // A stream id for a line: `hint` (a character's name) reduced to the allowed characters,
        // then the line's number and a random part, so two game instances never collide.
        public static string StreamIdFor(string hint, ulong number, Random random)
        {
            var sb = new System.Text.StringBuilder();
            foreach (char c in hint ?? "")
            {
                if (sb.Length == 32) break;
                bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
                if (ok) sb.Append(c);
                else if (sb.Length > 0 && sb[sb.Length - 1] != '-') sb.Append('-');
            }
            if (sb.Length == 0) sb.Append("npc");
            sb.Append('-').Append(number).Append('-').Append(random.Next(0x10000000).ToString("x7"));
            return sb.ToString();
        }

        // A line that fails once its stream is open (its audio refused, no frame in time, a barrier
        // lost) ends that stream, unless the runtime already did (restart, reconnect) or end_stream
        // was sent: the runtime would otherwise go on animating it, holding one of its streams,
        // until the audio ran out and the idle timeout passed. A failed (or cancelled) line is not
        // shown: the jitter buffer lets go of what it holds of it, and drops its frames that still
        // come (JitterBuffer.Discard), which would otherwise play on the client's clock, with no audio.
        void Fail(string why)
        {
            bool opened = _open != null && _open.IsDone && _open.Reply is StreamOpened;
            StreamStatus s = _client.Stream(_o.Stream);
            if (opened && _end == null && (s == null || s.EndReason == null)) _end = _client.EndStream(_o.Stream);
            _client.Buffer.Discard(_o.Stream);
            State = NpcLineState.Failed;
            Failure = why;
            ShouldStartPlayback = false;
        }

        // The runtime's latency for a pushed stream, in ms: of the sdk stream that had frames
        // most recently, the larger p95 of what the runtime reported (`stats`) and what its frames
        // showed (published - captured). The newest stream, because the latency follows the
        // runtime's load; a stream of another source when no sdk stream is known (the model and
        // the load are the same for every stream); null when nothing is known.
        public static double? EstimateLatencyMs(ClientStatus status, string exclude = null)
        {
            StreamStatus sdk = null, any = null;
            foreach (StreamStatus s in status.Streams.Values)
            {
                if (s.Stream == exclude || s.LastFrameS < 0) continue;
                double? v = Max(s.LatencyP95Ms, s.StatsLatencyP95Ms);
                if (!v.HasValue || v.Value <= 0) continue;
                if (s.Source == "sdk" && (sdk == null || s.LastFrameS > sdk.LastFrameS)) sdk = s;
                if (any == null || s.LastFrameS > any.LastFrameS) any = s;
            }
            StreamStatus chosen = sdk ?? any;
            return chosen == null ? (double?)null : Max(chosen.LatencyP95Ms, chosen.StatsLatencyP95Ms);
        }

        static double? Max(double? a, double? b)
        {
            if (!a.HasValue) return b;
            if (!b.HasValue) return a;
            return Math.Max(a.Value, b.Value);
        }
    }
}
