// CurveZMQ on the client side (SPEC 1.1), without a runtime: Z85 keys, ZeroMQ certificate files
// as pyzmq writes them, and the SUB against a local CURVE publisher that admits one client key
// through its own ZAP handler (as the runtime's authenticator does): the authorised client gets
// messages; an unknown key, the wrong server key and no keys at all get nothing and a handshake
// failure. Every wait is on a message or event, with a deadline.
#include "harness.hpp"
#include "wire.hpp"

#include "ksdiff/curve.hpp"
#include "ksdiff/subscriber.hpp"

#include <zmq.hpp>

#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <set>
#include <thread>

using namespace ksdiff;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

constexpr auto kTimeout = 10s;

struct KeyPair {
  std::string public_key;
  std::string secret_key;
};

KeyPair new_key_pair() {
  char public_key[41] = {};
  char secret_key[41] = {};
  if (zmq_curve_keypair(public_key, secret_key) != 0) throw std::runtime_error("zmq_curve_keypair failed");
  return {public_key, secret_key};
}

// A certificate file's text, as pyzmq's zmq.auth.create_certificates writes it.
std::string certificate_text(const KeyPair& keys, bool with_secret) {
  std::string text =
      "#   ****  Generated on 2026-11-30 04:34:16.000000 by pyzmq  ****\n"
      "#   ZeroMQ CURVE " + std::string(with_secret ? "**Secret** " : "Public ") + "Certificate\n"
      "#   Exchange securely, or use a secure mechanism to verify the contents\n"
      "#   of this file after exchange. Store public certificates in your home\n"
      "#   directory, in the .curve subdirectory.\n"
      "\n"
      "metadata\n"
      "curve\n"
      "    public-key = \"" + keys.public_key + "\"\n";
  if (with_secret) text += "    secret-key = \"" + keys.secret_key + "\"\n";
  return text;
}

std::array<unsigned char, 32> libzmq_decode(const std::string& z85) {
  std::array<unsigned char, 32> out{};
  if (zmq_z85_decode(out.data(), z85.c_str()) == nullptr) throw std::runtime_error("zmq_z85_decode failed");
  return out;
}

bool throws_curve_error(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const CurveError&) {
    return true;
  }
  return false;
}

// A temporary folder, removed with everything in it.
class TempDir {
 public:
  TempDir() {
    std::random_device random;
    path_ = fs::temp_directory_path() / ("ksdiff_curve_" + std::to_string(random()) + std::to_string(random()));
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ignored;
    fs::remove_all(path_, ignored);
  }
  std::string write(const std::string& name, const std::string& text) const {
    const fs::path file = path_ / name;
    std::ofstream(file, std::ios::binary) << text;
    return file.string();
  }

 private:
  fs::path path_;
};

// A CURVE publisher standing in for the runtime's PUB: its key pair, and a ZAP handler (the
// ZeroMQ authentication protocol, RFC 27) that admits only `allowed`'s public key, on its own
// thread as the runtime's is.
class CurvePublisher {
 public:
  CurvePublisher(const KeyPair& server, const std::string& allowed_client_public_key)
      : zap_(context_, zmq::socket_type::rep), socket_(context_, zmq::socket_type::xpub) {
    allowed_ = libzmq_decode(allowed_client_public_key);
    zap_.set(zmq::sockopt::linger, 0);
    zap_.bind("inproc://zeromq.zap.01");  // where libzmq asks, for every CURVE handshake
    zap_thread_ = std::thread([this] { serve_zap(); });
    socket_.set(zmq::sockopt::linger, 0);
    socket_.set(zmq::sockopt::zap_domain, "ksdiff");
    socket_.set(zmq::sockopt::curve_server, true);
    socket_.set(zmq::sockopt::curve_secretkey, server.secret_key);
    socket_.bind("tcp://127.0.0.1:*");
    endpoint_ = socket_.get(zmq::sockopt::last_endpoint);
  }
  ~CurvePublisher() {
    stop_ = true;
    zap_thread_.join();
  }

  const std::string& endpoint() const { return endpoint_; }
  int zap_requests() const { return zap_requests_.load(); }

  std::set<std::string> wait_subscriptions(std::size_t n) {
    const auto deadline = std::chrono::steady_clock::now() + kTimeout;
    while (topics_.size() < n && std::chrono::steady_clock::now() < deadline) {
      zmq_pollitem_t item{socket_.handle(), 0, ZMQ_POLLIN, 0};
      if (zmq_poll(&item, 1, 100) <= 0) continue;
      zmq::message_t msg;
      if (socket_.recv(msg, zmq::recv_flags::dontwait) && msg.size() > 0 && msg.data<char>()[0] == 1) {
        topics_.insert(std::string(msg.data<char>() + 1, msg.size() - 1));
      }
    }
    return topics_;
  }

  void send(const std::string& topic, const std::string& payload) {
    socket_.send(zmq::buffer(topic), zmq::send_flags::sndmore);
    socket_.send(zmq::buffer(payload), zmq::send_flags::none);
  }

 private:
  // ZAP request: version, request id, domain, address, identity, mechanism, then (CURVE) the
  // client's 32-byte public key. Reply: version, request id, status code, text, user id, metadata.
  void serve_zap() {
    while (!stop_) {
      zmq_pollitem_t item{zap_.handle(), 0, ZMQ_POLLIN, 0};
      if (zmq_poll(&item, 1, 50) <= 0) continue;
      std::vector<zmq::message_t> request;
      bool more = true;
      while (more) {
        zmq::message_t part;
        if (!zap_.recv(part, zmq::recv_flags::none)) break;
        more = part.more();
        request.push_back(std::move(part));
      }
      ++zap_requests_;
      const bool ok = request.size() == 7 && request[5].to_string() == "CURVE" && request[6].size() == 32 &&
                      std::memcmp(request[6].data(), allowed_.data(), 32) == 0;
      const std::string reply[] = {"1.0", request.size() > 1 ? request[1].to_string() : "",
                                   ok ? "200" : "400", ok ? "OK" : "unknown key", "", ""};
      for (std::size_t i = 0; i < 6; ++i) {
        zap_.send(zmq::buffer(reply[i]), i + 1 < 6 ? zmq::send_flags::sndmore : zmq::send_flags::none);
      }
    }
  }

  zmq::context_t context_;
  zmq::socket_t zap_;
  zmq::socket_t socket_;
  std::array<unsigned char, 32> allowed_{};
  std::thread zap_thread_;
  std::atomic<bool> stop_{false};
  std::atomic<int> zap_requests_{0};
  std::string endpoint_;
  std::set<std::string> topics_;
};

// The first event `want` accepts, within the timeout; counts what came before it in `others`.
template <typename Want>
std::optional<Event> wait_for(EventQueue& queue, Want want, std::size_t* others = nullptr) {
  const auto deadline = std::chrono::steady_clock::now() + kTimeout;
  while (std::chrono::steady_clock::now() < deadline) {
    std::optional<Event> event = queue.pop(100ms);
    if (!event) continue;
    if (want(*event)) return event;
    if (others) ++*others;
  }
  return std::nullopt;
}

}  // namespace

TEST_CASE("Z85 keys decode as libzmq decodes them; anything else is refused") {
  for (int i = 0; i < 20; ++i) {
    const KeyPair k = new_key_pair();
    EXPECT(is_z85_key(k.public_key));
    EXPECT(z85_decode_key(k.public_key) == libzmq_decode(k.public_key));
    EXPECT(z85_decode_key(k.secret_key) == libzmq_decode(k.secret_key));
  }
  const std::string good = new_key_pair().public_key;
  EXPECT(!is_z85_key(good.substr(1)));                      // 39 characters
  EXPECT(!is_z85_key(good + "0"));                          // 41
  EXPECT(!is_z85_key("\"" + good.substr(1)));               // a character outside the alphabet
  EXPECT(!is_z85_key("#####" + good.substr(5)));            // a group above 2^32 - 1
  EXPECT(!is_z85_key(""));
  EXPECT(throws_curve_error([&] { (void)z85_decode_key(good.substr(1)); }));
  EXPECT(throws_curve_error([&] { validate(CurveKeys{good, good, "short"}); }));
  validate(CurveKeys{good, good, good});
}

TEST_CASE("certificate files as pyzmq writes them") {
  const KeyPair k = new_key_pair();
  const Certificate secret = parse_certificate(certificate_text(k, true));
  EXPECT_EQ(secret.public_key, k.public_key);
  EXPECT(secret.secret_key == std::optional<std::string>(k.secret_key));
  const Certificate pub = parse_certificate(certificate_text(k, false));
  EXPECT_EQ(pub.public_key, k.public_key);
  EXPECT(!pub.secret_key);

  // Windows line endings, single quotes, tabs, and a bare value followed by a comment, holding
  // a '#' itself ('#' is a Z85 character: only a blank ends a bare value).
  KeyPair hashed = new_key_pair();
  for (int i = 0; i < 1000 && hashed.secret_key.find('#') == std::string::npos; ++i) hashed = new_key_pair();
  REQUIRE(hashed.secret_key.find('#') != std::string::npos);
  const Certificate other = parse_certificate("metadata\r\n    name = \"x\"\r\ncurve\r\n\tpublic-key = '" +
                                              hashed.public_key + "'\r\n    secret-key = " + hashed.secret_key +
                                              "  # mine\r\n");
  EXPECT_EQ(other.public_key, hashed.public_key);
  EXPECT(other.secret_key == std::optional<std::string>(hashed.secret_key));

  // Only the curve section's keys count.
  EXPECT(throws_curve_error([&] { (void)parse_certificate("metadata\n    public-key = \"" + k.public_key + "\"\n"); }));
  EXPECT(throws_curve_error([] { (void)parse_certificate(""); }));
  EXPECT(throws_curve_error([] { (void)parse_certificate("curve\n    public-key = \"tooshort\"\n"); }));
  EXPECT(throws_curve_error([&] {
    (void)parse_certificate("curve\n    public-key = \"" + k.public_key + "\"\n    secret-key = \"x\"\n");
  }));

  TempDir dir;
  const KeyPair server = new_key_pair();
  const std::string server_key = dir.write("server.key", certificate_text(server, false));
  const std::string client_key = dir.write("client.key", certificate_text(k, false));
  const std::string client_secret = dir.write("client.key_secret", certificate_text(k, true));
  const CurveKeys keys = curve_keys_from_files(server_key, client_secret);
  EXPECT_EQ(keys.server_public_key, server.public_key);
  EXPECT_EQ(keys.client_public_key, k.public_key);
  EXPECT_EQ(keys.client_secret_key, k.secret_key);
  EXPECT(throws_curve_error([&] { (void)curve_keys_from_files(server_key, client_key); }));  // no secret
  EXPECT(throws_curve_error([&] { (void)curve_keys_from_files(server_key, client_secret + ".missing"); }));
}

TEST_CASE("a CURVE subscriber: the authorised key gets messages, others a handshake failure and nothing") {
  if (zmq_has("curve") == 0) {
    std::fprintf(stderr, "  skipped: this libzmq has no CURVE\n");
    return;
  }
  const KeyPair server = new_key_pair();
  const KeyPair client = new_key_pair();
  CurvePublisher pub(server, client.public_key);

  EventQueue good_events;
  SubscriberConfig good_config;
  good_config.endpoint = pub.endpoint();
  good_config.curve = CurveKeys{server.public_key, client.public_key, client.secret_key};
  Subscriber good(good_config, good_events);
  good.start();
  // Subscriptions reach the publisher only through a completed handshake.
  EXPECT_EQ(pub.wait_subscriptions(4).size(), 4u);
  pub.send("ksd1/hello/", wire::hello(std::string("curve-instance")));
  REQUIRE(wait_for(good_events, [](const Event& e) { return std::holds_alternative<Hello>(e); }).has_value());
  EXPECT(good.status().state == ConnectionState::live);
  EXPECT_EQ(good.status().handshake_failures, 0u);

  // Three that must get nothing, each with its own reason.
  const KeyPair stranger = new_key_pair();
  struct Case {
    const char* what;
    std::optional<CurveKeys> keys;
    const char* reason;  // a word the handshake error must hold
  };
  const Case cases[] = {
      {"unknown client key", CurveKeys{server.public_key, stranger.public_key, stranger.secret_key}, "refused"},
      {"wrong server key", CurveKeys{stranger.public_key, client.public_key, client.secret_key}, "server key"},
      {"no keys", std::nullopt, "require CURVE"},
  };
  for (const Case& c : cases) {
    EventQueue events;
    SubscriberConfig config;
    config.endpoint = pub.endpoint();
    config.curve = c.keys;
    Subscriber sub(config, events);
    sub.start();
    std::size_t before = 0;
    const auto failed = wait_for(
        events, [](const Event& e) { return std::holds_alternative<HandshakeFailedEvent>(e); }, &before);
    REQUIRE_MSG(failed.has_value(), std::string(c.what) + ": no handshake failure reported");
    const std::string reason = std::get<HandshakeFailedEvent>(*failed).reason;
    EXPECT_MSG(reason.find(c.reason) != std::string::npos, std::string(c.what) + ": " + reason);
    // The authorised subscriber is still served while this one is not.
    pub.send("ksd1/hello/", wire::hello(std::string("curve-instance")));
    pub.send("ksd1/frame/npc1/", wire::frame("npc1", 0));
    EXPECT(wait_for(good_events, [](const Event& e) { return std::holds_alternative<FrameEvent>(e); }).has_value());
    const SubscriberStatus st = sub.status();
    EXPECT_MSG(before == 0 && st.messages == 0, std::string(c.what) + ": received something");
    EXPECT(st.state == ConnectionState::connecting);
    EXPECT(st.handshake_failures >= 1);
    EXPECT_EQ(st.handshake_error, reason);
    sub.stop();
    EXPECT_EQ(sub.status().messages, 0u);
  }
  EXPECT(pub.zap_requests() >= 2);  // the good client and the unknown key were asked about

  // Keys that are not keys fail at start, with the reason.
  EventQueue events;
  SubscriberConfig bad = good_config;
  bad.curve->client_secret_key = "not a key";
  Subscriber broken(bad, events);
  broken.start();
  EXPECT(broken.status().state == ConnectionState::failed);
  EXPECT(broken.status().last_error.find("secret key") != std::string::npos);
}

HARNESS_MAIN()
