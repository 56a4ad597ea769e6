// Baking a line into animation curves (for an AnimationClip, then Timeline): the frames of one
// stream recorded whole, then turned into one curve per driven blendshape and per bone rotation
// component, keyed at each frame's t_audio. The editor only copies the curves into Unity's
// AnimationCurve / AnimationClip; what goes in them is decided (and tested) here.
using System;
using System.Collections.Generic;

namespace Ksdiff
{
    // Keeps a copy of every frame of one stream (on the client's worker thread) until its last.
    public sealed class ClipRecorder : IFrameSink
    {
        readonly object _lock = new object();
        readonly string _stream;
        readonly SortedDictionary<ulong, Frame> _frames = new SortedDictionary<ulong, Frame>();
        bool _last;

        public ClipRecorder(string stream) { _stream = stream; }

        public void OnFrame(Frame frame, double arrivalS)
        {
            if (frame.Stream != _stream) return;
            lock (_lock)
            {
                _frames[frame.Index] = frame.Clone();
                if (frame.Last) _last = true;
            }
        }

        public bool SawLast { get { lock (_lock) return _last; } }
        public int Count { get { lock (_lock) return _frames.Count; } }

        // The frames by index.
        public List<Frame> Frames()
        {
            lock (_lock) return new List<Frame>(_frames.Values);
        }

        // Indices below `total` (the runtime's stream_ended count) that never arrived.
        public List<ulong> Missing(ulong total)
        {
            var missing = new List<ulong>();
            lock (_lock)
            {
                for (ulong i = 0; i < total; i++)
                {
                    if (!_frames.ContainsKey(i)) missing.Add(i);
                }
            }
            return missing;
        }
    }

    public sealed class BakedCurve
    {
        public string Path;      // the animated object, relative to the clip's root ("" = the root)
        public string Component; // "SkinnedMeshRenderer" or "Transform"
        public string Property;  // "blendShape.<shape name>" or "localRotation.x" .. ".w"
        public float[] Times;    // seconds: the frames' t_audio
        public float[] Values;
    }

    public sealed class BakeMesh
    {
        public string Path;              // the SkinnedMeshRenderer's path under the clip's root
        public IList<string> ShapeNames; // its mesh's blendshape names, by index
    }

    public sealed class BakeBone
    {
        public string Path;          // the bone's path under the clip's root
        public BoneBinding Binding;  // its rest pose (BoneBinding.Capture)
    }

    public sealed class BakeRig
    {
        public readonly List<BakeMesh> Meshes = new List<BakeMesh>();
        public IList<RemapEntry> Remap;
        public IList<string> WireNames; // the runtime hello's blendshape order; null: SPEC 5.1
        public BakeBone Head, Neck, LeftEye, RightEye;
        public float NeckShare = 0.3f;             // of the head rotation, when there is a neck bone
        public double MaxHeadRadians = Math.PI / 4;
        public double MaxEyeRadians = Math.PI / 6;
    }

    public static class AnimationBake
    {
        // One curve per driven shape of every mesh (0..100) and, for each bone given, four
        // localRotation curves (quaternion signs kept continuous from key to key).
        public static List<BakedCurve> Curves(IList<Frame> frames, BakeRig rig, out FaceMapping mapping)
        {
            var meshShapes = new List<IList<string>>();
            foreach (BakeMesh m in rig.Meshes) meshShapes.Add(m.ShapeNames);
            mapping = new FaceMapping(meshShapes, rig.Remap, rig.WireNames);
            var curves = new List<BakedCurve>();
            int n = frames.Count;
            var times = new float[n];
            for (int i = 0; i < n; i++) times[i] = (float)frames[i].TAudio;

            for (int m = 0; m < rig.Meshes.Count; m++)
            {
                BlendshapeMap map = mapping.Meshes[m];
                var values = new float[map.Targets.Length][];
                for (int k = 0; k < values.Length; k++) values[k] = new float[n];
                for (int i = 0; i < n; i++)
                {
                    map.Apply(frames[i].Blendshapes);
                    for (int k = 0; k < values.Length; k++) values[k][i] = map.Values[k];
                }
                for (int k = 0; k < values.Length; k++)
                {
                    curves.Add(new BakedCurve
                    {
                        Path = rig.Meshes[m].Path, Component = "SkinnedMeshRenderer",
                        Property = "blendShape." + rig.Meshes[m].ShapeNames[map.Targets[k]], Times = times, Values = values[k],
                    });
                }
            }

            var head = new Quat[n];
            var neck = new Quat[n];
            var left = new Quat[n];
            var right = new Quat[n];
            for (int i = 0; i < n; i++)
            {
                Frame f = frames[i];
                Quat q = HeadPose.HeadToUnity(f.Head[0], f.Head[1], f.Head[2], rig.MaxHeadRadians);
                Quat qn = Quat.Identity, qh = q;
                if (rig.Neck != null) HeadPose.SplitNeck(q, rig.NeckShare, out qn, out qh);
                if (rig.Head != null) head[i] = rig.Head.Binding.Local(qh);
                if (rig.Neck != null) neck[i] = rig.Neck.Binding.Local(qn);
                if (rig.LeftEye != null) left[i] = rig.LeftEye.Binding.Local(HeadPose.EyeToUnity(f.Gaze[0], f.Gaze[1], rig.MaxEyeRadians));
                if (rig.RightEye != null) right[i] = rig.RightEye.Binding.Local(HeadPose.EyeToUnity(f.Gaze[2], f.Gaze[3], rig.MaxEyeRadians));
            }
            AddRotation(curves, rig.Neck, neck, times);
            AddRotation(curves, rig.Head, head, times);
            AddRotation(curves, rig.LeftEye, left, times);
            AddRotation(curves, rig.RightEye, right, times);
            return curves;
        }

        static void AddRotation(List<BakedCurve> curves, BakeBone bone, Quat[] q, float[] times)
        {
            if (bone == null) return;
            MakeContinuous(q);
            string[] axes = { "x", "y", "z", "w" };
            for (int a = 0; a < 4; a++)
            {
                var values = new float[q.Length];
                for (int i = 0; i < q.Length; i++) values[i] = a == 0 ? q[i].x : a == 1 ? q[i].y : a == 2 ? q[i].z : q[i].w;
                curves.Add(new BakedCurve { Path = bone.Path, Component = "Transform", Property = "localRotation." + axes[a], Times = times, Values = values });
            }
        }

        // q and -q are the same rotation, but curves interpolating from one to the other pass
        // through garbage: each key takes the sign closest to the previous one.
        public static void MakeContinuous(Quat[] q)
        {
            for (int i = 1; i < q.Length; i++)
            {
                float dot = q[i - 1].x * q[i].x + q[i - 1].y * q[i].y + q[i - 1].z * q[i].z + q[i - 1].w * q[i].w;
                if (dot < 0) q[i] = new Quat(-q[i].x, -q[i].y, -q[i].z, -q[i].w);
            }
        }
    }
}
