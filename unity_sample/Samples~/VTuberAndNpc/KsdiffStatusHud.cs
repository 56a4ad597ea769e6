// Sample: a corner overlay with the connection's health in the Game view (the inspector shows
// the same in the editor): state, and per stream its fps, latency and lost frames.
using System.Text;
using Ksdiff;
using Ksdiff.Unity;
using UnityEngine;

public sealed class KsdiffStatusHud : MonoBehaviour
{
    public KsdiffConnection connection;
    readonly StringBuilder _text = new StringBuilder();

    void OnGUI()
    {
        if (connection == null) return;
        ClientStatus s = connection.Status;
        _text.Length = 0;
        _text.Append("ksdiff: ").Append(s != null ? s.State.ToString() : "not connected");
        if (connection.Error != null) _text.Append(" - ").Append(connection.Error);
        if (s != null)
        {
            foreach (StreamStatus st in s.Streams.Values)
            {
                if (st.Ended) continue;
                _text.Append('\n').Append(st.Stream).Append(": ").Append(st.ReceiveFps.ToString("F0")).Append(" fps, latency ")
                     .Append(st.LatencyP95Ms.HasValue ? st.LatencyP95Ms.Value.ToString("F0") + " ms" : "-")
                     .Append(", lost ").Append(st.Dropped);
            }
        }
        GUI.Label(new Rect(10, 10, 600, 200), _text.ToString());
    }
}
