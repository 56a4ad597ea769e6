// Baking a line into animation curves (for an AnimationClip, then Timeline): the frames of one
// stream recorded whole, then turned into one curve per driven blendshape and per bone rotation
// component, keyed at each frame's t_audio. The editor only copies the curves into Unity's
// AnimationCurve / AnimationClip; what goes in them is decided (and tested) here.
using System;
using System.Collections.Generic;

namespace Ksdiff
{
    // Keeps a copy of every frame of one stream (on the client's worker thread) until its last.
    public sealed class ClipRecorder : IFrameSink
    {
        readonly object _lock = new object();
        readonly string _stream;
        readonly SortedDictionary<ulong, Frame> _frames = new SortedDictionary<ulong, Frame>();
        bool _last;

        public ClipRecorder(string stream) { _stream = stream; }

        public void OnFrame(Frame frame, double arrivalS)
        {
            if (frame.Stream != _stream) return;
            lock (_lock)
            {
                _frames[frame.Index] = frame.Clone();
                if (frame.Last) _last = true;
            }
        }

        public bool SawLast { get { lock (_lock) return _last; } }
        public int Count { get { lock (_lock) return _frames.Count; } }

        // The frames by index.
        public List<Frame> Frames()
        {
            lock (_lock) return new List<Frame>(_frames.Values);
        }

        // Indices below `total` (the runtime's stream_ended count) that never arrived.
        public List<ulong> Missing(ulong total)
        {
            var missing = new List<ulong>();
            lock (_lock)
            {
                for (ulong i = 0; i < total; i++)
                {
                    if (!_frames.ContainsKey(i)) missing.Add(i);
                }
            }
            return missing;
        }
    }

    public enum OfflineLineState { Idle, Opening, Collecting, Done, Failed }

    // A line animated offline (the editor's bake): open a stream in mode "line" (a 1.2 runtime
    // animates it in whole windows, as its own bake does; an older one animates it live), push the
    // clip as fast as the runtime takes it, end it, and wait until every frame is in. A 1.1 runtime buffers at most
    // stream_opened.max_ahead_s of audio beyond real time (counted from the stream's first audio)
    // and refuses audio further ahead with `busy`, nothing of it taken: so the line pushes up to
    // that much at once and the rest as real time passes (a 1.0 runtime, with no max_ahead_s,
    // gets the whole clip at once). No playback otherwise. Driven by Update() like NpcLine.
    public sealed class OfflineLine
    {
        // Stay this far inside max_ahead_s: the runtime's clock starts when our first audio
        // reaches it, a little after we sent it.
        public const double AheadMarginS = 0.5;

        readonly KsdiffClient _client;
        readonly float[] _samples;
        readonly int _rate, _channels;
        readonly NpcLineOptions _o;
        readonly ClipRecorder _recorder;
        readonly byte[] _chunk;
        PendingRequest _open, _end;
        double _startS, _firstPushS;
        double? _maxAheadS;
        long _pushedFrames; // sample frames sent
        ulong _seq;

        public OfflineLineState State { get; private set; }
        public string Failure { get; private set; }
        public ulong? Total { get; private set; }
        public ClipRecorder Recorder { get { return _recorder; } }
        public double TimeoutS = 60; // for the whole line, past its own duration

        public OfflineLine(KsdiffClient client, float[] interleaved, int sampleRate, int channels, NpcLineOptions options)
        {
            NpcLine.RequireLine(client, interleaved, sampleRate, channels, options);
            _client = client;
            _samples = interleaved;
            _rate = sampleRate;
            _channels = channels;
            _o = options;
            _recorder = new ClipRecorder(options.Stream);
            _chunk = new byte[NpcLine.LineChunkFrames(options.LineChunkS, sampleRate, channels, null) * channels * 4];
        }

        public void Start()
        {
            double now = _client.Now();
            if (State != OfflineLineState.Idle) return;
            NpcLine.RequireIdFree(_client, _o.Stream);
            _startS = now;
            _client.AddFrameSink(_recorder);
            try
            {
                _open = _client.OpenStream(new OpenStream
                {
                    Stream = _o.Stream, SampleRate = (uint)_rate, Channels = (uint)_channels, Format = "f32le",
                    Transcript = _o.Transcript, Seed = _o.Seed, Mode = Protocol.ModeLine, // a 1.1 runtime ignores the mode
                });
            }
            catch (ProtocolException e)
            {
                Fail("the line cannot be sent: " + e.Message);
                return;
            }
            State = OfflineLineState.Opening;
        }

        public OfflineLineState Update()
        {
            double now = _client.Now();
            if (State == OfflineLineState.Opening || State == OfflineLineState.Collecting)
            {
                string gone = NpcLine.ClientGone(_client);
                if (gone != null) { Fail(gone); return State; }
            }
            if (State == OfflineLineState.Opening)
            {
                if (!_open.IsDone)
                {
                    if (now - _startS > _o.OpenTimeoutS)
                    {
                        string why = "no reply to open_stream within " + _o.OpenTimeoutS + " s: is the runtime running?";
                        _client.Abandon(_open, why); // never sent, or its stream ended if the runtime opens it anyway
                        Fail(why);
                    }
                    return State;
                }
                if (_open.Failure != null) { Fail(_open.Failure); return State; }
                if (_open.Reply is ErrorReply) { Fail("the runtime refused the line: " + _open.Reply); return State; }
                _maxAheadS = ((StreamOpened)_open.Reply).MaxAheadS;
                _firstPushS = now;
                State = OfflineLineState.Collecting;
            }
            if (State == OfflineLineState.Collecting)
            {
                // Before the snapshot: once end_stream's reply is in, the snapshot holds the loss the
                // client marks for a refusal (NpcLine.Streaming).
                bool endDone = _end != null && _end.IsDone;
                StreamStatus s = _client.Stream(_o.Stream);
                if (s != null && s.EndReason != null && s.EndReason != "ended")
                {
                    Fail(s.EndReason == "reconnect" ? "the connection to the runtime dropped; the line was lost"
                                                    : "the line was lost (" + s.EndReason + ")");
                    return State;
                }
                if (s != null && s.Errors.Count > 0) { Fail("the runtime refused the line's audio: " + s.Errors[0]); return State; }
                if (!PushDue(now)) return State;
                if (_end != null)
                {
                    // The end: end_stream's reply, or the stream_end (reason "ended") published just
                    // before it, should the reply be lost with a dropped connection (as NpcLine).
                    if (!Total.HasValue && endDone)
                    {
                        if (_end.Failure != null) { Fail(_end.Failure); return State; }
                        if (_end.Reply is ErrorReply) { Fail("end_stream refused: " + _end.Reply); return State; }
                        Total = ((StreamEnded)_end.Reply).Frames;
                    }
                    if (!Total.HasValue && s != null && s.EndReason == "ended" && s.EndFrames.HasValue) Total = s.EndFrames;
                    if (Total.HasValue && _recorder.SawLast && _recorder.Missing(Total.Value).Count == 0) Done();
                    else if (Total.HasValue && s != null && s.Ended && now - _end.SentS > 2.0) Done(); // what came is all that will come
                }
                if (State == OfflineLineState.Collecting && now - _startS > TimeoutS + (double)_samples.Length / _channels / _rate)
                    Fail("the frames did not all come within " + TimeoutS + " s");
            }
            return State;
        }

        // Sends every message (up to LineChunkS, NpcLine.LineChunkFrames) whose end lies within
        // max_ahead_s (less the margin) of the time since the first push; end_stream once all is sent.
        // False, the line failed, when the client refused its audio: the stream was lost when the
        // client stopped, on another thread after this Update read its status (as NpcLine.Send).
        bool PushDue(double now)
        {
            long total = _samples.Length / _channels;
            int framesPerChunk = NpcLine.LineChunkFrames(_o.LineChunkS, _rate, _channels, _maxAheadS);
            double room = _maxAheadS.HasValue ? Math.Max(0.1, _maxAheadS.Value - AheadMarginS) : double.PositiveInfinity;
            double allowedEndS = now - _firstPushS + room;
            while (_pushedFrames < total)
            {
                int n = (int)Math.Min(framesPerChunk, total - _pushedFrames);
                if ((double)(_pushedFrames + n) / _rate > allowedEndS) break;
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
            }
            // Answered once the whole line is animated: given the line's own time limit.
            if (_pushedFrames == total && _end == null) _end = _client.EndStream(_o.Stream, TimeoutS + (double)total / _rate);
            return true;
        }

        // The frames are the recorder's: the jitter buffer, which got them too (a live stream no
        // face shows), lets go of its copy, and drops any that still come (JitterBuffer.Discard).
        void Done()
        {
            State = OfflineLineState.Done;
            _client.RemoveFrameSink(_recorder);
            _client.Buffer.Discard(_o.Stream);
        }

        // As NpcLine.Fail: a line that fails once its stream is open ends that stream, unless the
        // runtime already did or end_stream was sent. Its frames that still come are dropped.
        void Fail(string why)
        {
            bool opened = _open != null && _open.IsDone && _open.Reply is StreamOpened;
            StreamStatus s = _client.Stream(_o.Stream);
            if (opened && _end == null && (s == null || s.EndReason == null)) _end = _client.EndStream(_o.Stream);
            State = OfflineLineState.Failed;
            Failure = why;
            _client.RemoveFrameSink(_recorder);
            _client.Buffer.Discard(_o.Stream);
        }
    }

    public sealed class BakedCurve
    {
        public string Path;      // the animated object, relative to the clip's root ("" = the root)
        public string Component; // "SkinnedMeshRenderer" or "Transform"
        public string Property;  // "blendShape.<shape name>" or "localRotation.x" .. ".w"
        public float[] Times;    // seconds: the frames' t_audio
        public float[] Values;
    }

    public sealed class BakeMesh
    {
        public string Path;              // the SkinnedMeshRenderer's path under the clip's root
        public IList<string> ShapeNames; // its mesh's blendshape names, by index
    }

    public sealed class BakeBone
    {
        public string Path;          // the bone's path under the clip's root
        public BoneBinding Binding;  // its rest pose (BoneBinding.Capture)
    }

    public sealed class BakeRig
    {
        public readonly List<BakeMesh> Meshes = new List<BakeMesh>();
        public IList<RemapEntry> Remap;
        public IList<string> WireNames; // the runtime hello's blendshape order; null: SPEC 5.1
        public BakeBone Head, Neck, LeftEye, RightEye;
        public float NeckShare = 0.3f;             // of the head rotation, when there is a neck bone
        public double MaxHeadRadians = Math.PI / 4;
        public double MaxEyeRadians = Math.PI / 6;
    }

    public static class AnimationBake
    {
        // One curve per driven shape of every mesh (0..100) and, for each bone given, four
        // localRotation curves (quaternion signs kept continuous from key to key).
        public static List<BakedCurve> Curves(IList<Frame> frames, BakeRig rig, out FaceMapping mapping)
        {
            var meshShapes = new List<IList<string>>();
            foreach (BakeMesh m in rig.Meshes) meshShapes.Add(m.ShapeNames);
            mapping = new FaceMapping(meshShapes, rig.Remap, rig.WireNames);
            var curves = new List<BakedCurve>();
            int n = frames.Count;
            var times = new float[n];
            for (int i = 0; i < n; i++) times[i] = (float)frames[i].TAudio;

            for (int m = 0; m < rig.Meshes.Count; m++)
            {
                BlendshapeMap map = mapping.Meshes[m];
                var values = new float[map.Targets.Length][];
                for (int k = 0; k < values.Length; k++) values[k] = new float[n];
                for (int i = 0; i < n; i++)
                {
                    map.Apply(frames[i].Blendshapes);
                    for (int k = 0; k < values.Length; k++) values[k][i] = map.Values[k];
                }
                for (int k = 0; k < values.Length; k++)
                {
                    curves.Add(new BakedCurve
                    {
                        Path = rig.Meshes[m].Path, Component = "SkinnedMeshRenderer",
                        Property = "blendShape." + rig.Meshes[m].ShapeNames[map.Targets[k]], Times = times, Values = values[k],
                    });
                }
            }

            var head = new Quat[n];
            var neck = new Quat[n];
            var left = new Quat[n];
            var right = new Quat[n];
            for (int i = 0; i < n; i++)
            {
                Frame f = frames[i];
                Quat q = HeadPose.HeadToUnity(f.Head[0], f.Head[1], f.Head[2], rig.MaxHeadRadians);
                Quat qn = Quat.Identity, qh = q;
                if (rig.Neck != null) HeadPose.SplitNeck(q, rig.NeckShare, out qn, out qh);
                if (rig.Head != null) head[i] = rig.Head.Binding.Local(qh);
                if (rig.Neck != null) neck[i] = rig.Neck.Binding.Local(qn);
                if (rig.LeftEye != null) left[i] = rig.LeftEye.Binding.Local(HeadPose.EyeToUnity(f.Gaze[0], f.Gaze[1], rig.MaxEyeRadians));
                if (rig.RightEye != null) right[i] = rig.RightEye.Binding.Local(HeadPose.EyeToUnity(f.Gaze[2], f.Gaze[3], rig.MaxEyeRadians));
            }
            AddRotation(curves, rig.Neck, neck, times);
            AddRotation(curves, rig.Head, head, times);
            AddRotation(curves, rig.LeftEye, left, times);
            AddRotation(curves, rig.RightEye, right, times);
            return curves;
        }

        static void AddRotation(List<BakedCurve> curves, BakeBone bone, Quat[] q, float[] times)
        {
            if (bone == null) return;
            MakeContinuous(q);
            string[] axes = { "x", "y", "z", "w" };
            for (int a = 0; a < 4; a++)
            {
                var values = new float[q.Length];
                for (int i = 0; i < q.Length; i++) values[i] = a == 0 ? q[i].x : a == 1 ? q[i].y : a == 2 ? q[i].z : q[i].w;
                curves.Add(new BakedCurve { Path = bone.Path, Component = "Transform", Property = "localRotation." + axes[a], Times = times, Values = values });
            }
        }

        // q and -q are the same rotation, but curves interpolating from one to the other pass
        // through garbage: each key takes the sign closest to the previous one.
        public static void MakeContinuous(Quat[] q)
        {
            for (int i = 1; i < q.Length; i++)
            {
                float dot = q[i - 1].x * q[i].x + q[i - 1].y * q[i].y + q[i - 1].z * q[i].z + q[i - 1].w * q[i].w;
                if (dot < 0) q[i] = new Quat(-q[i].x, -q[i].y, -q[i].z, -q[i].w);
            }
        }
    }
}
