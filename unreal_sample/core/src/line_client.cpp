#include "ksdiff/line_client.hpp"

#include <zmq.hpp>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <functional>
#include <limits>
#include <map>
#include <mutex>
#include <set>
#include <stdexcept>
#include <thread>
#include <utility>
#include <vector>

namespace ksdiff {

std::string_view to_string(LineState state) noexcept {
  switch (state) {
    case LineState::opening: return "opening";
    case LineState::open: return "open";
    case LineState::ending: return "ending";
    case LineState::ended: return "ended";
    case LineState::failed: return "failed";
  }
  return "unknown";
}

std::string_view to_string(PushResult result) noexcept {
  switch (result) {
    case PushResult::accepted: return "accepted";
    case PushResult::full: return "full";
    case PushResult::not_open: return "not_open";
    case PushResult::bad_audio: return "bad_audio";
  }
  return "unknown";
}

// Not in an anonymous namespace: LineClient::Impl (external linkage) uses them, and the Unreal
// build compiles every source as one unit (src/ksdiff_core_unity.inl), so the names are distinct.
namespace line_detail {

double steady_clock_seconds() {
  using namespace std::chrono;
  return duration<double>(steady_clock::now().time_since_epoch()).count();
}

constexpr double kMaxGapS = 10.0;        // SPEC 4.6 `audio`: a longer gap is bad_audio
constexpr double kLineChunkS = 10.0;     // a line's audio in messages of up to this (as the SDK's LINE_CHUNK_MS)
constexpr double kPacedChunkS = 0.25;    // what waits for real time: this long each (PACED_CHUNK_MS)
constexpr double kLiveChunkS = 0.1;      // a live stream's: 10-100 ms (MAX_CHUNK_MS)
constexpr double kLiveKeptS = 1.0;       // a live stream's audio sent, kept to go again after a per-stream busy
constexpr double kBusyShiftS = 0.25;     // a per-stream busy: the runtime's clock of the stream started this much later
constexpr std::size_t kHeaderRoom = 1024;  // an audio message's other fields (stream id, seq, at_sample)
constexpr std::size_t kSampleBytes = 4;    // float32 mono
constexpr std::size_t kMaxChunkSamples = (kMaxMessageBytes - kHeaderRoom) / kSampleBytes;
constexpr std::size_t kOutboxAudio = 4;    // a live stream's audio messages encoded ahead of the DEALER taking them
constexpr std::size_t kResentKept = 1000;  // reqs of end_streams sent twice: the other copy's answer is dropped
// open_streams whose line gave up waiting (timed out) after they left, remembered (their req only) so
// a late stream_opened is ended at once; end_streams of such streams awaiting their answer (the SDK's
// GAVE_UP_OPENS_KEPT). The oldest forgotten beyond.
constexpr std::size_t kGaveUpOpensKept = 1000;
// A hello probe follows the lines' messages to learn that the runtime read them; one unanswered this
// long is taken as lost (dropped unread) and another goes (the SDK's PROBE_AGAIN_S, PROBES_KEPT).
// One follows an open_stream left unanswered this long too: a busy's window, which ends
// kBusyWindowS after the busy came (so after the open_stream left), is over by then.
constexpr double kProbeAgainS = 1.0;
constexpr std::size_t kProbesKept = 64;
constexpr std::size_t kInstancesKept = 64;  // runtime instances seen (a late answer of an older one is no restart)
constexpr int kSendHwm = 100;              // ZMQ_SNDHWM: bounds what ZeroMQ itself queues (up to 1 MiB each)

// float32 little-endian on any host byte order.
std::string f32le(const std::deque<float>& samples, std::size_t from, std::size_t count) {
  std::string out(count * kSampleBytes, '\0');
  for (std::size_t i = 0; i < count; ++i) {
    std::uint32_t bits = 0;
    const float x = samples[from + i];
    std::memcpy(&bits, &x, sizeof(bits));
    for (std::size_t k = 0; k < 4; ++k) out[4 * i + k] = static_cast<char>((bits >> (8 * k)) & 0xFFu);
  }
  return out;
}

struct Line {
  LineOptions options;
  LineStatus st;
  std::uint64_t open_req = 0;
  // The number of the DEALER message its open_stream last left as (0: not yet, or it waits to go
  // again: the runtime dropped it unread).
  std::uint64_t open_no = 0;
  std::string open_payload;    // its open_stream, kept while unanswered: it may have to go again
  double opened_call_s = 0.0;  // when open() was called: the open timeout counts from here
  bool end_requested = false;
  bool end_queued = false;
  bool end_sent = false;
  std::uint64_t end_req = 0;
  std::uint64_t end_no = 0;  // the number of the message its end_stream first left as
  double end_sent_s = 0.0;   // when it first left: the end timeout counts from here, copies or not
  std::uint64_t end_last_no = 0;  // the number of its last copy that left
  double end_last_s = 0.0;        // when that copy left
  // When end() was called, then when the line's last message left: an ending line none of whose
  // messages leaves for end_timeout_s (the runtime cannot be reached, or never reads them) fails.
  double progress_s = 0.0;
  std::string end_payload;
  // Audio: samples[0] is sample `base` of the stream's clock; they run to st.samples_pushed.
  // [base, sent_upto) went already and is kept for a busy; [sent_upto, pushed) waits.
  std::deque<float> samples;
  std::uint64_t base = 0;
  std::uint64_t sent_upto = 0;
  std::uint64_t seq = 0;
  std::optional<double> t0;  // the client clock's time of the stream's first audio (+ busy shifts)
  std::uint64_t last_no = 0;    // the number of the line's last message that left (0: none yet)
  std::size_t in_outbox = 0;    // its messages waiting in the outbox
  bool audio_refused_after_end = false;  // a per-stream busy refused its audio once its end_stream had left
  // Audio the runtime may have dropped could not go again (no longer kept): stream_ended fails the line.
  bool audio_lost = false;
  // The latest of its audio messages forgotten by the sent_audio_max_bytes limit before it was known
  // read (0: none): a busy that may have dropped it leaves the line without that audio.
  std::uint64_t unkept_no = 0;

  bool is_line() const { return options.mode == kModeLine; }
  bool finished() const { return st.state == LineState::ended || st.state == LineState::failed; }
  bool running_on_runtime() const { return st.state == LineState::open || st.state == LineState::ending; }
};

// A line's audio message that went: kept until the runtime is known to have read it (bounded by
// bytes), to go again after a client-level busy.
struct Record {
  std::uint64_t no = 0;  // the DEALER message it left as
  double sent_s = 0.0;
  std::shared_ptr<Line> line;
  std::uint64_t start = 0;
  std::uint64_t end = 0;
};

// A message waiting for the DEALER to take it.
struct Out {
  std::string payload;
  std::shared_ptr<Line> line;  // the line it is of (null: an orphan's end_stream, a probe)
  enum class Kind { open, audio, end, other } kind = Kind::other;
  std::uint64_t start = 0;  // audio: its samples
  std::uint64_t end = 0;
  bool copy = false;  // sent again after a busy
};

}  // namespace line_detail

struct LineClient::Impl {
  using Line = line_detail::Line;
  using Out = line_detail::Out;
  using Record = line_detail::Record;

  explicit Impl(LineClientConfig c) : config(std::move(c)) {
    if (!config.clock) config.clock = line_detail::steady_clock_seconds;
    if (config.poll_interval.count() <= 0) {
      // A poll of 0 ms (or less) would spin a core: refused rather than quietly changed.
      throw std::invalid_argument("LineClientConfig::poll_interval must be > 0 ms, got " +
                                  std::to_string(config.poll_interval.count()));
    }
  }

  LineClientConfig config;
  // start() and stop() (from any threads) under `lifecycle`: the worker, the context and the wake
  // sockets are made and unmade there only.
  std::mutex lifecycle;
  std::thread worker;
  std::unique_ptr<zmq::context_t> context;
  std::unique_ptr<zmq::socket_t> wake_rx;  // the I/O thread's end of an inproc PAIR
  std::atomic<bool> stop_requested{false};
  std::atomic<bool> is_running{false};

  // Everything below is guarded by `mutex`; the I/O thread holds it for each pass (never while it
  // polls), the game thread for each call.
  mutable std::mutex mutex;
  mutable std::condition_variable changed;  // a line finished
  std::unique_ptr<zmq::socket_t> wake_tx;   // the calls' end of the PAIR: one byte wakes the I/O thread
  std::map<LineId, std::shared_ptr<Line>> lines;
  std::map<LineId, std::shared_ptr<Line>> active;  // lines neither ended nor failed: all a pass looks at
  std::deque<LineId> finished_order;  // lines ended or failed, oldest first (bounded status memory)
  LineId next_id = 1;
  std::uint64_t next_req = 1;
  std::map<std::uint64_t, std::shared_ptr<Line>> opens;  // req -> the line its open_stream is for (opening)
  std::map<std::uint64_t, std::shared_ptr<Line>> ends;   // req -> the line its end_stream is for (ending)
  std::set<std::uint64_t> gave_up_opens;  // reqs of open_streams sent whose line timed out (the latest kept)
  std::set<std::uint64_t> orphan_ends;    // end_streams of streams opened too late (the latest kept)
  std::deque<std::uint64_t> resent_reqs;  // end_streams sent twice (the latest kResentKept)
  std::deque<Out> outbox;
  std::deque<Record> records;
  std::size_t kept_bytes = 0;
  std::size_t waiting_bytes = 0;
  // Messages by number: the DEALER's count of messages taken, and the latest known read by the
  // runtime (it answered a request that left as that message or after it: a connection's messages
  // are read in order, SPEC 4.6).
  std::uint64_t sent_no = 0;
  std::uint64_t read_no = 0;
  std::uint64_t line_sent_no = 0;  // the number of the last line's message that left
  // The number of the last request the runtime answers as it reads it (open_stream) that left, and
  // when: one still unanswered once a later message is known read was dropped unread (SPEC 4.6).
  std::uint64_t request_sent_no = 0;
  double request_sent_s = 0.0;
  std::map<std::uint64_t, std::uint64_t> probes;  // req of each hello probe unanswered -> its number
  std::uint64_t probe_no = 0;  // the last probe's number (0: none since the copies after a busy)
  double probe_at = 0.0;
  // A client-level busy: when the last came, and read_no then (everything sent after it may have
  // been dropped, however long ago it left) while its drops are not over and handled.
  std::optional<double> busy_at;
  std::uint64_t busy_read_no = 0;
  LineClientStatus counters;
  // Why the I/O thread stopped on an error (until the next start()): a line opened meanwhile fails at once.
  std::optional<std::string> dead_reason;
  // The runtime instance of the last hello answered, and the instances seen (the latest kInstancesKept).
  std::optional<std::string> instance;
  std::deque<std::string> seen_instances;
  // A hello goes first on each connection (from start, and after the connection dropped): its answer
  // names the runtime instance before any stream is opened on that connection.
  bool want_hello = true;
  // The DEALER has a connection whose handshake succeeded and that has not dropped since (its monitor):
  // nothing leaves otherwise. libzmq reports a drop before it closes the pipe, so a message sent in
  // between (the next connection's first hello) went into the dying pipe and was lost, and an
  // open_stream then went first on the new connection, ahead of the hello naming its instance.
  bool link_up = false;

  std::shared_ptr<Line> find(LineId id) const {
    auto it = lines.find(id);
    return it == lines.end() ? nullptr : it->second;
  }

  // Wakes the I/O thread (a call queued something): one byte on the PAIR, never blocking (a byte
  // already waiting wakes it as well). Under `mutex`.
  void wake() {
    if (!wake_tx) return;
    try {
      (void)wake_tx->send(zmq::const_buffer("", 0), zmq::send_flags::dontwait);
    } catch (const zmq::error_t&) {
      // The PAIR is closing (stop): nothing left to wake.
    }
  }

  // The line the runtime knows as `stream` now (the latest opened with that id, still running).
  std::shared_ptr<Line> by_stream(const std::string& stream) const {
    std::shared_ptr<Line> found;
    for (const auto& [id, line] : active) {
      if (line->st.stream == stream && line->running_on_runtime()) found = line;
    }
    return found;
  }

  static void remember(std::set<std::uint64_t>& reqs, std::uint64_t req) {
    reqs.insert(req);
    // reqs grow with time: the smallest is the oldest
    while (reqs.size() > line_detail::kGaveUpOpensKept) reqs.erase(reqs.begin());
  }

  void finish(const std::shared_ptr<Line>& line, LineState state) {
    if (line->finished()) return;
    if (auto it = opens.find(line->open_req); it != opens.end()) {
      opens.erase(it);
      // Its open_stream left unanswered: a stream_opened may yet come, to be ended at once. Only its
      // req is kept (not the line, its transcript and audio), and only the latest ones.
      if (line->open_no != 0) remember(gave_up_opens, line->open_req);
    }
    line->open_payload.clear();
    if (line->end_queued) ends.erase(line->end_req);  // a late stream_ended of a failed line is ignored
    // Its messages still queued go nowhere: the runtime has ended the stream, or the line gave up on it.
    remove_from_outbox([&](const Out& o) { return o.line == line; });
    line->st.state = state;
    waiting_bytes -= static_cast<std::size_t>(line->st.samples_pushed - line->sent_upto) * line_detail::kSampleBytes;
    line->sent_upto = line->st.samples_pushed;
    // Its audio goes nowhere any more; records of it are skipped (and forgotten in time).
    line->samples.clear();
    line->samples.shrink_to_fit();
    line->base = line->st.samples_pushed;
    active.erase(line->st.id);
    finished_order.push_back(line->st.id);
    while (finished_order.size() > config.finished_lines_kept) {
      lines.erase(finished_order.front());
      finished_order.pop_front();
    }
    changed.notify_all();
  }

  void fail(const std::shared_ptr<Line>& line, ErrorCode code, const std::string& message) {
    if (line->finished()) return;
    line->st.error_code = code;
    line->st.error_message = message;
    finish(line, LineState::failed);
  }

  // --- the I/O thread ---------------------------------------------------------------------------

  void run() {
    try {
      zmq::socket_t dealer(*context, zmq::socket_type::dealer);
      dealer.set(zmq::sockopt::linger, 0);  // closing never waits
      // Queue only on a connection that is up: while the runtime is away, requests wait in the
      // outbox, where a timed-out open_stream can still be withdrawn (SPEC 4.6).
      dealer.set(zmq::sockopt::immediate, 1);
      dealer.set(zmq::sockopt::sndhwm, line_detail::kSendHwm);
      dealer.set(zmq::sockopt::reconnect_ivl, config.reconnect_interval_ms);
      dealer.set(zmq::sockopt::reconnect_ivl_max, config.reconnect_interval_max_ms);
      dealer.set(zmq::sockopt::maxmsgsize, static_cast<std::int64_t>(4 * kMaxMessageBytes));
      if (config.curve) apply_curve_client(dealer.handle(), *config.curve);  // before connecting
      // The DEALER's dropped connections, from its socket monitor (an inproc PAIR of this client's own
      // context): the runtime keeps a stream for the connection that opened it, so they lose the lines.
      const std::string monitor_address = "inproc://ksdiff-line-client-monitor";
      if (zmq_socket_monitor(dealer.handle(), monitor_address.c_str(),
                             ZMQ_EVENT_DISCONNECTED | ZMQ_EVENT_HANDSHAKE_SUCCEEDED) != 0) {
        throw zmq::error_t();
      }
      // Declared after the DEALER, so closed before it; the DEALER closes the monitor's other end.
      zmq::socket_t monitor(*context, zmq::socket_type::pair);
      monitor.set(zmq::sockopt::linger, 0);
      monitor.connect(monitor_address);
      dealer.connect(config.endpoint);
      {
        std::lock_guard<std::mutex> lock(mutex);
        want_hello = true;
        link_up = false;
      }

      bool want_out = false;
      long wait_ms = 0;
      while (!stop_requested.load()) {
        zmq_pollitem_t items[3] = {
            {dealer.handle(), 0, static_cast<short>(ZMQ_POLLIN | (want_out ? ZMQ_POLLOUT : 0)), 0},
            {wake_rx->handle(), 0, ZMQ_POLLIN, 0},
            {monitor.handle(), 0, ZMQ_POLLIN, 0}};
        const int ready = zmq_poll(items, 3, wait_ms);
        if (ready < 0) {
          if (zmq_errno() == EINTR) continue;
          throw zmq::error_t();
        }
        if ((items[1].revents & ZMQ_POLLIN) != 0) {
          zmq::message_t byte;
          while (wake_rx->recv(byte, zmq::recv_flags::dontwait)) {
          }
        }
        bool up = link_up;  // (read and written by this thread alone)
        const bool dropped = (items[2].revents & ZMQ_POLLIN) != 0 && connection_events(monitor, up);
        std::lock_guard<std::mutex> lock(mutex);
        link_up = up;
        ++counters.wakeups;
        // Replies that came before the drop are read first: an answer that came is not lost.
        if ((items[0].revents & ZMQ_POLLIN) != 0) receive(dealer);
        if (dropped) connection_dropped();
        want_out = pass(dealer);
        wait_ms = wait_for(want_out);
      }
      // stop(): the DEALER closes, and with it its connection and every stream it opened (SPEC 1,
      // Ownership), as when it drops: a start() after this one begins afresh.
      std::lock_guard<std::mutex> lock(mutex);
      connection_gone("the client stopped, closing its connection to the runtime at " + config.endpoint);
    } catch (const zmq::error_t& e) {
      died(std::string("ZeroMQ: ") + e.what() + " (endpoint " + config.endpoint + ")");
    } catch (const std::exception& e) {
      died(e.what());
    }
    is_running.store(false);
    changed.notify_all();
  }

  // Reads every monitor event waiting; true if one says the DEALER's connection dropped. `up`: whether
  // a connection is up after them (the last of a drop and a handshake that succeeded).
  static bool connection_events(zmq::socket_t& monitor, bool& up) {
    bool dropped = false;
    for (;;) {
      zmq::message_t event;
      if (!monitor.recv(event, zmq::recv_flags::dontwait)) return dropped;
      // Two frames: the event (uint16 id, uint32 value, host byte order), then the endpoint.
      if (event.size() >= sizeof(std::uint16_t)) {
        std::uint16_t id = 0;
        std::memcpy(&id, event.data(), sizeof(id));
        dropped = dropped || id == ZMQ_EVENT_DISCONNECTED;
        if (id == ZMQ_EVENT_DISCONNECTED || id == ZMQ_EVENT_HANDSHAKE_SUCCEEDED) up = id == ZMQ_EVENT_HANDSHAKE_SUCCEEDED;
      }
      while (event.more()) {
        zmq::message_t rest;
        (void)monitor.recv(rest, zmq::recv_flags::none);
        if (!rest.more()) break;
      }
    }
  }

  // The DEALER's connection to the runtime dropped: ZeroMQ's next connection has another routing id,
  // and the runtime keeps a stream for the connection that opened it (a restarted runtime has none),
  // so every line whose open_stream left has lost its stream: it fails now rather than at its
  // timeouts. Lines not sent yet go on the next connection; what was sent on this one is moot (its
  // lines failed), and a busy was this connection's.
  void connection_dropped() {
    ++counters.disconnects;
    connection_gone("the connection to the runtime at " + config.endpoint +
                    " dropped (the runtime stopped or restarted, or the network failed)");
  }

  // The DEALER's connection is gone (dropped, or closed by stop()): `why`, for the lines it loses.
  void connection_gone(const std::string& why) {
    lose_lines(sent_no + 1, "reconnect",
               why + ": the runtime keeps a stream for the connection that opened it, so this line's stream is "
                     "lost; open the line again");
    read_no = sent_no;
    probes.clear();
    probe_no = 0;
    busy_at.reset();
    want_hello = true;
  }

  // Fails the lines whose open_stream left as a message before `before`: the runtime lost their streams.
  void lose_lines(std::uint64_t before, const std::string& reason, const std::string& message) {
    std::vector<std::shared_ptr<Line>> lost;  // collected first: failing a line changes `active`
    for (const auto& [id, line] : active) {
      if (line->open_no != 0 && line->open_no < before) lost.push_back(line);
    }
    for (const std::shared_ptr<Line>& line : lost) {
      line->st.lost = reason;
      fail(line, ErrorCode::unknown_stream, message);
    }
  }

  // A hello answering the probe that left as message `no` names the runtime's instance: one never seen
  // is a new runtime process (a restart), which has none of the streams opened before that probe.
  // One seen before (a late answer of an older process) changes nothing.
  void on_instance(const std::string& seen, std::uint64_t no) {
    if (std::find(seen_instances.begin(), seen_instances.end(), seen) != seen_instances.end()) return;
    seen_instances.push_back(seen);
    while (seen_instances.size() > line_detail::kInstancesKept) seen_instances.pop_front();
    if (instance) {
      ++counters.restarts;
      lose_lines(no, "restart",
                 "the runtime restarted (instance " + *instance + " -> " + seen +
                     ") and lost this line's stream; open the line again");
    }
    instance = seen;
    counters.instance = seen;
  }

  // The wake sockets, then their context (it waits for its sockets to close), once the I/O thread
  // is joined. Under `lifecycle`.
  void release() {
    {
      std::lock_guard<std::mutex> lock(mutex);
      wake_tx.reset();
    }
    wake_rx.reset();
    context.reset();
  }

  // The I/O thread stops on an error: no line it ran will get an answer, so each fails with the
  // reason rather than staying opening or open for ever.
  void died(const std::string& reason) {
    std::lock_guard<std::mutex> lock(mutex);
    is_running.store(false);  // before the lines fail: whoever sees one failed sees the client stopped
    counters.last_error = reason;
    dead_reason = reason;
    std::vector<std::shared_ptr<Line>> running;
    for (const auto& [id, line] : active) running.push_back(line);
    for (const std::shared_ptr<Line>& line : running) {
      fail(line, ErrorCode::internal, "the client's I/O thread stopped: " + reason);
    }
  }

  // How long the next poll may wait (ms): until something falls due (the drops' end, a probe to send,
  // audio paced to real time, a timeout), at most poll_interval. Calls and replies wake it.
  // With messages the DEALER refused (`blocked`), its room (POLLOUT) wakes it too.
  long wait_for(bool blocked) const {
    const double now = config.clock();
    double due = now + static_cast<double>(config.poll_interval.count()) / 1000.0;
    if (busy_at) due = std::min(due, *busy_at + kBusyWindowS);
    // A probe goes in time (while the drops last it waits for their end, and while the DEALER refuses
    // messages for its room: each wakes the thread).
    if (const std::optional<double> probe = probe_due(); probe && !busy_at && !blocked) due = std::min(due, *probe);
    for (const auto& [id, line] : active) {
      if (line->st.state == LineState::opening) due = std::min(due, line->opened_call_s + config.open_timeout_s);
      if (line->st.state == LineState::ending) {
        due = std::min(due, (line->end_sent ? line->end_sent_s : line->progress_s) + config.end_timeout_s);
      }
      // (a line waiting for the runtime to read its previous message is woken by the answer)
      const bool awaits_read = line->is_line() && line->last_no > read_no;
      if (line->running_on_runtime() && line->sent_upto < line->st.samples_pushed && line->in_outbox == 0 &&
          !awaits_read) {
        due = std::min(due, pace_due(*line, now));
      }
    }
    // at least 1 ms: something due now that a pass could not do must not spin the thread
    return std::max(1L, static_cast<long>(std::ceil((due - now) * 1000.0)));
  }

  // When (client clock) the next hello probe is due, whose answer says the runtime read every message
  // before it; nullopt while none is wanted. One follows the lines' messages at once (a line's next one
  // waits for it), and an open_stream unanswered for kProbeAgainS: dropped unread in a busy's window
  // (which ends kBusyWindowS after the busy came, so after the open_stream left; no probe leaves
  // before). A probe unanswered for kProbeAgainS is taken as lost too, and another follows (the SDK's
  // _probe_due).
  std::optional<double> probe_due() const {
    std::optional<double> due;
    const auto consider = [&](std::uint64_t no, double first) {
      if (no <= read_no) return;
      const double at = probe_no >= no ? probe_at + line_detail::kProbeAgainS : first;
      due = due ? std::min(*due, at) : at;
    };
    consider(line_sent_no, 0.0);
    consider(request_sent_no, request_sent_s + line_detail::kProbeAgainS);
    return due;
  }

  // One pass: timeouts, audio and open_streams to send again after a busy, new audio and end_streams,
  // then what may leave now. True while the DEALER refuses messages that may leave (poll for POLLOUT).
  bool pass(zmq::socket_t& dealer) {
    const double now = config.clock();
    forget_read();
    check_timeouts(now);
    resend_after_busy(now);
    resend_unread_opens();
    for (auto& [id, line] : active) queue_audio_and_end(line, now);
    return send_outbox(dealer);
  }

  // Hands the DEALER what may leave of the outbox, in its order (SPEC 4.6 "A client past its
  // share"): while the runtime drops this client's requests, only live streams' audio (the rest
  // would be dropped too, and a line's audio must not reach the runtime before the copies of what it
  // dropped); a line's message only once the runtime has read the line's previous one, its later ones
  // behind it (so no copy comes after later audio, or the end_stream, of its line). Then a hello
  // probe, whose answer says the runtime read the lines' messages. True: the DEALER took no more.
  bool send_outbox(zmq::socket_t& dealer) {
    const double now = config.clock();
    const bool holding = busy_at && now < *busy_at + kBusyWindowS;
    std::deque<Out> held;
    std::set<const Line*> waiting;  // lines with a message held: their later ones stay behind it
    bool blocked = false;
    // No connection (none yet, or one dropped and the next not up): nothing may leave. Blocked: the
    // poll waits for the monitor's next event, not for probes falling due.
    if (!link_up) return true;
    if (want_hello && !holding) {
      // First on a new connection: its answer names the runtime instance the opens behind it reach.
      if (!send_probe(dealer, now)) return true;
      want_hello = false;
    }
    while (!outbox.empty()) {
      Out& out = outbox.front();
      const Line* line = out.line.get();
      const bool live_audio = out.kind == Out::Kind::audio && line != nullptr && !line->is_line();
      const bool ordered = line != nullptr && line->is_line() &&
                           (out.kind == Out::Kind::audio || out.kind == Out::Kind::end);
      if ((holding && !live_audio) ||
          (ordered && (waiting.count(line) > 0 || line->last_no > read_no))) {
        if (line != nullptr) waiting.insert(line);
        held.push_back(std::move(out));
        outbox.pop_front();
        continue;
      }
      if (!send_one(dealer, out.payload)) {
        blocked = true;  // the runtime is away or slow (EAGAIN): retried on POLLOUT
        break;
      }
      on_sent(out, config.clock());
      if (out.line) --out.line->in_outbox;
      outbox.pop_front();
    }
    outbox.insert(outbox.begin(), std::make_move_iterator(held.begin()), std::make_move_iterator(held.end()));
    if (const std::optional<double> due = probe_due(); !holding && !blocked && due && now >= *due) {
      blocked = !send_probe(dealer, now);
    }
    return blocked;
  }

  bool send_one(zmq::socket_t& dealer, const std::string& payload) {
    zmq::send_result_t sent;
    try {
      sent = dealer.send(zmq::buffer(payload), zmq::send_flags::dontwait);
    } catch (const zmq::error_t& e) {
      if (e.num() == EINTR) return false;
      throw;
    }
    if (!sent) return false;
    ++sent_no;
    ++counters.sent;
    return true;
  }

  // A hello request after the lines' messages that left: its answer says the runtime read them.
  bool send_probe(zmq::socket_t& dealer, double now) {
    const std::uint64_t req = next_req++;
    if (!send_one(dealer, encode_hello_request(req))) return false;
    ++counters.probes;
    probe_no = sent_no;
    probe_at = now;
    probes[req] = sent_no;
    while (probes.size() > line_detail::kProbesKept) probes.erase(probes.begin());
    return true;
  }

  void on_sent(Out& out, double now) {
    if (out.copy) ++counters.resent;
    const std::shared_ptr<Line>& line = out.line;
    if (!line) return;
    line->last_no = sent_no;
    line->progress_s = now;
    if (line->is_line() && out.kind != Out::Kind::open) line_sent_no = sent_no;
    switch (out.kind) {
      case Out::Kind::audio:
        ++line->st.messages_sent;
        if (out.copy) ++line->st.messages_resent;
        if (!line->t0) line->t0 = now;  // the stream's clock starts with its first audio (SPEC 4.6)
        if (line->is_line()) {  // kept until known read: the runtime may yet say it dropped it unread
          records.push_back(Record{sent_no, now, line, out.start, out.end});
          kept_bytes += static_cast<std::size_t>(out.end - out.start) * line_detail::kSampleBytes;
        }
        break;
      case Out::Kind::end:
        // The end timeout counts from the first copy: copies sent after busies must not push it back.
        if (!line->end_sent) {
          line->end_sent_s = now;
          line->end_no = sent_no;
        }
        line->end_last_no = sent_no;
        line->end_last_s = now;
        line->end_sent = true;
        break;
      case Out::Kind::open:
        line->open_no = sent_no;  // a copy is numbered anew: its answer proves it read
        request_sent_no = sent_no;
        request_sent_s = now;
        break;
      case Out::Kind::other:
        break;
    }
  }

  // The runtime read every message up to `no` (it answered a request that left as it).
  void read_up_to(std::uint64_t no) { read_no = std::max(read_no, no); }

  // Audio the runtime is known to have read (up to read_no; while a busy's drops are not handled,
  // up to what it had read when the busy came) is forgotten, and the oldest beyond
  // sent_audio_max_bytes; then the lines' samples before their oldest kept (and not waiting) audio
  // are freed. A live stream's audio is not sent again after a busy: only its last kLiveKeptS are
  // kept, for a per-stream busy.
  void forget_read() {
    const std::uint64_t read = busy_at ? busy_read_no : read_no;
    while (!records.empty() && (records.front().no <= read || kept_bytes > config.sent_audio_max_bytes)) {
      Record& r = records.front();
      // Forgotten by the limit before it was known read: a busy may yet say it was dropped.
      if (r.no > read_no) r.line->unkept_no = std::max(r.line->unkept_no, r.no);
      kept_bytes -= static_cast<std::size_t>(records.front().end - records.front().start) * line_detail::kSampleBytes;
      records.pop_front();
    }
    std::map<const Line*, std::uint64_t> oldest;
    for (const Record& r : records) {
      auto [it, fresh] = oldest.emplace(r.line.get(), r.start);
      if (!fresh) it->second = std::min(it->second, r.start);
    }
    // Audio encoded and not sent yet (a line's next message waits in the outbox for its previous one
    // to be known read; a copy waits there after a busy) keeps its samples too: it may yet be dropped
    // or refused once sent, and must be able to go again.
    for (const Out& o : outbox) {
      if (o.kind != Out::Kind::audio || !o.line) continue;
      auto [it, fresh] = oldest.emplace(o.line.get(), o.start);
      if (!fresh) it->second = std::min(it->second, o.start);
    }
    for (auto& [id, line] : active) {
      std::uint64_t keep_from = line->sent_upto;
      if (!line->is_line()) {
        const auto live_kept = static_cast<std::uint64_t>(line_detail::kLiveKeptS * line->options.sample_rate);
        keep_from -= std::min(keep_from, live_kept);
      }
      if (auto it = oldest.find(line.get()); it != oldest.end()) keep_from = std::min(keep_from, it->second);
      if (keep_from > line->base) {
        const auto drop =
            static_cast<std::ptrdiff_t>(std::min<std::uint64_t>(keep_from - line->base, line->samples.size()));
        line->samples.erase(line->samples.begin(), line->samples.begin() + drop);
        line->base += static_cast<std::uint64_t>(drop);
      }
    }
  }

  void remove_from_outbox(const std::function<bool(const Out&)>& which) {
    std::deque<Out> kept;
    for (Out& o : outbox) {
      if (which(o)) {
        if (o.line) --o.line->in_outbox;
      } else {
        kept.push_back(std::move(o));
      }
    }
    outbox = std::move(kept);
  }

  void check_timeouts(double now) {
    // Collected first: failing a line changes `active`.
    std::vector<std::shared_ptr<Line>> unopened;
    std::vector<std::shared_ptr<Line>> unended;
    std::vector<std::shared_ptr<Line>> stuck;
    for (const auto& [id, line] : active) {
      if (line->st.state == LineState::opening && now - line->opened_call_s > config.open_timeout_s) {
        unopened.push_back(line);
      } else if (line->st.state == LineState::ending && line->end_sent &&
                 now - line->end_sent_s > config.end_timeout_s) {
        unended.push_back(line);
      } else if (line->st.state == LineState::ending && !line->end_sent &&
                 now - line->progress_s > config.end_timeout_s) {
        stuck.push_back(line);
      }
    }
    for (const std::shared_ptr<Line>& line : unopened) {
      // Not sent yet: withdrawn, so a runtime that comes back does not open a stream nobody feeds.
      remove_from_outbox([&](const Out& o) { return o.line == line; });
      fail(line, ErrorCode::internal,
           "no reply to open_stream within " + std::to_string(config.open_timeout_s) +
               " s: is the runtime running at " + config.endpoint + "?");
    }
    for (const std::shared_ptr<Line>& line : unended) {
      fail(line, ErrorCode::internal, "no stream_ended within " + std::to_string(config.end_timeout_s) +
                                          " s of end_stream");
    }
    for (const std::shared_ptr<Line>& line : stuck) {
      // Its end_stream (and audio before it) could not leave: withdrawn with the line (finish), so a
      // runtime that reads them later does not get half a line.
      fail(line, ErrorCode::internal,
           "the end_stream could not leave: nothing of the line left for " + std::to_string(config.end_timeout_s) +
               " s (the runtime at " + config.endpoint + " does not read this client's messages, or cannot be "
               "reached)");
    }
  }

  // SPEC 4.6 "A client past its share": once the drops are over, the audio of open lines sent after
  // the last message the runtime was known to have read when the busy came (however long before)
  // goes again, in its order, ahead of anything queued, then the end_streams left unanswered. Nothing
  // of lines left while the drops lasted, and a line's next message leaves only once its previous one
  // is known read, so no later audio of a line reached the runtime before these copies.
  void resend_after_busy(double now) {
    if (!busy_at || now < *busy_at + kBusyWindowS) return;
    const double drops_end = *busy_at + kBusyWindowS;
    busy_at.reset();
    probe_no = 0;  // a probe sent before may have been dropped unread: one follows the copies
    std::deque<Out> again;
    std::deque<Record> kept;
    for (Record& r : records) {  // each one sent after busy_read_no (forget_read)
      const Line& line = *r.line;
      // Lines still running, and their samples still here.
      if (r.sent_s <= drops_end && line.running_on_runtime() && r.start >= line.base &&
          r.end <= line.base + line.samples.size()) {
        again.push_back(audio_out(r.line, r.start, r.end, /*copy=*/true));
        kept_bytes -= static_cast<std::size_t>(r.end - r.start) * line_detail::kSampleBytes;  // kept again once sent
      } else {
        // Dropped, and its samples are gone: the line must not report a clean end without them.
        if (r.sent_s <= drops_end && line.running_on_runtime()) r.line->audio_lost = true;
        kept.push_back(std::move(r));
      }
    }
    records = std::move(kept);
    for (auto& [id, line] : active) {
      // Audio forgotten by the sent_audio_max_bytes limit, not known read before the busy: maybe dropped.
      if (line->is_line() && line->running_on_runtime() && line->unkept_no > busy_read_no) line->audio_lost = true;
      // Only an end_stream whose last copy may have been dropped (not known read when the busy came).
      if (line->st.state == LineState::ending && line->end_sent && line->end_last_no > busy_read_no &&
          line->end_last_s <= drops_end) {
        again.push_back(Out{line->end_payload, line, Out::Kind::end, 0, 0, true});
        ++line->in_outbox;
        resent_reqs.push_back(line->end_req);
        while (resent_reqs.size() > line_detail::kResentKept) resent_reqs.pop_front();
      }
    }
    outbox.insert(outbox.begin(), std::make_move_iterator(again.begin()), std::make_move_iterator(again.end()));
  }

  // SPEC 4.6 "A client past its share": the runtime answers open_stream as it reads it, and reads a
  // connection's messages in order, so an open_stream still unanswered once a message sent after it
  // is known read (read_no: an answer to a later request, a hello probe's) was never read: dropped
  // unread after a busy. It goes again (same req), numbered anew when it leaves, ahead of what waits,
  // in the order the lines were opened. Never merely because a busy's window ended with it
  // unanswered: it may still be on its way, and a second copy read would open a second stream (or be
  // refused "already open"). Its open timeout still counts from open(). A connection that dropped fails the lines
  // whose open_stream left on it instead (connection_dropped): nothing goes again across connections.
  void resend_unread_opens() {
    std::deque<Out> again;
    for (const auto& [req, line] : opens) {  // by req: in the order open() was called
      if (line->open_no == 0 || line->open_no >= read_no || line->open_payload.empty()) continue;
      line->open_no = 0;  // not sent (until the copy leaves): a connection drop meanwhile does not lose it
      ++line->in_outbox;
      again.push_back(Out{line->open_payload, line, Out::Kind::open, 0, 0, /*copy=*/true});
    }
    outbox.insert(outbox.begin(), std::make_move_iterator(again.begin()), std::make_move_iterator(again.end()));
  }

  Out audio_out(const std::shared_ptr<Line>& line, std::uint64_t start, std::uint64_t end, bool copy) {
    Audio audio;
    audio.stream = line->st.stream;
    audio.seq = line->seq++;
    audio.at_sample = start;  // always: a copy of what the runtime has is nothing to it (SPEC 4.6)
    audio.pcm = line_detail::f32le(line->samples, static_cast<std::size_t>(start - line->base),
                                   static_cast<std::size_t>(end - start));
    ++line->in_outbox;
    return Out{encode_audio(audio), line, Out::Kind::audio, start, end, copy};
  }

  // How far ahead of the stream's first audio the runtime takes audio (max_ahead_s less the margin).
  double room_s(const Line& line) const { return std::max(0.1, *line.st.max_ahead_s - config.ahead_margin_s); }

  // The samples the runtime takes now: at most room_s ahead of the stream's first audio. No limit
  // from a 1.0 runtime (no max_ahead_s).
  std::uint64_t allowed_end(const Line& line, double now) const {
    if (!line.st.max_ahead_s) return std::numeric_limits<std::uint64_t>::max();
    const double elapsed = line.t0 ? now - *line.t0 : 0.0;  // (not room + now - now: rounding took a sample)
    const double end = std::floor((room_s(line) + elapsed) * line.options.sample_rate + 1e-6);
    return end <= 0.0 ? 0 : static_cast<std::uint64_t>(end);
  }

  // What waits for real time goes in messages of this many samples: 250 ms, but never more than
  // the room (a max_ahead_s under 0.75 s leaves less than 250 ms of it: the line would never go).
  std::uint64_t paced_samples(const Line& line, std::uint64_t limit) const {
    const double rate = line.options.sample_rate;
    auto paced = std::min<std::uint64_t>(limit, static_cast<std::uint64_t>(line_detail::kPacedChunkS * rate));
    if (line.st.max_ahead_s) {
      paced = std::min<std::uint64_t>(paced, static_cast<std::uint64_t>(std::floor(room_s(line) * rate + 1e-6)));
    }
    return std::max<std::uint64_t>(paced, 1);
  }

  std::uint64_t chunk_limit(const Line& line) const {
    return std::min<std::uint64_t>(
        line_detail::kMaxChunkSamples,
        static_cast<std::uint64_t>((line.is_line() ? line_detail::kLineChunkS : line_detail::kLiveChunkS) *
                                   line.options.sample_rate));
  }

  // When the line's next paced message falls due (client clock).
  double pace_due(const Line& line, double now) const {
    if (!line.st.max_ahead_s || !line.t0) return now;
    const std::uint64_t want =
        std::min(line.st.samples_pushed, line.sent_upto + paced_samples(line, chunk_limit(line)));
    return *line.t0 + static_cast<double>(want) / line.options.sample_rate - room_s(line);
  }

  void queue_audio_and_end(const std::shared_ptr<Line>& line, double now) {
    if (!line->running_on_runtime()) return;
    const std::uint64_t limit = chunk_limit(*line);
    const std::uint64_t paced = paced_samples(*line, limit);
    // A line's messages leave one at a time (each once the one before is known read): one is
    // encoded when it may go, so it is paced to the time it leaves. A live stream's go on.
    const std::size_t ahead = line->is_line() ? 1 : line_detail::kOutboxAudio;
    const std::uint64_t pushed = line->st.samples_pushed;
    while (line->sent_upto < pushed && line->in_outbox < ahead) {
      const std::uint64_t allowed = allowed_end(*line, now);
      std::uint64_t n = std::min(limit, pushed - line->sent_upto);
      if (allowed < pushed) {
        if (allowed <= line->sent_upto) break;
        // What waits for real time goes as it becomes due, in 250 ms messages (a first part that
        // is due already goes in as few messages as fit, as the SDK sends it).
        n = std::min(n, allowed - line->sent_upto);
        if (n < paced) break;
        n -= n % paced;
      }
      const std::uint64_t start = line->sent_upto;
      outbox.push_back(audio_out(line, start, start + n, /*copy=*/false));
      line->sent_upto += n;
      line->st.samples_sent = std::max(line->st.samples_sent, line->sent_upto);
      waiting_bytes -= static_cast<std::size_t>(n) * line_detail::kSampleBytes;
    }
    if (line->st.state == LineState::ending && !line->end_queued && line->sent_upto == pushed) {
      line->end_req = next_req++;
      line->end_payload = encode_end_stream(EndStream{line->st.stream, line->end_req});
      ends[line->end_req] = line;
      line->end_queued = true;
      ++line->in_outbox;
      outbox.push_back(Out{line->end_payload, line, Out::Kind::end, 0, 0, false});
    }
  }

  // Every reply waiting.
  void receive(zmq::socket_t& dealer) {
    for (int i = 0; i < 1000; ++i) {
      zmq::message_t msg;
      try {
        if (!dealer.recv(msg, zmq::recv_flags::dontwait)) return;
      } catch (const zmq::error_t& e) {
        if (e.num() == EINTR) return;
        throw;
      }
      while (msg.more()) {  // a DEALER reply is one frame (SPEC 1): any other is refused whole
        zmq::message_t rest;
        (void)dealer.recv(rest, zmq::recv_flags::none);
        if (!rest.more()) {
          msg.rebuild(0);
          break;
        }
      }
      if (msg.size() == 0) {
        ++counters.ignored;
        continue;
      }
      try {
        on_reply(decode(msg.data(), msg.size()));
      } catch (const ProtocolError& e) {
        ++counters.ignored;
        counters.last_error = std::string("a reply was refused: ") + e.what();
      }
    }
  }

  bool was_resent(std::uint64_t req) const {
    return std::find(resent_reqs.begin(), resent_reqs.end(), req) != resent_reqs.end();
  }

  void on_reply(const Message& m) {
    const double now = config.clock();
    if (const auto* hello = std::get_if<Hello>(&m.body)) {
      auto it = hello->req ? probes.find(*hello->req) : probes.end();
      if (it == probes.end()) {
        ++counters.ignored;
        return;
      }
      if (hello->instance) on_instance(*hello->instance, it->second);
      // The runtime read every message up to the probe; older probes unanswered were dropped unread.
      read_up_to(it->second);
      probes.erase(probes.begin(), std::next(it));
    } else if (const auto* opened = std::get_if<StreamOpened>(&m.body)) {
      on_opened(*opened);
    } else if (const auto* ended = std::get_if<StreamEnded>(&m.body)) {
      auto it = ended->req ? ends.find(*ended->req) : ends.end();
      if (it == ends.end()) {
        ++counters.ignored;  // an orphan's, or a copy's answer after the other's
        if (ended->req) orphan_ends.erase(*ended->req);
        return;
      }
      std::shared_ptr<Line> line = it->second;
      ends.erase(it);
      read_up_to(line->end_no);
      line->st.frames = ended->frames;
      if (line->audio_refused_after_end) {
        // The runtime ended the stream without audio it refused: its frames lack that part.
        fail(line, ErrorCode::busy,
             "the runtime refused audio of the line (busy) after its end_stream: its " +
                 std::to_string(ended->frames) + " frames lack that audio");
        return;
      }
      if (line->audio_lost) {
        // Audio a busy dropped could not go again (no longer kept): the frames lack that part.
        fail(line, ErrorCode::busy,
             "the runtime dropped or refused audio of the line (busy) that could not go again (no longer "
                 "kept): its " +
                 std::to_string(ended->frames) + " frames lack that audio");
        return;
      }
      finish(line, LineState::ended);
    } else if (const auto* error = std::get_if<Error>(&m.body)) {
      on_error(*error, now);
    } else {
      ++counters.ignored;  // controls_set: not this client's
    }
  }

  void on_opened(const StreamOpened& opened) {
    auto it = opened.req ? opens.find(*opened.req) : opens.end();
    if (it == opens.end()) {
      if (opened.req && gave_up_opens.erase(*opened.req) > 0) {
        // Its open timed out after the request left: nobody feeds the stream, so free it now (SPEC 4.6).
        const std::uint64_t req = next_req++;
        remember(orphan_ends, req);
        outbox.push_back(
            Out{encode_end_stream(EndStream{opened.stream, req}), nullptr, Out::Kind::other, 0, 0, false});
        return;
      }
      ++counters.ignored;
      return;
    }
    std::shared_ptr<Line> line = it->second;
    opens.erase(it);
    read_up_to(line->open_no);
    // Answered: it needs no copy (one queued is withdrawn; none is, while the runtime answers in order).
    remove_from_outbox([&](const Out& o) { return o.line == line && o.kind == Out::Kind::open; });
    line->open_payload.clear();
    line->open_payload.shrink_to_fit();
    line->st.stream = opened.stream;
    line->st.fps = opened.fps;
    line->st.max_ahead_s = opened.max_ahead_s;
    line->st.latency_ms = opened.latency_ms;
    if (opened.mode) line->st.mode = *opened.mode;
    line->st.state = line->end_requested ? LineState::ending : LineState::open;
    line->progress_s = config.clock();  // an ending line's messages may leave from now on
  }

  void on_error(const Error& error, double now) {
    ++counters.errors;
    const ErrorCode code = error.error_code();
    if (!error.req && !error.stream) {
      if (code == ErrorCode::busy) {
        // This connection's requests are dropped unread until at most BUSY_WINDOW_S from now: all
        // it sent after the last message known read may be (what the runtime read before the first
        // one dropped was answered before this reply). A busy whose drops are not over keeps its own.
        ++counters.busy;
        if (!busy_at) busy_read_no = read_no;
        busy_at = now;
      } else {
        counters.last_error = error.code + ": " + error.message;
      }
      return;
    }
    if (error.req) {
      const std::uint64_t req = *error.req;
      if (auto it = probes.find(req); it != probes.end()) {
        // A hello the runtime refused: it read it all the same (a dropped one gets no answer), so it
        // read every message up to it, as its answer would say.
        read_up_to(it->second);
        probes.erase(probes.begin(), std::next(it));
        return;
      }
      if (orphan_ends.erase(req) > 0) return;
      if (gave_up_opens.erase(req) > 0) return;  // a timed-out open refused after all: nothing to free
      if (auto it = opens.find(req); it != opens.end()) {
        std::shared_ptr<Line> line = it->second;
        opens.erase(it);
        read_up_to(line->open_no);
        fail(line, code, error.message);
        return;
      }
      if (auto it = ends.find(req); it != ends.end()) {
        // The copy of an end_stream sent again is answered unknown_stream while the first ends it.
        if (code == ErrorCode::unknown_stream && was_resent(req)) {
          ++counters.ignored;
          return;
        }
        std::shared_ptr<Line> line = it->second;
        ends.erase(it);
        read_up_to(line->end_no);
        fail(line, code, error.message);
        return;
      }
      ++counters.ignored;  // a copy's answer after the other's
      return;
    }
    // An audio message's (it has no req): the stream's line.
    std::shared_ptr<Line> line = by_stream(*error.stream);
    if (!line) {
      ++counters.ignored;
      counters.last_error = error.code + ": " + error.message;
      return;
    }
    ++line->st.audio_errors;
    line->st.error_code = code;
    line->st.error_message = error.message;
    if (code == ErrorCode::busy && line->end_sent) {
      // Too late to send it again (the end_stream went first, possible only for a live stream or a
      // copy): the line must not report a clean end (stream_ended fails it).
      line->audio_refused_after_end = true;
    } else if (code == ErrorCode::busy) {
      // Too far ahead: nothing of that message was taken. The runtime's clock of the stream runs
      // behind ours (its first audio reached it later): take it as later, and send again from the
      // oldest audio kept (which copies the runtime has are nothing to it).
      if (line->t0) *line->t0 += line_detail::kBusyShiftS;
      // A line's refused message is its last one sent: if the limit forgot it, it cannot go again.
      if (line->is_line() && line->unkept_no != 0 && line->unkept_no >= line->last_no) line->audio_lost = true;
      const std::uint64_t back = std::min(line->base, line->sent_upto);
      waiting_bytes += static_cast<std::size_t>(line->sent_upto - back) * line_detail::kSampleBytes;
      // Audio of this line still in the outbox goes again from `back` too, and an end_stream
      // queued behind it waits for that audio (it is queued again once all of it has gone).
      remove_from_outbox([&](const Out& o) {
        return o.line == line && (o.kind == Out::Kind::audio || o.kind == Out::Kind::end);
      });
      if (line->end_queued) {
        ends.erase(line->end_req);
        line->end_queued = false;
      }
      line->sent_upto = back;
    } else if ((code == ErrorCode::unknown_stream || code == ErrorCode::forbidden) &&
               line->st.state == LineState::open) {
      fail(line, code, error.message);  // the stream is gone (its idle timeout) or not this connection's
    }
  }
};

LineClient::LineClient(LineClientConfig config) : impl_(std::make_unique<Impl>(std::move(config))) {
  impl_->counters.endpoint = impl_->config.endpoint;
}

LineClient::~LineClient() { stop(); }

void LineClient::start() {
  std::lock_guard<std::mutex> life(impl_->lifecycle);
  if (impl_->worker.joinable()) {
    if (impl_->is_running.load()) return;
    impl_->worker.join();  // it stopped on an error: start again
    impl_->release();
  }
  if (impl_->config.curve) validate(*impl_->config.curve);
  // The wake PAIR: the calls' end sends a byte, the I/O thread polls the other with the DEALER.
  auto context = std::make_unique<zmq::context_t>(1);
  auto rx = std::make_unique<zmq::socket_t>(*context, zmq::socket_type::pair);
  auto tx = std::make_unique<zmq::socket_t>(*context, zmq::socket_type::pair);
  rx->set(zmq::sockopt::linger, 0);
  tx->set(zmq::sockopt::linger, 0);
  tx->set(zmq::sockopt::sndhwm, 1);  // one byte waiting wakes it: more are dropped (EAGAIN)
  const std::string address = "inproc://ksdiff-line-client-wake";  // its own context: no other binds it
  rx->bind(address);
  tx->connect(address);
  impl_->context = std::move(context);
  impl_->wake_rx = std::move(rx);
  {
    std::lock_guard<std::mutex> lock(impl_->mutex);
    impl_->wake_tx = std::move(tx);
    impl_->dead_reason.reset();
  }
  impl_->stop_requested.store(false);
  impl_->is_running.store(true);
  impl_->worker = std::thread([this] { impl_->run(); });
}

void LineClient::stop() {
  std::lock_guard<std::mutex> life(impl_->lifecycle);
  impl_->stop_requested.store(true);
  {
    std::lock_guard<std::mutex> lock(impl_->mutex);
    impl_->wake();
  }
  if (impl_->worker.joinable()) impl_->worker.join();
  impl_->is_running.store(false);
  impl_->release();
}

bool LineClient::running() const noexcept { return impl_->is_running.load(); }

double LineClient::now() const { return impl_->config.clock(); }

LineId LineClient::open(const LineOptions& options) {
  OpenStream request;
  if (!options.stream.empty()) request.stream = options.stream;
  request.sample_rate = options.sample_rate;
  request.channels = 1;
  request.format = "f32le";
  request.transcript = options.transcript;
  request.seed = options.seed;
  request.mode = options.mode;
  request.controls = options.controls;
  if (!is_valid_mode(options.mode)) {
    throw ProtocolError(ErrorCode::malformed, "mode must be 'line' or 'live', got '" + options.mode + "'");
  }
  std::lock_guard<std::mutex> lock(impl_->mutex);
  request.req = impl_->next_req;
  std::string payload = encode_open_stream(request);  // throws before anything changes
  auto line = std::make_shared<line_detail::Line>();
  line->options = options;
  line->open_payload = payload;
  line->open_req = impl_->next_req++;
  line->opened_call_s = impl_->config.clock();
  line->st.id = impl_->next_id++;
  line->st.stream = options.stream;
  line->st.mode = options.mode;
  impl_->lines[line->st.id] = line;
  impl_->active[line->st.id] = line;
  impl_->opens[line->open_req] = line;
  if (impl_->dead_reason) {  // nothing would ever send it
    impl_->fail(line, ErrorCode::internal, "the client's I/O thread stopped: " + *impl_->dead_reason);
    return line->st.id;
  }
  ++line->in_outbox;
  impl_->outbox.push_back(line_detail::Out{std::move(payload), line, line_detail::Out::Kind::open, 0, 0, false});
  impl_->wake();
  return line->st.id;
}

PushResult LineClient::push(LineId id, const float* samples, std::size_t count,
                            std::optional<std::uint64_t> at_sample) {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  const std::shared_ptr<line_detail::Line> line = impl_->find(id);
  if (!line || line->end_requested || line->finished()) return PushResult::not_open;
  const std::uint64_t end = line->st.samples_pushed;
  const std::uint64_t start = at_sample.value_or(end);
  if (start > end && static_cast<double>(start - end) > line_detail::kMaxGapS * line->options.sample_rate) {
    return PushResult::bad_audio;
  }
  // What the runtime would do with it: a gap is silence, audio it has already is dropped (the
  // first wins), so the same is done here and the stream's clock has one sample per position.
  const std::uint64_t gap = start > end ? start - end : 0;
  const std::size_t skip = start < end ? static_cast<std::size_t>(std::min<std::uint64_t>(end - start, count)) : 0;
  const std::size_t added = static_cast<std::size_t>(gap) + (count - skip);
  if (added == 0) return PushResult::accepted;
  if (impl_->waiting_bytes + added * line_detail::kSampleBytes > impl_->config.max_waiting_bytes) {
    return PushResult::full;
  }
  line->samples.insert(line->samples.end(), static_cast<std::size_t>(gap), 0.0f);
  line->samples.insert(line->samples.end(), samples + skip, samples + count);
  line->st.samples_pushed = end + added;
  impl_->waiting_bytes += added * line_detail::kSampleBytes;
  impl_->wake();
  return PushResult::accepted;
}

bool LineClient::end(LineId id) {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  const std::shared_ptr<line_detail::Line> line = impl_->find(id);
  if (!line || line->st.state == LineState::failed) return false;
  if (line->end_requested || line->finished()) return true;
  line->end_requested = true;
  line->progress_s = impl_->config.clock();  // an ending line's messages that cannot leave fail it in time
  if (line->st.state == LineState::open) line->st.state = LineState::ending;
  impl_->wake();
  return true;
}

std::optional<LineStatus> LineClient::status(LineId id) const {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  const std::shared_ptr<line_detail::Line> line = impl_->find(id);
  if (!line) return std::nullopt;
  return line->st;
}

std::vector<LineStatus> LineClient::lines() const {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  std::vector<LineStatus> out;
  for (const auto& [id, line] : impl_->lines) out.push_back(line->st);
  return out;
}

LineClientStatus LineClient::status() const {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  LineClientStatus out = impl_->counters;
  out.running = impl_->is_running.load();
  out.waiting_bytes = impl_->waiting_bytes;
  out.kept_bytes = impl_->kept_bytes;
  out.remembered_reqs = impl_->opens.size() + impl_->ends.size() + impl_->gave_up_opens.size() +
                        impl_->orphan_ends.size() + impl_->resent_reqs.size();
  return out;
}

std::optional<LineStatus> LineClient::wait_finished(LineId id, std::chrono::milliseconds timeout) const {
  std::unique_lock<std::mutex> lock(impl_->mutex);
  std::shared_ptr<line_detail::Line> line = impl_->find(id);
  if (!line) return std::nullopt;
  const bool done = impl_->changed.wait_for(lock, timeout, [&] { return line->finished(); });
  if (!done) return std::nullopt;
  return line->st;
}

bool LineClient::forget(LineId id) {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  const std::shared_ptr<line_detail::Line> line = impl_->find(id);
  if (!line || !line->finished()) return false;
  impl_->lines.erase(id);
  impl_->finished_order.erase(std::remove(impl_->finished_order.begin(), impl_->finished_order.end(), id),
                              impl_->finished_order.end());
  return true;
}

}  // namespace ksdiff
