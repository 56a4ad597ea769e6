// LineClient (the DEALER client for NPC lines) against a ZeroMQ ROUTER in this test that plays the
// runtime's side on loopback (an ephemeral port): it reads the client's requests with the core's
// own decoder and answers as the runtime would (stream_opened, stream_ended, errors), or sends a
// client-level busy and takes the requests before it as dropped. No mocks: real sockets, the
// client's real I/O thread. Every wait is on a condition with a bounded timeout.
#include "harness.hpp"
#include "wire.hpp"

#include "ksdiff/line_client.hpp"

#include <zmq.hpp>

#include <chrono>
#include <cmath>
#include <cstring>
#include <map>
#include <set>
#include <string>
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
  FakeRuntime() : socket_(context_, zmq::socket_type::router) {
    socket_.set(zmq::sockopt::linger, 0);
    socket_.bind("tcp://127.0.0.1:*");
    endpoint_ = socket_.get(zmq::sockopt::last_endpoint);
  }
  const std::string& endpoint() const { return endpoint_; }

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

  // Requests until one of type `type` (included), within the timeout; the others in `before`.
  std::optional<Request> next_of(const std::string& type, std::vector<Request>* before = nullptr) {
    const auto deadline = Clock::now() + kTimeout;
    while (Clock::now() < deadline) {
      std::optional<Request> r = next(std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()));
      if (!r) break;
      if (r->message.type == type) return r;
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

TEST_CASE("after a client-level busy the lines' audio goes again in its order, before the end_streams sent again; a live stream's audio does not") {
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
  const std::vector<float> line_pcm = ramp(24000);       // 1.5 s: one message (a line's are up to 10 s)
  const std::vector<float> live_pcm = ramp(3200, 0.5f);  // 0.2 s: two 100 ms messages
  REQUIRE(client.push(line, line_pcm) == PushResult::accepted);
  REQUIRE(client.push(live, live_pcm) == PushResult::accepted);
  REQUIRE(client.end(line));
  REQUIRE(client.end(live));

  // Everything up to both end_streams: the runtime "drops" it all unread and says so once.
  std::vector<Request> first;
  std::optional<Request> end_a = runtime.next_of("end_stream", &first);
  REQUIRE(end_a.has_value());
  std::optional<Request> end_b = runtime.next_of("end_stream", &first);
  REQUIRE(end_b.has_value());
  std::size_t line_messages = 0;
  for (const Request& r : first) line_messages += std::get<Audio>(r.message.body).stream == "npc_line" ? 1 : 0;
  EXPECT_EQ(line_messages, 1u);
  const double busy_s = seconds_now();
  runtime.error(end_b->identity, "busy", "this client sent more requests than the runtime handles for it",
                std::nullopt, std::nullopt, "end_stream");

  // Once the window has passed: the line's audio, whole and with its at_sample, then both end_streams.
  std::vector<Request> again;
  std::optional<Request> end_again_1 = runtime.next_of("end_stream", &again);
  REQUIRE_MSG(end_again_1.has_value(), "no end_stream sent again after the busy");
  std::optional<Request> end_again_2 = runtime.next_of("end_stream");
  REQUIRE(end_again_2.has_value());
  EXPECT_MSG(end_again_1->at_s - busy_s >= 0.9 * kBusyWindowS, "sent again before the drops ended");
  std::vector<float> copy;
  for (const Request& r : again) {
    REQUIRE(r.message.type == "audio");
    const auto& a = std::get<Audio>(r.message.body);
    EXPECT_MSG(a.stream == "npc_line", "a live stream's audio was sent again");
    EXPECT_EQ(a.at_sample.value_or(999999), copy.size());
    const std::vector<float> part = samples_of(a);
    copy.insert(copy.end(), part.begin(), part.end());
  }
  EXPECT(copy == line_pcm);
  // The copies carry the same req: the first answer ends the line, the other copy's is dropped.
  const auto req_of = [](const Request& r) { return *std::get<EndStream>(r.message.body).req; };
  EXPECT(std::get<EndStream>(end_again_1->message.body).stream == std::get<EndStream>(end_a->message.body).stream);
  EXPECT_EQ(req_of(*end_again_1), req_of(*end_a));
  EXPECT_EQ(req_of(*end_again_2), req_of(*end_b));
  runtime.ended(*end_again_1, 49);
  runtime.ended(*end_again_2, 10);
  runtime.error(end_a->identity, "unknown_stream", "stream 'npc_line' has ended", req_of(*end_a),
                std::get<EndStream>(end_a->message.body).stream, "end_stream");
  const std::optional<LineStatus> line_st = client.wait_finished(line, kTimeout);
  const std::optional<LineStatus> live_st = client.wait_finished(live, kTimeout);
  REQUIRE(line_st && live_st);
  EXPECT(line_st->state == LineState::ended);
  EXPECT(live_st->state == LineState::ended);
  EXPECT_EQ(line_st->messages_resent, 1u);
  EXPECT_EQ(live_st->messages_resent, 0u);
  // The unknown_stream of the copy, whichever came last, changed nothing: both stay ended.
  const auto settled = Clock::now() + kTimeout;
  while (client.status().ignored == 0 && Clock::now() < settled) (void)client.wait_finished(line, 5ms);
  EXPECT(client.status(line)->state == LineState::ended);
  const LineClientStatus cs = client.status();
  EXPECT_EQ(cs.busy, 1u);
  EXPECT_EQ(cs.resent, 3u);  // one audio message, two end_streams
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
    if (r->message.type == "open_stream") {
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
    if (r->message.type == "end_stream") {
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

HARNESS_MAIN()
