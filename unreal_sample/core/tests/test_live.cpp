// Against a real `ksdiff-runtime serve` on loopback (POSIX: it spawns the server).
//
//   test_live <path to ksdiff-runtime>     (an empty path: skipped, exit code 77)
//
// 1. DEALER-driven stream (deterministic): the test opens stream "cpp_live" on the runtime's
//    ROUTER, pushes 1.5 s of audio, ends it, and checks that the C++ subscriber received the
//    stream_start, every frame 0..N-1 in order with its audio time, and the stream_end, and
//    that the Live Link feed and the jitter buffer handle them. Then protocol 1.2 on the same
//    runtime: set_controls on a stream that does not exist is unknown_stream; a line opened in
//    mode "line" is told its mode and latency (stream_opened and stream_start, latency_ms > 0);
//    set_controls with jawOpen's gain at 0 is answered by controls_set, and the line's frames,
//    pushed whole with end_stream at once, then all have jawOpen 0 and come faster than real time.
//    Then LineClient: four NPC lines opened, pushed whole and ended at once through one client all
//    end with stream_ended, and the subscriber has every frame of each.
// 2. File stream with --loop, and a runtime restart: the subscriber sees the hello with the 52
//    names and 30 consecutive frames; the runtime is stopped with SIGINT and started again on
//    the same ports; the same subscriber reconnects by itself, reports the restart (a new
//    hello instance) and receives 30 consecutive frames again.
// 3. CurveZMQ (SPEC 1.1): keys made by `ksdiff-runtime keys`, `serve` with --curve-secret-key
//    and --curve-clients holding one client's key. That client (SUB and DEALER, keys from the
//    certificate files) drives a stream and receives all of it; a client with a key the runtime
//    does not know, and one without keys, receive nothing (their DEALER gets no reply) and
//    report the failed handshake.
// Every wait has a timeout; ports are free ephemeral ones; nothing sleeps to synchronise.
#include "harness.hpp"

#include "ksdiff/curve.hpp"
#include "ksdiff/jitter_buffer.hpp"
#include "ksdiff/line_client.hpp"
#include "ksdiff/live_link_feed.hpp"
#include "ksdiff/subscriber.hpp"

#include <zmq.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <thread>

extern char** environ;

using namespace ksdiff;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

std::string g_runtime;  // path of ksdiff-runtime
const std::string kSampleWav = KSDIFF_SAMPLE_WAV;
constexpr auto kStartTimeout = 120s;  // model load on a busy 2-core machine
constexpr auto kTimeout = 60s;

// A TCP port nothing listens on right now (the kernel picks it; we release it for the runtime).
int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    throw std::runtime_error("cannot find a free port");
  }
  ::close(fd);
  return ntohs(addr.sin_port);
}

std::string endpoint(int port) { return "tcp://127.0.0.1:" + std::to_string(port); }

// `ksdiff-runtime serve ...` (or another command) as a child process, its output in a log file.
// The destructor stops it (SIGINT, then SIGKILL) so a failing test never leaves it running.
class Runtime {
 public:
  explicit Runtime(const std::vector<std::string>& args, const std::string& command = "serve") {
    char log_template[] = "/tmp/ksdiff_live_XXXXXX";
    const int log_fd = ::mkstemp(log_template);
    if (log_fd < 0) throw std::runtime_error("mkstemp failed");
    log_path_ = log_template;
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, log_fd, 1);
    posix_spawn_file_actions_adddup2(&actions, log_fd, 2);
    std::vector<std::string> argv_strings = {g_runtime, command};
    argv_strings.insert(argv_strings.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (auto& a : argv_strings) argv.push_back(a.data());
    argv.push_back(nullptr);
    const int rc = posix_spawn(&pid_, g_runtime.c_str(), &actions, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    ::close(log_fd);
    if (rc != 0) throw std::runtime_error("cannot start " + g_runtime + ": " + std::strerror(rc));
  }

  ~Runtime() {
    if (pid_ > 0 && !stop(20s)) {
      ::kill(pid_, SIGKILL);
      (void)wait_exit(10s);
    }
    if (!log_path_.empty()) ::unlink(log_path_.c_str());
  }

  // SIGINT (the runtime's clean shutdown) and wait; true with exit status 0.
  bool stop(std::chrono::seconds timeout) {
    if (pid_ <= 0) return exit_status_ == 0;
    ::kill(pid_, SIGINT);
    const auto status = wait_exit(timeout);
    return status && *status == 0;
  }

  // For a command that ends by itself: its exit status, once it has exited within `timeout`.
  std::optional<int> wait(std::chrono::seconds timeout) { return wait_exit(timeout); }

  bool alive() {
    if (pid_ <= 0) return false;
    int status = 0;
    if (::waitpid(pid_, &status, WNOHANG) == pid_) {
      record(status);
      return false;
    }
    return true;
  }

  std::string log() const {
    std::ifstream in(log_path_);
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }

 private:
  // The exit status once the child has exited, polling until `timeout`.
  std::optional<int> wait_exit(std::chrono::seconds timeout) {
    const auto deadline = Clock::now() + timeout;
    while (pid_ > 0 && Clock::now() < deadline) {
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        record(status);
        break;
      }
      std::this_thread::sleep_for(20ms);  // polling a child's exit: there is no fd to wait on
    }
    if (pid_ > 0) return std::nullopt;
    return exit_status_;
  }

  void record(int status) {
    exit_status_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    pid_ = -1;
  }

  pid_t pid_ = -1;
  int exit_status_ = -1;
  std::string log_path_;
};

// Pops subscriber events until `done` returns true, the timeout passes, or the runtime dies.
template <typename Done>
bool wait_events(EventQueue& queue, Runtime& runtime, std::chrono::seconds timeout, Done done) {
  const auto deadline = Clock::now() + timeout;
  while (Clock::now() < deadline) {
    if (std::optional<Event> event = queue.pop(200ms)) {
      if (done(*event)) return true;
    } else if (!runtime.alive()) {
      return false;
    }
  }
  return false;
}

// The runtime's next message to our DEALER, within the timeout.
std::optional<Message> reply(zmq::socket_t& dealer, std::chrono::milliseconds timeout) {
  zmq_pollitem_t item{dealer.handle(), 0, ZMQ_POLLIN, 0};
  if (zmq_poll(&item, 1, static_cast<long>(timeout.count())) <= 0) return std::nullopt;
  zmq::message_t msg;
  if (!dealer.recv(msg, zmq::recv_flags::dontwait)) return std::nullopt;
  return decode(msg.data(), msg.size());
}

std::optional<std::uint64_t> req_of(const Message& m) {
  if (const auto* h = std::get_if<Hello>(&m.body)) return h->req;
  if (const auto* o = std::get_if<StreamOpened>(&m.body)) return o->req;
  if (const auto* e = std::get_if<StreamEnded>(&m.body)) return e->req;
  if (const auto* c = std::get_if<ControlsSet>(&m.body)) return c->req;
  if (const auto* e = std::get_if<Error>(&m.body)) return e->req;
  return std::nullopt;
}

// The reply to request `req`, within the timeout. Replies are matched by req, not by order
// (SPEC 1, since 1.1): anything else that comes first (an error for an audio message, which has
// no req) is kept in `others` for the failure message.
std::optional<Message> reply_to(zmq::socket_t& dealer, std::uint64_t req, std::chrono::seconds timeout,
                                std::string* others) {
  const auto deadline = Clock::now() + timeout;
  while (Clock::now() < deadline) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    std::optional<Message> m = reply(dealer, left);
    if (!m) break;
    if (req_of(*m) == std::optional<std::uint64_t>(req)) return m;
    if (others) {
      *others += " [" + m->type;
      if (const auto* e = std::get_if<Error>(&m->body)) *others += " " + e->code + ": " + e->message;
      *others += "]";
    }
  }
  return std::nullopt;
}

std::string what_came(const std::optional<Message>& r, const std::string& others) {
  std::string out = r ? r->type : std::string("no reply");
  if (r) {
    if (const auto* e = std::get_if<Error>(&r->body)) out += " " + e->code + ": " + e->message;
  }
  return out + (others.empty() ? "" : "; before it:" + others);
}

// `seconds` of a speech-like signal (a voiced buzz with syllable-rate loudness) as s16le mono.
std::string synthetic_speech_s16le(double seconds, int rate) {
  const auto n = static_cast<std::size_t>(seconds * rate);
  std::string pcm(2 * n, '\0');
  const double pi = 3.14159265358979323846;
  for (std::size_t i = 0; i < n; ++i) {
    const double t = static_cast<double>(i) / rate;
    const double f0 = 120.0 + 20.0 * std::sin(2 * pi * 0.7 * t);
    double x = 0.0;
    for (int h = 1; h <= 8; ++h) x += std::sin(2 * pi * f0 * h * t) / h;
    const double syllables = 0.5 * (1.0 - std::cos(2 * pi * 4.0 * t));
    const auto s = static_cast<std::int16_t>(std::lround(0.25 * syllables * x * 32767.0 / 2.0));
    pcm[2 * i] = static_cast<char>(s & 0xFF);
    pcm[2 * i + 1] = static_cast<char>((s >> 8) & 0xFF);
  }
  return pcm;
}

bool hello_has_canonical_names(const Hello& h) {
  if (!h.from_runtime || h.blendshapes.size() != kNumBlendshapes) return false;
  for (std::size_t i = 0; i < kNumBlendshapes; ++i) {
    if (h.blendshapes[i] != kBlendshapeNames[i]) return false;
  }
  return true;
}

constexpr std::size_t kJawOpen = 17;  // SPEC 5.1

// Protocol 1.2 on a running runtime, through `dealer` (its next request ids from 10): see 1. above.
void check_line_mode_and_controls(Runtime& runtime, zmq::socket_t& dealer, const std::string& pub) {
  const std::string stream = "cpp_line";
  std::string others;
  SetControls unknown;
  unknown.stream = "cpp_nobody";
  unknown.controls.shapes = NamedValues<ShapeControl>{{"jawOpen", ShapeControl{0.0, {}, {}, {}}}};
  unknown.req = 10;
  dealer.send(zmq::buffer(encode_set_controls(unknown)), zmq::send_flags::none);
  std::optional<Message> r = reply_to(dealer, 10, kTimeout, &others);
  REQUIRE_MSG(r && std::holds_alternative<Error>(r->body), what_came(r, others));
  EXPECT_EQ(std::get<Error>(r->body).code, std::string("unknown_stream"));

  // A subscriber for the line; its first hello proves its subscriptions are live.
  EventQueue queue;
  SubscriberConfig config;
  config.endpoint = pub;
  config.stream_filter = stream;
  Subscriber sub(config, queue);
  sub.start();
  const bool got_hello =
      wait_events(queue, runtime, kTimeout, [](const Event& e) { return std::holds_alternative<Hello>(e); });
  REQUIRE_MSG(got_hello, "no hello for the line's subscriber; runtime log:\n" + runtime.log());

  OpenStream open;
  open.stream = stream;
  open.sample_rate = 16000;
  open.format = "s16le";
  open.mode = std::string(kModeLine);
  open.req = 11;
  dealer.send(zmq::buffer(encode_open_stream(open)), zmq::send_flags::none);
  r = reply_to(dealer, 11, kTimeout, &others);
  REQUIRE_MSG(r && std::holds_alternative<StreamOpened>(r->body), what_came(r, others));
  const StreamOpened opened = std::get<StreamOpened>(r->body);
  EXPECT(opened.mode == std::optional<std::string>(std::string(kModeLine)));
  REQUIRE_MSG(opened.latency_ms.has_value(), "a 1.2 runtime states the line's latency");
  EXPECT(*opened.latency_ms > 0.0);

  SetControls silence;
  silence.stream = stream;
  silence.controls.shapes = NamedValues<ShapeControl>{{"jawOpen", ShapeControl{0.0, {}, {}, {}}}};
  silence.req = 12;
  dealer.send(zmq::buffer(encode_set_controls(silence)), zmq::send_flags::none);
  r = reply_to(dealer, 12, kTimeout, &others);
  REQUIRE_MSG(r && std::holds_alternative<ControlsSet>(r->body), what_came(r, others));
  const ControlsSet applied = std::get<ControlsSet>(r->body);
  EXPECT_EQ(applied.stream, stream);
  std::optional<double> gain;
  for (const auto& [name, control] : applied.controls.shapes.value_or(NamedValues<ShapeControl>{})) {
    if (name == "jawOpen") gain = control.gain;
  }
  EXPECT(gain == std::optional<double>(0.0));

  // The whole line at once (its audio is all there), in 100 ms messages, then end_stream at once.
  const double seconds = 1.0;
  const std::string pcm = synthetic_speech_s16le(seconds, 16000);
  const std::size_t chunk_bytes = 2 * 1600;
  std::uint64_t seq = 0;
  const auto first_push = Clock::now();
  for (std::size_t off = 0; off < pcm.size(); off += chunk_bytes, ++seq) {
    Audio audio;
    audio.stream = stream;
    audio.seq = seq;
    audio.at_sample = off / 2;
    audio.pcm = pcm.substr(off, chunk_bytes);
    dealer.send(zmq::buffer(encode_audio(audio)), zmq::send_flags::none);
  }
  dealer.send(zmq::buffer(encode_end_stream(EndStream{stream, 13})), zmq::send_flags::none);

  std::vector<Frame> frames;
  std::optional<StreamStart> start;
  std::optional<StreamEnd> end;
  Clock::time_point last_frame_at{};
  const bool got_end = wait_events(queue, runtime, kTimeout, [&](const Event& e) {
    if (const auto* f = std::get_if<FrameEvent>(&e)) {
      frames.push_back(f->frame);
      if (f->frame.last) last_frame_at = Clock::now();  // when the test has it: an upper bound
    }
    if (const auto* s = std::get_if<StreamStart>(&e)) start = *s;
    if (const auto* s = std::get_if<StreamEnd>(&e)) end = *s;
    return end.has_value();
  });
  REQUIRE_MSG(got_end, "no stream_end for the line; runtime log:\n" + runtime.log());
  r = reply_to(dealer, 13, kTimeout, &others);
  REQUIRE_MSG(r && std::holds_alternative<StreamEnded>(r->body), what_came(r, others));
  EXPECT_MSG(others.empty(), "unexpected replies:" + others);  // no audio chunk was refused
  REQUIRE(start.has_value());
  EXPECT(start->mode == std::optional<std::string>(std::string(kModeLine)));
  EXPECT(start->latency_ms.has_value() && *start->latency_ms > 0.0);
  EXPECT_EQ(end->reason, std::string("ended"));
  EXPECT_EQ(frames.size(), std::get<StreamEnded>(r->body).frames);
  EXPECT_EQ(frames.size(), 34u);  // 1 s at 30 fps, then the ease to rest
  for (std::size_t i = 0; i < frames.size(); ++i) {
    EXPECT_EQ(frames[i].index, i);
    EXPECT_EQ(frames[i].blendshapes[kJawOpen], 0.0f);
  }
  const double last_s = std::chrono::duration<double>(last_frame_at - first_push).count();
  std::fprintf(stderr, "  line %s in mode line: latency stated %.0f ms, %zu frames with jawOpen silenced by "
               "set_controls, the last %.0f ms after the first push (%.1f s of audio)\n",
               stream.c_str(), *opened.latency_ms, frames.size(), 1000.0 * last_s, seconds);
  EXPECT_MSG(!frames.empty() && frames.back().last && last_s < seconds,
             "a line in mode line arrives faster than real time: the last frame came " + std::to_string(last_s) +
                 " s after the first push");
}

// LineClient against the runtime: a few NPC lines of different lengths opened at once, each pushed
// whole and ended at once through one client, as a game does; every line ends (stream_ended) and
// the subscriber has each one's frames 0..N-1, N being the runtime's count, the last one `last`.
void check_line_client(Runtime& runtime, const std::string& router, const std::string& pub) {
  EventQueue queue;
  SubscriberConfig sub_config;
  sub_config.endpoint = pub;  // every stream: the lines' frames and stream events
  Subscriber sub(sub_config, queue);
  sub.start();
  const bool got_hello =
      wait_events(queue, runtime, kTimeout, [](const Event& e) { return std::holds_alternative<Hello>(e); });
  REQUIRE_MSG(got_hello, "no hello for the lines' subscriber; runtime log:\n" + runtime.log());

  LineClientConfig config;
  config.endpoint = router;
  LineClient client(config);
  client.start();
  const std::vector<double> seconds = {0.6, 0.8, 1.0, 1.2};
  std::vector<LineId> ids;
  for (std::size_t k = 0; k < seconds.size(); ++k) {
    LineOptions options;
    options.stream = "cpp_npc" + std::to_string(k);
    options.sample_rate = 16000;
    options.mode = std::string(kModeLine);
    ids.push_back(client.open(options));
    // The speech as float32 (-1..1), the format LineClient sends.
    const std::string s16 = synthetic_speech_s16le(seconds[k], 16000);
    std::vector<float> pcm(s16.size() / 2);
    for (std::size_t i = 0; i < pcm.size(); ++i) {
      const auto lo = static_cast<unsigned char>(s16[2 * i]);
      const auto hi = static_cast<unsigned char>(s16[2 * i + 1]);
      pcm[i] = static_cast<float>(static_cast<std::int16_t>(static_cast<std::uint16_t>(lo | (hi << 8)))) / 32768.0f;
    }
    REQUIRE(client.push(ids.back(), pcm) == PushResult::accepted);
    REQUIRE(client.end(ids.back()));
  }
  // SPEC 4.2: a stream of `samples` (16 kHz) that ends with its audio yields one frame per started
  // frame period, ceil(samples * fps / 16000), then its ease to rest, max(1, floor(0.15 * fps))
  // frames (the runtime's stream_frames): the count the audio pushed calls for, not only the one
  // stream_ended states (audio lost on the way would lower both alike).
  const auto frames_for = [](std::uint64_t samples, std::uint64_t fps) -> std::uint64_t {
    const std::uint64_t audio_frames = (samples * fps + 15999) / 16000;
    const std::uint64_t ease = fps * 15 / 100 > 0 ? fps * 15 / 100 : 1;  // floor(0.15 fps), exact in integers
    return audio_frames == 0 ? 0 : audio_frames + ease;
  };
  std::map<std::string, std::uint64_t> expected;  // stream -> the frames its pushed audio calls for
  for (LineId id : ids) {
    const std::optional<LineStatus> st = client.wait_finished(id, std::chrono::milliseconds(kTimeout));
    REQUIRE_MSG(st.has_value(), "a line did not finish; runtime log:\n" + runtime.log());
    EXPECT_MSG(st->state == LineState::ended, st->stream + ": " + std::string(to_string(st->state)) + " " +
                                                  st->error_message);
    EXPECT_EQ(st->samples_sent, st->samples_pushed);
    expected[st->stream] = frames_for(st->samples_pushed, st->fps);
    EXPECT_MSG(st->frames == expected[st->stream], st->stream + ": stream_ended says " + std::to_string(st->frames) +
                                                       " frames, its " + std::to_string(st->samples_pushed) +
                                                       " samples call for " + std::to_string(expected[st->stream]));
  }
  std::map<std::string, std::vector<Frame>> frames;
  std::size_t ended = 0;
  const bool got_all = wait_events(queue, runtime, kTimeout, [&](const Event& e) {
    if (const auto* f = std::get_if<FrameEvent>(&e)) frames[f->frame.stream].push_back(f->frame);
    if (const auto* s = std::get_if<StreamEnd>(&e)) ended += expected.count(s->stream);
    return ended == expected.size();
  });
  REQUIRE_MSG(got_all, "not every line's stream_end came; runtime log:\n" + runtime.log());
  for (const auto& [stream, count] : expected) {
    const std::vector<Frame>& got = frames[stream];
    EXPECT_EQ(got.size(), count);
    for (std::size_t i = 0; i < got.size(); ++i) {
      EXPECT_EQ(got[i].index, i);
      EXPECT_EQ(got[i].last, i + 1 == got.size());
    }
    std::fprintf(stderr, "  LineClient line %s: %zu frames of %llu expected from its samples\n", stream.c_str(),
                 got.size(), static_cast<unsigned long long>(count));
  }
  const LineClientStatus cs = client.status();
  EXPECT_EQ(cs.errors, 0u);
  EXPECT(cs.running);
}

class RecordingSink final : public LiveLinkSink {
 public:
  void declare_subject(const std::string& subject, const std::vector<std::string>&) override {
    declared.push_back(subject);
  }
  void push_frame(const SubjectFrame& frame) override { frames.push_back(frame); }
  std::vector<std::string> declared;
  std::vector<SubjectFrame> frames;
};

}  // namespace

TEST_CASE("a stream driven through the DEALER arrives whole: start, frames 0..N-1, end") {
  const std::string pub = endpoint(free_port());
  const std::string router = endpoint(free_port());
  const std::string stream = "cpp_live";

  EventQueue queue;
  SubscriberConfig config;
  config.endpoint = pub;
  config.stream_filter = stream;
  Subscriber sub(config, queue);
  sub.start();  // before the runtime exists: ZeroMQ connects once it binds
  Runtime runtime({"--pub", pub, "--router", router, "--backend", "onnxruntime"});

  // The hello proves the subscription is live (the runtime repeats it every second).
  std::optional<Hello> hello;
  const bool got_hello = wait_events(queue, runtime, kStartTimeout, [&](const Event& e) {
    if (const auto* h = std::get_if<Hello>(&e)) hello = *h;
    return hello.has_value();
  });
  REQUIRE_MSG(got_hello, "no hello from the runtime; its log:\n" + runtime.log());
  EXPECT(hello_has_canonical_names(*hello));
  EXPECT_EQ(hello->fps, 30u);
  EXPECT_EQ(hello->sample_rate, 16000u);
  EXPECT(hello->instance && !hello->instance->empty());

  zmq::context_t context;
  zmq::socket_t dealer(context, zmq::socket_type::dealer);
  dealer.set(zmq::sockopt::linger, 0);
  dealer.connect(router);

  std::string others;
  dealer.send(zmq::buffer(encode_hello_request(1)), zmq::send_flags::none);
  std::optional<Message> r = reply_to(dealer, 1, kTimeout, &others);
  REQUIRE_MSG(r && std::holds_alternative<Hello>(r->body), what_came(r, others));

  OpenStream open;
  open.stream = stream;
  open.sample_rate = 16000;
  open.channels = 1;
  open.format = "s16le";
  open.req = 2;
  dealer.send(zmq::buffer(encode_open_stream(open)), zmq::send_flags::none);
  r = reply_to(dealer, 2, kTimeout, &others);
  REQUIRE_MSG(r && std::holds_alternative<StreamOpened>(r->body), what_came(r, others));
  EXPECT_EQ(std::get<StreamOpened>(r->body).stream, stream);
  EXPECT_EQ(std::get<StreamOpened>(r->body).fps, 30u);
  // 1.1: how far ahead of real time audio may be pushed; 1.5 s at once must fit in it.
  const std::optional<double> max_ahead = std::get<StreamOpened>(r->body).max_ahead_s;
  REQUIRE_MSG(max_ahead.has_value(), "a 1.1 runtime's stream_opened carries max_ahead_s");
  EXPECT(*max_ahead >= 1.5);

  // 1.5 s of audio in 100 ms chunks, each placed explicitly on the stream's clock.
  const std::string pcm = synthetic_speech_s16le(1.5, 16000);
  const std::size_t chunk_bytes = 2 * 1600;
  std::uint64_t seq = 0;
  for (std::size_t off = 0; off < pcm.size(); off += chunk_bytes, ++seq) {
    Audio audio;
    audio.stream = stream;
    audio.seq = seq;
    audio.at_sample = off / 2;
    audio.pcm = pcm.substr(off, chunk_bytes);
    dealer.send(zmq::buffer(encode_audio(audio)), zmq::send_flags::none);
  }
  dealer.send(zmq::buffer(encode_end_stream(EndStream{stream, 3})), zmq::send_flags::none);
  r = reply_to(dealer, 3, kTimeout, &others);
  REQUIRE_MSG(r && std::holds_alternative<StreamEnded>(r->body), what_came(r, others));
  EXPECT_MSG(others.empty(), "unexpected replies:" + others);  // no audio chunk was refused
  const StreamEnded ended = std::get<StreamEnded>(r->body);

  // Everything the subscriber got for the stream, up to its stream_end.
  std::vector<FrameEvent> frames;
  std::optional<StreamStart> start;
  std::optional<StreamEnd> end;
  const bool got_end = wait_events(queue, runtime, kTimeout, [&](const Event& e) {
    if (const auto* f = std::get_if<FrameEvent>(&e)) frames.push_back(*f);
    if (const auto* s = std::get_if<StreamStart>(&e)) start = *s;
    if (const auto* s = std::get_if<StreamEnd>(&e)) end = *s;
    return end.has_value();
  });
  REQUIRE_MSG(got_end, "no stream_end; runtime log:\n" + runtime.log());
  REQUIRE(start.has_value());
  EXPECT_EQ(start->source, std::string("sdk"));
  EXPECT_EQ(end->reason, std::string("ended"));
  EXPECT_EQ(end->frames, ended.frames);
  const std::size_t n = frames.size();
  std::fprintf(stderr, "  stream %s: %zu frames received, stream_ended.frames = %llu\n", stream.c_str(), n,
               static_cast<unsigned long long>(ended.frames));
  EXPECT_EQ(n, ended.frames);
  // 1.1: one frame per started frame period, so 24000 samples at 16 kHz give ceil(45.0) frames; 1.2: then
  // the ease to rest, 4 frames at 30 fps (at most 150 ms), with no audio behind them (captured_ns nil).
  const std::size_t audio_frames = 45;
  EXPECT_EQ(n, audio_frames + 4u);
  for (std::size_t i = 0; i < n; ++i) {
    const Frame& f = frames[i].frame;
    EXPECT_EQ(f.stream, stream);
    EXPECT_EQ(f.seq, i);
    EXPECT_EQ(f.index, i);
    EXPECT_EQ(f.t_audio, static_cast<double>(i) / 30.0);
    EXPECT_EQ(f.last, i + 1 == n);
    for (float w : f.blendshapes) EXPECT(std::isfinite(w) && w >= 0.0f && w <= 1.0f);
    for (float a : f.head) EXPECT(std::isfinite(a) && std::fabs(a) < 1.6f);
    for (float a : f.gaze) EXPECT(std::isfinite(a) && std::fabs(a) < 1.6f);
    EXPECT_EQ(f.captured_ns.has_value(), i < audio_frames);  // sdk streams: when the audio arrived
  }
  const SubscriberStatus st = sub.status();
  EXPECT_EQ(st.dropped_frames, 0u);
  EXPECT_EQ(st.bad_messages, 0u);
  EXPECT(st.state == ConnectionState::live);

  // The same frames through the Live Link feed and the jitter buffer.
  RecordingSink sink;
  LiveLinkFeed feed(sink);
  JitterBuffer buffer;
  std::vector<double> show;
  for (const FrameEvent& fe : frames) {
    feed.on_frame(fe.frame, fe.arrival_s);
    show.push_back(buffer.push(fe.frame, fe.arrival_s));
  }
  EXPECT_EQ(sink.declared.size(), 1u);
  EXPECT_EQ(sink.frames.size(), n);
  for (std::size_t i = 1; i < n; ++i) {
    EXPECT(sink.frames[i].world_time_s > sink.frames[i - 1].world_time_s);
    EXPECT(show[i] > show[i - 1]);
  }
  if (n > 2) {
    const std::size_t k = n / 2;
    // Sampled at frame k's own show time, the buffer gives frame k (within the interpolation
    // rounding); the frames before it have been played.
    (void)buffer.sample(stream, show[0]);
    const Sample s = buffer.sample(stream, show[k]);
    EXPECT(s.state == PlayState::playing);
    EXPECT_NEAR(s.pose.blendshapes[17], frames[k].frame.blendshapes[17], 1e-5);
    EXPECT(buffer.sample(stream, show[n - 1] + 1.0).state == PlayState::ended);
  }
  check_line_mode_and_controls(runtime, dealer, pub);
  check_line_client(runtime, router, pub);
  EXPECT_MSG(runtime.stop(30s), "serve did not stop cleanly; its log:\n" + runtime.log());
}

TEST_CASE("a looping file stream; the runtime restarts and the subscriber follows") {
  if (::access(kSampleWav.c_str(), R_OK) != 0) {
    std::fprintf(stderr, "  skipped: no sample wav at %s\n", kSampleWav.c_str());
    return;
  }
  const std::string pub = endpoint(free_port());
  const std::string router = endpoint(free_port());
  const std::string stream = "sample_speech";  // serve names a file's stream after the file
  const std::vector<std::string> args = {"--file", kSampleWav, "--loop", "--pub", pub,
                                         "--router", router, "--backend", "onnxruntime"};
  EventQueue queue;
  SubscriberConfig config;
  config.endpoint = pub;
  config.stream_filter = stream;
  Subscriber sub(config, queue);
  sub.start();

  // The file starts playing as soon as serve starts, so the subscriber may join mid-stream:
  // what is checked is a hello with the 52 names and then 30 consecutive frames.
  const auto hello_then_30_frames = [&](Runtime& runtime, std::optional<RestartEvent>* restart) {
    bool hello_ok = false;
    std::optional<std::uint64_t> next;
    int run = 0;
    return wait_events(queue, runtime, kStartTimeout, [&](const Event& e) {
      if (const auto* r = std::get_if<RestartEvent>(&e); r && restart) *restart = *r;
      if (const auto* h = std::get_if<Hello>(&e)) hello_ok = hello_ok || hello_has_canonical_names(*h);
      if (const auto* f = std::get_if<FrameEvent>(&e); f && hello_ok) {
        run = (next && f->frame.seq == *next) ? run + 1 : 1;
        next = f->frame.seq + 1;
        EXPECT_EQ(f->frame.t_audio, static_cast<double>(f->frame.index) / f->frame.fps);
      }
      return run >= 30;
    });
  };

  std::string first_instance;
  {
    Runtime runtime(args);
    REQUIRE_MSG(hello_then_30_frames(runtime, nullptr), "no hello + 30 frames; log:\n" + runtime.log());
    first_instance = sub.status().instance;
    EXPECT(!first_instance.empty());
    EXPECT_MSG(runtime.stop(30s), "serve did not stop cleanly on SIGINT; log:\n" + runtime.log());
  }
  {
    Runtime runtime(args);  // same ports: the subscriber reconnects on its own
    std::optional<RestartEvent> restart;
    REQUIRE_MSG(hello_then_30_frames(runtime, &restart), "no frames after the restart; log:\n" + runtime.log());
    REQUIRE(restart.has_value());
    EXPECT_EQ(restart->old_instance, first_instance);
    EXPECT(restart->new_instance != first_instance);
    EXPECT_EQ(sub.status().restarts, 1u);
    EXPECT_EQ(sub.status().bad_messages, 0u);
    EXPECT_MSG(runtime.stop(30s), "serve did not stop cleanly on SIGINT; log:\n" + runtime.log());
  }
}

namespace {

// A fresh folder under /tmp, removed with its files.
class TempDir {
 public:
  TempDir() {
    char path[] = "/tmp/ksdiff_keys_XXXXXX";
    if (::mkdtemp(path) == nullptr) throw std::runtime_error("mkdtemp failed");
    path_ = path;
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

}  // namespace

TEST_CASE("serve with CURVE keys: the authorised client gets its stream, an unknown key nothing") {
  // Keys as an operator makes them: the runtime's pair and two clients'; only "client" is let in.
  TempDir dir;
  {
    Runtime keys({"server", "client", "stranger", "-o", dir / "keys"}, "keys");
    const std::optional<int> status = keys.wait(60s);
    REQUIRE_MSG(status == std::optional<int>(0), "ksdiff-runtime keys failed; its output:\n" + keys.log());
  }
  std::filesystem::create_directories(dir / "keys/clients");
  std::filesystem::copy_file(dir / "keys/client.key", dir / "keys/clients/client.key");
  const CurveKeys client = curve_keys_from_files(dir / "keys/server.key", dir / "keys/client.key_secret");
  const CurveKeys stranger = curve_keys_from_files(dir / "keys/server.key", dir / "keys/stranger.key_secret");

  const std::string pub = endpoint(free_port());
  const std::string router = endpoint(free_port());
  const std::string stream = "cpp_curve";

  // Subscribers first: ZeroMQ connects them once the runtime binds.
  EventQueue good_events, stranger_events, plain_events;
  SubscriberConfig good_config;
  good_config.endpoint = pub;
  good_config.stream_filter = stream;
  good_config.curve = client;
  Subscriber good(good_config, good_events);
  SubscriberConfig stranger_config;
  stranger_config.endpoint = pub;  // no filter: it would get everything, if anything
  stranger_config.curve = stranger;
  Subscriber strange(stranger_config, stranger_events);
  SubscriberConfig plain_config;
  plain_config.endpoint = pub;
  Subscriber plain(plain_config, plain_events);
  good.start();
  strange.start();
  plain.start();

  Runtime runtime({"--pub", pub, "--router", router, "--backend", "onnxruntime", "--curve-secret-key",
                   dir / "keys/server.key_secret", "--curve-clients", dir / "keys/clients"});
  std::optional<Hello> hello;
  const bool got_hello = wait_events(good_events, runtime, kStartTimeout, [&](const Event& e) {
    if (const auto* h = std::get_if<Hello>(&e)) hello = *h;
    return hello.has_value();
  });
  REQUIRE_MSG(got_hello, "no hello for the authorised client; runtime log:\n" + runtime.log());
  EXPECT(hello_has_canonical_names(*hello));

  // The stranger's DEALER asks first; the authorised DEALER then drives a whole stream.
  zmq::context_t context;
  zmq::socket_t stranger_dealer(context, zmq::socket_type::dealer);
  stranger_dealer.set(zmq::sockopt::linger, 0);
  apply_curve_client(stranger_dealer.handle(), stranger);
  stranger_dealer.connect(router);
  stranger_dealer.send(zmq::buffer(encode_hello_request(1)), zmq::send_flags::none);

  zmq::socket_t dealer(context, zmq::socket_type::dealer);
  dealer.set(zmq::sockopt::linger, 0);
  apply_curve_client(dealer.handle(), client);  // before connect: the handshake uses the keys
  dealer.connect(router);
  std::string others;
  dealer.send(zmq::buffer(encode_hello_request(1)), zmq::send_flags::none);
  std::optional<Message> r = reply_to(dealer, 1, kTimeout, &others);
  REQUIRE_MSG(r && std::holds_alternative<Hello>(r->body), what_came(r, others));
  EXPECT(std::get<Hello>(r->body).instance == hello->instance);

  OpenStream open;
  open.stream = stream;
  open.sample_rate = 16000;
  open.format = "s16le";
  open.req = 2;
  dealer.send(zmq::buffer(encode_open_stream(open)), zmq::send_flags::none);
  r = reply_to(dealer, 2, kTimeout, &others);
  REQUIRE_MSG(r && std::holds_alternative<StreamOpened>(r->body), what_came(r, others));
  const std::string pcm = synthetic_speech_s16le(1.0, 16000);
  Audio audio;
  audio.stream = stream;
  audio.at_sample = 0;
  audio.pcm = pcm;
  dealer.send(zmq::buffer(encode_audio(audio)), zmq::send_flags::none);
  dealer.send(zmq::buffer(encode_end_stream(EndStream{stream, 3})), zmq::send_flags::none);
  r = reply_to(dealer, 3, kTimeout, &others);
  REQUIRE_MSG(r && std::holds_alternative<StreamEnded>(r->body), what_came(r, others));
  const std::uint64_t total = std::get<StreamEnded>(r->body).frames;

  std::vector<Frame> frames;
  std::optional<StreamEnd> end;
  const bool got_end = wait_events(good_events, runtime, kTimeout, [&](const Event& e) {
    if (const auto* f = std::get_if<FrameEvent>(&e)) frames.push_back(f->frame);
    if (const auto* s = std::get_if<StreamEnd>(&e)) end = *s;
    return end.has_value();
  });
  REQUIRE_MSG(got_end, "no stream_end for the authorised client; runtime log:\n" + runtime.log());
  EXPECT_EQ(end->reason, std::string("ended"));
  EXPECT_EQ(frames.size(), total);
  EXPECT_EQ(total, 34u);  // 1 s at 30 fps, then the 4 frames of the ease to rest (SPEC 4.2)
  for (std::size_t i = 0; i < frames.size(); ++i) {
    EXPECT_EQ(frames[i].seq, i);
    EXPECT_EQ(frames[i].last, i + 1 == frames.size());
  }
  EXPECT_EQ(good.status().handshake_failures, 0u);

  // By now the runtime has published hellos every second and a whole stream for seconds: the
  // stranger and the plain client got none of it, and were told why. The stranger's hello
  // request was never answered (bounded wait: the authorised one was answered long since).
  const auto failed = [](const Event& e) { return std::holds_alternative<HandshakeFailedEvent>(e); };
  struct Outsider {
    const char* what;
    Subscriber* sub;
    EventQueue* events;
  };
  for (const Outsider& o : {Outsider{"unknown key", &strange, &stranger_events}, Outsider{"no keys", &plain, &plain_events}}) {
    const std::string what = o.what;
    Subscriber* sub = o.sub;
    EventQueue* events = o.events;
    std::size_t received = 0;
    const bool told = wait_events(*events, runtime, kTimeout, [&](const Event& e) {
      received += failed(e) ? 0 : 1;
      return failed(e);
    });
    for (const Event& e : events->drain()) received += failed(e) ? 0 : 1;
    EXPECT_MSG(told, what + ": no handshake failure reported");
    EXPECT_MSG(received == 0, what + ": received messages");
    const SubscriberStatus st = sub->status();
    EXPECT_MSG(st.messages == 0 && st.frames == 0, what + ": received messages");
    EXPECT(st.state == ConnectionState::connecting);
    EXPECT_MSG(!st.handshake_error.empty(), what + ": no handshake error in the status");
  }
  EXPECT(strange.status().handshake_error.find("refused") != std::string::npos);
  const std::optional<Message> stranger_reply = reply(stranger_dealer, 2000ms);
  EXPECT_MSG(!stranger_reply.has_value(), "the unknown key got a reply: " + what_came(stranger_reply, ""));
  EXPECT_MSG(runtime.stop(30s), "serve did not stop cleanly; its log:\n" + runtime.log());
}

int main(int argc, char** argv) {
  g_runtime = argc > 1 ? argv[1] : "";
  if (g_runtime.empty()) {
    std::fprintf(stderr, "SKIPPED: no ksdiff-runtime given (configure with -DKSDIFF_RUNTIME=/path/to/ksdiff-runtime "
                         "or set KSDIFF_RUNTIME before cmake)\n");
    return 77;  // ctest SKIP_RETURN_CODE
  }
  if (::access(g_runtime.c_str(), X_OK) != 0) {
    std::fprintf(stderr, "FAILED: KSDIFF_RUNTIME=%s is not an executable\n", g_runtime.c_str());
    return 1;
  }
  ::signal(SIGPIPE, SIG_IGN);
  return harness::run_all(argc - 1, argv + 1);
}
