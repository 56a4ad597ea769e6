// Name-based mapping of the protocol's ARKit weights onto a mesh's blendshapes.
//
// Never by index: the wire's order is ARKit's (SPEC 5.1), Unity's ARKitBlendShapeLocation enum is
// alphabetical, and every character mesh has its own order. A mesh shape matches an ARKit name
// when the part of its name after the last '.' equals it, ignoring case: `jawOpen`, `JawOpen`
// (Perfect Sync VRM), `blendShape1.jawOpen` (FBX exports from Maya/Blender), `Wolf3D_Head.jawOpen`.
// A remap (Unity: a KsdiffBlendshapeRemap asset) covers everything else: an entry sends one ARKit
// name to one mesh shape with a scale (on a mesh that has that shape, instead of name matching),
// or to nothing (on every mesh).
// Several entries may drive one shape: their contributions add up (two with scale 0.5 average).
using System;
using System.Collections.Generic;

namespace Ksdiff
{
    [Serializable]
    public sealed class RemapEntry
    {
        public string Arkit;     // an ARKit name (any case), e.g. "mouthSmileLeft"
        public string Shape;     // the mesh's shape name; empty: this ARKit name drives nothing
        public float Scale = 1f; // weight multiplier (0 reads as 1, see Build)

        public RemapEntry() { }

        public RemapEntry(string arkit, string shape, float scale = 1f)
        {
            Arkit = arkit;
            Shape = shape;
            Scale = scale;
        }
    }

    public static class ShapeNames
    {
        // "blendShape1.JawOpen" -> "jawopen": the part after the last '.', trimmed, lower case.
        public static string Normalize(string name)
        {
            if (name == null) return "";
            int dot = name.LastIndexOf('.');
            string tail = dot >= 0 ? name.Substring(dot + 1) : name;
            return tail.Trim().ToLowerInvariant();
        }
    }

    // One mesh's mapping: which mesh shapes get which weights. Apply() then writes Unity's 0..100
    // weights per driven shape, without allocating.
    public sealed class BlendshapeMap
    {
        struct Pair
        {
            public int Wire;   // index into the frame's weights
            public int Target; // index into Targets / Values
            public float Scale;
        }

        readonly Pair[] _pairs;
        HashSet<string> _silenced; // ARKit names the remap sends to no shape

        // Mesh shape indices this map drives, and their values after Apply (0..100).
        public readonly int[] Targets;
        public readonly float[] Values;
        // Wire names (ARKit) that drive at least one shape of this mesh.
        public readonly HashSet<string> Driven = new HashSet<string>(StringComparer.OrdinalIgnoreCase);
        // Remap entries naming a shape this mesh lacks (not errors: the remap may serve several meshes).
        public readonly List<string> UnusedRemaps = new List<string>();

        BlendshapeMap(List<Pair> pairs, List<int> targets)
        {
            _pairs = pairs.ToArray();
            Targets = targets.ToArray();
            Values = new float[Targets.Length];
        }

        // `meshShapes`: the mesh's blendshape names, by index (Mesh.GetBlendShapeName).
        // `wireNames`: the order of the frame's weights, from the runtime's hello; null: SPEC 5.1.
        public static BlendshapeMap Build(IList<string> meshShapes, IList<RemapEntry> remap, IList<string> wireNames)
        {
            if (wireNames == null) wireNames = Protocol.BlendshapeNames;
            var pairs = new List<Pair>();
            var targets = new List<int>();
            var targetOf = new Dictionary<int, int>(); // mesh shape index -> index in targets
            var overridden = new HashSet<string>(StringComparer.OrdinalIgnoreCase); // remapped on this mesh
            var silenced = new HashSet<string>(StringComparer.OrdinalIgnoreCase);   // remapped to nothing
            var unused = new List<string>();
            var driven = new HashSet<string>(StringComparer.OrdinalIgnoreCase);

            Action<int, int, float> add = (wire, shape, scale) =>
            {
                int target;
                if (!targetOf.TryGetValue(shape, out target))
                {
                    target = targets.Count;
                    targets.Add(shape);
                    targetOf[shape] = target;
                }
                pairs.Add(new Pair { Wire = wire, Target = target, Scale = scale });
                driven.Add(wireNames[wire]);
            };

            if (remap != null)
            {
                foreach (RemapEntry e in remap)
                {
                    if (e == null || string.IsNullOrEmpty(e.Arkit)) continue;
                    string arkit = e.Arkit.Trim();
                    if (string.IsNullOrEmpty(e.Shape))
                    {
                        silenced.Add(arkit); // this ARKit name drives nothing, on purpose
                        continue;
                    }
                    int wire = IndexOf(wireNames, arkit);
                    int shape = FindShape(meshShapes, e.Shape);
                    if (wire < 0 || shape < 0)
                    {
                        // Not on this mesh (a remap may serve several): name matching still applies here.
                        unused.Add(e.Arkit + " -> " + e.Shape + (wire < 0 ? " (no such ARKit name)" : " (no such shape on this mesh)"));
                        continue;
                    }
                    // Unity zero-fills list elements added in the inspector: a scale of 0 (which would pin
                    // the shape at 0) reads as 1. To leave an ARKit name undriven, leave Shape empty.
                    add(wire, shape, e.Scale == 0f ? 1f : e.Scale);
                    overridden.Add(arkit);
                }
            }
            for (int wire = 0; wire < wireNames.Count; wire++)
            {
                if (overridden.Contains(wireNames[wire]) || silenced.Contains(wireNames[wire])) continue;
                string want = wireNames[wire].ToLowerInvariant();
                for (int shape = 0; shape < meshShapes.Count; shape++)
                {
                    if (ShapeNames.Normalize(meshShapes[shape]) == want) add(wire, shape, 1f);
                }
            }
            var map = new BlendshapeMap(pairs, targets);
            map.Driven.UnionWith(driven);
            map.UnusedRemaps.AddRange(unused);
            map._silenced = silenced;
            return map;
        }

        // ARKit names a remap entry deliberately leaves undriven (not reported as missing).
        public bool Silenced(string arkit) { return _silenced.Contains(arkit); }

        // weights (0..1, in wire order) -> Values (0..100, SetBlendShapeWeight's range), per target.
        public void Apply(float[] weights)
        {
            Array.Clear(Values, 0, Values.Length);
            for (int i = 0; i < _pairs.Length; i++)
            {
                Pair p = _pairs[i];
                Values[p.Target] += weights[p.Wire] * p.Scale * 100f;
            }
            for (int i = 0; i < Values.Length; i++)
            {
                if (Values[i] < 0f) Values[i] = 0f;
                else if (Values[i] > 100f) Values[i] = 100f;
            }
        }

        static int IndexOf(IList<string> names, string name)
        {
            for (int i = 0; i < names.Count; i++)
            {
                if (string.Equals(names[i], name, StringComparison.OrdinalIgnoreCase)) return i;
            }
            return -1;
        }

        // A remap's shape: the exact name first, then by the same rule as automatic matching.
        static int FindShape(IList<string> meshShapes, string shape)
        {
            for (int i = 0; i < meshShapes.Count; i++)
            {
                if (meshShapes[i] == shape) return i;
            }
            string want = ShapeNames.Normalize(shape);
            for (int i = 0; i < meshShapes.Count; i++)
            {
                if (ShapeNames.Normalize(meshShapes[i]) == want) return i;
            }
            return -1;
        }
    }

    // The mapping of a whole face (one or several meshes: head, teeth, tongue, eyelashes): what
    // drives what, and the ARKit names no mesh has, reported once rather than every frame.
    public sealed class FaceMapping
    {
        public readonly BlendshapeMap[] Meshes;
        public readonly List<string> Missing = new List<string>();   // ARKit names no mesh takes
        public readonly List<string> Problems = new List<string>();  // remap entries that matched nothing
        bool _reported;

        public FaceMapping(IList<IList<string>> meshShapes, IList<RemapEntry> remap, IList<string> wireNames)
        {
            if (wireNames == null) wireNames = Protocol.BlendshapeNames;
            Meshes = new BlendshapeMap[meshShapes.Count];
            for (int i = 0; i < Meshes.Length; i++) Meshes[i] = BlendshapeMap.Build(meshShapes[i], remap, wireNames);
            foreach (string name in wireNames)
            {
                bool any = false;
                foreach (BlendshapeMap m in Meshes) any |= m.Driven.Contains(name) || m.Silenced(name);
                if (!any) Missing.Add(name);
            }
            // A remap entry is a problem only when it matched on none of the meshes.
            if (remap != null && Meshes.Length > 0)
            {
                foreach (string entry in Meshes[0].UnusedRemaps)
                {
                    bool everywhere = true;
                    foreach (BlendshapeMap m in Meshes) everywhere &= m.UnusedRemaps.Contains(entry);
                    if (everywhere) Problems.Add(entry);
                }
            }
        }

        public int DrivenCount(IList<string> wireNames)
        {
            return (wireNames ?? Protocol.BlendshapeNames).Count - Missing.Count;
        }

        // The one-time report: a text the first time there is something to say, then null.
        public string TakeReport()
        {
            if (_reported || (Missing.Count == 0 && Problems.Count == 0)) return null;
            _reported = true;
            var parts = new List<string>();
            if (Missing.Count > 0)
                parts.Add(Missing.Count + " ARKit blendshapes have no shape on these meshes and are not driven: " +
                          string.Join(", ", Missing.ToArray()) +
                          ". Name the shapes like ARKit (any case, any 'prefix.') or add them to a remap asset.");
            if (Problems.Count > 0)
                parts.Add("remap entries that match no mesh: " + string.Join("; ", Problems.ToArray()));
            return string.Join(" ", parts.ToArray());
        }
    }
}
