// Frames shown on the audio clock (SPEC 6), not when they happen to arrive.
//
// A frame animates instant `t_audio` of its stream's audio and is shown at local time
// `offset + t_audio`. Two ways to fix a stream's offset:
//
//   * Live input (SPEC 6.2, a VTuber's microphone): the first frame anchors it,
//         offset = arrival(first frame) - t_audio(first frame) + margin,
//     so network and compute jitter smaller than `margin` never reaches the face. A newest
//     frame that arrives after its own show time means the runtime stalled for longer than the
//     margin: the stream re-anchors on it (the motion pauses briefly instead of skipping).
//   * Audio you play yourself (SPEC 6.1, an NPC line): you know when sample 0 comes out of the
//     speakers (T0 on the audio clock, e.g. Unity's AudioSettings.dspTime) and call
//     Anchor(stream, T0). The timeline is then the audio's and never moves; a frame that
//     arrives after its instant was already shown is late: it is counted and the face skips to
//     the frames after it (the audio is never slowed).
//
// Sample(stream, now) interpolates linearly between the two frames around `now`. The buffer is
// thread-safe (frames pushed from the network thread, sampled on the main thread) and allocates
// nothing per frame once a stream has started: poses are pooled.
//
// Push's arrival times and Sample's times are on different clocks for a line (arrivals on the
// client's clock, a line sampled on the audio clock): the bounds on what waits for an anchor
// (MaxLineFrames, UnanchoredLineTimeoutS, StaleAnchorS) are measured on the buffer's own clock
// (the client's) or on the stream's audio time, never by comparing those two.
using System;
using System.Collections.Generic;

namespace Ksdiff
{
    // The part of a frame that moves the face, interpolated between frames.
    public sealed class Pose
    {
        public readonly float[] Blendshapes = new float[Protocol.BlendshapeCount]; // canonical order
        public readonly float[] Head = new float[3]; // [pitch, yaw, roll], radians
        public readonly float[] Gaze = new float[4]; // [leftYaw, leftPitch, rightYaw, rightPitch], radians

        public void CopyFrom(Frame f)
        {
            Array.Copy(f.Blendshapes, Blendshapes, Blendshapes.Length);
            Array.Copy(f.Head, Head, Head.Length);
            Array.Copy(f.Gaze, Gaze, Gaze.Length);
        }

        public void CopyFrom(Pose p)
        {
            Array.Copy(p.Blendshapes, Blendshapes, Blendshapes.Length);
            Array.Copy(p.Head, Head, Head.Length);
            Array.Copy(p.Gaze, Gaze, Gaze.Length);
        }

        // Whether this pose is exactly the frame's (every weight and angle).
        internal bool Matches(Frame f)
        {
            return Same(Blendshapes, f.Blendshapes) && Same(Head, f.Head) && Same(Gaze, f.Gaze);
        }

        static bool Same(float[] a, float[] b)
        {
            for (int i = 0; i < a.Length; i++)
            {
                if (a[i] != b[i]) return false;
            }
            return true;
        }

        public void Clear()
        {
            Array.Clear(Blendshapes, 0, Blendshapes.Length);
            Array.Clear(Head, 0, Head.Length);
            Array.Clear(Gaze, 0, Gaze.Length);
        }

        // this = a + (b - a) * w; w = 0 gives a, w = 1 gives b.
        public void Lerp(Pose a, Pose b, double w)
        {
            Mix(a.Blendshapes, b.Blendshapes, Blendshapes, w);
            Mix(a.Head, b.Head, Head, w);
            Mix(a.Gaze, b.Gaze, Gaze, w);
        }

        static void Mix(float[] a, float[] b, float[] into, double w)
        {
            for (int i = 0; i < into.Length; i++) into[i] = (float)(a[i] + (b[i] - (double)a[i]) * w);
        }
    }

    public enum PlayState
    {
        Unknown, // no frame of this stream (or it ended and was played out)
        Waiting, // before the first frame's show time, or waiting for Anchor: the first frame's pose
        Playing, // between two frames: interpolated
        Holding, // after the newest frame while the stream goes on: starved, the newest pose held
        Ended,   // past the final frame of an ended stream: its pose; the stream is then forgotten
    }

    // The mapping from a stream's audio time to local time.
    public sealed class StreamClock
    {
        double _margin;
        double? _offset;
        double? _newest;
        bool _fixed;

        public StreamClock(double marginS) { _margin = marginS; }

        public bool Anchored { get { return _offset.HasValue; } }
        public bool OnAudioClock { get { return _fixed; } } // anchored by Anchor(): never moves
        public double Offset { get { return _offset ?? 0.0; } }
        public ulong Reanchors { get; private set; }

        // Local time at which to show the frame of audio time `tAudio` that arrived at local time
        // `arrivalS`: anchors on the first call, re-anchors when the newest frame so far arrives
        // after its show time. An older frame arriving out of order never moves the timeline.
        // On the audio clock (Fix) nothing moves.
        public double Schedule(double tAudio, double arrivalS)
        {
            bool newest = !_newest.HasValue || tAudio >= _newest.Value;
            if (!_offset.HasValue)
            {
                _offset = arrivalS - tAudio + _margin;
            }
            else if (!_fixed && newest && arrivalS > _offset.Value + tAudio)
            {
                // The offset only grows, so show times keep increasing with t_audio.
                _offset = arrivalS - tAudio + _margin;
                Reanchors++;
            }
            if (newest) _newest = tAudio;
            return _offset.Value + tAudio;
        }

        // Audio time 0 is shown at `offset` on the caller's clock, for good.
        public void Fix(double offset)
        {
            _offset = offset;
            _fixed = true;
        }
    }

    // The NPC line a face shows on the audio clock (KsdiffFaceDriver.ShowLine), from the moment
    // its line starts, before any frame of it came (Sample says Unknown then), until it has played
    // out (Ended) or the buffer no longer knows it (forgotten, failed, cancelled: Contains).
    public sealed class ShownLine
    {
        public string Stream { get; private set; } // null: no line; the face shows its live stream

        public void Show(string stream) { Stream = stream; }

        public void Stop(string stream)
        {
            if (Stream == stream) Stream = null;
        }

        // After the face sampled the line (`state`, from buffer.Sample): whether it still shows it.
        public bool Sampled(JitterBuffer buffer, PlayState state)
        {
            if (Stream == null) return false;
            if (state == PlayState.Ended || (state == PlayState.Unknown && !buffer.Contains(Stream))) Stream = null;
            return Stream != null;
        }
    }

    public sealed class JitterBuffer
    {
        sealed class Slot
        {
            public double T;
            public ulong Seq;
            public readonly Pose Pose = new Pose();
        }

        sealed class StreamState
        {
            public readonly StreamClock Clock;
            public readonly List<Slot> Frames; // sorted by T
            public bool Ended;
            public bool AwaitAnchor;      // frames wait for Anchor() instead of anchoring themselves
            public bool Discarded;        // Discard(): its frames are dropped until its end; never shown
            public bool PendingAnchor;    // Anchor() came before any frame or AwaitAnchor()
            public double AnchorCalledS;  // when (the buffer's clock), while PendingAnchor
            public double LastFrameS;     // when the last frame came (the buffer's clock)
            public double LastSampleS = double.NegativeInfinity; // when Sample() last read it (the buffer's clock)
            public double LastSampledT = double.NegativeInfinity;
            public ulong Late;            // frames that came after their instant was shown

            public StreamState(double margin, int capacity)
            {
                Clock = new StreamClock(margin);
                Frames = new List<Slot>(capacity + 1);
            }
        }

        // A line is pushed whole, up to stream_opened.max_ahead_s (20 s by default) ahead of its
        // audio, so all of its frames can be buffered before the first is shown: 20 s is 600
        // frames at 30 fps (1200 at 60) plus the ease to rest. A stream keeps at most this many;
        // over that, the newest go, never frames still to be shown before them (the line's start).
        public const int MaxLineFrames = 2048;
        // A line that awaits Anchor() and has ended is forgotten this long after its last frame
        // came (on the buffer's clock) if the game never anchors it (its audio never played); any
        // other ended stream not on the audio clock once it was neither fed nor sampled for this
        // long (nobody plays it: a stream no face shows); a discarded stream (Discard) this long
        // after the last sign of it. A line on the audio clock (anchored by the game) is never
        // forgotten by time: a paused game samples nothing while the buffer's clock runs on, and a
        // cutscene may anchor a line long before its audio starts. It goes once played out, or
        // when its owner lets go of it (NpcLine's Fail and Cancel, OfflineLine's Done and Fail).
        public const double UnanchoredLineTimeoutS = 60.0;
        // Anchor() on a stream of which nothing is known yet waits for that stream's frames; if
        // the first one then comes more than this (plus its t_audio) after the Anchor() call, on
        // the buffer's clock, the anchor was a late one (for a line already played out and
        // forgotten) and it lapses: the new stream anchors by itself.
        public const double StaleAnchorS = 5.0;

        readonly object _lock = new object();
        readonly double _margin;
        readonly int _maxFrames;
        readonly Func<double> _clock;
        readonly Dictionary<string, StreamState> _streams = new Dictionary<string, StreamState>();
        readonly Stack<Slot> _pool = new Stack<Slot>();
        readonly List<string> _expired = new List<string>(); // ForgetUnplayed's scratch

        // Over maxFramesPerStream buffered frames, a stream drops its oldest frame if it is past,
        // otherwise its newest: frames still to be shown are never dropped for later ones. The
        // default holds a whole line (MaxLineFrames). `clock`: local seconds (KsdiffClient gives
        // its own), which times the bounds on lines awaiting an anchor; default a Stopwatch.
        public JitterBuffer(double marginS = 0.05, int maxFramesPerStream = MaxLineFrames, Func<double> clock = null)
        {
            _margin = marginS;
            _maxFrames = Math.Max(2, maxFramesPerStream);
            if (clock != null) _clock = clock;
            else
            {
                System.Diagnostics.Stopwatch watch = System.Diagnostics.Stopwatch.StartNew();
                _clock = () => watch.Elapsed.TotalSeconds;
            }
        }

        public double Margin { get { return _margin; } }

        // Adds a frame that arrived at local time `arrivalS`; returns its show time (NaN while the
        // stream waits for Anchor). Frames may come in any order; a repeated t_audio replaces the
        // frame. A frame with `last` ends its stream. A frame after the end starts a new stream
        // with that id (its stream_start was missed, and maybe its first frames: it can start at
        // any seq), except an exact repeat (same seq, t_audio and pose) of a frame the ended
        // stream still holds, which is ignored (it returns that frame's show time).
        public double Push(Frame frame, double arrivalS)
        {
            lock (_lock)
            {
                double now = _clock();
                ForgetUnplayed(now);
                StreamState s;
                if (_streams.TryGetValue(frame.Stream, out s) && s.Discarded)
                {
                    // A frame of a stream let go of (Discard): dropped, never shown; its last frame
                    // ends the discard (a later frame of the id is a new stream's).
                    if (frame.Last) Forget(frame.Stream, s);
                    else s.LastFrameS = now;
                    return double.NaN;
                }
                if (s != null)
                {
                    if (s.Ended && IsHeldRepeat(s, frame))
                    {
                        // An exact repeat of a frame the ended stream still holds: nothing new (it
                        // neither wipes the line nor starts a stream, nor moves the timeline).
                        // Its show time, as it was.
                        return !s.AwaitAnchor || s.Clock.OnAudioClock ? s.Clock.Offset + frame.TAudio : double.NaN;
                    }
                    // Any other frame after the end belongs to a new stream that reused the id,
                    // its stream_start missed (and maybe its first frames: drops come in runs, so
                    // it may start at any seq): a new timeline, not more of the old one. One
                    // PUB/SUB connection delivers in order, so a frame of the ended stream itself
                    // does not come after its `last`.
                    bool newStream = s.Ended;
                    // An Anchor() given before any frame, that this first frame comes far too late
                    // for, was late for a line already played out: it must not hold the next
                    // stream with that id.
                    bool staleAnchor = s.PendingAnchor && now > s.AnchorCalledS + Math.Max(0.0, frame.TAudio) + StaleAnchorS;
                    if (newStream || staleAnchor)
                    {
                        Forget(frame.Stream, s);
                        s = null;
                    }
                }
                if (s == null) s = Add(frame.Stream);
                s.PendingAnchor = false;
                s.LastFrameS = now;

                double show = double.NaN;
                bool scheduled = !s.AwaitAnchor || s.Clock.OnAudioClock;
                if (scheduled) show = s.Clock.Schedule(frame.TAudio, arrivalS);
                if (frame.TAudio < s.LastSampledT) s.Late++;
                Insert(s, frame, scheduled, arrivalS);
                if (frame.Last) s.Ended = true;
                return show;
            }
        }

        // The stream's audio starts playing at local time `offset` on the clock Sample() is
        // given (SPEC 6.1). Its timeline is then fixed; call before or after its frames arrive.
        // On a stream with no frame (nor AwaitAnchor) yet, it is for the next frames of that id
        // unless they come far too late for it (StaleAnchorS): an anchor given after its line
        // played out then lapses.
        public void Anchor(string stream, double offset)
        {
            lock (_lock)
            {
                StreamState s;
                if (!_streams.TryGetValue(stream, out s))
                {
                    s = Add(stream);
                    s.PendingAnchor = true; // for the next frames of this id (see Push)
                }
                else if (s.Discarded)
                {
                    return; // let go of (Discard): not shown
                }
                if (s.PendingAnchor) s.AnchorCalledS = _clock();
                s.AwaitAnchor = true;
                s.Clock.Fix(offset);
            }
        }

        // The stream's frames will wait for Anchor() rather than anchor on their arrival: call it
        // before they come (when opening the stream whose audio you will play). Forgets an older
        // stream of that id. A line that ends and is not anchored within UnanchoredLineTimeoutS
        // of its last frame is forgotten.
        public void AwaitAnchor(string stream)
        {
            lock (_lock)
            {
                StreamState s;
                if (_streams.TryGetValue(stream, out s)) Forget(stream, s);
                Add(stream).AwaitAnchor = true;
            }
        }

        // A stream with this id starts (its stream_start): frames of an older stream with the id
        // are forgotten, unless the buffer was told to await this one's anchor (AwaitAnchor
        // comes before the stream opens, its stream_start after).
        public void BeginStream(string stream)
        {
            lock (_lock)
            {
                StreamState s;
                if (_streams.TryGetValue(stream, out s) && (s.Discarded || !(s.AwaitAnchor && !s.Ended))) Forget(stream, s);
            }
        }

        // No more frames for `stream` (its stream_end): what is buffered still plays, then the
        // stream reports Ended once and is forgotten, so a new stream with that id starts afresh.
        // Ignored for a stream awaiting Anchor() that has no frame yet (an older stream's end).
        public void EndStream(string stream)
        {
            lock (_lock)
            {
                StreamState s;
                if (!_streams.TryGetValue(stream, out s)) return;
                if (s.Discarded) Forget(stream, s); // its end: nothing more of it comes
                else if (s.Frames.Count > 0) s.Ended = true;
                else if (!s.AwaitAnchor) Forget(stream, s); // nothing left to play
                // else a line awaiting its anchor, no frame yet: the end is an older stream's
            }
        }

        // Forgets a stream at once (a runtime restart, a stream_start for a reused id).
        public void ResetStream(string stream)
        {
            lock (_lock)
            {
                StreamState s;
                if (_streams.TryGetValue(stream, out s)) Forget(stream, s);
            }
        }

        // Lets go of a stream that must not be shown although its frames may still come (a line
        // cancelled or failed mid-way: the runtime goes on sending what it has animated): forgets
        // what it holds, and drops the stream's frames that still come, until its end (its last
        // frame or stream_end), a new stream of the id (BeginStream, AwaitAnchor) or
        // UnanchoredLineTimeoutS without any of its frames. Without it, those frames would start a
        // new stream of the id that plays on the client's clock: lips moving with no audio. A
        // discarded stream is Unknown to Sample, not in Contains or Streams (Discarding says).
        // A stream whose end the buffer has is just forgotten: nothing more of it comes.
        public void Discard(string stream)
        {
            lock (_lock)
            {
                StreamState s;
                bool ended = false;
                if (_streams.TryGetValue(stream, out s))
                {
                    ended = s.Ended;
                    Forget(stream, s);
                }
                if (ended) return;
                s = new StreamState(_margin, 0); // holds no frame
                s.Discarded = true;
                s.LastFrameS = _clock();
                _streams[stream] = s;
            }
        }

        // Whether the frames of `stream` are being dropped (Discard).
        public bool Discarding(string stream)
        {
            lock (_lock)
            {
                StreamState s;
                return _streams.TryGetValue(stream, out s) && s.Discarded;
            }
        }

        public void Clear()
        {
            lock (_lock)
            {
                foreach (var kv in new List<KeyValuePair<string, StreamState>>(_streams)) Forget(kv.Key, kv.Value);
            }
        }

        // A runtime restart: forgets every stream still going (nothing more of it will come, and
        // the new runtime may reuse its id), but not those whose end is in (their last frame, or
        // stream_end): an NPC line received whole plays out with its audio. A frame of a new stream
        // with such an id starts afresh (Push), as does its stream_start (BeginStream).
        public void ForgetUnfinished()
        {
            lock (_lock)
            {
                foreach (var kv in new List<KeyValuePair<string, StreamState>>(_streams))
                {
                    if (!kv.Value.Ended) Forget(kv.Key, kv.Value);
                }
            }
        }

        // The pose of `stream` at local time `nowS`, written into `into` (untouched when
        // Unknown). `tAudio`: the audio instant shown. Frames before the one preceding `nowS`
        // are dropped, so sample with a non-decreasing clock.
        public PlayState Sample(string stream, double nowS, Pose into, out double tAudio)
        {
            tAudio = 0;
            lock (_lock)
            {
                double clockNow = _clock();
                ForgetUnplayed(clockNow);
                StreamState s;
                if (stream == null || !_streams.TryGetValue(stream, out s)) return PlayState.Unknown;
                s.LastSampleS = clockNow;
                if (s.Frames.Count == 0) return PlayState.Unknown;
                List<Slot> frames = s.Frames;
                if (!s.Clock.Anchored || (s.AwaitAnchor && !s.Clock.OnAudioClock))
                {
                    into.CopyFrom(frames[0].Pose);
                    tAudio = frames[0].T;
                    return PlayState.Waiting;
                }
                double t = nowS - s.Clock.Offset; // the audio instant to show now
                if (t < frames[0].T)
                {
                    into.CopyFrom(frames[0].Pose);
                    tAudio = frames[0].T;
                    return PlayState.Waiting;
                }
                if (t > s.LastSampledT) s.LastSampledT = t;
                int after = UpperBound(frames, t); // first frame strictly after t
                if (after == frames.Count)
                {
                    Slot newest = frames[frames.Count - 1];
                    into.CopyFrom(newest.Pose);
                    tAudio = newest.T;
                    if (s.Ended)
                    {
                        Forget(stream, s); // played out: a later stream with this id starts afresh
                        return PlayState.Ended;
                    }
                    Release(frames, frames.Count - 1); // keep only the newest: the rest is past
                    return PlayState.Holding;
                }
                Slot before = frames[after - 1];
                Slot next = frames[after];
                into.Lerp(before.Pose, next.Pose, (t - before.T) / (next.T - before.T));
                tAudio = t;
                Release(frames, after - 1); // `before` is still needed by the next sample
                return PlayState.Playing;
            }
        }

        public int Buffered(string stream)
        {
            lock (_lock)
            {
                StreamState s;
                return _streams.TryGetValue(stream, out s) ? s.Frames.Count : 0;
            }
        }

        public double? Offset(string stream)
        {
            lock (_lock)
            {
                StreamState s;
                return _streams.TryGetValue(stream, out s) && s.Clock.Anchored ? s.Clock.Offset : (double?)null;
            }
        }

        public ulong Reanchors(string stream)
        {
            lock (_lock)
            {
                StreamState s;
                return _streams.TryGetValue(stream, out s) ? s.Clock.Reanchors : 0;
            }
        }

        // Frames that arrived after their instant had been shown (the face skipped them).
        public ulong LateFrames(string stream)
        {
            lock (_lock)
            {
                StreamState s;
                return _streams.TryGetValue(stream, out s) ? s.Late : 0;
            }
        }

        // Whether the buffer holds the stream, or awaits its frames (AwaitAnchor, Anchor); false
        // once it was played out, forgotten or discarded.
        public bool Contains(string stream)
        {
            lock (_lock)
            {
                StreamState s;
                return stream != null && _streams.TryGetValue(stream, out s) && !s.Discarded;
            }
        }

        // The streams it holds or awaits (not the discarded ones).
        public string[] Streams()
        {
            lock (_lock)
            {
                var ids = new List<string>(_streams.Count);
                foreach (KeyValuePair<string, StreamState> kv in _streams)
                {
                    if (!kv.Value.Discarded) ids.Add(kv.Key);
                }
                return ids.ToArray();
            }
        }

        // --- internals (under _lock) ------------------------------------------------------------

        StreamState Add(string stream)
        {
            var s = new StreamState(_margin, _maxFrames);
            _streams[stream] = s;
            return s;
        }

        void Forget(string stream, StreamState s)
        {
            Release(s.Frames, s.Frames.Count);
            _streams.Remove(stream);
        }

        // Forgets the ended lines that awaited Anchor() in vain (their last frame
        // UnanchoredLineTimeoutS before `now`, the buffer's clock), every other ended stream not
        // on the audio clock neither fed nor sampled that long: nobody plays it any more (a stream
        // no face shows), and it would otherwise hold its frames for good; and the discarded
        // streams of which nothing came that long. Not a line on the audio clock: the game anchored
        // it, and may sample nothing for longer (paused) or anchor it long before its audio (a
        // cutscene); its owner lets go of it (ResetStream, Discard). Allocates nothing (a scratch
        // list).
        void ForgetUnplayed(double now)
        {
            foreach (KeyValuePair<string, StreamState> kv in _streams)
            {
                StreamState s = kv.Value;
                if (s.Discarded)
                {
                    if (now > s.LastFrameS + UnanchoredLineTimeoutS) _expired.Add(kv.Key);
                    continue;
                }
                if (!s.Ended || s.Clock.OnAudioClock) continue;
                bool unanchored = s.AwaitAnchor && now > s.LastFrameS + UnanchoredLineTimeoutS;
                bool unplayed = now > Math.Max(s.LastFrameS, s.LastSampleS) + UnanchoredLineTimeoutS;
                if (unanchored || unplayed) _expired.Add(kv.Key);
            }
            if (_expired.Count == 0) return;
            for (int i = 0; i < _expired.Count; i++) Forget(_expired[i], _streams[_expired[i]]);
            _expired.Clear();
        }

        // `scheduled`: the frame has a show time (the stream is not waiting for Anchor);
        // `arrivalS`: when it came, on the clock of a live stream's timeline.
        void Insert(StreamState s, Frame frame, bool scheduled, double arrivalS)
        {
            List<Slot> frames = s.Frames;
            // Frames mostly come in order: search from the end.
            int i = frames.Count;
            while (i > 0 && frames[i - 1].T > frame.TAudio) i--;
            if (i > 0 && frames[i - 1].T == frame.TAudio)
            {
                frames[i - 1].Seq = frame.Seq;
                frames[i - 1].Pose.CopyFrom(frame); // a repeated t_audio replaces the frame
                return;
            }
            Slot slot = _pool.Count > 0 ? _pool.Pop() : new Slot();
            slot.T = frame.TAudio;
            slot.Seq = frame.Seq;
            slot.Pose.CopyFrom(frame);
            frames.Insert(i, slot);
            if (frames.Count <= _maxFrames) return;
            // Over the bound: drop the oldest frame if it is past (the next one's instant has
            // come), else the newest. Frames still to be shown (a whole line waiting for its
            // audio) are never dropped for later ones: a line too long for the bound loses its
            // end, not its start. Past: on the audio clock, what the face has passed (Sample's
            // clock is not the arrivals'); live, the next frame's show time at this arrival.
            double nextT = frames[1].T;
            bool past = s.Clock.OnAudioClock ? nextT <= s.LastSampledT
                                             : scheduled && s.Clock.Offset + nextT <= arrivalS;
            if (past)
            {
                Release(frames, 1);
            }
            else
            {
                int newest = frames.Count - 1;
                _pool.Push(frames[newest]);
                frames.RemoveAt(newest);
            }
        }

        // Whether `frame` is an exact repeat (seq, t_audio, pose) of a frame `s` holds.
        static bool IsHeldRepeat(StreamState s, Frame frame)
        {
            int i = UpperBound(s.Frames, frame.TAudio) - 1;
            if (i < 0) return false;
            Slot held = s.Frames[i];
            return held.T == frame.TAudio && held.Seq == frame.Seq && held.Pose.Matches(frame);
        }

        // Returns the first `count` frames to the pool.
        void Release(List<Slot> frames, int count)
        {
            if (count <= 0) return;
            for (int i = 0; i < count; i++) _pool.Push(frames[i]);
            frames.RemoveRange(0, count);
        }

        static int UpperBound(List<Slot> frames, double t)
        {
            int lo = 0, hi = frames.Count;
            while (lo < hi)
            {
                int mid = (lo + hi) / 2;
                if (frames[mid].T <= t) lo = mid + 1;
                else hi = mid;
            }
            return lo;
        }
    }
}
