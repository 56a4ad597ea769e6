"""Audio sources the runtime plays itself: a microphone or a file (SDK clients push audio instead)."""

from .base import OnAudio, OnEnd, Source, SourceError
from .file import FileSource
from .mic import MicSource, SettingsRefusedError, format_devices, list_input_devices, rescan_devices

__all__ = ["FileSource", "MicSource", "OnAudio", "OnEnd", "SettingsRefusedError", "Source", "SourceError",
           "format_devices", "list_input_devices", "rescan_devices"]
