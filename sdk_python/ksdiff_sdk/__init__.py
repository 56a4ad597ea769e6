"""ksdiff-sdk: the Python client of ksdiff-runtime (wire protocol v1, protocol/SPEC.md)."""

from ksdiff_sdk import protocol, schema

__all__ = ["protocol", "schema"]
__version__ = "0.1.0"
