// LineClient (the DEALER client for NPC lines) against a ZeroMQ ROUTER in this test that plays the
// runtime's side on loopback (an ephemeral port): it reads the client's requests with the core's
// own decoder and answers as the runtime would (stream_opened, stream_ended, errors), or sends a
// client-level busy and takes the requests before it as dropped. It answers the client's hello
// probes (their answers tell the client the runtime read its lines' messages, SPEC 4.6) unless it
// drops them. No mocks: real sockets, the client's real I/O thread. Every wait is on a condition
// with a bounded timeout.
#include "harness.hpp"
#include "wire.hpp"

#include "ksdiff/line_client.hpp"

#include <zmq.hpp>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

using namespace ksdiff;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

constexpr auto kTimeout = 10s;

// One request the client sent, as the runtime's ROUTER sees it.
struct Request {
  std::string identity;
  Message message;
  double at_s = 0.0;  // the test's clock when it came
};

double seconds_now() { return std::chrono::duration<double>(Clock::now().time_since_epoch()).count(); }

// The runtime's ROUTER, played by the test.
class FakeRuntime {
 public:
  // An ephemeral port by default; a runtime "restarted" binds the endpoint the last one had.
  explicit FakeRuntime(const std::string& endpoint = "tcp://127.0.0.1:*")
      : socket_(context_, zmq::socket_type::router) {
    socket_.set(zmq::sockopt::linger, 0);
    socket_.bind(endpoint);
    endpoint_ = socket_.get(zmq::sockopt::last_endpoint);
  }
  const std::string& endpoint() const { return endpoint_; }
  // The runtime process's id its hello answers carry (SPEC: random per start); none when empty.
  std::string instance;

  // The next request, within `timeout`.
  std::optional<Request> next(std::chrono::milliseconds timeout = kTimeout) {
    zmq_pollitem_t item{socket_.handle(), 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&item, 1, static_cast<long>(timeout.count())) <= 0) return std::nullopt;
    zmq::message_t identity;
    zmq::message_t payload;
    if (!socket_.recv(identity, zmq::recv_flags::dontwait) || !identity.more()) return std::nullopt;
    (void)socket_.recv(payload, zmq::recv_flags::none);
    return Request{identity.to_string(), decode(payload.data(), payload.size()), seconds_now()};
  }

  // Requests until one of type `type` (included), within the timeout; the others in `before`
  // (hello probes are answered on the way, and left out).
  std::optional<Request> next_of(const std::string& type, std::vector<Request>* before = nullptr) {
    const auto deadline = Clock::now() + kTimeout;
    while (Clock::now() < deadline) {
      std::optional<Request> r = next(std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()));
      if (!r) break;
      if (r->message.type == type) return r;
      if (r->message.type == "hello") {
        hello(*r);
        continue;
      }
      if (before) before->push_back(std::move(*r));
    }
    return std::nullopt;
  }

  void send(const std::string& identity, const std::string& payload) {
    socket_.send(zmq::buffer(identity), zmq::send_flags::sndmore);
    socket_.send(zmq::buffer(payload), zmq::send_flags::none);
  }

  void opened(const Request& r, double max_ahead_s = 20.0) {
    const auto& open = std::get<OpenStream>(r.message.body);
    wire::Map m("stream_opened", 6);
    m.key("stream").str(open.stream.value_or("sdk-1")).key("fps").u(30).key("max_ahead_s").f64(max_ahead_s);
    m.key("mode").str(open.mode.value_or("live")).key("latency_ms").f64(150.0).key("req").u(*open.req);
    send(r.identity, m.bytes());
  }

  // The answer to a hello request: only its req matters to the client (it proves the runtime read
  // every message up to it).
  void hello(const Request& r) {
    wire::Map m("hello", instance.empty() ? 1 : 2);
    m.key("req").u(std::get<Hello>(r.message.body).req.value_or(0));
    if (!instance.empty()) m.key("instance").str(instance);
    send(r.identity, m.bytes());
  }

  void ended(const Request& r, std::uint64_t frames) {
    const auto& end = std::get<EndStream>(r.message.body);
    wire::Map m("stream_ended", 3);
    m.key("stream").str(end.stream).key("frames").u(frames).key("req").u(*end.req);
    send(r.identity, m.bytes());
  }

  // An error; `req` and `stream` only when given (a client-level busy has neither).
  void error(const std::string& identity, const std::string& code, const std::string& message,
             std::optional<std::uint64_t> req, std::optional<std::string> stream,
             const std::string& request_type = "audio") {
    wire::Map m("error", 3 + (req ? 1 : 0) + (stream ? 1 : 0));
    m.key("code").str(code).key("message").str(message).key("request_type").str(request_type);
    if (stream) m.key("stream").str(*stream);
    if (req) m.key("req").u(*req);
    send(identity, m.bytes());
  }

 private:
  zmq::context_t context_;
  zmq::socket_t socket_;
  std::string endpoint_;
};

// `n` samples of a ramp that differs at every position, so a copy is recognisable by its content.
std::vector<float> ramp(std::size_t n, float scale = 1.0f) {
  std::vector<float> out(n);
  for (std::size_t i = 0; i < n; ++i) out[i] = scale * static_cast<float>(i % 1000) / 1000.0f;
  return out;
}

std::vector<float> samples_of(const Audio& audio) {
  std::vector<float> out(audio.pcm.size() / 4);
  for (std::size_t i = 0; i < out.size(); ++i) {
    std::uint32_t bits = 0;
    for (std::size_t k = 0; k < 4; ++k) {
      bits |= static_cast<std::uint32_t>(static_cast<unsigned char>(audio.pcm[4 * i + k])) << (8 * k);
    }
    std::memcpy(&out[i], &bits, 4);
  }
  return out;
}

// What the runtime keeps of an audio message (SPEC 4.6 `audio`): placed by at_sample, what it has
// already dropped, a gap before it filled with silence (so a copy that came after later audio of its
// stream would leave a hole of silence, not fill it).
void take_audio(std::vector<float>& have, const Audio& audio) {
  const std::vector<float> part = samples_of(audio);
  const std::uint64_t at = audio.at_sample.value_or(have.size());
  if (at > have.size()) have.resize(at, 0.0f);
  for (std::size_t i = have.size() - at; i < part.size(); ++i) have.push_back(part[i]);
}

LineClientConfig config_for(const FakeRuntime& runtime) {
  LineClientConfig config;
  config.endpoint = runtime.endpoint();
  return config;
}

LineOptions line_options(const std::string& stream, const std::string& mode = std::string(kModeLine)) {
  LineOptions options;
  options.stream = stream;
  options.sample_rate = 16000;
  options.mode = mode;
  return options;
}

// Polls the line's status (as a game tick would) until `done`, within the timeout.
template <typename Done>
std::optional<LineStatus> poll_until(const LineClient& client, LineId id, Done done) {
  const auto deadline = Clock::now() + kTimeout;
  std::optional<LineStatus> st = client.status(id);
  while (st && !done(*st) && Clock::now() < deadline) {
    (void)client.wait_finished(id, 5ms);  // a bounded wait between polls (woken early by a finish)
    st = client.status(id);
  }
  return st;
}

// The runtime's side of the tests below, as SPEC 4.6 says it behaves: it answers hello probes and
// open_streams (with max_ahead_s), keeps each stream's audio as take_audio does, answers a stream's
// first end_stream with stream_ended (its frames from the audio it has) and a later one with
// unknown_stream. Requests read before drops_until are dropped unread. `hook` sees each request read
// first and returns true when it dealt with it (refused or dropped it).
struct Sim {
  explicit Sim(FakeRuntime& r) : runtime(r) {}
  FakeRuntime& runtime;
  double max_ahead_s = 20.0;
  std::function<bool(const Request&)> hook;
  std::optional<double> drops_until;
  std::size_t dropped = 0;
  std::vector<Request> dropped_requests;  // read and dropped unread (by drops_until), in order
  std::map<std::string, std::vector<float>> heard;
  std::map<std::string, std::vector<float>> heard_at_end;  // what it had when the stream's end_stream came
  std::vector<Request> taken;                              // read and not dropped, in order

  // A client-level busy for `r`, dropped with all the runtime reads in the next `window_s`.
  void busy(const Request& r, double window_s) {
    runtime.error(r.identity, "busy", "this client sent more requests than the runtime handles for it",
                  std::nullopt, std::nullopt, r.message.type);
    drops_until = seconds_now() + window_s;
    ++dropped;
  }

  // Serves until `streams` streams have ended, within the timeout; false if they did not.
  bool serve_until(std::size_t streams) {
    const auto deadline = Clock::now() + kTimeout;
    while (heard_at_end.size() < streams && Clock::now() < deadline) {
      std::optional<Request> r = runtime.next(200ms);
      if (!r) continue;
      if (drops_until && r->at_s < *drops_until) {
        ++dropped;
        dropped_requests.push_back(*r);
        continue;
      }
      if (hook && hook(*r)) continue;
      taken.push_back(*r);
      const std::string& type = r->message.type;
      if (type == "hello") {
        runtime.hello(*r);
      } else if (type == "open_stream") {
        runtime.opened(*r, max_ahead_s);
      } else if (type == "audio") {
        const auto& a = std::get<Audio>(r->message.body);
        take_audio(heard[a.stream], a);
      } else if (type == "end_stream") {
        const auto& end = std::get<EndStream>(r->message.body);
        if (heard_at_end.count(end.stream) > 0) {
          runtime.error(r->identity, "unknown_stream", "stream '" + end.stream + "' has ended", end.req, end.stream,
                        "end_stream");
        } else {
          heard_at_end[end.stream] = heard[end.stream];
          runtime.ended(*r, heard[end.stream].size() * 30 / 16000 + 4);
        }
      }
    }
    return heard_at_end.size() >= streams;
  }
};

}  // namespace

TEST_CASE("a line opens, its audio arrives whole and in order with at_sample, and it ends with the runtime's frame count") {
  FakeRuntime runtime;
  LineClient client(config_for(runtime));
  client.start();
  const LineId id = client.open(line_options("npc1"));
  const std::vector<float> pcm = ramp(16000);
  // Pushed before the stream is open: it waits and goes once stream_opened says how far ahead it may.
  REQUIRE(client.push(id, pcm.data(), 10000) == PushResult::accepted);
  EXPECT(client.status(id)->state == LineState::opening);

  std::optional<Request> open = runtime.next_of("open_stream");
  REQUIRE(open.has_value());
  const auto& request = std::get<OpenStream>(open->message.body);
  EXPECT_EQ(request.stream.value_or(""), std::string("npc1"));
  EXPECT_EQ(request.mode.value_or(""), std::string("line"));
  EXPECT_EQ(request.format, std::string("f32le"));
  EXPECT_EQ(request.channels, 1u);
  EXPECT_EQ(request.sample_rate, 16000u);
  runtime.opened(*open);
  const std::optional<LineStatus> opened =
      poll_until(client, id, [](const LineStatus& s) { return s.state != LineState::opening; });
  REQUIRE(opened.has_value());
  EXPECT(opened->state == LineState::open);
  EXPECT_EQ(opened->fps, 30u);
  EXPECT_NEAR(opened->latency_ms.value_or(0.0), 150.0, 1e-9);
  EXPECT_NEAR(opened->max_ahead_s.value_or(0.0), 20.0, 1e-9);

  REQUIRE(client.push(id, pcm.data() + 10000, 6000) == PushResult::accepted);
  REQUIRE(client.end(id));
  std::vector<Request> audio;
  std::optional<Request> end = runtime.next_of("end_stream", &audio);
  REQUIRE(end.has_value());
  std::vector<float> received;
  std::uint64_t expected_at = 0;
  for (const Request& r : audio) {
    REQUIRE(r.message.type == "audio");
    const auto& a = std::get<Audio>(r.message.body);
    EXPECT_EQ(a.stream, std::string("npc1"));
    EXPECT_EQ(a.at_sample.value_or(999999), expected_at);  // every message places itself
    const std::vector<float> part = samples_of(a);
    received.insert(received.end(), part.begin(), part.end());
    expected_at += part.size();
  }
  EXPECT(received == pcm);
  runtime.ended(*end, 34);
  const std::optional<LineStatus> done = client.wait_finished(id, kTimeout);
  REQUIRE(done.has_value());
  EXPECT(done->state == LineState::ended);
  EXPECT_EQ(done->frames, 34u);
  EXPECT_EQ(done->samples_pushed, 16000u);
  EXPECT_EQ(done->samples_sent, 16000u);
  EXPECT_EQ(done->messages_resent, 0u);
  EXPECT(client.push(id, pcm) == PushResult::not_open);  // nothing goes to an ended line
  EXPECT(client.forget(id));
  EXPECT(!client.status(id).has_value());
  client.stop();
}

TEST_CASE("an open_stream the runtime refuses fails its line with the runtime's code and message") {
  FakeRuntime runtime;
  LineClient client(config_for(runtime));
  client.start();
  const LineId id = client.open(line_options("npc1"));
  std::optional<Request> open = runtime.next_of("open_stream");
  REQUIRE(open.has_value());
  runtime.error(open->identity, "busy", "an open stream already has the id 'npc1'",
                std::get<OpenStream>(open->message.body).req, std::string("npc1"), "open_stream");
  const std::optional<LineStatus> st = client.wait_finished(id, kTimeout);
  REQUIRE(st.has_value());
  EXPECT(st->state == LineState::failed);
  EXPECT(st->error_code == ErrorCode::busy);
  EXPECT_EQ(st->error_message, std::string("an open stream already has the id 'npc1'"));
  EXPECT(!client.end(id));
}

TEST_CASE("after a client-level busy the line's audio sent since the last answered request goes again in its order before its end_stream; a live stream's audio does not, its dropped end_stream does") {
  FakeRuntime runtime;
  LineClient client(config_for(runtime));
  client.start();
  const LineId line = client.open(line_options("npc_line"));
  const LineId live = client.open(line_options("npc_live", std::string(kModeLive)));
  for (int i = 0; i < 2; ++i) {
    std::optional<Request> open = runtime.next_of("open_stream");
    REQUIRE(open.has_value());
    runtime.opened(*open);
  }
  REQUIRE(poll_until(client, live, [](const LineStatus& s) { return s.state == LineState::open; })->state ==
          LineState::open);
  REQUIRE(poll_until(client, line, [](const LineStatus& s) { return s.state == LineState::open; })->state ==
          LineState::open);
  const std::vector<float> line_pcm = ramp(24000);       // 1.5 s: one message (a line's are up to 10 s)
  const std::vector<float> live_pcm = ramp(3200, 0.5f);  // 0.2 s: two 100 ms messages
  REQUIRE(client.push(line, line_pcm) == PushResult::accepted);
  REQUIRE(client.push(live, live_pcm) == PushResult::accepted);
  REQUIRE(client.end(line));
  REQUIRE(client.end(live));

  // The first request after the opens takes the client past its share: it and all the runtime reads
  // in the next second are dropped unread (the hello probes too), and it says so once.
  Sim sim(runtime);
  std::optional<double> busy_s;
  sim.hook = [&](const Request& r) {
    if (busy_s) return false;
    busy_s = seconds_now();
    sim.busy(r, kBusyWindowS);
    return true;
  };
  REQUIRE_MSG(sim.serve_until(2), "both streams did not end");
  REQUIRE(busy_s.has_value());
  EXPECT(sim.dropped >= 2u);  // the line's audio at least, and the live's messages that left before the busy
  std::size_t live_after = 0;
  std::optional<std::uint64_t> live_end_after;
  for (const Request& r : sim.taken) {
    EXPECT_MSG(r.at_s - *busy_s >= 0.9 * kBusyWindowS, "a " + r.message.type + " was sent while the drops lasted");
    if (r.message.type == "audio") live_after += std::get<Audio>(r.message.body).stream == "npc_live" ? 1 : 0;
    if (r.message.type == "end_stream" && std::get<EndStream>(r.message.body).stream == "npc_live") {
      live_end_after = std::get<EndStream>(r.message.body).req;
    }
  }
  // The live's end_stream, if it left before the client heard of the busy, was dropped: it went again
  // with the same req (the other copy's answer is dropped). If not, it waited for the drops' end.
  std::optional<std::uint64_t> live_end_dropped;
  for (const Request& r : sim.dropped_requests) {
    if (r.message.type == "end_stream") live_end_dropped = std::get<EndStream>(r.message.body).req;
  }
  EXPECT_MSG(live_after == 0u, "a live stream's audio was sent again");
  // The line's copy came whole, with its at_sample, before the line's end_stream.
  EXPECT(sim.heard_at_end["npc_line"] == line_pcm);
  REQUIRE(live_end_after.has_value());
  if (live_end_dropped) EXPECT_EQ(*live_end_after, *live_end_dropped);
  const std::optional<LineStatus> line_st = client.wait_finished(line, kTimeout);
  const std::optional<LineStatus> live_st = client.wait_finished(live, kTimeout);
  REQUIRE(line_st && live_st);
  EXPECT(line_st->state == LineState::ended);
  EXPECT(live_st->state == LineState::ended);
  EXPECT_EQ(line_st->messages_resent, 1u);
  EXPECT_EQ(live_st->messages_resent, 0u);
  const LineClientStatus cs = client.status();
  EXPECT_EQ(cs.busy, 1u);
  EXPECT_EQ(cs.resent, live_end_dropped ? 2u : 1u);  // the line's audio message (and the live's end_stream)
}

TEST_CASE("audio refused with a per-stream busy goes again later, from the audio kept, until the line has it all") {
  FakeRuntime runtime;
  LineClient client(config_for(runtime));
  client.start();
  const LineId id = client.open(line_options("npc1"));
  std::optional<Request> open = runtime.next_of("open_stream");
  REQUIRE(open.has_value());
  runtime.opened(*open);
  const std::vector<float> pcm = ramp(8000);
  REQUIRE(client.push(id, pcm) == PushResult::accepted);
  std::optional<Request> first = runtime.next_of("audio");
  REQUIRE(first.has_value());
  EXPECT_EQ(std::get<Audio>(first->message.body).at_sample.value_or(1), 0u);
  // Refused: nothing of it taken (the runtime's clock of the stream started later than the client's).
  runtime.error(first->identity, "busy", "stream 'npc1': this chunk would put it 20.1 s ahead of real time",
                std::nullopt, std::string("npc1"));
  std::optional<Request> again = runtime.next_of("audio");
  REQUIRE_MSG(again.has_value(), "the refused audio was not sent again");
  const auto& a = std::get<Audio>(again->message.body);
  EXPECT_EQ(a.at_sample.value_or(1), 0u);
  EXPECT(samples_of(a) == pcm);
  REQUIRE(client.end(id));
  std::optional<Request> end = runtime.next_of("end_stream");
  REQUIRE(end.has_value());
  runtime.ended(*end, 19);
  const std::optional<LineStatus> st = client.wait_finished(id, kTimeout);
  REQUIRE(st.has_value());
  EXPECT(st->state == LineState::ended);
  EXPECT_EQ(st->audio_errors, 1u);
  EXPECT(st->error_code == ErrorCode::busy);
}

TEST_CASE("a line longer than max_ahead_s goes as real time allows: no audio ahead of it, the rest in 250 ms messages") {
  FakeRuntime runtime;
  LineClientConfig config = config_for(runtime);
  config.ahead_margin_s = 0.5;
  LineClient client(config);
  client.start();
  const LineId id = client.open(line_options("npc1"));
  std::optional<Request> open = runtime.next_of("open_stream");
  REQUIRE(open.has_value());
  runtime.opened(*open, /*max_ahead_s=*/1.0);  // room: 0.5 s ahead of the line's first audio
  const std::vector<float> pcm = ramp(24000);  // 1.5 s
  REQUIRE(client.push(id, pcm) == PushResult::accepted);
  REQUIRE(client.end(id));
  std::vector<Request> audio;
  std::optional<Request> end = runtime.next_of("end_stream", &audio);
  REQUIRE(end.has_value());
  REQUIRE(audio.size() >= 2u);
  const double t0 = audio.front().at_s;
  std::uint64_t expected_at = 0;
  for (std::size_t i = 0; i < audio.size(); ++i) {
    const auto& a = std::get<Audio>(audio[i].message.body);
    const std::uint64_t n = a.pcm.size() / 4;
    EXPECT_EQ(a.at_sample.value_or(999999), expected_at);
    expected_at += n;
    // Its end is within the room at the time it came (the client sent it no earlier than that; 0.1 s
    // for this thread reading the first message late on a loaded machine).
    const double ahead = static_cast<double>(expected_at) / 16000.0 - (audio[i].at_s - t0);
    EXPECT_MSG(ahead <= 0.5 + 0.1, "message " + std::to_string(i) + " is " + std::to_string(ahead) + " s ahead");
    if (i > 0) EXPECT_EQ(n, 4000u);  // what waited went in 250 ms messages
  }
  EXPECT_EQ(expected_at, 24000u);
  runtime.ended(*end, 49);
  EXPECT(client.wait_finished(id, kTimeout)->state == LineState::ended);
}

TEST_CASE("pushes are refused when too much audio would wait, after end, and past a 10 s gap; nothing is taken") {
  FakeRuntime runtime;  // never answers: the line stays opening, its audio waiting
  LineClientConfig config = config_for(runtime);
  config.max_waiting_bytes = 4 * 16000;  // 1 s of 16 kHz float32
  LineClient client(config);
  client.start();
  const LineId id = client.open(line_options("npc1"));
  const std::vector<float> pcm = ramp(12000);
  EXPECT(client.push(id, pcm) == PushResult::accepted);
  EXPECT(client.push(id, pcm) == PushResult::full);
  EXPECT_EQ(client.status(id)->samples_pushed, 12000u);
  EXPECT(client.push(id, pcm.data(), 100, 12000 + 10 * 16000 + 1) == PushResult::bad_audio);
  // A push over audio already pushed keeps the first (as the runtime does): only what is new is taken.
  EXPECT(client.push(id, pcm.data(), 2000, 11000) == PushResult::accepted);
  EXPECT_EQ(client.status(id)->samples_pushed, 13000u);
  EXPECT_EQ(client.status().waiting_bytes, 4u * 13000u);
  EXPECT(client.end(id));
  EXPECT(client.push(id, pcm) == PushResult::not_open);
  EXPECT(client.push(id + 100, pcm) == PushResult::not_open);
}

TEST_CASE("an open_stream left unanswered fails after the open timeout, and a late stream_opened is ended at once") {
  FakeRuntime runtime;
  LineClientConfig config = config_for(runtime);
  config.open_timeout_s = 0.3;
  LineClient client(config);
  client.start();
  const LineId id = client.open(line_options("npc1"));
  std::optional<Request> open = runtime.next_of("open_stream");
  REQUIRE(open.has_value());
  const std::optional<LineStatus> st = client.wait_finished(id, kTimeout);
  REQUIRE(st.has_value());
  EXPECT(st->state == LineState::failed);
  EXPECT(st->error_message.find("no reply to open_stream") != std::string::npos);
  // The runtime opened it after all: nobody feeds it, so the client frees it now, not at its idle timeout.
  runtime.opened(*open);
  std::optional<Request> end = runtime.next_of("end_stream");
  REQUIRE_MSG(end.has_value(), "no end_stream for a stream opened after its open timed out");
  EXPECT_EQ(std::get<EndStream>(end->message.body).stream, std::string("npc1"));
  EXPECT(client.status(id)->state == LineState::failed);
}

TEST_CASE("many lines pushed at once lose nothing to a client-level busy: the runtime ends each with all of its audio") {
  FakeRuntime runtime;
  LineClient client(config_for(runtime));
  client.start();
  constexpr std::size_t kLines = 8;
  std::vector<LineId> ids;
  std::map<std::string, std::vector<float>> pushed;
  for (std::size_t k = 0; k < kLines; ++k) {
    const std::string stream = "npc" + std::to_string(k);
    ids.push_back(client.open(line_options(stream)));
    pushed[stream] = ramp(16000 + 4000 * k, 1.0f - 0.1f * static_cast<float>(k));
    REQUIRE(client.push(ids.back(), pushed[stream]) == PushResult::accepted);
    REQUIRE(client.end(ids.back()));
  }
  // The runtime's side: audio kept as take_audio does; after its busy, every request dropped unread
  // for BUSY_WINDOW_S.
  std::map<std::string, std::vector<float>> heard;
  std::set<std::string> finished;
  std::size_t audio_taken = 0;
  std::optional<double> drops_until;
  std::size_t dropped = 0;
  const auto deadline = Clock::now() + kTimeout;
  while (finished.size() < kLines && Clock::now() < deadline) {
    std::optional<Request> r = runtime.next(200ms);
    if (!r) continue;
    if (drops_until && r->at_s < *drops_until) {
      ++dropped;
      continue;
    }
    if (r->message.type == "hello") {
      runtime.hello(*r);
    } else if (r->message.type == "open_stream") {
      runtime.opened(*r);
    } else if (r->message.type == "audio") {
      const auto& a = std::get<Audio>(r->message.body);
      take_audio(heard[a.stream], a);
      if (++audio_taken == 3 && !drops_until) {
        // Past its share: this and the client's further requests go unread for up to 1 s.
        runtime.error(r->identity, "busy", "this client sent more requests than the runtime handles for it",
                      std::nullopt, std::nullopt);
        drops_until = seconds_now() + kBusyWindowS;
      }
    } else if (r->message.type == "end_stream") {
      const auto& end = std::get<EndStream>(r->message.body);
      if (finished.count(end.stream) > 0) {
        runtime.error(r->identity, "unknown_stream", "stream '" + end.stream + "' has ended", end.req, end.stream,
                      "end_stream");
      } else {
        finished.insert(end.stream);
        runtime.ended(*r, heard[end.stream].size() * 30 / 16000 + 4);
      }
    }
  }
  REQUIRE_MSG(finished.size() == kLines, std::to_string(finished.size()) + " of the lines ended");
  EXPECT(dropped > 0);
  for (const auto& [stream, pcm] : pushed) {
    EXPECT_MSG(heard[stream] == pcm, stream + ": the runtime does not have the line's audio as pushed (" +
                                         std::to_string(heard[stream].size()) + " of " + std::to_string(pcm.size()) +
                                         " samples)");
  }
  for (LineId id : ids) {
    const std::optional<LineStatus> st = client.wait_finished(id, kTimeout);
    REQUIRE(st.has_value());
    EXPECT_MSG(st->state == LineState::ended, st->stream + " " + st->error_message);
  }
  EXPECT_EQ(client.status().busy, 1u);
  EXPECT(client.status().resent > 0u);
}

TEST_CASE("a line paced to real time, its first audio refused with a per-stream busy, still reaches the runtime whole before its end_stream") {
  FakeRuntime runtime;
  LineClient client(config_for(runtime));
  client.start();
  const LineId id = client.open(line_options("npc1"));
  std::optional<Request> open = runtime.next_of("open_stream");
  REQUIRE(open.has_value());
  runtime.opened(*open, /*max_ahead_s=*/1.0);  // room 0.5 s: 1 s of audio has to wait for real time
  const std::vector<float> pcm = ramp(16000);
  REQUIRE(client.push(id, pcm) == PushResult::accepted);
  REQUIRE(client.end(id));
  std::vector<float> heard;
  bool refused = false;
  std::optional<Request> end;
  const auto deadline = Clock::now() + kTimeout;
  while (!end && Clock::now() < deadline) {
    std::optional<Request> r = runtime.next(200ms);
    if (!r) continue;
    if (r->message.type == "hello") {
      runtime.hello(*r);
    } else if (r->message.type == "end_stream") {
      end = r;
    } else if (!refused) {  // the first audio: too far ahead for the runtime's clock, nothing taken
      refused = true;
      runtime.error(r->identity, "busy", "stream 'npc1': this chunk would put it 0.6 s ahead of real time",
                    std::nullopt, std::string("npc1"));
    } else {
      take_audio(heard, std::get<Audio>(r->message.body));
    }
  }
  REQUIRE(end.has_value());
  std::size_t wrong = 0;  // samples missing, or silence where the line had audio
  for (std::size_t i = 0; i < pcm.size(); ++i) wrong += i >= heard.size() || heard[i] != pcm[i] ? 1 : 0;
  EXPECT_MSG(heard == pcm, "at end_stream the runtime lacks " + std::to_string(wrong) + " of the 16000 samples");
  runtime.ended(*end, 34);
  const std::optional<LineStatus> st = client.wait_finished(id, kTimeout);
  REQUIRE(st.has_value());
  EXPECT(st->state == LineState::ended);
}

// --- defects found in review (D1-D6 and the I/O thread's life) ---------------------------------

TEST_CASE("after a client-level busy whose drops end early, the line's later audio waits for the copies: the runtime has the whole line before its end_stream") {
  FakeRuntime runtime;
  LineClient client(config_for(runtime));
  client.start();
  const LineId id = client.open(line_options("npc1"));
  const std::vector<float> pcm = ramp(48000);  // 3 s, paced: room 0.5 s, the rest in 250 ms messages
  REQUIRE(client.push(id, pcm) == PushResult::accepted);
  REQUIRE(client.end(id));
  Sim sim(runtime);
  sim.max_ahead_s = 1.0;
  std::size_t audio = 0;
  sim.hook = [&](const Request& r) {
    // The second audio message takes the client past its share; the runtime's second ends 0.2 s
    // later (SPEC 4.6: the drops end *at most* BUSY_WINDOW_S after the busy), so audio the client
    // sent meanwhile would be read before the copy and the copy would fill nothing.
    if (r.message.type != "audio" || ++audio != 2) return false;
    sim.busy(r, 0.2);
    return true;
  };
  REQUIRE_MSG(sim.serve_until(1), "the line did not end");
  const std::vector<float>& heard = sim.heard_at_end["npc1"];
  std::size_t wrong = 0;  // samples missing, or silence where the line had audio
  for (std::size_t i = 0; i < pcm.size(); ++i) wrong += i >= heard.size() || heard[i] != pcm[i] ? 1 : 0;
  EXPECT_MSG(wrong == 0, "at end_stream the runtime lacks " + std::to_string(wrong) + " of the 48000 samples");
  const std::optional<LineStatus> st = client.wait_finished(id, kTimeout);
  REQUIRE(st.has_value());
  EXPECT(st->state == LineState::ended);
  EXPECT(st->messages_resent >= 1u);
}

TEST_CASE("audio that waited in the queues for more than a second before the runtime dropped it goes again after the busy") {
  FakeRuntime runtime;
  LineClientConfig config = config_for(runtime);
  // The client's clock, moved on by the test: the audio's wait in ZeroMQ's and TCP's queues before
  // the runtime read it, without the test sleeping through it.
  auto waited_s = std::make_shared<std::atomic<double>>(0.0);
  config.clock = [waited_s] { return seconds_now() + waited_s->load(); };
  LineClient client(config);
  client.start();
  const LineId id = client.open(line_options("npc1"));
  const std::vector<float> pcm = ramp(16000);
  REQUIRE(client.push(id, pcm) == PushResult::accepted);
  REQUIRE(client.end(id));
  Sim sim(runtime);
  bool refused = false;
  sim.hook = [&](const Request& r) {
    if (r.message.type != "audio" || refused) return false;
    refused = true;
    // Once the client has counted it as sent (its clock read then), it was read 1.5 s after it left,
    // and dropped: past the share.
    const auto counted = Clock::now() + kTimeout;
    while (client.status(id)->messages_sent == 0 && Clock::now() < counted) (void)client.wait_finished(id, 1ms);
    waited_s->store(1.5);
    sim.busy(r, kBusyWindowS);
    return true;
  };
  REQUIRE_MSG(sim.serve_until(1), "the line did not end");
  EXPECT_MSG(sim.heard_at_end["npc1"] == pcm, "the runtime has " + std::to_string(sim.heard_at_end["npc1"].size()) +
                                                  " of the 16000 samples at end_stream");
  const std::optional<LineStatus> st = client.wait_finished(id, kTimeout);
  REQUIRE(st.has_value());
  EXPECT(st->state == LineState::ended);
  EXPECT_EQ(st->messages_resent, 1u);
}

TEST_CASE("a line longer than a small max_ahead_s (room under 250 ms) still goes, in messages that fit the room") {
  FakeRuntime runtime;
  LineClient client(config_for(runtime));
  client.start();
  const LineId id = client.open(line_options("npc1"));
  const std::vector<float> pcm = ramp(16000);
  REQUIRE(client.push(id, pcm) == PushResult::accepted);
  REQUIRE(client.end(id));
  Sim sim(runtime);
  sim.max_ahead_s = 0.6;  // room: 0.1 s (max_ahead_s less the 0.5 s margin)
  REQUIRE_MSG(sim.serve_until(1), "the line never ended: " + std::string(to_string(client.status(id)->state)) +
                                      ", " + std::to_string(client.status(id)->samples_sent) + " samples sent");
  EXPECT(sim.heard_at_end["npc1"] == pcm);
  for (const Request& r : sim.taken) {
    if (r.message.type == "audio") EXPECT(std::get<Audio>(r.message.body).pcm.size() / 4 <= 1600u);
  }
  EXPECT(client.wait_finished(id, kTimeout)->state == LineState::ended);
}

TEST_CASE("a line's last audio refused with a per-stream busy goes again before its end_stream, so the line ends with all of it") {
  FakeRuntime runtime;
  LineClient client(config_for(runtime));
  client.start();
  const LineId id = client.open(line_options("npc1"));
  const std::vector<float> pcm = ramp(16000);
  REQUIRE(client.push(id, pcm) == PushResult::accepted);
  REQUIRE(client.end(id));
  Sim sim(runtime);
  sim.max_ahead_s = 1.0;  // paced: the last 250 ms goes last
  bool refused = false;
  sim.hook = [&](const Request& r) {
    if (r.message.type != "audio" || refused) return false;
    const auto& a = std::get<Audio>(r.message.body);
    if (a.at_sample.value_or(0) + a.pcm.size() / 4 != pcm.size()) return false;
    refused = true;  // too far ahead for the runtime's clock of the stream: nothing of it taken
    runtime.error(r.identity, "busy", "stream 'npc1': this chunk would put it 0.6 s ahead of real time",
                  std::nullopt, std::string("npc1"));
    return true;
  };
  REQUIRE_MSG(sim.serve_until(1), "the line did not end");
  EXPECT(refused);
  EXPECT_MSG(sim.heard_at_end["npc1"] == pcm, "the runtime has " + std::to_string(sim.heard_at_end["npc1"].size()) +
                                                  " of the 16000 samples at end_stream");
  const std::optional<LineStatus> st = client.wait_finished(id, kTimeout);
  REQUIRE(st.has_value());
  EXPECT(st->state == LineState::ended);
}

TEST_CASE("a stream whose audio is refused with a per-stream busy after its end_stream left does not report a clean end: it fails, saying why") {
  FakeRuntime runtime;
  LineClient client(config_for(runtime));
  client.start();
  // A live stream: its end_stream follows its audio at once (only a line's waits for its audio to be read).
  const LineId id = client.open(line_options("npc_live", std::string(kModeLive)));
  const std::vector<float> pcm = ramp(3200);  // two 100 ms messages
  REQUIRE(client.push(id, pcm) == PushResult::accepted);
  REQUIRE(client.end(id));
  Sim sim(runtime);
  std::optional<Request> last_audio;
  sim.hook = [&](const Request& r) {
    if (r.message.type == "audio" && std::get<Audio>(r.message.body).at_sample.value_or(0) > 0 && !last_audio) {
      last_audio = r;  // its answer comes once the end_stream is read: the busy arrives after the end left
      return true;
    }
    if (r.message.type == "end_stream" && last_audio) {
      runtime.error(last_audio->identity, "busy", "stream 'npc_live': this chunk would put it too far ahead",
                    std::nullopt, std::string("npc_live"));
    }
    return false;
  };
  REQUIRE_MSG(sim.serve_until(1), "the stream did not end");
  REQUIRE(last_audio.has_value());
  const std::optional<LineStatus> st = client.wait_finished(id, kTimeout);
  REQUIRE(st.has_value());
  EXPECT_MSG(st->state == LineState::failed, "state " + std::string(to_string(st->state)));
  EXPECT(st->error_code == ErrorCode::busy);
  EXPECT(st->error_message.find("after its end_stream") != std::string::npos);
  EXPECT(st->frames > 0u);  // the runtime's count is kept
}

TEST_CASE("open_streams that timed out are remembered by req only, the latest 1000: memory stays bounded however many time out") {
  FakeRuntime runtime;  // never answers
  LineClientConfig config = config_for(runtime);
  config.open_timeout_s = 0.05;
  LineClient client(config);
  client.start();
  LineOptions options = line_options("npc");
  options.transcript = std::string(2000, 'a');  // each Line held would keep this
  constexpr std::size_t kOpens = 1100;
  std::vector<LineId> ids;
  for (std::size_t k = 0; k < kOpens; ++k) ids.push_back(client.open(options));
  for (LineId id : ids) {
    const std::optional<LineStatus> st = client.wait_finished(id, kTimeout);
    REQUIRE(st.has_value());
    EXPECT(st->state == LineState::failed);
    EXPECT(client.forget(id));
  }
  EXPECT_EQ(client.lines().size(), 0u);
  const LineClientStatus cs = client.status();
  EXPECT_MSG(cs.remembered_reqs <= 1000u, std::to_string(cs.remembered_reqs) + " reqs remembered");
}

TEST_CASE("the end_stream of a line that failed waiting for stream_ended is forgotten with it") {
  FakeRuntime runtime;
  LineClientConfig config = config_for(runtime);
  config.end_timeout_s = 0.1;
  LineClient client(config);
  client.start();
  const LineId id = client.open(line_options("npc1"));
  REQUIRE(client.push(id, ramp(1600)) == PushResult::accepted);
  REQUIRE(client.end(id));
  std::optional<Request> open = runtime.next_of("open_stream");
  REQUIRE(open.has_value());
  runtime.opened(*open);
  REQUIRE(runtime.next_of("end_stream").has_value());  // never answered
  const std::optional<LineStatus> st = client.wait_finished(id, kTimeout);
  REQUIRE(st.has_value());
  EXPECT(st->state == LineState::failed);
  EXPECT(client.forget(id));
  EXPECT_EQ(client.status().remembered_reqs, 0u);
}

TEST_CASE("a poll_interval of 0 or less is refused, and an idle client's I/O thread sleeps instead of polling every few ms") {
  FakeRuntime runtime;
  LineClientConfig zero = config_for(runtime);
  zero.poll_interval = std::chrono::milliseconds(0);
  bool refused = false;
  try {
    LineClient spinning(zero);
  } catch (const std::invalid_argument&) {
    refused = true;
  }
  EXPECT_MSG(refused, "poll_interval 0 was accepted (the I/O thread would spin)");

  LineClient client(config_for(runtime));
  client.start();
  // A finished line kept for polling, which an idle pass must not cost anything.
  const LineId id = client.open(line_options("npc1"));
  std::optional<Request> open = runtime.next_of("open_stream");
  REQUIRE(open.has_value());
  runtime.error(open->identity, "busy", "no room", std::get<OpenStream>(open->message.body).req, std::nullopt,
                "open_stream");
  REQUIRE(client.wait_finished(id, kTimeout).has_value());
  // Nothing to do from here: the wakeups in this window are the I/O thread's idle cost.
  const std::uint64_t before = client.status().wakeups;
  std::this_thread::sleep_for(300ms);  // a measuring window, not a synchronisation
  const std::uint64_t woke = client.status().wakeups - before;
  EXPECT_MSG(woke <= 3u, "the idle I/O thread woke " + std::to_string(woke) + " times in 300 ms");
}

TEST_CASE("start and stop called from two threads at once neither crash nor leave a thread running") {
  FakeRuntime runtime;
  LineClient client(config_for(runtime));
  const auto cycle = [&client] {
    for (int i = 0; i < 200; ++i) {
      client.start();
      client.stop();
    }
  };
  std::thread a(cycle);
  std::thread b(cycle);
  a.join();
  b.join();
  EXPECT(!client.running());
  client.start();  // and it still works
  const LineId id = client.open(line_options("npc1"));
  std::optional<Request> open = runtime.next_of("open_stream");
  REQUIRE_MSG(open.has_value(), "no open_stream after the start/stop storm");
  runtime.opened(*open);
  EXPECT(poll_until(client, id, [](const LineStatus& s) { return s.state != LineState::opening; })->state ==
         LineState::open);
}

TEST_CASE("when the I/O thread stops on an error, its lines fail with the reason instead of staying opening for ever") {
  LineClientConfig config;
  config.endpoint = "not-an-endpoint";  // connect() throws on the I/O thread
  config.open_timeout_s = 1000.0;       // so only the thread's death can end the line
  LineClient client(config);
  const LineId before_start = client.open(line_options("npc1"));
  client.start();
  const std::optional<LineStatus> st = client.wait_finished(before_start, kTimeout);
  REQUIRE_MSG(st.has_value(), "the line stayed " + std::string(to_string(client.status(before_start)->state)));
  EXPECT(st->state == LineState::failed);
  EXPECT_MSG(st->error_message.find("I/O thread") != std::string::npos, st->error_message);
  // One opened after it died fails at once too (nothing would ever send it).
  const LineId after = client.open(line_options("npc2"));
  const std::optional<LineStatus> st2 = client.wait_finished(after, kTimeout);
  REQUIRE(st2.has_value());
  EXPECT(st2->state == LineState::failed);
  EXPECT(!client.running());
  EXPECT(!client.status().last_error.empty());
  // start() runs it again (here to the same end: the endpoint is still bad), without hanging.
  client.start();
  const LineId again = client.open(line_options("npc3"));
  const std::optional<LineStatus> st3 = client.wait_finished(again, kTimeout);
  REQUIRE(st3.has_value());
  EXPECT(st3->state == LineState::failed);
}

// --- review rv4: audio of a line queued while its previous message was unconfirmed (D1), and
// end_streams sent again after every busy (D2) ----------------------------------------------------

namespace {

// Samples of `pcm` the runtime lacks (missing, or silence where the line had audio).
std::size_t samples_lacking(const std::vector<float>& pcm, const std::vector<float>& heard) {
  std::size_t wrong = 0;
  for (std::size_t i = 0; i < pcm.size(); ++i) wrong += i >= heard.size() || heard[i] != pcm[i] ? 1 : 0;
  return wrong;
}

// Waits (bounded) until the client has encoded the line's audio up to `samples`: its next message
// is queued in the outbox (a line's next message is encoded one pass before it may leave).
bool queued_up_to(const LineClient& client, LineId id, std::uint64_t samples) {
  const std::optional<LineStatus> st =
      poll_until(client, id, [&](const LineStatus& s) { return s.samples_sent >= samples; });
  return st && st->samples_sent >= samples;
}

// A 30 s line (three 10 s messages, no pacing) whose second message is queued while the first is
// unconfirmed: when the probe after the first comes, another call wakes the I/O thread and the test
// waits until that pass has encoded the second message, then answers the probe. `on_second` deals
// with the second message as it comes (refuses or drops it); the runtime must still have the whole
// line at end_stream, and the line must finish as `expected`.
void line_whose_second_message_waited(const std::function<void(Sim&, const Request&)>& on_second,
                                      LineState expected) {
  FakeRuntime runtime;
  LineClient client(config_for(runtime));
  client.start();
  const LineId id = client.open(line_options("npc1"));
  const std::vector<float> pcm = ramp(16000 * 30);
  REQUIRE(client.push(id, pcm) == PushResult::accepted);
  REQUIRE(client.end(id));
  Sim sim(runtime);
  sim.max_ahead_s = 60.0;
  std::size_t audio = 0;
  bool woke = false;
  sim.hook = [&](const Request& r) {
    if (r.message.type == "hello" && audio == 1 && !woke) {
      woke = true;
      (void)client.open(line_options("other"));  // any call: a pass while the probe is unanswered
      REQUIRE_MSG(queued_up_to(client, id, 2 * 160000), "the second message was not queued");
      return false;  // then the probe is answered: the first message is known read
    }
    if (r.message.type != "audio" || std::get<Audio>(r.message.body).stream != "npc1") return false;
    if (++audio != 2) return false;
    on_second(sim, r);
    return true;
  };
  REQUIRE_MSG(sim.serve_until(1), "the line did not end");
  EXPECT(woke);
  const std::size_t lacking = samples_lacking(pcm, sim.heard_at_end["npc1"]);
  EXPECT_MSG(lacking == 0, "at end_stream the runtime lacks " + std::to_string(lacking) + " of the line's samples");
  const std::optional<LineStatus> st = client.wait_finished(id, kTimeout);
  REQUIRE(st.has_value());
  EXPECT_MSG(st->state == expected, "state " + std::string(to_string(st->state)) + ": " + st->error_message);
  EXPECT(st->messages_sent >= 4u);  // three messages, the second one twice
}

}  // namespace

TEST_CASE("a line's message queued while its previous one was unconfirmed, then refused with a per-stream busy, goes again: the line ends whole") {
  line_whose_second_message_waited(
      [](Sim& sim, const Request& r) {
        sim.runtime.error(r.identity, "busy", "stream 'npc1': too far ahead", std::nullopt, std::string("npc1"));
      },
      LineState::ended);
}

TEST_CASE("a line's message queued while its previous one was unconfirmed, then dropped by a client-level busy, goes again: the line ends whole") {
  line_whose_second_message_waited([](Sim& sim, const Request& r) { sim.busy(r, 0.05); }, LineState::ended);
}

TEST_CASE("a copy of a line's audio dropped by a second client-level busy goes again: the line ends whole") {
  FakeRuntime runtime;
  LineClient client(config_for(runtime));
  client.start();
  const LineId id = client.open(line_options("npc1"));
  const std::vector<float> pcm = ramp(16000 * 3);  // one message
  REQUIRE(client.push(id, pcm) == PushResult::accepted);
  REQUIRE(client.end(id));
  Sim sim(runtime);
  sim.max_ahead_s = 60.0;
  std::size_t audio = 0;
  sim.hook = [&](const Request& r) {
    // The message, then its copy (held in the outbox until a probe says the first was dealt with),
    // each takes the client past its share.
    if (r.message.type != "audio" || ++audio > 2) return false;
    sim.busy(r, 0.05);
    return true;
  };
  REQUIRE_MSG(sim.serve_until(1), "the line did not end");
  EXPECT_EQ(audio, 3u);
  const std::size_t lacking = samples_lacking(pcm, sim.heard_at_end["npc1"]);
  EXPECT_MSG(lacking == 0, "at end_stream the runtime lacks " + std::to_string(lacking) + " of the 48000 samples");
  const std::optional<LineStatus> st = client.wait_finished(id, kTimeout);
  REQUIRE(st.has_value());
  EXPECT_MSG(st->state == LineState::ended, "state " + std::string(to_string(st->state)));
  EXPECT_EQ(st->messages_resent, 2u);
}

TEST_CASE("a line whose audio dropped by a busy was no longer kept (past sent_audio_max_bytes) fails at stream_ended instead of reporting a clean end") {
  FakeRuntime runtime;
  LineClientConfig config = config_for(runtime);
  config.sent_audio_max_bytes = 1;  // nothing sent is kept: a dropped message cannot go again
  LineClient client(config);
  client.start();
  const LineId id = client.open(line_options("npc1"));
  REQUIRE(client.push(id, ramp(16000 * 3)) == PushResult::accepted);
  REQUIRE(client.end(id));
  Sim sim(runtime);
  sim.max_ahead_s = 60.0;
  bool dropped = false;
  sim.hook = [&](const Request& r) {
    if (r.message.type != "audio" || dropped) return false;
    dropped = true;
    sim.busy(r, 0.05);
    return true;
  };
  REQUIRE_MSG(sim.serve_until(1), "the line did not end");
  EXPECT(sim.heard_at_end["npc1"].empty());  // the runtime ended it without its audio
  const std::optional<LineStatus> st = client.wait_finished(id, kTimeout);
  REQUIRE(st.has_value());
  EXPECT_MSG(st->state == LineState::failed, "state " + std::string(to_string(st->state)));
  EXPECT(st->error_code == ErrorCode::busy);
  EXPECT_MSG(st->error_message.find("could not go again") != std::string::npos, st->error_message);
  EXPECT(st->frames > 0u);  // the runtime's count is kept
}

TEST_CASE("a line whose audio refused with a per-stream busy was no longer kept (past sent_audio_max_bytes) fails at stream_ended instead of reporting a clean end") {
  FakeRuntime runtime;
  LineClientConfig config = config_for(runtime);
  config.sent_audio_max_bytes = 1;  // nothing sent is kept: a refused message cannot go again
  LineClient client(config);
  client.start();
  const LineId id = client.open(line_options("npc1"));
  REQUIRE(client.push(id, ramp(16000 * 3)) == PushResult::accepted);
  REQUIRE(client.end(id));
  Sim sim(runtime);
  sim.max_ahead_s = 60.0;
  bool refused = false;
  sim.hook = [&](const Request& r) {
    if (r.message.type != "audio" || refused) return false;
    refused = true;
    // A pass of the I/O thread forgets the message (the limit) before the refusal comes.
    (void)client.open(line_options("other"));
    const auto deadline = Clock::now() + kTimeout;
    while (client.status().kept_bytes > 0 && Clock::now() < deadline) (void)client.wait_finished(id, 5ms);
    REQUIRE_MSG(client.status().kept_bytes == 0, "the message sent was not forgotten");
    runtime.error(r.identity, "busy", "stream 'npc1': too far ahead", std::nullopt, std::string("npc1"));
    return true;
  };
  REQUIRE_MSG(sim.serve_until(1), "the line did not end");
  const std::optional<LineStatus> st = client.wait_finished(id, kTimeout);
  REQUIRE(st.has_value());
  EXPECT_MSG(st->state == LineState::failed, "state " + std::string(to_string(st->state)));
  EXPECT_MSG(st->error_message.find("could not go again") != std::string::npos, st->error_message);
}

TEST_CASE("an end_stream known read is not sent again after later busies, and its end timeout counts from its first send") {
  FakeRuntime runtime;
  LineClientConfig config = config_for(runtime);
  config.end_timeout_s = 1.5;
  LineClient client(config);
  client.start();
  const LineId id = client.open(line_options("npc1"));
  REQUIRE(client.push(id, ramp(1600)) == PushResult::accepted);
  REQUIRE(client.end(id));
  // The runtime reads the end_stream (and answers the probe after it) but its stream_ended never
  // comes; a client-level busy comes 0.3 s after the end_stream, then every 1.3 s (each after the
  // last one's drops are over, so each would send the end_stream again and restart its timeout).
  std::string identity;
  std::size_t ends = 0;
  std::optional<Clock::time_point> first_end;
  std::optional<Clock::time_point> next_busy;
  const auto deadline = Clock::now() + 8s;
  while (Clock::now() < deadline && !client.status(id)->error_code) {
    if (next_busy && Clock::now() >= *next_busy) {
      runtime.error(identity, "busy", "this client sent more requests than the runtime handles for it",
                    std::nullopt, std::nullopt);
      *next_busy += 1300ms;
    }
    std::optional<Request> r = runtime.next(20ms);
    if (!r) continue;
    identity = r->identity;
    if (r->message.type == "hello") {
      runtime.hello(*r);
    } else if (r->message.type == "open_stream") {
      runtime.opened(*r);
    } else if (r->message.type == "end_stream" && ++ends == 1) {
      first_end = Clock::now();
      next_busy = *first_end + 300ms;
    }
  }
  const std::optional<LineStatus> st = client.wait_finished(id, kTimeout);
  REQUIRE_MSG(st.has_value(), "the end timeout never fired");
  REQUIRE(first_end.has_value());
  EXPECT(st->state == LineState::failed);
  EXPECT_MSG(st->error_message.find("no stream_ended") != std::string::npos, st->error_message);
  const double failed_after_s = std::chrono::duration<double>(Clock::now() - *first_end).count();
  EXPECT_MSG(failed_after_s < 1.5 + 1.0, "failed " + std::to_string(failed_after_s) + " s after the end_stream");
  EXPECT_EQ(ends, 1u);
  EXPECT_EQ(client.status().resent, 0u);
  EXPECT(client.status().busy >= 1u);
}

TEST_CASE("an error answering a hello probe proves the runtime read the messages before it: the line's next message goes on") {
  FakeRuntime runtime;
  LineClient client(config_for(runtime));
  client.start();
  const LineId id = client.open(line_options("npc1"));
  const std::vector<float> pcm = ramp(16000 * 30);  // three messages: each after a probe's answer
  REQUIRE(client.push(id, pcm) == PushResult::accepted);
  REQUIRE(client.end(id));
  Sim sim(runtime);
  sim.max_ahead_s = 60.0;
  std::size_t refused_probes = 0;
  sim.hook = [&](const Request& r) {
    if (r.message.type != "hello") return false;
    // A runtime that refuses the hello still read it, and every message before it.
    ++refused_probes;
    runtime.error(r.identity, "malformed", "hello refused", std::get<Hello>(r.message.body).req, std::nullopt,
                  "hello");
    return true;
  };
  REQUIRE_MSG(sim.serve_until(1), "the line did not end");
  EXPECT(refused_probes >= 2u);
  EXPECT_EQ(samples_lacking(pcm, sim.heard_at_end["npc1"]), 0u);
  const std::optional<LineStatus> st = client.wait_finished(id, kTimeout);
  REQUIRE(st.has_value());
  EXPECT(st->state == LineState::ended);
}

TEST_CASE("a line that fails while its next message waits in the queue sends nothing more: the message is dropped with it") {
  FakeRuntime runtime;
  LineClient client(config_for(runtime));
  client.start();
  const LineId id = client.open(line_options("npc1"));
  REQUIRE(client.push(id, ramp(16000 * 30)) == PushResult::accepted);  // three 10 s messages
  std::optional<Request> open = runtime.next_of("open_stream");
  REQUIRE(open.has_value());
  runtime.opened(*open, 60.0);
  // The first message, then the probe after it, left unanswered: the second waits for its answer.
  bool probed = false;
  while (!probed) {
    std::optional<Request> r = runtime.next();
    REQUIRE_MSG(r.has_value(), "no hello probe after the first message");
    probed = r->message.type == "hello";
  }
  (void)client.open(line_options("other"));  // any call: a pass queues the second message
  REQUIRE_MSG(queued_up_to(client, id, 2 * 160000), "the second message was not queued");
  runtime.error(open->identity, "unknown_stream", "stream 'npc1' is gone", std::nullopt, std::string("npc1"));
  const std::optional<LineStatus> st = client.wait_finished(id, kTimeout);
  REQUIRE(st.has_value());
  EXPECT(st->state == LineState::failed);
  // A line opened after the failure: its open_stream leaves after anything queued before it.
  (void)client.open(line_options("marker"));
  std::size_t later_audio = 0;
  bool marker = false;
  while (!marker) {
    std::optional<Request> r = runtime.next();
    REQUIRE_MSG(r.has_value(), "the marker's open_stream never came");
    if (r->message.type == "audio") ++later_audio;
    marker = r->message.type == "open_stream" && std::get<OpenStream>(r->message.body).stream == std::string("marker");
  }
  EXPECT_EQ(later_audio, 0u);
}

// --- a runtime restart, a dropped connection, and an ending line whose messages cannot leave ----

TEST_CASE("a hello answer naming a new runtime instance fails the lines the old one held, saying the runtime restarted; new lines go on") {
  FakeRuntime runtime;
  runtime.instance = "first";
  LineClientConfig config = config_for(runtime);
  config.open_timeout_s = 60.0;  // so only the restart can end the line within the test's bounds
  LineClient client(config);
  client.start();
  const LineId old_line = client.open(line_options("npc_old"));
  std::optional<Request> open = runtime.next_of("open_stream");  // the client's first hello answered on the way
  REQUIRE(open.has_value());
  runtime.opened(*open);
  REQUIRE(poll_until(client, old_line, [](const LineStatus& s) { return s.state != LineState::opening; })->state ==
          LineState::open);
  EXPECT_EQ(client.status().instance, std::string("first"));

  // The probe after the line's audio is answered by another runtime process: the stream is gone.
  REQUIRE(client.push(old_line, ramp(1600)) == PushResult::accepted);
  REQUIRE(runtime.next_of("audio").has_value());
  std::optional<Request> probe = runtime.next_of("hello");
  REQUIRE(probe.has_value());
  runtime.instance = "second";
  runtime.hello(*probe);
  const std::optional<LineStatus> lost = client.wait_finished(old_line, kTimeout);
  REQUIRE_MSG(lost.has_value(), "the line stayed " + std::string(to_string(client.status(old_line)->state)));
  EXPECT(lost->state == LineState::failed);
  EXPECT(lost->error_code == ErrorCode::unknown_stream);
  EXPECT_EQ(lost->lost, std::string("restart"));
  EXPECT_MSG(lost->error_message.find("restarted (instance first -> second)") != std::string::npos,
             lost->error_message);

  // A line opened now goes to the new runtime and ends there; an answer naming the old instance
  // again (a late one) is no second restart.
  const LineId new_line = client.open(line_options("npc_new"));
  std::optional<Request> reopen = runtime.next_of("open_stream");
  REQUIRE(reopen.has_value());
  runtime.opened(*reopen);
  runtime.instance = "first";
  REQUIRE(client.push(new_line, ramp(1600)) == PushResult::accepted);
  REQUIRE(client.end(new_line));
  std::optional<Request> end = runtime.next_of("end_stream");
  REQUIRE(end.has_value());
  runtime.ended(*end, 7);
  const std::optional<LineStatus> done = client.wait_finished(new_line, kTimeout);
  REQUIRE(done.has_value());
  EXPECT(done->state == LineState::ended);
  EXPECT(done->lost.empty());
  const LineClientStatus cs = client.status();
  EXPECT_EQ(cs.restarts, 1u);
  EXPECT_EQ(cs.instance, std::string("second"));
  EXPECT_EQ(cs.disconnects, 0u);
}

TEST_CASE("when the runtime restarts on the same endpoint, lines open, ending or awaiting stream_opened fail at once as lost, and a new line ends on the new runtime") {
  auto runtime = std::make_unique<FakeRuntime>();
  runtime->instance = "first";
  const std::string endpoint = runtime->endpoint();
  LineClientConfig config = config_for(*runtime);
  config.open_timeout_s = 60.0;  // so only the restart can end the lines within the test's bounds
  config.end_timeout_s = 60.0;
  LineClient client(config);
  client.start();
  const LineId open_line = client.open(line_options("npc_open"));
  const LineId ending_line = client.open(line_options("npc_ending"));
  const LineId opening_line = client.open(line_options("npc_opening"));
  for (int i = 0; i < 3; ++i) {
    std::optional<Request> open = runtime->next_of("open_stream");
    REQUIRE(open.has_value());
    // The third open_stream reaches the runtime and is never answered.
    if (std::get<OpenStream>(open->message.body).stream != std::string("npc_opening")) runtime->opened(*open);
  }
  REQUIRE(poll_until(client, open_line, [](const LineStatus& s) { return s.state == LineState::open; })->state ==
          LineState::open);
  REQUIRE(client.push(ending_line, ramp(1600)) == PushResult::accepted);
  REQUIRE(client.end(ending_line));
  REQUIRE(runtime->next_of("end_stream").has_value());  // never answered: the runtime goes away
  REQUIRE(client.status(ending_line)->state == LineState::ending);
  REQUIRE(client.status(opening_line)->state == LineState::opening);

  // The process stops (its socket closes with it) and another starts on the same endpoint.
  runtime.reset();
  const auto restarted_at = Clock::now();
  runtime = std::make_unique<FakeRuntime>(endpoint);
  runtime->instance = "second";
  for (LineId id : {open_line, ending_line, opening_line}) {
    const std::optional<LineStatus> st = client.wait_finished(id, kTimeout);
    REQUIRE_MSG(st.has_value(), "line " + std::to_string(id) + " stayed " +
                                    std::string(to_string(client.status(id)->state)));
    EXPECT(st->state == LineState::failed);
    EXPECT(st->error_code == ErrorCode::unknown_stream);
    EXPECT_EQ(st->lost, std::string("reconnect"));
    EXPECT_MSG(st->error_message.find("dropped") != std::string::npos, st->error_message);
  }
  // Promptly: well inside the 60 s timeouts (5 s of slack for a loaded machine).
  EXPECT(Clock::now() - restarted_at < 5s);

  // The client goes on with the new runtime, and its first hello there tells it the runtime restarted.
  const LineId next_line = client.open(line_options("npc_next"));
  std::optional<Request> open = runtime->next_of("open_stream");
  REQUIRE_MSG(open.has_value(), "no open_stream reached the restarted runtime");
  runtime->opened(*open);
  REQUIRE(client.push(next_line, ramp(1600)) == PushResult::accepted);
  REQUIRE(client.end(next_line));
  std::optional<Request> end = runtime->next_of("end_stream");
  REQUIRE(end.has_value());
  runtime->ended(*end, 7);
  const std::optional<LineStatus> done = client.wait_finished(next_line, kTimeout);
  REQUIRE(done.has_value());
  EXPECT(done->state == LineState::ended);
  const LineClientStatus cs = client.status();
  EXPECT(cs.disconnects >= 1u);
  EXPECT_EQ(cs.restarts, 1u);
  EXPECT_EQ(cs.instance, std::string("second"));
}

TEST_CASE("an ending line whose end_stream cannot leave (the runtime never reads its messages) fails after end_timeout_s, saying so, and its end_stream never goes") {
  FakeRuntime runtime;
  LineClientConfig config = config_for(runtime);
  config.end_timeout_s = 0.5;
  LineClient client(config);
  client.start();
  const LineId id = client.open(line_options("npc1"));
  std::optional<Request> open = runtime.next_of("open_stream");
  REQUIRE(open.has_value());
  runtime.opened(*open);
  REQUIRE(poll_until(client, id, [](const LineStatus& s) { return s.state == LineState::open; })->state ==
          LineState::open);
  REQUIRE(client.push(id, ramp(1600)) == PushResult::accepted);
  const double ended_at = client.now();
  REQUIRE(client.end(id));
  // From here the runtime reads nothing more it answers: the hello probe after the audio never gets
  // its answer, so the end_stream, which waits for it, cannot leave.
  std::size_t end_streams = 0;
  const auto deadline = Clock::now() + kTimeout;
  while (Clock::now() < deadline && client.status(id)->state == LineState::ending) {
    std::optional<Request> r = runtime.next(20ms);
    if (r && r->message.type == "end_stream") ++end_streams;
  }
  const std::optional<LineStatus> st = client.status(id);
  REQUIRE(st.has_value());
  REQUIRE_MSG(st->state == LineState::failed, "the line stayed " + std::string(to_string(st->state)));
  EXPECT_MSG(st->error_message.find("end_stream could not leave") != std::string::npos, st->error_message);
  EXPECT(client.now() - ended_at >= 0.5);
  // Withdrawn with the line: it does not go later either, once the probes are answered (one goes
  // again each second: this window sees at least one).
  const auto window_end = Clock::now() + 1500ms;
  while (Clock::now() < window_end) {
    std::optional<Request> r = runtime.next(100ms);
    if (r && r->message.type == "hello") runtime.hello(*r);
    if (r && r->message.type == "end_stream") ++end_streams;
  }
  EXPECT_EQ(end_streams, 0u);
}

// --- SPEC 4.6: an open_stream dropped unread after a client-level busy goes again once an answer
// proves it unread (the runtime answers open_stream as it reads it, in order), never merely because
// the busy's window ended with it unanswered ----------------------------------------------------

namespace {

// open_streams among `requests`.
std::size_t open_streams_in(const std::vector<Request>& requests) {
  std::size_t n = 0;
  for (const Request& r : requests) n += r.message.type == "open_stream" ? 1 : 0;
  return n;
}

}  // namespace

TEST_CASE("an open_stream dropped unread after a client-level busy goes again once a later probe is answered, and the line then ends whole") {
  FakeRuntime runtime;
  LineClientConfig config = config_for(runtime);
  // Far longer than the test waits (kTimeout): the line has to open because its open_stream went
  // again, not fail at its open timeout (which used to be its only way out).
  config.open_timeout_s = 30.0;
  LineClient client(config);
  client.start();
  const LineId id = client.open(line_options("npc1"));
  const std::vector<float> pcm = ramp(16000);
  REQUIRE(client.push(id, pcm) == PushResult::accepted);
  REQUIRE(client.end(id));
  Sim sim(runtime);
  std::size_t opens_seen = 0;  // open_streams the runtime read outside the drops
  sim.hook = [&](const Request& r) {
    if (r.message.type != "open_stream" || ++opens_seen != 1) return false;
    // The open_stream takes the client past its share: it, and all the runtime reads in the next
    // second (the hello probes too), are dropped unread.
    sim.busy(r, kBusyWindowS);
    return true;
  };
  REQUIRE_MSG(sim.serve_until(1), "the line did not end: its open_stream dropped unread did not go again");
  // Once: dropped, then once more after a probe's answer proved it unread (none within the drops).
  EXPECT_EQ(opens_seen + open_streams_in(sim.dropped_requests), 2u);
  EXPECT_EQ(open_streams_in(sim.taken), 1u);
  EXPECT_MSG(sim.heard_at_end["npc1"] == pcm, "the runtime has " + std::to_string(sim.heard_at_end["npc1"].size()) +
                                                  " of the 16000 samples at end_stream");
  const std::optional<LineStatus> st = client.wait_finished(id, kTimeout);
  REQUIRE(st.has_value());
  EXPECT_MSG(st->state == LineState::ended, "state " + std::string(to_string(st->state)) + ": " + st->error_message);
  EXPECT_EQ(st->stream, std::string("npc1"));  // it got opened (stream_opened named it)
  const LineClientStatus cs = client.status();
  EXPECT_EQ(cs.busy, 1u);
  EXPECT_EQ(cs.resent, 1u);  // the open_stream
}

TEST_CASE("an open_stream whose answer is merely slow (held past the busy window, nothing answered after it first) is sent exactly once") {
  FakeRuntime runtime;
  LineClientConfig config = config_for(runtime);
  config.open_timeout_s = 30.0;
  LineClient client(config);
  client.start();
  const LineId id = client.open(line_options("npc1"));
  const std::vector<float> pcm = ramp(16000);
  REQUIRE(client.push(id, pcm) == PushResult::accepted);
  REQUIRE(client.end(id));
  std::optional<Request> open = runtime.next_of("open_stream");
  REQUIRE(open.has_value());
  // A client-level busy comes while the open_stream is still on its way (it waits in the queues):
  // the runtime reads it, and answers it, only 2 s later, past the busy's window. It reads the
  // client's messages in order, so whatever came after the open_stream meanwhile (hello probes) is
  // answered after it.
  const double busy_s = seconds_now();
  runtime.error(open->identity, "busy", "this client sent more requests than the runtime handles for it",
                std::nullopt, std::nullopt, "audio");
  std::vector<Request> held;
  const auto answer_at = Clock::now() + std::chrono::milliseconds(static_cast<int>(2000 * kBusyWindowS));
  while (Clock::now() < answer_at) {
    std::optional<Request> r =
        runtime.next(std::chrono::duration_cast<std::chrono::milliseconds>(answer_at - Clock::now()));
    if (r) held.push_back(std::move(*r));
  }
  // The client probed once the window was over (the probe whose answer could prove the open_stream
  // unread, were it answered first): without it this case would prove nothing.
  bool probed_after_window = false;
  for (const Request& r : held) probed_after_window |= r.message.type == "hello" && r.at_s - busy_s >= kBusyWindowS;
  EXPECT_MSG(probed_after_window, "no hello probe followed the unanswered open_stream once the busy's window ended");
  runtime.opened(*open);
  Sim sim(runtime);
  std::size_t copies = 0;  // open_streams after the first, held ones included (the hook counts them)
  // A copy would reach a runtime that has the stream open already: refused (SPEC: "already open").
  sim.hook = [&](const Request& r) {
    if (r.message.type != "open_stream") return false;
    ++copies;
    runtime.error(r.identity, "busy", "an open stream already has the id 'npc1'",
                  std::get<OpenStream>(r.message.body).req, std::string("npc1"), "open_stream");
    return true;
  };
  for (const Request& r : held) {
    if (r.message.type == "hello") runtime.hello(r);
    if (r.message.type == "open_stream") (void)sim.hook(r);
  }
  REQUIRE_MSG(sim.serve_until(1), "the line did not end");
  EXPECT_MSG(copies == 0u, "the open_stream was sent " + std::to_string(1 + copies) + " times");
  EXPECT(sim.heard_at_end["npc1"] == pcm);
  const std::optional<LineStatus> st = client.wait_finished(id, kTimeout);
  REQUIRE(st.has_value());
  EXPECT_MSG(st->state == LineState::ended, "state " + std::string(to_string(st->state)) + ": " + st->error_message);
  const LineClientStatus cs = client.status();
  EXPECT_EQ(cs.busy, 1u);
  EXPECT_EQ(cs.resent, 0u);
}

HARNESS_MAIN()

// --- stop() then start(): the DEALER closed, and with it its connection and every stream it opened
// (SPEC 1, Ownership); the next start() begins afresh ----------------------------------------------

TEST_CASE("after stop() and start() an open_stream that left on the old connection fails and is not sent again on the new one") {
  FakeRuntime runtime;
  LineClientConfig config = config_for(runtime);
  config.open_timeout_s = 30.0;
  LineClient client(config);
  client.start();
  const LineId opening = client.open(line_options("npc_opening"));
  std::optional<Request> open = runtime.next_of("open_stream");  // the first hello answered on the way
  REQUIRE(open.has_value());
  client.stop();
  std::optional<LineStatus> st = client.status(opening);
  REQUIRE(st.has_value());
  EXPECT_MSG(st->state == LineState::failed, "line state " + std::string(to_string(st->state)) + " after stop()");
  EXPECT_EQ(st->lost, std::string("reconnect"));
  client.start();
  // The new connection: its hellos answered (which once made the old open_stream look unread there),
  // for longer than a probe's interval; no open_stream may come.
  std::size_t copies = 0;
  const auto window_end = Clock::now() + 1500ms;
  while (Clock::now() < window_end) {
    std::optional<Request> r = runtime.next(100ms);
    if (!r) continue;
    if (r->message.type == "hello") runtime.hello(*r);
    if (r->message.type == "open_stream") ++copies;
  }
  EXPECT_MSG(copies == 0u, "the open_stream that left on the old connection went again " + std::to_string(copies) +
                               " time(s)");
}

TEST_CASE("after stop() a line open on the closed connection is failed as lost, not left open") {
  FakeRuntime runtime;
  LineClientConfig config = config_for(runtime);
  LineClient client(config);
  client.start();
  const LineId id = client.open(line_options("npc_open"));
  std::optional<Request> open = runtime.next_of("open_stream");
  REQUIRE(open.has_value());
  runtime.opened(*open);
  REQUIRE(poll_until(client, id, [](const LineStatus& s) { return s.state == LineState::open; })->state ==
          LineState::open);
  client.stop();
  const std::optional<LineStatus> st = client.status(id);
  REQUIRE(st.has_value());
  EXPECT_MSG(st->state == LineState::failed, "line state " + std::string(to_string(st->state)) +
                                                 " although its stream belonged to the closed connection");
  EXPECT_EQ(st->lost, std::string("reconnect"));
}
