// Wire protocol v1.4 of ksdiff-runtime (protocol/SPEC.md): constants, names, topics, stream ids,
// error codes.
//
// Everything under Runtime/Core is plain C# with no UnityEngine reference and no third-party
// library, so the same code compiles in Unity (Mono or IL2CPP) and with Debian's Mono for CI.
using System;
using System.Text;

namespace Ksdiff
{
    public static class Protocol
    {
        public const int Major = 1;
        // The minor this client writes in its requests (the golden request vectors carry [1, 4]).
        // It reads any minor of major 1 (SPEC 3.2: a higher minor only adds optional keys and new
        // message types), so it still reads a 1.3, 1.2 or 1.1 runtime, whose messages lack the
        // later keys.
        public const int Minor = 4;

        // How the runtime animates a stream (1.2): live (audio at the pace it is spoken) or line
        // (the audio of a whole line is there or comes faster than real time: animated in whole
        // windows at throughput speed).
        public const string ModeLive = "live", ModeLine = "line";

        public static bool IsValidMode(string mode) { return mode == ModeLive || mode == ModeLine; }

        // A stream's mood (1.3, the controls' "mood", with "mood_intensity" 0..1, default 1): an
        // expression the face holds through speech and silence, and (at the server's mood guidance) how
        // the face speaks. The runtime's default is neutral.
        // Which moods exist is the runtime's to check (it answers bad_controls, listing them): this
        // list is for pickers in a UI, in the SPEC's order.
        public const string MoodNeutral = "neutral", MoodHappy = "happy", MoodSad = "sad", MoodAngry = "angry",
            MoodSurprised = "surprised";
        public static readonly string[] Moods = { MoodNeutral, MoodHappy, MoodSad, MoodAngry, MoodSurprised };

        // A stream's style (1.4, the controls' "style"): a built-in reference take whose head, brow
        // and mouth motion the face follows, from least motion to most; none (the runtime's default)
        // is the model's own motion. A runtime's own config may set a take file instead: its
        // controls_set then shows that path, which a client may send back unchanged. Which styles
        // exist is the runtime's to check (it answers bad_controls, listing them): this list is for
        // pickers in a UI, in the SPEC's order.
        public const string StyleNone = "none", StyleStill = "still", StyleCalm = "calm", StyleNatural = "natural",
            StyleLively = "lively", StyleAnimated = "animated";
        public static readonly string[] Styles = { StyleNone, StyleStill, StyleCalm, StyleNatural, StyleLively, StyleAnimated };

        public const int BlendshapeCount = 52;
        public const int BlendshapeBytes = 4 * BlendshapeCount; // 208: 52 little-endian float32
        public const int MaxMessageBytes = 1 << 20;              // SPEC 3.4, both directions
        // ZMQ_MAXMSGSIZE on the client sockets: a peer sending more than this is not a ksd1
        // runtime, so ZeroMQ drops the connection instead of buffering it.
        public const long SocketMaxMessageBytes = 4L * MaxMessageBytes;
        public const int MaxStreamIdChars = 64;
        public const int MinSampleRate = 8000, MaxSampleRate = 192000;
        public const int MaxChannels = 8;
        public const int MaxTranscriptChars = 2000;
        // A client past its share of the runtime has its requests dropped unread, told by one `busy`
        // error with neither req nor stream; the drops end at most this long after it (SPEC 4.6,
        // "A client past its share"; protocol.BUSY_WINDOW_S).
        public const double BusyWindowS = 1.0;

        public const string DefaultPubEndpoint = "tcp://127.0.0.1:5555";
        public const string DefaultRouterEndpoint = "tcp://127.0.0.1:5556";

        // The 52 ARKit blendshapes in the protocol's canonical order (SPEC 5.1). This is Apple's
        // ARFaceAnchor order, not the alphabetical order of Unity's ARKitBlendShapeLocation enum:
        // map by name, never by index.
        public static readonly string[] BlendshapeNames =
        {
            "eyeBlinkLeft", "eyeLookDownLeft", "eyeLookInLeft", "eyeLookOutLeft", "eyeLookUpLeft",
            "eyeSquintLeft", "eyeWideLeft", "eyeBlinkRight", "eyeLookDownRight", "eyeLookInRight",
            "eyeLookOutRight", "eyeLookUpRight", "eyeSquintRight", "eyeWideRight", "jawForward",
            "jawLeft", "jawRight", "jawOpen", "mouthClose", "mouthFunnel", "mouthPucker", "mouthLeft",
            "mouthRight", "mouthSmileLeft", "mouthSmileRight", "mouthFrownLeft", "mouthFrownRight",
            "mouthDimpleLeft", "mouthDimpleRight", "mouthStretchLeft", "mouthStretchRight",
            "mouthRollLower", "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper", "mouthPressLeft",
            "mouthPressRight", "mouthLowerDownLeft", "mouthLowerDownRight", "mouthUpperUpLeft",
            "mouthUpperUpRight", "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft",
            "browOuterUpRight", "cheekPuff", "cheekSquintLeft", "cheekSquintRight", "noseSneerLeft",
            "noseSneerRight", "tongueOut",
        };
        public static readonly string[] HeadNames = { "headPitch", "headYaw", "headRoll" };
        public static readonly string[] GazeNames = { "leftEyeYaw", "leftEyePitch", "rightEyeYaw", "rightEyePitch" };

        // --- topics (SPEC 2): always ending in '/', so "npc1" never matches "npc10" ---------------
        public const string TopicRoot = "ksd1/";
        public const string FrameTopicPrefix = "ksd1/frame/";
        public const string StreamTopicPrefix = "ksd1/stream/";
        public const string StatsTopic = "ksd1/stats/";
        public const string HelloTopic = "ksd1/hello/";

        public static string FrameTopic(string streamId)
        {
            RequireStreamId(streamId);
            return FrameTopicPrefix + streamId + "/";
        }

        public static string StreamTopic(string streamId)
        {
            RequireStreamId(streamId);
            return StreamTopicPrefix + streamId + "/";
        }

        // 1..64 characters of [A-Za-z0-9_.-], and not "." or ".." (protocol 1.1 refuses those two:
        // they would be path components wherever a stream id names a file).
        public static bool IsValidStreamId(string id)
        {
            if (id == null || id.Length < 1 || id.Length > MaxStreamIdChars) return false;
            if (id == "." || id == "..") return false;
            for (int i = 0; i < id.Length; i++)
            {
                if (!IsStreamIdChar(id[i])) return false;
            }
            return true;
        }

        // The same rule on raw ASCII bytes (the decoder checks before it makes a string).
        public static bool IsValidStreamId(byte[] data, int offset, int length)
        {
            if (length < 1 || length > MaxStreamIdChars) return false;
            if (data[offset] == (byte)'.' && (length == 1 || (length == 2 && data[offset + 1] == (byte)'.'))) return false;
            for (int i = 0; i < length; i++)
            {
                if (!IsStreamIdChar((char)data[offset + i])) return false;
            }
            return true;
        }

        static bool IsStreamIdChar(char c)
        {
            return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                   c == '_' || c == '.' || c == '-';
        }

        public static void RequireStreamId(string id)
        {
            if (!IsValidStreamId(id))
            {
                throw new ProtocolException(ErrorCode.Malformed,
                    "bad stream id '" + id + "': need 1..64 chars of [A-Za-z0-9_.-], not '.' or '..'");
            }
        }

        // A PUB topic split into its kind and, for frame/stream topics, where its stream id lies in
        // `data`. Works on the raw bytes so the receive loop allocates nothing per message.
        public static bool TryParseTopic(byte[] data, int offset, int length, out TopicKind kind,
                                         out int streamOffset, out int streamLength)
        {
            kind = TopicKind.Hello;
            streamOffset = 0;
            streamLength = 0;
            if (length < 1 || data[offset + length - 1] != (byte)'/') return false;
            if (Matches(data, offset, length, HelloTopic)) { kind = TopicKind.Hello; return true; }
            if (Matches(data, offset, length, StatsTopic)) { kind = TopicKind.Stats; return true; }
            int prefix;
            if (StartsWith(data, offset, length, FrameTopicPrefix)) { kind = TopicKind.Frame; prefix = FrameTopicPrefix.Length; }
            else if (StartsWith(data, offset, length, StreamTopicPrefix)) { kind = TopicKind.Stream; prefix = StreamTopicPrefix.Length; }
            else return false;
            streamOffset = offset + prefix;
            streamLength = length - prefix - 1;
            return IsValidStreamId(data, streamOffset, streamLength);
        }

        // The string form, for callers that have one (tests, tools).
        public static bool TryParseTopic(string topic, out TopicKind kind, out string stream)
        {
            stream = null;
            byte[] bytes = Encoding.UTF8.GetBytes(topic ?? "");
            int streamOffset, streamLength;
            if (!TryParseTopic(bytes, 0, bytes.Length, out kind, out streamOffset, out streamLength)) return false;
            if (kind == TopicKind.Frame || kind == TopicKind.Stream)
                stream = Encoding.ASCII.GetString(bytes, streamOffset, streamLength);
            return true;
        }

        static bool Matches(byte[] data, int offset, int length, string ascii)
        {
            return length == ascii.Length && StartsWith(data, offset, length, ascii);
        }

        static bool StartsWith(byte[] data, int offset, int length, string ascii)
        {
            if (length < ascii.Length) return false;
            for (int i = 0; i < ascii.Length; i++)
            {
                if (data[offset + i] != (byte)ascii[i]) return false;
            }
            return true;
        }

        public static int BlendshapeIndex(string canonicalName)
        {
            for (int i = 0; i < BlendshapeNames.Length; i++)
            {
                if (BlendshapeNames[i] == canonicalName) return i;
            }
            return -1;
        }
    }

    public enum TopicKind { Hello, Stats, Frame, Stream }

    // SPEC 4.7. `Forbidden` arrives with protocol 1.1 (audio or end_stream sent to a stream that
    // another client opened). A code this client does not know reads as Internal (SPEC 4.7).
    public enum ErrorCode
    {
        Malformed,
        TooLarge,
        UnsupportedVersion,
        UnknownType,
        UnknownStream,
        BadAudio,
        Busy,
        Forbidden,
        BadControls, // 1.2: controls out of range, or naming an unknown region or blendshape (1.3: or mood; 1.4: or style)
        Internal,
    }

    public static class ErrorCodes
    {
        static readonly string[] Wire =
        {
            "malformed", "too_large", "unsupported_version", "unknown_type", "unknown_stream",
            "bad_audio", "busy", "forbidden", "bad_controls", "internal",
        };

        public static string ToWire(ErrorCode code)
        {
            int i = (int)code;
            return i >= 0 && i < Wire.Length ? Wire[i] : "internal";
        }

        public static ErrorCode FromWire(string code)
        {
            for (int i = 0; i < Wire.Length; i++)
            {
                if (Wire[i] == code) return (ErrorCode)i;
            }
            return ErrorCode.Internal; // SPEC 4.7: an unknown code is treated like `internal`
        }
    }

    // A message that breaks the protocol, with the code the runtime would answer it with.
    public class ProtocolException : Exception
    {
        public readonly ErrorCode Code;

        public ProtocolException(ErrorCode code, string message)
            : base(ErrorCodes.ToWire(code) + ": " + message)
        {
            Code = code;
        }
    }
}
