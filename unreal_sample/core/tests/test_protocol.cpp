// The protocol's golden vectors (protocol/golden, SPEC 8) and the decoding rules of SPEC 3.
//
// Every valid vector must decode to its JSON (key order aside, unknown keys of a newer minor
// ignored); every invalid vector must be refused with its error code; the request encoders must
// reproduce the reference encoder's bytes.
#include "harness.hpp"

#include "ksdiff/protocol.hpp"

#include <msgpack.hpp>
#include <nlohmann/json.hpp>

#include <fstream>
#include <functional>
#include <iterator>
#include <limits>
#include <map>
#include <set>
#include <utility>

using json = nlohmann::json;
using namespace ksdiff;

namespace {

const std::string kGolden = KSDIFF_GOLDEN_DIR;

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + path);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

json read_json(const std::string& path) { return json::parse(read_bytes(path)); }

json index_json() { return read_json(kGolden + "/index.json"); }

std::string base64(std::string_view bytes) {
  static const char* alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  std::size_t i = 0;
  for (; i + 2 < bytes.size(); i += 3) {
    const unsigned v = (unsigned char)bytes[i] << 16 | (unsigned char)bytes[i + 1] << 8 | (unsigned char)bytes[i + 2];
    out += alphabet[v >> 18 & 63];
    out += alphabet[v >> 12 & 63];
    out += alphabet[v >> 6 & 63];
    out += alphabet[v & 63];
  }
  if (i + 1 == bytes.size()) {
    const unsigned v = (unsigned char)bytes[i] << 16;
    out += alphabet[v >> 18 & 63];
    out += alphabet[v >> 12 & 63];
    out += "==";
  } else if (i + 2 == bytes.size()) {
    const unsigned v = (unsigned char)bytes[i] << 16 | (unsigned char)bytes[i + 1] << 8;
    out += alphabet[v >> 18 & 63];
    out += alphabet[v >> 12 & 63];
    out += alphabet[v >> 6 & 63];
    out += '=';
  }
  return out;
}

json bin_json(std::string_view bytes) { return json{{"$bin", base64(bytes)}}; }

// 52 floats back to the wire's little-endian bytes, independent of host order.
std::string blendshape_bytes(const std::array<float, kNumBlendshapes>& values) {
  std::string out;
  for (float v : values) {
    std::uint32_t bits = 0;
    std::memcpy(&bits, &v, 4);
    for (int k = 0; k < 4; ++k) out += static_cast<char>((bits >> (8 * k)) & 0xFF);
  }
  return out;
}

template <typename T>
void put(json& j, const char* key, const std::optional<T>& value) {
  if (value) j[key] = *value;
}

template <typename Array>
json floats(const Array& values) {
  json out = json::array();
  for (float v : values) out.push_back(static_cast<double>(v));  // float -> double is exact
  return out;
}

template <class... Ts>
struct overloaded : Ts... {
  using Ts::operator()...;
};
template <class... Ts>
overloaded(Ts...) -> overloaded<Ts...>;

json named_json(const NamedValues<double>& values) {
  json out = json::object();
  for (const auto& [name, value] : values) out[name] = value;
  return out;
}

json controls_json(const Controls& c) {
  json j = json::object();
  if (c.strength) j["strength"] = named_json(*c.strength);
  if (c.shapes) {
    json shapes = json::object();
    for (const auto& [name, s] : *c.shapes) {
      json e = json::object();
      put(e, "gain", s.gain);
      put(e, "offset", s.offset);
      put(e, "min", s.min);
      put(e, "max", s.max);
      shapes[name] = e;
    }
    j["shapes"] = shapes;
  }
  if (c.smoothing_ms) j["smoothing_ms"] = named_json(*c.smoothing_ms);
  put(j, "timing_offset_ms", c.timing_offset_ms);
  put(j, "mood", c.mood);
  put(j, "mood_intensity", c.mood_intensity);
  put(j, "style", c.style);
  return j;
}

// A decoded message in the golden vectors' JSON form.
json to_json(const Message& m) {
  json j = {{"v", {m.major, m.minor}}, {"type", m.type}};
  std::visit(
      overloaded{
          [&](const Hello& h) {
            if (h.from_runtime) {
              j["runtime"] = h.runtime;
              j["fps"] = h.fps;
              j["sample_rate"] = h.sample_rate;
              j["blendshapes"] = h.blendshapes;
              j["head"] = h.head;
              j["head_units"] = h.head_units;
              j["head_convention"] = h.head_convention;
              j["gaze"] = h.gaze;
              j["gaze_units"] = h.gaze_units;
              j["gaze_convention"] = h.gaze_convention;
              j["max_message_bytes"] = h.max_message_bytes;
            }
            put(j, "instance", h.instance);
            put(j, "req", h.req);
          },
          [&](const Frame& f) {
            j["stream"] = f.stream;
            j["seq"] = f.seq;
            j["index"] = f.index;
            j["fps"] = f.fps;
            j["t_audio"] = f.t_audio;
            j["blendshapes"] = bin_json(blendshape_bytes(f.blendshapes));
            j["head"] = floats(f.head);
            j["gaze"] = floats(f.gaze);
            j["captured_ns"] = f.captured_ns ? json(*f.captured_ns) : json(nullptr);
            j["published_ns"] = f.published_ns;
            j["lookahead_ms"] = static_cast<double>(f.lookahead_ms);
            j["compute_ms"] = static_cast<double>(f.compute_ms);
            j["last"] = f.last;
          },
          [&](const StreamStart& s) {
            j["stream"] = s.stream;
            j["source"] = s.source;
            j["published_ns"] = s.published_ns;
            put(j, "mode", s.mode);
            put(j, "latency_ms", s.latency_ms);
          },
          [&](const StreamEnd& s) {
            j["stream"] = s.stream;
            j["source"] = s.source;
            j["reason"] = s.reason;
            j["frames"] = s.frames;
            j["published_ns"] = s.published_ns;
          },
          [&](const Stats& s) {
            j["uptime_s"] = s.uptime_s;
            json streams = json::object();
            for (const auto& [sid, st] : s.streams) {
              json e = {{"fps", st.fps},
                        {"latency_p50_ms", st.latency_p50_ms},
                        {"latency_p95_ms", st.latency_p95_ms},
                        {"frames", st.frames},
                        {"drops", st.drops}};
              put(e, "source", st.source);
              put(e, "sanitized", st.sanitized);
              put(e, "shed", st.shed);
              streams[sid] = e;
            }
            j["streams"] = streams;
            j["drops"] = s.drops;
            j["published_ns"] = s.published_ns;
            put(j, "refused", s.refused);
            put(j, "capacity", s.capacity);
          },
          [&](const OpenStream& o) {
            put(j, "stream", o.stream);
            j["sample_rate"] = o.sample_rate;
            j["channels"] = o.channels;
            j["format"] = o.format;
            put(j, "transcript", o.transcript);
            put(j, "seed", o.seed);
            put(j, "mode", o.mode);
            if (o.controls) j["controls"] = controls_json(*o.controls);
            put(j, "req", o.req);
          },
          [&](const Audio& a) {
            j["stream"] = a.stream;
            j["seq"] = a.seq;
            put(j, "at_sample", a.at_sample);
            j["pcm"] = bin_json(a.pcm);
          },
          [&](const EndStream& e) {
            j["stream"] = e.stream;
            put(j, "req", e.req);
          },
          [&](const StreamOpened& s) {
            j["stream"] = s.stream;
            j["fps"] = s.fps;
            put(j, "max_ahead_s", s.max_ahead_s);
            put(j, "mode", s.mode);
            put(j, "latency_ms", s.latency_ms);
            put(j, "req", s.req);
          },
          [&](const SetControls& s) {
            j["stream"] = s.stream;
            j["controls"] = controls_json(s.controls);
            put(j, "req", s.req);
          },
          [&](const ControlsSet& s) {
            j["stream"] = s.stream;
            j["controls"] = controls_json(s.controls);
            put(j, "req", s.req);
          },
          [&](const StreamEnded& s) {
            j["stream"] = s.stream;
            j["frames"] = s.frames;
            put(j, "req", s.req);
          },
          [&](const Error& e) {
            j["code"] = e.code;
            j["message"] = e.message;
            j["request_type"] = e.request_type ? json(*e.request_type) : json(nullptr);
            put(j, "stream", e.stream);
            put(j, "req", e.req);
          },
      },
      m.body);
  return j;
}

// Keys protocol v1.4 defines per type (SPEC 4). A golden vector's other keys belong to a newer
// minor version and must be ignored by the decoder.
const std::map<std::string, std::set<std::string>> kKnownKeys = {
    {"hello", {"v", "type", "runtime", "fps", "sample_rate", "blendshapes", "head", "head_units",
               "head_convention", "gaze", "gaze_units", "gaze_convention", "max_message_bytes",
               "instance", "req"}},
    {"frame", {"v", "type", "stream", "seq", "index", "fps", "t_audio", "blendshapes", "head", "gaze",
               "captured_ns", "published_ns", "lookahead_ms", "compute_ms", "last"}},
    {"stream_start", {"v", "type", "stream", "source", "published_ns", "mode", "latency_ms"}},
    {"stream_end", {"v", "type", "stream", "source", "reason", "frames", "published_ns"}},
    {"stats", {"v", "type", "uptime_s", "streams", "drops", "published_ns", "refused", "capacity"}},
    {"open_stream", {"v", "type", "stream", "sample_rate", "channels", "format", "transcript", "seed", "mode",
                     "controls", "req"}},
    {"audio", {"v", "type", "stream", "seq", "at_sample", "pcm"}},
    {"end_stream", {"v", "type", "stream", "req"}},
    {"set_controls", {"v", "type", "stream", "controls", "req"}},
    {"stream_opened", {"v", "type", "stream", "fps", "max_ahead_s", "mode", "latency_ms", "req"}},
    {"stream_ended", {"v", "type", "stream", "frames", "req"}},
    {"controls_set", {"v", "type", "stream", "controls", "req"}},
    {"error", {"v", "type", "code", "message", "request_type", "stream", "req"}},
};

// Keys of the controls map (open_stream, set_controls, controls_set) protocol v1.4 defines
// (SPEC 4.6): 1.2's four, 1.3's mood and mood_intensity, and 1.4's style.
const std::set<std::string> kKnownControlsKeys = {"strength", "shapes",         "smoothing_ms", "timing_offset_ms",
                                                  "mood",     "mood_intensity", "style"};

ErrorCode decode_error_code(const std::string& bytes) {
  try {
    (void)decode(bytes);
  } catch (const ProtocolError& e) {
    return e.code();
  }
  throw std::runtime_error("decoded without error");
}

// --- hand-built payloads ------------------------------------------------------------------------
using Packer = msgpack::packer<msgpack::sbuffer>;
using Entry = std::pair<std::string, std::function<void(Packer&)>>;

std::string pack_map(const std::vector<Entry>& entries) {
  msgpack::sbuffer buffer;
  Packer p(&buffer);
  p.pack_map(static_cast<std::uint32_t>(entries.size()));
  for (const auto& [key, value] : entries) {
    p.pack(key);
    value(p);
  }
  return std::string(buffer.data(), buffer.size());
}

std::function<void(Packer&)> v10() {
  return [](Packer& p) {
    p.pack_array(2);
    p.pack_uint8(1);
    p.pack_uint8(0);
  };
}
std::function<void(Packer&)> str(std::string s) {
  return [s](Packer& p) { p.pack(s); };
}

std::string neutral_blendshapes() { return std::string(kBlendshapeBytes, '\0'); }

// A valid frame; `replace` swaps in other encodings of some fields.
std::string frame_payload(const std::map<std::string, std::function<void(Packer&)>>& replace = {},
                          const std::vector<Entry>& extra = {}) {
  std::vector<Entry> e = {
      {"v", v10()},
      {"type", str("frame")},
      {"stream", str("npc1")},
      {"seq", [](Packer& p) { p.pack_uint8(3); }},
      {"index", [](Packer& p) { p.pack_uint8(3); }},
      {"fps", [](Packer& p) { p.pack_uint8(30); }},
      {"t_audio", [](Packer& p) { p.pack_double(0.1); }},
      {"blendshapes",
       [](Packer& p) {
         const std::string b = neutral_blendshapes();
         p.pack_bin(static_cast<std::uint32_t>(b.size()));
         p.pack_bin_body(b.data(), static_cast<std::uint32_t>(b.size()));
       }},
      {"head", [](Packer& p) { p.pack_array(3), p.pack_float(0.f), p.pack_float(0.f), p.pack_float(0.f); }},
      {"gaze",
       [](Packer& p) { p.pack_array(4), p.pack_float(0.f), p.pack_float(0.f), p.pack_float(0.f), p.pack_float(0.f); }},
      {"captured_ns", [](Packer& p) { p.pack_nil(); }},
      {"published_ns", [](Packer& p) { p.pack_uint32(1000); }},
      {"lookahead_ms", [](Packer& p) { p.pack_float(100.f); }},
      {"compute_ms", [](Packer& p) { p.pack_float(1.5f); }},
      {"last", [](Packer& p) { p.pack_false(); }},
  };
  std::vector<Entry> out;
  for (auto& [key, value] : e) {
    auto it = replace.find(key);
    if (it == replace.end()) {
      out.emplace_back(key, value);
    } else if (it->second) {
      out.emplace_back(key, it->second);
    }  // a replacement that is empty removes the key
  }
  out.insert(out.end(), extra.begin(), extra.end());
  return pack_map(out);
}

}  // namespace

TEST_CASE("every valid golden vector decodes to its JSON") {
  const json index = index_json();
  REQUIRE(index["protocol"] == json({kProtocolMajor, kProtocolMinor}));
  int checked = 0;
  for (const json& entry : index["valid"]) {
    const std::string name = entry["name"];
    const std::string bytes = read_bytes(kGolden + "/" + name + ".msgpack");
    json expected = read_json(kGolden + "/" + name + ".json");
    EXPECT_EQ(bytes.size(), entry["bytes"].get<std::size_t>());
    Message msg;
    try {
      msg = decode(bytes);
    } catch (const std::exception& e) {
      harness::report(__FILE__, __LINE__, name + ": " + e.what());
      continue;
    }
    EXPECT_EQ(msg.type, entry["type"].get<std::string>());
    // Drop the keys v1.4 does not define (the controls map's included): only a newer minor may
    // carry them.
    const auto& known = kKnownKeys.at(msg.type);
    std::vector<std::string> unknown;
    for (auto it = expected.begin(); it != expected.end(); ++it) {
      if (!known.count(it.key())) unknown.push_back(it.key());
    }
    for (const auto& key : unknown) expected.erase(key);
    if (expected.contains("controls") && expected["controls"].is_object()) {
      json& controls = expected["controls"];
      std::vector<std::string> unknown_controls;
      for (auto it = controls.begin(); it != controls.end(); ++it) {
        if (!kKnownControlsKeys.count(it.key())) unknown_controls.push_back(it.key());
      }
      for (const auto& key : unknown_controls) {
        controls.erase(key);
        unknown.push_back("controls." + key);
      }
    }
    std::string unknown_list;
    for (const auto& key : unknown) unknown_list += " " + key;
    EXPECT_MSG(unknown.empty() || msg.minor > kProtocolMinor,
               name + " has unknown keys at minor " + std::to_string(kProtocolMinor) + ":" + unknown_list);
    const json actual = to_json(msg);
    EXPECT_MSG(actual == expected, name + "\n    decoded:  " + actual.dump() + "\n    expected: " + expected.dump());
    ++checked;
  }
  EXPECT_EQ(checked, 29);
}

TEST_CASE("published vectors belong on their topic") {
  const json index = index_json();
  int published = 0;
  for (const json& entry : index["valid"]) {
    if (entry["topic"].is_null()) continue;
    const std::string name = entry["name"];
    const Message msg = decode(read_bytes(kGolden + "/" + name + ".msgpack"));
    std::string topic;
    if (auto* f = std::get_if<Frame>(&msg.body)) topic = frame_topic(f->stream);
    if (auto* s = std::get_if<StreamStart>(&msg.body)) topic = stream_topic(s->stream);
    if (auto* s = std::get_if<StreamEnd>(&msg.body)) topic = stream_topic(s->stream);
    if (std::holds_alternative<Hello>(msg.body)) topic = std::string(kHelloTopic);
    if (std::holds_alternative<Stats>(msg.body)) topic = std::string(kStatsTopic);
    EXPECT_EQ(topic, entry["topic"].get<std::string>());
    ++published;
  }
  EXPECT_EQ(published, 8);  // hello, 3 frames, 2 stream_start, stream_end, stats
}

TEST_CASE("every invalid golden vector is refused with its code") {
  const json index = index_json();  // kept alive: the loop iterates into it
  int checked = 0;
  for (const json& entry : index["invalid"]) {
    const std::string name = entry["name"];
    const std::string bytes = read_bytes(kGolden + "/" + name + ".msgpack");
    EXPECT_EQ(bytes.size(), entry["bytes"].get<std::size_t>());
    try {
      (void)decode(bytes);
      harness::report(__FILE__, __LINE__, name + " decoded; expected error " + entry["error"].get<std::string>());
    } catch (const ProtocolError& e) {
      EXPECT_MSG(to_string(e.code()) == entry["error"].get<std::string>(),
                 name + ": got " + std::string(to_string(e.code())) + " (" + e.what() + ")");
    }
    ++checked;
  }
  EXPECT_EQ(checked, 16);
}

TEST_CASE("request encoders reproduce the reference encoder's bytes") {
  const auto golden = [](const char* name) { return read_bytes(kGolden + "/" + std::string(name) + ".msgpack"); };
  EXPECT(encode_hello_request() == golden("hello_request"));
  for (const char* name : {"open_stream", "open_stream_minimal", "open_stream_line"}) {
    const std::string bytes = golden(name);
    EXPECT_MSG(encode_open_stream(std::get<OpenStream>(decode(bytes).body)) == bytes, name);
  }
  for (const char* name : {"audio", "audio_f32"}) {
    const std::string bytes = golden(name);
    EXPECT_MSG(encode_audio(std::get<Audio>(decode(bytes).body)) == bytes, name);
  }
  const std::string end = golden("end_stream");
  EXPECT(encode_end_stream(std::get<EndStream>(decode(end).body)) == end);
  const std::string set = golden("set_controls");
  EXPECT(encode_set_controls(std::get<SetControls>(decode(set).body)) == set);
  // 1.3: the mood after the other controls' keys, its intensity a float64; also built by hand.
  const std::string mood = golden("set_controls_mood");
  EXPECT(encode_set_controls(std::get<SetControls>(decode(mood).body)) == mood);
  SetControls happy;
  happy.stream = "npc1";
  happy.controls.mood = std::string(kMoodHappy);
  happy.controls.mood_intensity = 0.625;
  happy.req = 4;
  EXPECT(encode_set_controls(happy) == mood);
  // 1.4: the style, a str after the other controls' keys; also built by hand.
  const std::string style = golden("set_controls_style");
  EXPECT(encode_set_controls(std::get<SetControls>(decode(style).body)) == style);
  SetControls lively;
  lively.stream = "npc1";
  lively.controls.style = std::string(kStyleLively);
  lively.req = 6;
  EXPECT(encode_set_controls(lively) == style);
  // A hello request with a req round-trips too.
  const Message hello = decode(encode_hello_request(7));
  EXPECT(!std::get<Hello>(hello.body).from_runtime);
  EXPECT(std::get<Hello>(hello.body).req == std::optional<std::uint64_t>(7));
}

TEST_CASE("encoders refuse what the runtime would refuse") {
  OpenStream bad_rate;
  bad_rate.sample_rate = 4000;
  EXPECT(decode_error_code(pack_map({})) == ErrorCode::malformed);  // sanity of the helper
  try {
    (void)encode_open_stream(bad_rate);
    harness::report(__FILE__, __LINE__, "sample_rate 4000 encoded");
  } catch (const ProtocolError& e) {
    EXPECT(e.code() == ErrorCode::bad_audio);
  }
  try {
    (void)encode_end_stream(EndStream{"has space", std::nullopt});
    harness::report(__FILE__, __LINE__, "bad stream id encoded");
  } catch (const ProtocolError& e) {
    EXPECT(e.code() == ErrorCode::malformed);
  }
  Audio big;
  big.stream = "npc1";
  big.pcm.assign(kMaxMessageBytes, '\0');
  try {
    (void)encode_audio(big);
    harness::report(__FILE__, __LINE__, "1 MiB of pcm encoded");
  } catch (const ProtocolError& e) {
    EXPECT(e.code() == ErrorCode::too_large);
  }
}

TEST_CASE("the runtime's hello lists the canonical names") {
  const Hello h = std::get<Hello>(decode(read_bytes(kGolden + "/hello.msgpack")).body);
  REQUIRE(h.from_runtime);
  REQUIRE(h.blendshapes.size() == kNumBlendshapes);
  for (std::size_t i = 0; i < kNumBlendshapes; ++i) EXPECT_EQ(h.blendshapes[i], std::string(kBlendshapeNames[i]));
  for (std::size_t i = 0; i < 3; ++i) EXPECT_EQ(h.head[i], std::string(kHeadNames[i]));
  for (std::size_t i = 0; i < 4; ++i) EXPECT_EQ(h.gaze[i], std::string(kGazeNames[i]));
  EXPECT_EQ(h.max_message_bytes, kMaxMessageBytes);
}

TEST_CASE("the golden frame's values") {
  const Frame f = std::get<Frame>(decode(read_bytes(kGolden + "/frame.msgpack")).body);
  EXPECT_EQ(f.stream, std::string("npc1"));
  EXPECT_EQ(f.seq, 42u);
  EXPECT_EQ(f.index, 45u);
  EXPECT_EQ(f.t_audio, 1.5);
  EXPECT_EQ(f.blendshapes[17], 0.5f);  // jawOpen
  EXPECT_EQ(f.blendshapes[0], 0.25f);  // eyeBlinkLeft
  EXPECT_EQ(f.blendshapes[51], 1.0f);  // tongueOut
  EXPECT_EQ(f.head[0], 0.125f);
  EXPECT_EQ(f.head[1], -0.25f);
  EXPECT_EQ(f.head[2], 0.0625f);
  EXPECT(f.captured_ns == std::optional<std::int64_t>(1000000000000));
  EXPECT_EQ(f.published_ns - *f.captured_ns, 150000000);
  const Frame last = std::get<Frame>(decode(read_bytes(kGolden + "/frame_last.msgpack")).body);
  EXPECT(last.last);
  EXPECT(!last.captured_ns);
  EXPECT_EQ(last.fps, 60u);
}

TEST_CASE("blendshape bytes are little-endian whatever the host") {
  unsigned char bytes[kBlendshapeBytes] = {};
  // 1.0f = 0x3F800000, -2.5f = 0xC0200000, written least significant byte first.
  bytes[2] = 0x80, bytes[3] = 0x3F;
  bytes[4 * 51 + 2] = 0x20, bytes[4 * 51 + 3] = 0xC0;
  const auto values = decode_blendshapes(bytes);
  EXPECT_EQ(values[0], 1.0f);
  EXPECT_EQ(values[1], 0.0f);
  EXPECT_EQ(values[51], -2.5f);
}

TEST_CASE("integers of any width and floats of either width decode") {
  const std::string payload = frame_payload(
      {
          {"seq", [](Packer& p) { p.pack_fix_uint64(7); }},        // uint64 form of a small value
          {"index", [](Packer& p) { p.pack_fix_int16(7); }},       // a signed form, non-negative
          {"fps", [](Packer& p) { p.pack_fix_uint32(60); }},
          {"t_audio", [](Packer& p) { p.pack_fix_uint8(2); }},     // an int where a float goes
          {"head", [](Packer& p) { p.pack_array(3), p.pack_double(0.5), p.pack_int8(-1), p.pack_float(0.25f); }},
          {"captured_ns", [](Packer& p) { p.pack_fix_uint64(5); }},
          {"published_ns", [](Packer& p) { p.pack_fix_int64(-9000000000LL); }},
          {"lookahead_ms", [](Packer& p) { p.pack_fix_uint16(125); }},
          {"compute_ms", [](Packer& p) { p.pack_double(2.5); }},
      },
      {
          // Unknown keys, of any type, are ignored (a newer minor adds keys).
          {"mood", str("cheerful")},
          {"extra", [](Packer& p) { p.pack_map(1), p.pack(std::string("x")), p.pack_array(0); }},
          {"ext", [](Packer& p) { p.pack_ext(1, 5), p.pack_ext_body("\x01", 1); }},
      });
  const Frame f = std::get<Frame>(decode(payload).body);
  EXPECT_EQ(f.seq, 7u);
  EXPECT_EQ(f.index, 7u);
  EXPECT_EQ(f.fps, 60u);
  EXPECT_EQ(f.t_audio, 2.0);
  EXPECT_EQ(f.head[0], 0.5f);
  EXPECT_EQ(f.head[1], -1.0f);
  EXPECT_EQ(f.head[2], 0.25f);
  EXPECT(f.captured_ns == std::optional<std::int64_t>(5));
  EXPECT_EQ(f.published_ns, -9000000000LL);
  EXPECT_EQ(f.lookahead_ms, 125.0f);
  EXPECT_EQ(f.compute_ms, 2.5f);
}

TEST_CASE("a float64 beyond float32's range saturates in float fields") {
  const Frame f = std::get<Frame>(decode(frame_payload({{"compute_ms", [](Packer& p) { p.pack_double(1e300); }}})).body);
  EXPECT_EQ(f.compute_ms, std::numeric_limits<float>::max());
}

TEST_CASE("ill-typed or missing fields are malformed") {
  const auto code = [](const std::string& payload) { return decode_error_code(payload); };
  using P = Packer;
  // (msgpack-c packs an integral double as an integer, hence 1.5 for "a float where an int goes")
  EXPECT(code(frame_payload({{"seq", [](P& p) { p.pack_double(1.5); }}})) == ErrorCode::malformed);
  EXPECT(code(frame_payload({{"seq", [](P& p) { p.pack_int8(-1); }}})) == ErrorCode::malformed);     // negative uint
  EXPECT(code(frame_payload({{"seq", [](P& p) { p.pack_true(); }}})) == ErrorCode::malformed);       // bool as int
  EXPECT(code(frame_payload({{"fps", [](P& p) { p.pack_uint8(0); }}})) == ErrorCode::malformed);     // fps >= 1
  EXPECT(code(frame_payload({{"t_audio", [](P& p) { p.pack_double(std::nan("")); }}})) == ErrorCode::malformed);
  EXPECT(code(frame_payload({{"head", [](P& p) { p.pack_array(2), p.pack_float(0), p.pack_float(0); }}})) ==
         ErrorCode::malformed);
  EXPECT(code(frame_payload({{"last", {}}})) == ErrorCode::malformed);  // missing
  EXPECT(code(frame_payload({{"captured_ns", [](P& p) { p.pack_fix_uint64(1ULL << 63); }}})) ==
         ErrorCode::malformed);  // above int64
  EXPECT(code(frame_payload({{"blendshapes", str(std::string(kBlendshapeBytes, 'a'))}})) ==
         ErrorCode::malformed);  // str where bin is specified
  EXPECT(code(frame_payload({{"stream", str("npc/1")}})) == ErrorCode::malformed);
  EXPECT(code(frame_payload({{"stream", str(std::string(65, 'a'))}})) == ErrorCode::malformed);
  EXPECT(code(frame_payload({{"v", [](P& p) { p.pack_array(3), p.pack(1), p.pack(0), p.pack(0); }}})) ==
         ErrorCode::malformed);
  EXPECT(code(frame_payload({{"v", [](P& p) { p.pack_array(2), p.pack(2), p.pack(0); }}})) ==
         ErrorCode::unsupported_version);
  EXPECT(code(frame_payload({{"type", [](P& p) { p.pack(3); }}})) == ErrorCode::malformed);
  EXPECT(code(frame_payload({{"type", str("fram\xff")}})) == ErrorCode::malformed);  // not UTF-8
  // An unknown key is never read, so even a broken string there does not matter.
  EXPECT(std::get<Frame>(decode(frame_payload({}, {{"mood", str("\xc0\xaf")}})).body).seq == 3u);
  EXPECT(code(std::string()) == ErrorCode::malformed);                                   // empty
  EXPECT(code(std::string(kMaxMessageBytes + 1, '\x80')) == ErrorCode::too_large);       // checked first
  // A map key that is not a string.
  msgpack::sbuffer buffer;
  Packer p(&buffer);
  p.pack_map(1);
  p.pack(1);
  p.pack(2);
  EXPECT(code(std::string(buffer.data(), buffer.size())) == ErrorCode::malformed);
  // A container header that claims more elements than the payload holds.
  EXPECT(code(std::string("\xdd\xff\xff\xff\xff", 5)) == ErrorCode::malformed);
}

TEST_CASE("hello: the runtime form has every field, the request form none") {
  const std::string partial = pack_map({{"v", v10()}, {"type", str("hello")}, {"runtime", str("0.1.0")}});
  EXPECT(decode_error_code(partial) == ErrorCode::malformed);
  const Hello request = std::get<Hello>(decode(pack_map({{"v", v10()}, {"type", str("hello")}})).body);
  EXPECT(!request.from_runtime);
}

TEST_CASE("error codes: unknown codes act as internal") {
  EXPECT(error_code_from_string("busy") == ErrorCode::busy);
  EXPECT(error_code_from_string("a_code_from_the_future") == ErrorCode::internal);
  const Error e = std::get<Error>(decode(read_bytes(kGolden + "/error.msgpack")).body);
  EXPECT(e.error_code() == ErrorCode::unknown_stream);
  const std::string future = pack_map({{"v", v10()},
                                       {"type", str("error")},
                                       {"code", str("overheated")},
                                       {"message", str("hot")},
                                       {"request_type", [](Packer& p) { p.pack_nil(); }}});
  EXPECT(std::get<Error>(decode(future).body).error_code() == ErrorCode::internal);
}

TEST_CASE("topics end in a slash and validate the stream id") {
  EXPECT_EQ(frame_topic("npc1"), std::string("ksd1/frame/npc1/"));
  EXPECT_EQ(stream_topic("mic"), std::string("ksd1/stream/mic/"));
  EXPECT(is_valid_stream_id("sdk-1.a_B"));
  EXPECT(!is_valid_stream_id(""));
  EXPECT(!is_valid_stream_id("a b"));
  EXPECT(!is_valid_stream_id(std::string(65, 'x')));
}

// --- protocol 1.1 --------------------------------------------------------------------------------

std::function<void(Packer&)> u(std::uint64_t x) {
  return [x](Packer& p) { p.pack_uint64(x); };
}
std::function<void(Packer&)> i64(std::int64_t x) {
  return [x](Packer& p) { p.pack_int64(x); };
}

// open_stream with one field replaced (an empty function removes it).
std::string open_stream_payload(const std::string& key, const std::function<void(Packer&)>& value) {
  std::vector<Entry> e = {{"v", v10()}, {"type", str("open_stream")}, {"sample_rate", u(16000)},
                          {"channels", u(1)}, {"format", str("f32le")}};
  std::vector<Entry> out;
  for (auto& entry : e) {
    if (entry.first != key) out.push_back(entry);
    else if (value) out.emplace_back(key, value);
  }
  return pack_map(out);
}

TEST_CASE("1.1: a wrongly typed open_stream field is malformed, a value out of range bad_audio") {
  const auto code = [](const std::string& key, const std::function<void(Packer&)>& value) {
    return decode_error_code(open_stream_payload(key, value));
  };
  EXPECT(code("sample_rate", str("16000")) == ErrorCode::malformed);  // the golden invalid_sample_rate_type
  EXPECT(code("sample_rate", [](Packer& p) { p.pack_double(16000.5); }) == ErrorCode::malformed);
  EXPECT(code("sample_rate", [](Packer& p) { p.pack_true(); }) == ErrorCode::malformed);
  EXPECT(code("sample_rate", [](Packer& p) { p.pack_nil(); }) == ErrorCode::malformed);
  EXPECT(code("sample_rate", u(4000)) == ErrorCode::bad_audio);
  EXPECT(code("sample_rate", u(192001)) == ErrorCode::bad_audio);
  EXPECT(code("sample_rate", i64(-16000)) == ErrorCode::bad_audio);  // an integer, out of range
  EXPECT(code("sample_rate", u(std::uint64_t{1} << 40)) == ErrorCode::bad_audio);
  EXPECT(code("channels", str("1")) == ErrorCode::malformed);
  EXPECT(code("channels", u(0)) == ErrorCode::bad_audio);
  EXPECT(code("channels", u(9)) == ErrorCode::bad_audio);
  EXPECT(code("format", u(1)) == ErrorCode::malformed);
  EXPECT(code("format", [](Packer& p) { p.pack_bin(5), p.pack_bin_body("f32le", 5); }) == ErrorCode::malformed);
  EXPECT(code("format", str("mp3")) == ErrorCode::bad_audio);
  EXPECT(code("sample_rate", {}) == ErrorCode::malformed);  // missing
  // In range and well typed: decodes (a 1.0 message still does: 1.1 only adds).
  const OpenStream o = std::get<OpenStream>(decode(open_stream_payload("sample_rate", u(192000))).body);
  EXPECT_EQ(o.sample_rate, 192000u);
  // Other fields keep their single code: a negative seq is a wrong value of a uint, malformed.
  EXPECT(decode_error_code(frame_payload({{"seq", i64(-1)}})) == ErrorCode::malformed);
}

TEST_CASE("1.1: stream ids '.' and '..' are refused everywhere a stream id is checked") {
  EXPECT(!is_valid_stream_id("."));
  EXPECT(!is_valid_stream_id(".."));
  EXPECT(is_valid_stream_id("..."));  // only the two path components are reserved
  EXPECT(is_valid_stream_id(".a"));
  EXPECT(is_valid_stream_id("a.."));
  for (const char* id : {".", ".."}) {
    EXPECT(decode_error_code(frame_payload({{"stream", str(id)}})) == ErrorCode::malformed);
    EXPECT(decode_error_code(pack_map({{"v", v10()}, {"type", str("end_stream")}, {"stream", str(id)}})) ==
           ErrorCode::malformed);
    std::vector<Entry> open = {{"v", v10()}, {"type", str("open_stream")}, {"stream", str(id)},
                               {"sample_rate", u(16000)}, {"channels", u(1)}, {"format", str("f32le")}};
    EXPECT(decode_error_code(pack_map(open)) == ErrorCode::malformed);
    const std::string stats = pack_map(
        {{"v", v10()}, {"type", str("stats")}, {"uptime_s", u(1)},
         {"streams",
          [id](Packer& p) {
            p.pack_map(1), p.pack(std::string(id)), p.pack_map(5);
            p.pack(std::string("fps")), p.pack(30), p.pack(std::string("latency_p50_ms")), p.pack(0);
            p.pack(std::string("latency_p95_ms")), p.pack(0), p.pack(std::string("frames")), p.pack(0);
            p.pack(std::string("drops")), p.pack(0);
          }},
         {"drops", u(0)}, {"published_ns", u(0)}});
    EXPECT(decode_error_code(stats) == ErrorCode::malformed);
    bool threw = false;
    try {
      (void)frame_topic(id);
    } catch (const ProtocolError& e) {
      threw = e.code() == ErrorCode::malformed;
    }
    EXPECT_MSG(threw, std::string("frame_topic accepted ") + id);
    threw = false;
    try {
      (void)encode_end_stream(EndStream{id, std::nullopt});
    } catch (const ProtocolError& e) {
      threw = e.code() == ErrorCode::malformed;
    }
    EXPECT_MSG(threw, std::string("encode_end_stream accepted ") + id);
  }
}

TEST_CASE("1.1: forbidden is a known code") {
  EXPECT(error_code_from_string("forbidden") == ErrorCode::forbidden);
  EXPECT_EQ(to_string(ErrorCode::forbidden), std::string_view("forbidden"));
  const Error e = std::get<Error>(decode(read_bytes(kGolden + "/error_forbidden.msgpack")).body);
  EXPECT(e.error_code() == ErrorCode::forbidden);
  EXPECT(e.request_type == std::optional<std::string>("end_stream"));
  EXPECT(e.stream == std::optional<std::string>("npc1"));
  EXPECT(e.req == std::optional<std::uint64_t>(4));
}

TEST_CASE("1.1: stats' refused, capacity and shed; stream_opened's max_ahead_s") {
  const Stats s = std::get<Stats>(decode(read_bytes(kGolden + "/stats.msgpack")).body);
  REQUIRE(s.refused.has_value());
  EXPECT_EQ(s.refused->size(), 2u);
  EXPECT_EQ(s.refused->at("malformed"), 3u);
  EXPECT_EQ(s.refused->at("forbidden"), 1u);
  EXPECT(s.capacity == std::optional<std::uint64_t>(2));
  EXPECT(s.streams.at("npc1").shed == std::optional<std::uint64_t>(2));
  EXPECT(s.streams.at("mic").shed == std::optional<std::uint64_t>(0));
  const StreamOpened o = std::get<StreamOpened>(decode(read_bytes(kGolden + "/stream_opened.msgpack")).body);
  EXPECT(o.max_ahead_s == std::optional<double>(20.0));

  // Optional: a 1.0 runtime's messages have none of them.
  const auto stats = [](const std::vector<Entry>& extra) {
    std::vector<Entry> e = {{"v", v10()}, {"type", str("stats")}, {"uptime_s", u(1)},
                            {"streams", [](Packer& p) { p.pack_map(0); }}, {"drops", u(0)}, {"published_ns", u(0)}};
    e.insert(e.end(), extra.begin(), extra.end());
    return pack_map(e);
  };
  const Stats plain = std::get<Stats>(decode(stats({})).body);
  EXPECT(!plain.refused && !plain.capacity);
  const auto opened = [](const std::vector<Entry>& extra) {
    std::vector<Entry> e = {{"v", v10()}, {"type", str("stream_opened")}, {"stream", str("npc1")}, {"fps", u(30)}};
    e.insert(e.end(), extra.begin(), extra.end());
    return pack_map(e);
  };
  EXPECT(!std::get<StreamOpened>(decode(opened({})).body).max_ahead_s);
  EXPECT(std::get<StreamOpened>(decode(opened({{"max_ahead_s", u(5)}})).body).max_ahead_s ==
         std::optional<double>(5.0));  // an integer where a float goes

  // Present but of the wrong type: malformed, as the reference decoder has it.
  EXPECT(decode_error_code(stats({{"capacity", str("2")}})) == ErrorCode::malformed);
  EXPECT(decode_error_code(stats({{"capacity", i64(-1)}})) == ErrorCode::malformed);
  EXPECT(decode_error_code(stats({{"refused", u(3)}})) == ErrorCode::malformed);
  EXPECT(decode_error_code(stats({{"refused", [](Packer& p) {
                                      p.pack_map(1), p.pack(std::string("busy")), p.pack(-1);
                                    }}})) == ErrorCode::malformed);
  EXPECT(decode_error_code(stats({{"refused", [](Packer& p) { p.pack_map(1), p.pack(1), p.pack(1); }}})) ==
         ErrorCode::malformed);
  EXPECT(decode_error_code(opened({{"max_ahead_s", str("20")}})) == ErrorCode::malformed);
  // Codes a newer runtime adds are counted all the same.
  const Stats future = std::get<Stats>(decode(stats({{"refused", [](Packer& p) {
                                                        p.pack_map(1), p.pack(std::string("overheated")), p.pack(7);
                                                      }}})).body);
  EXPECT_EQ(future.refused->at("overheated"), 7u);
}

TEST_CASE("1.4: requests are written as [1, 4]") {
  const Message m = decode(encode_end_stream(EndStream{"npc1", 2}));
  EXPECT_EQ(m.major, 1u);
  EXPECT_EQ(m.minor, 4u);
}

// --- protocol 1.2 --------------------------------------------------------------------------------

TEST_CASE("1.2: stream_start and stream_opened state the mode and latency; a 1.1 runtime's lack them") {
  const StreamStart start = std::get<StreamStart>(decode(read_bytes(kGolden + "/stream_start_line.msgpack")).body);
  EXPECT(start.mode == std::optional<std::string>("line"));
  EXPECT(start.latency_ms == std::optional<double>(233.33333333333334));
  const StreamOpened opened = std::get<StreamOpened>(decode(read_bytes(kGolden + "/stream_opened_line.msgpack")).body);
  EXPECT(opened.mode == std::optional<std::string>("line"));
  EXPECT(opened.latency_ms == std::optional<double>(233.33333333333334));
  EXPECT(opened.req == std::optional<std::uint64_t>(3));

  const std::vector<Entry> start11 = {{"v", v10()}, {"type", str("stream_start")}, {"stream", str("npc1")},
                                      {"source", str("sdk")}, {"published_ns", u(5)}};
  const StreamStart old = std::get<StreamStart>(decode(pack_map(start11)).body);
  EXPECT(!old.mode && !old.latency_ms);
  const StreamOpened old_opened = std::get<StreamOpened>(
      decode(pack_map({{"v", v10()}, {"type", str("stream_opened")}, {"stream", str("npc1")}, {"fps", u(30)}})).body);
  EXPECT(!old_opened.mode && !old_opened.latency_ms);

  // Present but wrong: malformed, as the reference decoder has it.
  auto with = [&](const Entry& extra) {
    std::vector<Entry> e = start11;
    e.push_back(extra);
    return decode_error_code(pack_map(e));
  };
  EXPECT(with({"mode", str("fast")}) == ErrorCode::malformed);
  EXPECT(with({"mode", u(1)}) == ErrorCode::malformed);
  EXPECT(with({"latency_ms", str("233")}) == ErrorCode::malformed);
  EXPECT(with({"latency_ms", [](Packer& p) { p.pack_double(std::nan("")); }}) == ErrorCode::malformed);
}

TEST_CASE("1.2: controls_set, bad_controls, and the controls of open_stream_line") {
  const ControlsSet set = std::get<ControlsSet>(decode(read_bytes(kGolden + "/controls_set.msgpack")).body);
  EXPECT_EQ(set.stream, std::string("mic"));
  REQUIRE(set.controls.strength.has_value() && set.controls.smoothing_ms.has_value());
  EXPECT_EQ(set.controls.strength->size(), 5u);
  EXPECT_EQ(set.controls.smoothing_ms->back().first, std::string("head"));
  EXPECT_EQ(set.controls.smoothing_ms->back().second, 80.0);
  EXPECT(set.controls.shapes.has_value() && set.controls.shapes->empty());
  EXPECT(set.controls.timing_offset_ms == std::optional<double>(0.0));

  const Error e = std::get<Error>(decode(read_bytes(kGolden + "/error_bad_controls.msgpack")).body);
  EXPECT(e.error_code() == ErrorCode::bad_controls);
  EXPECT(error_code_from_string("bad_controls") == ErrorCode::bad_controls);
  EXPECT_EQ(to_string(ErrorCode::bad_controls), std::string_view("bad_controls"));

  const OpenStream o = std::get<OpenStream>(decode(read_bytes(kGolden + "/open_stream_line.msgpack")).body);
  EXPECT(o.mode == std::optional<std::string>("line"));
  REQUIRE(o.controls.has_value() && o.controls->shapes.has_value());
  EXPECT_EQ(o.controls->shapes->at(0).first, std::string("jawOpen"));
  EXPECT(o.controls->shapes->at(0).second.gain == std::optional<double>(1.1));
  EXPECT(o.controls->shapes->at(0).second.max == std::optional<double>(0.8));
  EXPECT(!o.controls->shapes->at(0).second.offset);
  EXPECT(!o.controls->smoothing_ms);
  EXPECT(o.controls->timing_offset_ms == std::optional<double>(-20.0));
}

TEST_CASE("1.2: controls must be a map with string keys; their content is the runtime's to judge") {
  const auto set_controls = [](const std::function<void(Packer&)>& controls) {
    return pack_map({{"v", v10()}, {"type", str("set_controls")}, {"stream", str("mic")}, {"controls", controls}});
  };
  EXPECT(decode_error_code(set_controls([](Packer& p) { p.pack_array(1), p.pack_double(1.5); })) ==
         ErrorCode::malformed);  // the golden invalid_controls_type
  EXPECT(decode_error_code(set_controls([](Packer& p) { p.pack_map(1), p.pack(1), p.pack(1); })) ==
         ErrorCode::malformed);
  EXPECT(decode_error_code(pack_map({{"v", v10()}, {"type", str("set_controls")}, {"stream", str("mic")}})) ==
         ErrorCode::malformed);  // missing
  // Content of any shape decodes (as in the reference decoder); the ill-typed entries are left out,
  // a well-typed one the runtime would refuse (a mood or style it does not have, 1.3, 1.4) is kept.
  const SetControls odd = std::get<SetControls>(decode(set_controls([](Packer& p) {
                                                  p.pack_map(4);
                                                  p.pack(std::string("strength")), p.pack_map(2);
                                                  p.pack(std::string("mouth")), p.pack(std::string("loud"));
                                                  p.pack(std::string("jaw")), p.pack(2);
                                                  p.pack(std::string("shapes")), p.pack(7);
                                                  p.pack(std::string("mood")), p.pack(std::string("calm"));
                                                  p.pack(std::string("style")), p.pack(std::string("bouncy"));
                                                })).body);
  REQUIRE(odd.controls.strength.has_value());
  EXPECT_EQ(odd.controls.strength->size(), 1u);
  EXPECT_EQ(odd.controls.strength->at(0).first, std::string("jaw"));
  EXPECT_EQ(odd.controls.strength->at(0).second, 2.0);
  EXPECT(!odd.controls.shapes);
  EXPECT(odd.controls.mood == std::optional<std::string>("calm"));
  EXPECT(odd.controls.style == std::optional<std::string>("bouncy"));
}

TEST_CASE("1.2: the encoders write mode and controls, and refuse what the runtime would") {
  OpenStream line;
  line.stream = "npc3";
  line.mode = std::string(kModeLine);
  line.controls = Controls{};
  line.controls->shapes = NamedValues<ShapeControl>{{"jawOpen", ShapeControl{0.0, std::nullopt, std::nullopt, 1.0}}};
  line.controls->smoothing_ms = NamedValues<double>{{"head", 80.0}};
  const OpenStream back = std::get<OpenStream>(decode(encode_open_stream(line)).body);
  EXPECT(back.mode == std::optional<std::string>("line"));
  REQUIRE(back.controls && back.controls->shapes && back.controls->smoothing_ms);
  EXPECT(back.controls->shapes->at(0).second.gain == std::optional<double>(0.0));
  EXPECT(back.controls->shapes->at(0).second.max == std::optional<double>(1.0));
  EXPECT(back.controls->smoothing_ms->at(0).second == 80.0);
  EXPECT(!back.controls->strength && !back.controls->timing_offset_ms);

  // Integral values are float64 on the wire, as msgpack-python packs a float: 80.0 is cb 40 54 00..
  const std::string bytes = encode_set_controls(SetControls{"mic", Controls{std::nullopt, std::nullopt,
                                                                            NamedValues<double>{{"head", 80.0}},
                                                                            std::nullopt},
                                                            9});
  EXPECT(bytes == read_bytes(kGolden + "/set_controls.msgpack"));

  const auto code_of = [](const std::function<void()>& encode) {
    try {
      encode();
    } catch (const ProtocolError& e) {
      return std::optional<ErrorCode>(e.code());
    }
    return std::optional<ErrorCode>();
  };
  OpenStream bad_mode;
  bad_mode.mode = "fast";
  EXPECT(code_of([&] { (void)encode_open_stream(bad_mode); }) == std::optional<ErrorCode>(ErrorCode::malformed));
  SetControls nan;
  nan.stream = "mic";
  nan.controls.timing_offset_ms = std::nan("");
  EXPECT(code_of([&] { (void)encode_set_controls(nan); }) == std::optional<ErrorCode>(ErrorCode::bad_controls));
  SetControls bad_id;
  bad_id.stream = "a b";
  EXPECT(code_of([&] { (void)encode_set_controls(bad_id); }) == std::optional<ErrorCode>(ErrorCode::malformed));
  EXPECT(is_valid_mode("live") && is_valid_mode("line") && !is_valid_mode("Line") && !is_valid_mode(""));
}

// --- protocol 1.3 --------------------------------------------------------------------------------

TEST_CASE("1.3: controls_set and set_controls carry the mood; an unknown mood is bad_controls") {
  const ControlsSet set = std::get<ControlsSet>(decode(read_bytes(kGolden + "/controls_set.msgpack")).body);
  EXPECT(set.controls.mood == std::optional<std::string>("neutral"));
  EXPECT(set.controls.mood_intensity == std::optional<double>(1.0));
  const SetControls mood = std::get<SetControls>(decode(read_bytes(kGolden + "/set_controls_mood.msgpack")).body);
  EXPECT_EQ(mood.stream, std::string("npc1"));
  EXPECT(mood.controls.mood == std::optional<std::string>("happy"));
  EXPECT(mood.controls.mood_intensity == std::optional<double>(0.625));
  EXPECT(!mood.controls.strength && !mood.controls.shapes && !mood.controls.smoothing_ms);
  EXPECT(!mood.controls.timing_offset_ms);
  EXPECT(mood.req == std::optional<std::uint64_t>(4));
  // A 1.2 set_controls has neither.
  const SetControls old = std::get<SetControls>(decode(read_bytes(kGolden + "/set_controls.msgpack")).body);
  EXPECT(!old.controls.mood && !old.controls.mood_intensity);

  const Error e = std::get<Error>(decode(read_bytes(kGolden + "/error_bad_mood.msgpack")).body);
  EXPECT(e.error_code() == ErrorCode::bad_controls);
  EXPECT(e.request_type == std::optional<std::string>("set_controls"));
  for (std::string_view m : kMoods) EXPECT_MSG(e.message.find(m) != std::string::npos, std::string(m));
  const std::array<std::string_view, 5> moods = {"neutral", "happy", "sad", "angry", "surprised"};
  EXPECT(kMoods == moods);

  // A controls_set from the runtime with another mood (an int where a float goes).
  const ControlsSet sad = std::get<ControlsSet>(decode(pack_map({{"v", v10()},
                                                                 {"type", str("controls_set")},
                                                                 {"stream", str("npc1")},
                                                                 {"controls",
                                                                  [](Packer& p) {
                                                                    p.pack_map(3);
                                                                    p.pack(std::string("timing_offset_ms"));
                                                                    p.pack_double(0.0);
                                                                    p.pack(std::string("mood"));
                                                                    p.pack(std::string("sad"));
                                                                    p.pack(std::string("mood_intensity"));
                                                                    p.pack_uint8(0);
                                                                  }},
                                                                 {"req", u(5)}}))
                                                    .body);
  EXPECT(sad.controls.mood == std::optional<std::string>(kMoodSad));
  EXPECT(sad.controls.mood_intensity == std::optional<double>(0.0));
  EXPECT(sad.controls.timing_offset_ms == std::optional<double>(0.0));
  EXPECT(sad.req == std::optional<std::uint64_t>(5));
}

TEST_CASE("1.3: a wrongly typed mood or intensity is ignored, not refused") {
  const auto controls_set = [](const std::function<void(Packer&)>& mood,
                               const std::function<void(Packer&)>& intensity) {
    return pack_map({{"v", v10()},
                     {"type", str("controls_set")},
                     {"stream", str("npc1")},
                     {"controls", [mood, intensity](Packer& p) {
                        p.pack_map(3);
                        p.pack(std::string("strength")), p.pack_map(1), p.pack(std::string("jaw")), p.pack_double(0.5);
                        p.pack(std::string("mood")), mood(p);
                        p.pack(std::string("mood_intensity")), intensity(p);
                      }}});
  };
  const std::vector<std::function<void(Packer&)>> bad_moods = {
      u(3), [](Packer& p) { p.pack_double(0.5); }, [](Packer& p) { p.pack_nil(); },
      [](Packer& p) { p.pack_true(); }, [](Packer& p) { p.pack_array(1), p.pack(std::string("happy")); },
      str("\xc0\xaf"),  // not UTF-8
  };
  for (const auto& mood : bad_moods) {
    const ControlsSet s = std::get<ControlsSet>(decode(controls_set(mood, str("high"))).body);
    EXPECT(!s.controls.mood);
    EXPECT(!s.controls.mood_intensity);
    REQUIRE(s.controls.strength.has_value());
    EXPECT_EQ(s.controls.strength->at(0).second, 0.5);
  }
  // A non-finite intensity is left out too; a well-typed mood beside it kept.
  const ControlsSet nan =
      std::get<ControlsSet>(decode(controls_set(str("happy"), [](Packer& p) { p.pack_double(std::nan("")); })).body);
  EXPECT(nan.controls.mood == std::optional<std::string>("happy"));
  EXPECT(!nan.controls.mood_intensity);
}

TEST_CASE("1.3: the encoders write the mood, and refuse a non-finite intensity") {
  SetControls only;
  only.stream = "npc1";
  only.controls.mood = std::string(kMoodAngry);
  const SetControls back = std::get<SetControls>(decode(encode_set_controls(only)).body);
  EXPECT(back.controls.mood == std::optional<std::string>("angry"));
  EXPECT(!back.controls.mood_intensity);

  OpenStream line;
  line.stream = "npc2";
  line.mode = std::string(kModeLine);
  line.controls = Controls{};
  line.controls->strength = NamedValues<double>{{"head", 0.5}};
  line.controls->mood = std::string(kMoodSurprised);
  line.controls->mood_intensity = 1.0;
  const OpenStream opened = std::get<OpenStream>(decode(encode_open_stream(line)).body);
  REQUIRE(opened.controls.has_value());
  EXPECT(opened.controls->mood == std::optional<std::string>("surprised"));
  EXPECT(opened.controls->mood_intensity == std::optional<double>(1.0));
  EXPECT(opened.controls->strength->at(0).second == 0.5);

  // An unknown mood is the runtime's to refuse (bad_controls, as error_bad_mood): it is sent.
  SetControls excited;
  excited.stream = "npc1";
  excited.controls.mood = "excited";
  EXPECT(std::get<SetControls>(decode(encode_set_controls(excited)).body).controls.mood ==
         std::optional<std::string>("excited"));

  for (double bad : {std::nan(""), std::numeric_limits<double>::infinity()}) {
    SetControls s;
    s.stream = "npc1";
    s.controls.mood = std::string(kMoodHappy);
    s.controls.mood_intensity = bad;
    try {
      (void)encode_set_controls(s);
      harness::report(__FILE__, __LINE__, "a non-finite mood_intensity encoded");
    } catch (const ProtocolError& e) {
      EXPECT(e.code() == ErrorCode::bad_controls);
      EXPECT_MSG(std::string(e.what()).find("mood_intensity") != std::string::npos, e.what());
    }
  }
}

// --- protocol 1.4 --------------------------------------------------------------------------------

TEST_CASE("1.4: controls_set and set_controls carry the style; an unknown style is bad_controls") {
  const ControlsSet set = std::get<ControlsSet>(decode(read_bytes(kGolden + "/controls_set.msgpack")).body);
  EXPECT(set.controls.style == std::optional<std::string>(kStyleNone));
  EXPECT(set.controls.mood == std::optional<std::string>("neutral"));
  const SetControls style = std::get<SetControls>(decode(read_bytes(kGolden + "/set_controls_style.msgpack")).body);
  EXPECT_EQ(style.stream, std::string("npc1"));
  EXPECT(style.controls.style == std::optional<std::string>("lively"));
  EXPECT(!style.controls.mood && !style.controls.mood_intensity);
  EXPECT(!style.controls.strength && !style.controls.shapes && !style.controls.smoothing_ms);
  EXPECT(!style.controls.timing_offset_ms);
  EXPECT(style.req == std::optional<std::uint64_t>(6));
  // A 1.3 (or 1.2) set_controls has none.
  EXPECT(!std::get<SetControls>(decode(read_bytes(kGolden + "/set_controls_mood.msgpack")).body).controls.style);
  EXPECT(!std::get<SetControls>(decode(read_bytes(kGolden + "/set_controls.msgpack")).body).controls.style);

  const Error e = std::get<Error>(decode(read_bytes(kGolden + "/error_bad_style.msgpack")).body);
  EXPECT(e.error_code() == ErrorCode::bad_controls);
  EXPECT(e.request_type == std::optional<std::string>("set_controls"));
  EXPECT(e.stream == std::optional<std::string>("npc1"));
  EXPECT(e.req == std::optional<std::uint64_t>(7));
  EXPECT_MSG(e.message.find("bouncy") != std::string::npos, e.message);
  for (std::string_view s : kStyles) EXPECT_MSG(e.message.find(s) != std::string::npos, std::string(s));
  const std::array<std::string_view, 6> styles = {"none", "still", "calm", "natural", "lively", "animated"};
  EXPECT(kStyles == styles);

  // A controls_set from a runtime whose config set a take file: its path, as it is.
  const std::string take = "/srv/ksdiff/takes/anchor.csv";
  const ControlsSet file = std::get<ControlsSet>(decode(pack_map({{"v", v10()},
                                                                  {"type", str("controls_set")},
                                                                  {"stream", str("mic")},
                                                                  {"controls",
                                                                   [take](Packer& p) {
                                                                     p.pack_map(3);
                                                                     p.pack(std::string("mood"));
                                                                     p.pack(std::string("happy"));
                                                                     p.pack(std::string("mood_intensity"));
                                                                     p.pack_double(0.5);
                                                                     p.pack(std::string("style"));
                                                                     p.pack(take);
                                                                   }},
                                                                  {"req", u(8)}}))
                                                     .body);
  EXPECT(file.controls.style == std::optional<std::string>(take));
  EXPECT(file.controls.mood == std::optional<std::string>(kMoodHappy));
  EXPECT(file.controls.mood_intensity == std::optional<double>(0.5));
  EXPECT(file.req == std::optional<std::uint64_t>(8));
}

TEST_CASE("1.4: a wrongly typed style is ignored, not refused") {
  const auto controls_set = [](const std::function<void(Packer&)>& style) {
    return pack_map({{"v", v10()},
                     {"type", str("controls_set")},
                     {"stream", str("npc1")},
                     {"controls", [style](Packer& p) {
                        p.pack_map(3);
                        p.pack(std::string("strength")), p.pack_map(1), p.pack(std::string("jaw")), p.pack_double(0.5);
                        p.pack(std::string("style")), style(p);
                        p.pack(std::string("mood")), p.pack(std::string("calm"));
                      }}});
  };
  const std::vector<std::function<void(Packer&)>> bad_styles = {
      u(3), [](Packer& p) { p.pack_double(0.5); }, [](Packer& p) { p.pack_nil(); },
      [](Packer& p) { p.pack_true(); }, [](Packer& p) { p.pack_array(1), p.pack(std::string("lively")); },
      str("\xc0\xaf"),  // not UTF-8
  };
  for (const auto& style : bad_styles) {
    const ControlsSet s = std::get<ControlsSet>(decode(controls_set(style)).body);
    EXPECT(!s.controls.style);
    EXPECT(s.controls.mood == std::optional<std::string>("calm"));
    REQUIRE(s.controls.strength.has_value());
    EXPECT_EQ(s.controls.strength->at(0).second, 0.5);
  }
}

TEST_CASE("1.4: the encoders write the style") {
  SetControls only;
  only.stream = "npc1";
  only.controls.style = std::string(kStyleStill);
  const SetControls back = std::get<SetControls>(decode(encode_set_controls(only)).body);
  EXPECT(back.controls.style == std::optional<std::string>("still"));
  EXPECT(!back.controls.mood && !back.controls.mood_intensity);

  OpenStream line;
  line.stream = "npc2";
  line.mode = std::string(kModeLine);
  line.controls = Controls{};
  line.controls->strength = NamedValues<double>{{"head", 0.5}};
  line.controls->mood = std::string(kMoodSad);
  line.controls->mood_intensity = 0.75;
  line.controls->style = std::string(kStyleAnimated);
  const OpenStream opened = std::get<OpenStream>(decode(encode_open_stream(line)).body);
  REQUIRE(opened.controls.has_value());
  EXPECT(opened.controls->style == std::optional<std::string>("animated"));
  EXPECT(opened.controls->mood == std::optional<std::string>("sad"));
  EXPECT(opened.controls->mood_intensity == std::optional<double>(0.75));
  EXPECT(opened.controls->strength->at(0).second == 0.5);

  // A take file a controls_set showed goes back unchanged; an unknown style is the runtime's to
  // refuse (bad_controls, as error_bad_style): both are sent.
  for (const char* name : {"/srv/ksdiff/takes/anchor.csv", "bouncy"}) {
    SetControls s;
    s.stream = "mic";
    s.controls.style = name;
    EXPECT_MSG(std::get<SetControls>(decode(encode_set_controls(s)).body).controls.style ==
                   std::optional<std::string>(name),
               name);
  }
}

HARNESS_MAIN()
