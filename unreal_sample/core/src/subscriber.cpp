#include "ksdiff/subscriber.hpp"

#include <zmq.hpp>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <map>
#include <thread>
#include <utility>
#include <vector>

namespace ksdiff {

SubscriberHandler::~SubscriberHandler() = default;

std::string_view to_string(ConnectionState state) noexcept {
  switch (state) {
    case ConnectionState::stopped: return "stopped";
    case ConnectionState::connecting: return "connecting";
    case ConnectionState::live: return "live";
    case ConnectionState::stale: return "not responding";
    case ConnectionState::failed: return "failed";
  }
  return "unknown";
}

namespace {

double steady_seconds() {
  using namespace std::chrono;
  return duration<double>(steady_clock::now().time_since_epoch()).count();
}

}  // namespace

// Not in the anonymous namespace: Subscriber::Impl (external linkage) uses it, and the Unreal
// build compiles this file as an included one, where GCC warns about that mix.
namespace detail {

// A PUB topic, split: kind "hello" / "stats" / "frame" / "stream", and the stream id of the
// last two. Topics always end in '/' (SPEC 2).
struct Topic {
  std::string_view kind;
  std::string_view stream;
};

std::optional<Topic> parse_topic(std::string_view topic) {
  if (topic.size() <= kTopicRoot.size() || topic.substr(0, kTopicRoot.size()) != kTopicRoot ||
      topic.back() != '/') {
    return std::nullopt;
  }
  const std::string_view rest = topic.substr(kTopicRoot.size(), topic.size() - kTopicRoot.size() - 1);
  if (rest == "hello" || rest == "stats") return Topic{rest, {}};
  const auto slash = rest.find('/');
  if (slash == std::string_view::npos) return std::nullopt;
  const std::string_view kind = rest.substr(0, slash);
  const std::string_view stream = rest.substr(slash + 1);
  if ((kind != "frame" && kind != "stream") || !is_valid_stream_id(stream)) return std::nullopt;
  return Topic{kind, stream};
}

}  // namespace detail

struct Subscriber::Impl {
  Impl(SubscriberConfig c, SubscriberHandler& h) : config(std::move(c)), handler(h) {
    if (!config.clock) config.clock = steady_seconds;
    status.endpoint = config.endpoint;
  }

  SubscriberConfig config;
  SubscriberHandler& handler;
  std::thread worker;
  std::atomic<bool> stop_requested{false};
  std::atomic<bool> is_running{false};

  mutable std::mutex status_mutex;
  SubscriberStatus status;  // guarded by status_mutex (state is computed in status())
  bool failed = false;      // guarded by status_mutex

  // Worker-thread only: the next seq expected per stream, for gap counting.
  std::map<std::string, std::uint64_t> next_seq;
  // Worker-thread only: the runtime instances seen, oldest first, at most kSeenInstances.
  static constexpr std::size_t kSeenInstances = 16;
  std::vector<std::string> seen_instances;

  std::vector<std::string> topics() const {
    std::vector<std::string> out{std::string(kHelloTopic)};
    if (config.stream_filter.empty()) {
      out.emplace_back(kFrameTopicPrefix);
      out.emplace_back(kStreamTopicPrefix);
    } else {
      // Trailing '/' in both: "npc1" must not also match "npc10" (SPEC 2).
      out.push_back(frame_topic(config.stream_filter));
      out.push_back(stream_topic(config.stream_filter));
    }
    if (config.subscribe_stats) out.emplace_back(kStatsTopic);
    return out;
  }

  void fail_with(const std::string& error) {
    std::lock_guard<std::mutex> lock(status_mutex);
    failed = true;
    status.last_error = error;
  }

  void run() {
    try {
      // Context and socket live and die on this thread. LINGER 0: closing never waits.
      zmq::context_t context(1);
      zmq::socket_t socket(context, zmq::socket_type::sub);
      socket.set(zmq::sockopt::linger, 0);
      socket.set(zmq::sockopt::rcvhwm, config.receive_hwm);
      socket.set(zmq::sockopt::reconnect_ivl, config.reconnect_interval_ms);
      socket.set(zmq::sockopt::reconnect_ivl_max, config.reconnect_interval_max_ms);
      // A peer sending more than this is not a ksd1 runtime: ZeroMQ drops the connection
      // instead of buffering it (published messages are ~0.4-1.5 KB; the protocol's own cap
      // on any message is 1 MiB, and the runtime's ROUTER uses this same 4 MiB).
      socket.set(zmq::sockopt::maxmsgsize, static_cast<std::int64_t>(4 * kMaxMessageBytes));
      for (const std::string& topic : topics()) socket.set(zmq::sockopt::subscribe, topic);
      // The handshake's outcome, from libzmq's socket monitor: a runtime that refuses this
      // client's key (or that it cannot authenticate) sends nothing, and this is how we know.
      // The inproc name only has to be unique within this worker's own context.
      const char* monitor_endpoint = "inproc://ksdiff-subscriber-monitor";
      if (zmq_socket_monitor(socket.handle(), monitor_endpoint,
                             ZMQ_EVENT_HANDSHAKE_SUCCEEDED | ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL |
                                 ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL | ZMQ_EVENT_HANDSHAKE_FAILED_AUTH) != 0) {
        throw zmq::error_t();
      }
      zmq::socket_t monitor(context, zmq::socket_type::pair);
      monitor.set(zmq::sockopt::linger, 0);
      monitor.connect(monitor_endpoint);
      // CURVE keys go on before connecting: the handshake happens on connecting (SPEC 1.1).
      if (config.curve) apply_curve_client(socket.handle(), *config.curve);
      // Subscribe before connecting (SPEC 9.2); connect is asynchronous and retried by ZeroMQ.
      socket.connect(config.endpoint);

      while (!stop_requested.load()) {
        zmq_pollitem_t items[] = {{socket.handle(), 0, ZMQ_POLLIN, 0}, {monitor.handle(), 0, ZMQ_POLLIN, 0}};
        const int ready = zmq_poll(items, 2, static_cast<long>(config.poll_interval.count()));
        if (ready < 0) {
          if (zmq_errno() == EINTR) continue;  // a signal, not an error
          throw zmq::error_t();
        }
        if ((items[1].revents & ZMQ_POLLIN) != 0) receive_monitor_events(monitor);
        // Drain what is queued, looking at the stop flag between messages.
        for (int i = 0; (items[0].revents & ZMQ_POLLIN) != 0 && i < 10000 && !stop_requested.load(); ++i) {
          if (!receive_one(socket)) break;
        }
      }
      // The monitor's PAIR and the inproc endpoint go before the context does.
      (void)zmq_socket_monitor(socket.handle(), nullptr, 0);
    } catch (const zmq::error_t& e) {
      fail_with(std::string("ZeroMQ: ") + e.what() + " (endpoint " + config.endpoint + ")");
    } catch (const std::exception& e) {
      fail_with(e.what());
    }
    is_running.store(false);
  }

  // Every monitor event waiting: [6 bytes: uint16 event, uint32 value (host order)], [endpoint].
  void receive_monitor_events(zmq::socket_t& monitor) {
    for (;;) {
      zmq::message_t head;
      if (!monitor.recv(head, zmq::recv_flags::dontwait)) return;
      zmq::message_t endpoint;
      if (head.more()) (void)monitor.recv(endpoint, zmq::recv_flags::none);
      if (head.size() < 6) continue;
      std::uint16_t event = 0;
      std::uint32_t value = 0;
      std::memcpy(&event, head.data<char>(), sizeof(event));
      std::memcpy(&value, head.data<char>() + 2, sizeof(value));
      on_handshake(event, value);
    }
  }

  void on_handshake(std::uint16_t event, std::uint32_t value) {
    if (event == ZMQ_EVENT_HANDSHAKE_SUCCEEDED) {
      std::lock_guard<std::mutex> lock(status_mutex);
      status.handshake_error.clear();
      return;
    }
    std::string reason;
    if (event == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH) {
      // `value` is the ZAP status code (400: the runtime's authenticator refused the key).
      reason = "the runtime refused this client's CURVE key (ZAP status " + std::to_string(value) +
               "): its public key (.key) must be in the runtime's --curve-clients folder";
    } else if (config.curve) {
      reason = "CURVE handshake failed: check that the server key is the runtime's own (its server.key) and "
               "that the runtime serves with keys";
    } else {
      reason = "handshake failed: the runtime may require CURVE keys (it does when it listens beyond loopback)";
    }
    {
      std::lock_guard<std::mutex> lock(status_mutex);
      ++status.handshake_failures;
      status.handshake_error = reason;
    }
    call([&] { handler.on_handshake_failed(reason); });
  }

  // One multipart message, if any is waiting. Returns false when none was.
  bool receive_one(zmq::socket_t& socket) {
    zmq::message_t topic;
    try {
      if (!socket.recv(topic, zmq::recv_flags::dontwait)) return false;
    } catch (const zmq::error_t& e) {
      if (e.num() == EINTR) return false;
      throw;
    }
    const double arrival = config.clock();
    // The rest of a multipart message is already here (ZeroMQ delivers all parts or none).
    std::vector<zmq::message_t> rest;
    bool more = topic.more();
    while (more) {
      zmq::message_t part;
      (void)socket.recv(part, zmq::recv_flags::none);
      more = part.more();
      rest.push_back(std::move(part));
    }
    {
      std::lock_guard<std::mutex> lock(status_mutex);
      ++status.messages;
      status.last_message_s = arrival;
    }
    if (rest.size() != 1) {
      bad(ErrorCode::malformed, "expected 2 frames [topic, payload], got " + std::to_string(1 + rest.size()));
      return true;
    }
    handle(std::string_view(topic.data<char>(), topic.size()), rest[0], arrival);
    return true;
  }

  void bad(ErrorCode code, const std::string& message) {
    {
      std::lock_guard<std::mutex> lock(status_mutex);
      ++status.bad_messages;
      status.last_error = message;
    }
    call([&] { handler.on_bad_message(code, message); });
  }

  // Runs a handler callback; its exceptions must not kill the worker.
  template <typename Fn>
  void call(Fn fn) {
    try {
      fn();
    } catch (const std::exception& e) {
      std::lock_guard<std::mutex> lock(status_mutex);
      status.last_error = std::string("handler: ") + e.what();
    }
  }

  void handle(std::string_view topic_bytes, const zmq::message_t& payload, double arrival) {
    const std::optional<detail::Topic> topic = detail::parse_topic(topic_bytes);
    if (!topic) {
      bad(ErrorCode::malformed, "unknown topic '" + std::string(topic_bytes) + "'");
      return;
    }
    Message msg;
    try {
      msg = decode(payload.data(), payload.size());
    } catch (const ProtocolError& e) {
      if (e.code() == ErrorCode::unknown_type) {  // a newer runtime's message: ignore (SPEC 3.2)
        std::lock_guard<std::mutex> lock(status_mutex);
        ++status.ignored_messages;
        return;
      }
      bad(e.code(), e.what());
      return;
    }
    // The payload must agree with its topic (SPEC 2: a client SHOULD check the stream).
    const auto on = [&](std::string_view kind, std::string_view stream = {}) {
      return topic->kind == kind && topic->stream == stream;
    };
    if (auto* hello = std::get_if<Hello>(&msg.body); hello && on("hello") && hello->from_runtime) {
      on_hello(*hello, arrival);
    } else if (auto* frame = std::get_if<Frame>(&msg.body); frame && on("frame", frame->stream)) {
      on_frame(*frame, arrival);
    } else if (auto* start = std::get_if<StreamStart>(&msg.body); start && on("stream", start->stream)) {
      next_seq[start->stream] = 0;  // a fresh stream: its frames start at seq 0
      call([&] { handler.on_stream_start(*start); });
    } else if (auto* end = std::get_if<StreamEnd>(&msg.body); end && on("stream", end->stream)) {
      next_seq.erase(end->stream);
      call([&] { handler.on_stream_end(*end); });
    } else if (auto* stats = std::get_if<Stats>(&msg.body); stats && on("stats")) {
      call([&] { handler.on_stats(*stats); });
    } else {
      bad(ErrorCode::malformed, "a '" + msg.type + "' message does not belong on topic '" +
                                    std::string(topic_bytes) + "'");
    }
  }

  void on_hello(const Hello& hello, double arrival) {
    const std::string instance = hello.instance.value_or("");
    std::string old_instance;
    bool restarted = false;
    {
      std::lock_guard<std::mutex> lock(status_mutex);
      if (!instance.empty()) {
        const bool seen = std::find(seen_instances.begin(), seen_instances.end(), instance) != seen_instances.end();
        // A hello of an instance seen before, not the current one, is a late message of an
        // older process (still queued when the new one's came): it changes nothing.
        if (seen && instance != status.instance) return;
        if (!seen) {
          seen_instances.push_back(instance);
          if (seen_instances.size() > kSeenInstances) seen_instances.erase(seen_instances.begin());
        }
      }
      restarted = !status.instance.empty() && !instance.empty() && instance != status.instance;
      old_instance = status.instance;
      if (!instance.empty()) status.instance = instance;
      status.runtime_version = hello.runtime;
      status.last_hello_s = arrival;
      if (restarted) ++status.restarts;
    }
    if (restarted) {
      next_seq.clear();  // the old process's streams are gone
      call([&] { handler.on_runtime_restart(old_instance, instance); });
    }
    call([&] { handler.on_hello(hello); });
  }

  void on_frame(const Frame& frame, double arrival) {
    auto it = next_seq.find(frame.stream);
    std::uint64_t gap = 0;
    if (it != next_seq.end() && frame.seq > it->second) gap = frame.seq - it->second;
    // seq below the expected one: the stream restarted under the same id (its start was
    // missed); not a loss. A stream first seen mid-way (joined late) is not a loss either.
    if (frame.last) {
      next_seq.erase(frame.stream);
    } else {
      next_seq[frame.stream] = frame.seq + 1;
    }
    {
      std::lock_guard<std::mutex> lock(status_mutex);
      ++status.frames;
      status.dropped_frames += gap;
    }
    call([&] { handler.on_frame(frame, arrival); });
  }
};

Subscriber::Subscriber(SubscriberConfig config, SubscriberHandler& handler)
    : impl_(std::make_unique<Impl>(std::move(config), handler)) {}

Subscriber::~Subscriber() { stop(); }

void Subscriber::start() {
  if (impl_->worker.joinable()) return;
  // Validate the filter and keys here so a bad one is reported as the subscriber's error.
  if (!impl_->config.stream_filter.empty() && !is_valid_stream_id(impl_->config.stream_filter)) {
    impl_->fail_with("bad stream filter '" + impl_->config.stream_filter +
                     "': need 1..64 chars of [A-Za-z0-9_.-], not '.' or '..'");
    return;
  }
  if (impl_->config.curve) {
    try {
      validate(*impl_->config.curve);
    } catch (const CurveError& e) {
      impl_->fail_with(e.what());
      return;
    }
  }
  {
    std::lock_guard<std::mutex> lock(impl_->status_mutex);
    impl_->failed = false;
    impl_->status.last_error.clear();
  }
  impl_->stop_requested.store(false);
  impl_->is_running.store(true);
  impl_->worker = std::thread([this] { impl_->run(); });
}

void Subscriber::stop() {
  impl_->stop_requested.store(true);
  if (impl_->worker.joinable()) impl_->worker.join();
  impl_->is_running.store(false);
}

bool Subscriber::running() const noexcept { return impl_->is_running.load(); }

double Subscriber::now() const { return impl_->config.clock(); }

SubscriberStatus Subscriber::status() const {
  const double now_s = impl_->config.clock();
  std::lock_guard<std::mutex> lock(impl_->status_mutex);
  SubscriberStatus out = impl_->status;
  if (impl_->failed) {
    out.state = ConnectionState::failed;
  } else if (!impl_->is_running.load()) {
    out.state = ConnectionState::stopped;
  } else if (out.last_hello_s < 0.0) {
    out.state = ConnectionState::connecting;
  } else if (now_s - out.last_hello_s <= impl_->config.hello_timeout_s) {
    out.state = ConnectionState::live;
  } else {
    out.state = ConnectionState::stale;
  }
  return out;
}

// --- EventQueue -------------------------------------------------------------------------------

void EventQueue::push(Event event) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (events_.size() >= capacity_) {
      events_.pop_front();
      ++overflowed_;
    }
    events_.push_back(std::move(event));
  }
  ready_.notify_one();
}

std::optional<Event> EventQueue::pop(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mutex_);
  if (!ready_.wait_for(lock, timeout, [this] { return !events_.empty(); })) return std::nullopt;
  Event event = std::move(events_.front());
  events_.pop_front();
  return event;
}

std::vector<Event> EventQueue::drain() {
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<Event> out(std::make_move_iterator(events_.begin()), std::make_move_iterator(events_.end()));
  events_.clear();
  return out;
}

std::uint64_t EventQueue::overflowed() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return overflowed_;
}

}  // namespace ksdiff
