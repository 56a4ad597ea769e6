// Test-only encoders of the messages the runtime *publishes*, so the subscriber can be tested
// against a local publisher. (The client library itself only encodes requests.)
#pragma once

#include "ksdiff/protocol.hpp"

#include <msgpack.hpp>

#include <cstring>
#include <optional>
#include <string>

namespace wire {

class Map {
 public:
  Map(const std::string& type, std::uint32_t fields, std::uint32_t major = 1) : p_(&buf_) {
    p_.pack_map(2 + fields);
    key("v");
    p_.pack_array(2);
    p_.pack_uint32(major);
    p_.pack_uint32(ksdiff::kProtocolMinor);  // as the runtime writes it
    key("type");
    str(type);
  }
  Map& key(const std::string& k) { return str(k); }
  Map& str(const std::string& s) {
    p_.pack(s);
    return *this;
  }
  Map& u(std::uint64_t x) {
    p_.pack_uint64(x);
    return *this;
  }
  Map& i(std::int64_t x) {
    p_.pack_int64(x);
    return *this;
  }
  Map& f64(double x) {
    p_.pack_double(x);
    return *this;
  }
  Map& f32(float x) {
    p_.pack_float(x);
    return *this;
  }
  Map& boolean(bool b) {
    if (b) p_.pack_true(); else p_.pack_false();
    return *this;
  }
  Map& nil() {
    p_.pack_nil();
    return *this;
  }
  Map& array(std::uint32_t n) {
    p_.pack_array(n);
    return *this;
  }
  Map& map(std::uint32_t n) {
    p_.pack_map(n);
    return *this;
  }
  Map& bin(const std::string& b) {
    p_.pack_bin(static_cast<std::uint32_t>(b.size()));
    p_.pack_bin_body(b.data(), static_cast<std::uint32_t>(b.size()));
    return *this;
  }
  std::string bytes() const { return std::string(buf_.data(), buf_.size()); }

 private:
  msgpack::sbuffer buf_;
  msgpack::packer<msgpack::sbuffer> p_;
};

inline std::string hello(const std::optional<std::string>& instance, const std::string& runtime = "test") {
  Map m("hello", instance ? 12 : 11);
  m.key("runtime").str(runtime);
  m.key("fps").u(30);
  m.key("sample_rate").u(16000);
  m.key("blendshapes").array(ksdiff::kNumBlendshapes);
  for (auto name : ksdiff::kBlendshapeNames) m.str(std::string(name));
  m.key("head").array(3).str("headPitch").str("headYaw").str("headRoll");
  m.key("head_units").str("rad");
  m.key("head_convention").str("ARKit face frame");
  m.key("gaze").array(4).str("leftEyeYaw").str("leftEyePitch").str("rightEyeYaw").str("rightEyePitch");
  m.key("gaze_units").str("rad");
  m.key("gaze_convention").str("per eye");
  m.key("max_message_bytes").u(ksdiff::kMaxMessageBytes);
  if (instance) m.key("instance").str(*instance);
  return m.bytes();
}

// Frame `seq` (= index) of `stream` at 30 fps; jawOpen = jaw.
inline std::string frame(const std::string& stream, std::uint64_t seq, float jaw = 0.0f, bool last = false) {
  std::string bs(ksdiff::kBlendshapeBytes, '\0');
  std::uint32_t bits = 0;
  std::memcpy(&bits, &jaw, 4);
  for (int k = 0; k < 4; ++k) bs[4 * 17 + k] = static_cast<char>((bits >> (8 * k)) & 0xFF);
  Map m("frame", 13);
  m.key("stream").str(stream);
  m.key("seq").u(seq);
  m.key("index").u(seq);
  m.key("fps").u(30);
  m.key("t_audio").f64(static_cast<double>(seq) / 30.0);
  m.key("blendshapes").bin(bs);
  m.key("head").array(3).f32(0.1f).f32(0.2f).f32(0.3f);
  m.key("gaze").array(4).f32(0.01f).f32(0.02f).f32(0.03f).f32(0.04f);
  m.key("captured_ns").nil();
  m.key("published_ns").i(1000);
  m.key("lookahead_ms").f32(100.0f);
  m.key("compute_ms").f32(1.0f);
  m.key("last").boolean(last);
  return m.bytes();
}

inline std::string stream_start(const std::string& stream) {
  Map m("stream_start", 3);
  m.key("stream").str(stream).key("source").str("sdk").key("published_ns").i(5);
  return m.bytes();
}

inline std::string stream_end(const std::string& stream, std::uint64_t frames) {
  Map m("stream_end", 5);
  m.key("stream").str(stream).key("source").str("sdk").key("reason").str("ended");
  m.key("frames").u(frames).key("published_ns").i(6);
  return m.bytes();
}

inline std::string stats() {
  Map m("stats", 4);
  m.key("uptime_s").f64(1.5).key("streams").map(0).key("drops").u(0).key("published_ns").i(7);
  return m.bytes();
}

}  // namespace wire
