#include "ksdiff/line_client.hpp"

#include <zmq.hpp>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <limits>
#include <map>
#include <mutex>
#include <set>
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
constexpr double kBusyShiftS = 0.25;     // a per-stream busy: the runtime's clock of the stream started this much later
constexpr std::size_t kHeaderRoom = 1024;  // an audio message's other fields (stream id, seq, at_sample)
constexpr std::size_t kSampleBytes = 4;    // float32 mono
constexpr std::size_t kMaxChunkSamples = (kMaxMessageBytes - kHeaderRoom) / kSampleBytes;
constexpr std::size_t kOutboxAudio = 4;    // audio messages encoded ahead of the DEALER taking them
constexpr std::size_t kResentKept = 1000;  // reqs of end_streams sent twice: the other copy's answer is dropped
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
  double opened_call_s = 0.0;  // when open() was called: the open timeout counts from here
  bool end_requested = false;
  bool end_queued = false;
  bool end_sent = false;
  std::uint64_t end_req = 0;
  double end_sent_s = 0.0;
  std::string end_payload;
  // Audio: samples[0] is sample `base` of the stream's clock; they run to st.samples_pushed.
  // [base, sent_upto) went already and is kept for a busy; [sent_upto, pushed) waits.
  std::deque<float> samples;
  std::uint64_t base = 0;
  std::uint64_t sent_upto = 0;
  std::uint64_t seq = 0;
  std::optional<double> t0;  // the client clock's time of the stream's first audio (+ busy shifts)

  bool is_line() const { return options.mode == kModeLine; }
  bool finished() const { return st.state == LineState::ended || st.state == LineState::failed; }
  bool running_on_runtime() const { return st.state == LineState::open || st.state == LineState::ending; }
};

// An audio message that went: kept a while, to go again after a client-level busy.
struct Record {
  double sent_s = 0.0;
  std::shared_ptr<Line> line;
  std::uint64_t start = 0;
  std::uint64_t end = 0;
};

// A message waiting for the DEALER to take it.
struct Out {
  std::string payload;
  std::shared_ptr<Line> line;  // the line it is of (null: an orphan's end_stream)
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
  }

  LineClientConfig config;
  std::thread worker;
  std::atomic<bool> stop_requested{false};
  std::atomic<bool> is_running{false};

  // Everything below is guarded by `mutex`; the I/O thread holds it for each pass (never while it
  // polls), the game thread for each call.
  mutable std::mutex mutex;
  mutable std::condition_variable changed;  // a line finished
  std::map<LineId, std::shared_ptr<Line>> lines;
  std::deque<LineId> finished_order;  // lines ended or failed, oldest first (bounded status memory)
  LineId next_id = 1;
  std::uint64_t next_req = 1;
  std::map<std::uint64_t, std::shared_ptr<Line>> opens;  // req -> the line its open_stream is for
  std::map<std::uint64_t, std::shared_ptr<Line>> ends;   // req -> the line its end_stream is for
  std::set<std::uint64_t> orphan_ends;                   // end_streams of streams opened too late
  std::deque<std::uint64_t> resent_reqs;                 // end_streams sent twice (the latest kResentKept)
  std::deque<Out> outbox;
  std::deque<Record> records;
  std::size_t kept_bytes = 0;
  std::size_t waiting_bytes = 0;
  // A client-level busy: when the last came, and where the window of drops of the first one not
  // yet answered began (a second busy before the first window passed widens it).
  std::optional<double> busy_at;
  double busy_first = 0.0;
  LineClientStatus counters;

  std::shared_ptr<Line> find(LineId id) const {
    auto it = lines.find(id);
    return it == lines.end() ? nullptr : it->second;
  }

  // The line the runtime knows as `stream` now (the latest opened with that id, still running).
  std::shared_ptr<Line> by_stream(const std::string& stream) const {
    std::shared_ptr<Line> found;
    for (const auto& [id, line] : lines) {
      if (line->st.stream == stream && line->running_on_runtime()) found = line;
    }
    return found;
  }

  void finish(const std::shared_ptr<Line>& line, LineState state) {
    if (line->finished()) return;
    line->st.state = state;
    waiting_bytes -= static_cast<std::size_t>(line->st.samples_pushed - line->sent_upto) * line_detail::kSampleBytes;
    line->sent_upto = line->st.samples_pushed;
    // Its audio goes nowhere any more; records of it are skipped (and forgotten in time).
    line->samples.clear();
    line->samples.shrink_to_fit();
    line->base = line->st.samples_pushed;
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
      zmq::context_t context(1);
      zmq::socket_t dealer(context, zmq::socket_type::dealer);
      dealer.set(zmq::sockopt::linger, 0);  // closing never waits
      // Queue only on a connection that is up: while the runtime is away, requests wait in the
      // outbox, where a timed-out open_stream can still be withdrawn (SPEC 4.6).
      dealer.set(zmq::sockopt::immediate, 1);
      dealer.set(zmq::sockopt::sndhwm, line_detail::kSendHwm);
      dealer.set(zmq::sockopt::reconnect_ivl, config.reconnect_interval_ms);
      dealer.set(zmq::sockopt::reconnect_ivl_max, config.reconnect_interval_max_ms);
      dealer.set(zmq::sockopt::maxmsgsize, static_cast<std::int64_t>(4 * kMaxMessageBytes));
      if (config.curve) apply_curve_client(dealer.handle(), *config.curve);  // before connecting
      dealer.connect(config.endpoint);

      bool want_out = false;
      while (!stop_requested.load()) {
        zmq_pollitem_t item{dealer.handle(), 0, static_cast<short>(ZMQ_POLLIN | (want_out ? ZMQ_POLLOUT : 0)), 0};
        const int ready = zmq_poll(&item, 1, static_cast<long>(config.poll_interval.count()));
        if (ready < 0) {
          if (zmq_errno() == EINTR) continue;
          throw zmq::error_t();
        }
        std::lock_guard<std::mutex> lock(mutex);
        if ((item.revents & ZMQ_POLLIN) != 0) receive(dealer);
        want_out = pass(dealer);
      }
    } catch (const zmq::error_t& e) {
      std::lock_guard<std::mutex> lock(mutex);
      counters.last_error = std::string("ZeroMQ: ") + e.what() + " (endpoint " + config.endpoint + ")";
    } catch (const std::exception& e) {
      std::lock_guard<std::mutex> lock(mutex);
      counters.last_error = e.what();
    }
    is_running.store(false);
    changed.notify_all();
  }

  // One pass: timeouts, audio to send again after a busy, new audio and end_streams, then what
  // the DEALER takes. True while messages wait for it (poll for POLLOUT).
  bool pass(zmq::socket_t& dealer) {
    const double now = config.clock();
    forget_sent(now);
    check_timeouts(now);
    resend_after_busy(now);
    for (auto& [id, line] : lines) queue_audio_and_end(line, now);
    while (!outbox.empty()) {
      Out& out = outbox.front();
      zmq::send_result_t sent;
      try {
        sent = dealer.send(zmq::buffer(out.payload), zmq::send_flags::dontwait);
      } catch (const zmq::error_t& e) {
        if (e.num() == EINTR) break;
        throw;
      }
      if (!sent) break;  // the runtime is away or slow (EAGAIN): retried on POLLOUT
      on_sent(out, config.clock());
      outbox.pop_front();
    }
    return !outbox.empty();
  }

  void on_sent(Out& out, double now) {
    ++counters.sent;
    if (out.copy) ++counters.resent;
    const std::shared_ptr<Line>& line = out.line;
    if (!line) return;
    switch (out.kind) {
      case Out::Kind::audio:
        ++line->st.messages_sent;
        if (out.copy) ++line->st.messages_resent;
        if (!line->t0) line->t0 = now;  // the stream's clock starts with its first audio (SPEC 4.6)
        records.push_back(Record{now, line, out.start, out.end});
        kept_bytes += static_cast<std::size_t>(out.end - out.start) * line_detail::kSampleBytes;
        break;
      case Out::Kind::end:
        if (!line->end_sent || out.copy) line->end_sent_s = now;
        line->end_sent = true;
        break;
      case Out::Kind::open:
      case Out::Kind::other:
        break;
    }
  }

  // Audio sent beyond sent_audio_kept_s or sent_audio_max_bytes is forgotten, and the lines'
  // samples before their oldest kept (and not waiting) audio freed.
  void forget_sent(double now) {
    bool forgot = false;
    while (!records.empty() && (records.front().sent_s < now - config.sent_audio_kept_s ||
                                kept_bytes > config.sent_audio_max_bytes)) {
      kept_bytes -= static_cast<std::size_t>(records.front().end - records.front().start) * line_detail::kSampleBytes;
      records.pop_front();
      forgot = true;
    }
    if (!forgot) return;
    std::map<const Line*, std::uint64_t> oldest;
    for (const Record& r : records) {
      auto [it, fresh] = oldest.emplace(r.line.get(), r.start);
      if (!fresh) it->second = std::min(it->second, r.start);
    }
    for (auto& [id, line] : lines) {
      std::uint64_t keep_from = line->sent_upto;
      if (auto it = oldest.find(line.get()); it != oldest.end()) keep_from = std::min(keep_from, it->second);
      if (keep_from > line->base) {
        const auto drop =
            static_cast<std::ptrdiff_t>(std::min<std::uint64_t>(keep_from - line->base, line->samples.size()));
        line->samples.erase(line->samples.begin(), line->samples.begin() + drop);
        line->base += static_cast<std::uint64_t>(drop);
      }
    }
  }

  void check_timeouts(double now) {
    // Collected first: failing a line may forget the oldest finished ones (erasing from `lines`).
    std::vector<std::shared_ptr<Line>> unopened;
    std::vector<std::shared_ptr<Line>> unended;
    for (const auto& [id, line] : lines) {
      if (line->st.state == LineState::opening && now - line->opened_call_s > config.open_timeout_s) {
        unopened.push_back(line);
      } else if (line->st.state == LineState::ending && line->end_sent &&
                 now - line->end_sent_s > config.end_timeout_s) {
        unended.push_back(line);
      }
    }
    for (const std::shared_ptr<Line>& line : unopened) {
      // Not sent yet: withdrawn, so a runtime that comes back does not open a stream nobody feeds.
      outbox.erase(std::remove_if(outbox.begin(), outbox.end(),
                                  [&](const Out& o) { return o.line == line && o.kind == Out::Kind::open; }),
                   outbox.end());
      fail(line, ErrorCode::internal,
           "no reply to open_stream within " + std::to_string(config.open_timeout_s) +
               " s: is the runtime running at " + config.endpoint + "?");
    }
    for (const std::shared_ptr<Line>& line : unended) {
      fail(line, ErrorCode::internal, "no stream_ended within " + std::to_string(config.end_timeout_s) +
                                          " s of end_stream");
    }
  }

  // SPEC 4.6 "A client past its share": once the drops are over, the audio of open lines sent from
  // BUSY_WINDOW_S before the busy until the drops ended goes again, in its order, ahead of
  // anything queued, then the end_streams left unanswered that went before the drops ended.
  void resend_after_busy(double now) {
    if (!busy_at || now < *busy_at + kBusyWindowS) return;
    const double first = busy_first - kBusyWindowS;
    const double drops_end = *busy_at + kBusyWindowS;
    busy_at.reset();
    std::deque<Out> again;
    std::deque<Record> kept;
    for (Record& r : records) {
      const Line& line = *r.line;
      // Lines only (a live stream wants the present), still running, and their samples still here.
      if (r.sent_s >= first && r.sent_s <= drops_end && line.is_line() && line.running_on_runtime() &&
          r.start >= line.base && r.end <= line.base + line.samples.size()) {
        again.push_back(audio_out(r.line, r.start, r.end, /*copy=*/true));
        kept_bytes -= static_cast<std::size_t>(r.end - r.start) * line_detail::kSampleBytes;  // kept again once sent
      } else {
        kept.push_back(std::move(r));
      }
    }
    records = std::move(kept);
    for (auto& [id, line] : lines) {
      if (line->st.state == LineState::ending && line->end_sent && line->end_sent_s <= drops_end) {
        Out end{line->end_payload, line, Out::Kind::end, 0, 0, true};
        again.push_back(std::move(end));
        resent_reqs.push_back(line->end_req);
        while (resent_reqs.size() > line_detail::kResentKept) resent_reqs.pop_front();
      }
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
    return Out{encode_audio(audio), line, Out::Kind::audio, start, end, copy};
  }

  // The samples the runtime takes now: at most max_ahead_s (less the margin) ahead of the
  // stream's first audio. No limit from a 1.0 runtime (no max_ahead_s).
  std::uint64_t allowed_end(const Line& line, double now) const {
    if (!line.st.max_ahead_s) return std::numeric_limits<std::uint64_t>::max();
    const double room = std::max(0.1, *line.st.max_ahead_s - config.ahead_margin_s);
    const double t0 = line.t0 ? *line.t0 : now;
    const double end = std::floor((room + now - t0) * line.options.sample_rate);
    return end <= 0.0 ? 0 : static_cast<std::uint64_t>(end);
  }

  void queue_audio_and_end(const std::shared_ptr<Line>& line, double now) {
    if (!line->running_on_runtime()) return;
    const double rate = line->options.sample_rate;
    const std::uint64_t limit = std::min<std::uint64_t>(
        line_detail::kMaxChunkSamples,
        static_cast<std::uint64_t>((line->is_line() ? line_detail::kLineChunkS : line_detail::kLiveChunkS) * rate));
    const auto paced = std::min<std::uint64_t>(limit, static_cast<std::uint64_t>(line_detail::kPacedChunkS * rate));
    std::size_t queued = 0;
    for (const Out& o : outbox) queued += o.kind == Out::Kind::audio ? 1 : 0;
    const std::uint64_t pushed = line->st.samples_pushed;
    while (line->sent_upto < pushed && queued < line_detail::kOutboxAudio) {
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
      ++queued;
    }
    if (line->st.state == LineState::ending && !line->end_queued && line->sent_upto == pushed) {
      line->end_req = next_req++;
      line->end_payload = encode_end_stream(EndStream{line->st.stream, line->end_req});
      ends[line->end_req] = line;
      line->end_queued = true;
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
    if (const auto* opened = std::get_if<StreamOpened>(&m.body)) {
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
      line->st.frames = ended->frames;
      finish(line, LineState::ended);
    } else if (const auto* error = std::get_if<Error>(&m.body)) {
      on_error(*error, now);
    } else {
      ++counters.ignored;  // hello, controls_set: not this client's
    }
  }

  void on_opened(const StreamOpened& opened) {
    auto it = opened.req ? opens.find(*opened.req) : opens.end();
    if (it == opens.end()) {
      ++counters.ignored;
      return;
    }
    std::shared_ptr<Line> line = it->second;
    opens.erase(it);
    if (line->st.state != LineState::opening) {
      // Its open timed out after the request left: nobody feeds the stream, so free it now (SPEC 4.6).
      const std::uint64_t req = next_req++;
      orphan_ends.insert(req);
      outbox.push_back(Out{encode_end_stream(EndStream{opened.stream, req}), nullptr, Out::Kind::other, 0, 0, false});
      return;
    }
    line->st.stream = opened.stream;
    line->st.fps = opened.fps;
    line->st.max_ahead_s = opened.max_ahead_s;
    line->st.latency_ms = opened.latency_ms;
    if (opened.mode) line->st.mode = *opened.mode;
    line->st.state = line->end_requested ? LineState::ending : LineState::open;
  }

  void on_error(const Error& error, double now) {
    ++counters.errors;
    const ErrorCode code = error.error_code();
    if (!error.req && !error.stream) {
      if (code == ErrorCode::busy) {
        // This connection's requests are dropped unread until at most BUSY_WINDOW_S from now.
        ++counters.busy;
        if (!busy_at) busy_first = now;
        busy_at = now;
      } else {
        counters.last_error = error.code + ": " + error.message;
      }
      return;
    }
    if (error.req) {
      const std::uint64_t req = *error.req;
      if (orphan_ends.erase(req) > 0) return;
      if (auto it = opens.find(req); it != opens.end()) {
        std::shared_ptr<Line> line = it->second;
        opens.erase(it);
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
    if (code == ErrorCode::busy && !line->end_sent) {
      // Too far ahead: nothing of that message was taken. The runtime's clock of the stream runs
      // behind ours (its first audio reached it later): take it as later, and send again from the
      // oldest audio kept (which copies the runtime has are nothing to it).
      if (line->t0) *line->t0 += line_detail::kBusyShiftS;
      const std::uint64_t back = std::min(line->base, line->sent_upto);
      waiting_bytes += static_cast<std::size_t>(line->sent_upto - back) * line_detail::kSampleBytes;
      // Audio of this line still in the outbox goes again from `back` too, and an end_stream
      // queued behind it waits for that audio (it is queued again once all of it has gone).
      outbox.erase(std::remove_if(outbox.begin(), outbox.end(),
                                  [&](const Out& o) {
                                    return o.line == line && (o.kind == Out::Kind::audio || o.kind == Out::Kind::end);
                                  }),
                   outbox.end());
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
  if (impl_->worker.joinable()) return;
  if (impl_->config.curve) validate(*impl_->config.curve);
  impl_->stop_requested.store(false);
  impl_->is_running.store(true);
  impl_->worker = std::thread([this] { impl_->run(); });
}

void LineClient::stop() {
  impl_->stop_requested.store(true);
  if (impl_->worker.joinable()) impl_->worker.join();
  impl_->is_running.store(false);
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
  line->open_req = impl_->next_req++;
  line->opened_call_s = impl_->config.clock();
  line->st.id = impl_->next_id++;
  line->st.stream = options.stream;
  line->st.mode = options.mode;
  impl_->lines[line->st.id] = line;
  impl_->opens[line->open_req] = line;
  impl_->outbox.push_back(line_detail::Out{std::move(payload), line, line_detail::Out::Kind::open, 0, 0, false});
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
  return PushResult::accepted;
}

bool LineClient::end(LineId id) {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  const std::shared_ptr<line_detail::Line> line = impl_->find(id);
  if (!line || line->st.state == LineState::failed) return false;
  if (line->end_requested || line->finished()) return true;
  line->end_requested = true;
  if (line->st.state == LineState::open) line->st.state = LineState::ending;
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
