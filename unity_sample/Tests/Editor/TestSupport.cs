// Helpers shared by the tests: where the golden vectors are, a small JSON reader for their .json
// files, a builder of hand-made payloads, and the set-up of the fixtures that run the client on libzmq.
using System;
using System.Collections.Generic;
using System.Globalization;
using System.IO;
using System.Runtime.CompilerServices;
using System.Text;
using NUnit.Framework;

namespace Ksdiff.Tests
{
    // The set-up of the fixtures that run KsdiffClient against a FakeRuntime over libzmq: skipped
    // without libzmq; what a test keeps is disposed after it, newest first.
    public abstract class LibZmqFixture
    {
        readonly List<IDisposable> _cleanup = new List<IDisposable>();

        [SetUp]
        public void SetUp() { FakeRuntime.RequireLibZmq(); }

        [TearDown]
        public void TearDown()
        {
            for (int i = _cleanup.Count - 1; i >= 0; i--) _cleanup[i].Dispose();
            _cleanup.Clear();
        }

        protected T Keep<T>(T d) where T : IDisposable
        {
            _cleanup.Add(d);
            return d;
        }
    }

    public static class Golden
    {
        // protocol/golden of this repository: KSDIFF_GOLDEN_DIR, else found from this source
        // file's own path (unity_sample/Tests/Editor -> ../../../protocol/golden), which also
        // works in a Unity project that uses the package from a clone of the repository.
        public static string Dir
        {
            get
            {
                string env = Environment.GetEnvironmentVariable("KSDIFF_GOLDEN_DIR");
                if (!string.IsNullOrEmpty(env)) return env;
                string here = Path.GetDirectoryName(SourcePath());
                return Path.GetFullPath(Path.Combine(here, "..", "..", "..", "protocol", "golden"));
            }
        }

        static string SourcePath([CallerFilePath] string path = "") { return path; }

        public static string RequireDir()
        {
            string dir = Dir;
            if (!File.Exists(Path.Combine(dir, "index.json")))
                Assert.Ignore("golden vectors not found at " + dir + " (set KSDIFF_GOLDEN_DIR to protocol/golden)");
            return dir;
        }

        public static byte[] Bytes(string name) { return File.ReadAllBytes(Path.Combine(RequireDir(), name + ".msgpack")); }

        public static object Json(string name) { return MiniJson.Parse(File.ReadAllText(Path.Combine(RequireDir(), name + ".json"))); }

        public static Dictionary<string, object> Index()
        {
            return (Dictionary<string, object>)MiniJson.Parse(File.ReadAllText(Path.Combine(RequireDir(), "index.json")));
        }
    }

    // JSON -> Dictionary<string, object> / List<object> / string / long / ulong / double / bool / null.
    // Integers stay integers (long, or ulong above long's range); numbers with a fraction or an
    // exponent are double, parsed with the invariant culture.
    public static class MiniJson
    {
        public static object Parse(string text)
        {
            int i = 0;
            object v = Value(text, ref i);
            Space(text, ref i);
            if (i != text.Length) throw new FormatException("trailing characters at " + i);
            return v;
        }

        static object Value(string s, ref int i)
        {
            Space(s, ref i);
            char c = s[i];
            if (c == '{')
            {
                var map = new Dictionary<string, object>();
                i++;
                Space(s, ref i);
                if (s[i] == '}') { i++; return map; }
                while (true)
                {
                    Space(s, ref i);
                    string key = (string)Value(s, ref i);
                    Space(s, ref i);
                    Expect(s, ref i, ':');
                    map[key] = Value(s, ref i);
                    Space(s, ref i);
                    if (s[i] == ',') { i++; continue; }
                    Expect(s, ref i, '}');
                    return map;
                }
            }
            if (c == '[')
            {
                var list = new List<object>();
                i++;
                Space(s, ref i);
                if (s[i] == ']') { i++; return list; }
                while (true)
                {
                    list.Add(Value(s, ref i));
                    Space(s, ref i);
                    if (s[i] == ',') { i++; continue; }
                    Expect(s, ref i, ']');
                    return list;
                }
            }
            if (c == '"') return String(s, ref i);
            if (s.Substring(i).StartsWith("true", StringComparison.Ordinal)) { i += 4; return true; }
            if (s.Substring(i).StartsWith("false", StringComparison.Ordinal)) { i += 5; return false; }
            if (s.Substring(i).StartsWith("null", StringComparison.Ordinal)) { i += 4; return null; }
            int start = i;
            while (i < s.Length && "+-0123456789.eE".IndexOf(s[i]) >= 0) i++;
            string num = s.Substring(start, i - start);
            if (num.IndexOfAny(new[] { '.', 'e', 'E' }) >= 0) return double.Parse(num, NumberStyles.Float, CultureInfo.InvariantCulture);
            long l;
            if (long.TryParse(num, NumberStyles.Integer, CultureInfo.InvariantCulture, out l)) return l;
            return ulong.Parse(num, NumberStyles.Integer, CultureInfo.InvariantCulture);
        }

        static string String(string s, ref int i)
        {
            Expect(s, ref i, '"');
            var sb = new StringBuilder();
            while (s[i] != '"')
            {
                char c = s[i++];
                if (c != '\\') { sb.Append(c); continue; }
                char e = s[i++];
                switch (e)
                {
                    case 'n': sb.Append('\n'); break;
                    case 't': sb.Append('\t'); break;
                    case 'r': sb.Append('\r'); break;
                    case 'b': sb.Append('\b'); break;
                    case 'f': sb.Append('\f'); break;
                    case 'u': sb.Append((char)Convert.ToInt32(s.Substring(i, 4), 16)); i += 4; break;
                    default: sb.Append(e); break;
                }
            }
            i++;
            return sb.ToString();
        }

        static void Space(string s, ref int i)
        {
            while (i < s.Length && char.IsWhiteSpace(s[i])) i++;
        }

        static void Expect(string s, ref int i, char c)
        {
            if (s[i] != c) throw new FormatException("expected '" + c + "' at " + i);
            i++;
        }
    }

    // Hand-built payloads: a map of key -> writer action, so a test can replace or drop one field
    // of an otherwise valid message, or encode it in another msgpack form.
    public sealed class Payload
    {
        readonly List<KeyValuePair<string, Action<MsgPackWriter>>> _entries = new List<KeyValuePair<string, Action<MsgPackWriter>>>();

        public Payload Set(string key, Action<MsgPackWriter> value)
        {
            Remove(key);
            _entries.Add(new KeyValuePair<string, Action<MsgPackWriter>>(key, value));
            return this;
        }

        public Payload Remove(string key)
        {
            _entries.RemoveAll(e => e.Key == key);
            return this;
        }

        public byte[] Build()
        {
            var w = new MsgPackWriter();
            w.MapHeader(_entries.Count);
            foreach (var e in _entries)
            {
                w.Str(e.Key);
                e.Value(w);
            }
            return w.ToArray();
        }

        public static Action<MsgPackWriter> Str(string s) { return w => w.Str(s); }
        public static Action<MsgPackWriter> UInt(ulong v) { return w => w.UInt(v); }
        public static Action<MsgPackWriter> Int(long v) { return w => w.Int(v); }
        public static Action<MsgPackWriter> F32(float v) { return w => w.Float32(v); }
        public static Action<MsgPackWriter> F64(double v) { return w => w.Float64(v); }
        public static Action<MsgPackWriter> Nil() { return w => w.Nil(); }
        public static Action<MsgPackWriter> Bool(bool v) { return w => w.Bool(v); }
        public static Action<MsgPackWriter> Raw(params byte[] bytes) { return w => w.Raw(bytes, 0, bytes.Length); }
        public static Action<MsgPackWriter> Version(int major, int minor) { return w => { w.ArrayHeader(2); w.UInt((ulong)major); w.UInt((ulong)minor); }; }

        public static Action<MsgPackWriter> F32Array(params float[] values)
        {
            return w =>
            {
                w.ArrayHeader(values.Length);
                foreach (float v in values) w.Float32(v);
            };
        }

        public static Action<MsgPackWriter> BlendshapeBin(float[] values)
        {
            var bytes = new byte[4 * values.Length];
            for (int i = 0; i < values.Length; i++)
            {
                uint bits = FloatBits.ToBits(values[i]);
                for (int k = 0; k < 4; k++) bytes[4 * i + k] = (byte)(bits >> (8 * k));
            }
            return w => w.Bin(bytes, 0, bytes.Length);
        }

        // A valid v1.0 frame of `stream` with index = seq = `index` at 30 fps; jawOpen = `jaw`.
        public static Payload Frame(string stream = "npc1", ulong index = 3, float jaw = 0f, bool last = false)
        {
            var bs = new float[Protocol.BlendshapeCount];
            bs[17] = jaw;
            return new Payload()
                .Set("v", Version(1, 0))
                .Set("type", Str("frame"))
                .Set("stream", Str(stream))
                .Set("seq", UInt(index))
                .Set("index", UInt(index))
                .Set("fps", UInt(30))
                .Set("t_audio", F64(index / 30.0))
                .Set("blendshapes", BlendshapeBin(bs))
                .Set("head", F32Array(0f, 0f, 0f))
                .Set("gaze", F32Array(0f, 0f, 0f, 0f))
                .Set("captured_ns", Nil())
                .Set("published_ns", UInt(1000))
                .Set("lookahead_ms", F32(100f))
                .Set("compute_ms", F32(1.5f))
                .Set("last", Bool(last));
        }

        public static Payload Of(string type)
        {
            return new Payload().Set("v", Version(1, 0)).Set("type", Str(type));
        }
    }

    public static class Allocations
    {
        // Bytes the calling thread allocates running `body` `iterations` times, after one warm-up
        // run (JIT compilation and lazy initialisation are not the code's steady state).
        // GC.GetAllocatedBytesForCurrentThread counts every managed allocation, in Mono too.
        public static long Measure(Action body, int iterations)
        {
            body();
            body();
            long before = GC.GetAllocatedBytesForCurrentThread();
            for (int i = 0; i < iterations; i++) body();
            return GC.GetAllocatedBytesForCurrentThread() - before;
        }
    }

    public static class Codes
    {
        // The code a payload is refused with, or a failure when it decodes.
        public static ErrorCode Of(byte[] payload)
        {
            try
            {
                new Decoder().Decode(payload);
            }
            catch (ProtocolException e)
            {
                return e.Code;
            }
            Assert.Fail("decoded without error");
            return ErrorCode.Internal;
        }
    }
}
