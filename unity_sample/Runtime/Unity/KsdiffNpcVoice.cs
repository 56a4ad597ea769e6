// Speaks an NPC line: pushes an AudioClip to the runtime as its own stream (with its transcript,
// if you have it), then plays it on this AudioSource so that lips and audio match. The timing is
// the core's NpcLine (SPEC 6.1): the line is opened in mode "line" and pushed whole (a 1.1
// runtime: at the clip's own pace), and playback starts once the latency the runtime states for
// it (a 1.1 runtime: from `stats` latency_p95_ms and the frames' published - captured) has passed
// since the first push and the first frame is in; the face then shows frame i when sample
// t_audio(i) is heard.
//
// The audio clip must be readable: Load Type "Decompress On Load" in its import settings.
// When the runtime is absent or refuses the line, the clip still plays (without lip motion)
// unless `playWhenAnimationFails` is off: a game never loses its dialogue.
using System;
using UnityEngine;
using UnityEngine.Events;

namespace Ksdiff.Unity
{
    [AddComponentMenu("ksdiff/Ksdiff NPC Voice")]
    [RequireComponent(typeof(AudioSource))]
    public sealed class KsdiffNpcVoice : MonoBehaviour
    {
        [Serializable] public sealed class LineFailedEvent : UnityEvent<string> { }

        public KsdiffConnection connection;
        public KsdiffFaceDriver face;
        public AudioClip clip;
        [TextArea] public string transcript = "";
        public bool speakOnStart = false;

        [Header("Timing")]
        [Tooltip("Playback delay when the runtime states no latency (protocol 1.1) and none is known yet (the first line after it starts).")]
        [Range(50, 2000)] public float defaultLatencyMs = 300;
        [Tooltip("Added to the runtime's latency: room for network and scheduling jitter.")]
        [Range(0, 500)] public float marginMs = 60;
        public bool playWhenAnimationFails = true;
        [Tooltip("How long a line waits for the runtime to be reachable (e.g. right after the scene starts).")]
        [Range(0, 10)] public float connectWaitS = 3f;

        public UnityEvent lineFinished = new UnityEvent();
        public LineFailedEvent lineFailed = new LineFailedEvent();

        public NpcLine Line { get; private set; }
        public bool Speaking { get { return Line != null || _waiting; } }

        static readonly System.Random s_random = new System.Random();
        static ulong s_lines;
        AudioSource _source;
        AudioClip _playing;
        string _text;
        float[] _samples;
        bool _waiting;
        float _waitingSince;
        bool _audioStarted;

        void Awake() { _source = GetComponent<AudioSource>(); }

        void Start()
        {
            if (speakOnStart && clip != null) Speak(clip, transcript);
        }

        // Starts a line (animated once the runtime is reachable, waiting up to `connectWaitS` for
        // it, e.g. right after the scene starts); false when it cannot even be tried.
        public bool Speak(AudioClip line, string text = null)
        {
            Stop();
            _playing = line;
            _text = text;
            _audioStarted = false;
            if (connection == null || connection.Client == null)
            {
                Failed("no connection (assign an enabled KsdiffConnection)");
                return false;
            }
            string problem;
            _samples = KsdiffAudio.Samples(line, out problem);
            if (problem != null)
            {
                Failed(problem);
                return false;
            }
            _waitingSince = Time.unscaledTime;
            _waiting = true;
            TryBegin();
            return true;
        }

        // Opens the line once the runtime is live; gives up after connectWaitS.
        void TryBegin()
        {
            KsdiffClient client = connection != null ? connection.Client : null;
            ClientState state = client != null ? client.State : ClientState.Stopped;
            if (state != ClientState.Live)
            {
                if (state == ClientState.Failed || state == ClientState.Stopped || Time.unscaledTime - _waitingSince > connectWaitS)
                {
                    _waiting = false;
                    Failed("the runtime is not reachable (" + state + " at " + (connection != null ? connection.routerEndpoint : "-") + ")");
                }
                return;
            }
            _waiting = false;
            string id = NpcLine.StreamIdFor(name, ++s_lines, s_random);
            try
            {
                Line = new NpcLine(client, _samples, _playing.frequency, _playing.channels, new NpcLineOptions
                {
                    Stream = id, Transcript = string.IsNullOrEmpty(_text) ? null : _text,
                    DefaultLatencyS = defaultLatencyMs / 1000.0, MarginS = marginMs / 1000.0,
                });
            }
            catch (ArgumentException e) // a sample rate or channel count the protocol refuses
            {
                Failed(e.Message);
                return;
            }
            Line.Start();
            if (face != null) face.ShowLine(id);
        }

        public void Stop()
        {
            _waiting = false;
            if (Line != null)
            {
                Line.Cancel();
                if (face != null) face.StopLine(Line.Stream);
                Line = null;
            }
            if (_source != null && _source.isPlaying) _source.Stop();
        }

        void Update()
        {
            if (_waiting) TryBegin();
            if (Line == null || connection == null || connection.Client == null) return;
            NpcLineState state = Line.Update();
            if (Line.ShouldStartPlayback)
            {
                // Scheduled a little ahead so the first buffer is not missed; the face is anchored
                // where sample 0 will be heard: the scheduled time plus the output latency.
                double t0 = AudioSettings.dspTime + 0.05;
                _source.clip = _playing;
                _source.PlayScheduled(t0);
                _audioStarted = true;
                Line.PlaybackStarted(t0 + OutputLatency());
            }
            if (state == NpcLineState.Failed)
            {
                string why = Line.Failure;
                if (face != null) face.StopLine(Line.Stream);
                Line = null;
                Failed(why);
            }
            else if (state == NpcLineState.Done && _audioStarted && !_source.isPlaying)
            {
                // A line on the audio clock goes once a face has played it out; with no face to
                // do so, its frames are let go of here (the buffer keeps such a line otherwise).
                if (face == null) connection.Client.Buffer.ResetStream(Line.Stream);
                Line = null;
                lineFinished.Invoke();
            }
        }

        void Failed(string why)
        {
            Debug.LogWarning("ksdiff: " + name + ": the line is not animated: " + why, this);
            if (playWhenAnimationFails && _playing != null && !_audioStarted)
            {
                _source.clip = _playing;
                _source.Play();
                _audioStarted = true;
            }
            lineFailed.Invoke(why);
        }

        // The time from the mix (dspTime) to the speakers: the DSP buffers queued ahead.
        static double OutputLatency()
        {
            int bufferLength, buffers;
            AudioSettings.GetDSPBufferSize(out bufferLength, out buffers);
            return (double)bufferLength * buffers / Mathf.Max(1, AudioSettings.outputSampleRate);
        }

        void OnDisable() { Stop(); }
    }
}
