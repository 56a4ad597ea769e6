// Decode cost per frame of the C# core, printed (a measurement, not a test with a threshold).
//
//   mono KsdiffBench.exe protocol/golden/frame.msgpack [batches] [frames per batch]
//
// Decodes the golden frame (415 bytes, the runtime's real layout) in batches and prints the
// median, minimum and mean microseconds per frame, then the same for decode + jitter-buffer push
// (the client's per-frame work besides the socket).
using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.IO;

namespace Ksdiff.Ci
{
    static class Bench
    {
        static int Main(string[] args)
        {
            if (args.Length < 1)
            {
                Console.Error.WriteLine("usage: KsdiffBench.exe path/to/frame.msgpack [batches] [frames per batch]");
                return 2;
            }
            byte[] payload = File.ReadAllBytes(args[0]);
            int batches = args.Length > 1 ? int.Parse(args[1]) : 20;
            int perBatch = args.Length > 2 ? int.Parse(args[2]) : 10000;
            Type mono = Type.GetType("Mono.Runtime");
            string runtime = mono != null
                ? "Mono " + mono.GetMethod("GetDisplayName", System.Reflection.BindingFlags.NonPublic | System.Reflection.BindingFlags.Static).Invoke(null, null)
                : ".NET " + Environment.Version;
            Console.WriteLine("ksdiff Unity core, " + runtime + ", " + Environment.ProcessorCount + " CPUs, frame of " + payload.Length + " bytes");

            var decoder = new Decoder();
            Report("decode", batches, perBatch, () => decoder.Decode(payload, 0, payload.Length));

            var jb = new JitterBuffer();
            double t = 0;
            Report("decode + jitter buffer push", batches, perBatch, () =>
            {
                var f = (Frame)decoder.Decode(payload, 0, payload.Length);
                f.TAudio = t; // a new instant each time, as a stream's frames are
                jb.Push(f, t);
                t += 1.0 / 30;
            });
            return 0;
        }

        static void Report(string what, int batches, int perBatch, Action step)
        {
            Measure(1, perBatch, step); // JIT (of the timing code too) and warm caches
            Measure(batches, perBatch, step, what);
        }

        static void Measure(int batches, int perBatch, Action step, string what = null)
        {
            // Everything the timing needs exists before the allocation counter is read.
            var perFrame = new List<double>(batches);
            var total = new Stopwatch();
            var watch = new Stopwatch();
            long before = GC.GetAllocatedBytesForCurrentThread();
            total.Start();
            for (int b = 0; b < batches; b++)
            {
                watch.Restart();
                for (int i = 0; i < perBatch; i++) step();
                perFrame.Add(watch.Elapsed.TotalMilliseconds * 1000.0 / perBatch);
            }
            total.Stop();
            long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
            double mean = total.Elapsed.TotalMilliseconds * 1000.0 / (batches * perBatch);
            if (what == null) return;
            perFrame.Sort();
            Console.WriteLine(string.Format(System.Globalization.CultureInfo.InvariantCulture,
                "{0}: {1:F2} us/frame (median of {2} batches of {3}; min {4:F2}, mean {5:F2}); {6} bytes allocated in {7} frames",
                what, perFrame[perFrame.Count / 2], batches, perBatch, perFrame[0], mean, allocated, batches * perBatch));
        }
    }
}
