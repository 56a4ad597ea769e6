"""Where frames go: the ZeroMQ PUB, Live Link Face (Unreal), VMC and VTube Studio (VTubing apps), and files.

The live ones are ``FrameOutput``s (base.py: ``name``, ``send(event)``, ``close()``): the ZeroMQ
PUB (zmq.py, every event), Live Link Face and VMC over UDP (frames), VTube Studio's plugin API over
WebSocket (vts.py, frames). files.py writes a bake's frames (CSV in the Live Link Face convention
of livelink.py, JSON). docs/OUTPUTS.md describes them.
"""
