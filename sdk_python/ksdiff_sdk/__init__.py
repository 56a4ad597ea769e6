"""ksdiff-sdk: the Python client of ksdiff-runtime (wire protocol v1, protocol/SPEC.md).

    from ksdiff_sdk import Client
    with Client() as client:
        for frame in client.frames():
            print(frame.stream, frame.t_audio, frame["jawOpen"])
"""

from ksdiff_sdk import protocol, schema
from ksdiff_sdk.animation import Animation
from ksdiff_sdk.client import Client, StreamHandle
from ksdiff_sdk.errors import (
    BadAudioError,
    BadControlsError,
    BusyError,
    ClientClosedError,
    ForbiddenError,
    InternalError,
    KsdiffError,
    MalformedError,
    StreamLost,
    TooLargeError,
    UnknownStreamError,
    UnknownTypeError,
    UnsupportedVersionError,
)
from ksdiff_sdk.frame import Frame, remap, unity_weights
from ksdiff_sdk.protocol import DEFAULT_PUB_ENDPOINT, DEFAULT_ROUTER_ENDPOINT
from ksdiff_sdk.sync import LineSync, Pose

__all__ = [
    "DEFAULT_PUB_ENDPOINT",
    "DEFAULT_ROUTER_ENDPOINT",
    "Animation",
    "BadAudioError",
    "BadControlsError",
    "BusyError",
    "Client",
    "ClientClosedError",
    "ForbiddenError",
    "Frame",
    "InternalError",
    "KsdiffError",
    "LineSync",
    "MalformedError",
    "Pose",
    "StreamHandle",
    "StreamLost",
    "TooLargeError",
    "UnknownStreamError",
    "UnknownTypeError",
    "UnsupportedVersionError",
    "protocol",
    "remap",
    "schema",
    "unity_weights",
]
__version__ = "0.2.0"
