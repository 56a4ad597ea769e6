"""Where a recorded /p b/ sits against its own closure (training/stop_timing.py): the quietest frame is
found, a stop is snapped onto it by espeak-ng's convention, its neighbours give or take the time down to a
minimum, a stop beside a pause or another stop is left alone, and ``--snap-stops`` writes such a corpus."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ksdiff_runtime.motion import SAMPLE_RATE
from ksdiff_runtime.training import metrics
from ksdiff_runtime.training import stop_timing as S


def _noise_with_gap(gap_s: tuple[float, float], seconds: float = 1.0) -> np.ndarray:
    """Loud noise with a silent closure between ``gap_s`` (seconds)."""
    audio = np.random.default_rng(0).normal(0.0, 0.1, int(seconds * SAMPLE_RATE))
    audio[int(gap_s[0] * SAMPLE_RATE) : int(gap_s[1] * SAMPLE_RATE)] = 0.0
    return audio.astype(np.float32)


def test_the_quietest_frame_is_the_closure() -> None:
    db = S.energy_db(_noise_with_gap((0.50, 0.56)))
    assert abs(S.quietest(db, 0.47) - 0.53) <= 0.011  # the gap's middle, found from 60 ms before it
    assert S.quietest(db, 2.0) is None  # past the audio's end


def test_a_stop_is_moved_onto_its_closure() -> None:
    audio = _noise_with_gap((0.50, 0.56))
    names = ["_", "a", "p", "a", "_"]
    start = np.array([0.0, 0.2, 0.45, 0.49, 0.8])
    dur = np.array([0.2, 0.25, 0.04, 0.31, 0.2])
    new_start, new_dur, moved = S.snap_stops(audio, names, start, dur)
    assert moved == 1
    quiet = S.quietest(S.energy_db(audio), start[2] + dur[2] / 2)  # found from the aligned centre
    assert abs(new_start[2] - (quiet - S.SYNTHETIC_QUIET_FROM_START_S)) < 1e-9  # espeak-ng's convention
    assert new_dur[2] == dur[2]  # the stop keeps its length
    np.testing.assert_allclose(new_start[:-1] + new_dur[:-1], new_start[1:])  # still contiguous
    assert new_start[0] == start[0] and new_start[-1] == start[-1] and new_dur[0] == dur[0]  # the rest stays
    assert new_dur[1] > dur[1] and new_dur[3] < dur[3]  # the vowel before gives, the one after takes


def test_a_snap_leaves_each_neighbour_a_minimum() -> None:
    audio = _noise_with_gap((0.50, 0.56))
    names = ["a", "p", "a", "t"]
    start = np.array([0.3, 0.45, 0.49, 0.51])  # the vowel after is 20 ms: the stop can move 10 ms
    dur = np.array([0.15, 0.04, 0.02, 0.3])
    new_start, new_dur, moved = S.snap_stops(audio, names, start, dur)
    assert moved == 1
    assert abs(new_dur[2] - S.MIN_PHONE_S) < 1e-9 and abs(new_start[1] - 0.46) < 1e-9


def test_a_stop_beside_a_pause_or_at_an_end_is_not_moved() -> None:
    audio = _noise_with_gap((0.50, 0.56))
    for names in (["a", "_", "p", "a"], ["a", "a", "p", "_"], ["p", "a", "a", "a"], ["a", "a", "a", "b"]):
        start = np.array([0.2, 0.4, 0.45, 0.49]) if names[0] != "p" else np.array([0.45, 0.49, 0.6, 0.7])
        dur = np.diff(np.append(start, 1.0))
        new_start, new_dur, moved = S.snap_stops(audio, names, start, dur)
        assert moved == 0 and np.array_equal(new_start, start) and np.array_equal(new_dur, dur), names


def test_a_snap_never_moves_a_stop_past_a_short_neighbour() -> None:
    audio = _noise_with_gap((0.40, 0.44))  # the silence 20-60 ms before the stop: it wants to move 22 ms earlier
    names = ["_", "a", "p", "a", "_"]
    start = np.array([0.0, 0.43, 0.45, 0.49, 0.8])  # the vowel before is 20 ms: the stop can move 10 ms
    dur = np.array([0.43, 0.02, 0.04, 0.31, 0.2])
    new_start, new_dur, moved = S.snap_stops(audio, names, start, dur)
    assert moved == 1 and abs(new_start[2] - 0.44) < 1e-9 and abs(new_dur[1] - S.MIN_PHONE_S) < 1e-9
    # both neighbours already under the minimum: the stop stays, no length goes negative
    start = np.array([0.0, 0.445, 0.45, 0.49, 0.495])
    dur = np.array([0.445, 0.005, 0.04, 0.005, 0.5])
    new_start, new_dur, moved = S.snap_stops(audio, ["_", "a", "p", "a", "_"], start, dur)
    assert moved == 0 and np.array_equal(new_start, start) and (new_dur > 0).all()


def test_two_stops_side_by_side_are_not_moved() -> None:
    audio = _noise_with_gap((0.50, 0.56))
    start = np.array([0.3, 0.45, 0.48, 0.51])
    dur = np.diff(np.append(start, 0.8))
    for names in (["a", "p", "b", "a"], ["a", "b", "p", "a"]):
        new_start, _, moved = S.snap_stops(audio, names, start, dur)
        assert moved == 0 and np.array_equal(new_start, start), names


def test_snap_stops_writes_a_corpus(tmp_path: Path) -> None:
    """``--snap-stops``: the synthetic clips by reference, a recorded prompt's stops moved and its targets made
    again from the moved phones."""
    import json

    from ksdiff_runtime.training.corpus import generate

    src = tmp_path / "corpus"
    generate(str(src), seed=3, n_train=1, n_test=1, clips_train=2, clips_test=1, workers=1, progress=False)
    manifest = json.loads((src / "manifest.json").read_text())
    # a synthetic clip standing in for a recorded prompt whose aligner put every phone 40 ms late
    entry = next(c for c in manifest["clips"] if c["split"] == "train")
    with np.load(src / entry["file"]) as z:
        clip = {k: z[k] for k in z.files}
    names = [str(p) for p in clip["phonemes"]]
    late = clip["phoneme_start"].astype(np.float64) + 0.04
    dur = clip["phoneme_dur"].astype(np.float64)
    expected, _, moved = S.snap_stops(clip["audio"], names, late, dur)
    assert moved > 0  # the clip has a stop between two sounding phones
    np.savez(src / "clips" / "r00000.npz", **dict(clip, phoneme_start=late.astype(np.float32)))
    manifest["clips"].append(dict(entry, id="r00000", kind="real", file="clips/r00000.npz"))
    (src / "manifest.json").write_text(json.dumps(manifest))

    out = tmp_path / "snapped"
    assert S.main(["--corpus", str(src), "--snap-stops", "--out", str(out)]) == 0
    written = json.loads((out / "manifest.json").read_text())["clips"]
    assert len(written) == len(manifest["clips"])
    for c in written:
        assert (out / c["file"]).is_file()  # synthetic clips by reference
    real = next(c for c in written if c.get("kind") == "real")
    with np.load(out / real["file"]) as z:
        assert z["blendshapes"].shape == clip["blendshapes"].shape
        np.testing.assert_allclose(z["phoneme_start"], expected, atol=1e-6)  # the stops moved, the rest as given
        assert not np.allclose(z["phoneme_start"], late)
        closed, total = metrics.bilabial_closures(z["blendshapes"], z["phonemes"], z["phoneme_start"], z["phoneme_dur"])
        assert total > 0 and closed == total  # the targets made again: the lips shut on the moved phones
