// The SUB client against a local publisher on loopback (no runtime needed): subscriptions,
// topic checks, stream filter, seq gaps, refused and ignored messages, restart detection,
// reconnection, clean stop. An XPUB socket stands in for the runtime's PUB: it also reports the
// subscriptions it receives, which is how the test knows the subscriber is listening (no sleeps).
#include "harness.hpp"
#include "wire.hpp"

#include "ksdiff/subscriber.hpp"

#include <zmq.hpp>

#include <atomic>
#include <chrono>
#include <set>

using namespace ksdiff;
using namespace std::chrono_literals;

namespace {

constexpr auto kTimeout = 10s;

class Publisher {
 public:
  explicit Publisher(const std::string& endpoint = "tcp://127.0.0.1:*") : socket_(context_, zmq::socket_type::xpub) {
    socket_.set(zmq::sockopt::linger, 0);
    socket_.bind(endpoint);
    endpoint_ = socket_.get(zmq::sockopt::last_endpoint);
  }
  const std::string& endpoint() const { return endpoint_; }

  // The topics subscribed so far, waiting until there are `n` (or the timeout).
  std::set<std::string> wait_subscriptions(std::size_t n) {
    const auto deadline = std::chrono::steady_clock::now() + kTimeout;
    while (topics_.size() < n && std::chrono::steady_clock::now() < deadline) {
      zmq_pollitem_t item{socket_.handle(), 0, ZMQ_POLLIN, 0};
      if (zmq_poll(&item, 1, 100) <= 0) continue;
      zmq::message_t msg;
      if (socket_.recv(msg, zmq::recv_flags::dontwait) && msg.size() > 0 && msg.data<char>()[0] == 1) {
        topics_.insert(std::string(msg.data<char>() + 1, msg.size() - 1));  // [0x01, topic...]
      }
    }
    return topics_;
  }

  void send(const std::string& topic, const std::string& payload) { send_parts({topic, payload}); }

  void send_parts(const std::vector<std::string>& parts) {
    for (std::size_t i = 0; i < parts.size(); ++i) {
      socket_.send(zmq::buffer(parts[i]), i + 1 < parts.size() ? zmq::send_flags::sndmore : zmq::send_flags::none);
    }
  }

 private:
  zmq::context_t context_;
  zmq::socket_t socket_;
  std::string endpoint_;
  std::set<std::string> topics_;
};

// Pops events until `done` says so (or the timeout); returns everything popped.
template <typename Done>
std::vector<Event> collect(EventQueue& queue, Done done) {
  std::vector<Event> events;
  const auto deadline = std::chrono::steady_clock::now() + kTimeout;
  while (std::chrono::steady_clock::now() < deadline) {
    std::optional<Event> event = queue.pop(100ms);
    if (!event) continue;
    events.push_back(std::move(*event));
    if (done(events.back())) break;
  }
  return events;
}

bool is_frame(const Event& e, const std::string& stream, std::uint64_t seq) {
  const auto* f = std::get_if<FrameEvent>(&e);
  return f != nullptr && f->frame.stream == stream && f->frame.seq == seq;
}

}  // namespace

TEST_CASE("subscribes, decodes, counts gaps, refuses bad messages, sees restarts") {
  Publisher pub;
  EventQueue queue;
  SubscriberConfig config;
  config.endpoint = pub.endpoint();
  Subscriber sub(config, queue);
  sub.start();
  EXPECT(sub.status().state == ConnectionState::connecting);
  const auto topics = pub.wait_subscriptions(4);
  EXPECT(topics == std::set<std::string>({"ksd1/hello/", "ksd1/frame/", "ksd1/stream/", "ksd1/stats/"}));

  pub.send("ksd1/hello/", wire::hello(std::string("instance-A")));
  pub.send("ksd1/stream/npc1/", wire::stream_start("npc1"));
  pub.send("ksd1/frame/npc1/", wire::frame("npc1", 0));
  pub.send("ksd1/frame/npc1/", wire::frame("npc1", 1));
  pub.send("ksd1/frame/npc1/", wire::frame("npc1", 3));  // seq 2 lost
  pub.send("ksd1/frame/npc2/", wire::frame("npc2", 5));  // joined mid-stream: not a loss
  pub.send("ksd1/stats/", wire::stats());
  pub.send("ksd1/hello/", wire::Map("greeting_v9", 0).bytes());  // unknown type: ignored
  pub.send("ksd1/frame/npc1/", std::string("\xc1", 1));           // not msgpack
  pub.send("ksd1/frame/npc1/", wire::frame("npc2", 6));           // payload disagrees with topic
  pub.send("ksd1/hello/", wire::Map("hello", 0, 2).bytes());      // protocol major 2
  pub.send("ksd1/stream/npc1/", wire::stream_end("npc1", 3));
  pub.send("ksd1/hello/", wire::hello(std::string("instance-B")));  // the runtime restarted
  pub.send("ksd1/frame/npc1/", wire::frame("npc1", 0));             // a new stream: no gap

  std::size_t restarts_seen = 0;
  const auto events = collect(queue, [&](const Event& e) {
    restarts_seen += std::holds_alternative<RestartEvent>(e) ? 1 : 0;
    return restarts_seen > 0 && is_frame(e, "npc1", 0);
  });
  REQUIRE(events.size() == 14);
  EXPECT(std::holds_alternative<Hello>(events[0]));
  EXPECT(std::holds_alternative<StreamStart>(events[1]));
  EXPECT(is_frame(events[2], "npc1", 0));
  EXPECT(is_frame(events[3], "npc1", 1));
  EXPECT(is_frame(events[4], "npc1", 3));
  EXPECT(is_frame(events[5], "npc2", 5));
  EXPECT(std::holds_alternative<Stats>(events[6]));
  EXPECT(std::get<BadMessageEvent>(events[7]).code == ErrorCode::malformed);
  EXPECT(std::get<BadMessageEvent>(events[8]).code == ErrorCode::malformed);
  EXPECT(std::get<BadMessageEvent>(events[9]).code == ErrorCode::unsupported_version);
  EXPECT(std::get<StreamEnd>(events[10]).frames == 3u);
  const auto& restart = std::get<RestartEvent>(events[11]);
  EXPECT_EQ(restart.old_instance, std::string("instance-A"));
  EXPECT_EQ(restart.new_instance, std::string("instance-B"));
  EXPECT(std::holds_alternative<Hello>(events[12]));
  // The frame's content made it through.
  EXPECT_NEAR(std::get<FrameEvent>(events[2]).frame.blendshapes[17], 0.0, 1e-9);
  EXPECT_NEAR(std::get<FrameEvent>(events[2]).frame.head[1], 0.2, 1e-6);

  const SubscriberStatus st = sub.status();
  EXPECT(st.state == ConnectionState::live);
  EXPECT_EQ(st.instance, std::string("instance-B"));
  EXPECT_EQ(st.frames, 5u);
  EXPECT_EQ(st.dropped_frames, 1u);
  EXPECT_EQ(st.bad_messages, 3u);
  EXPECT_EQ(st.ignored_messages, 1u);
  EXPECT_EQ(st.restarts, 1u);
  EXPECT_EQ(st.messages, 14u);
}

TEST_CASE("a late hello of an older runtime instance is not another restart") {
  Publisher pub;
  EventQueue queue;
  SubscriberConfig config;
  config.endpoint = pub.endpoint();
  Subscriber sub(config, queue);
  sub.start();
  pub.wait_subscriptions(4);

  pub.send("ksd1/hello/", wire::hello(std::string("instance-A")));
  pub.send("ksd1/hello/", wire::hello(std::string("instance-B")));  // the runtime restarted
  pub.send("ksd1/frame/npc1/", wire::frame("npc1", 0));
  pub.send("ksd1/hello/", wire::hello(std::string("instance-A")));  // still queued from A: stale
  pub.send("ksd1/frame/npc1/", wire::frame("npc1", 1));
  pub.send("ksd1/hello/", wire::hello(std::string("instance-B")));
  pub.send("ksd1/hello/", wire::hello(std::string("instance-C")));  // a new one: a restart
  pub.send("ksd1/frame/npc1/", wire::frame("npc1", 9));

  const auto events = collect(queue, [](const Event& e) { return is_frame(e, "npc1", 9); });
  std::vector<std::pair<std::string, std::string>> restarts;
  std::size_t hellos = 0;
  for (const Event& e : events) {
    if (const auto* r = std::get_if<RestartEvent>(&e)) restarts.emplace_back(r->old_instance, r->new_instance);
    hellos += std::holds_alternative<Hello>(e) ? 1 : 0;
  }
  REQUIRE(restarts.size() == 2u);
  EXPECT(restarts[0] == std::make_pair(std::string("instance-A"), std::string("instance-B")));
  EXPECT(restarts[1] == std::make_pair(std::string("instance-B"), std::string("instance-C")));
  EXPECT_EQ(hellos, 4u);  // the stale one is not passed on
  EXPECT(is_frame(events.back(), "npc1", 9));
  const SubscriberStatus st = sub.status();
  EXPECT_EQ(st.restarts, 2u);
  EXPECT_EQ(st.instance, std::string("instance-C"));
  EXPECT_EQ(st.dropped_frames, 0u);  // frame 9 follows a restart: not a gap
}

TEST_CASE("a 3-part message and an unknown topic are refused") {
  Publisher pub;
  EventQueue queue;
  SubscriberConfig config;
  config.endpoint = pub.endpoint();
  Subscriber sub(config, queue);
  sub.start();
  pub.wait_subscriptions(4);
  pub.send("ksd1/frame/a/b/", wire::frame("a", 0));                      // "a/b" is no stream id
  pub.send_parts({"ksd1/frame/a/", wire::frame("a", 0), "one part too many"});  // 3 frames
  pub.send("ksd1/frame/a/", wire::frame("a", 1));
  const auto events = collect(queue, [](const Event& e) { return is_frame(e, "a", 1); });
  REQUIRE(events.size() == 3);
  EXPECT(std::holds_alternative<BadMessageEvent>(events[0]));
  EXPECT(std::holds_alternative<BadMessageEvent>(events[1]));
  EXPECT_EQ(sub.status().bad_messages, 2u);
}

TEST_CASE("a stream filter subscribes to that stream only (npc1 is not npc10)") {
  Publisher pub;
  EventQueue queue;
  SubscriberConfig config;
  config.endpoint = pub.endpoint();
  config.stream_filter = "npc1";
  config.subscribe_stats = false;
  Subscriber sub(config, queue);
  sub.start();
  const auto topics = pub.wait_subscriptions(3);
  EXPECT(topics == std::set<std::string>({"ksd1/hello/", "ksd1/frame/npc1/", "ksd1/stream/npc1/"}));
  pub.send("ksd1/frame/npc10/", wire::frame("npc10", 0));
  pub.send("ksd1/stats/", wire::stats());
  pub.send("ksd1/frame/npc1/", wire::frame("npc1", 7));
  const auto events = collect(queue, [](const Event& e) { return std::holds_alternative<FrameEvent>(e); });
  REQUIRE(events.size() == 1);
  EXPECT(is_frame(events[0], "npc1", 7));
}

TEST_CASE("reconnects to a runtime that comes back on the same endpoint") {
  EventQueue queue;
  std::string endpoint;
  auto first = std::make_unique<Publisher>();
  endpoint = first->endpoint();
  SubscriberConfig config;
  config.endpoint = endpoint;
  Subscriber sub(config, queue);
  sub.start();
  first->wait_subscriptions(4);
  first->send("ksd1/hello/", wire::hello(std::string("one")));
  EXPECT(collect(queue, [](const Event& e) { return std::holds_alternative<Hello>(e); }).size() == 1);
  first.reset();  // the runtime goes away

  Publisher second(endpoint);  // and comes back (same port: ZeroMQ binds with SO_REUSEADDR)
  EXPECT_EQ(second.wait_subscriptions(4).size(), 4u);  // the subscriber reconnected by itself
  second.send("ksd1/hello/", wire::hello(std::string("two")));
  second.send("ksd1/frame/x/", wire::frame("x", 0));
  const auto events = collect(queue, [](const Event& e) { return is_frame(e, "x", 0); });
  REQUIRE(events.size() == 3);
  EXPECT(std::holds_alternative<RestartEvent>(events[0]));
  EXPECT_EQ(sub.status().restarts, 1u);
}

TEST_CASE("connection state follows the hellos on the subscriber's clock") {
  Publisher pub;
  EventQueue queue;
  std::atomic<double> now{100.0};
  SubscriberConfig config;
  config.endpoint = pub.endpoint();
  config.hello_timeout_s = 2.5;
  config.clock = [&now] { return now.load(); };
  Subscriber sub(config, queue);
  sub.start();
  pub.wait_subscriptions(4);
  pub.send("ksd1/hello/", wire::hello(std::nullopt));  // a runtime without `instance`
  pub.send("ksd1/frame/s/", wire::frame("s", 0));
  const auto events = collect(queue, [](const Event& e) { return std::holds_alternative<FrameEvent>(e); });
  REQUIRE(events.size() == 2);
  EXPECT_EQ(std::get<FrameEvent>(events[1]).arrival_s, 100.0);  // arrival on the injected clock
  EXPECT(sub.status().state == ConnectionState::live);
  now = 102.0;
  EXPECT(sub.status().state == ConnectionState::live);
  now = 103.0;
  EXPECT(sub.status().state == ConnectionState::stale);
  EXPECT_EQ(sub.status().last_hello_s, 100.0);
}

TEST_CASE("stop is prompt; bad endpoints and filters fail cleanly") {
  EventQueue queue;
  SubscriberConfig config;
  config.endpoint = "tcp://127.0.0.1:9";  // nothing listens: connecting forever, harmlessly
  Subscriber sub(config, queue);
  sub.start();
  EXPECT(sub.running());
  const auto t0 = std::chrono::steady_clock::now();
  sub.stop();
  EXPECT(std::chrono::steady_clock::now() - t0 < 1s);
  EXPECT(sub.status().state == ConnectionState::stopped);
  sub.stop();  // idempotent

  SubscriberConfig bad = config;
  bad.endpoint = "not an endpoint";
  Subscriber broken(bad, queue);
  broken.start();
  broken.stop();  // the worker failed on connect; stop() joins it
  EXPECT(broken.status().state == ConnectionState::failed);
  EXPECT(!broken.status().last_error.empty());

  SubscriberConfig bad_filter = config;
  bad_filter.stream_filter = "two words";
  Subscriber filtered(bad_filter, queue);
  filtered.start();
  EXPECT(filtered.status().state == ConnectionState::failed);
}

HARNESS_MAIN()
