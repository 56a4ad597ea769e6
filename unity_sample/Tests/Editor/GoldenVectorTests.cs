// The protocol's golden vectors (protocol/golden, SPEC 8): every valid vector decodes to its
// JSON (key order aside, unknown keys of a newer minor ignored), every invalid one is refused
// with its code, published ones belong on their topic, and the request encoders reproduce the
// reference encoder's bytes.
using System;
using System.Collections.Generic;
using System.Linq;
using NUnit.Framework;

namespace Ksdiff.Tests
{
    [TestFixture]
    public class GoldenVectorTests
    {
        // Keys protocol v1.4 defines per type (SPEC 4). A vector's other keys belong to a newer
        // minor and must be ignored by the decoder.
        static readonly Dictionary<string, string[]> KnownKeys = new Dictionary<string, string[]>
        {
            { "hello", new[] { "v", "type", "runtime", "fps", "sample_rate", "blendshapes", "head", "head_units", "head_convention", "gaze", "gaze_units", "gaze_convention", "max_message_bytes", "instance", "req" } },
            { "frame", new[] { "v", "type", "stream", "seq", "index", "fps", "t_audio", "blendshapes", "head", "gaze", "captured_ns", "published_ns", "lookahead_ms", "compute_ms", "last" } },
            { "stream_start", new[] { "v", "type", "stream", "source", "published_ns", "mode", "latency_ms" } },
            { "stream_end", new[] { "v", "type", "stream", "source", "reason", "frames", "published_ns" } },
            { "stats", new[] { "v", "type", "uptime_s", "streams", "drops", "published_ns", "refused", "capacity" } },
            { "open_stream", new[] { "v", "type", "stream", "sample_rate", "channels", "format", "transcript", "seed", "mode", "controls", "req" } },
            { "audio", new[] { "v", "type", "stream", "seq", "at_sample", "pcm" } },
            { "end_stream", new[] { "v", "type", "stream", "req" } },
            { "set_controls", new[] { "v", "type", "stream", "controls", "req" } },
            { "stream_opened", new[] { "v", "type", "stream", "fps", "max_ahead_s", "mode", "latency_ms", "req" } },
            { "stream_ended", new[] { "v", "type", "stream", "frames", "req" } },
            { "controls_set", new[] { "v", "type", "stream", "controls", "req" } },
            { "error", new[] { "v", "type", "code", "message", "request_type", "stream", "req" } },
        };

        // Keys of the controls map (open_stream, set_controls, controls_set) protocol v1.4 defines
        // (SPEC 4.6): 1.2's four, 1.3's mood and mood_intensity, and 1.4's style.
        static readonly string[] KnownControlsKeys =
        {
            "strength", "shapes", "smoothing_ms", "timing_offset_ms", "mood", "mood_intensity", "style",
        };

        static IEnumerable<Dictionary<string, object>> Entries(string which)
        {
            return ((List<object>)Golden.Index()[which]).Cast<Dictionary<string, object>>();
        }

        [Test]
        public void EveryValidVectorDecodesToItsJson()
        {
            var index = Golden.Index();
            Assert.AreEqual(new object[] { (long)Protocol.Major, (long)Protocol.Minor }, index["protocol"]);
            int checkedCount = 0;
            var failures = new List<string>();
            foreach (var entry in Entries("valid"))
            {
                string name = (string)entry["name"];
                byte[] bytes = Golden.Bytes(name);
                Assert.AreEqual(entry["bytes"], bytes.Length, name + " size");
                var expected = (Dictionary<string, object>)Golden.Json(name);
                Message msg;
                try
                {
                    msg = new Decoder().Decode(bytes);
                }
                catch (ProtocolException e)
                {
                    failures.Add(name + ": " + e.Message);
                    continue;
                }
                string type = (string)entry["type"];
                Assert.AreEqual(type, WireType(msg.Type), name);
                var unknown = expected.Keys.Where(k => !KnownKeys[type].Contains(k)).ToList();
                foreach (string k in unknown) expected.Remove(k);
                var controls = expected.ContainsKey("controls") ? expected["controls"] as Dictionary<string, object> : null;
                if (controls != null)
                {
                    var unknownControls = controls.Keys.Where(k => !KnownControlsKeys.Contains(k)).ToList();
                    foreach (string k in unknownControls) controls.Remove(k);
                    unknown.AddRange(unknownControls.Select(k => "controls." + k));
                }
                Assert.IsTrue(unknown.Count == 0 || msg.Minor > Protocol.Minor,
                    name + " has unknown keys at minor " + Protocol.Minor + ": " + string.Join(", ", unknown.ToArray()));
                var actual = ToJson(msg);
                string diff = Diff(expected, actual, name);
                if (diff != null) failures.Add(diff);
                checkedCount++;
            }
            Assert.AreEqual(0, failures.Count, string.Join("\n", failures.ToArray()));
            Assert.AreEqual(29, checkedCount);
        }

        [Test]
        public void EveryInvalidVectorIsRefusedWithItsCode()
        {
            int checkedCount = 0;
            foreach (var entry in Entries("invalid"))
            {
                string name = (string)entry["name"];
                byte[] bytes = Golden.Bytes(name);
                Assert.AreEqual(entry["bytes"], bytes.Length, name + " size");
                try
                {
                    new Decoder().Decode(bytes);
                    Assert.Fail(name + " decoded; expected error " + entry["error"]);
                }
                catch (ProtocolException e)
                {
                    Assert.AreEqual((string)entry["error"], ErrorCodes.ToWire(e.Code), name + " (" + e.Message + ")");
                }
                checkedCount++;
            }
            Assert.AreEqual(16, checkedCount);
        }

        [Test]
        public void PublishedVectorsBelongOnTheirTopic()
        {
            int checkedCount = 0;
            foreach (var entry in Entries("valid"))
            {
                if (entry["topic"] == null) continue;
                string name = (string)entry["name"];
                Message msg = new Decoder().Decode(Golden.Bytes(name));
                string topic = null;
                if (msg is Frame) topic = Protocol.FrameTopic(((Frame)msg).Stream);
                if (msg is StreamStart) topic = Protocol.StreamTopic(((StreamStart)msg).Stream);
                if (msg is StreamEnd) topic = Protocol.StreamTopic(((StreamEnd)msg).Stream);
                if (msg is Hello) topic = Protocol.HelloTopic;
                if (msg is Stats) topic = Protocol.StatsTopic;
                Assert.AreEqual(entry["topic"], topic, name);
                TopicKind kind;
                string stream;
                Assert.IsTrue(Protocol.TryParseTopic(topic, out kind, out stream), name);
                checkedCount++;
            }
            Assert.AreEqual(8, checkedCount);
        }

        [Test]
        public void RequestEncodersReproduceTheReferenceBytes()
        {
            Assert.AreEqual(Golden.Bytes("hello_request"), Requests.Hello(null));
            foreach (string name in new[] { "open_stream", "open_stream_minimal", "open_stream_line" })
            {
                byte[] bytes = Golden.Bytes(name);
                Assert.AreEqual(bytes, Requests.OpenStream((OpenStream)new Decoder().Decode(bytes)), name);
            }
            foreach (string name in new[] { "audio", "audio_f32" })
            {
                byte[] bytes = Golden.Bytes(name);
                Assert.AreEqual(bytes, Requests.Audio((Audio)new Decoder().Decode(bytes)), name);
            }
            byte[] end = Golden.Bytes("end_stream");
            var e = (EndStream)new Decoder().Decode(end);
            Assert.AreEqual(end, Requests.EndStream(e.Stream, e.Req));
            byte[] set = Golden.Bytes("set_controls");
            var sc = (SetControls)new Decoder().Decode(set);
            Assert.AreEqual(set, Requests.SetControls(sc.Stream, sc.Controls, sc.Req));
            // Built by hand, as a game would: 80.0 goes out as float64, as msgpack-python packs it.
            Assert.AreEqual(set, Requests.SetControls("mic", new Controls().SetSmoothingMs("head", 80.0), 9));
            // 1.3: the mood, after the other controls' keys, its intensity a float64.
            byte[] mood = Golden.Bytes("set_controls_mood");
            var sm = (SetControls)new Decoder().Decode(mood);
            Assert.AreEqual(mood, Requests.SetControls(sm.Stream, sm.Controls, sm.Req));
            Assert.AreEqual(mood, Requests.SetControls("npc1", new Controls().SetMood(Protocol.MoodHappy, 0.625), 4));
            // 1.4: the style, a string after the other controls' keys.
            byte[] style = Golden.Bytes("set_controls_style");
            var ss = (SetControls)new Decoder().Decode(style);
            Assert.AreEqual(style, Requests.SetControls(ss.Stream, ss.Controls, ss.Req));
            Assert.AreEqual(style, Requests.SetControls("npc1", new Controls().SetStyle(Protocol.StyleLively), 6));
            var hello = (Hello)new Decoder().Decode(Requests.Hello(7));
            Assert.IsFalse(hello.FromRuntime);
            Assert.AreEqual(7UL, hello.Req.Value);
        }

        [Test]
        public void Protocol12ModeLatencyControls()
        {
            var start = (StreamStart)new Decoder().Decode(Golden.Bytes("stream_start_line"));
            Assert.AreEqual("line", start.Mode);
            Assert.AreEqual(233.33333333333334, start.LatencyMs.Value);
            var opened = (StreamOpened)new Decoder().Decode(Golden.Bytes("stream_opened_line"));
            Assert.AreEqual("line", opened.Mode);
            Assert.AreEqual(233.33333333333334, opened.LatencyMs.Value);
            // A 1.1 runtime's messages have neither.
            var old = (StreamStart)new Decoder().Decode(Golden.Bytes("stream_start"));
            Assert.IsNull(old.Mode);
            Assert.IsFalse(old.LatencyMs.HasValue);
            Assert.IsFalse(((StreamOpened)new Decoder().Decode(Golden.Bytes("stream_opened"))).LatencyMs.HasValue);

            var set = (ControlsSet)new Decoder().Decode(Golden.Bytes("controls_set"));
            Assert.AreEqual(5, set.Controls.Strength.Count);
            Assert.AreEqual("head", set.Controls.SmoothingMs[4].Key);
            Assert.AreEqual(80.0, set.Controls.SmoothingMs[4].Value);
            Assert.AreEqual(0, set.Controls.Shapes.Count);
            Assert.AreEqual(0.0, set.Controls.TimingOffsetMs.Value);
            var error = (ErrorReply)new Decoder().Decode(Golden.Bytes("error_bad_controls"));
            Assert.AreEqual(ErrorCode.BadControls, error.ErrorCode);
            Assert.AreEqual("bad_controls", ErrorCodes.ToWire(ErrorCode.BadControls));

            // Encoders refuse what the runtime would: an unknown mode, a non-finite control.
            try
            {
                Requests.OpenStream(new OpenStream { Mode = "fast" });
                Assert.Fail("mode 'fast' encoded");
            }
            catch (ProtocolException e) { Assert.AreEqual(ErrorCode.Malformed, e.Code); }
            try
            {
                Requests.SetControls("mic", new Controls { TimingOffsetMs = double.NaN }, null);
                Assert.Fail("NaN encoded");
            }
            catch (ProtocolException e) { Assert.AreEqual(ErrorCode.BadControls, e.Code); }
            // Ill-typed content decodes (the runtime judges it); the ill-typed entries are left out,
            // a well-typed one the runtime would refuse (a mood or style it does not have, 1.3, 1.4) is kept.
            var w = new MsgPackWriter();
            w.MapHeader(4);
            w.Str("v"); w.ArrayHeader(2); w.UInt(1); w.UInt(2);
            w.Str("type"); w.Str("set_controls");
            w.Str("stream"); w.Str("mic");
            w.Str("controls"); w.MapHeader(3);
            w.Str("strength"); w.MapHeader(2); w.Str("mouth"); w.Str("loud"); w.Str("jaw"); w.UInt(2);
            w.Str("mood"); w.Str("calm");
            w.Str("style"); w.Str("bouncy");
            var odd = (SetControls)new Decoder().Decode(w.ToArray());
            Assert.AreEqual(1, odd.Controls.Strength.Count);
            Assert.AreEqual("jaw", odd.Controls.Strength[0].Key);
            Assert.AreEqual(2.0, odd.Controls.Strength[0].Value);
            Assert.AreEqual("calm", odd.Controls.Mood);
            Assert.AreEqual("bouncy", odd.Controls.Style);
        }

        [Test]
        public void Protocol13Mood()
        {
            // controls_set lists the mood with the other controls (the runtime's defaults here).
            var set = (ControlsSet)new Decoder().Decode(Golden.Bytes("controls_set"));
            Assert.AreEqual(Protocol.MoodNeutral, set.Controls.Mood);
            Assert.AreEqual(1.0, set.Controls.MoodIntensity.Value);
            var mood = (SetControls)new Decoder().Decode(Golden.Bytes("set_controls_mood"));
            Assert.AreEqual("npc1", mood.Stream);
            Assert.AreEqual("happy", mood.Controls.Mood);
            Assert.AreEqual(0.625, mood.Controls.MoodIntensity.Value);
            Assert.IsNull(mood.Controls.Strength);
            Assert.IsNull(mood.Controls.Shapes);
            Assert.IsFalse(mood.Controls.TimingOffsetMs.HasValue);
            Assert.AreEqual(4UL, mood.Req.Value);
            // A 1.2 set_controls has neither.
            var old = (SetControls)new Decoder().Decode(Golden.Bytes("set_controls"));
            Assert.IsNull(old.Controls.Mood);
            Assert.IsFalse(old.Controls.MoodIntensity.HasValue);
            // An unknown mood is the runtime's to refuse: bad_controls, the message listing the moods.
            var error = (ErrorReply)new Decoder().Decode(Golden.Bytes("error_bad_mood"));
            Assert.AreEqual(ErrorCode.BadControls, error.ErrorCode);
            Assert.AreEqual("set_controls", error.RequestType);
            foreach (string m in Protocol.Moods) Assert.IsTrue(error.Message.Contains(m), m);
            Assert.AreEqual(new[] { "neutral", "happy", "sad", "angry", "surprised" }, Protocol.Moods);

            // A controls_set from the runtime with another mood.
            byte[] sad = Payload.Of("controls_set").Set("v", Payload.Version(1, 3)).Set("stream", Payload.Str("npc1"))
                .Set("controls", w =>
                {
                    w.MapHeader(3);
                    w.Str("timing_offset_ms"); w.Float64(0.0);
                    w.Str("mood"); w.Str("sad");
                    w.Str("mood_intensity"); w.UInt(0); // an int where a float goes
                })
                .Set("req", Payload.UInt(5)).Build();
            var reply = (ControlsSet)new Decoder().Decode(sad);
            Assert.AreEqual(Protocol.MoodSad, reply.Controls.Mood);
            Assert.AreEqual(0.0, reply.Controls.MoodIntensity.Value);
            Assert.AreEqual(0.0, reply.Controls.TimingOffsetMs.Value);
            Assert.AreEqual(5UL, reply.Req.Value);

            // The encoder: the mood alone, the intensity alone, both in open_stream; a non-finite
            // intensity refused like the other numbers; an unknown mood left to the runtime.
            var only = (SetControls)new Decoder().Decode(Requests.SetControls("npc1", new Controls().SetMood("angry"), null));
            Assert.AreEqual("angry", only.Controls.Mood);
            Assert.IsFalse(only.Controls.MoodIntensity.HasValue);
            var dim = (SetControls)new Decoder().Decode(Requests.SetControls("npc1", new Controls().SetMoodIntensity(0.25), null));
            Assert.IsNull(dim.Controls.Mood);
            Assert.AreEqual(0.25, dim.Controls.MoodIntensity.Value);
            var open = (OpenStream)new Decoder().Decode(Requests.OpenStream(new OpenStream
            {
                Stream = "npc2", Mode = Protocol.ModeLine,
                Controls = new Controls().SetStrength("head", 0.5).SetMood(Protocol.MoodSurprised, 1.0),
            }));
            Assert.AreEqual("surprised", open.Controls.Mood);
            Assert.AreEqual(1.0, open.Controls.MoodIntensity.Value);
            Assert.AreEqual(0.5, open.Controls.Strength[0].Value);
            foreach (double bad in new[] { double.NaN, double.PositiveInfinity })
            {
                var e = Assert.Throws<ProtocolException>(() => Requests.SetControls("npc1", new Controls().SetMood("happy", bad), null));
                Assert.AreEqual(ErrorCode.BadControls, e.Code);
                Assert.IsTrue(e.Message.Contains("mood_intensity"), e.Message);
            }
            Assert.AreEqual("excited", ((SetControls)new Decoder().Decode(
                Requests.SetControls("npc1", new Controls().SetMood("excited"), null))).Controls.Mood);
        }

        [Test]
        public void Protocol13AWronglyTypedMoodIsIgnored()
        {
            // The protocol asks only for a map with string keys: a mood that is not a string, an
            // intensity that is not a finite number, are left out (the runtime answers bad_controls
            // for them); the message still decodes, with its other entries.
            foreach (var mood in new Action<MsgPackWriter>[] { Payload.UInt(3), Payload.F64(0.5), Payload.Nil(), Payload.Bool(true),
                                                               w => { w.ArrayHeader(1); w.Str("happy"); } })
            {
                byte[] bytes = Payload.Of("controls_set").Set("v", Payload.Version(1, 3)).Set("stream", Payload.Str("npc1"))
                    .Set("controls", w =>
                    {
                        w.MapHeader(3);
                        w.Str("strength"); w.MapHeader(1); w.Str("jaw"); w.Float64(0.5);
                        w.Str("mood"); mood(w);
                        w.Str("mood_intensity"); w.Str("high");
                    }).Build();
                var s = (ControlsSet)new Decoder().Decode(bytes);
                Assert.IsNull(s.Controls.Mood);
                Assert.IsFalse(s.Controls.MoodIntensity.HasValue);
                Assert.AreEqual(0.5, s.Controls.Strength[0].Value);
            }
            // A non-finite intensity (float64 NaN) is left out too; a well-typed mood beside it kept.
            byte[] nan = Payload.Of("set_controls").Set("v", Payload.Version(1, 3)).Set("stream", Payload.Str("mic"))
                .Set("controls", w =>
                {
                    w.MapHeader(2);
                    w.Str("mood"); w.Str("happy");
                    w.Str("mood_intensity"); w.Float64(double.NaN);
                }).Build();
            var sc = (SetControls)new Decoder().Decode(nan);
            Assert.AreEqual("happy", sc.Controls.Mood);
            Assert.IsFalse(sc.Controls.MoodIntensity.HasValue);
        }

        [Test]
        public void Protocol14Style()
        {
            // controls_set lists the style with the other controls (the runtime's default here).
            var set = (ControlsSet)new Decoder().Decode(Golden.Bytes("controls_set"));
            Assert.AreEqual(Protocol.StyleNone, set.Controls.Style);
            Assert.AreEqual(Protocol.MoodNeutral, set.Controls.Mood);
            var style = (SetControls)new Decoder().Decode(Golden.Bytes("set_controls_style"));
            Assert.AreEqual("npc1", style.Stream);
            Assert.AreEqual("lively", style.Controls.Style);
            Assert.IsNull(style.Controls.Mood);
            Assert.IsFalse(style.Controls.MoodIntensity.HasValue);
            Assert.IsNull(style.Controls.Strength);
            Assert.IsNull(style.Controls.Shapes);
            Assert.IsNull(style.Controls.SmoothingMs);
            Assert.IsFalse(style.Controls.TimingOffsetMs.HasValue);
            Assert.AreEqual(6UL, style.Req.Value);
            // A 1.3 (or 1.2) set_controls has none.
            Assert.IsNull(((SetControls)new Decoder().Decode(Golden.Bytes("set_controls_mood"))).Controls.Style);
            Assert.IsNull(((SetControls)new Decoder().Decode(Golden.Bytes("set_controls"))).Controls.Style);
            // An unknown style is the runtime's to refuse: bad_controls, the message listing the styles.
            var error = (ErrorReply)new Decoder().Decode(Golden.Bytes("error_bad_style"));
            Assert.AreEqual(ErrorCode.BadControls, error.ErrorCode);
            Assert.AreEqual("set_controls", error.RequestType);
            Assert.AreEqual("npc1", error.Stream);
            Assert.AreEqual(7UL, error.Req.Value);
            Assert.IsTrue(error.Message.Contains("bouncy"), error.Message);
            foreach (string s in Protocol.Styles) Assert.IsTrue(error.Message.Contains(s), s);
            Assert.AreEqual(new[] { "none", "still", "calm", "natural", "lively", "animated" }, Protocol.Styles);

            // A controls_set from a runtime whose config set a take file: its path, as it is.
            const string take = "/srv/ksdiff/takes/anchor.csv";
            byte[] file = Payload.Of("controls_set").Set("v", Payload.Version(1, 4)).Set("stream", Payload.Str("mic"))
                .Set("controls", w =>
                {
                    w.MapHeader(3);
                    w.Str("mood"); w.Str("happy");
                    w.Str("mood_intensity"); w.Float64(0.5);
                    w.Str("style"); w.Str(take);
                })
                .Set("req", Payload.UInt(8)).Build();
            var reply = (ControlsSet)new Decoder().Decode(file);
            Assert.AreEqual(take, reply.Controls.Style);
            Assert.AreEqual(Protocol.MoodHappy, reply.Controls.Mood);
            Assert.AreEqual(0.5, reply.Controls.MoodIntensity.Value);
            Assert.AreEqual(8UL, reply.Req.Value);

            // The encoder: the style alone, with a mood in open_stream, the take file sent back
            // unchanged, an unknown style left to the runtime.
            var only = (SetControls)new Decoder().Decode(Requests.SetControls("npc1", new Controls().SetStyle(Protocol.StyleStill), null));
            Assert.AreEqual("still", only.Controls.Style);
            Assert.IsNull(only.Controls.Mood);
            var open = (OpenStream)new Decoder().Decode(Requests.OpenStream(new OpenStream
            {
                Stream = "npc2", Mode = Protocol.ModeLine,
                Controls = new Controls().SetStrength("head", 0.5).SetMood(Protocol.MoodSad, 0.75).SetStyle(Protocol.StyleAnimated),
            }));
            Assert.AreEqual("animated", open.Controls.Style);
            Assert.AreEqual("sad", open.Controls.Mood);
            Assert.AreEqual(0.75, open.Controls.MoodIntensity.Value);
            Assert.AreEqual(0.5, open.Controls.Strength[0].Value);
            Assert.AreEqual(take, ((SetControls)new Decoder().Decode(
                Requests.SetControls("mic", new Controls().SetStyle(reply.Controls.Style), null))).Controls.Style);
            Assert.AreEqual("bouncy", ((SetControls)new Decoder().Decode(
                Requests.SetControls("npc1", new Controls().SetStyle("bouncy"), null))).Controls.Style);
        }

        [Test]
        public void Protocol14AWronglyTypedStyleIsIgnored()
        {
            // A style that is not a string is left out (the runtime answers bad_controls for it); the
            // message still decodes, with its other entries.
            foreach (var style in new Action<MsgPackWriter>[] { Payload.UInt(3), Payload.F64(0.5), Payload.Nil(), Payload.Bool(true),
                                                                w => { w.ArrayHeader(1); w.Str("lively"); } })
            {
                byte[] bytes = Payload.Of("controls_set").Set("v", Payload.Version(1, 4)).Set("stream", Payload.Str("npc1"))
                    .Set("controls", w =>
                    {
                        w.MapHeader(3);
                        w.Str("strength"); w.MapHeader(1); w.Str("jaw"); w.Float64(0.5);
                        w.Str("style"); style(w);
                        w.Str("mood"); w.Str("calm");
                    }).Build();
                var s = (ControlsSet)new Decoder().Decode(bytes);
                Assert.IsNull(s.Controls.Style);
                Assert.AreEqual("calm", s.Controls.Mood);
                Assert.AreEqual(0.5, s.Controls.Strength[0].Value);
            }
        }

        [Test]
        public void TheGoldenFramesValues()
        {
            var f = (Frame)new Decoder().Decode(Golden.Bytes("frame"));
            Assert.AreEqual("npc1", f.Stream);
            Assert.AreEqual(42UL, f.Seq);
            Assert.AreEqual(45UL, f.Index);
            Assert.AreEqual(1.5, f.TAudio);
            Assert.AreEqual(0.5f, f.Blendshapes[17]); // jawOpen
            Assert.AreEqual(0.25f, f.Blendshapes[0]); // eyeBlinkLeft
            Assert.AreEqual(1.0f, f.Blendshapes[51]); // tongueOut
            Assert.AreEqual(new[] { 0.125f, -0.25f, 0.0625f }, f.Head);
            Assert.AreEqual(150.0, f.LatencyMs.Value);
            var last = (Frame)new Decoder().Decode(Golden.Bytes("frame_last"));
            Assert.IsTrue(last.Last);
            Assert.IsFalse(last.CapturedNs.HasValue);
            Assert.AreEqual(60u, last.Fps);
            var future = (Frame)new Decoder().Decode(Golden.Bytes("frame_future_minor"));
            Assert.AreEqual(7, future.Minor);
            var hello = (Hello)new Decoder().Decode(Golden.Bytes("hello"));
            Assert.IsTrue(hello.FromRuntime);
            Assert.AreEqual(Protocol.BlendshapeNames, hello.Blendshapes);
            Assert.AreEqual(Protocol.HeadNames, hello.Head);
            Assert.AreEqual(Protocol.GazeNames, hello.Gaze);
        }

        // --- a decoded message in the golden vectors' JSON form -------------------------------

        static string WireType(MessageType t)
        {
            switch (t)
            {
                case MessageType.Hello: return "hello";
                case MessageType.Frame: return "frame";
                case MessageType.StreamStart: return "stream_start";
                case MessageType.StreamEnd: return "stream_end";
                case MessageType.Stats: return "stats";
                case MessageType.OpenStream: return "open_stream";
                case MessageType.Audio: return "audio";
                case MessageType.EndStream: return "end_stream";
                case MessageType.StreamOpened: return "stream_opened";
                case MessageType.StreamEnded: return "stream_ended";
                case MessageType.SetControls: return "set_controls";
                case MessageType.ControlsSet: return "controls_set";
                default: return "error";
            }
        }

        static Dictionary<string, object> ToJson(Message m)
        {
            var j = new Dictionary<string, object>();
            j["v"] = new List<object> { (long)m.Major, (long)m.Minor };
            j["type"] = WireType(m.Type);
            if (m is Hello)
            {
                var h = (Hello)m;
                if (h.FromRuntime)
                {
                    j["runtime"] = h.Runtime;
                    j["fps"] = (long)h.Fps;
                    j["sample_rate"] = (long)h.SampleRate;
                    j["blendshapes"] = h.Blendshapes.Cast<object>().ToList();
                    j["head"] = h.Head.Cast<object>().ToList();
                    j["head_units"] = h.HeadUnits;
                    j["head_convention"] = h.HeadConvention;
                    j["gaze"] = h.Gaze.Cast<object>().ToList();
                    j["gaze_units"] = h.GazeUnits;
                    j["gaze_convention"] = h.GazeConvention;
                    j["max_message_bytes"] = (long)h.MaxMessageBytes;
                }
                if (h.Instance != null) j["instance"] = h.Instance;
                if (h.Req.HasValue) j["req"] = (long)h.Req.Value;
            }
            else if (m is Frame)
            {
                var f = (Frame)m;
                j["stream"] = f.Stream;
                j["seq"] = (long)f.Seq;
                j["index"] = (long)f.Index;
                j["fps"] = (long)f.Fps;
                j["t_audio"] = f.TAudio;
                j["blendshapes"] = BinJson(BlendshapeBytes(f.Blendshapes));
                j["head"] = f.Head.Select(x => (object)(double)x).ToList();
                j["gaze"] = f.Gaze.Select(x => (object)(double)x).ToList();
                j["captured_ns"] = f.CapturedNs.HasValue ? (object)f.CapturedNs.Value : null;
                j["published_ns"] = f.PublishedNs;
                j["lookahead_ms"] = (double)f.LookaheadMs;
                j["compute_ms"] = (double)f.ComputeMs;
                j["last"] = f.Last;
            }
            else if (m is StreamStart)
            {
                var s = (StreamStart)m;
                j["stream"] = s.Stream;
                j["source"] = s.Source;
                j["published_ns"] = s.PublishedNs;
                if (s.Mode != null) j["mode"] = s.Mode;
                if (s.LatencyMs.HasValue) j["latency_ms"] = s.LatencyMs.Value;
            }
            else if (m is StreamEnd)
            {
                var s = (StreamEnd)m;
                j["stream"] = s.Stream;
                j["source"] = s.Source;
                j["reason"] = s.Reason;
                j["frames"] = (long)s.Frames;
                j["published_ns"] = s.PublishedNs;
            }
            else if (m is Stats)
            {
                var s = (Stats)m;
                j["uptime_s"] = s.UptimeS;
                var streams = new Dictionary<string, object>();
                foreach (var kv in s.Streams)
                {
                    var e = new Dictionary<string, object>
                    {
                        { "fps", kv.Value.Fps }, { "latency_p50_ms", kv.Value.LatencyP50Ms },
                        { "latency_p95_ms", kv.Value.LatencyP95Ms }, { "frames", (long)kv.Value.Frames },
                        { "drops", (long)kv.Value.Drops },
                    };
                    if (kv.Value.Source != null) e["source"] = kv.Value.Source;
                    if (kv.Value.Sanitized.HasValue) e["sanitized"] = (long)kv.Value.Sanitized.Value;
                    if (kv.Value.Shed.HasValue) e["shed"] = (long)kv.Value.Shed.Value;
                    streams[kv.Key] = e;
                }
                j["streams"] = streams;
                j["drops"] = (long)s.Drops;
                j["published_ns"] = s.PublishedNs;
                if (s.Refused != null) j["refused"] = s.Refused.ToDictionary(kv => kv.Key, kv => (object)(long)kv.Value);
                if (s.Capacity.HasValue) j["capacity"] = (long)s.Capacity.Value;
            }
            else if (m is OpenStream)
            {
                var o = (OpenStream)m;
                if (o.Stream != null) j["stream"] = o.Stream;
                j["sample_rate"] = (long)o.SampleRate;
                j["channels"] = (long)o.Channels;
                j["format"] = o.Format;
                if (o.Transcript != null) j["transcript"] = o.Transcript;
                if (o.Seed.HasValue) j["seed"] = o.Seed.Value;
                if (o.Mode != null) j["mode"] = o.Mode;
                if (o.Controls != null) j["controls"] = ControlsJson(o.Controls);
                if (o.Req.HasValue) j["req"] = (long)o.Req.Value;
            }
            else if (m is Audio)
            {
                var a = (Audio)m;
                j["stream"] = a.Stream;
                j["seq"] = (long)a.Seq;
                if (a.AtSample.HasValue) j["at_sample"] = (long)a.AtSample.Value;
                j["pcm"] = BinJson(a.Pcm);
            }
            else if (m is EndStream)
            {
                var e = (EndStream)m;
                j["stream"] = e.Stream;
                if (e.Req.HasValue) j["req"] = (long)e.Req.Value;
            }
            else if (m is StreamOpened)
            {
                var s = (StreamOpened)m;
                j["stream"] = s.Stream;
                j["fps"] = (long)s.Fps;
                if (s.MaxAheadS.HasValue) j["max_ahead_s"] = s.MaxAheadS.Value;
                if (s.Mode != null) j["mode"] = s.Mode;
                if (s.LatencyMs.HasValue) j["latency_ms"] = s.LatencyMs.Value;
                if (s.Req.HasValue) j["req"] = (long)s.Req.Value;
            }
            else if (m is SetControls)
            {
                var s = (SetControls)m;
                j["stream"] = s.Stream;
                j["controls"] = ControlsJson(s.Controls);
                if (s.Req.HasValue) j["req"] = (long)s.Req.Value;
            }
            else if (m is ControlsSet)
            {
                var s = (ControlsSet)m;
                j["stream"] = s.Stream;
                j["controls"] = ControlsJson(s.Controls);
                if (s.Req.HasValue) j["req"] = (long)s.Req.Value;
            }
            else if (m is StreamEnded)
            {
                var s = (StreamEnded)m;
                j["stream"] = s.Stream;
                j["frames"] = (long)s.Frames;
                if (s.Req.HasValue) j["req"] = (long)s.Req.Value;
            }
            else
            {
                var e = (ErrorReply)m;
                j["code"] = e.Code;
                j["message"] = e.Message;
                j["request_type"] = e.RequestType;
                if (e.Stream != null) j["stream"] = e.Stream;
                if (e.Req.HasValue) j["req"] = (long)e.Req.Value;
            }
            return j;
        }

        static Dictionary<string, object> ControlsJson(Controls c)
        {
            var j = new Dictionary<string, object>();
            if (c.Strength != null) j["strength"] = c.Strength.ToDictionary(kv => kv.Key, kv => (object)kv.Value);
            if (c.Shapes != null)
            {
                var shapes = new Dictionary<string, object>();
                foreach (var kv in c.Shapes)
                {
                    var e = new Dictionary<string, object>();
                    if (kv.Value.Gain.HasValue) e["gain"] = kv.Value.Gain.Value;
                    if (kv.Value.Offset.HasValue) e["offset"] = kv.Value.Offset.Value;
                    if (kv.Value.Min.HasValue) e["min"] = kv.Value.Min.Value;
                    if (kv.Value.Max.HasValue) e["max"] = kv.Value.Max.Value;
                    shapes[kv.Key] = e;
                }
                j["shapes"] = shapes;
            }
            if (c.SmoothingMs != null) j["smoothing_ms"] = c.SmoothingMs.ToDictionary(kv => kv.Key, kv => (object)kv.Value);
            if (c.TimingOffsetMs.HasValue) j["timing_offset_ms"] = c.TimingOffsetMs.Value;
            if (c.Mood != null) j["mood"] = c.Mood;
            if (c.MoodIntensity.HasValue) j["mood_intensity"] = c.MoodIntensity.Value;
            if (c.Style != null) j["style"] = c.Style;
            return j;
        }

        static Dictionary<string, object> BinJson(byte[] bytes)
        {
            return new Dictionary<string, object> { { "$bin", Convert.ToBase64String(bytes) } };
        }

        static byte[] BlendshapeBytes(float[] values)
        {
            var bytes = new byte[4 * values.Length];
            for (int i = 0; i < values.Length; i++)
            {
                uint bits = FloatBits.ToBits(values[i]);
                for (int k = 0; k < 4; k++) bytes[4 * i + k] = (byte)(bits >> (8 * k));
            }
            return bytes;
        }

        // null when equal (numbers by value: JSON integers against integers, JSON floats against
        // the decoded float64 exactly), else where they differ.
        static string Diff(object expected, object actual, string path)
        {
            if (expected is Dictionary<string, object> && actual is Dictionary<string, object>)
            {
                var e = (Dictionary<string, object>)expected;
                var a = (Dictionary<string, object>)actual;
                foreach (string k in e.Keys.Union(a.Keys))
                {
                    if (!e.ContainsKey(k)) return path + "." + k + ": decoded but not in the JSON";
                    if (!a.ContainsKey(k)) return path + "." + k + ": in the JSON but not decoded";
                    string d = Diff(e[k], a[k], path + "." + k);
                    if (d != null) return d;
                }
                return null;
            }
            if (expected is List<object> && actual is List<object>)
            {
                var e = (List<object>)expected;
                var a = (List<object>)actual;
                if (e.Count != a.Count) return path + ": " + e.Count + " items expected, " + a.Count + " decoded";
                for (int i = 0; i < e.Count; i++)
                {
                    string d = Diff(e[i], a[i], path + "[" + i + "]");
                    if (d != null) return d;
                }
                return null;
            }
            if (expected == null || actual == null)
                return expected == null && actual == null ? null : path + ": " + Show(expected) + " expected, " + Show(actual) + " decoded";
            bool same;
            if (expected is double || actual is double) same = Convert.ToDouble(expected) == Convert.ToDouble(actual);
            else if (expected is long && actual is long) same = (long)expected == (long)actual;
            else same = expected.Equals(actual);
            return same ? null : path + ": " + Show(expected) + " expected, " + Show(actual) + " decoded";
        }

        static string Show(object o)
        {
            if (o == null) return "null";
            if (o is double) return ((double)o).ToString("R", System.Globalization.CultureInfo.InvariantCulture);
            return o.ToString();
        }
    }
}
