// Window > ksdiff > Bake Line: an AudioClip (and its transcript) animated by the runtime and saved
// as an AnimationClip for a character's KsdiffFaceDriver setup: blendshape curves on its meshes,
// rotation curves on its head/neck/eye bones. Put the clip on an Animation Track in Timeline with
// the AudioClip on an Audio Track at the same start, and the lips match without a runtime.
//
// The work is the core's: OfflineLine (push the clip within max_ahead_s, collect every frame) and
// AnimationBake.Curves (what goes in each curve). This window only runs it from
// EditorApplication.update (never blocking the editor) and writes the asset.
using System.Collections.Generic;
using Ksdiff.Unity;
using UnityEditor;
using UnityEngine;
// Ksdiff.MessageType (the protocol's) would hide UnityEditor.MessageType inside namespace Ksdiff.
using HelpType = UnityEditor.MessageType;

namespace Ksdiff.Editor
{
    public sealed class KsdiffBakeWindow : EditorWindow
    {
        string _pub = Protocol.DefaultPubEndpoint;
        string _router = Protocol.DefaultRouterEndpoint;
        KsdiffTransportKind _transport = KsdiffTransportKind.Auto;
        AudioClip _clip;
        string _transcript = "";
        KsdiffFaceDriver _face;
        bool _useSeed;
        int _seed;

        KsdiffClient _client;
        OfflineLine _line;
        double _connectStart;
        string _message = "";
        HelpType _messageType = HelpType.None;

        [MenuItem("Window/ksdiff/Bake Line")]
        static void Open() { GetWindow<KsdiffBakeWindow>("ksdiff bake"); }

        void OnGUI()
        {
            EditorGUILayout.LabelField("Runtime", EditorStyles.boldLabel);
            _pub = EditorGUILayout.TextField("PUB endpoint", _pub);
            _router = EditorGUILayout.TextField("ROUTER endpoint", _router);
            _transport = (KsdiffTransportKind)EditorGUILayout.EnumPopup("Transport", _transport);
            EditorGUILayout.LabelField("Line", EditorStyles.boldLabel);
            _clip = (AudioClip)EditorGUILayout.ObjectField("Audio clip", _clip, typeof(AudioClip), false);
            EditorGUILayout.LabelField("Transcript (optional)");
            _transcript = EditorGUILayout.TextArea(_transcript, GUILayout.MinHeight(40));
            _useSeed = EditorGUILayout.Toggle("Fixed seed", _useSeed);
            if (_useSeed) _seed = EditorGUILayout.IntField("Seed", _seed);
            _face = (KsdiffFaceDriver)EditorGUILayout.ObjectField("Character (face driver)", _face, typeof(KsdiffFaceDriver), true);
            EditorGUILayout.HelpBox("The clip animates the face driver's meshes and bones, with paths relative to its character root. " +
                                    "Bake with the character in its rest pose.", HelpType.None);
            using (new EditorGUI.DisabledScope(_client != null || _clip == null || _face == null))
            {
                if (GUILayout.Button(_client != null ? "Baking..." : "Bake")) StartBake();
            }
            if (_client != null && GUILayout.Button("Cancel")) Finish("cancelled", HelpType.Warning);
            if (!string.IsNullOrEmpty(_message)) EditorGUILayout.HelpBox(_message, _messageType);
        }

        void StartBake()
        {
            string problem;
            float[] samples = KsdiffAudio.Samples(_clip, out problem);
            System.Func<ITransport> factory = samples == null ? null : KsdiffTransports.Factory(_transport, out problem);
            if (problem != null)
            {
                Show(problem, HelpType.Error);
                return;
            }
            var client = new KsdiffClient(new ClientOptions { PubEndpoint = _pub, RouterEndpoint = _router, Transport = factory });
            string stream = NpcLine.StreamIdFor("bake-" + _clip.name, 1, new System.Random());
            var options = new NpcLineOptions { Stream = stream, Transcript = string.IsNullOrEmpty(_transcript) ? null : _transcript };
            if (_useSeed) options.Seed = _seed;
            OfflineLine line;
            try
            {
                // Before the client starts: a clip the protocol refuses leaves nothing running.
                line = new OfflineLine(client, samples, _clip.frequency, _clip.channels, options);
            }
            catch (System.ArgumentException e) // a sample rate or channel count the protocol refuses
            {
                Show(e.Message, HelpType.Error);
                return;
            }
            _client = client;
            _line = line;
            KsdiffTransports.Track(_client); // stopped before a domain reload like every client
            _client.Start();
            _connectStart = _client.Now();
            Show("connecting to " + _pub + " ...", HelpType.Info);
            EditorApplication.update += Tick;
        }

        void Tick()
        {
            if (_client == null) return;
            double now = _client.Now();
            if (_line.State == OfflineLineState.Idle)
            {
                // Start once the SUB is live (a hello came), so the line's first frames are not missed.
                ClientStatus s = _client.Status();
                if (s.State == ClientState.Live) _line.Start();
                else if (s.State == ClientState.Failed) Finish(s.LastError, HelpType.Error);
                else if (now - _connectStart > 10) Finish("the runtime is not reachable at " + _pub + " (" + s.State + "): is `ksdiff-runtime serve` running?", HelpType.Error);
                return;
            }
            OfflineLineState state = _line.Update();
            if (state == OfflineLineState.Collecting) Show("animating: " + _line.Recorder.Count + " frames", HelpType.Info);
            else if (state == OfflineLineState.Failed) Finish(_line.Failure, HelpType.Error);
            else if (state == OfflineLineState.Done) Save();
            Repaint();
        }

        void Save()
        {
            List<Frame> frames = _line.Recorder.Frames();
            List<ulong> missing = _line.Recorder.Missing(_line.Total ?? (ulong)frames.Count);
            ClientStatus status = _client.Status();
            BakeRig rig = Rig(_face, status.Blendshapes);
            FaceMapping mapping;
            List<BakedCurve> curves = AnimationBake.Curves(frames, rig, out mapping);
            uint fps = frames.Count > 0 ? frames[0].Fps : 30;
            var clip = new AnimationClip { frameRate = fps };
            foreach (BakedCurve c in curves)
            {
                System.Type type = c.Component == "Transform" ? typeof(Transform) : typeof(SkinnedMeshRenderer);
                clip.SetCurve(c.Path, type, c.Property, Linear(c.Times, c.Values));
            }
            clip.EnsureQuaternionContinuity();
            string path = EditorUtility.SaveFilePanelInProject("Save the baked line", _clip.name + "_face", "anim", "Where to save the AnimationClip");
            if (string.IsNullOrEmpty(path))
            {
                Finish("not saved", HelpType.Warning);
                return;
            }
            AssetDatabase.CreateAsset(clip, path);
            AssetDatabase.SaveAssets();
            string note = frames.Count + " frames, " + curves.Count + " curves saved to " + path;
            if (missing.Count > 0) note += "; " + missing.Count + " frames never arrived (their curves interpolate over them)";
            string report = mapping.TakeReport();
            if (report != null) note += "\n" + report;
            Finish(note, missing.Count > 0 || report != null ? HelpType.Warning : HelpType.Info);
        }

        // The face driver's meshes and bones, with paths under its character root.
        static BakeRig Rig(KsdiffFaceDriver face, string[] wireNames)
        {
            Transform root = face.characterRoot != null ? face.characterRoot : face.transform;
            var rig = new BakeRig
            {
                Remap = face.remap != null ? face.remap.entries : null, WireNames = wireNames, NeckShare = face.neckShare,
                MaxHeadRadians = face.maxHeadAngle * Mathf.Deg2Rad, MaxEyeRadians = face.maxEyeAngle * Mathf.Deg2Rad,
            };
            foreach (SkinnedMeshRenderer r in face.renderers)
            {
                if (r == null || r.sharedMesh == null) continue;
                var names = new List<string>();
                for (int i = 0; i < r.sharedMesh.blendShapeCount; i++) names.Add(r.sharedMesh.GetBlendShapeName(i));
                rig.Meshes.Add(new BakeMesh { Path = AnimationUtility.CalculateTransformPath(r.transform, root), ShapeNames = names });
            }
            rig.Head = Bone(root, face.head);
            rig.Neck = Bone(root, face.neck);
            rig.LeftEye = Bone(root, face.leftEye);
            rig.RightEye = Bone(root, face.rightEye);
            return rig;
        }

        static BakeBone Bone(Transform root, Transform bone)
        {
            if (bone == null) return null;
            var character = new Quat(root.rotation.x, root.rotation.y, root.rotation.z, root.rotation.w);
            var world = new Quat(bone.rotation.x, bone.rotation.y, bone.rotation.z, bone.rotation.w);
            var local = new Quat(bone.localRotation.x, bone.localRotation.y, bone.localRotation.z, bone.localRotation.w);
            return new BakeBone { Path = AnimationUtility.CalculateTransformPath(bone, root), Binding = BoneBinding.Capture(character, world, local) };
        }

        // Keys joined by straight lines (each tangent is the slope to its neighbour), like the
        // live driver's linear interpolation between frames.
        static AnimationCurve Linear(float[] times, float[] values)
        {
            var keys = new Keyframe[times.Length];
            for (int i = 0; i < keys.Length; i++)
            {
                float into = i > 0 ? (values[i] - values[i - 1]) / (times[i] - times[i - 1]) : 0f;
                float outOf = i + 1 < keys.Length ? (values[i + 1] - values[i]) / (times[i + 1] - times[i]) : 0f;
                keys[i] = new Keyframe(times[i], values[i], into, outOf);
            }
            return new AnimationCurve(keys);
        }

        void Finish(string message, HelpType type)
        {
            EditorApplication.update -= Tick;
            if (_client != null)
            {
                KsdiffTransports.Untrack(_client);
                _client.Stop();
                _client = null;
            }
            _line = null;
            Show(message, type);
        }

        void Show(string message, HelpType type)
        {
            _message = message;
            _messageType = type;
            Repaint();
        }

        void OnDisable()
        {
            if (_client != null) Finish("closed", HelpType.Warning);
        }
    }
}
