// The decoding rules of SPEC 3 and 4 on hand-built payloads: any integer width, either float
// width, unknown keys ignored, every kind of bad input refused with its code, and the changes
// protocol 1.1 brings (forbidden, "." / ".." stream ids, type vs range codes, the new optional keys).
using System.Collections.Generic;
using NUnit.Framework;

namespace Ksdiff.Tests
{
    [TestFixture]
    public class DecoderTests
    {
        static Frame DecodeFrame(Payload p) { return (Frame)new Decoder().Decode(p.Build()); }

        [Test]
        public void IntegersOfAnyWidthAndFloatsOfEitherWidthDecode()
        {
            Frame f = DecodeFrame(Payload.Frame()
                .Set("seq", Payload.Raw(0xcf, 0, 0, 0, 0, 0, 0, 0, 7))      // uint64 form of 7
                .Set("index", Payload.Raw(0xd1, 0, 7))                         // int16 form, non-negative
                .Set("fps", Payload.Raw(0xce, 0, 0, 0, 60))                    // uint32 form
                .Set("t_audio", Payload.UInt(2))                               // an int where a float goes
                .Set("head", w => { w.ArrayHeader(3); w.Float64(0.5); w.Int(-1); w.Float32(0.25f); })
                .Set("captured_ns", Payload.Raw(0xcf, 0, 0, 0, 0, 0, 0, 0, 5))
                .Set("published_ns", Payload.Int(-9000000000L))
                .Set("lookahead_ms", Payload.Raw(0xcd, 0, 125))
                .Set("compute_ms", Payload.F64(2.5))
                // Unknown keys of any type are ignored (a newer minor adds keys).
                .Set("mood", Payload.Str("cheerful"))
                .Set("extra", w => { w.MapHeader(1); w.Str("x"); w.ArrayHeader(0); })
                .Set("ext", Payload.Raw(0xd4, 0x01, 0x05)));
            Assert.AreEqual(7UL, f.Seq);
            Assert.AreEqual(7UL, f.Index);
            Assert.AreEqual(60u, f.Fps);
            Assert.AreEqual(2.0, f.TAudio);
            Assert.AreEqual(new[] { 0.5f, -1f, 0.25f }, f.Head);
            Assert.AreEqual(5L, f.CapturedNs.Value);
            Assert.AreEqual(-9000000000L, f.PublishedNs);
            Assert.AreEqual(125f, f.LookaheadMs);
            Assert.AreEqual(2.5f, f.ComputeMs);
        }

        [Test]
        public void AFloat64BeyondFloat32RangeSaturates()
        {
            Frame f = DecodeFrame(Payload.Frame().Set("compute_ms", Payload.F64(1e300)));
            Assert.AreEqual(float.MaxValue, f.ComputeMs);
        }

        [Test]
        public void BlendshapeBytesAreLittleEndianWhateverTheHost()
        {
            var bytes = new byte[Protocol.BlendshapeBytes];
            bytes[2] = 0x80; bytes[3] = 0x3f;                  // 1.0f = 0x3F800000, low byte first
            bytes[4 * 51 + 2] = 0x20; bytes[4 * 51 + 3] = 0xc0; // -2.5f = 0xC0200000
            var values = new float[Protocol.BlendshapeCount];
            Assert.IsTrue(Decoder.DecodeBlendshapes(bytes, 0, values));
            Assert.AreEqual(1.0f, values[0]);
            Assert.AreEqual(0.0f, values[1]);
            Assert.AreEqual(-2.5f, values[51]);
        }

        [Test]
        public void IllTypedOrMissingFieldsAreMalformed()
        {
            var cases = new Dictionary<string, Payload>
            {
                { "float seq", Payload.Frame().Set("seq", Payload.F64(1.5)) },
                { "negative seq", Payload.Frame().Set("seq", Payload.Int(-1)) },
                { "bool as int", Payload.Frame().Set("seq", Payload.Bool(true)) },
                { "fps 0", Payload.Frame().Set("fps", Payload.UInt(0)) },
                { "fps above uint32", Payload.Frame().Set("fps", Payload.UInt(1UL << 32)) },
                { "NaN t_audio", Payload.Frame().Set("t_audio", Payload.F64(double.NaN)) },
                { "infinite compute_ms", Payload.Frame().Set("compute_ms", Payload.F32(float.PositiveInfinity)) },
                { "head of 2", Payload.Frame().Set("head", Payload.F32Array(0f, 0f)) },
                { "head with a string", Payload.Frame().Set("head", w => { w.ArrayHeader(3); w.Float32(0); w.Str("x"); w.Float32(0); }) },
                { "missing last", Payload.Frame().Remove("last") },
                { "last as int", Payload.Frame().Set("last", Payload.UInt(1)) },
                { "captured_ns above int64", Payload.Frame().Set("captured_ns", Payload.UInt(1UL << 63)) },
                { "str where bin goes", Payload.Frame().Set("blendshapes", Payload.Str(new string('a', 208))) },
                { "NaN blendshape", Payload.Frame().Set("blendshapes", Payload.BlendshapeBin(NaNAt(5))) },
                { "slash in stream", Payload.Frame().Set("stream", Payload.Str("npc/1")) },
                { "65-char stream", Payload.Frame().Set("stream", Payload.Str(new string('a', 65))) },
                { "empty stream", Payload.Frame().Set("stream", Payload.Str("")) },
                { "stream '.' (1.1)", Payload.Frame().Set("stream", Payload.Str(".")) },
                { "stream '..' (1.1)", Payload.Frame().Set("stream", Payload.Str("..")) },
                { "v of 3", Payload.Frame().Set("v", w => { w.ArrayHeader(3); w.UInt(1); w.UInt(0); w.UInt(0); }) },
                { "negative minor", Payload.Frame().Set("v", w => { w.ArrayHeader(2); w.UInt(1); w.Int(-1); }) },
                { "v as string", Payload.Frame().Set("v", Payload.Str("1.0")) },
                { "type as int", Payload.Frame().Set("type", Payload.UInt(3)) },
                { "type not UTF-8", Payload.Frame().Set("type", Payload.Raw(0xa5, (byte)'f', (byte)'r', (byte)'a', (byte)'m', 0xff)) },
                { "no type", Payload.Frame().Remove("type") },
            };
            foreach (var c in cases) Assert.AreEqual(ErrorCode.Malformed, Codes.Of(c.Value.Build()), c.Key);
        }

        static float[] NaNAt(int i)
        {
            var v = new float[Protocol.BlendshapeCount];
            v[i] = float.NaN;
            return v;
        }

        [Test]
        public void BrokenMsgpackIsMalformed()
        {
            Assert.AreEqual(ErrorCode.Malformed, Codes.Of(new byte[0]));                          // empty
            Assert.AreEqual(ErrorCode.Malformed, Codes.Of(new byte[] { 0xc1 }));                  // never-used byte
            Assert.AreEqual(ErrorCode.Malformed, Codes.Of(new byte[] { 0xdd, 0xff, 0xff, 0xff, 0xff })); // lying array header
            Assert.AreEqual(ErrorCode.Malformed, Codes.Of(new byte[] { 0x81, 0x01, 0x02 }));      // {1: 2}: key not a string
            Assert.AreEqual(ErrorCode.Malformed, Codes.Of(new byte[] { 0x91, 0x01 }));            // not a map
            // A str that is not UTF-8 in an unknown key's value is still broken msgpack (the
            // reference decoder refuses it before looking at the fields).
            Assert.AreEqual(ErrorCode.Malformed, Codes.Of(Payload.Frame().Set("mood", Payload.Raw(0xa2, 0xc0, 0xaf)).Build()));
            // ... and so is a non-string key in a nested unknown map.
            Assert.AreEqual(ErrorCode.Malformed, Codes.Of(Payload.Frame().Set("extra", Payload.Raw(0x81, 0x01, 0x02)).Build()));
            // Nesting past the limit.
            var deep = new List<byte>();
            for (int i = 0; i <= MsgPackReader.MaxDepth + 1; i++) deep.Add(0x91);
            deep.Add(0xc0);
            Assert.AreEqual(ErrorCode.Malformed, Codes.Of(Payload.Frame().Set("extra", Payload.Raw(deep.ToArray())).Build()));
            // Truncated anywhere: every prefix of a valid frame is refused as malformed.
            byte[] frame = Payload.Frame().Build();
            for (int n = 0; n < frame.Length; n++)
            {
                var prefix = new byte[n];
                System.Array.Copy(frame, prefix, n);
                Assert.AreEqual(ErrorCode.Malformed, Codes.Of(prefix), "prefix of " + n + " bytes");
            }
        }

        [Test]
        public void SizeIsCheckedFirst()
        {
            var big = new byte[Protocol.MaxMessageBytes + 1];
            for (int i = 0; i < big.Length; i++) big[i] = 0x80; // not even a valid message
            Assert.AreEqual(ErrorCode.TooLarge, Codes.Of(big));
        }

        [Test]
        public void VersionRules()
        {
            Assert.AreEqual(ErrorCode.UnsupportedVersion, Codes.Of(Payload.Frame().Set("v", Payload.Version(2, 0)).Build()));
            Assert.AreEqual(ErrorCode.UnsupportedVersion, Codes.Of(Payload.Frame().Set("v", Payload.Version(0, 9)).Build()));
            // The major is looked at before the type: a v2 message of any shape is unsupported.
            Assert.AreEqual(ErrorCode.UnsupportedVersion, Codes.Of(Payload.Of("frame").Set("v", Payload.Version(2, 0)).Remove("type").Build()));
            // Any minor of major 1 is read (1.0, this client's 1.1, a future 1.250).
            Assert.AreEqual(1, DecodeFrame(Payload.Frame().Set("v", Payload.Version(1, 1))).Minor);
            Assert.AreEqual(250, DecodeFrame(Payload.Frame().Set("v", Payload.Version(1, 250))).Minor);
            Assert.AreEqual(ErrorCode.UnknownType, Codes.Of(Payload.Of("mood_swing").Build()));
        }

        [Test]
        public void HelloRuntimeFormHasEveryFieldRequestFormNone()
        {
            Assert.AreEqual(ErrorCode.Malformed, Codes.Of(Payload.Of("hello").Set("runtime", Payload.Str("0.1.0")).Build()));
            var request = (Hello)new Decoder().Decode(Payload.Of("hello").Build());
            Assert.IsFalse(request.FromRuntime);
            Assert.IsNull(request.Instance);
            // instance is optional to a reader (protocol 1.1 always sends it) and at most 64 chars.
            Assert.AreEqual(ErrorCode.Malformed, Codes.Of(Payload.Of("hello").Set("instance", Payload.Str(new string('i', 65))).Build()));
        }

        [Test]
        public void OpenStreamValuesOutOfRangeAreBadAudioWrongTypesMalformed()
        {
            Payload ok = Payload.Of("open_stream").Set("sample_rate", Payload.UInt(48000)).Set("channels", Payload.UInt(2)).Set("format", Payload.Str("s16le"));
            Assert.AreEqual(48000u, ((OpenStream)new Decoder().Decode(ok.Build())).SampleRate);
            // Right type, out of range: bad_audio (a negative integer is an integer out of range).
            Assert.AreEqual(ErrorCode.BadAudio, Codes.Of(ok.Set("sample_rate", Payload.UInt(192001)).Build()));
            Assert.AreEqual(ErrorCode.BadAudio, Codes.Of(ok.Set("sample_rate", Payload.Int(-16000)).Build()));
            ok.Set("sample_rate", Payload.UInt(48000));
            Assert.AreEqual(ErrorCode.BadAudio, Codes.Of(ok.Set("channels", Payload.UInt(9)).Build()));
            Assert.AreEqual(ErrorCode.BadAudio, Codes.Of(ok.Set("channels", Payload.UInt(0)).Build()));
            ok.Set("channels", Payload.UInt(2));
            Assert.AreEqual(ErrorCode.BadAudio, Codes.Of(ok.Set("format", Payload.Str("mp3")).Build()));
            // Wrong type: malformed, whatever the value (1.1; golden invalid_sample_rate_type).
            Assert.AreEqual(ErrorCode.Malformed, Codes.Of(ok.Set("format", Payload.UInt(1)).Build()));
            ok.Set("format", Payload.Str("s16le"));
            Assert.AreEqual(ErrorCode.Malformed, Codes.Of(ok.Set("sample_rate", Payload.Str("48000")).Build()));
            Assert.AreEqual(ErrorCode.Malformed, Codes.Of(ok.Set("sample_rate", Payload.F64(48000.5)).Build()));
            Assert.AreEqual(ErrorCode.Malformed, Codes.Of(ok.Set("sample_rate", Payload.Bool(true)).Build()));
            Assert.AreEqual(ErrorCode.Malformed, Codes.Of(ok.Set("sample_rate", Payload.Nil()).Build()));
            ok.Set("sample_rate", Payload.UInt(48000));
            Assert.AreEqual(ErrorCode.Malformed, Codes.Of(ok.Set("channels", Payload.Str("2")).Build()));
            ok.Set("channels", Payload.UInt(2));
            // Fields are checked in the SPEC's order: a bad rate wins over a missing format.
            Assert.AreEqual(ErrorCode.BadAudio, Codes.Of(ok.Remove("format").Set("sample_rate", Payload.UInt(1)).Build()));
            Assert.AreEqual(ErrorCode.Malformed, Codes.Of(ok.Set("sample_rate", Payload.UInt(8000)).Build())); // format missing
            // Other uint fields have one code for both: a negative seq is malformed.
            Assert.AreEqual(ErrorCode.Malformed, Codes.Of(Payload.Frame().Set("seq", Payload.Int(-1)).Build()));
        }

        [Test]
        public void StreamIdsDotAndDotDotAreRefusedWhereverAStreamIdIsRead()
        {
            foreach (string id in new[] { ".", ".." })
            {
                Assert.AreEqual(ErrorCode.Malformed, Codes.Of(Payload.Frame().Set("stream", Payload.Str(id)).Build()), id);
                Assert.AreEqual(ErrorCode.Malformed, Codes.Of(Payload.Of("end_stream").Set("stream", Payload.Str(id)).Build()), id);
                Assert.AreEqual(ErrorCode.Malformed, Codes.Of(Payload.Of("open_stream").Set("stream", Payload.Str(id))
                    .Set("sample_rate", Payload.UInt(16000)).Set("channels", Payload.UInt(1)).Set("format", Payload.Str("f32le")).Build()), id);
                Assert.AreEqual(ErrorCode.Malformed, Codes.Of(Payload.Of("stream_start").Set("stream", Payload.Str(id))
                    .Set("source", Payload.Str("sdk")).Set("published_ns", Payload.UInt(1)).Build()), id);
                Assert.AreEqual(ErrorCode.Malformed, Codes.Of(Payload.Of("stats").Set("uptime_s", Payload.F64(1)).Set("drops", Payload.UInt(0))
                    .Set("published_ns", Payload.UInt(1)).Set("streams", w => { w.MapHeader(1); w.Str(id); w.MapHeader(0); }).Build()), id);
                Assert.AreEqual(ErrorCode.Malformed, Codes.Of(Payload.Of("error").Set("code", Payload.Str("busy")).Set("message", Payload.Str("x"))
                    .Set("request_type", Payload.Nil()).Set("stream", Payload.Str(id)).Build()), id);
                Assert.AreEqual(ErrorCode.Malformed, Assert.Throws<ProtocolException>(() => Requests.EndStream(id, null)).Code, id);
            }
            Assert.AreEqual("...", ((EndStream)new Decoder().Decode(Payload.Of("end_stream").Set("stream", Payload.Str("...")).Build())).Stream);
        }

        [Test]
        public void ErrorCodesUnknownOnesActAsInternalAndForbiddenIsKnown()
        {
            Assert.AreEqual(ErrorCode.Busy, ErrorCodes.FromWire("busy"));
            Assert.AreEqual(ErrorCode.Forbidden, ErrorCodes.FromWire("forbidden"));
            Assert.AreEqual("forbidden", ErrorCodes.ToWire(ErrorCode.Forbidden));
            Assert.AreEqual(ErrorCode.Internal, ErrorCodes.FromWire("a_code_from_the_future"));
            var e = (ErrorReply)new Decoder().Decode(Golden.Bytes("error"));
            Assert.AreEqual(ErrorCode.UnknownStream, e.ErrorCode);
            byte[] future = Payload.Of("error").Set("code", Payload.Str("overheated")).Set("message", Payload.Str("hot"))
                .Set("request_type", Payload.Nil()).Build();
            var f = (ErrorReply)new Decoder().Decode(future);
            Assert.AreEqual("overheated", f.Code);
            Assert.AreEqual(ErrorCode.Internal, f.ErrorCode);
            Assert.IsNull(f.RequestType);
            byte[] forbidden = Payload.Of("error").Set("code", Payload.Str("forbidden")).Set("message", Payload.Str("not yours"))
                .Set("request_type", Payload.Str("audio")).Set("stream", Payload.Str("npc1")).Set("req", Payload.UInt(9)).Build();
            var g = (ErrorReply)new Decoder().Decode(forbidden);
            Assert.AreEqual(ErrorCode.Forbidden, g.ErrorCode);
            Assert.AreEqual(9UL, g.Req.Value);
        }

        [Test]
        public void StatsReadThe11KeysAndIgnoreKeysTheyDoNotKnow()
        {
            // Protocol 1.1 adds `refused`, `capacity` and per-stream `shed`; any other key may come too.
            byte[] payload = Payload.Of("stats").Set("uptime_s", Payload.F64(3.5)).Set("drops", Payload.UInt(1))
                .Set("published_ns", Payload.UInt(5)).Set("mood", Payload.UInt(4))
                .Set("refused", w => { w.MapHeader(2); w.Str("busy"); w.UInt(4); w.Str("overheated"); w.UInt(1); })
                .Set("capacity", Payload.UInt(0))
                .Set("streams", w =>
                {
                    w.MapHeader(1);
                    w.Str("npc1");
                    w.MapHeader(8);
                    w.Str("fps"); w.Float64(30);
                    w.Str("latency_p50_ms"); w.Float64(120);
                    w.Str("latency_p95_ms"); w.UInt(150); // an int where a float goes
                    w.Str("frames"); w.UInt(90);
                    w.Str("drops"); w.UInt(0);
                    w.Str("shed"); w.UInt(2);
                    w.Str("source"); w.UInt(7);           // ill-typed optional key: ignored
                    w.Str("sanitized"); w.UInt(3);
                }).Build();
            var s = (Stats)new Decoder().Decode(payload);
            StreamStats st = s.Streams["npc1"];
            Assert.AreEqual(150.0, st.LatencyP95Ms);
            Assert.IsNull(st.Source);
            Assert.AreEqual(3UL, st.Sanitized.Value);
            Assert.AreEqual(2UL, st.Shed.Value);
            Assert.AreEqual(1UL, s.Drops);
            Assert.AreEqual(4UL, s.Refused["busy"]);
            Assert.AreEqual(1UL, s.Refused["overheated"]); // a newer runtime's code: counted all the same
            Assert.AreEqual(0UL, s.Capacity.Value);
            // The golden stats (1.1) carry all three.
            var golden = (Stats)new Decoder().Decode(Golden.Bytes("stats"));
            Assert.AreEqual(3UL, golden.Refused["malformed"]);
            Assert.AreEqual(1UL, golden.Refused["forbidden"]);
            Assert.AreEqual(2UL, golden.Capacity.Value);
            Assert.AreEqual(2UL, golden.Streams["npc1"].Shed.Value);
            // Optional: a 1.0 runtime's stats have none of them.
            Payload plain = Payload.Of("stats").Set("uptime_s", Payload.F64(1)).Set("drops", Payload.UInt(0)).Set("published_ns", Payload.UInt(1))
                .Set("streams", w => w.MapHeader(0));
            var old = (Stats)new Decoder().Decode(plain.Build());
            Assert.IsNull(old.Refused);
            Assert.IsFalse(old.Capacity.HasValue);
            // Present but of the wrong type: malformed, as in the reference decoder.
            Assert.AreEqual(ErrorCode.Malformed, Codes.Of(plain.Set("refused", Payload.UInt(4)).Build()));
            Assert.AreEqual(ErrorCode.Malformed, Codes.Of(plain.Set("refused", w => { w.MapHeader(1); w.Str("busy"); w.Int(-1); }).Build()));
            Assert.AreEqual(ErrorCode.Malformed, Codes.Of(plain.Set("refused", w => { w.MapHeader(1); w.UInt(1); w.UInt(1); }).Build()));
            Assert.AreEqual(ErrorCode.Malformed, Codes.Of(plain.Set("refused", w => { w.MapHeader(1); w.Str("busy"); w.Str("1"); }).Build()));
            plain.Remove("refused");
            Assert.AreEqual(ErrorCode.Malformed, Codes.Of(plain.Set("capacity", Payload.Str("2")).Build()));
            // A stream entry without a required key is malformed, as is a bad stream id key.
            byte[] missing = Payload.Of("stats").Set("uptime_s", Payload.F64(1)).Set("drops", Payload.UInt(0)).Set("published_ns", Payload.UInt(1))
                .Set("streams", w => { w.MapHeader(1); w.Str("npc1"); w.MapHeader(1); w.Str("fps"); w.Float64(30); }).Build();
            Assert.AreEqual(ErrorCode.Malformed, Codes.Of(missing));
            byte[] badId = Payload.Of("stats").Set("uptime_s", Payload.F64(1)).Set("drops", Payload.UInt(0)).Set("published_ns", Payload.UInt(1))
                .Set("streams", w => { w.MapHeader(1); w.Str("a b"); w.MapHeader(0); }).Build();
            Assert.AreEqual(ErrorCode.Malformed, Codes.Of(badId));
        }

        [Test]
        public void StreamOpenedCarriesMaxAheadS()
        {
            Assert.AreEqual(20.0, ((StreamOpened)new Decoder().Decode(Golden.Bytes("stream_opened"))).MaxAheadS.Value);
            Payload p = Payload.Of("stream_opened").Set("stream", Payload.Str("npc1")).Set("fps", Payload.UInt(30));
            Assert.IsFalse(((StreamOpened)new Decoder().Decode(p.Build())).MaxAheadS.HasValue); // a 1.0 runtime
            Assert.AreEqual(5.0, ((StreamOpened)new Decoder().Decode(p.Set("max_ahead_s", Payload.UInt(5)).Build())).MaxAheadS.Value);
            Assert.AreEqual(ErrorCode.Malformed, Codes.Of(p.Set("max_ahead_s", Payload.Str("5")).Build()));
        }

        [Test]
        public void RequestsAreWrittenAsVersion14()
        {
            Message m = new Decoder().Decode(Requests.EndStream("npc1", 2));
            Assert.AreEqual(1, m.Major);
            Assert.AreEqual(4, m.Minor);
        }

        [Test]
        public void ARepeatedKeyCountsByItsLastOccurrence()
        {
            var w = new MsgPackWriter();
            byte[] frame = Payload.Frame().Build();
            // The same frame map with one more entry: "seq" again, 9.
            w.MapHeader(16);
            w.Raw(frame, 1, frame.Length - 1); // the 15 entries after the fixmap header
            w.Str("seq");
            w.UInt(9);
            Frame f = (Frame)new Decoder().Decode(w.ToArray());
            Assert.AreEqual(9UL, f.Seq);
        }

        [Test]
        public void TheDecoderReusesItsFrameAndInternsStreamIds()
        {
            var d = new Decoder();
            var a = (Frame)d.Decode(Payload.Frame("npc1", 1).Build());
            string id = a.Stream;
            var b = (Frame)d.Decode(Payload.Frame("npc1", 2).Build());
            Assert.IsTrue(ReferenceEquals(a, b), "one Frame instance, refilled");
            Assert.IsTrue(ReferenceEquals(id, b.Stream), "the same string for the same id");
            Frame kept = b.Clone();
            d.Decode(Payload.Frame("npc2", 3).Build());
            Assert.AreEqual("npc1", kept.Stream);
            Assert.AreEqual(2UL, kept.Index);
            Assert.AreEqual("npc2", b.Stream);
        }

        [Test]
        public void TopicsEndInASlashAndValidateTheStreamId()
        {
            Assert.AreEqual("ksd1/frame/npc1/", Protocol.FrameTopic("npc1"));
            Assert.AreEqual("ksd1/stream/mic/", Protocol.StreamTopic("mic"));
            Assert.IsTrue(Protocol.IsValidStreamId("sdk-1.a_B"));
            Assert.IsTrue(Protocol.IsValidStreamId("..."));
            foreach (string bad in new[] { "", "a b", new string('x', 65), ".", "..", "é" })
            {
                Assert.IsFalse(Protocol.IsValidStreamId(bad), bad);
                Assert.Throws<ProtocolException>(() => Protocol.FrameTopic(bad));
            }
            TopicKind kind;
            string stream;
            Assert.IsTrue(Protocol.TryParseTopic("ksd1/frame/npc10/", out kind, out stream));
            Assert.AreEqual(TopicKind.Frame, kind);
            Assert.AreEqual("npc10", stream);
            Assert.IsTrue(Protocol.TryParseTopic("ksd1/stats/", out kind, out stream));
            Assert.AreEqual(TopicKind.Stats, kind);
            foreach (string bad in new[] { "ksd1/frame/npc1", "ksd2/hello/", "ksd1/frame/", "ksd1/frame/a/b/", "ksd1/mood/x/", "ksd1/frame/../" })
                Assert.IsFalse(Protocol.TryParseTopic(bad, out kind, out stream), bad);
        }

        [Test]
        public void EncodersRefuseWhatTheRuntimeWouldRefuse()
        {
            Assert.AreEqual(ErrorCode.BadAudio, Assert.Throws<ProtocolException>(() => Requests.OpenStream(new OpenStream { SampleRate = 4000 })).Code);
            Assert.AreEqual(ErrorCode.BadAudio, Assert.Throws<ProtocolException>(() => Requests.OpenStream(new OpenStream { Format = "mp3" })).Code);
            Assert.AreEqual(ErrorCode.Malformed, Assert.Throws<ProtocolException>(() => Requests.OpenStream(new OpenStream { Transcript = new string('a', 2001) })).Code);
            Assert.AreEqual(ErrorCode.Malformed, Assert.Throws<ProtocolException>(() => Requests.EndStream("has space", null)).Code);
            var pcm = new byte[Protocol.MaxMessageBytes];
            Assert.AreEqual(ErrorCode.TooLarge, Assert.Throws<ProtocolException>(() => Requests.Audio("npc1", 0, null, pcm, 0, pcm.Length)).Code);
            // Negative seeds and big integers round-trip in their smallest forms.
            var o = (OpenStream)new Decoder().Decode(Requests.OpenStream(new OpenStream { Seed = -70000, Req = 1UL << 40 }));
            Assert.AreEqual(-70000L, o.Seed.Value);
            Assert.AreEqual(1UL << 40, o.Req.Value);
        }
    }
}
