"""`python -m benchmarks.bilabial_recognition`: does the phoneme recogniser hear the real voices' /p b m/?

The real-voice evaluation (`ksdiff-runtime eval --real`, training/real_eval.py) scores lip closure on the
medial /p/, /b/ and /m/ PocketSphinx aligns in held-out recorded prompts. The model reads the lips' cue
mostly from the recogniser's posteriorgram, so for each of those phones this asks what the recogniser
says over the same span the closure metric reads (the phone widened by a 30 fps frame each side): whether
any bilabial label (p, b or m) reaches a posterior of 0.3 on some 20 ms frame of it, and which labels are
the frames' argmax. Both recognisers: the runtime's (the distilled streaming one at its lookahead) and
hama's full-context one (the distillation's teacher, what the shipped model was trained on).
Writes benchmarks/bilabial_recognition.json; nothing is asserted, every figure is printed.
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

import numpy as np
from hama.vocab import Vocabulary
from tqdm import tqdm

from ksdiff_runtime import motion
from ksdiff_runtime.features.frontend import HAMA_BILABIALS
from ksdiff_runtime.features.recogniser_onnx import OnnxRecogniser
from ksdiff_runtime.features.streaming_frontend import LOOKAHEAD, WEIGHTS
from ksdiff_runtime.features.streaming_recogniser_onnx import OnnxStreamingRecogniser
from ksdiff_runtime.training.metrics import closure_span
from ksdiff_runtime.training.real_eval import BILABIALS, bilabial_phones, held_out_prompts

FRAME_S = 0.02  # the recogniser's output frame
HEARD = 0.3  # a bilabial label this likely on some frame of the span: the recogniser heard one


def spans(phones: list, fps: int = motion.FPS) -> list[tuple[str, float, float]]:
    """(phone, start, end) in seconds of each medial /p b m/, over the frames the closure metric reads
    (metrics.closure_span)."""
    out = []
    for i, medial in bilabial_phones(phones):
        if medial:
            a, b = closure_span(phones[i].start, phones[i].dur, fps)
            out.append((phones[i].name, a / fps, b / fps))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bilabial_recognition", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--max-prompts", type=int, default=0, help="held-out prompts used (0: all)")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "bilabial_recognition.json",
                   help="results file")
    args = p.parse_args(argv)
    labels = [*Vocabulary.load().decoder, "<wb>", "<blank>"]
    bilabial = [HAMA_BILABIALS[x] for x in BILABIALS]
    prompts, _ = held_out_prompts(args.max_prompts)
    streaming, full = OnnxStreamingRecogniser(WEIGHTS, LOOKAHEAD), OnnxRecogniser()
    recognisers = {f"streaming (lookahead {LOOKAHEAD})": streaming.whole, "full-context (hama)": full.log_probs}
    results = {}
    for name, log_probs in recognisers.items():
        heard = {b: [0, 0] for b in BILABIALS}
        argmax = {b: collections.Counter() for b in BILABIALS}
        for prompt in tqdm(prompts, desc=name, unit="prompt"):
            probs = np.exp(log_probs(prompt.audio))
            for phone, a, b in spans(prompt.phones):
                seg = probs[int(np.floor(a / FRAME_S)) : int(np.ceil(b / FRAME_S))]
                if not len(seg):
                    continue
                heard[phone][0] += int(seg[:, bilabial].max() >= HEARD)
                heard[phone][1] += 1
                said = {labels[j] for j in seg.argmax(-1)} - {"<blank>", "<wb>"}
                argmax[phone].update(said or {"(blank only)"})
        results[name] = {b: {"phones": heard[b][1], "heard": round(heard[b][0] / max(heard[b][1], 1), 3),
                             "argmax_labels": dict(argmax[b].most_common(8))} for b in BILABIALS}
    print(f"\n{len(prompts)} held-out prompts: medial /p b m/ with a bilabial label >= {HEARD} on some frame "
          "(argmax labels in the span, most common first)")
    for name, rows in results.items():
        for b, r in rows.items():
            top = ", ".join(f"{k} {v}" for k, v in r["argmax_labels"].items())
            print(f"{name:>28} /{b}/ (n = {r['phones']}): {r['heard']:.2f}   {top}")
    args.out.write_text(json.dumps({"prompts": len(prompts), "threshold": HEARD, "results": results}, indent=1,
                                   ensure_ascii=False) + "\n")
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
