// Wire protocol v1.4: decoding with msgpack-c, validation per protocol/SPEC.md, request encoders.
//
// The checks mirror the reference implementation (sdk_python/ksdiff_sdk/protocol.py) field by
// field, in the same order, so a message gets the same error code from both.
#include "ksdiff/protocol.hpp"

#include <msgpack.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <initializer_list>
#include <iterator>
#include <limits>
#include <utility>

namespace ksdiff {

const std::array<std::string_view, kNumBlendshapes> kBlendshapeNames = {
    "eyeBlinkLeft",      "eyeLookDownLeft",    "eyeLookInLeft",     "eyeLookOutLeft",
    "eyeLookUpLeft",     "eyeSquintLeft",      "eyeWideLeft",       "eyeBlinkRight",
    "eyeLookDownRight",  "eyeLookInRight",     "eyeLookOutRight",   "eyeLookUpRight",
    "eyeSquintRight",    "eyeWideRight",       "jawForward",        "jawLeft",
    "jawRight",          "jawOpen",            "mouthClose",        "mouthFunnel",
    "mouthPucker",       "mouthLeft",          "mouthRight",        "mouthSmileLeft",
    "mouthSmileRight",   "mouthFrownLeft",     "mouthFrownRight",   "mouthDimpleLeft",
    "mouthDimpleRight",  "mouthStretchLeft",   "mouthStretchRight", "mouthRollLower",
    "mouthRollUpper",    "mouthShrugLower",    "mouthShrugUpper",   "mouthPressLeft",
    "mouthPressRight",   "mouthLowerDownLeft", "mouthLowerDownRight", "mouthUpperUpLeft",
    "mouthUpperUpRight", "browDownLeft",       "browDownRight",     "browInnerUp",
    "browOuterUpLeft",   "browOuterUpRight",   "cheekPuff",         "cheekSquintLeft",
    "cheekSquintRight",  "noseSneerLeft",      "noseSneerRight",    "tongueOut",
};
const std::array<std::string_view, 3> kHeadNames = {"headPitch", "headYaw", "headRoll"};
const std::array<std::string_view, 4> kGazeNames = {"leftEyeYaw", "leftEyePitch", "rightEyeYaw",
                                                    "rightEyePitch"};

ProtocolError::ProtocolError(ErrorCode code, const std::string& message)
    : std::runtime_error(std::string(to_string(code)) + ": " + message), code_(code) {}

std::string_view to_string(ErrorCode code) noexcept {
  switch (code) {
    case ErrorCode::malformed: return "malformed";
    case ErrorCode::too_large: return "too_large";
    case ErrorCode::unsupported_version: return "unsupported_version";
    case ErrorCode::unknown_type: return "unknown_type";
    case ErrorCode::unknown_stream: return "unknown_stream";
    case ErrorCode::bad_audio: return "bad_audio";
    case ErrorCode::busy: return "busy";
    case ErrorCode::forbidden: return "forbidden";
    case ErrorCode::bad_controls: return "bad_controls";
    case ErrorCode::internal: return "internal";
  }
  return "internal";
}

ErrorCode error_code_from_string(std::string_view code) noexcept {
  for (ErrorCode c : {ErrorCode::malformed, ErrorCode::too_large, ErrorCode::unsupported_version,
                      ErrorCode::unknown_type, ErrorCode::unknown_stream, ErrorCode::bad_audio,
                      ErrorCode::busy, ErrorCode::forbidden, ErrorCode::bad_controls,
                      ErrorCode::internal}) {
    if (to_string(c) == code) return c;
  }
  return ErrorCode::internal;  // SPEC 4.7: an unknown code is treated like `internal`
}

bool is_valid_stream_id(std::string_view stream_id) noexcept {
  if (stream_id.empty() || stream_id.size() > kMaxStreamIdChars) return false;
  if (stream_id == "." || stream_id == "..") return false;  // path components, refused since 1.1
  for (char c : stream_id) {
    const bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                    c == '_' || c == '.' || c == '-';
    if (!ok) return false;
  }
  return true;
}

bool is_valid_mode(std::string_view mode) noexcept { return mode == kModeLive || mode == kModeLine; }

namespace {

[[noreturn]] void fail(ErrorCode code, const std::string& message) {
  throw ProtocolError(code, message);
}

std::string quoted(std::string_view name) { return "'" + std::string(name) + "'"; }

}  // namespace

std::string frame_topic(std::string_view stream_id) {
  if (!is_valid_stream_id(stream_id)) fail(ErrorCode::malformed, "bad stream id");
  return std::string(kFrameTopicPrefix) + std::string(stream_id) + "/";
}

std::string stream_topic(std::string_view stream_id) {
  if (!is_valid_stream_id(stream_id)) fail(ErrorCode::malformed, "bad stream id");
  return std::string(kStreamTopicPrefix) + std::string(stream_id) + "/";
}

std::array<float, kNumBlendshapes> decode_blendshapes(const unsigned char* bytes) noexcept {
  std::array<float, kNumBlendshapes> out{};
  for (std::size_t i = 0; i < kNumBlendshapes; ++i) {
    const unsigned char* b = bytes + 4 * i;
    // Assemble the little-endian bytes into an integer *value*: this is correct on any host
    // byte order (a big-endian host gets the swap for free), then reinterpret the bits.
    const std::uint32_t bits = std::uint32_t{b[0]} | (std::uint32_t{b[1]} << 8) |
                               (std::uint32_t{b[2]} << 16) | (std::uint32_t{b[3]} << 24);
    std::memcpy(&out[i], &bits, sizeof(float));
  }
  return out;
}

namespace {

using msgpack::object;
namespace mt = msgpack::type;

// Strict UTF-8 (no overlong forms, no surrogates, nothing above U+10FFFF), as the reference
// decoder applies to every str. Returns the number of code points, or -1 when invalid.
long utf8_length(std::string_view s) {
  long count = 0;
  std::size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    std::size_t extra = 0;
    std::uint32_t cp = 0;
    if (c < 0x80) {
      cp = c;
    } else if (c >= 0xC2 && c <= 0xDF) {
      extra = 1;
      cp = c & 0x1Fu;
    } else if (c >= 0xE0 && c <= 0xEF) {
      extra = 2;
      cp = c & 0x0Fu;
    } else if (c >= 0xF0 && c <= 0xF4) {
      extra = 3;
      cp = c & 0x07u;
    } else {
      return -1;
    }
    if (i + extra >= s.size() && extra > 0) return -1;  // truncated sequence
    for (std::size_t k = 1; k <= extra; ++k) {
      const auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xC0u) != 0x80u) return -1;
      cp = (cp << 6) | (cc & 0x3Fu);
    }
    if ((extra == 2 && cp < 0x800) || (extra == 3 && (cp < 0x10000 || cp > 0x10FFFF)) ||
        (cp >= 0xD800 && cp <= 0xDFFF)) {
      return -1;
    }
    i += extra + 1;
    ++count;
  }
  return count;
}

std::string_view str_view(const object& o) { return {o.via.str.ptr, o.via.str.size}; }

// --- typed readers: each names the field in its error, with the SPEC's error code ----------

// `code` is for an integer out of [lo, hi]; anything that is not an integer at all is malformed
// (SPEC 3.2, since 1.1: a wrong type is always malformed, whatever code a wrong value gets).
std::uint64_t read_uint(const object& o, std::string_view name,
                        std::uint64_t lo = 0,
                        std::uint64_t hi = std::numeric_limits<std::uint64_t>::max(),
                        ErrorCode code = ErrorCode::malformed) {
  // The message is built only on failure (this runs for every integer of every frame).
  const auto want = [&] {
    return "field " + quoted(name) + " must be an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]";
  };
  // msgpack-c reports every non-negative integer, whatever its wire width, as POSITIVE_INTEGER,
  // and every negative one as NEGATIVE_INTEGER: a negative integer is a value out of range.
  if (o.type != mt::POSITIVE_INTEGER && o.type != mt::NEGATIVE_INTEGER) fail(ErrorCode::malformed, want());
  if (o.type == mt::NEGATIVE_INTEGER || o.via.u64 < lo || o.via.u64 > hi) fail(code, want());
  return o.via.u64;
}

std::uint32_t read_uint32(const object& o, std::string_view name, std::uint32_t lo = 0,
                          std::uint32_t hi = std::numeric_limits<std::uint32_t>::max(),
                          ErrorCode code = ErrorCode::malformed) {
  return static_cast<std::uint32_t>(read_uint(o, name, lo, hi, code));
}

std::int64_t read_int64(const object& o, std::string_view name) {
  if (o.type == mt::NEGATIVE_INTEGER) return o.via.i64;
  if (o.type == mt::POSITIVE_INTEGER &&
      o.via.u64 <= static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
    return static_cast<std::int64_t>(o.via.u64);
  }
  fail(ErrorCode::malformed, "field " + quoted(name) + " must be an int64");
}

std::optional<std::int64_t> read_int64_or_nil(const object& o, std::string_view name) {
  if (o.type == mt::NIL) return std::nullopt;
  return read_int64(o, name);
}

// A float field accepts float32, float64 or an integer of any width (SPEC 3.1); finite only.
double read_number(const object& o, std::string_view name) {
  double value = 0.0;
  switch (o.type) {
    case mt::FLOAT32:
    case mt::FLOAT64: value = o.via.f64; break;
    case mt::POSITIVE_INTEGER: value = static_cast<double>(o.via.u64); break;
    case mt::NEGATIVE_INTEGER: value = static_cast<double>(o.via.i64); break;
    default: fail(ErrorCode::malformed, "field " + quoted(name) + " must be a number");
  }
  if (!std::isfinite(value)) {
    fail(ErrorCode::malformed, "field " + quoted(name) + " must be finite");
  }
  return value;
}

// A finite double as float. Values beyond float's range saturate (a plain cast would be
// undefined behaviour): the SPEC's float32 fields are small angles and milliseconds anyway.
float to_float(double value) {
  constexpr double top = static_cast<double>(std::numeric_limits<float>::max());
  return static_cast<float>(value > top ? top : (value < -top ? -top : value));
}

bool read_bool(const object& o, std::string_view name) {
  if (o.type != mt::BOOLEAN) fail(ErrorCode::malformed, "field " + quoted(name) + " must be a bool");
  return o.via.boolean;
}

std::string read_string(const object& o, std::string_view name,
                        long max_chars = std::numeric_limits<long>::max(),
                        ErrorCode code = ErrorCode::malformed) {
  if (o.type != mt::STR) fail(ErrorCode::malformed, "field " + quoted(name) + " must be a string");
  const std::string_view s = str_view(o);
  const long chars = utf8_length(s);
  if (chars < 0) fail(ErrorCode::malformed, "field " + quoted(name) + " is not valid UTF-8");
  if (chars > max_chars) {
    fail(code, "field " + quoted(name) + " must be at most " + std::to_string(max_chars) +
                   " characters");
  }
  return std::string(s);
}

std::optional<std::string> read_string_or_nil(const object& o, std::string_view name) {
  if (o.type == mt::NIL) return std::nullopt;
  return read_string(o, name);
}

// `code` is for a string that is none of `options`; a value that is not a string is malformed.
std::string read_one_of(const object& o, std::string_view name,
                        std::initializer_list<std::string_view> options,
                        ErrorCode code = ErrorCode::malformed) {
  if (o.type == mt::STR) {
    for (std::string_view option : options) {
      if (str_view(o) == option) return std::string(option);
    }
  }
  std::string all;
  for (std::string_view option : options) all += (all.empty() ? "" : ", ") + std::string(option);
  fail(o.type == mt::STR ? code : ErrorCode::malformed, "field " + quoted(name) + " must be one of " + all);
}

std::string read_stream_id(const object& o, std::string_view name) {
  if (o.type != mt::STR || !is_valid_stream_id(str_view(o))) {
    fail(ErrorCode::malformed,
         "field " + quoted(name) + " must be a stream id (1..64 chars of [A-Za-z0-9_.-], not '.' or '..')");
  }
  return std::string(str_view(o));
}

std::string_view read_bin(const object& o, std::string_view name) {
  if (o.type != mt::BIN) fail(ErrorCode::malformed, "field " + quoted(name) + " must be bin");
  return {o.via.bin.ptr, o.via.bin.size};
}

template <std::size_t N>
std::array<float, N> read_float_array(const object& o, std::string_view name) {
  if (o.type != mt::ARRAY || o.via.array.size != N) {
    fail(ErrorCode::malformed,
         "field " + quoted(name) + " must be an array of " + std::to_string(N) + " numbers");
  }
  std::array<float, N> out{};
  for (std::size_t i = 0; i < N; ++i) {
    out[i] = to_float(read_number(o.via.array.ptr[i], name));
  }
  return out;
}

std::vector<std::string> read_string_array(const object& o, std::string_view name, std::size_t n) {
  if (o.type != mt::ARRAY || o.via.array.size != n) {
    fail(ErrorCode::malformed,
         "field " + quoted(name) + " must be an array of " + std::to_string(n) + " strings");
  }
  std::vector<std::string> out;
  out.reserve(n);
  for (std::size_t i = 0; i < n; ++i) out.push_back(read_string(o.via.array.ptr[i], name));
  return out;
}

std::array<float, kNumBlendshapes> read_blendshapes(const object& o, std::string_view name) {
  const std::string_view bin = read_bin(o, name);
  if (bin.size() != kBlendshapeBytes) {
    fail(ErrorCode::malformed, "field " + quoted(name) +
                                   " must be a bin of 208 bytes (52 little-endian float32), got " +
                                   std::to_string(bin.size()));
  }
  auto values = decode_blendshapes(reinterpret_cast<const unsigned char*>(bin.data()));
  for (float v : values) {
    if (!std::isfinite(v)) fail(ErrorCode::malformed, "field " + quoted(name) + " has non-finite values");
  }
  return values;
}

// stats.refused (1.1): a map of str -> uint (error code -> count). Codes this client does not
// know are kept as they are: they are counts, not something to act on.
std::map<std::string, std::uint64_t> read_count_map(const object& o, std::string_view name) {
  if (o.type != mt::MAP) fail(ErrorCode::malformed, "field " + quoted(name) + " must be a map of str -> uint");
  std::map<std::string, std::uint64_t> out;
  for (std::uint32_t i = 0; i < o.via.map.size; ++i) {
    const msgpack::object_kv& kv = o.via.map.ptr[i];
    if (kv.key.type != mt::STR || kv.val.type != mt::POSITIVE_INTEGER) {
      fail(ErrorCode::malformed, "field " + quoted(name) + " must be a map of str -> uint");
    }
    out[read_string(kv.key, name)] = kv.val.via.u64;
  }
  return out;
}

// A finite number, or nothing (for controls' entries, kept only when well typed).
std::optional<double> number_if_any(const object& o) {
  double value = 0.0;
  switch (o.type) {
    case mt::FLOAT32:
    case mt::FLOAT64: value = o.via.f64; break;
    case mt::POSITIVE_INTEGER: value = static_cast<double>(o.via.u64); break;
    case mt::NEGATIVE_INTEGER: value = static_cast<double>(o.via.i64); break;
    default: return std::nullopt;
  }
  if (!std::isfinite(value)) return std::nullopt;
  return value;
}

// The value of `key` in map `o` (last one wins, as in Python), or nullptr.
const object* map_value(const object& o, std::string_view key) {
  const object* found = nullptr;
  for (std::uint32_t i = 0; i < o.via.map.size; ++i) {
    const msgpack::object_kv& kv = o.via.map.ptr[i];
    if (kv.key.type == mt::STR && str_view(kv.key) == key) found = &kv.val;
  }
  return found;
}

// name -> T for the entries of map `o` that `read` accepts (it returns nullopt to skip one).
template <typename T, typename Read>
std::optional<NamedValues<T>> read_named(const object* o, Read read) {
  if (o == nullptr || o->type != mt::MAP) return std::nullopt;
  NamedValues<T> out;
  for (std::uint32_t i = 0; i < o->via.map.size; ++i) {
    const msgpack::object_kv& kv = o->via.map.ptr[i];
    if (kv.key.type != mt::STR || utf8_length(str_view(kv.key)) < 0) continue;
    std::optional<T> value = read(kv.val);
    if (!value) continue;
    const std::string name(str_view(kv.key));
    auto same = std::find_if(out.begin(), out.end(), [&](const auto& e) { return e.first == name; });
    if (same != out.end()) same->second = *value;  // a repeated key: the last one wins
    else out.emplace_back(name, *value);
  }
  return out;
}

// open_stream.controls, set_controls.controls, controls_set.controls (1.2; the mood 1.3; the style
// 1.4): the protocol asks for a map with string keys (else malformed); its content is the
// runtime's to judge (bad_controls), so a reader keeps the well-typed entries and ignores the rest
// (a mood or style that is not a string, an intensity that is not a finite number).
Controls read_controls(const object& o, std::string_view name) {
  bool ok = o.type == mt::MAP;
  for (std::uint32_t i = 0; ok && i < o.via.map.size; ++i) ok = o.via.map.ptr[i].key.type == mt::STR;
  if (!ok) fail(ErrorCode::malformed, "field " + quoted(name) + " must be a map with str keys");
  Controls c;
  c.strength = read_named<double>(map_value(o, "strength"), number_if_any);
  c.shapes = read_named<ShapeControl>(map_value(o, "shapes"), [](const object& v) -> std::optional<ShapeControl> {
    if (v.type != mt::MAP) return std::nullopt;
    ShapeControl s;
    const auto field = [&v](std::string_view key) {
      const object* x = map_value(v, key);
      return x == nullptr ? std::nullopt : number_if_any(*x);
    };
    s.gain = field("gain");
    s.offset = field("offset");
    s.min = field("min");
    s.max = field("max");
    return s;
  });
  c.smoothing_ms = read_named<double>(map_value(o, "smoothing_ms"), number_if_any);
  if (const object* t = map_value(o, "timing_offset_ms")) c.timing_offset_ms = number_if_any(*t);
  const object* mood = map_value(o, "mood");
  if (mood != nullptr && mood->type == mt::STR && utf8_length(str_view(*mood)) >= 0) c.mood = std::string(str_view(*mood));
  if (const object* intensity = map_value(o, "mood_intensity")) c.mood_intensity = number_if_any(*intensity);
  const object* style = map_value(o, "style");  // 1.4
  if (style != nullptr && style->type == mt::STR && utf8_length(str_view(*style)) >= 0) {
    c.style = std::string(str_view(*style));
  }
  return c;
}

// The keys of one msgpack map. Lookup is by exact key; keys this client does not know are
// simply never looked up, which is how unknown keys are ignored (SPEC 3.1).
class Fields {
 public:
  Fields(const object& map, std::string context) : map_(map.via.map), context_(std::move(context)) {
    for (std::uint32_t i = 0; i < map_.size; ++i) {
      if (map_.ptr[i].key.type != mt::STR) {
        fail(ErrorCode::malformed, context_ + ": map keys must be strings");
      }
    }
  }

  // The value of `key`, or nullptr. With duplicate keys the last one wins (as in Python).
  const object* find(std::string_view key) const {
    const object* found = nullptr;
    for (std::uint32_t i = 0; i < map_.size; ++i) {
      if (str_view(map_.ptr[i].key) == key) found = &map_.ptr[i].val;
    }
    return found;
  }

  const object& required(std::string_view key) const {
    const object* value = find(key);
    if (value == nullptr) fail(ErrorCode::malformed, context_ + ": field " + quoted(key) + " missing");
    return *value;
  }

  // Runs `read` on the field when present (context-prefixed errors), else leaves `out` empty.
  template <typename T, typename Read>
  void optional(std::string_view key, std::optional<T>& out, Read read) const {
    if (const object* value = find(key)) out = with_context([&] { return read(*value, key); });
  }

  // Re-throws a reader's error with the message type in front ("frame: field 'seq' ...").
  template <typename Fn>
  auto with_context(Fn fn) const -> decltype(fn()) {
    try {
      return fn();
    } catch (const ProtocolError& e) {
      throw ProtocolError(e.code(), context_ + ": " + strip_code(e.what()));
    }
  }

  template <typename Read>
  auto get(std::string_view key, Read read) const -> decltype(read(std::declval<const object&>(), key)) {
    const object& value = required(key);
    return with_context([&] { return read(value, key); });
  }

 private:
  static std::string strip_code(const char* what) {
    const std::string s(what);
    const auto colon = s.find(": ");
    return colon == std::string::npos ? s : s.substr(colon + 2);
  }

  const msgpack::object_map& map_;
  std::string context_;
};

// Small adaptors so the per-type decoders read like the SPEC's tables.
auto uint_any = [](const object& o, std::string_view n) { return read_uint(o, n); };
auto uint32_pos = [](const object& o, std::string_view n) { return read_uint32(o, n, 1); };
auto int64_any = [](const object& o, std::string_view n) { return read_int64(o, n); };
auto number = [](const object& o, std::string_view n) { return read_number(o, n); };
auto stream_id = [](const object& o, std::string_view n) { return read_stream_id(o, n); };
auto source_kind = [](const object& o, std::string_view n) {
  return read_one_of(o, n, {"mic", "file", "sdk"});
};
auto mode_kind = [](const object& o, std::string_view n) {
  return read_one_of(o, n, {kModeLive, kModeLine});
};
auto string_max = [](long max_chars) {
  return [max_chars](const object& o, std::string_view n) { return read_string(o, n, max_chars); };
};

Hello decode_hello(const Fields& f) {
  Hello h;
  // The runtime's hello has all of these; a client's hello request has none of them.
  static constexpr std::string_view kRuntimeKeys[] = {
      "runtime", "fps", "sample_rate", "blendshapes", "head", "head_units", "head_convention",
      "gaze", "gaze_units", "gaze_convention", "max_message_bytes"};
  std::size_t present = 0;
  for (std::string_view key : kRuntimeKeys) present += f.find(key) != nullptr ? 1 : 0;

  std::optional<std::string> runtime, head_units, head_convention, gaze_units, gaze_convention;
  std::optional<std::uint32_t> fps, sample_rate;
  std::optional<std::vector<std::string>> blendshapes, head, gaze;
  std::optional<std::uint64_t> max_message_bytes;
  f.optional("runtime", runtime, string_max(200));
  f.optional("fps", fps, uint32_pos);
  f.optional("sample_rate", sample_rate, uint32_pos);
  f.optional("blendshapes", blendshapes,
             [](const object& o, std::string_view n) { return read_string_array(o, n, kNumBlendshapes); });
  f.optional("head", head, [](const object& o, std::string_view n) { return read_string_array(o, n, 3); });
  f.optional("head_units", head_units, string_max(20));
  f.optional("head_convention", head_convention, string_max(1000));
  f.optional("gaze", gaze, [](const object& o, std::string_view n) { return read_string_array(o, n, 4); });
  f.optional("gaze_units", gaze_units, string_max(20));
  f.optional("gaze_convention", gaze_convention, string_max(1000));
  f.optional("max_message_bytes", max_message_bytes, uint_any);
  f.optional("instance", h.instance, string_max(64));
  f.optional("req", h.req, uint_any);

  if (present != 0 && present != std::size(kRuntimeKeys)) {
    std::string missing;
    for (std::string_view key : kRuntimeKeys) {
      if (f.find(key) == nullptr) missing += (missing.empty() ? "" : ", ") + std::string(key);
    }
    fail(ErrorCode::malformed, "hello: runtime hello lacks " + missing);
  }
  if (present == 0) return h;  // a request: {v, type, req?}

  h.from_runtime = true;
  h.runtime = *runtime;
  h.fps = *fps;
  h.sample_rate = *sample_rate;
  h.blendshapes = *blendshapes;
  std::copy(head->begin(), head->end(), h.head.begin());
  h.head_units = *head_units;
  h.head_convention = *head_convention;
  std::copy(gaze->begin(), gaze->end(), h.gaze.begin());
  h.gaze_units = *gaze_units;
  h.gaze_convention = *gaze_convention;
  h.max_message_bytes = *max_message_bytes;
  return h;
}

Frame decode_frame(const Fields& f) {
  Frame fr;
  fr.stream = f.get("stream", stream_id);
  fr.seq = f.get("seq", uint_any);
  fr.index = f.get("index", uint_any);
  fr.fps = f.get("fps", uint32_pos);
  fr.t_audio = f.get("t_audio", number);
  fr.blendshapes = f.get("blendshapes", read_blendshapes);
  fr.head = f.get("head", read_float_array<3>);
  fr.gaze = f.get("gaze", read_float_array<4>);
  fr.captured_ns = f.get("captured_ns", read_int64_or_nil);
  fr.published_ns = f.get("published_ns", int64_any);
  fr.lookahead_ms = to_float(f.get("lookahead_ms", number));
  fr.compute_ms = to_float(f.get("compute_ms", number));
  fr.last = f.get("last", read_bool);
  return fr;
}

StreamStart decode_stream_start(const Fields& f) {
  StreamStart s;
  s.stream = f.get("stream", stream_id);
  s.source = f.get("source", source_kind);
  s.published_ns = f.get("published_ns", int64_any);
  f.optional("mode", s.mode, mode_kind);              // 1.2
  f.optional("latency_ms", s.latency_ms, number);     // 1.2
  return s;
}

StreamEnd decode_stream_end(const Fields& f) {
  StreamEnd s;
  s.stream = f.get("stream", stream_id);
  s.source = f.get("source", source_kind);
  s.reason = f.get("reason", [](const object& o, std::string_view n) {
    return read_one_of(o, n, {"ended", "timeout", "error", "shutdown"});
  });
  s.frames = f.get("frames", uint_any);
  s.published_ns = f.get("published_ns", int64_any);
  return s;
}

Stats decode_stats(const Fields& f) {
  Stats s;
  s.uptime_s = f.get("uptime_s", number);
  const object& streams = f.required("streams");
  if (streams.type != mt::MAP) fail(ErrorCode::malformed, "stats: field 'streams' must be a map");
  for (std::uint32_t i = 0; i < streams.via.map.size; ++i) {
    const msgpack::object_kv& kv = streams.via.map.ptr[i];
    if (kv.key.type != mt::STR || !is_valid_stream_id(str_view(kv.key))) {
      fail(ErrorCode::malformed, "stats: 'streams' keys must be stream ids");
    }
    const std::string sid(str_view(kv.key));
    if (kv.val.type != mt::MAP) fail(ErrorCode::malformed, "stats: streams." + sid + " must be a map");
    const Fields entry(kv.val, "stats: streams." + sid);
    StreamStats st;
    st.fps = entry.get("fps", number);
    st.latency_p50_ms = entry.get("latency_p50_ms", number);
    st.latency_p95_ms = entry.get("latency_p95_ms", number);
    st.frames = entry.get("frames", uint_any);
    st.drops = entry.get("drops", uint_any);
    // Optional keys that readers must not require: kept when well-typed, ignored otherwise.
    if (const object* src = entry.find("source"); src && src->type == mt::STR) {
      st.source = std::string(str_view(*src));
    }
    if (const object* san = entry.find("sanitized"); san && san->type == mt::POSITIVE_INTEGER) {
      st.sanitized = san->via.u64;
    }
    if (const object* shed = entry.find("shed"); shed && shed->type == mt::POSITIVE_INTEGER) {
      st.shed = shed->via.u64;  // 1.1
    }
    s.streams[sid] = std::move(st);
  }
  s.drops = f.get("drops", uint_any);
  s.published_ns = f.get("published_ns", int64_any);
  // 1.1's optional top-level keys are checked when present, as the reference decoder does.
  f.optional("refused", s.refused, read_count_map);
  f.optional("capacity", s.capacity, uint_any);
  return s;
}

OpenStream decode_open_stream(const Fields& f) {
  OpenStream o;
  f.optional("stream", o.stream, stream_id);
  // Out-of-range audio parameters are `bad_audio`; of the wrong type, `malformed` (SPEC 3.2, 4.6).
  o.sample_rate = f.get("sample_rate", [](const object& v, std::string_view n) {
    return read_uint32(v, n, 8000, 192000, ErrorCode::bad_audio);
  });
  o.channels = f.get("channels", [](const object& v, std::string_view n) {
    return read_uint32(v, n, 1, 8, ErrorCode::bad_audio);
  });
  o.format = f.get("format", [](const object& v, std::string_view n) {
    return read_one_of(v, n, {"f32le", "s16le"}, ErrorCode::bad_audio);
  });
  f.optional("transcript", o.transcript, string_max(2000));
  f.optional("seed", o.seed, int64_any);
  f.optional("mode", o.mode, mode_kind);             // 1.2
  f.optional("controls", o.controls, read_controls);  // 1.2
  f.optional("req", o.req, uint_any);
  return o;
}

Audio decode_audio(const Fields& f) {
  Audio a;
  a.stream = f.get("stream", stream_id);
  a.seq = f.get("seq", uint_any);
  f.optional("at_sample", a.at_sample, uint_any);
  a.pcm = std::string(f.get("pcm", read_bin));
  return a;
}

EndStream decode_end_stream(const Fields& f) {
  EndStream e;
  e.stream = f.get("stream", stream_id);
  f.optional("req", e.req, uint_any);
  return e;
}

StreamOpened decode_stream_opened(const Fields& f) {
  StreamOpened s;
  s.stream = f.get("stream", stream_id);
  s.fps = f.get("fps", uint32_pos);
  f.optional("max_ahead_s", s.max_ahead_s, number);  // 1.1
  f.optional("mode", s.mode, mode_kind);              // 1.2
  f.optional("latency_ms", s.latency_ms, number);     // 1.2
  f.optional("req", s.req, uint_any);
  return s;
}

SetControls decode_set_controls(const Fields& f) {
  SetControls s;
  s.stream = f.get("stream", stream_id);
  s.controls = f.get("controls", read_controls);
  f.optional("req", s.req, uint_any);
  return s;
}

ControlsSet decode_controls_set(const Fields& f) {
  ControlsSet s;
  s.stream = f.get("stream", stream_id);
  s.controls = f.get("controls", read_controls);
  f.optional("req", s.req, uint_any);
  return s;
}

StreamEnded decode_stream_ended(const Fields& f) {
  StreamEnded s;
  s.stream = f.get("stream", stream_id);
  s.frames = f.get("frames", uint_any);
  f.optional("req", s.req, uint_any);
  return s;
}

Error decode_error(const Fields& f) {
  Error e;
  // Any code string decodes: a newer runtime may add codes (the client maps them to internal).
  e.code = f.get("code", string_max(64));
  e.message = f.get("message", string_max(1000));
  e.request_type = f.get("request_type", read_string_or_nil);
  f.optional("stream", e.stream, stream_id);
  f.optional("req", e.req, uint_any);
  return e;
}

}  // namespace

Message decode(const void* data, std::size_t size) {
  if (size > kMaxMessageBytes) {
    fail(ErrorCode::too_large, "message of " + std::to_string(size) + " bytes exceeds " +
                                   std::to_string(kMaxMessageBytes));
  }
  // No container can hold more elements than the payload has bytes: these limits stop a
  // 5-byte "array of 4 billion elements" header from making msgpack-c allocate for them.
  const msgpack::unpack_limit limit(size, size / 2 + 1, size, size, size, 64);
  msgpack::object_handle handle;
  std::size_t offset = 0;
  try {
    handle = msgpack::unpack(static_cast<const char*>(data), size, offset, nullptr, nullptr, limit);
  } catch (const msgpack::unpack_error& e) {
    fail(ErrorCode::malformed, std::string("not one valid msgpack value: ") + e.what());
  }
  if (offset != size) {
    fail(ErrorCode::malformed, "trailing bytes after the msgpack value (" +
                                   std::to_string(size - offset) + ")");
  }
  const object& root = handle.get();
  if (root.type != mt::MAP) fail(ErrorCode::malformed, "a message must be a msgpack map");
  const Fields top(root, "message");

  const object* v = top.find("v");
  const bool v_ok = v != nullptr && v->type == mt::ARRAY && v->via.array.size == 2 &&
                    v->via.array.ptr[0].type == mt::POSITIVE_INTEGER &&
                    v->via.array.ptr[1].type == mt::POSITIVE_INTEGER &&
                    v->via.array.ptr[0].via.u64 <= std::numeric_limits<std::uint32_t>::max() &&
                    v->via.array.ptr[1].via.u64 <= std::numeric_limits<std::uint32_t>::max();
  if (!v_ok) fail(ErrorCode::malformed, "field 'v' must be [major, minor] (two uints)");
  Message msg;
  msg.major = static_cast<std::uint32_t>(v->via.array.ptr[0].via.u64);
  msg.minor = static_cast<std::uint32_t>(v->via.array.ptr[1].via.u64);
  if (msg.major != kProtocolMajor) {
    fail(ErrorCode::unsupported_version, "protocol major " + std::to_string(msg.major) +
                                             " not supported (this client speaks 1)");
  }
  const object* type = top.find("type");
  if (type == nullptr || type->type != mt::STR || utf8_length(str_view(*type)) < 0) {
    fail(ErrorCode::malformed, "field 'type' must be a string");
  }
  msg.type = std::string(str_view(*type));

  const Fields f(root, msg.type);
  const std::string& t = msg.type;
  if (t == "hello") msg.body = decode_hello(f);
  else if (t == "frame") msg.body = decode_frame(f);
  else if (t == "stream_start") msg.body = decode_stream_start(f);
  else if (t == "stream_end") msg.body = decode_stream_end(f);
  else if (t == "stats") msg.body = decode_stats(f);
  else if (t == "open_stream") msg.body = decode_open_stream(f);
  else if (t == "audio") msg.body = decode_audio(f);
  else if (t == "end_stream") msg.body = decode_end_stream(f);
  else if (t == "set_controls") msg.body = decode_set_controls(f);
  else if (t == "stream_opened") msg.body = decode_stream_opened(f);
  else if (t == "stream_ended") msg.body = decode_stream_ended(f);
  else if (t == "controls_set") msg.body = decode_controls_set(f);
  else if (t == "error") msg.body = decode_error(f);
  else fail(ErrorCode::unknown_type, "unknown message type '" + t + "'");
  return msg;
}

// --- encoders ---------------------------------------------------------------------------------

namespace {

class Writer {
 public:
  // Map header with the two common keys; `fields` counts the keys that follow them.
  Writer(std::string_view type, std::uint32_t fields) : packer_(&buffer_) {
    packer_.pack_map(2 + fields);
    key("v");
    packer_.pack_array(2);
    packer_.pack_uint32(kProtocolMajor);
    packer_.pack_uint32(kProtocolMinor);
    key("type");
    str(type);
  }
  void key(std::string_view k) { str(k); }
  void str(std::string_view s) {
    packer_.pack_str(static_cast<std::uint32_t>(s.size()));
    packer_.pack_str_body(s.data(), static_cast<std::uint32_t>(s.size()));
  }
  void bin(std::string_view b) {
    packer_.pack_bin(static_cast<std::uint32_t>(b.size()));
    packer_.pack_bin_body(b.data(), static_cast<std::uint32_t>(b.size()));
  }
  // msgpack-c picks the smallest integer form, like the reference encoder.
  void uint(std::uint64_t x) { packer_.pack_uint64(x); }
  void sint(std::int64_t x) { packer_.pack_int64(x); }
  // Always the float64 form, as msgpack-python packs a Python float (msgpack-c's pack_double
  // would write an integral value such as 80.0 as an integer).
  void float64(double x) {
    std::uint64_t bits = 0;
    std::memcpy(&bits, &x, sizeof bits);
    char bytes[9] = {static_cast<char>(0xcb)};
    for (int k = 0; k < 8; ++k) bytes[1 + k] = static_cast<char>((bits >> (8 * (7 - k))) & 0xFF);
    buffer_.write(bytes, sizeof bytes);
  }
  void map(std::uint32_t n) { packer_.pack_map(n); }

  std::string done() {
    if (buffer_.size() > kMaxMessageBytes) {
      fail(ErrorCode::too_large, "request of " + std::to_string(buffer_.size()) + " bytes exceeds " +
                                     std::to_string(kMaxMessageBytes));
    }
    return std::string(buffer_.data(), buffer_.size());
  }

 private:
  msgpack::sbuffer buffer_;
  msgpack::packer<msgpack::sbuffer> packer_;
};

void require_stream_id(std::string_view id) {
  if (!is_valid_stream_id(id)) {
    fail(ErrorCode::malformed,
         "bad stream id '" + std::string(id) + "': need 1..64 chars of [A-Za-z0-9_.-], not '.' or '..'");
  }
}

void require_mode(std::string_view mode) {
  if (!is_valid_mode(mode)) fail(ErrorCode::malformed, "mode must be live or line, got '" + std::string(mode) + "'");
}

double finite_control(double x, const std::string& name) {
  if (!std::isfinite(x)) fail(ErrorCode::bad_controls, name + " must be a finite number");
  return x;
}

// Keys in the order of the runtime's Controls.to_dict (strength, shapes, smoothing_ms,
// timing_offset_ms, mood, mood_intensity, style), entries in the caller's order; every number as
// float64.
void write_controls(Writer& w, const Controls& c) {
  const auto write_regions = [&w](const char* key, const NamedValues<double>& values) {
    w.key(key);
    w.map(static_cast<std::uint32_t>(values.size()));
    for (const auto& [name, value] : values) {
      w.str(name);
      w.float64(finite_control(value, std::string(key) + "." + name));
    }
  };
  w.map((c.strength ? 1 : 0) + (c.shapes ? 1 : 0) + (c.smoothing_ms ? 1 : 0) + (c.timing_offset_ms ? 1 : 0) +
        (c.mood ? 1 : 0) + (c.mood_intensity ? 1 : 0) + (c.style ? 1 : 0));
  if (c.strength) write_regions("strength", *c.strength);
  if (c.shapes) {
    w.key("shapes");
    w.map(static_cast<std::uint32_t>(c.shapes->size()));
    for (const auto& [name, shape] : *c.shapes) {
      w.str(name);
      const std::pair<const char*, const std::optional<double>*> fields[] = {
          {"gain", &shape.gain}, {"offset", &shape.offset}, {"min", &shape.min}, {"max", &shape.max}};
      std::uint32_t n = 0;
      for (const auto& field : fields) n += field.second->has_value() ? 1 : 0;
      w.map(n);
      for (const auto& [key, value] : fields) {
        if (!*value) continue;
        w.key(key);
        w.float64(finite_control(**value, "shapes." + name + "." + key));
      }
    }
  }
  if (c.smoothing_ms) write_regions("smoothing_ms", *c.smoothing_ms);
  if (c.timing_offset_ms) {
    w.key("timing_offset_ms");
    w.float64(finite_control(*c.timing_offset_ms, "timing_offset_ms"));
  }
  if (c.mood) {  // 1.3
    w.key("mood");
    w.str(*c.mood);
  }
  if (c.mood_intensity) {
    w.key("mood_intensity");
    w.float64(finite_control(*c.mood_intensity, "mood_intensity"));
  }
  if (c.style) {  // 1.4
    w.key("style");
    w.str(*c.style);
  }
}

}  // namespace

std::string encode_hello_request(std::optional<std::uint64_t> req) {
  Writer w("hello", req ? 1 : 0);
  if (req) {
    w.key("req");
    w.uint(*req);
  }
  return w.done();
}

std::string encode_open_stream(const OpenStream& r) {
  if (r.stream) require_stream_id(*r.stream);
  if (r.sample_rate < 8000 || r.sample_rate > 192000) {
    fail(ErrorCode::bad_audio, "sample_rate must be in [8000, 192000]");
  }
  if (r.channels < 1 || r.channels > 8) fail(ErrorCode::bad_audio, "channels must be in [1, 8]");
  if (r.format != "f32le" && r.format != "s16le") fail(ErrorCode::bad_audio, "format must be f32le or s16le");
  if (r.transcript) {
    const long chars = utf8_length(*r.transcript);
    if (chars < 0 || chars > 2000) fail(ErrorCode::malformed, "transcript: at most 2000 UTF-8 characters");
  }
  if (r.mode) require_mode(*r.mode);
  const std::uint32_t n = 3 + (r.stream ? 1 : 0) + (r.transcript ? 1 : 0) + (r.seed ? 1 : 0) +
                          (r.mode ? 1 : 0) + (r.controls ? 1 : 0) + (r.req ? 1 : 0);
  Writer w("open_stream", n);
  if (r.stream) {
    w.key("stream");
    w.str(*r.stream);
  }
  w.key("sample_rate");
  w.uint(r.sample_rate);
  w.key("channels");
  w.uint(r.channels);
  w.key("format");
  w.str(r.format);
  if (r.transcript) {
    w.key("transcript");
    w.str(*r.transcript);
  }
  if (r.seed) {
    w.key("seed");
    w.sint(*r.seed);
  }
  if (r.mode) {
    w.key("mode");
    w.str(*r.mode);
  }
  if (r.controls) {
    w.key("controls");
    write_controls(w, *r.controls);
  }
  if (r.req) {
    w.key("req");
    w.uint(*r.req);
  }
  return w.done();
}

std::string encode_audio(const Audio& r) {
  require_stream_id(r.stream);
  Writer w("audio", 3 + (r.at_sample ? 1 : 0));
  w.key("stream");
  w.str(r.stream);
  w.key("seq");
  w.uint(r.seq);
  if (r.at_sample) {
    w.key("at_sample");
    w.uint(*r.at_sample);
  }
  w.key("pcm");
  w.bin(r.pcm);
  return w.done();
}

std::string encode_end_stream(const EndStream& r) {
  require_stream_id(r.stream);
  Writer w("end_stream", 1 + (r.req ? 1 : 0));
  w.key("stream");
  w.str(r.stream);
  if (r.req) {
    w.key("req");
    w.uint(*r.req);
  }
  return w.done();
}

std::string encode_set_controls(const SetControls& r) {
  require_stream_id(r.stream);
  Writer w("set_controls", 2 + (r.req ? 1 : 0));
  w.key("stream");
  w.str(r.stream);
  w.key("controls");
  write_controls(w, r.controls);
  if (r.req) {
    w.key("req");
    w.uint(*r.req);
  }
  return w.done();
}

}  // namespace ksdiff
