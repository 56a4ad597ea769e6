"""`ksdiff-runtime devices`: the audio input devices (microphones) PortAudio sees."""

from __future__ import annotations

import argparse
import sys

from ksdiff_runtime.sources import SourceError, format_devices, list_input_devices


def configure_devices(p: argparse.ArgumentParser) -> None:
    p.description = ("List the audio input devices PortAudio sees: index, name, host API, input channels and "
                     "default sample rate; * marks the default. Choose a microphone by its index or by part of "
                     "its name. Exits with status 1 when PortAudio is missing or there is no input device.")
    p.set_defaults(func=run_devices)


def run_devices(args: argparse.Namespace) -> int:
    try:
        devices = list_input_devices()
    except SourceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(format_devices(devices))
    return 0
