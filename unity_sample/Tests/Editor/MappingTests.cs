// Name-based blendshape mapping: case-insensitive, prefix-tolerant, remappable, and a mesh that
// lacks some ARKit shapes gets the ones it has driven and the rest reported once.
using System.Collections.Generic;
using System.Linq;
using NUnit.Framework;

namespace Ksdiff.Tests
{
    [TestFixture]
    public class MappingTests
    {
        static float[] Weights(params KeyValuePair<string, float>[] values)
        {
            var w = new float[Protocol.BlendshapeCount];
            foreach (var kv in values) w[Protocol.BlendshapeIndex(kv.Key)] = kv.Value;
            return w;
        }

        static KeyValuePair<string, float> W(string name, float v) { return new KeyValuePair<string, float>(name, v); }

        static float ValueOf(BlendshapeMap map, int shape)
        {
            int target = System.Array.IndexOf(map.Targets, shape);
            Assert.GreaterOrEqual(target, 0, "shape " + shape + " is not driven");
            return map.Values[target];
        }

        [Test]
        public void NamesMatchWhateverTheCaseAndPrefix()
        {
            var mesh = new List<string> { "blendShape1.jawOpen", "Wolf3D_Head.EyeBlinkLeft", "MOUTHSMILELEFT", " tongueOut ", "jawOpenExtra", "Fcl_MTH_A" };
            BlendshapeMap map = BlendshapeMap.Build(mesh, null, null);
            map.Apply(Weights(W("jawOpen", 0.5f), W("eyeBlinkLeft", 1f), W("mouthSmileLeft", 0.25f), W("tongueOut", 0.1f)));
            Assert.AreEqual(50f, ValueOf(map, 0), 1e-4);
            Assert.AreEqual(100f, ValueOf(map, 1), 1e-4);
            Assert.AreEqual(25f, ValueOf(map, 2), 1e-4);
            Assert.AreEqual(10f, ValueOf(map, 3), 1e-4);
            Assert.AreEqual(4, map.Targets.Length, "jawOpenExtra and Fcl_MTH_A are not ARKit shapes");
        }

        [Test]
        public void UnitysAlphabeticalEnumOrderIsNotUsed()
        {
            // A mesh whose shapes follow Unity's ARKitBlendShapeLocation enum (alphabetical,
            // capitalised): every weight must land on the shape of the same name.
            var alphabetical = Protocol.BlendshapeNames.Select(n => char.ToUpperInvariant(n[0]) + n.Substring(1))
                .OrderBy(n => n, System.StringComparer.Ordinal).ToList();
            BlendshapeMap map = BlendshapeMap.Build(alphabetical, null, null);
            var weights = new float[Protocol.BlendshapeCount];
            for (int i = 0; i < weights.Length; i++) weights[i] = i / 100f; // weight i <-> canonical index i
            map.Apply(weights);
            Assert.AreEqual(Protocol.BlendshapeCount, map.Targets.Length);
            for (int shape = 0; shape < alphabetical.Count; shape++)
            {
                int canonical = System.Array.FindIndex(Protocol.BlendshapeNames, n => string.Equals(n, alphabetical[shape], System.StringComparison.OrdinalIgnoreCase));
                Assert.AreEqual(canonical, ValueOf(map, shape), 1e-3, alphabetical[shape]);
            }
        }

        [Test]
        public void AMeshWithoutSomeShapesDrivesTheOnesItHasAndReportsTheRestOnce()
        {
            var head = new List<string> { "jawOpen", "eyeBlinkLeft", "eyeBlinkRight", "mouthFunnel" };
            var teeth = new List<string> { "blendShape2.jawOpen", "tongueOut" };
            var face = new FaceMapping(new List<IList<string>> { head, teeth }, null, null);
            Assert.AreEqual(52 - 5, face.Missing.Count);
            Assert.IsFalse(face.Missing.Contains("jawOpen"));
            Assert.IsFalse(face.Missing.Contains("tongueOut"));
            Assert.IsTrue(face.Missing.Contains("cheekPuff"));
            Assert.AreEqual(5, face.DrivenCount(null));
            string report = face.TakeReport();
            Assert.IsNotNull(report);
            Assert.IsTrue(report.Contains("cheekPuff") && report.Contains("47 ARKit blendshapes"), report);
            Assert.IsNull(face.TakeReport(), "reported once");
            // Both meshes move with jawOpen.
            float[] w = Weights(W("jawOpen", 0.3f), W("tongueOut", 0.6f), W("cheekPuff", 1f));
            face.Meshes[0].Apply(w);
            face.Meshes[1].Apply(w);
            Assert.AreEqual(30f, ValueOf(face.Meshes[0], 0), 1e-4);
            Assert.AreEqual(30f, ValueOf(face.Meshes[1], 0), 1e-4);
            Assert.AreEqual(60f, ValueOf(face.Meshes[1], 1), 1e-4);
            // A complete face has nothing to report.
            Assert.IsNull(new FaceMapping(new List<IList<string>> { Protocol.BlendshapeNames }, null, null).TakeReport());
        }

        [Test]
        public void ARemapOverridesNameMatchingScalesAndSilencesShapes()
        {
            var mesh = new List<string> { "Mouth_Smile", "Jaw_Open", "jawOpen", "eyeBlinkLeft", "Eye_Blink_L" };
            var remap = new List<RemapEntry>
            {
                new RemapEntry("mouthSmileLeft", "Mouth_Smile", 0.5f),
                new RemapEntry("MouthSmileRight", "Mouth_Smile", 0.5f), // two halves average into one shape
                new RemapEntry("jawOpen", "Jaw_Open", 2f),              // overrides the exact "jawOpen" match
                new RemapEntry("eyeBlinkLeft", "", 1f),                  // deliberately not driven
                new RemapEntry("cheekPuff", "Cheek_Puff"),               // no such shape
                new RemapEntry("noSuchArkitName", "jawOpen"),
                new RemapEntry("tongueOut", "Eye_Blink_L", 0f),          // zero-filled by Unity's inspector: scale 1
            };
            var face = new FaceMapping(new List<IList<string>> { mesh }, remap, null);
            BlendshapeMap map = face.Meshes[0];
            map.Apply(Weights(W("mouthSmileLeft", 1f), W("mouthSmileRight", 0.5f), W("jawOpen", 0.7f), W("eyeBlinkLeft", 1f)));
            Assert.AreEqual(75f, ValueOf(map, 0), 1e-4);
            Assert.AreEqual(100f, ValueOf(map, 1), 1e-4, "0.7 x 2 clamps at 100");
            Assert.IsFalse(map.Targets.Contains(2), "the exact-named jawOpen yields to the remap");
            Assert.IsFalse(map.Targets.Contains(3), "eyeBlinkLeft is silenced");
            map.Apply(Weights(W("tongueOut", 0.5f)));
            Assert.AreEqual(50f, ValueOf(map, 4), 1e-4);
            Assert.IsFalse(face.Missing.Contains("eyeBlinkLeft"), "a silenced name is not missing");
            Assert.IsTrue(face.Missing.Contains("cheekPuff"));
            Assert.AreEqual(2, face.Problems.Count, string.Join("; ", face.Problems.ToArray()));
        }

        [Test]
        public void TheWireOrderComesFromTheHello()
        {
            // A runtime whose hello lists the names in another order (or a future one with more):
            // the weights are found by name, not by SPEC 5.1's index.
            var wire = new List<string>(Protocol.BlendshapeNames);
            wire.Reverse();
            wire.Add("mouthFuture");
            BlendshapeMap map = BlendshapeMap.Build(new List<string> { "jawOpen", "mouthFuture" }, null, wire);
            var weights = new float[wire.Count];
            weights[wire.IndexOf("jawOpen")] = 0.4f;
            weights[wire.IndexOf("mouthFuture")] = 0.9f;
            map.Apply(weights);
            Assert.AreEqual(40f, ValueOf(map, 0), 1e-4);
            Assert.AreEqual(90f, ValueOf(map, 1), 1e-4);
        }

        [Test]
        public void ApplyAllocatesNothing()
        {
            BlendshapeMap map = BlendshapeMap.Build(Protocol.BlendshapeNames, null, null);
            var w = new float[Protocol.BlendshapeCount];
            Assert.AreEqual(0L, Allocations.Measure(() => map.Apply(w), 1000));
        }
    }
}
