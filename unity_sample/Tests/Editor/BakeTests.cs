// Baking a line's frames into curves: keys on the audio clock, shapes by name, rotations through
// the same rig math as the live driver, quaternion signs continuous.
using System.Collections.Generic;
using System.Linq;
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
    }
}
