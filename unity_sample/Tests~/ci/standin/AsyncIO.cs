// A compile-only stand-in of the one AsyncIO member Runtime/NetMQ uses (AsyncIO.dll, which NetMQ's
// NuGet package brings and the Ksdiff.NetMQ asmdef references on its own), written from AsyncIO's
// source (github.com/somdoron/AsyncIO, Source/AsyncIO/ForceDotNet.cs). Never run: `throw null`.
namespace AsyncIO
{
    // ForceDotNet.cs: public static class ForceDotNet { static void Force(); static void Unforce(); }
    public static class ForceDotNet
    {
        public static void Force() => throw null;
        public static void Unforce() => throw null;
    }
}
