"""Where frames go: the ZeroMQ PUB, Live Link Face (Unreal) and VMC (VTubing apps), and animation files.

The live ones are ``FrameOutput``s (base.py: ``name``, ``send(event)``, ``close()``): the ZeroMQ
PUB (zmq.py, every event), Live Link Face and VMC over UDP (frames). files.py writes a bake's
frames (CSV in the Live Link Face convention of livelink.py, JSON). docs/OUTPUTS.md describes them.
"""
