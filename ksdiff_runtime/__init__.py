"""ksdiff-runtime: speech to ARKit facial animation with KSDiff, streamed to game engines and VTubing apps."""

__version__ = "0.2.0"
