// The protocol's messages (SPEC 4) as plain classes with public fields.
//
// Optional keys are nullable (null = absent); every other field was present and well-typed when
// decoded. Integers keep their full width; floats the wire carries as float32 are float, the
// others double.
using System;
using System.Collections.Generic;

namespace Ksdiff
{
    public enum MessageType
    {
        Hello, Frame, StreamStart, StreamEnd, Stats, OpenStream, Audio, EndStream, SetControls, StreamOpened,
        StreamEnded, ControlsSet, Error,
    }

    public abstract class Message
    {
        public int Major = Protocol.Major;
        public int Minor = Protocol.Minor; // a newer minor only adds keys (ignored) and types
        public abstract MessageType Type { get; }
    }

    // SPEC 4.1. A runtime hello carries every schema field; a client's hello request none of them
    // (FromRuntime tells which one this is).
    public sealed class Hello : Message
    {
        public override MessageType Type { get { return MessageType.Hello; } }
        public bool FromRuntime;
        public string Runtime;
        public uint Fps;
        public uint SampleRate;
        public string[] Blendshapes;
        public string[] Head;
        public string HeadUnits;
        public string HeadConvention;
        public string[] Gaze;
        public string GazeUnits;
        public string GazeConvention;
        public ulong MaxMessageBytes;
        public string Instance; // random per runtime process start; null when absent
        public ulong? Req;
    }

    // SPEC 4.2. The decoder fills one Frame over and over (no allocation per frame): CopyTo or
    // Clone it to keep it past the next decode.
    public sealed class Frame : Message
    {
        public override MessageType Type { get { return MessageType.Frame; } }
        public string Stream;
        public ulong Seq;
        public ulong Index;
        public uint Fps;
        public double TAudio; // seconds of the stream's audio this frame animates (= Index / Fps)
        public readonly float[] Blendshapes = new float[Protocol.BlendshapeCount]; // canonical order, 0..1
        public readonly float[] Head = new float[3]; // [pitch, yaw, roll], radians (SPEC 5.2)
        public readonly float[] Gaze = new float[4]; // [leftYaw, leftPitch, rightYaw, rightPitch] (5.3)
        public long? CapturedNs; // null: unknown (offline file streams)
        public long PublishedNs;
        public float LookaheadMs;
        public float ComputeMs;
        public bool Last;

        // The runtime's own latency for this frame (published - captured), when known.
        public double? LatencyMs
        {
            get { return CapturedNs.HasValue ? (PublishedNs - CapturedNs.Value) / 1e6 : (double?)null; }
        }

        public void CopyTo(Frame other)
        {
            other.Major = Major;
            other.Minor = Minor;
            other.Stream = Stream;
            other.Seq = Seq;
            other.Index = Index;
            other.Fps = Fps;
            other.TAudio = TAudio;
            Array.Copy(Blendshapes, other.Blendshapes, Blendshapes.Length);
            Array.Copy(Head, other.Head, Head.Length);
            Array.Copy(Gaze, other.Gaze, Gaze.Length);
            other.CapturedNs = CapturedNs;
            other.PublishedNs = PublishedNs;
            other.LookaheadMs = LookaheadMs;
            other.ComputeMs = ComputeMs;
            other.Last = Last;
        }

        public Frame Clone()
        {
            var f = new Frame();
            CopyTo(f);
            return f;
        }
    }

    public sealed class StreamStart : Message
    {
        public override MessageType Type { get { return MessageType.StreamStart; } }
        public string Stream;
        public string Source; // "mic", "file" or "sdk"
        public long PublishedNs;
        // 1.2, optional (null from a 1.1 runtime): the stream's mode, and the latency the runtime
        // adds for it: start playing its audio LatencyMs after its first push and lips match.
        public string Mode;
        public double? LatencyMs;
    }

    public sealed class StreamEnd : Message
    {
        public override MessageType Type { get { return MessageType.StreamEnd; } }
        public string Stream;
        public string Source;
        public string Reason; // "ended", "timeout", "error" or "shutdown"
        public ulong Frames;
        public long PublishedNs;
    }

    public sealed class StreamStats
    {
        public double Fps;
        public double LatencyP50Ms;
        public double LatencyP95Ms;
        public ulong Frames;
        public ulong Drops;
        public string Source;  // optional in the SPEC: kept when well-typed, else null
        public ulong? Sanitized; // idem
        public ulong? Shed;      // idem (1.1): of the drops, frames skipped to meet the deadline
    }

    // SPEC 4.5. Keys this client does not know (a newer minor's) are ignored.
    public sealed class Stats : Message
    {
        public override MessageType Type { get { return MessageType.Stats; } }
        public double UptimeS;
        public readonly Dictionary<string, StreamStats> Streams = new Dictionary<string, StreamStats>();
        public ulong Drops;
        public long PublishedNs;
        // 1.1, optional (null when absent): error code -> requests refused with it since start,
        // and how many more live streams the runtime has room for now (measured compute).
        public Dictionary<string, ulong> Refused;
        public ulong? Capacity;
    }

    public sealed class OpenStream : Message
    {
        public override MessageType Type { get { return MessageType.OpenStream; } }
        public string Stream; // null: the runtime picks one
        public uint SampleRate = 16000;
        public uint Channels = 1;
        public string Format = "f32le"; // "f32le" or "s16le"
        public string Transcript;
        public long? Seed;
        public string Mode;         // 1.2: Protocol.ModeLive (the runtime's default) or ModeLine; null: absent
        public Controls Controls;   // 1.2: the stream's artists' controls from its first frame; null: absent
        public ulong? Req;
    }

    public sealed class Audio : Message
    {
        public override MessageType Type { get { return MessageType.Audio; } }
        public string Stream;
        public ulong Seq;
        public ulong? AtSample;
        public byte[] Pcm; // raw interleaved samples in the stream's format
    }

    public sealed class EndStream : Message
    {
        public override MessageType Type { get { return MessageType.EndStream; } }
        public string Stream;
        public ulong? Req;
    }

    public sealed class StreamOpened : Message
    {
        public override MessageType Type { get { return MessageType.StreamOpened; } }
        public string Stream;
        public uint Fps;
        // 1.1, optional: seconds of audio beyond real time the stream buffers; audio pushed further
        // ahead is refused with `busy` (nothing of it taken). Null from a 1.0 runtime: no limit.
        public double? MaxAheadS;
        public string Mode;       // 1.2, optional: as StreamStart's
        public double? LatencyMs; // 1.2, optional: as StreamStart's
        public ulong? Req;
    }

    // 1.2: change a stream's controls (one this client opened, or the runtime's own, e.g. "mic").
    public sealed class SetControls : Message
    {
        public override MessageType Type { get { return MessageType.SetControls; } }
        public string Stream;
        public Controls Controls = new Controls();
        public ulong? Req;
    }

    // 1.2: the reply to set_controls: the stream's controls now in force, in full.
    public sealed class ControlsSet : Message
    {
        public override MessageType Type { get { return MessageType.ControlsSet; } }
        public string Stream;
        public Controls Controls = new Controls();
        public ulong? Req;
    }

    // One blendshape's control: value = clamp(raw * Gain + Offset, Min, Max). Null: unchanged
    // (set_controls) or the runtime's default (gain 1, offset 0, min 0, max 1).
    public sealed class ShapeControl
    {
        public double? Gain, Offset, Min, Max;
    }

    // A stream's artists' controls (1.2; the mood 1.3; the style 1.4), as open_stream and
    // set_controls carry them and controls_set returns them (ksdiff_runtime/engine/controls.py).
    // Regions: jaw, mouth, brows, eyes, head; moods: Protocol.Moods; styles: Protocol.Styles. Every
    // part is optional (null: absent): set_controls changes the settings given and keeps the rest.
    // Ranges and names are the runtime's to check (error bad_controls): this client only carries
    // the map, entries in the order added. Decoding keeps the entries that are well typed and
    // ignores the others (the protocol asks only for a map with string keys).
    public sealed class Controls
    {
        public List<KeyValuePair<string, double>> Strength;        // region -> multiplier (1: as is)
        public List<KeyValuePair<string, ShapeControl>> Shapes;    // ARKit blendshape -> its control
        public List<KeyValuePair<string, double>> SmoothingMs;     // region -> time constant (0: none)
        public double? TimingOffsetMs;                              // + later, - earlier than the audio
        public string Mood;                                         // 1.3: one of Protocol.Moods (runtime default neutral)
        public double? MoodIntensity;                               // 1.3: how much of the mood, 0..1 (default 1)
        public string Style;                                        // 1.4: one of Protocol.Styles (runtime default none) or the runtime's take file

        public Controls SetStrength(string region, double multiplier)
        {
            if (Strength == null) Strength = new List<KeyValuePair<string, double>>();
            Strength.Add(new KeyValuePair<string, double>(region, multiplier));
            return this;
        }

        public Controls SetShape(string blendshape, ShapeControl control)
        {
            if (Shapes == null) Shapes = new List<KeyValuePair<string, ShapeControl>>();
            Shapes.Add(new KeyValuePair<string, ShapeControl>(blendshape, control));
            return this;
        }

        public Controls SetSmoothingMs(string region, double ms)
        {
            if (SmoothingMs == null) SmoothingMs = new List<KeyValuePair<string, double>>();
            SmoothingMs.Add(new KeyValuePair<string, double>(region, ms));
            return this;
        }

        // 1.3: the stream's mood (Protocol.Moods), and its intensity 0..1 when given (else unchanged:
        // the stream's current intensity in set_controls, the runtime's default 1 in open_stream).
        public Controls SetMood(string mood, double? intensity = null)
        {
            Mood = mood;
            if (intensity.HasValue) MoodIntensity = intensity;
            return this;
        }

        // 1.3: the intensity alone (0: none of the mood, 1: all of it), the mood kept.
        public Controls SetMoodIntensity(double intensity)
        {
            MoodIntensity = intensity;
            return this;
        }

        // 1.4: the stream's style (Protocol.Styles; Protocol.StyleNone: the model's own motion), or
        // the take file a controls_set showed, sent back unchanged.
        public Controls SetStyle(string style)
        {
            Style = style;
            return this;
        }
    }

    public sealed class StreamEnded : Message
    {
        public override MessageType Type { get { return MessageType.StreamEnded; } }
        public string Stream;
        public ulong Frames;
        public ulong? Req;
    }

    public sealed class ErrorReply : Message
    {
        public override MessageType Type { get { return MessageType.Error; } }
        public string Code; // as sent; act on ErrorCode
        public string Message;
        public string RequestType; // null: the request could not be read
        public string Stream;
        public ulong? Req;

        public ErrorCode ErrorCode { get { return ErrorCodes.FromWire(Code); } }

        public override string ToString()
        {
            return Code + ": " + Message + (Stream != null ? " (stream '" + Stream + "')" : "");
        }
    }
}
