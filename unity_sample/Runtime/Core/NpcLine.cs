// An NPC line: a clip of audio pushed to the runtime as its own stream, then played so that
// lips and audio match (SPEC 6.1).
//
// The runtime turns audio into frames about `latency` after it receives the audio (hop +
// lookahead + compute). A 1.2 runtime states it for the stream (latency_ms in stream_opened and
// stream_start); for a 1.1 runtime it is estimated (`stats` reports it per stream as
// latency_p95_ms, and every frame carries published_ns - captured_ns). So the line pushes its audio at the clip's own pace (in 20 ms
// messages, like a live source: that is what keeps the runtime's latency low; a whole clip sent
// at once is processed in one long burst) and starts playing the clip `latency + margin` after
// the first push, once the first frame is there. The face then shows frame i at
// T0 + t_audio(i) on the audio clock (T0: when sample 0 leaves the speakers), whatever the
// frames' arrival times; a frame later than its instant is skipped, the audio never waits.
//
// Unity-free and thread-free: the owner (KsdiffNpcVoice, a test) calls Update() every tick (the
// line keeps time with the client's clock, the one its requests and frames are stamped with),
// starts the audio when ShouldStartPlayback turns true, and reports when it did with
// PlaybackStarted(T0).
using System;
using System.Collections.Generic;

namespace Ksdiff
{
    public sealed class NpcLineOptions
    {
        public string Stream;                // the stream id: unique per line (frames are subscribed by it)
        public string Transcript;            // what is said, if known (helps articulation)
        public long? Seed;                   // same audio + seed -> same motion
        public double ChunkS = 0.02;         // audio per message (SPEC: 10-100 ms)
        public double DefaultLatencyS = 0.3; // a 1.1 runtime, until its latency is known (stats / frames)
        public double MarginS = 0.06;        // on top of the stated or estimated latency
        public double OpenTimeoutS = 5.0;    // no stream_opened by then: the runtime is absent
        public double FrameTimeoutS = 5.0;   // no frame this long after it was due: give up
    }

    public enum NpcLineState
    {
        Idle,      // not started
        Opening,   // open_stream sent, waiting for stream_opened
        Buffering, // pushing audio, waiting for the latency to pass and the first frame
        Playing,   // the owner plays the audio; frames show on the audio clock
        Finishing, // every sample pushed, end_stream sent: waiting for stream_ended and the last frame
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

        PendingRequest _open, _end;
        double _startS, _firstPushS = -1, _dueS;
        long _pushedFrames; // sample frames sent
        ulong _seq;
        bool _playbackStarted;

        public NpcLineState State { get; private set; }
        public string Failure { get; private set; }
        public string Stream { get { return _o.Stream; } }
        public uint Fps { get; private set; }
        public ulong? Total { get; private set; }           // frames, from stream_ended
        public double PlaybackDelayS { get; private set; }  // chosen: latency (stated or estimated) + margin
        public bool LatencyWasKnown { get; private set; }   // false: DefaultLatencyS was used
        public bool LatencyWasStated { get; private set; }  // the runtime stated it (protocol 1.2)
        public double DurationS { get { return (double)_samples.Length / _channels / _rate; } }
        // True from the moment the audio should start until PlaybackStarted is called.
        public bool ShouldStartPlayback { get; private set; }

        public NpcLine(KsdiffClient client, float[] interleaved, int sampleRate, int channels, NpcLineOptions options)
        {
            if (client == null || interleaved == null || options == null) throw new ArgumentNullException();
            Protocol.RequireStreamId(options.Stream);
            if (channels < 1 || channels > Protocol.MaxChannels) throw new ArgumentException("channels must be 1..8");
            if (sampleRate < Protocol.MinSampleRate || sampleRate > Protocol.MaxSampleRate) throw new ArgumentException("sample rate must be 8000..192000 Hz");
            if (interleaved.Length == 0 || interleaved.Length % channels != 0) throw new ArgumentException("samples must be one or more whole sample frames");
            _client = client;
            _o = options;
            _samples = interleaved;
            _rate = sampleRate;
            _channels = channels;
            int framesPerChunk = Math.Max(1, (int)Math.Round(options.ChunkS * sampleRate));
            _chunk = new byte[framesPerChunk * channels * 4];
            State = NpcLineState.Idle;
        }

        // Opens the stream. The jitter buffer holds its frames until PlaybackStarted.
        public void Start()
        {
            double now = _client.Now();
            if (State != NpcLineState.Idle) return;
            _startS = now;
            _client.Buffer.AwaitAnchor(_o.Stream);
            var request = new OpenStream
            {
                Stream = _o.Stream, SampleRate = (uint)_rate, Channels = (uint)_channels, Format = "f32le",
                Transcript = _o.Transcript, Seed = _o.Seed,
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
        // e.g. AudioSettings.dspTime): frame i is shown at audioClockT0 + t_audio(i).
        public void PlaybackStarted(double audioClockT0)
        {
            _client.Buffer.Anchor(_o.Stream, audioClockT0);
            _playbackStarted = true;
            ShouldStartPlayback = false;
            if (State == NpcLineState.Buffering) State = NpcLineState.Playing;
        }

        // Ends the stream early (the NPC was interrupted); frames already sent still come.
        public void Cancel()
        {
            if (State == NpcLineState.Done || State == NpcLineState.Failed || State == NpcLineState.Idle) return;
            if (_end == null && State != NpcLineState.Opening) _end = _client.EndStream(_o.Stream);
            Fail("cancelled");
        }

        void Opening(double now)
        {
            if (!_open.IsDone)
            {
                if (now - _startS > _o.OpenTimeoutS)
                    Fail("no reply to open_stream within " + _o.OpenTimeoutS + " s: is the runtime running at " +
                         _client.Status().RouterEndpoint + "?");
                return;
            }
            if (_open.Failure != null) { Fail(_open.Failure); return; }
            var error = _open.Reply as ErrorReply;
            if (error != null) { Fail("the runtime refused the line: " + error); return; }
            var opened = (StreamOpened)_open.Reply;
            Fps = opened.Fps;
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
            StreamStatus s = _client.Stream(_o.Stream);
            if (s != null && s.EndReason != null && s.EndReason != "ended")
            {
                Fail(s.EndReason == "restart" ? "the runtime restarted and lost the line"
                                              : "the runtime ended the line (reason " + s.EndReason + ")");
                return;
            }
            if (s != null && s.Errors.Count > 0) { Fail("the runtime refused the line's audio: " + s.Errors[0]); return; }

            PushDue(now);

            if (State == NpcLineState.Buffering && !ShouldStartPlayback)
            {
                bool firstFrame = s != null && s.Frames > 0;
                if (now >= _dueS && firstFrame) ShouldStartPlayback = true;
                else if (now >= _dueS + _o.FrameTimeoutS) { Fail("no frame within " + _o.FrameTimeoutS + " s of its time"); return; }
            }

            if (_pushedFrames * _channels == _samples.Length && _end == null) _end = _client.EndStream(_o.Stream);
            if (_end != null && State == NpcLineState.Playing) State = NpcLineState.Finishing;
            if (_end != null && _end.IsDone)
            {
                if (_end.Failure != null) { Fail(_end.Failure); return; }
                var error = _end.Reply as ErrorReply;
                if (error != null) { Fail("end_stream refused: " + error); return; }
                Total = ((StreamEnded)_end.Reply).Frames;
                // Done when every frame is in (the last one carries `last`, then stream_end).
                if (_playbackStarted && s != null && s.Ended) State = NpcLineState.Done;
                else if (now - _end.SentS > Math.Max(_o.FrameTimeoutS, DurationS)) Fail("the last frames did not come");
            }
        }

        // Sends the audio that is due at the clip's own pace, one chunk ahead, in whole chunks
        // (the last one may be shorter), as f32le messages placed with at_sample.
        void PushDue(double now)
        {
            long total = _samples.Length / _channels;
            int framesPerChunk = _chunk.Length / (4 * _channels);
            long due = Math.Min(total, (long)Math.Ceiling((now - _firstPushS) * _rate) + framesPerChunk);
            while (_pushedFrames + framesPerChunk <= due || (due == total && _pushedFrames < total))
            {
                int n = (int)Math.Min(framesPerChunk, total - _pushedFrames);
                int offset = (int)(_pushedFrames * _channels);
                for (int i = 0; i < n * _channels; i++)
                {
                    uint bits = FloatBits.ToBits(_samples[offset + i]);
                    _chunk[4 * i] = (byte)bits;
                    _chunk[4 * i + 1] = (byte)(bits >> 8);
                    _chunk[4 * i + 2] = (byte)(bits >> 16);
                    _chunk[4 * i + 3] = (byte)(bits >> 24);
                }
                _client.SendAudio(_o.Stream, _seq++, (ulong)_pushedFrames, _chunk, 0, n * _channels * 4);
                _pushedFrames += n;
            }
        }

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

        void Fail(string why)
        {
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
