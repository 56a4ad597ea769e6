// A DEALER client of the runtime's ROUTER for game NPC lines (and live voices), on its own I/O
// thread: open a stream, push its audio, end it, and poll each line's status from the game thread.
//
// It does for C++ what the Python SDK's Client / StreamHandle does for a line (protocol/SPEC.md 4.6,
// its rules for a client past its share included):
// - replies are matched by `req`; each line gets its stream_opened (fps, max_ahead_s, latency_ms)
//   or its error (code + message), then its stream_ended (frames) or its error;
// - audio is sent as real time allows: at most max_ahead_s (less a margin) ahead of the line's first
//   audio, a line's in large messages (up to 10 s, under the 1 MiB message limit), what has to wait
//   in 250 ms ones (less when max_ahead_s leaves less room; a live stream's in 100 ms ones), every
//   message with its at_sample;
// - audio refused with a per-stream `busy` (too far ahead: nothing of it was taken) goes again later,
//   from the oldest audio still kept, with the stream's clock taken as starting later; one refused
//   after the line's end_stream left (it cannot go again) fails the line when stream_ended comes, so
//   a line never reports `ended` without audio the runtime refused;
// - a client-level `busy` (neither req nor stream: the runtime drops this connection's requests
//   unread for up to BUSY_WINDOW_S) may have dropped everything sent after the last request the
//   runtime answered before it, however long ago it left (messages are counted as they leave, and
//   an answer proves the runtime read every message up to its request: it reads a connection's
//   messages in order). While the drops last nothing leaves but live streams' audio; then the lines'
//   audio sent since that last answered request goes again, in its order, ahead of anything else,
//   then the end_streams not known read when the busy came (the end timeout still counts from an
//   end_stream's first send); a copy's answer changes nothing. A live stream's audio is not sent
//   again (it wants the present; the runtime fills the gap). A line whose dropped or refused audio
//   cannot go again (forgotten past sent_audio_max_bytes) fails when stream_ended comes, as above;
// - the runtime answers open_stream as it reads it, in order: one still unanswered once a message
//   sent after it is known read (an answer to a later request) was dropped unread, and goes again
//   (same req, numbered anew, ahead of what waits; LineClientStatus::resent counts it). A hello probe
//   follows an open_stream left unanswered for 1 s (a busy's window is over by then), and again each
//   second while it is. It never goes again merely because a busy's window ended with it unanswered:
//   it may still be on its way (a second copy would open a second stream, or be refused "already
//   open"). Its open timeout still counts from open();
// - a line's next message (audio, end_stream) leaves only once the runtime has read its previous one
//   (a `hello` request follows the lines' messages; its answer, or an error answering it, says so),
//   so a copy never comes after later audio, or the end_stream, of its line (the runtime would fill
//   its place with silence); audio encoded and waiting to leave keeps its samples until known read,
//   and a line that ends or fails drops its messages still waiting;
// - a line's stream lives on the runtime process and the connection that opened it (SPEC 1,
//   Ownership): when the DEALER's connection drops (seen on its socket monitor: ZeroMQ's next
//   connection has another routing id, and a restarted runtime has no streams at all) or a hello
//   answer names a runtime instance never seen before (a restart), every line whose open_stream left
//   before fails at once (LineStatus::lost says which), instead of waiting for its timeouts or an
//   unknown_stream; lines opened afterwards go to the runtime there is now. The first message on
//   each connection is a hello, so its answer names the instance before any stream is opened;
// - memory is bounded: audio waiting to be sent (LineClientConfig::max_waiting_bytes; a push past it
//   is refused, nothing taken), lines' audio sent and kept until the runtime is known to have read it
//   (sent_audio_max_bytes, the oldest forgotten first), and the reqs remembered for late answers
//   (1000 timed-out opens, 1000 orphan end_streams, 1000 resent end_streams), as the SDK bounds them.
//
// Threads: every call is thread-safe and never blocks on the network; only the I/O thread touches
// the socket, and it sleeps until a call, a reply or something due (paced audio, a timeout) wakes
// it. start() and stop() may be called from any threads. If the I/O thread stops on an error, every
// line not finished fails with the reason (LineClientStatus::last_error has it too).
// ZeroMQ and msgpack stay out of this header (pimpl), as in subscriber.hpp.
#pragma once

#include "ksdiff/curve.hpp"
#include "ksdiff/protocol.hpp"

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace ksdiff {

// SPEC 4.6 "A client past its share": the runtime's drops end at most this long after its busy.
inline constexpr double kBusyWindowS = 1.0;

struct LineClientConfig {
  std::string endpoint = "tcp://127.0.0.1:5556";  // the runtime's ROUTER
  // As SubscriberConfig::curve: for a runtime that requires CURVE (SPEC 1.1). Empty: plain TCP.
  std::optional<CurveKeys> curve;
  int reconnect_interval_ms = 100;
  int reconnect_interval_max_ms = 1000;
  // The longest the I/O thread sleeps (calls, replies, paced audio and timeouts wake it when due):
  // a safeguard, not a pace. Must be > 0 (the constructor throws std::invalid_argument).
  std::chrono::milliseconds poll_interval{500};
  // Seconds without stream_opened (from open(), an open_stream sent again after a busy included)
  // before a line fails; a stream_opened that comes later is answered with an end_stream, so the
  // runtime frees it.
  double open_timeout_s = 10.0;
  // Seconds without stream_ended (from its end_stream leaving) before a line fails. A line ending
  // whose messages cannot leave (the runtime never reads them, or cannot be reached) fails too once
  // none of them has left for this long since end() (its queued messages are withdrawn), as an open
  // fails open_timeout_s after open() whether or not its open_stream could leave.
  double end_timeout_s = 60.0;
  // Audio stays this far inside max_ahead_s (the runtime's clock starts when its first audio
  // arrives, a little after ours), as the SDK's AHEAD_MARGIN_S.
  double ahead_margin_s = 0.5;
  // Audio pushed and not sent yet, all lines together: a push past it is refused (PushResult::full).
  std::size_t max_waiting_bytes = std::size_t{64} << 20;
  // Lines' audio sent is kept until the runtime is known to have read it, up to this many bytes (the
  // oldest forgotten beyond), to go again after a busy (the SDK's SENT_AUDIO_MAX_BYTES).
  std::size_t sent_audio_max_bytes = std::size_t{256} << 20;
  // Lines ended or failed whose status is kept for polling (the oldest forgotten beyond).
  std::size_t finished_lines_kept = 4096;
  // Local monotonic clock in seconds. Default: std::chrono::steady_clock. It is called from the I/O
  // thread and from the calls, mostly while the client's mutex is held: it must be thread-safe and
  // quick, and must not call back into this client (any call would deadlock on that mutex).
  std::function<double()> clock;
};

// One line (or live stream) to open: what open_stream carries. The audio is float32 mono.
struct LineOptions {
  std::string stream;  // the id wanted (1..64 of [A-Za-z0-9_.-]); empty: the runtime picks one
  std::uint32_t sample_rate = 16000;  // 8000..192000 Hz, of the audio pushed
  std::string mode = std::string(kModeLine);  // kModeLine or kModeLive
  std::optional<std::string> transcript;
  std::optional<std::int64_t> seed;
  std::optional<Controls> controls;
};

using LineId = std::uint64_t;

enum class LineState {
  opening,  // open_stream queued or sent, no answer yet
  open,     // stream_opened came: audio goes
  ending,   // end() was called: the end_stream goes once every sample pushed has gone
  ended,    // stream_ended came (LineStatus::frames)
  failed,   // refused or lost: LineStatus::error_code / error_message
};
std::string_view to_string(LineState state) noexcept;

struct LineStatus {
  LineId id = 0;
  LineState state = LineState::opening;
  std::string stream;  // the id asked for, then the runtime's (stream_opened)
  std::string mode;
  std::uint32_t fps = 0;
  std::optional<double> max_ahead_s;  // from stream_opened (absent: a 1.0 runtime, no limit)
  std::optional<double> latency_ms;   // from stream_opened (1.2)
  std::uint64_t frames = 0;           // stream_ended's total, once ended
  std::uint64_t samples_pushed = 0;   // the end of the audio pushed, on the stream's clock
  std::uint64_t samples_sent = 0;     // how much of it has gone to the runtime
  std::uint64_t messages_sent = 0;    // audio messages, copies included
  std::uint64_t messages_resent = 0;  // of them, copies sent again after a busy
  // Why it failed; for a line that goes on, the last error the runtime reported for its audio.
  std::optional<ErrorCode> error_code;
  std::string error_message;
  std::uint64_t audio_errors = 0;  // errors the runtime answered this line's audio with (busy included)
  // Set when the line failed because the runtime lost its stream (error_code unknown_stream):
  // "restart" (a hello named a new runtime instance) or "reconnect" (the DEALER's connection dropped:
  // the runtime stopped or restarted, or the network failed). Open the line again to go on.
  std::string lost;
};

struct LineClientStatus {
  bool running = false;
  std::string endpoint;
  std::uint64_t sent = 0;       // messages the DEALER took, copies and hello probes included
  // copies sent again after a busy (SPEC 4.6): audio, end_streams, and open_streams dropped unread
  std::uint64_t resent = 0;
  std::uint64_t busy = 0;       // client-level busy replies: this client's requests dropped unread
  std::uint64_t errors = 0;     // error replies of any kind
  std::uint64_t ignored = 0;    // replies that matched nothing (a copy's answer, a late one)
  std::uint64_t probes = 0;     // hello requests sent to learn that the runtime read the lines' messages
  std::uint64_t wakeups = 0;    // passes of the I/O thread (an idle client makes few)
  std::uint64_t restarts = 0;   // runtime instance changes seen (a hello naming a never-seen instance)
  std::uint64_t disconnects = 0;  // the DEALER's connection to the runtime dropped (socket monitor)
  std::string instance;         // the runtime instance of the last hello answered (empty: none yet)
  // reqs kept for answers to come: opens and end_streams awaiting one, timed-out opens, orphans'
  // and resent end_streams (each bounded: see the top of this file; not the hello probes, 64 at most)
  std::size_t remembered_reqs = 0;
  std::size_t waiting_bytes = 0;  // audio pushed and not sent yet
  std::size_t kept_bytes = 0;     // audio sent and kept to go again after a busy
  std::string last_error;         // the socket's or the last unmatched error's
};

enum class PushResult {
  accepted,
  full,         // more than max_waiting_bytes would wait: nothing taken, push it again later
  not_open,     // the line is ending, ended, failed or unknown: nothing taken
  bad_audio,    // at_sample more than 10 s past the audio pushed so far (the runtime refuses it)
};
std::string_view to_string(PushResult result) noexcept;

class LineClient {
 public:
  // Throws std::invalid_argument for a poll_interval <= 0.
  explicit LineClient(LineClientConfig config);
  ~LineClient();  // stops: lines not ended are left to the runtime's idle timeout
  LineClient(const LineClient&) = delete;
  LineClient& operator=(const LineClient&) = delete;

  // Starts the I/O thread; returns at once (ZeroMQ connects in the background). Idempotent.
  // Throws CurveError for bad keys.
  void start();
  // Stops and joins the I/O thread (woken at once). Idempotent.
  void stop();
  bool running() const noexcept;

  // Queues an open_stream; the line's status says when it is open. Throws ProtocolError for what the
  // runtime would refuse as malformed (a bad stream id or mode, controls that cannot be encoded).
  LineId open(const LineOptions& options);
  // Queues float32 mono samples (-1..1) at the line's sample rate, right after the previous ones or
  // at `at_sample` on the stream's clock (a gap is silence; what the runtime has already is dropped
  // there). Allowed from open() on, before stream_opened comes.
  PushResult push(LineId line, const float* samples, std::size_t count,
                  std::optional<std::uint64_t> at_sample = std::nullopt);
  PushResult push(LineId line, const std::vector<float>& samples,
                  std::optional<std::uint64_t> at_sample = std::nullopt) {
    return push(line, samples.data(), samples.size(), at_sample);
  }
  // No more audio: the end_stream goes once all of it has. False for an unknown or failed line.
  bool end(LineId line);

  std::optional<LineStatus> status(LineId line) const;
  std::vector<LineStatus> lines() const;
  LineClientStatus status() const;
  // Waits (bounded) until the line is ended or failed; its status then, or nullopt (unknown line,
  // or the timeout passed).
  std::optional<LineStatus> wait_finished(LineId line, std::chrono::milliseconds timeout) const;
  // Forgets an ended or failed line's status. False for a line still running.
  bool forget(LineId line);

  double now() const;  // the client's clock

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ksdiff
