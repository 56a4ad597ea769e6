#include "KsdiffLiveLinkSourceSettings.h"

UKsdiffLiveLinkSourceSettings::UKsdiffLiveLinkSourceSettings()
{
	// Frames carry the time of their audio instant: evaluate by engine time, interpolating.
	Mode = ELiveLinkSourceMode::EngineTime;
	// Where Live Link re-estimates the offset between a source's stamps and their arrival
	// (EngineTimeClockOffset), this read-behind is what keeps interpolation fed; where it does
	// not, it adds to JitterMargin. Either way a small, safe default (see the README).
	BufferSettings.EngineTimeOffset = 0.05f;
}
