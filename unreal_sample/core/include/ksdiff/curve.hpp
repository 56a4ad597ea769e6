// CurveZMQ keys for a runtime that requires CURVE (protocol/SPEC.md 1.1: any runtime listening
// beyond loopback does).
//
// A client needs the runtime's public key and its own key pair. Keys are 32 bytes, written as 40
// characters of Z85 (ZeroMQ RFC 32) in ZeroMQ certificate files, as `ksdiff-runtime keys NAME...`
// (pyzmq's zmq.auth.create_certificates) writes them:
//     NAME.key         curve / public-key = "<40 chars>"
//     NAME.key_secret  curve / public-key = "<40 chars>" and secret-key = "<40 chars>"
// The runtime's operator gives each client `server.key` and that client's own `.key_secret`; the
// client's `.key` goes into the runtime's folder of authorised clients.
//
// Like protocol.hpp, this header is free of ZeroMQ includes (the Unreal module includes it).
#pragma once

#include <array>
#include <cstddef>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>

namespace ksdiff {

inline constexpr std::size_t kCurveKeyBytes = 32;
inline constexpr std::size_t kCurveKeyZ85Chars = 40;

// What a CURVE client sets on its sockets (Z85 text, 40 characters each).
struct CurveKeys {
  std::string server_public_key;  // the runtime's public key (from its server.key)
  std::string client_public_key;  // this client's key pair (from its NAME.key_secret)
  std::string client_secret_key;
};

// Bad key text, a certificate that cannot be read, or a libzmq without CURVE.
class CurveError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// 40 characters of the Z85 alphabet whose 5-character groups each fit in 32 bits.
bool is_z85_key(std::string_view key) noexcept;
// 40 Z85 characters -> the 32-byte key. Throws CurveError when `key` is not one.
std::array<unsigned char, kCurveKeyBytes> z85_decode_key(std::string_view key);
// Throws CurveError naming the first of the three keys that is not a Z85 key.
void validate(const CurveKeys& keys);

// The keys of one ZeroMQ certificate: public-key always, secret-key only in a .key_secret file.
struct Certificate {
  std::string public_key;
  std::optional<std::string> secret_key;
};
// Parses certificate text (ZPL, ZeroMQ RFC 4: `name = "value"` lines indented under sections;
// the keys are read from the `curve` section). Throws CurveError when there is no valid
// public-key, or a secret-key that is not a valid key. `what` names the text in errors.
Certificate parse_certificate(std::string_view text, std::string_view what = "certificate");
Certificate read_certificate(const std::string& path);  // the file's text, parsed; CurveError

// CurveKeys from certificate files: the runtime's public certificate (server.key; a
// .key_secret works too, only its public key is read) and this client's secret certificate
// (NAME.key_secret: both of its keys). Throws CurveError, saying which file is wrong.
CurveKeys curve_keys_from_files(const std::string& server_certificate,
                                const std::string& client_secret_certificate);

// Makes a libzmq socket (zmq_socket's void*, or cppzmq's socket.handle()) a CURVE client with
// `keys`: sets ZMQ_CURVE_SERVERKEY, ZMQ_CURVE_PUBLICKEY and ZMQ_CURVE_SECRETKEY. Call it before
// connect (the handshake happens on connecting). For the SUB and for any DEALER of the same
// client. Throws CurveError (bad keys, or this libzmq was built without CURVE).
void apply_curve_client(void* zmq_socket, const CurveKeys& keys);

}  // namespace ksdiff
