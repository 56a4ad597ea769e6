// One payload -> its validated message (SPEC 3 and 4), with the error codes the SPEC gives.
//
// The checks mirror the reference decoder (sdk_python/ksdiff_sdk/protocol.py) field by field and
// in the same order, so a message gets the same error code from both:
//   too_large            the payload is over 1 MiB (checked first);
//   malformed            not exactly one valid msgpack value (truncated, trailing bytes, a str that
//                        is not UTF-8, a map key that is not a string), not a map, bad or missing
//                        v/type, a known field missing or of the wrong type (always, since 1.1),
//                        a bad stream id (".." and "." included, since 1.1);
//   unsupported_version  major != 1 (any minor is read: a newer minor only adds keys and types);
//   unknown_type         a type protocol 1 does not define (a client ignores those);
//   bad_audio            open_stream's sample_rate/channels/format of the right type, out of range.
// (1.2: a mode other than live/line, or controls that are not a map with string keys, are
// malformed; what the controls say, the mood of 1.3 and the style of 1.4 included, is the
// runtime's to judge.)
//
// Frames, the hot path, decode without allocating: the decoder fills one Frame it owns, and
// stream ids are interned (a stream id seen before costs no new string).
using System;
using System.Collections.Generic;
using System.Text;

namespace Ksdiff
{
    public sealed class Decoder
    {
        readonly MsgPackReader _r = new MsgPackReader();
        readonly MapIndex _root = new MapIndex();
        readonly MapIndex _nested = new MapIndex();
        readonly Frame _frame = new Frame();
        readonly StreamIdCache _ids = new StreamIdCache(64);
        string _context = ""; // the message type, for error messages
        MapIndex _current;     // the map whose fields are being read: _root, or a stats entry

        // Decodes `data[offset .. offset+count)`. A Frame result is the decoder's own instance,
        // overwritten by the next Decode: CopyTo/Clone it to keep it. Other messages are new
        // objects. Throws ProtocolException with the SPEC's code.
        public Message Decode(byte[] data, int offset, int count)
        {
            if (count > Protocol.MaxMessageBytes)
                throw new ProtocolException(ErrorCode.TooLarge,
                    "message of " + count + " bytes exceeds " + Protocol.MaxMessageBytes);
            _r.Reset(data, offset, count);
            _context = "message";
            _current = _root;

            // 1. One complete, valid msgpack value and nothing after it (msgpack-python's
            //    unpackb refuses anything else before the fields are looked at).
            bool isMap = _r.PeekKind() == MsgPackKind.Map;
            if (isMap) _root.Load(_r);
            else _r.Skip();
            if (_r.Position != _r.End)
                throw new ProtocolException(ErrorCode.Malformed,
                    "not one valid msgpack value: " + (_r.End - _r.Position) + " trailing bytes");
            if (!isMap) throw new ProtocolException(ErrorCode.Malformed, "a message must be a msgpack map");

            // 2. Version, then type.
            int major, minor;
            ReadVersion(out major, out minor);
            if (major != Protocol.Major)
                throw new ProtocolException(ErrorCode.UnsupportedVersion,
                    "protocol major " + major + " not supported (this client speaks " + Protocol.Major + ")");
            int typePos = _root.Find(Keys.Type);
            if (typePos < 0 || !IsStr(typePos)) throw new ProtocolException(ErrorCode.Malformed, "field 'type' must be a string");
            int typeOffset, typeLength;
            _r.Position = typePos;
            _r.ReadStr(out typeOffset, out typeLength);

            // 3. The type's fields.
            Message m = DecodeBody(data, typeOffset, typeLength);
            m.Major = major;
            m.Minor = minor;
            return m;
        }

        public Message Decode(byte[] data)
        {
            return Decode(data, 0, data.Length);
        }

        Message DecodeBody(byte[] data, int typeOffset, int typeLength)
        {
            if (Keys.Frame.Is(data, typeOffset, typeLength)) return DecodeFrame();
            if (Keys.Hello.Is(data, typeOffset, typeLength)) return DecodeHello();
            if (Keys.StreamStart.Is(data, typeOffset, typeLength)) return DecodeStreamStart();
            if (Keys.StreamEnd.Is(data, typeOffset, typeLength)) return DecodeStreamEnd();
            if (Keys.Stats.Is(data, typeOffset, typeLength)) return DecodeStats();
            if (Keys.OpenStream.Is(data, typeOffset, typeLength)) return DecodeOpenStream();
            if (Keys.Audio.Is(data, typeOffset, typeLength)) return DecodeAudio();
            if (Keys.EndStream.Is(data, typeOffset, typeLength)) return DecodeEndStream();
            if (Keys.SetControls.Is(data, typeOffset, typeLength)) return DecodeSetControls();
            if (Keys.ControlsSet.Is(data, typeOffset, typeLength)) return DecodeControlsSet();
            if (Keys.StreamOpened.Is(data, typeOffset, typeLength)) return DecodeStreamOpened();
            if (Keys.StreamEnded.Is(data, typeOffset, typeLength)) return DecodeStreamEnded();
            if (Keys.Error.Is(data, typeOffset, typeLength)) return DecodeError();
            throw new ProtocolException(ErrorCode.UnknownType,
                "unknown message type '" + Encoding.UTF8.GetString(data, typeOffset, typeLength) + "'");
        }

        void ReadVersion(out int major, out int minor)
        {
            major = minor = 0;
            int pos = _root.Find(Keys.V);
            bool ok = pos >= 0;
            if (ok)
            {
                _r.Position = pos;
                ok = _r.PeekKind() == MsgPackKind.Array && _r.ReadArrayHeader() == 2;
                for (int i = 0; ok && i < 2; i++)
                {
                    bool negative = true;
                    ok = _r.PeekKind() == MsgPackKind.Int;
                    ulong value = ok ? _r.ReadInteger(out negative) : 0;
                    ok = ok && !negative && value <= uint.MaxValue;
                    if (i == 0) major = (int)Math.Min(value, int.MaxValue);
                    else minor = (int)Math.Min(value, int.MaxValue);
                }
            }
            if (!ok) throw new ProtocolException(ErrorCode.Malformed, "field 'v' must be [major, minor] (two uints)");
        }

        // --- the types, fields in the reference decoder's order --------------------------------

        Frame DecodeFrame()
        {
            _context = "frame";
            Frame f = _frame;
            f.Stream = StreamId(Keys.Stream);
            f.Seq = UInt(Keys.Seq);
            f.Index = UInt(Keys.Index);
            f.Fps = (uint)UInt(Keys.Fps, 1, uint.MaxValue, ErrorCode.Malformed);
            f.TAudio = Number(Keys.TAudio);
            Blendshapes(Keys.Blendshapes, f.Blendshapes);
            Floats(Keys.Head, f.Head);
            Floats(Keys.Gaze, f.Gaze);
            f.CapturedNs = Int64OrNil(Keys.CapturedNs);
            f.PublishedNs = Int64(Keys.PublishedNs);
            f.LookaheadMs = ToFloat(Number(Keys.LookaheadMs));
            f.ComputeMs = ToFloat(Number(Keys.ComputeMs));
            f.Last = Bool(Keys.Last);
            return f;
        }

        Hello DecodeHello()
        {
            _context = "hello";
            var h = new Hello();
            // Every field is optional to the reader: a runtime hello has all of the schema
            // fields, a client's hello request none (checked below).
            string runtime = Has(Keys.Runtime) ? Str(Keys.Runtime, 200) : null;
            uint? fps = Has(Keys.Fps) ? (uint)UInt(Keys.Fps, 1, uint.MaxValue, ErrorCode.Malformed) : (uint?)null;
            uint? rate = Has(Keys.SampleRate) ? (uint)UInt(Keys.SampleRate, 1, uint.MaxValue, ErrorCode.Malformed) : (uint?)null;
            string[] blendshapes = Has(Keys.Blendshapes) ? StrArray(Keys.Blendshapes, Protocol.BlendshapeCount) : null;
            string[] head = Has(Keys.Head) ? StrArray(Keys.Head, 3) : null;
            string headUnits = Has(Keys.HeadUnits) ? Str(Keys.HeadUnits, 20) : null;
            string headConvention = Has(Keys.HeadConvention) ? Str(Keys.HeadConvention, 1000) : null;
            string[] gaze = Has(Keys.Gaze) ? StrArray(Keys.Gaze, 4) : null;
            string gazeUnits = Has(Keys.GazeUnits) ? Str(Keys.GazeUnits, 20) : null;
            string gazeConvention = Has(Keys.GazeConvention) ? Str(Keys.GazeConvention, 1000) : null;
            ulong? maxBytes = Has(Keys.MaxMessageBytes) ? UInt(Keys.MaxMessageBytes) : (ulong?)null;
            h.Instance = Has(Keys.Instance) ? Str(Keys.Instance, 64) : null;
            h.Req = OptionalUInt(Keys.Req);

            int present = 0;
            var missing = new List<string>();
            foreach (Key k in Keys.HelloRuntimeFields)
            {
                if (Has(k)) present++;
                else missing.Add(k.Name);
            }
            if (present == 0) return h; // a request: {v, type, req?}
            if (missing.Count > 0)
                throw new ProtocolException(ErrorCode.Malformed, "hello: runtime hello lacks " + string.Join(", ", missing.ToArray()));
            h.FromRuntime = true;
            h.Runtime = runtime;
            h.Fps = fps.Value;
            h.SampleRate = rate.Value;
            h.Blendshapes = blendshapes;
            h.Head = head;
            h.HeadUnits = headUnits;
            h.HeadConvention = headConvention;
            h.Gaze = gaze;
            h.GazeUnits = gazeUnits;
            h.GazeConvention = gazeConvention;
            h.MaxMessageBytes = maxBytes.Value;
            return h;
        }

        StreamStart DecodeStreamStart()
        {
            _context = "stream_start";
            var s = new StreamStart();
            s.Stream = StreamId(Keys.Stream);
            s.Source = OneOf(Keys.Source, Keys.Sources, ErrorCode.Malformed);
            s.PublishedNs = Int64(Keys.PublishedNs);
            s.Mode = Has(Keys.Mode) ? OneOf(Keys.Mode, Keys.Modes, ErrorCode.Malformed) : null; // 1.2
            s.LatencyMs = Has(Keys.LatencyMs) ? Number(Keys.LatencyMs) : (double?)null;       // 1.2
            return s;
        }

        StreamEnd DecodeStreamEnd()
        {
            _context = "stream_end";
            var s = new StreamEnd();
            s.Stream = StreamId(Keys.Stream);
            s.Source = OneOf(Keys.Source, Keys.Sources, ErrorCode.Malformed);
            s.Reason = OneOf(Keys.Reason, Keys.EndReasons, ErrorCode.Malformed);
            s.Frames = UInt(Keys.Frames);
            s.PublishedNs = Int64(Keys.PublishedNs);
            return s;
        }

        Stats DecodeStats()
        {
            _context = "stats";
            var s = new Stats();
            s.UptimeS = Number(Keys.UptimeS);
            int pos = Required(Keys.Streams);
            _r.Position = pos;
            if (_r.PeekKind() != MsgPackKind.Map) throw Bad(Keys.Streams, "a map of stream id -> map", ErrorCode.Malformed);
            int n = _r.ReadMapHeader();
            for (int i = 0; i < n; i++)
            {
                if (_r.PeekKind() != MsgPackKind.Str) throw new ProtocolException(ErrorCode.Malformed, "stats: 'streams' keys must be stream ids");
                int keyOffset, keyLength;
                _r.ReadStr(out keyOffset, out keyLength);
                if (!Protocol.IsValidStreamId(_r.Data, keyOffset, keyLength))
                    throw new ProtocolException(ErrorCode.Malformed, "stats: 'streams' keys must be stream ids");
                string sid = _ids.Get(_r.Data, keyOffset, keyLength);
                if (_r.PeekKind() != MsgPackKind.Map) throw new ProtocolException(ErrorCode.Malformed, "stats: streams." + sid + " must be a map");
                _nested.Load(_r);
                int next = _r.Position;
                s.Streams[sid] = DecodeStreamStats(sid);
                _r.Position = next;
            }
            s.Drops = UInt(Keys.Drops);
            s.PublishedNs = Int64(Keys.PublishedNs);
            // 1.1's optional top-level keys are checked when present, as the reference decoder does.
            if (Has(Keys.Refused)) s.Refused = CountMap(Keys.Refused);
            s.Capacity = OptionalUInt(Keys.Capacity);
            return s;
        }

        // stats.refused: a map of str -> uint (error code -> count). Codes this client does not
        // know are kept as they are: they are counts, not something to act on.
        Dictionary<string, ulong> CountMap(Key k)
        {
            int pos = Required(k);
            if (!IsKind(pos, MsgPackKind.Map)) throw Bad(k, "a map of str -> uint", ErrorCode.Malformed);
            int n = _r.ReadMapHeader();
            var counts = new Dictionary<string, ulong>();
            for (int i = 0; i < n; i++)
            {
                if (_r.PeekKind() != MsgPackKind.Str) throw Bad(k, "a map of str -> uint", ErrorCode.Malformed);
                string code = ReadString(_r.Position);
                bool negative = true;
                ulong count = _r.PeekKind() == MsgPackKind.Int ? _r.ReadInteger(out negative) : 0;
                if (negative) throw Bad(k, "a map of str -> uint", ErrorCode.Malformed);
                counts[code] = count;
            }
            return counts;
        }

        StreamStats DecodeStreamStats(string sid)
        {
            var st = new StreamStats();
            string saved = _context;
            _context = "stats: streams." + sid;
            _current = _nested;
            try
            {
                st.Fps = Number(Keys.Fps);
                st.LatencyP50Ms = Number(Keys.LatencyP50Ms);
                st.LatencyP95Ms = Number(Keys.LatencyP95Ms);
                st.Frames = UInt(Keys.Frames);
                st.Drops = UInt(Keys.Drops);
                // Optional keys readers must not require: kept when well-typed, ignored otherwise.
                int src = _nested.Find(Keys.Source);
                if (src >= 0 && IsStr(src)) st.Source = ReadString(src);
                int san = _nested.Find(Keys.Sanitized);
                if (san >= 0 && IsUInt(san)) { _r.Position = san; bool neg; st.Sanitized = _r.ReadInteger(out neg); }
                int shed = _nested.Find(Keys.Shed);
                if (shed >= 0 && IsUInt(shed)) { _r.Position = shed; bool neg; st.Shed = _r.ReadInteger(out neg); }
            }
            finally
            {
                _current = _root;
                _context = saved;
            }
            return st;
        }

        OpenStream DecodeOpenStream()
        {
            _context = "open_stream";
            var o = new OpenStream();
            o.Stream = Has(Keys.Stream) ? StreamId(Keys.Stream) : null;
            // Out-of-range audio parameters are bad_audio; ill-typed ones malformed (SPEC 3.2, 4.6).
            o.SampleRate = (uint)UInt(Keys.SampleRate, Protocol.MinSampleRate, Protocol.MaxSampleRate, ErrorCode.BadAudio);
            o.Channels = (uint)UInt(Keys.Channels, 1, Protocol.MaxChannels, ErrorCode.BadAudio);
            o.Format = OneOf(Keys.Format, Keys.Formats, ErrorCode.BadAudio);
            o.Transcript = Has(Keys.Transcript) ? Str(Keys.Transcript, Protocol.MaxTranscriptChars) : null;
            o.Seed = Has(Keys.Seed) ? Int64(Keys.Seed) : (long?)null;
            o.Mode = Has(Keys.Mode) ? OneOf(Keys.Mode, Keys.Modes, ErrorCode.Malformed) : null; // 1.2
            o.Controls = Has(Keys.Controls) ? ControlsField(Keys.Controls) : null;              // 1.2
            o.Req = OptionalUInt(Keys.Req);
            return o;
        }

        Audio DecodeAudio()
        {
            _context = "audio";
            var a = new Audio();
            a.Stream = StreamId(Keys.Stream);
            a.Seq = UInt(Keys.Seq);
            a.AtSample = OptionalUInt(Keys.AtSample);
            int pos = Required(Keys.Pcm);
            if (!IsKind(pos, MsgPackKind.Bin)) throw Bad(Keys.Pcm, "bin", ErrorCode.Malformed);
            _r.Position = pos;
            int offset, length;
            _r.ReadBin(out offset, out length);
            a.Pcm = new byte[length];
            Buffer.BlockCopy(_r.Data, offset, a.Pcm, 0, length);
            return a;
        }

        EndStream DecodeEndStream()
        {
            _context = "end_stream";
            var e = new EndStream();
            e.Stream = StreamId(Keys.Stream);
            e.Req = OptionalUInt(Keys.Req);
            return e;
        }

        StreamOpened DecodeStreamOpened()
        {
            _context = "stream_opened";
            var s = new StreamOpened();
            s.Stream = StreamId(Keys.Stream);
            s.Fps = (uint)UInt(Keys.Fps, 1, uint.MaxValue, ErrorCode.Malformed);
            s.MaxAheadS = Has(Keys.MaxAheadS) ? Number(Keys.MaxAheadS) : (double?)null; // 1.1
            s.Mode = Has(Keys.Mode) ? OneOf(Keys.Mode, Keys.Modes, ErrorCode.Malformed) : null; // 1.2
            s.LatencyMs = Has(Keys.LatencyMs) ? Number(Keys.LatencyMs) : (double?)null;       // 1.2
            s.Req = OptionalUInt(Keys.Req);
            return s;
        }

        StreamEnded DecodeStreamEnded()
        {
            _context = "stream_ended";
            var s = new StreamEnded();
            s.Stream = StreamId(Keys.Stream);
            s.Frames = UInt(Keys.Frames);
            s.Req = OptionalUInt(Keys.Req);
            return s;
        }

        ErrorReply DecodeError()
        {
            _context = "error";
            var e = new ErrorReply();
            // Any code string decodes: a newer runtime may add codes (ErrorCode maps them to Internal).
            e.Code = Str(Keys.Code, 64);
            e.Message = Str(Keys.MessageKey, 1000);
            int pos = Required(Keys.RequestType);
            if (IsKind(pos, MsgPackKind.Nil)) e.RequestType = null;
            else if (IsStr(pos)) e.RequestType = ReadString(pos);
            else throw Bad(Keys.RequestType, "a string or nil", ErrorCode.Malformed);
            e.Stream = Has(Keys.Stream) ? StreamId(Keys.Stream) : null;
            e.Req = OptionalUInt(Keys.Req);
            return e;
        }

        SetControls DecodeSetControls()
        {
            _context = "set_controls";
            var s = new SetControls();
            s.Stream = StreamId(Keys.Stream);
            s.Controls = ControlsField(Keys.Controls);
            s.Req = OptionalUInt(Keys.Req);
            return s;
        }

        ControlsSet DecodeControlsSet()
        {
            _context = "controls_set";
            var s = new ControlsSet();
            s.Stream = StreamId(Keys.Stream);
            s.Controls = ControlsField(Keys.Controls);
            s.Req = OptionalUInt(Keys.Req);
            return s;
        }

        // --- artists' controls (1.2; mood 1.3; style 1.4): a map with string keys; well-typed kept -

        Controls ControlsField(Key k)
        {
            int pos = Required(k);
            _r.Position = pos;
            if (_r.PeekKind() != MsgPackKind.Map) throw Bad(k, "a map with str keys", ErrorCode.Malformed);
            int n = _r.ReadMapHeader();
            var c = new Controls();
            for (int i = 0; i < n; i++)
            {
                if (_r.PeekKind() != MsgPackKind.Str) throw Bad(k, "a map with str keys", ErrorCode.Malformed);
                string key = ReadString(_r.Position);
                int value = _r.Position;
                _r.Skip();
                int next = _r.Position;
                double number;
                if (key == "strength") c.Strength = NamedNumbers(value);
                else if (key == "shapes") c.Shapes = NamedShapes(value);
                else if (key == "smoothing_ms") c.SmoothingMs = NamedNumbers(value);
                else if (key == "timing_offset_ms") c.TimingOffsetMs = TryNumberAt(value, out number) ? number : (double?)null;
                else if (key == "mood") c.Mood = IsStr(value) ? ReadString(value) : null; // 1.3
                else if (key == "mood_intensity") c.MoodIntensity = TryNumberAt(value, out number) ? number : (double?)null;
                else if (key == "style") c.Style = IsStr(value) ? ReadString(value) : null; // 1.4
                _r.Position = next;
            }
            return c;
        }

        // The entries of the map at `pos` whose key is a string: (key, value position); null if
        // it is not a map. Leaves the reader anywhere.
        List<KeyValuePair<string, int>> Entries(int pos)
        {
            if (!IsKind(pos, MsgPackKind.Map)) return null;
            int n = _r.ReadMapHeader();
            var entries = new List<KeyValuePair<string, int>>(n);
            for (int i = 0; i < n; i++)
            {
                string key = _r.PeekKind() == MsgPackKind.Str ? ReadString(_r.Position) : null;
                if (key == null) _r.Skip();
                int value = _r.Position;
                _r.Skip();
                if (key == null) continue;
                entries.RemoveAll(e => e.Key == key); // a repeated key: the last one wins
                entries.Add(new KeyValuePair<string, int>(key, value));
            }
            return entries;
        }

        List<KeyValuePair<string, double>> NamedNumbers(int pos)
        {
            var entries = Entries(pos);
            if (entries == null) return null;
            var out_ = new List<KeyValuePair<string, double>>(entries.Count);
            foreach (var e in entries)
            {
                double v;
                if (TryNumberAt(e.Value, out v)) out_.Add(new KeyValuePair<string, double>(e.Key, v));
            }
            return out_;
        }

        List<KeyValuePair<string, ShapeControl>> NamedShapes(int pos)
        {
            var entries = Entries(pos);
            if (entries == null) return null;
            var out_ = new List<KeyValuePair<string, ShapeControl>>(entries.Count);
            foreach (var e in entries)
            {
                var fields = Entries(e.Value);
                if (fields == null) continue;
                var s = new ShapeControl();
                foreach (var f in fields)
                {
                    double v;
                    if (!TryNumberAt(f.Value, out v)) continue;
                    if (f.Key == "gain") s.Gain = v;
                    else if (f.Key == "offset") s.Offset = v;
                    else if (f.Key == "min") s.Min = v;
                    else if (f.Key == "max") s.Max = v;
                }
                out_.Add(new KeyValuePair<string, ShapeControl>(e.Key, s));
            }
            return out_;
        }

        // --- typed field readers: each names the field in its error, with the SPEC's code ------

        bool Has(Key k) { return _current.Find(k) >= 0; }

        int Required(Key k)
        {
            int pos = _current.Find(k);
            if (pos < 0) throw new ProtocolException(ErrorCode.Malformed, _context + ": field '" + k.Name + "' missing");
            return pos;
        }

        bool IsKind(int pos, MsgPackKind kind)
        {
            _r.Position = pos;
            return _r.PeekKind() == kind;
        }

        bool IsStr(int pos) { return IsKind(pos, MsgPackKind.Str); }

        bool IsUInt(int pos)
        {
            if (!IsKind(pos, MsgPackKind.Int)) return false;
            bool negative;
            _r.ReadInteger(out negative);
            return !negative;
        }

        ulong UInt(Key k)
        {
            return UInt(k, 0, ulong.MaxValue, ErrorCode.Malformed);
        }

        // `code` is for an integer out of [lo, hi] (a negative one included); anything that is not
        // an integer at all is malformed (SPEC 3.2, since 1.1: a wrong type is always malformed).
        ulong UInt(Key k, ulong lo, ulong hi, ErrorCode code)
        {
            int pos = Required(k);
            // (the messages are built only on failure: frames decode without allocating)
            if (!IsKind(pos, MsgPackKind.Int)) throw Bad(k, "an integer in [" + lo + ", " + hi + "]", ErrorCode.Malformed);
            bool negative;
            ulong value = _r.ReadInteger(out negative);
            if (negative || value < lo || value > hi) throw Bad(k, "an integer in [" + lo + ", " + hi + "]", code);
            return value;
        }

        ulong? OptionalUInt(Key k)
        {
            return Has(k) ? UInt(k) : (ulong?)null;
        }

        long Int64(Key k)
        {
            int pos = Required(k);
            return ReadInt64At(pos, k);
        }

        long? Int64OrNil(Key k)
        {
            int pos = Required(k);
            if (IsKind(pos, MsgPackKind.Nil)) return null;
            return ReadInt64At(pos, k);
        }

        long ReadInt64At(int pos, Key k)
        {
            if (!IsKind(pos, MsgPackKind.Int)) throw Bad(k, "an int64", ErrorCode.Malformed);
            bool negative;
            ulong bits = _r.ReadInteger(out negative);
            if (!negative && bits > long.MaxValue) throw Bad(k, "an int64", ErrorCode.Malformed);
            return unchecked((long)bits);
        }

        // A finite number: float32, float64 or any integer (SPEC 3.1).
        double Number(Key k)
        {
            int pos = Required(k);
            double v;
            if (!TryNumberAt(pos, out v)) throw Bad(k, "a finite number", ErrorCode.Malformed);
            return v;
        }

        bool TryNumberAt(int pos, out double value)
        {
            _r.Position = pos;
            MsgPackKind kind = _r.PeekKind();
            if (kind == MsgPackKind.Int)
            {
                bool negative;
                ulong bits = _r.ReadInteger(out negative);
                value = negative ? unchecked((long)bits) : (double)bits;
                return true;
            }
            if (kind == MsgPackKind.Float32 || kind == MsgPackKind.Float64)
            {
                value = _r.ReadFloat();
                return !double.IsNaN(value) && !double.IsInfinity(value);
            }
            value = 0;
            return false;
        }

        // An array of exactly `into.Length` finite numbers, kept as float (float64 values beyond
        // float32's range saturate, so the result stays finite).
        void Floats(Key k, float[] into)
        {
            int pos = Required(k);
            bool ok = IsKind(pos, MsgPackKind.Array) && _r.ReadArrayHeader() == into.Length;
            for (int i = 0; ok && i < into.Length; i++)
            {
                double v;
                ok = TryNumberAt(_r.Position, out v);
                into[i] = ToFloat(v);
            }
            if (!ok) throw Bad(k, "an array of " + into.Length + " finite numbers", ErrorCode.Malformed);
        }

        bool Bool(Key k)
        {
            int pos = Required(k);
            if (!IsKind(pos, MsgPackKind.Bool)) throw Bad(k, "a bool", ErrorCode.Malformed);
            return _r.ReadBool();
        }

        string Str(Key k, int maxChars)
        {
            int pos = Required(k);
            if (!IsStr(pos)) throw Bad(k, "a string of at most " + maxChars + " chars", ErrorCode.Malformed);
            _r.Position = pos;
            int offset, length;
            _r.ReadStr(out offset, out length);
            if (Utf8.CodePointCount(_r.Data, offset, length) > maxChars)
                throw Bad(k, "a string of at most " + maxChars + " chars", ErrorCode.Malformed);
            return Encoding.UTF8.GetString(_r.Data, offset, length);
        }

        string ReadString(int pos)
        {
            _r.Position = pos;
            int offset, length;
            _r.ReadStr(out offset, out length);
            return Encoding.UTF8.GetString(_r.Data, offset, length);
        }

        string[] StrArray(Key k, int n)
        {
            int pos = Required(k);
            bool ok = IsKind(pos, MsgPackKind.Array) && _r.ReadArrayHeader() == n;
            var items = ok ? new string[n] : null;
            for (int i = 0; ok && i < n; i++)
            {
                ok = _r.PeekKind() == MsgPackKind.Str;
                if (ok) items[i] = ReadString(_r.Position);
            }
            if (!ok) throw Bad(k, "an array of " + n + " strings", ErrorCode.Malformed);
            return items;
        }

        // One of `options` (returning the option's own string: nothing allocated). `code` is for a
        // string that is none of them; a value that is not a string is malformed.
        string OneOf(Key k, Key[] options, ErrorCode code)
        {
            int pos = Required(k);
            bool isStr = IsStr(pos);
            if (isStr)
            {
                _r.Position = pos;
                int offset, length;
                _r.ReadStr(out offset, out length);
                foreach (Key option in options)
                {
                    if (option.Is(_r.Data, offset, length)) return option.Name;
                }
            }
            var names = new string[options.Length];
            for (int i = 0; i < options.Length; i++) names[i] = options[i].Name;
            throw Bad(k, "one of " + string.Join(", ", names), isStr ? code : ErrorCode.Malformed);
        }

        string StreamId(Key k)
        {
            int pos = Required(k);
            if (IsStr(pos))
            {
                _r.Position = pos;
                int offset, length;
                _r.ReadStr(out offset, out length);
                if (Protocol.IsValidStreamId(_r.Data, offset, length)) return _ids.Get(_r.Data, offset, length);
            }
            throw new ProtocolException(ErrorCode.Malformed,
                _context + ": bad stream id in '" + k.Name + "': need 1..64 chars of [A-Za-z0-9_.-], not '.' or '..'");
        }

        // 52 little-endian float32 in a 208-byte bin, all finite.
        void Blendshapes(Key k, float[] into)
        {
            int pos = Required(k);
            if (!IsKind(pos, MsgPackKind.Bin)) throw Bad(k, "bin of 208 bytes (52 little-endian float32)", ErrorCode.Malformed);
            int offset, length;
            _r.ReadBin(out offset, out length);
            if (length != Protocol.BlendshapeBytes) throw Bad(k, "bin of 208 bytes (52 little-endian float32)", ErrorCode.Malformed);
            if (!DecodeBlendshapes(_r.Data, offset, into)) throw Bad(k, "52 finite float32", ErrorCode.Malformed);
        }

        // 208 bytes of little-endian float32 -> 52 floats, on any host byte order: the bytes are
        // assembled into an integer value, then reinterpreted. False if any is NaN or infinite.
        public static bool DecodeBlendshapes(byte[] b, int offset, float[] into)
        {
            bool finite = true;
            for (int i = 0; i < Protocol.BlendshapeCount; i++)
            {
                int p = offset + 4 * i;
                uint bits = (uint)(b[p] | (b[p + 1] << 8) | (b[p + 2] << 16) | (b[p + 3] << 24));
                float v = FloatBits.ToSingle(bits);
                finite &= !float.IsNaN(v) && !float.IsInfinity(v);
                into[i] = v;
            }
            return finite;
        }

        static float ToFloat(double v)
        {
            if (v > float.MaxValue) return float.MaxValue;
            if (v < -float.MaxValue) return -float.MaxValue;
            return (float)v;
        }

        ProtocolException Bad(Key k, string want, ErrorCode code)
        {
            return new ProtocolException(code, _context + ": field '" + k.Name + "' must be " + want);
        }
    }

    // A key name with its ASCII bytes, compared against the payload without making a string.
    public sealed class Key
    {
        public readonly string Name;
        readonly byte[] _bytes;

        public Key(string name)
        {
            Name = name;
            _bytes = Encoding.ASCII.GetBytes(name);
        }

        public bool Is(byte[] data, int offset, int length)
        {
            if (length != _bytes.Length) return false;
            for (int i = 0; i < length; i++)
            {
                if (data[offset + i] != _bytes[i]) return false;
            }
            return true;
        }
    }

    static class Keys
    {
        public static readonly Key V = new Key("v"), Type = new Key("type");
        // message types
        public static readonly Key Hello = new Key("hello"), Frame = new Key("frame"),
            StreamStart = new Key("stream_start"), StreamEnd = new Key("stream_end"), Stats = new Key("stats"),
            OpenStream = new Key("open_stream"), Audio = new Key("audio"), EndStream = new Key("end_stream"),
            StreamOpened = new Key("stream_opened"), StreamEnded = new Key("stream_ended"), Error = new Key("error"),
            SetControls = new Key("set_controls"), ControlsSet = new Key("controls_set");
        // fields
        public static readonly Key Stream = new Key("stream"), Seq = new Key("seq"), Index = new Key("index"),
            Fps = new Key("fps"), TAudio = new Key("t_audio"), Blendshapes = new Key("blendshapes"),
            Head = new Key("head"), Gaze = new Key("gaze"), CapturedNs = new Key("captured_ns"),
            PublishedNs = new Key("published_ns"), LookaheadMs = new Key("lookahead_ms"),
            ComputeMs = new Key("compute_ms"), Last = new Key("last"), Runtime = new Key("runtime"),
            SampleRate = new Key("sample_rate"), HeadUnits = new Key("head_units"),
            HeadConvention = new Key("head_convention"), GazeUnits = new Key("gaze_units"),
            GazeConvention = new Key("gaze_convention"), MaxMessageBytes = new Key("max_message_bytes"),
            Instance = new Key("instance"), Req = new Key("req"), Source = new Key("source"),
            Reason = new Key("reason"), Frames = new Key("frames"), UptimeS = new Key("uptime_s"),
            Streams = new Key("streams"), Drops = new Key("drops"), LatencyP50Ms = new Key("latency_p50_ms"),
            LatencyP95Ms = new Key("latency_p95_ms"), Sanitized = new Key("sanitized"), Shed = new Key("shed"),
            Refused = new Key("refused"), Capacity = new Key("capacity"), MaxAheadS = new Key("max_ahead_s"),
            Channels = new Key("channels"), Format = new Key("format"), Transcript = new Key("transcript"),
            Seed = new Key("seed"), AtSample = new Key("at_sample"), Pcm = new Key("pcm"), Code = new Key("code"),
            MessageKey = new Key("message"), RequestType = new Key("request_type"), Mode = new Key("mode"),
            LatencyMs = new Key("latency_ms"), Controls = new Key("controls");

        public static readonly Key[] Sources = { new Key("mic"), new Key("file"), new Key("sdk") };
        public static readonly Key[] EndReasons = { new Key("ended"), new Key("timeout"), new Key("error"), new Key("shutdown") };
        public static readonly Key[] Formats = { new Key("f32le"), new Key("s16le") };
        public static readonly Key[] Modes = { new Key(Protocol.ModeLive), new Key(Protocol.ModeLine) };

        // A runtime hello has all of these; a client's hello request none (instance and req aside).
        public static readonly Key[] HelloRuntimeFields =
        {
            Runtime, Fps, SampleRate, Blendshapes, Head, HeadUnits, HeadConvention, Gaze, GazeUnits,
            GazeConvention, MaxMessageBytes,
        };
    }

    // The top-level entries of one msgpack map: where each string key's bytes and value lie.
    sealed class MapIndex
    {
        int[] _keyOffset = new int[32];
        int[] _keyLength = new int[32];
        int[] _value = new int[32];
        int _count;
        byte[] _data;

        // Reads the map at the reader's position, checking every key and value (see
        // MsgPackReader.Skip), and leaves the reader after it.
        public void Load(MsgPackReader r)
        {
            _data = r.Data;
            _count = 0;
            int n = r.ReadMapHeader();
            for (int i = 0; i < n; i++)
            {
                MsgPackKind key = r.PeekKind();
                int offset, length;
                if (key == MsgPackKind.Str)
                {
                    r.ReadStr(out offset, out length);
                    if (Utf8.CodePointCount(r.Data, offset, length) < 0)
                        throw new ProtocolException(ErrorCode.Malformed, "not one valid msgpack value: a key that is not UTF-8");
                    Add(offset, length, r.Position);
                }
                else if (key == MsgPackKind.Bin)
                {
                    r.ReadBin(out offset, out length); // a bytes key: never one of the protocol's
                }
                else
                {
                    throw new ProtocolException(ErrorCode.Malformed, "not one valid msgpack value: a map key that is not a string");
                }
                r.Skip();
            }
        }

        void Add(int keyOffset, int keyLength, int value)
        {
            if (_count == _value.Length)
            {
                Array.Resize(ref _keyOffset, 2 * _count);
                Array.Resize(ref _keyLength, 2 * _count);
                Array.Resize(ref _value, 2 * _count);
            }
            _keyOffset[_count] = keyOffset;
            _keyLength[_count] = keyLength;
            _value[_count] = value;
            _count++;
        }

        // The value position of `key`, or -1. A repeated key counts by its last occurrence, as
        // in the reference decoder's dict.
        public int Find(Key key)
        {
            for (int i = _count - 1; i >= 0; i--)
            {
                if (key.Is(_data, _keyOffset[i], _keyLength[i])) return _value[i];
            }
            return -1;
        }
    }

    // Stream ids as strings without a new string per message: the last `capacity` distinct ids
    // are kept and matched on their bytes.
    sealed class StreamIdCache
    {
        readonly byte[][] _bytes;
        readonly string[] _strings;
        int _count;
        int _next;

        public StreamIdCache(int capacity)
        {
            _bytes = new byte[capacity][];
            _strings = new string[capacity];
        }

        public string Get(byte[] data, int offset, int length)
        {
            for (int i = 0; i < _count; i++)
            {
                byte[] b = _bytes[i];
                if (b.Length != length) continue;
                int k = 0;
                while (k < length && b[k] == data[offset + k]) k++;
                if (k == length) return _strings[i];
            }
            var copy = new byte[length];
            Buffer.BlockCopy(data, offset, copy, 0, length);
            string s = Encoding.ASCII.GetString(copy);
            _bytes[_next] = copy;
            _strings[_next] = s;
            _next = (_next + 1) % _bytes.Length;
            if (_count < _bytes.Length) _count++;
            return s;
        }
    }
}
