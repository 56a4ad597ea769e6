"""What ships with the runtime: the trained model (checkpoint and its ONNX export) and a sample line."""

from pathlib import Path

ASSETS = Path(__file__).resolve().parent
CHECKPOINT = ASSETS / "ksdiff.pt"  # the trained model (torch; MODEL_CARD.md beside it)
SAMPLE_SPEECH = ASSETS / "sample_speech.wav"  # 16 kHz mono speech; its transcript in sample_speech.txt
