// The client's requests (DEALER -> the runtime's ROUTER, SPEC 4.6), encoded like the reference
// encoder: smallest integer forms, keys in the SPEC's order, so they match the golden vectors
// byte for byte. Each encoder validates what it encodes and throws ProtocolException for what the
// runtime would refuse, so a bad argument fails here rather than as an error reply.
using System;
using System.Collections.Generic;
using System.Text;

namespace Ksdiff
{
    public static class Requests
    {
        public static byte[] Hello(ulong? req)
        {
            var w = new MsgPackWriter();
            Header(w, "hello", req.HasValue ? 1 : 0);
            if (req.HasValue) { w.Str("req"); w.UInt(req.Value); }
            return Done(w);
        }

        public static byte[] OpenStream(OpenStream r)
        {
            if (r.Stream != null) Protocol.RequireStreamId(r.Stream);
            if (r.SampleRate < Protocol.MinSampleRate || r.SampleRate > Protocol.MaxSampleRate)
                throw new ProtocolException(ErrorCode.BadAudio, "sample_rate must be in [8000, 192000], got " + r.SampleRate);
            if (r.Channels < 1 || r.Channels > Protocol.MaxChannels)
                throw new ProtocolException(ErrorCode.BadAudio, "channels must be in [1, 8], got " + r.Channels);
            if (r.Format != "f32le" && r.Format != "s16le")
                throw new ProtocolException(ErrorCode.BadAudio, "format must be f32le or s16le, got " + r.Format);
            if (r.Transcript != null)
            {
                byte[] utf8 = Encoding.UTF8.GetBytes(r.Transcript);
                int chars = Utf8.CodePointCount(utf8, 0, utf8.Length);
                if (chars < 0 || chars > Protocol.MaxTranscriptChars)
                    throw new ProtocolException(ErrorCode.Malformed, "transcript: at most 2000 characters of valid text");
            }
            if (r.Mode != null && !Protocol.IsValidMode(r.Mode))
                throw new ProtocolException(ErrorCode.Malformed, "mode must be live or line, got " + r.Mode);
            int n = 3 + (r.Stream != null ? 1 : 0) + (r.Transcript != null ? 1 : 0) + (r.Seed.HasValue ? 1 : 0) +
                    (r.Mode != null ? 1 : 0) + (r.Controls != null ? 1 : 0) + (r.Req.HasValue ? 1 : 0);
            var w = new MsgPackWriter();
            Header(w, "open_stream", n);
            if (r.Stream != null) { w.Str("stream"); w.Str(r.Stream); }
            w.Str("sample_rate"); w.UInt(r.SampleRate);
            w.Str("channels"); w.UInt(r.Channels);
            w.Str("format"); w.Str(r.Format);
            if (r.Transcript != null) { w.Str("transcript"); w.Str(r.Transcript); }
            if (r.Seed.HasValue) { w.Str("seed"); w.Int(r.Seed.Value); }
            if (r.Mode != null) { w.Str("mode"); w.Str(r.Mode); }
            if (r.Controls != null) { w.Str("controls"); WriteControls(w, r.Controls); }
            if (r.Req.HasValue) { w.Str("req"); w.UInt(r.Req.Value); }
            return Done(w);
        }

        // 1.2. Throws ProtocolException(BadControls) for a non-finite number (ranges and names are
        // the runtime's to check: it answers bad_controls, naming the setting).
        public static byte[] SetControls(string stream, Controls controls, ulong? req)
        {
            Protocol.RequireStreamId(stream);
            if (controls == null) throw new ArgumentNullException("controls");
            var w = new MsgPackWriter();
            Header(w, "set_controls", 2 + (req.HasValue ? 1 : 0));
            w.Str("stream"); w.Str(stream);
            w.Str("controls"); WriteControls(w, controls);
            if (req.HasValue) { w.Str("req"); w.UInt(req.Value); }
            return Done(w);
        }

        // Keys in the order of the runtime's Controls.to_dict (strength, shapes, smoothing_ms,
        // timing_offset_ms, mood, mood_intensity, style), entries in the caller's order, every
        // number as float64 (as msgpack-python packs a Python float).
        static void WriteControls(MsgPackWriter w, Controls c)
        {
            w.MapHeader((c.Strength != null ? 1 : 0) + (c.Shapes != null ? 1 : 0) + (c.SmoothingMs != null ? 1 : 0) +
                        (c.TimingOffsetMs.HasValue ? 1 : 0) + (c.Mood != null ? 1 : 0) +
                        (c.MoodIntensity.HasValue ? 1 : 0) + (c.Style != null ? 1 : 0));
            if (c.Strength != null) WriteRegions(w, "strength", c.Strength);
            if (c.Shapes != null)
            {
                w.Str("shapes");
                w.MapHeader(c.Shapes.Count);
                foreach (var kv in c.Shapes)
                {
                    w.Str(kv.Key);
                    ShapeControl s = kv.Value ?? new ShapeControl();
                    w.MapHeader((s.Gain.HasValue ? 1 : 0) + (s.Offset.HasValue ? 1 : 0) + (s.Min.HasValue ? 1 : 0) +
                                (s.Max.HasValue ? 1 : 0));
                    string at = "shapes." + kv.Key + ".";
                    if (s.Gain.HasValue) { w.Str("gain"); w.Float64(Finite(s.Gain.Value, at + "gain")); }
                    if (s.Offset.HasValue) { w.Str("offset"); w.Float64(Finite(s.Offset.Value, at + "offset")); }
                    if (s.Min.HasValue) { w.Str("min"); w.Float64(Finite(s.Min.Value, at + "min")); }
                    if (s.Max.HasValue) { w.Str("max"); w.Float64(Finite(s.Max.Value, at + "max")); }
                }
            }
            if (c.SmoothingMs != null) WriteRegions(w, "smoothing_ms", c.SmoothingMs);
            if (c.TimingOffsetMs.HasValue)
            {
                w.Str("timing_offset_ms");
                w.Float64(Finite(c.TimingOffsetMs.Value, "timing_offset_ms"));
            }
            if (c.Mood != null) { w.Str("mood"); w.Str(c.Mood); } // 1.3
            if (c.MoodIntensity.HasValue)
            {
                w.Str("mood_intensity");
                w.Float64(Finite(c.MoodIntensity.Value, "mood_intensity"));
            }
            if (c.Style != null) { w.Str("style"); w.Str(c.Style); } // 1.4
        }

        static void WriteRegions(MsgPackWriter w, string key, List<KeyValuePair<string, double>> values)
        {
            w.Str(key);
            w.MapHeader(values.Count);
            foreach (var kv in values)
            {
                w.Str(kv.Key);
                w.Float64(Finite(kv.Value, key + "." + kv.Key));
            }
        }

        static double Finite(double x, string name)
        {
            if (double.IsNaN(x) || double.IsInfinity(x))
                throw new ProtocolException(ErrorCode.BadControls, name + " must be a finite number");
            return x;
        }

        // `pcm[offset .. offset+count)`: interleaved samples in the stream's format.
        public static byte[] Audio(string stream, ulong seq, ulong? atSample, byte[] pcm, int offset, int count)
        {
            Protocol.RequireStreamId(stream);
            var w = new MsgPackWriter(64 + count);
            Header(w, "audio", 3 + (atSample.HasValue ? 1 : 0));
            w.Str("stream"); w.Str(stream);
            w.Str("seq"); w.UInt(seq);
            if (atSample.HasValue) { w.Str("at_sample"); w.UInt(atSample.Value); }
            w.Str("pcm"); w.Bin(pcm, offset, count);
            return Done(w);
        }

        public static byte[] Audio(Audio a)
        {
            return Audio(a.Stream, a.Seq, a.AtSample, a.Pcm, 0, a.Pcm.Length);
        }

        public static byte[] EndStream(string stream, ulong? req)
        {
            Protocol.RequireStreamId(stream);
            var w = new MsgPackWriter();
            Header(w, "end_stream", 1 + (req.HasValue ? 1 : 0));
            w.Str("stream"); w.Str(stream);
            if (req.HasValue) { w.Str("req"); w.UInt(req.Value); }
            return Done(w);
        }

        static void Header(MsgPackWriter w, string type, int fields)
        {
            w.MapHeader(2 + fields);
            w.Str("v");
            w.ArrayHeader(2);
            w.UInt(Protocol.Major);
            w.UInt(Protocol.Minor);
            w.Str("type");
            w.Str(type);
        }

        static byte[] Done(MsgPackWriter w)
        {
            if (w.Length > Protocol.MaxMessageBytes)
                throw new ProtocolException(ErrorCode.TooLarge,
                    "request of " + w.Length + " bytes exceeds " + Protocol.MaxMessageBytes);
            return w.ToArray();
        }
    }

    // A growable msgpack writer; every integer in its smallest form (as msgpack-python packs).
    public sealed class MsgPackWriter
    {
        byte[] _buf;
        int _len;

        public MsgPackWriter(int capacity = 128)
        {
            _buf = new byte[Math.Max(16, capacity)];
        }

        public int Length { get { return _len; } }

        public byte[] ToArray()
        {
            var out_ = new byte[_len];
            Buffer.BlockCopy(_buf, 0, out_, 0, _len);
            return out_;
        }

        public void Nil() { Byte(0xc0); }
        public void Bool(bool v) { Byte(v ? (byte)0xc3 : (byte)0xc2); }

        public void UInt(ulong v)
        {
            if (v <= 0x7f) Byte((byte)v);
            else if (v <= byte.MaxValue) { Byte(0xcc); BigEndian(v, 1); }
            else if (v <= ushort.MaxValue) { Byte(0xcd); BigEndian(v, 2); }
            else if (v <= uint.MaxValue) { Byte(0xce); BigEndian(v, 4); }
            else { Byte(0xcf); BigEndian(v, 8); }
        }

        public void Int(long v)
        {
            if (v >= 0) { UInt((ulong)v); return; }
            if (v >= -32) Byte(unchecked((byte)(sbyte)v));
            else if (v >= sbyte.MinValue) { Byte(0xd0); BigEndian(unchecked((ulong)v), 1); }
            else if (v >= short.MinValue) { Byte(0xd1); BigEndian(unchecked((ulong)v), 2); }
            else if (v >= int.MinValue) { Byte(0xd2); BigEndian(unchecked((ulong)v), 4); }
            else { Byte(0xd3); BigEndian(unchecked((ulong)v), 8); }
        }

        public void Float32(float v) { Byte(0xca); BigEndian(FloatBits.ToBits(v), 4); }
        public void Float64(double v) { Byte(0xcb); BigEndian(unchecked((ulong)BitConverter.DoubleToInt64Bits(v)), 8); }

        public void Str(string s)
        {
            byte[] utf8 = Encoding.UTF8.GetBytes(s);
            int n = utf8.Length;
            if (n < 32) Byte((byte)(0xa0 | n));
            else if (n <= byte.MaxValue) { Byte(0xd9); BigEndian((ulong)n, 1); }
            else if (n <= ushort.MaxValue) { Byte(0xda); BigEndian((ulong)n, 2); }
            else { Byte(0xdb); BigEndian((ulong)n, 4); }
            Raw(utf8, 0, n);
        }

        public void Bin(byte[] data, int offset, int count)
        {
            if (count <= byte.MaxValue) { Byte(0xc4); BigEndian((ulong)count, 1); }
            else if (count <= ushort.MaxValue) { Byte(0xc5); BigEndian((ulong)count, 2); }
            else { Byte(0xc6); BigEndian((ulong)count, 4); }
            Raw(data, offset, count);
        }

        public void ArrayHeader(int n)
        {
            if (n < 16) Byte((byte)(0x90 | n));
            else if (n <= ushort.MaxValue) { Byte(0xdc); BigEndian((ulong)n, 2); }
            else { Byte(0xdd); BigEndian((ulong)n, 4); }
        }

        public void MapHeader(int n)
        {
            if (n < 16) Byte((byte)(0x80 | n));
            else if (n <= ushort.MaxValue) { Byte(0xde); BigEndian((ulong)n, 2); }
            else { Byte(0xdf); BigEndian((ulong)n, 4); }
        }

        // Bytes written as they are: a pre-encoded value.
        public void Raw(byte[] data, int offset, int count)
        {
            Reserve(count);
            Buffer.BlockCopy(data, offset, _buf, _len, count);
            _len += count;
        }

        void Byte(byte b)
        {
            Reserve(1);
            _buf[_len++] = b;
        }

        void BigEndian(ulong v, int bytes)
        {
            Reserve(bytes);
            for (int i = bytes - 1; i >= 0; i--)
            {
                _buf[_len++] = (byte)(v >> (8 * i));
            }
        }

        void Reserve(int n)
        {
            if (_len + n <= _buf.Length) return;
            int size = _buf.Length;
            while (size < _len + n) size *= 2;
            Array.Resize(ref _buf, size);
        }
    }
}
