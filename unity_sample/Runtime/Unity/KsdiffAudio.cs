// An AudioClip's samples for the runtime (shared by KsdiffNpcVoice and the editor's bake).
using UnityEngine;

namespace Ksdiff.Unity
{
    public static class KsdiffAudio
    {
        // Interleaved samples in -1..1, or null with the reason in `problem`.
        public static float[] Samples(AudioClip clip, out string problem)
        {
            problem = null;
            if (clip == null)
            {
                problem = "no clip";
                return null;
            }
            if (clip.loadState != AudioDataLoadState.Loaded && !clip.LoadAudioData())
            {
                problem = "clip '" + clip.name + "' could not be loaded";
                return null;
            }
            // A clip set to Load In Background is still loading after LoadAudioData returned true.
            if (clip.loadState != AudioDataLoadState.Loaded)
            {
                problem = "clip '" + clip.name + "' is still loading (Load In Background): try again once its loadState is Loaded";
                return null;
            }
            const string readable = "set its Load Type to Decompress On Load";
            var data = new float[clip.samples * clip.channels];
            if (!clip.GetData(data, 0))
            {
                problem = "clip '" + clip.name + "' is not readable: " + readable;
                return null;
            }
            // GetData of a clip kept compressed (Compressed In Memory, Streaming) may fill the array with
            // zeros and still return true (Unity's documentation): a silent face, with no reason given.
            if (clip.loadType != AudioClipLoadType.DecompressOnLoad && AllZero(data))
            {
                problem = "clip '" + clip.name + "' gave only silence, as a clip kept compressed does: " + readable;
                return null;
            }
            return data;
        }

        static bool AllZero(float[] data)
        {
            foreach (float x in data)
                if (x != 0f) return false;
            return true;
        }
    }
}
