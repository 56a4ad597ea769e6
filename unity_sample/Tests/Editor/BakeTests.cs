// Baking a line's frames into curves: keys on the audio clock, shapes by name, rotations through
// the same rig math as the live driver, quaternion signs continuous. And the offline line that
// collects those frames, when another thread stops its client while it pushes (it fails, Update
// does not throw).
using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.Linq;
using System.Threading;
using NUnit.Framework;

namespace Ksdiff.Tests
{
    [TestFixture]
    public class BakeTests
    {
        static List<Frame> Line(int n)
        {
            var frames = new List<Frame>();
            for (int i = 0; i < n; i++)
            {
                var f = new Frame { Stream = "npc", Seq = (ulong)i, Index = (ulong)i, Fps = 30, TAudio = i / 30.0, Last = i == n - 1 };
                f.Blendshapes[17] = i / (float)n;          // jawOpen
                f.Blendshapes[Protocol.BlendshapeIndex("cheekPuff")] = 0.5f;
                f.Head[1] = 0.01f * i;                      // turning to its own left
                f.Gaze[0] = 0.1f;
                frames.Add(f);
            }
            return frames;
        }

        [Test]
        public void CurvesAreKeyedOnTheAudioClockByShapeName()
        {
            var rig = new BakeRig();
            rig.Meshes.Add(new BakeMesh { Path = "Body/Head", ShapeNames = new List<string> { "blendShape1.jawOpen", "blendShape1.eyeBlinkLeft" } });
            rig.Meshes.Add(new BakeMesh { Path = "Body/Teeth", ShapeNames = new List<string> { "JawOpen" } });
            FaceMapping mapping;
            List<BakedCurve> curves = AnimationBake.Curves(Line(10), rig, out mapping);
            Assert.AreEqual(3, curves.Count);
            BakedCurve jaw = curves.Single(c => c.Path == "Body/Head" && c.Property == "blendShape.blendShape1.jawOpen");
            Assert.AreEqual("SkinnedMeshRenderer", jaw.Component);
            Assert.AreEqual(10, jaw.Times.Length);
            Assert.AreEqual(9 / 30.0, jaw.Times[9], 1e-6);
            Assert.AreEqual(50f, jaw.Values[5], 1e-4);
            Assert.IsTrue(curves.Any(c => c.Path == "Body/Teeth" && c.Property == "blendShape.JawOpen"));
            Assert.IsTrue(mapping.Missing.Contains("cheekPuff"), "no mesh has cheekPuff: reported, not baked");
            Assert.IsFalse(curves.Any(c => c.Property.Contains("cheek")));
        }

        [Test]
        public void BoneCurvesUseTheLiveRigMathAndStayContinuous()
        {
            var rig = new BakeRig();
            Quat character = Quat.Identity;
            Quat headRest = Quat.EulerZXY(0, System.Math.PI, 0); // a bone whose axes face backwards
            rig.Head = new BakeBone { Path = "Armature/Neck/Head", Binding = BoneBinding.Capture(character, headRest, headRest) };
            rig.LeftEye = new BakeBone { Path = "Armature/Neck/Head/LeftEye", Binding = BoneBinding.Capture(character, headRest, Quat.Identity) };
            List<Frame> frames = Line(20);
            FaceMapping mapping;
            List<BakedCurve> curves = AnimationBake.Curves(frames, rig, out mapping);
            var head = curves.Where(c => c.Path == "Armature/Neck/Head").ToDictionary(c => c.Property);
            Assert.AreEqual(4, head.Count);
            Assert.AreEqual("Transform", head["localRotation.w"].Component);
            for (int i = 0; i < frames.Count; i++)
            {
                Quat expected = rig.Head.Binding.Local(HeadPose.HeadToUnity(frames[i].Head[0], frames[i].Head[1], frames[i].Head[2]));
                var actual = new Quat(head["localRotation.x"].Values[i], head["localRotation.y"].Values[i], head["localRotation.z"].Values[i], head["localRotation.w"].Values[i]);
                double dot = System.Math.Abs(expected.x * actual.x + expected.y * actual.y + expected.z * actual.z + expected.w * actual.w);
                Assert.AreEqual(1.0, dot, 1e-5, "key " + i);
            }
            Assert.AreEqual(4, curves.Count(c => c.Path.EndsWith("LeftEye")));
            // Signs continuous: consecutive keys never jump to the other hemisphere.
            var q = new[] { new Quat(0, 0, 0, 1), new Quat(0, 0.1f, 0, -0.99f), new Quat(0, -0.2f, 0, 0.98f) };
            AnimationBake.MakeContinuous(q);
            Assert.Greater(q[1].w, 0);
            Assert.Greater(q[2].w, 0);
        }

        [Test]
        public void TheRecorderKeepsOneStreamAndFindsWhatIsMissing()
        {
            var rec = new ClipRecorder("npc");
            foreach (Frame f in Line(6))
            {
                if (f.Index == 2) continue; // dropped on the way
                rec.OnFrame(f, 0);
            }
            var other = new Frame { Stream = "mic", Index = 99 };
            rec.OnFrame(other, 0);
            Assert.AreEqual(5, rec.Count);
            Assert.IsTrue(rec.SawLast);
            Assert.AreEqual(new ulong[] { 2 }, rec.Missing(6).ToArray());
            Assert.AreEqual(new ulong[] { 0, 1, 3, 4, 5 }, rec.Frames().Select(f => f.Index).ToArray());
        }

        [Test]
        [Category("LibZmq")]
        public void AnOfflineLineWhoseClientAnotherThreadStopsAndStartsWhileItPushesFailsInsteadOfThrowingFromUpdate()
        {
            // As NpcLineTests.ALineWhoseClientAnotherThreadStopsAndStarts...: Stop and Start may come
            // from any thread while the editor's thread runs the bake's Update. Between the line's read
            // of its stream's status (not lost yet) and its pushes, the stop loses the stream and
            // SendAudio throws for it (unknown_stream): Update must turn that into the line's
            // failure, not throw it into the editor. The stop is kicked off from within the Update
            // that gets the line's stream_opened, which is the Update that pushes: the runtime states
            // no max_ahead_s (1.0), so the whole 60 s clip goes at once, in eleven 1 MiB messages.
            // Kicked on that Update's first clock reading, a stopper that wakes at once mostly stops
            // the client before the line reads its state (the line fails as stopped, nothing pushed):
            // line by line it is kicked on the first, second or third reading instead (Now,
            // client.State and client.Stream read the clock), so some land among the pushes however
            // fast it wakes.
            FakeRuntime.RequireLibZmq();
            int editorThread = Thread.CurrentThread.ManagedThreadId;
            var clock = Stopwatch.StartNew();
            var kick = new AutoResetEvent(false);
            int armed = 0; // the editor thread's clock readings left until the kick; 0: none due
            int kicks = 0, cycles = 0; // stops kicked off, stop-and-starts over
            var rt = new FakeRuntime();
            var client = new KsdiffClient(new ClientOptions
            {
                PubEndpoint = rt.PubEndpoint, RouterEndpoint = rt.RouterEndpoint, Transport = () => new LibZmqTransport(),
                Clock = () =>
                {
                    // Only the editor thread counts down, so the kick is set once.
                    if (Thread.CurrentThread.ManagedThreadId == editorThread && Volatile.Read(ref armed) > 0 &&
                        Interlocked.Decrement(ref armed) == 0) kick.Set();
                    return clock.Elapsed.TotalSeconds;
                },
            });
            var thrown = new List<string>();
            var failures = new List<string>();
            bool done = false;
            var stopper = new Thread(() =>
            {
                while (!Volatile.Read(ref done))
                {
                    if (!kick.WaitOne(50)) continue;
                    client.Stop();
                    client.Start();
                    Interlocked.Increment(ref cycles);
                }
            }) { IsBackground = true };
            try
            {
                client.Start();
                stopper.Start();
                float[] clip = Tone(60.0, 48000, 1);
                for (int i = 0; i < 60; i++)
                {
                    // Once the previous line's stop and start are over: a line started in between
                    // fails at once (the client is stopped), without a stream to race for.
                    Assert.IsTrue(Wait.Until(() => Volatile.Read(ref cycles) == kicks, 10), "the stopper did not stop and start the client");
                    string id = "bake-race-" + i;
                    var line = new OfflineLine(client, clip, 48000, 1, new NpcLineOptions { Stream = id });
                    line.Start();
                    var watch = Stopwatch.StartNew();
                    while (line.State != OfflineLineState.Failed && line.State != OfflineLineState.Done)
                    {
                        Assert.Less(watch.Elapsed.TotalSeconds, 10, "line stuck in " + line.State);
                        try
                        {
                            line.Update();
                        }
                        catch (Exception e)
                        {
                            thrown.Add(e.GetType().Name + ": " + e.Message);
                            break; // the next line: this one is left to the client's Dispose
                        }
                        KeyValuePair<byte[], byte[]>? r = rt.TryReceive(0.005);
                        if (!r.HasValue) continue;
                        var open = new Decoder().Decode(r.Value.Value) as OpenStream;
                        if (open == null) continue; // audio, end_stream: this runtime answers nothing else
                        rt.Reply(r.Value.Key, FakeRuntime.StreamOpened(id, open.Req.Value, null, 100, Protocol.ModeLine));
                        // The stop starts within the next Update, which sees the reply (and pushes).
                        Assert.IsTrue(Wait.Until(() => client.Stream(id).Mode == Protocol.ModeLine, 10), "no stream_opened reached the client");
                        kicks++;
                        Volatile.Write(ref armed, 1 + i % 3);
                    }
                    // A kick still due (the line ended before that reading) is not carried to the next line.
                    if (Interlocked.Exchange(ref armed, 0) > 0) kicks--;
                    if (line.Failure != null) failures.Add(line.Failure);
                }
            }
            finally
            {
                Volatile.Write(ref done, true);
                stopper.Join();
                client.Dispose();
                rt.Dispose();
            }
            Assert.AreEqual(0, thrown.Count, "Update threw: " + string.Join(" | ", thrown));
            Console.WriteLine("  lines failed by SendAudio's refusal: " + failures.Count(f => f.Contains("could not be sent")) +
                              " of " + failures.Count);
        }

        static float[] Tone(double seconds, int rate, int channels)
        {
            var s = new float[(int)(seconds * rate) * channels];
            for (int i = 0; i < s.Length; i++) s[i] = (float)(0.5 * Math.Sin(i * 0.05));
            return s;
        }
    }
}
