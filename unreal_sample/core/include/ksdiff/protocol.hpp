// Wire protocol v1.4 of ksdiff-runtime (protocol/SPEC.md): message types, decoding and the
// client's request encoders. It reads any minor of major 1 and writes minor 4.
//
// This header is free of ZeroMQ and msgpack includes on purpose: the Unreal module (and any
// other host) includes it without seeing either library; only protocol.cpp uses msgpack-c.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

namespace ksdiff {

inline constexpr std::uint32_t kProtocolMajor = 1;
// The minor this client writes in its requests (the golden request vectors carry [1, 4]). It
// reads any minor of major 1: a higher minor only adds optional keys and message types, so a
// 1.4 client still reads a 1.3, 1.2 or 1.1 runtime (whose messages lack the later keys).
inline constexpr std::uint32_t kProtocolMinor = 4;
inline constexpr std::size_t kNumBlendshapes = 52;
inline constexpr std::size_t kBlendshapeBytes = 4 * kNumBlendshapes;  // 208: 52 float32 LE
inline constexpr std::size_t kMaxMessageBytes = std::size_t{1} << 20;  // SPEC 3.4
inline constexpr std::size_t kMaxStreamIdChars = 64;

// The 52 ARKit blendshapes in the protocol's canonical order (SPEC 5.1).
extern const std::array<std::string_view, kNumBlendshapes> kBlendshapeNames;
// Names of frame.head and frame.gaze, in wire order (SPEC 4.1).
extern const std::array<std::string_view, 3> kHeadNames;  // headPitch, headYaw, headRoll
extern const std::array<std::string_view, 4> kGazeNames;  // leftEyeYaw, leftEyePitch, right...

// --- topics (SPEC 2) ------------------------------------------------------------------------
inline constexpr std::string_view kTopicRoot = "ksd1/";
inline constexpr std::string_view kFrameTopicPrefix = "ksd1/frame/";
inline constexpr std::string_view kStreamTopicPrefix = "ksd1/stream/";
inline constexpr std::string_view kStatsTopic = "ksd1/stats/";
inline constexpr std::string_view kHelloTopic = "ksd1/hello/";

// 1..64 characters of [A-Za-z0-9_.-], and not "." or ".." (refused since 1.1: tools and receivers
// use a stream id as a file or URL path segment).
bool is_valid_stream_id(std::string_view stream_id) noexcept;
// "ksd1/frame/<id>/" and "ksd1/stream/<id>/"; throw ProtocolError(malformed) on a bad id.
std::string frame_topic(std::string_view stream_id);
std::string stream_topic(std::string_view stream_id);

// --- errors (SPEC 4.7) ----------------------------------------------------------------------
enum class ErrorCode {
  malformed,
  too_large,
  unsupported_version,
  unknown_type,
  unknown_stream,
  bad_audio,
  busy,
  forbidden,  // 1.1: the stream belongs to another client connection (or to the runtime itself)
  bad_controls,  // 1.2: controls out of range, or naming an unknown region or blendshape (1.3: mood; 1.4: style)
  internal,
};
std::string_view to_string(ErrorCode code) noexcept;
// A code string from the wire; codes this client does not know map to `internal` (SPEC 4.7).
ErrorCode error_code_from_string(std::string_view code) noexcept;

// A message that breaks the protocol, with the code the runtime would answer it with.
class ProtocolError : public std::runtime_error {
 public:
  ProtocolError(ErrorCode code, const std::string& message);
  ErrorCode code() const noexcept { return code_; }

 private:
  ErrorCode code_;
};

// --- stream modes and artists' controls (1.2; the mood 1.3; the style 1.4) -----------------
// How the runtime animates a stream: "live" (audio at the pace it is spoken; frames within the
// runtime's deadline) or "line" (the audio of a whole line is there, or comes faster than real
// time: animated in whole windows at throughput speed).
inline constexpr std::string_view kModeLive = "live";
inline constexpr std::string_view kModeLine = "line";
bool is_valid_mode(std::string_view mode) noexcept;

// A stream's mood (1.3, the controls' "mood", with "mood_intensity" 0..1, default 1): an
// expression the face holds through speech and silence (and, at the server's mood guidance, how the
// face speaks); the runtime's default is neutral. Which
// moods exist is the runtime's to check (it answers bad_controls, listing them): this list, in
// the SPEC's order, is for pickers in a UI.
inline constexpr std::string_view kMoodNeutral = "neutral";
inline constexpr std::string_view kMoodHappy = "happy";
inline constexpr std::string_view kMoodSad = "sad";
inline constexpr std::string_view kMoodAngry = "angry";
inline constexpr std::string_view kMoodSurprised = "surprised";
inline constexpr std::array<std::string_view, 5> kMoods = {kMoodNeutral, kMoodHappy, kMoodSad, kMoodAngry,
                                                            kMoodSurprised};

// A stream's style (1.4, the controls' "style"): a built-in reference take whose head, brow and
// mouth motion the face follows, from least motion to most; none (the runtime's default) is the
// model's own motion. A runtime's own config may set a take file instead: its controls_set then
// shows that path, which a client may send back unchanged. Which styles exist is the runtime's to
// check (it answers bad_controls, listing them): this list, in the SPEC's order, is for pickers in
// a UI.
inline constexpr std::string_view kStyleNone = "none";
inline constexpr std::string_view kStyleStill = "still";
inline constexpr std::string_view kStyleCalm = "calm";
inline constexpr std::string_view kStyleNatural = "natural";
inline constexpr std::string_view kStyleLively = "lively";
inline constexpr std::string_view kStyleAnimated = "animated";
inline constexpr std::array<std::string_view, 6> kStyles = {kStyleNone,    kStyleStill,  kStyleCalm,
                                                            kStyleNatural, kStyleLively, kStyleAnimated};

// One blendshape's control: value = clamp(raw * gain + offset, min, max). Absent: unchanged
// (set_controls) or the runtime's default (gain 1, offset 0, min 0, max 1).
struct ShapeControl {
  std::optional<double> gain;
  std::optional<double> offset;
  std::optional<double> min;
  std::optional<double> max;
};

// name -> value, in wire order (the encoder writes them in this order).
template <typename T>
using NamedValues = std::vector<std::pair<std::string, T>>;

// A stream's artists' controls, as open_stream and set_controls carry them and controls_set
// returns them (ksdiff_runtime/engine/controls.py). Regions: jaw, mouth, brows, eyes, head; moods
// (1.3): kMoods; styles (1.4): kStyles. Every part is optional: set_controls changes the settings
// given and keeps the rest. What is in range, and which names (moods and styles too) exist, the
// runtime checks (error bad_controls): this client only carries the map. Decoding keeps the
// entries that are well typed and ignores the others, as the reference decoder checks no more
// than "a map with string keys".
struct Controls {
  std::optional<NamedValues<double>> strength;        // region -> multiplier (0..3; 1: as is)
  std::optional<NamedValues<ShapeControl>> shapes;    // ARKit blendshape name -> its control
  std::optional<NamedValues<double>> smoothing_ms;    // region -> time constant (0: none)
  std::optional<double> timing_offset_ms;             // + later, - earlier than the audio
  std::optional<std::string> mood;                    // 1.3: one of kMoods (the runtime's default neutral)
  std::optional<double> mood_intensity;               // 1.3: how much of the mood, 0..1 (default 1)
  std::optional<std::string> style;                   // 1.4: one of kStyles (default none), or the runtime's take file
};

// --- messages (SPEC 4) ----------------------------------------------------------------------
// Optional keys are std::optional; everything else was present and well-typed when decoded.
// Integers are held at full width (uint64/int64); floats the wire carries as float32 are held
// as float, other floats as double.

struct Hello {
  // A runtime hello carries every field below except `req` (and `instance` is optional);
  // a client's hello *request* carries none of them. `from_runtime` tells which one this is.
  bool from_runtime = false;
  std::string runtime;
  std::uint32_t fps = 0;
  std::uint32_t sample_rate = 0;
  std::vector<std::string> blendshapes;
  std::array<std::string, 3> head;
  std::string head_units;
  std::string head_convention;
  std::array<std::string, 4> gaze;
  std::string gaze_units;
  std::string gaze_convention;
  std::uint64_t max_message_bytes = 0;
  std::optional<std::string> instance;
  std::optional<std::uint64_t> req;
};

struct Frame {
  std::string stream;
  std::uint64_t seq = 0;
  std::uint64_t index = 0;
  std::uint32_t fps = 0;
  double t_audio = 0.0;  // seconds of the stream's audio this frame animates (= index / fps)
  std::array<float, kNumBlendshapes> blendshapes{};  // canonical order, 0..1
  std::array<float, 3> head{};                       // [pitch, yaw, roll], radians (SPEC 5.2)
  std::array<float, 4> gaze{};  // [leftYaw, leftPitch, rightYaw, rightPitch], radians (5.3)
  std::optional<std::int64_t> captured_ns;  // nil on the wire: unknown (offline files)
  std::int64_t published_ns = 0;
  float lookahead_ms = 0.0f;
  float compute_ms = 0.0f;
  bool last = false;
};

struct StreamStart {
  std::string stream;
  std::string source;  // "mic", "file" or "sdk"
  std::int64_t published_ns = 0;
  // 1.2, optional (absent from a 1.1 runtime): the stream's mode, and the latency the runtime
  // adds for it: start playing its audio latency_ms after its first push and lips match audio.
  std::optional<std::string> mode;
  std::optional<double> latency_ms;
};

struct StreamEnd {
  std::string stream;
  std::string source;
  std::string reason;  // "ended", "timeout", "error" or "shutdown"
  std::uint64_t frames = 0;
  std::int64_t published_ns = 0;
};

struct StreamStats {
  double fps = 0.0;
  double latency_p50_ms = 0.0;
  double latency_p95_ms = 0.0;
  std::uint64_t frames = 0;
  std::uint64_t drops = 0;
  std::optional<std::string> source;       // optional in the SPEC: kept when well-typed
  std::optional<std::uint64_t> sanitized;  // idem
  std::optional<std::uint64_t> shed;       // idem (1.1): of the drops, frames skipped for deadlines
};

struct Stats {
  double uptime_s = 0.0;
  std::map<std::string, StreamStats> streams;
  std::uint64_t drops = 0;
  std::int64_t published_ns = 0;
  // 1.1, optional: error code -> requests refused with it since start; and how many more live
  // streams the runtime has room for now (from measured compute).
  std::optional<std::map<std::string, std::uint64_t>> refused;
  std::optional<std::uint64_t> capacity;
};

struct OpenStream {
  std::optional<std::string> stream;
  std::uint32_t sample_rate = 16000;
  std::uint32_t channels = 1;
  std::string format = "f32le";  // "f32le" or "s16le"
  std::optional<std::string> transcript;
  std::optional<std::int64_t> seed;
  std::optional<std::string> mode;    // 1.2: kModeLive (the runtime's default) or kModeLine
  std::optional<Controls> controls;   // 1.2: the stream's controls from its first frame
  std::optional<std::uint64_t> req;
};

struct Audio {
  std::string stream;
  std::uint64_t seq = 0;
  std::optional<std::uint64_t> at_sample;
  std::string pcm;  // raw interleaved samples in the stream's format
};

struct EndStream {
  std::string stream;
  std::optional<std::uint64_t> req;
};

struct StreamOpened {
  std::string stream;
  std::uint32_t fps = 0;
  // 1.1, optional: seconds of audio beyond real time the stream buffers; audio pushed further
  // ahead is refused with `busy` (nothing of it taken). Absent from a 1.0 runtime: no limit.
  std::optional<double> max_ahead_s;
  // 1.2, optional (absent from a 1.1 runtime): as StreamStart's.
  std::optional<std::string> mode;
  std::optional<double> latency_ms;
  std::optional<std::uint64_t> req;
};

struct StreamEnded {
  std::string stream;
  std::uint64_t frames = 0;
  std::optional<std::uint64_t> req;
};

// 1.2: change a stream's controls (one this client opened, or the runtime's own, e.g. "mic").
struct SetControls {
  std::string stream;
  Controls controls;
  std::optional<std::uint64_t> req;
};

// 1.2: the reply to set_controls: the stream's controls now in force, in full.
struct ControlsSet {
  std::string stream;
  Controls controls;
  std::optional<std::uint64_t> req;
};

struct Error {
  std::string code;  // as sent; use error_code() to act on it
  std::string message;
  std::optional<std::string> request_type;  // nil on the wire: the request could not be read
  std::optional<std::string> stream;
  std::optional<std::uint64_t> req;

  ErrorCode error_code() const noexcept { return error_code_from_string(code); }
};

using Body = std::variant<Hello, Frame, StreamStart, StreamEnd, Stats, OpenStream, Audio, EndStream,
                          SetControls, StreamOpened, StreamEnded, ControlsSet, Error>;

struct Message {
  std::uint32_t major = kProtocolMajor;
  std::uint32_t minor = kProtocolMinor;  // a newer minor only adds keys (ignored) and types
  std::string type;
  Body body;
};

// One payload -> its validated message. Throws ProtocolError with the code the SPEC gives:
// too_large (over 1 MiB), malformed (not exactly one msgpack map, bad or missing v/type, a
// known field missing or of the wrong type, a bad stream id), unsupported_version (major != 1),
// unknown_type (a client ignores those: a newer runtime's messages), bad_audio (open_stream's
// sample_rate/channels/format of the right type but out of range; a wrong type is malformed).
// A mode other than "live"/"line", or controls that are not a map, are malformed (1.2); what the
// controls say (the mood of 1.3 and the style of 1.4 included) is the runtime's to judge: ill-typed
// entries are left out.
Message decode(const void* data, std::size_t size);
inline Message decode(std::string_view payload) { return decode(payload.data(), payload.size()); }

// Client requests (DEALER -> runtime ROUTER), encoded like the reference encoder (smallest
// integer forms, keys in SPEC order) so they match the golden vectors byte for byte. Each
// validates what it encodes and throws ProtocolError for what the runtime would refuse.
std::string encode_hello_request(std::optional<std::uint64_t> req = std::nullopt);
std::string encode_open_stream(const OpenStream& request);
std::string encode_audio(const Audio& request);
std::string encode_end_stream(const EndStream& request);
// 1.2 (the mood 1.3, the style 1.4). Throws ProtocolError(bad_controls) for a non-finite number
// (ranges and names, moods and styles included, are the runtime's to check: it answers
// bad_controls, naming the setting).
std::string encode_set_controls(const SetControls& request);

// 208 bytes of little-endian float32 -> 52 floats, on any host byte order.
std::array<float, kNumBlendshapes> decode_blendshapes(const unsigned char* bytes) noexcept;

}  // namespace ksdiff
