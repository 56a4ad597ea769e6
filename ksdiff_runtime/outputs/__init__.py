"""Frame outputs besides the ZeroMQ PUB: Live Link Face (Unreal) and VMC (VTubing apps), over UDP.

Each adapter has the runtime's ``FrameOutput`` shape (``name``, ``send(frame)``, ``close()``)
and is passed as ``Runtime(outputs=[...])``; docs/OUTPUTS.md describes them.
"""
