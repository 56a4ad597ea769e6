// CurveZMQ keys: Z85 key text, ZeroMQ certificate files, and the three socket options.
#include "ksdiff/curve.hpp"

#include <zmq.h>

#include <cstdint>
#include <fstream>
#include <iterator>
#include <sstream>

namespace ksdiff {

namespace {

// ZeroMQ RFC 32 (Z85): 85 printable characters; 5 characters encode 4 bytes, big-endian.
constexpr std::string_view kZ85Alphabet =
    "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#";

// The 32-byte key of `key`, or nothing when it is not 40 Z85 characters encoding one.
std::optional<std::array<unsigned char, kCurveKeyBytes>> decode_key(std::string_view key) noexcept {
  if (key.size() != kCurveKeyZ85Chars) return std::nullopt;
  std::array<unsigned char, kCurveKeyBytes> out{};
  for (std::size_t group = 0; group < kCurveKeyZ85Chars / 5; ++group) {
    std::uint64_t value = 0;
    for (std::size_t k = 0; k < 5; ++k) {
      const std::size_t digit = kZ85Alphabet.find(key[5 * group + k]);
      if (digit == std::string_view::npos) return std::nullopt;
      value = value * 85 + digit;
    }
    // Five digits reach 85^5 - 1 > 2^32 - 1: such a group encodes no 4 bytes.
    if (value > 0xFFFFFFFFu) return std::nullopt;
    for (std::size_t k = 0; k < 4; ++k) {
      out[4 * group + k] = static_cast<unsigned char>((value >> (8 * (3 - k))) & 0xFFu);
    }
  }
  return out;
}

std::string shown(std::string_view key) {
  // Never print a whole key (it may be a secret one): its length says enough.
  return std::to_string(key.size()) + " characters";
}

std::string_view trim(std::string_view s) {
  const auto first = s.find_first_not_of(" \t\r");
  if (first == std::string_view::npos) return {};
  const auto last = s.find_last_not_of(" \t\r");
  return s.substr(first, last - first + 1);
}

// A ZPL value: "quoted", 'quoted', or bare up to the first blank (a bare value may be followed
// by a '#' comment, but '#' is also a Z85 character, so it does not end the value itself).
std::string zpl_value(std::string_view raw) {
  raw = trim(raw);
  if (!raw.empty() && (raw.front() == '"' || raw.front() == '\'')) {
    const auto close = raw.find(raw.front(), 1);
    return std::string(raw.substr(1, close == std::string_view::npos ? std::string_view::npos : close - 1));
  }
  return std::string(raw.substr(0, raw.find_first_of(" \t")));
}

}  // namespace

bool is_z85_key(std::string_view key) noexcept { return decode_key(key).has_value(); }

std::array<unsigned char, kCurveKeyBytes> z85_decode_key(std::string_view key) {
  const auto bytes = decode_key(key);
  if (!bytes) throw CurveError("not a CURVE key: need 40 characters of Z85, got " + shown(key));
  return *bytes;
}

void validate(const CurveKeys& keys) {
  const std::pair<std::string_view, const std::string*> named[] = {
      {"the runtime's public key", &keys.server_public_key},
      {"the client's public key", &keys.client_public_key},
      {"the client's secret key", &keys.client_secret_key}};
  for (const auto& [what, key] : named) {
    if (!is_z85_key(*key)) {
      throw CurveError(std::string(what) + " must be 40 characters of Z85 (a ZeroMQ certificate's key), got " +
                       shown(*key));
    }
  }
}

Certificate parse_certificate(std::string_view text, std::string_view what) {
  // ZPL (ZeroMQ RFC 4): one entry per line, children indented under their parent, '#' comments.
  // A certificate is "metadata" and "curve" at the top, the keys indented under "curve".
  std::optional<std::string> public_key, secret_key;
  std::string section;
  std::istringstream lines{std::string(text)};
  std::string line;
  while (std::getline(lines, line)) {
    const std::string_view content = trim(line);
    if (content.empty() || content.front() == '#') continue;
    const bool top_level = line.front() != ' ' && line.front() != '\t';
    const auto eq = content.find('=');
    const std::string_view name = trim(content.substr(0, eq));
    if (top_level) {
      section = std::string(name);
      continue;
    }
    if (section != "curve" || eq == std::string_view::npos) continue;
    if (name == "public-key") public_key = zpl_value(content.substr(eq + 1));
    if (name == "secret-key") secret_key = zpl_value(content.substr(eq + 1));
  }
  const std::string where(what);
  if (!public_key) throw CurveError(where + ": no curve public-key (not a ZeroMQ certificate?)");
  if (!is_z85_key(*public_key)) {
    throw CurveError(where + ": public-key is not 40 characters of Z85, got " + shown(*public_key));
  }
  if (secret_key && !is_z85_key(*secret_key)) {
    throw CurveError(where + ": secret-key is not 40 characters of Z85, got " + shown(*secret_key));
  }
  return Certificate{*public_key, secret_key};
}

Certificate read_certificate(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw CurveError("cannot read the certificate " + path);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return parse_certificate(text, path);
}

CurveKeys curve_keys_from_files(const std::string& server_certificate,
                                const std::string& client_secret_certificate) {
  const Certificate server = read_certificate(server_certificate);
  const Certificate client = read_certificate(client_secret_certificate);
  if (!client.secret_key) {
    throw CurveError(client_secret_certificate +
                     " holds no secret-key: give this client's .key_secret file, not its .key");
  }
  return CurveKeys{server.public_key, client.public_key, *client.secret_key};
}

void apply_curve_client(void* zmq_socket, const CurveKeys& keys) {
  validate(keys);
  if (zmq_has("curve") == 0) throw CurveError("this libzmq was built without CURVE support");
  // The raw 32-byte forms: every libzmq 4.x takes those (40-character text without its
  // terminating NUL needs a newer one).
  const std::pair<int, const std::string*> options[] = {{ZMQ_CURVE_SERVERKEY, &keys.server_public_key},
                                                        {ZMQ_CURVE_PUBLICKEY, &keys.client_public_key},
                                                        {ZMQ_CURVE_SECRETKEY, &keys.client_secret_key}};
  for (const auto& [option, key] : options) {
    const auto bytes = z85_decode_key(*key);
    if (zmq_setsockopt(zmq_socket, option, bytes.data(), bytes.size()) != 0) {
      throw CurveError(std::string("cannot set the CURVE keys: ") + zmq_strerror(zmq_errno()));
    }
  }
}

}  // namespace ksdiff
