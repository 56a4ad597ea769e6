// A msgpack reader for the protocol's messages (msgpack spec: github.com/msgpack/msgpack).
//
// Our own, on purpose: MessagePack-CSharp needs generated formatters under IL2CPP/AOT, and the
// protocol needs little (maps with string keys, ints, floats, str, bin, arrays). The reader is a
// cursor over a byte array: it never allocates, and every read checks the bounds, so a
// truncated or lying payload fails with ProtocolException(Malformed) instead of reading past it.
using System;
using System.Runtime.InteropServices;

namespace Ksdiff
{
    public enum MsgPackKind { Nil, Bool, Int, Float32, Float64, Str, Bin, Array, Map, Ext }

    public sealed class MsgPackReader
    {
        // Deeper nesting than this is refused: the protocol nests three levels (stats.streams).
        public const int MaxDepth = 64;

        byte[] _data = new byte[0];
        int _pos;
        int _end;

        public void Reset(byte[] data, int offset, int count)
        {
            if (data == null) throw new ArgumentNullException("data");
            if (offset < 0 || count < 0 || offset + count > data.Length) throw new ArgumentOutOfRangeException("count");
            _data = data;
            _pos = offset;
            _end = offset + count;
        }

        public byte[] Data { get { return _data; } }
        public int Position { get { return _pos; } set { _pos = value; } }
        public int End { get { return _end; } }

        public MsgPackKind PeekKind()
        {
            Need(1);
            byte b = _data[_pos];
            if (b <= 0x7f || b >= 0xe0) return MsgPackKind.Int;            // positive / negative fixint
            if (b >= 0x80 && b <= 0x8f) return MsgPackKind.Map;
            if (b >= 0x90 && b <= 0x9f) return MsgPackKind.Array;
            if (b >= 0xa0 && b <= 0xbf) return MsgPackKind.Str;
            switch (b)
            {
                case 0xc0: return MsgPackKind.Nil;
                case 0xc2: case 0xc3: return MsgPackKind.Bool;
                case 0xc4: case 0xc5: case 0xc6: return MsgPackKind.Bin;
                case 0xc7: case 0xc8: case 0xc9: return MsgPackKind.Ext;
                case 0xca: return MsgPackKind.Float32;
                case 0xcb: return MsgPackKind.Float64;
                case 0xcc: case 0xcd: case 0xce: case 0xcf:
                case 0xd0: case 0xd1: case 0xd2: case 0xd3: return MsgPackKind.Int;
                case 0xd4: case 0xd5: case 0xd6: case 0xd7: case 0xd8: return MsgPackKind.Ext;
                case 0xd9: case 0xda: case 0xdb: return MsgPackKind.Str;
                case 0xdc: case 0xdd: return MsgPackKind.Array;
                case 0xde: case 0xdf: return MsgPackKind.Map;
            }
            throw Malformed("byte 0xc1 is never used in msgpack");
        }

        public void ReadNil()
        {
            Expect(MsgPackKind.Nil);
            _pos++;
        }

        public bool ReadBool()
        {
            Expect(MsgPackKind.Bool);
            return _data[_pos++] == 0xc3;
        }

        // Any integer form. Non-negative values come back in `value` (up to 2^64-1) with
        // `negative` false; negative ones as their two's complement bits ((long)value) with
        // `negative` true. msgpack's signed forms may hold non-negative values: those count as
        // non-negative, as msgpack-python reads them.
        public ulong ReadInteger(out bool negative)
        {
            Expect(MsgPackKind.Int);
            byte b = _data[_pos];
            if (b <= 0x7f) { _pos++; negative = false; return b; }
            if (b >= 0xe0) { _pos++; negative = true; return unchecked((ulong)(long)(sbyte)b); }
            _pos++;
            long s;
            switch (b)
            {
                case 0xcc: negative = false; return ReadBigEndian(1);
                case 0xcd: negative = false; return ReadBigEndian(2);
                case 0xce: negative = false; return ReadBigEndian(4);
                case 0xcf: negative = false; return ReadBigEndian(8);
                case 0xd0: s = (sbyte)ReadBigEndian(1); break;
                case 0xd1: s = (short)ReadBigEndian(2); break;
                case 0xd2: s = (int)ReadBigEndian(4); break;
                default: s = unchecked((long)ReadBigEndian(8)); break; // 0xd3
            }
            negative = s < 0;
            return unchecked((ulong)s);
        }

        // float32 (widened exactly) or float64.
        public double ReadFloat()
        {
            MsgPackKind k = PeekKind();
            if (k == MsgPackKind.Float32)
            {
                _pos++;
                return FloatBits.ToSingle((uint)ReadBigEndian(4));
            }
            Expect(MsgPackKind.Float64);
            _pos++;
            return BitConverter.Int64BitsToDouble(unchecked((long)ReadBigEndian(8)));
        }

        // Where the string's UTF-8 bytes lie in Data. Not validated here (see Utf8).
        public void ReadStr(out int offset, out int length)
        {
            Expect(MsgPackKind.Str);
            byte b = _data[_pos++];
            if (b >= 0xa0 && b <= 0xbf) length = b & 0x1f;
            else if (b == 0xd9) length = (int)ReadBigEndian(1);
            else if (b == 0xda) length = (int)ReadBigEndian(2);
            else length = ReadLength32();
            offset = _pos;
            Need(length);
            _pos += length;
        }

        public void ReadBin(out int offset, out int length)
        {
            Expect(MsgPackKind.Bin);
            byte b = _data[_pos++];
            if (b == 0xc4) length = (int)ReadBigEndian(1);
            else if (b == 0xc5) length = (int)ReadBigEndian(2);
            else length = ReadLength32();
            offset = _pos;
            Need(length);
            _pos += length;
        }

        public int ReadArrayHeader()
        {
            Expect(MsgPackKind.Array);
            byte b = _data[_pos++];
            int n;
            if (b >= 0x90 && b <= 0x9f) n = b & 0x0f;
            else if (b == 0xdc) n = (int)ReadBigEndian(2);
            else n = ReadLength32();
            CheckCount(n, 1);
            return n;
        }

        public int ReadMapHeader()
        {
            Expect(MsgPackKind.Map);
            byte b = _data[_pos++];
            int n;
            if (b >= 0x80 && b <= 0x8f) n = b & 0x0f;
            else if (b == 0xde) n = (int)ReadBigEndian(2);
            else n = ReadLength32();
            CheckCount(n, 2);
            return n;
        }

        // Skips one value of any kind, checking it the way msgpack-python's strict reader does:
        // complete, every str valid UTF-8, every map key a str or bin, nesting bounded.
        public void Skip()
        {
            Skip(0);
        }

        void Skip(int depth)
        {
            if (depth > MaxDepth) throw Malformed("nested deeper than " + MaxDepth);
            int offset, length;
            switch (PeekKind())
            {
                case MsgPackKind.Nil: _pos++; return;
                case MsgPackKind.Bool: _pos++; return;
                case MsgPackKind.Int: bool negative; ReadInteger(out negative); return;
                case MsgPackKind.Float32: case MsgPackKind.Float64: ReadFloat(); return;
                case MsgPackKind.Str:
                    ReadStr(out offset, out length);
                    if (Utf8.CodePointCount(_data, offset, length) < 0) throw Malformed("a str that is not valid UTF-8");
                    return;
                case MsgPackKind.Bin: ReadBin(out offset, out length); return;
                case MsgPackKind.Ext: SkipExt(); return;
                case MsgPackKind.Array:
                {
                    int n = ReadArrayHeader();
                    for (int i = 0; i < n; i++) Skip(depth + 1);
                    return;
                }
                default:
                {
                    int n = ReadMapHeader();
                    for (int i = 0; i < n; i++)
                    {
                        MsgPackKind key = PeekKind();
                        if (key != MsgPackKind.Str && key != MsgPackKind.Bin) throw Malformed("a map key that is not a string");
                        Skip(depth + 1);
                        Skip(depth + 1);
                    }
                    return;
                }
            }
        }

        void SkipExt()
        {
            byte b = _data[_pos++];
            int length;
            switch (b)
            {
                case 0xd4: length = 1; break;
                case 0xd5: length = 2; break;
                case 0xd6: length = 4; break;
                case 0xd7: length = 8; break;
                case 0xd8: length = 16; break;
                case 0xc7: length = (int)ReadBigEndian(1); break;
                case 0xc8: length = (int)ReadBigEndian(2); break;
                default: length = ReadLength32(); break; // 0xc9
            }
            Need(1 + length); // the type byte, then the data
            _pos += 1 + length;
        }

        void Expect(MsgPackKind kind)
        {
            MsgPackKind k = PeekKind();
            if (k != kind) throw Malformed("expected " + kind + ", found " + k);
        }

        void Need(int n)
        {
            if (n < 0 || _end - _pos < n) throw Malformed("truncated message");
        }

        // A container cannot hold more elements than the bytes left (each takes at least one),
        // so a 5-byte header claiming 4 billion elements fails here instead of looping.
        void CheckCount(int n, int bytesPerElement)
        {
            if (n < 0 || (long)n * bytesPerElement > _end - _pos) throw Malformed("truncated message");
        }

        int ReadLength32()
        {
            ulong n = ReadBigEndian(4);
            if (n > int.MaxValue) throw Malformed("truncated message");
            return (int)n;
        }

        ulong ReadBigEndian(int bytes)
        {
            Need(bytes);
            ulong v = 0;
            for (int i = 0; i < bytes; i++) v = (v << 8) | _data[_pos + i];
            _pos += bytes;
            return v;
        }

        static ProtocolException Malformed(string message)
        {
            return new ProtocolException(ErrorCode.Malformed, "not one valid msgpack value: " + message);
        }
    }

    // float <-> its IEEE-754 bits without BitConverter.Int32BitsToSingle (absent from older
    // .NET profiles) and without allocating: both fields share the same four bytes.
    [StructLayout(LayoutKind.Explicit)]
    public struct FloatBits
    {
        [FieldOffset(0)] public uint Bits;
        [FieldOffset(0)] public float Value;

        public static float ToSingle(uint bits)
        {
            FloatBits u = default(FloatBits);
            u.Bits = bits;
            return u.Value;
        }

        public static uint ToBits(float value)
        {
            FloatBits u = default(FloatBits);
            u.Value = value;
            return u.Bits;
        }

        // `count` floats from src[srcOffset..] as little-endian float32 (the protocol's f32le audio)
        // into dst[0..4 * count).
        public static void PutLittleEndian(float[] src, int srcOffset, int count, byte[] dst)
        {
            for (int i = 0; i < count; i++)
            {
                uint bits = ToBits(src[srcOffset + i]);
                dst[4 * i] = (byte)bits;
                dst[4 * i + 1] = (byte)(bits >> 8);
                dst[4 * i + 2] = (byte)(bits >> 16);
                dst[4 * i + 3] = (byte)(bits >> 24);
            }
        }
    }

    // Strict UTF-8 (no overlong forms, no surrogates, nothing above U+10FFFF), as Python's
    // decoder applies to every msgpack str.
    public static class Utf8
    {
        // The number of code points (what Python's len() gives), or -1 when not valid UTF-8.
        public static int CodePointCount(byte[] s, int offset, int length)
        {
            int count = 0;
            int i = offset, end = offset + length;
            while (i < end)
            {
                int c = s[i];
                int extra;
                int cp;
                if (c < 0x80) { i++; count++; continue; }
                if (c >= 0xc2 && c <= 0xdf) { extra = 1; cp = c & 0x1f; }
                else if (c >= 0xe0 && c <= 0xef) { extra = 2; cp = c & 0x0f; }
                else if (c >= 0xf0 && c <= 0xf4) { extra = 3; cp = c & 0x07; }
                else return -1;
                if (i + extra >= end) return -1; // truncated sequence
                for (int k = 1; k <= extra; k++)
                {
                    int cc = s[i + k];
                    if ((cc & 0xc0) != 0x80) return -1;
                    cp = (cp << 6) | (cc & 0x3f);
                }
                if ((extra == 2 && cp < 0x800) || (extra == 3 && (cp < 0x10000 || cp > 0x10ffff)) ||
                    (cp >= 0xd800 && cp <= 0xdfff))
                    return -1;
                i += extra + 1;
                count++;
            }
            return count;
        }
    }
}
