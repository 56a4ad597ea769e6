// Unity's audio clock (AudioSettings.dspTime) moves in steps of one audio buffer (about 20 ms at
// 48 kHz with 1024-sample buffers): sampled as it is, a face rendered at 60 fps would repeat poses
// and then jump. AudioClock interpolates between the steps with a fine-grained clock (the
// realtime clock), never running more than one step ahead of the audio and never backwards.
using System;

namespace Ksdiff
{
    public sealed class AudioClock
    {
        double _coarse = double.NaN; // the last audio clock value seen
        double _fineAtStep;          // the fine clock when it changed
        double _last = double.NegativeInfinity;

        // `coarse`: the audio clock now; `fine`: a smooth clock in seconds (any epoch); `maxStep`:
        // the audio clock's step (buffer length / sample rate), the most it may be extrapolated.
        public double Sample(double coarse, double fine, double maxStep)
        {
            if (coarse != _coarse)
            {
                _coarse = coarse;
                _fineAtStep = fine;
            }
            double t = _coarse + Math.Max(0, Math.Min(fine - _fineAtStep, maxStep));
            if (t < _last) t = _last; // a new step below the extrapolation: hold, do not go back
            _last = t;
            return t;
        }
    }
}
