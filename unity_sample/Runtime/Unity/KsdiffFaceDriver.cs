// Drives a face from one stream: the 52 ARKit weights onto one or several SkinnedMeshRenderers
// (by name, see BlendshapeMapping.cs), the head rotation onto head (and neck) bones and the gaze
// onto eye bones, in Unity's left-handed frame (FaceRig.cs). Frames come from the connection's
// jitter buffer, sampled every LateUpdate (after the Animator, so the face wins):
//   * a live stream (a VTuber's "mic") on the client's clock, `jitterMarginMs` behind arrival;
//   * an NPC line (KsdiffNpcVoice) on the audio clock, so lips match the AudioSource.
// All the logic is in the core; this component reads Unity's objects and writes them.
using System.Collections.Generic;
using UnityEngine;

namespace Ksdiff.Unity
{
    [AddComponentMenu("ksdiff/Ksdiff Face Driver")]
    public sealed class KsdiffFaceDriver : MonoBehaviour
    {
        public KsdiffConnection connection;
        [Tooltip("The stream to show, e.g. 'mic'. Empty: the stream that sent a frame most recently.")]
        public string stream = "mic";

        [Header("Blendshapes")]
        [Tooltip("Head, teeth, tongue, eyelashes...: every mesh whose shapes are named like ARKit's (any case, any 'prefix.'), or remapped.")]
        public SkinnedMeshRenderer[] renderers = new SkinnedMeshRenderer[0];
        public KsdiffBlendshapeRemap remap;
        [Range(0, 2)] public float weightScale = 1f;

        [Header("Bones (optional)")]
        [Tooltip("Fill the empty bone fields below from a humanoid Animator on this character (Ready Player Me, VRM, Mixamo rigs).")]
        public bool findHumanoidBones = true;
        [Tooltip("The character's root, facing +Z. Empty: this object.")]
        public Transform characterRoot;
        public Transform head;
        public Transform neck;
        [Range(0, 1)] public float neckShare = 0.3f;
        public Transform leftEye;
        public Transform rightEye;
        [Range(0, 90)] public float maxHeadAngle = 45f;
        [Range(0, 60)] public float maxEyeAngle = 30f;
        [Tooltip("Add the rotations to what an Animator poses each frame instead of to the rest pose. Only when an Animator writes these bones every frame.")]
        public bool onTopOfAnimator = false;
        [Tooltip("Return to the rest pose when the stream stops.")]
        public bool neutralWhenIdle = true;

        // For the inspector.
        public PlayState State { get; private set; }
        public double ShownAudioTime { get; private set; }
        public string ShownStream { get; private set; }
        public FaceMapping Mapping { get; private set; }

        readonly Pose _pose = new Pose();
        readonly AudioClock _audioClock = new AudioClock();
        BoneBinding _head, _neck, _leftEye, _rightEye;
        string[] _wireNames;
        readonly ShownLine _line = new ShownLine(); // an NPC line shown on the audio clock (KsdiffNpcVoice)
        bool _posed;

        void OnEnable()
        {
            if (findHumanoidBones) FindHumanoidBones();
            CaptureRestPose();
            BuildMapping(null);
        }

        // Head, neck and eyes from the character's humanoid avatar, where not set by hand.
        public void FindHumanoidBones()
        {
            Animator animator = GetComponentInParent<Animator>();
            if (animator == null || !animator.isHuman) return;
            if (head == null) head = animator.GetBoneTransform(HumanBodyBones.Head);
            if (neck == null) neck = animator.GetBoneTransform(HumanBodyBones.Neck);
            if (leftEye == null) leftEye = animator.GetBoneTransform(HumanBodyBones.LeftEye);
            if (rightEye == null) rightEye = animator.GetBoneTransform(HumanBodyBones.RightEye);
            if (characterRoot == null) characterRoot = animator.transform;
        }

        // Call after changing renderers, remap or bones at run time (bones in their rest pose).
        public void CaptureRestPose()
        {
            Transform root = characterRoot != null ? characterRoot : transform;
            _head = Capture(root, head);
            _neck = Capture(root, neck);
            _leftEye = Capture(root, leftEye);
            _rightEye = Capture(root, rightEye);
        }

        public void BuildMapping(string[] wireNames)
        {
            var shapes = new List<IList<string>>();
            foreach (SkinnedMeshRenderer r in renderers) shapes.Add(ShapeNames(r));
            Mapping = new FaceMapping(shapes, remap != null ? remap.entries : null, wireNames);
            _wireNames = wireNames;
            string report = Mapping.TakeReport(); // once per mapping, not every frame
            if (report != null) Debug.LogWarning("ksdiff: " + name + ": " + report, this);
        }

        // Shows an NPC line's stream on the audio clock (AudioSettings.dspTime), from before its
        // first frame until it has played out or the buffer lets go of it (ShownLine);
        // KsdiffNpcVoice anchors the line where its sample 0 is heard.
        public void ShowLine(string lineStream)
        {
            _line.Show(lineStream);
        }

        public void StopLine(string lineStream)
        {
            _line.Stop(lineStream);
        }

        void LateUpdate()
        {
            KsdiffClient client = connection != null ? connection.Client : null;
            if (client == null) return;
            ClientStatus status = connection.Status;
            if (status != null && status.Blendshapes != null && !SameNames(status.Blendshapes, _wireNames)) BuildMapping(status.Blendshapes);

            string id;
            double now;
            if (_line.Stream != null)
            {
                id = _line.Stream;
                // On the dsp clock, interpolated between its buffer-sized steps.
                int bufferLength, buffers;
                AudioSettings.GetDSPBufferSize(out bufferLength, out buffers);
                double step = (double)bufferLength / Mathf.Max(1, AudioSettings.outputSampleRate);
                now = _audioClock.Sample(AudioSettings.dspTime, Time.realtimeSinceStartupAsDouble, step);
            }
            else
            {
                id = string.IsNullOrEmpty(stream) ? Newest(status) : stream;
                now = client.Now();
            }
            double shown;
            State = client.Buffer.Sample(id, now, _pose, out shown);
            ShownAudioTime = shown;
            ShownStream = id;
            // Played out (Ended) or let go of: back to the live stream; a line with no frame yet
            // (Unknown, still in the buffer) stays.
            if (_line.Stream != null && _line.Stream == id) _line.Sampled(client.Buffer, State);
            if (State == PlayState.Unknown)
            {
                if (neutralWhenIdle && _posed) Neutral();
                return;
            }
            Apply(_pose);
        }

        void Apply(Pose pose)
        {
            for (int i = 0; i < renderers.Length && i < Mapping.Meshes.Length; i++)
            {
                SkinnedMeshRenderer r = renderers[i];
                if (r == null) continue;
                BlendshapeMap map = Mapping.Meshes[i];
                map.Apply(pose.Blendshapes);
                for (int k = 0; k < map.Targets.Length; k++) r.SetBlendShapeWeight(map.Targets[k], Mathf.Min(100f, map.Values[k] * weightScale));
            }
            Quat q = HeadPose.HeadToUnity(pose.Head[0], pose.Head[1], pose.Head[2], maxHeadAngle * Mathf.Deg2Rad);
            Quat qNeck = Quat.Identity, qHead = q;
            if (neck != null) HeadPose.SplitNeck(q, neckShare, out qNeck, out qHead);
            Turn(neck, _neck, qNeck);
            Turn(head, _head, qHead);
            double maxEye = maxEyeAngle * Mathf.Deg2Rad;
            Turn(leftEye, _leftEye, HeadPose.EyeToUnity(pose.Gaze[0], pose.Gaze[1], maxEye));
            Turn(rightEye, _rightEye, HeadPose.EyeToUnity(pose.Gaze[2], pose.Gaze[3], maxEye));
            _posed = true;
        }

        void Neutral()
        {
            _pose.Clear();
            Apply(_pose);
            _posed = false;
        }

        void Turn(Transform bone, BoneBinding binding, Quat q)
        {
            if (bone == null) return;
            Quat local = onTopOfAnimator ? FromUnity(bone.localRotation) * binding.Delta(q) : binding.Local(q);
            bone.localRotation = ToUnity(local);
        }

        static BoneBinding Capture(Transform root, Transform bone)
        {
            if (bone == null) return default(BoneBinding);
            return BoneBinding.Capture(FromUnity(root.rotation), FromUnity(bone.rotation), FromUnity(bone.localRotation));
        }

        static List<string> ShapeNames(SkinnedMeshRenderer r)
        {
            var names = new List<string>();
            Mesh mesh = r != null ? r.sharedMesh : null;
            if (mesh == null) return names;
            for (int i = 0; i < mesh.blendShapeCount; i++) names.Add(mesh.GetBlendShapeName(i));
            return names;
        }

        // The stream whose frame came last (for an empty `stream`).
        static string Newest(ClientStatus status)
        {
            if (status == null) return null;
            string id = null;
            double newest = double.MinValue;
            foreach (StreamStatus s in status.Streams.Values)
            {
                if (!s.Ended && s.LastFrameS > newest)
                {
                    newest = s.LastFrameS;
                    id = s.Stream;
                }
            }
            return id;
        }

        static bool SameNames(string[] a, string[] b)
        {
            if (a == null || b == null || a.Length != b.Length) return a == b;
            for (int i = 0; i < a.Length; i++)
            {
                if (a[i] != b[i]) return false;
            }
            return true;
        }

        static Quat FromUnity(Quaternion q) { return new Quat(q.x, q.y, q.z, q.w); }
        static Quaternion ToUnity(Quat q) { return new Quaternion(q.x, q.y, q.z, q.w); }
    }
}
