// Sample: on-screen buttons that make an NPC speak its lines (OnGUI, so it works with either
// input system). Each line is an AudioClip (Load Type: Decompress On Load) and, optionally, what
// it says.
using Ksdiff.Unity;
using UnityEngine;

public sealed class KsdiffLineButtons : MonoBehaviour
{
    [System.Serializable]
    public sealed class Line
    {
        public AudioClip clip;
        [TextArea] public string transcript;
    }

    public KsdiffNpcVoice voice;
    public Line[] lines = new Line[0];

    void OnGUI()
    {
        GUILayout.BeginArea(new Rect(10, Screen.height - 40 * (lines.Length + 1) - 10, 360, 40 * (lines.Length + 1)));
        for (int i = 0; i < lines.Length; i++)
        {
            if (lines[i].clip != null && GUILayout.Button("Say: " + lines[i].clip.name, GUILayout.Height(34)))
                voice.Speak(lines[i].clip, lines[i].transcript);
        }
        if (voice != null && voice.Line != null)
            GUILayout.Label(voice.Line.State + " (audio " + (voice.Line.PlaybackDelayS * 1000).ToString("F0") + " ms after the first push)");
        GUILayout.EndArea();
    }
}
