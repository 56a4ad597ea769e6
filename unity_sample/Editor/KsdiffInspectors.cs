// Inspectors: the connection's health (state, runtime, per-stream fps, latency and seq gaps) and
// the face driver's mapping (which ARKit shapes it drives, which it cannot).
using System.Linq;
using Ksdiff.Unity;
using UnityEditor;
using UnityEngine;
// Ksdiff.MessageType (the protocol's) would hide UnityEditor.MessageType inside namespace Ksdiff.
using HelpType = UnityEditor.MessageType;

namespace Ksdiff.Editor
{
    [CustomEditor(typeof(KsdiffConnection))]
    public sealed class KsdiffConnectionEditor : UnityEditor.Editor
    {
        public override bool RequiresConstantRepaint() { return Application.isPlaying; }

        public override void OnInspectorGUI()
        {
            DrawDefaultInspector();
            var connection = (KsdiffConnection)target;
            EditorGUILayout.Space();
            EditorGUILayout.LabelField("Runtime", EditorStyles.boldLabel);
            if (!KsdiffTransports.NetMQAvailable)
                EditorGUILayout.HelpBox("NetMQ transport not compiled: install NetMQ with NuGetForUnity and add KSDIFF_NETMQ to the " +
                                        "Scripting Define Symbols. Until then Auto uses native libzmq (editor and desktop only).", HelpType.Info);
            if (!Application.isPlaying)
            {
                EditorGUILayout.HelpBox("Connects in Play Mode.", HelpType.None);
                return;
            }
            if (connection.Error != null) EditorGUILayout.HelpBox(connection.Error, HelpType.Error);
            ClientStatus s = connection.Status;
            if (s == null) return;
            EditorGUILayout.LabelField("State", s.State.ToString());
            string hint = Hint(s, connection);
            if (hint != null) EditorGUILayout.HelpBox(hint, HelpType.Warning);
            EditorGUILayout.LabelField("Runtime", (s.RuntimeVersion ?? "-") + "   instance " + (s.Instance ?? "-"));
            EditorGUILayout.LabelField("Frames received", s.Frames.ToString());
            EditorGUILayout.LabelField("Seq gaps (frames lost)", s.Dropped.ToString());
            EditorGUILayout.LabelField("Refused / ignored messages", s.BadMessages + " / " + s.Ignored);
            EditorGUILayout.LabelField("Runtime restarts seen", s.Restarts.ToString());
            EditorGUILayout.LabelField("Audio dropped unsent", s.Unsent.ToString());
            EditorGUILayout.LabelField("Requests withdrawn unsent", s.Withdrawn.ToString());
            EditorGUILayout.LabelField("Messages sent again (busy)", s.Resent.ToString());
            if (!string.IsNullOrEmpty(s.LastError)) EditorGUILayout.LabelField("Last problem", s.LastError, EditorStyles.wordWrappedMiniLabel);

            EditorGUILayout.Space();
            EditorGUILayout.LabelField("Streams", EditorStyles.boldLabel);
            if (s.Streams.Count == 0) EditorGUILayout.LabelField("none yet");
            foreach (StreamStatus st in s.Streams.Values.OrderBy(x => x.Stream))
            {
                string latency = (st.LatencyP95Ms.HasValue ? st.LatencyP95Ms.Value.ToString("F0") : "-") + " ms (frames), " +
                                 (st.StatsLatencyP95Ms.HasValue ? st.StatsLatencyP95Ms.Value.ToString("F0") : "-") + " ms (stats)";
                EditorGUILayout.LabelField(st.Stream + (st.Source != null ? " (" + st.Source + ")" : "") + (st.Ended ? "  ended: " + (st.EndReason ?? "last frame") : ""),
                                           EditorStyles.miniBoldLabel);
                EditorGUI.indentLevel++;
                EditorGUILayout.LabelField("fps", st.ReceiveFps.ToString("F0"));
                EditorGUILayout.LabelField("latency p95", latency);
                EditorGUILayout.LabelField("frames / seq gaps", st.Frames + " / " + st.Dropped);
                EditorGUI.indentLevel--;
            }
        }

        static string Hint(ClientStatus s, KsdiffConnection c)
        {
            switch (s.State)
            {
                case ClientState.Connecting: return "No hello yet: is `ksdiff-runtime serve` running and publishing at " + c.pubEndpoint + "?";
                case ClientState.Stale: return "No hello for a few seconds: the runtime stopped or the network is down. Reconnecting by itself.";
                case ClientState.Failed: return s.LastError;
                default: return null;
            }
        }
    }

    [CustomEditor(typeof(KsdiffFaceDriver))]
    public sealed class KsdiffFaceDriverEditor : UnityEditor.Editor
    {
        bool _showMissing;

        public override bool RequiresConstantRepaint() { return Application.isPlaying; }

        public override void OnInspectorGUI()
        {
            DrawDefaultInspector();
            var driver = (KsdiffFaceDriver)target;
            EditorGUILayout.Space();
            if (GUILayout.Button("Check blendshape mapping")) driver.BuildMapping(null);
            FaceMapping m = driver.Mapping;
            if (m != null)
            {
                int total = Protocol.BlendshapeCount;
                EditorGUILayout.LabelField("ARKit shapes driven", (total - m.Missing.Count) + " of " + total);
                if (m.Missing.Count > 0)
                {
                    _showMissing = EditorGUILayout.Foldout(_showMissing, "Not driven (" + m.Missing.Count + ")");
                    if (_showMissing) EditorGUILayout.LabelField(string.Join(", ", m.Missing.ToArray()), EditorStyles.wordWrappedMiniLabel);
                }
                foreach (string p in m.Problems) EditorGUILayout.HelpBox("Remap entry matches no mesh: " + p, HelpType.Warning);
            }
            if (Application.isPlaying)
                EditorGUILayout.LabelField("Showing", (driver.ShownStream ?? "-") + "  " + driver.State + "  t_audio " + driver.ShownAudioTime.ToString("F2") + " s");
        }
    }
}
