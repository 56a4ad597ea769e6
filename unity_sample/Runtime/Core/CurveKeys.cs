// CurveZMQ keys for a runtime that requires CURVE (protocol 1.1: when it listens beyond
// loopback). The client needs the server's public key and its own key pair; keys are 32 bytes,
// written as 40 characters of Z85 (rfc.zeromq.org/spec:32) in ZeroMQ certificate files, as
// pyzmq's zmq.auth.create_certificates writes them:
//     name.key         public-key = "<40 chars>"
//     name.key_secret  public-key = "<40 chars>"  and  secret-key = "<40 chars>"
// Both transports set ZMQ_CURVE_SERVERKEY / PUBLICKEY / SECRETKEY from the 32-byte forms.
using System;
using System.IO;

namespace Ksdiff
{
    public sealed class CurveKeys
    {
        public readonly string ServerPublicKey; // Z85
        public readonly string ClientPublicKey; // Z85
        public readonly string ClientSecretKey; // Z85

        public CurveKeys(string serverPublicKey, string clientPublicKey, string clientSecretKey)
        {
            ServerPublicKey = Check(serverPublicKey, "the server's public key");
            ClientPublicKey = Check(clientPublicKey, "the client's public key");
            ClientSecretKey = Check(clientSecretKey, "the client's secret key");
        }

        public byte[] ServerPublicKeyBytes { get { return Z85.Decode(ServerPublicKey); } }
        public byte[] ClientPublicKeyBytes { get { return Z85.Decode(ClientPublicKey); } }
        public byte[] ClientSecretKeyBytes { get { return Z85.Decode(ClientSecretKey); } }

        // From certificate files: the server's public certificate (server.key; a .key_secret
        // works too) and the client's secret certificate (client.key_secret, both keys).
        public static CurveKeys FromCertificateFiles(string serverCertificate, string clientSecretCertificate)
        {
            string serverPublic, ignored, clientPublic, clientSecret;
            ReadCertificate(serverCertificate, out serverPublic, out ignored);
            ReadCertificate(clientSecretCertificate, out clientPublic, out clientSecret);
            if (clientSecret == null)
                throw new FormatException(clientSecretCertificate + " has no secret-key: give the client's .key_secret file");
            return new CurveKeys(serverPublic, clientPublic, clientSecret);
        }

        // public-key (required) and secret-key (null when absent) of a ZeroMQ certificate file.
        // The format is ZPL-like text; comment lines start with '#'; values may be quoted.
        public static void ReadCertificate(string path, out string publicKey, out string secretKey)
        {
            publicKey = null;
            secretKey = null;
            foreach (string raw in File.ReadAllLines(path))
            {
                string line = raw.Trim();
                if (line.StartsWith("#", StringComparison.Ordinal)) continue;
                if (line.StartsWith("public-key", StringComparison.Ordinal)) publicKey = Value(line);
                else if (line.StartsWith("secret-key", StringComparison.Ordinal)) secretKey = Value(line);
            }
            if (publicKey == null) throw new FormatException("no public-key in certificate " + path);
            Check(publicKey, "public-key in " + path);
            if (secretKey != null) Check(secretKey, "secret-key in " + path);
        }

        static string Value(string line)
        {
            int eq = line.IndexOf('=');
            return eq < 0 ? "" : line.Substring(eq + 1).Trim(' ', '\t', '"', '\'');
        }

        static string Check(string key, string what)
        {
            if (key == null || key.Length != 40 || !Z85.IsValid(key))
                throw new FormatException(what + " must be 40 characters of Z85, got '" + key + "'");
            return key;
        }
    }

    // Z85: 4 bytes <-> 5 characters of this alphabet, big-endian (rfc.zeromq.org/spec:32).
    public static class Z85
    {
        const string Alphabet = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#";

        public static bool IsValid(string text)
        {
            if (text == null || text.Length % 5 != 0) return false;
            for (int i = 0; i < text.Length; i += 5)
            {
                ulong v = 0;
                for (int k = 0; k < 5; k++)
                {
                    int d = Alphabet.IndexOf(text[i + k]);
                    if (d < 0) return false;
                    v = v * 85 + (ulong)d;
                }
                if (v > uint.MaxValue) return false;
            }
            return true;
        }

        public static byte[] Decode(string text)
        {
            if (!IsValid(text)) throw new FormatException("not Z85: '" + text + "'");
            var bytes = new byte[text.Length / 5 * 4];
            for (int i = 0, o = 0; i < text.Length; i += 5, o += 4)
            {
                uint v = 0;
                for (int k = 0; k < 5; k++) v = v * 85 + (uint)Alphabet.IndexOf(text[i + k]);
                bytes[o] = (byte)(v >> 24);
                bytes[o + 1] = (byte)(v >> 16);
                bytes[o + 2] = (byte)(v >> 8);
                bytes[o + 3] = (byte)v;
            }
            return bytes;
        }

        public static string Encode(byte[] bytes)
        {
            if (bytes.Length % 4 != 0) throw new ArgumentException("Z85 encodes multiples of 4 bytes");
            var chars = new char[bytes.Length / 4 * 5];
            for (int i = 0, o = 0; i < bytes.Length; i += 4, o += 5)
            {
                uint v = (uint)(bytes[i] << 24 | bytes[i + 1] << 16 | bytes[i + 2] << 8 | bytes[i + 3]);
                for (int k = 4; k >= 0; k--)
                {
                    chars[o + k] = Alphabet[(int)(v % 85)];
                    v /= 85;
                }
            }
            return new string(chars);
        }
    }
}
