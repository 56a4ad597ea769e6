// A ZeroMQ SUB client of the runtime's PUB socket, on its own worker thread.
//
// The worker owns the socket (ZeroMQ sockets are not thread-safe, so no other thread touches
// it), decodes each [topic, payload] message, and calls a SubscriberHandler *on the worker
// thread*. Nothing here blocks the caller: start() returns at once, and ZeroMQ connects (and
// reconnects every ~100 ms after the runtime goes away) in the background. A runtime restart
// is recognised by the `instance` of its hello. stop() returns within one poll interval.
// With CurveKeys it is a CURVE client, as a runtime beyond loopback requires (SPEC 1.1); a failed
// handshake (a key the runtime does not know, the wrong server key) is reported in the status,
// since such a client otherwise just receives nothing.
//
// ZeroMQ and cppzmq stay out of this header (pimpl) so the Unreal module includes it without
// them.
#pragma once

#include "ksdiff/curve.hpp"
#include "ksdiff/protocol.hpp"

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <variant>
#include <vector>

namespace ksdiff {

// Callbacks of a Subscriber. All run on its worker thread, one at a time; keep them short
// (they delay the next message). An exception thrown by one is caught and reported in
// SubscriberStatus::last_error.
class SubscriberHandler {
 public:
  virtual ~SubscriberHandler();
  virtual void on_hello(const Hello& hello) { (void)hello; }
  // `arrival_s`: the subscriber clock's time when the message was received.
  virtual void on_frame(const Frame& frame, double arrival_s) { (void)frame, (void)arrival_s; }
  virtual void on_stream_start(const StreamStart& start) { (void)start; }
  virtual void on_stream_end(const StreamEnd& end) { (void)end; }
  virtual void on_stats(const Stats& stats) { (void)stats; }
  // The runtime restarted (its hello's `instance` changed): the streams of the old process
  // are gone; new ones will start from seq 0 and t_audio 0. A hello of an instance seen before
  // (not the current one) is a late message of an older process: it changes nothing (no
  // restart, no on_hello).
  virtual void on_runtime_restart(const std::string& old_instance, const std::string& new_instance) {
    (void)old_instance, (void)new_instance;
  }
  // A message that was refused (malformed, wrong topic, or a major version this client does
  // not speak). Unknown message types are not reported: they are a newer runtime's, ignored.
  virtual void on_bad_message(ErrorCode code, const std::string& message) { (void)code, (void)message; }
  // The connection's handshake failed: with CURVE, the runtime refused this client's key or the
  // server key is not the runtime's; without, the runtime may require CURVE. Nothing arrives
  // until that is fixed (SubscriberStatus::handshake_error says the same).
  virtual void on_handshake_failed(const std::string& reason) { (void)reason; }
};

struct SubscriberConfig {
  std::string endpoint = "tcp://127.0.0.1:5555";
  // Empty: every stream. Otherwise only this stream id's frames and start/end events.
  std::string stream_filter;
  bool subscribe_stats = true;
  // The runtime's public key and this client's key pair, for a runtime that requires CURVE (one
  // listening beyond loopback; SPEC 1.1). Empty: plain TCP, as a loopback runtime serves.
  // curve_keys_from_files() reads them from the certificate files `ksdiff-runtime keys` writes.
  std::optional<CurveKeys> curve;
  int reconnect_interval_ms = 100;      // ZMQ_RECONNECT_IVL: retry soon after a runtime restart
  int reconnect_interval_max_ms = 1000;  // ZMQ_RECONNECT_IVL_MAX: back off to at most this
  int receive_hwm = 10000;               // ZMQ_RCVHWM (SPEC 1: at least 1000)
  std::chrono::milliseconds poll_interval{20};  // how often the worker looks at its stop flag
  // The runtime publishes hello every second; without one for this long it is "not responding".
  double hello_timeout_s = 2.5;
  // Local monotonic clock in seconds, used for arrival times. Default: std::chrono::steady_clock.
  // Unreal passes FPlatformTime::Seconds so arrival times are on the engine's clock.
  std::function<double()> clock;
};

enum class ConnectionState {
  stopped,     // not started, or stopped
  connecting,  // started, no hello yet (runtime not up, wrong endpoint or keys, or still joining)
  live,        // a hello arrived within hello_timeout_s
  stale,       // had hellos, none recently: the runtime stopped or the network is down
  failed,      // the socket could not be set up (bad endpoint): see last_error
};
std::string_view to_string(ConnectionState state) noexcept;

struct SubscriberStatus {
  ConnectionState state = ConnectionState::stopped;
  std::string endpoint;
  std::string instance;       // of the last hello ("" before the first, or if the runtime omits it)
  std::string runtime_version;
  std::uint64_t messages = 0;        // received, any kind
  std::uint64_t frames = 0;          // frames delivered to the handler
  std::uint64_t dropped_frames = 0;  // sum of seq gaps (SPEC 4.2): lost to HWM or runtime overload
  std::uint64_t bad_messages = 0;    // refused: malformed, wrong topic, unsupported version
  std::uint64_t ignored_messages = 0;  // unknown types (a newer runtime's)
  std::uint64_t restarts = 0;          // runtime restarts seen (instance changes)
  // CURVE or other ZMTP handshakes that failed, and why the last one did ("" once one succeeds).
  // A runtime that refuses this client's key sends nothing at all: this is the only sign of it.
  std::uint64_t handshake_failures = 0;
  std::string handshake_error;
  double last_message_s = -1.0;        // subscriber clock; -1: never
  double last_hello_s = -1.0;
  std::string last_error;
};

class Subscriber {
 public:
  Subscriber(SubscriberConfig config, SubscriberHandler& handler);
  ~Subscriber();  // stops
  Subscriber(const Subscriber&) = delete;
  Subscriber& operator=(const Subscriber&) = delete;

  // Starts the worker thread; returns at once. Calling it on a running subscriber does nothing.
  void start();
  // Stops and joins the worker (at most ~poll_interval plus the running callback). Idempotent.
  // Not from a handler callback: that runs on the worker, which would wait for itself.
  void stop();
  bool running() const noexcept;

  SubscriberStatus status() const;
  double now() const;  // the subscriber's clock

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// --- a queue of events, for a consumer that prefers polling to callbacks --------------------
struct FrameEvent {
  Frame frame;
  double arrival_s = 0.0;
};
struct RestartEvent {
  std::string old_instance;
  std::string new_instance;
};
struct BadMessageEvent {
  ErrorCode code = ErrorCode::malformed;
  std::string message;
};
struct HandshakeFailedEvent {
  std::string reason;
};
using Event = std::variant<Hello, FrameEvent, StreamStart, StreamEnd, Stats, RestartEvent, BadMessageEvent,
                           HandshakeFailedEvent>;

// A SubscriberHandler that queues every event for another thread (a game tick, a test).
// Bounded: past `capacity` the oldest event is dropped and counted.
class EventQueue final : public SubscriberHandler {
 public:
  explicit EventQueue(std::size_t capacity = 100000) : capacity_(capacity) {}

  // The next event, waiting up to `timeout` for one; nullopt when none came.
  std::optional<Event> pop(std::chrono::milliseconds timeout);
  // Everything queued now, without waiting.
  std::vector<Event> drain();
  std::uint64_t overflowed() const;

  void on_hello(const Hello& hello) override { push(hello); }
  void on_frame(const Frame& frame, double arrival_s) override { push(FrameEvent{frame, arrival_s}); }
  void on_stream_start(const StreamStart& start) override { push(start); }
  void on_stream_end(const StreamEnd& end) override { push(end); }
  void on_stats(const Stats& stats) override { push(stats); }
  void on_runtime_restart(const std::string& old_instance, const std::string& new_instance) override {
    push(RestartEvent{old_instance, new_instance});
  }
  void on_bad_message(ErrorCode code, const std::string& message) override {
    push(BadMessageEvent{code, message});
  }
  void on_handshake_failed(const std::string& reason) override { push(HandshakeFailedEvent{reason}); }

 private:
  void push(Event event);

  mutable std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<Event> events_;
  std::size_t capacity_;
  std::uint64_t overflowed_ = 0;
};

}  // namespace ksdiff
