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
            var data = new float[clip.samples * clip.channels];
            if (!clip.GetData(data, 0))
            {
                problem = "clip '" + clip.name + "' is not readable: set its Load Type to Decompress On Load";
                return null;
            }
            return data;
        }
    }
}
