"""The streaming recogniser: a stream fed in pieces gives the chunked recogniser's whole-clip output,
state is per stream, the full-context mode is the recogniser itself, and lookahead is bounded."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from ksdiff_runtime.assets import SAMPLE_SPEECH
from ksdiff_runtime.features import recogniser as rec
from ksdiff_runtime.features.streaming_recogniser import StreamingRecogniser, stream_latency_ms
from ksdiff_runtime.motion import SAMPLE_RATE

# The same numbers up to float32 rounding (matrix products of other shapes): measured <= 6e-4 on
# log-probabilities down to -26, and every argmax equal.
TOLERANCE = 1e-3


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def model() -> StreamingRecogniser:
    return StreamingRecogniser.from_hama_streaming(lookahead=2, left_frames=20)


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    audio, rate = sf.read(str(SAMPLE_SPEECH), dtype="float32")
    assert rate == SAMPLE_RATE
    return audio[: int(2.3 * SAMPLE_RATE) + 77]  # 2.3 s and a cut off the 20 ms grid


def _whole(model: StreamingRecogniser, audio: np.ndarray, lookahead: int) -> np.ndarray:
    with torch.no_grad():
        lp, lengths = model.forward_chunked(torch.from_numpy(audio)[None], lookahead=lookahead)
    return lp[0, : int(lengths[0])].numpy()


def _streamed(model: StreamingRecogniser, audio: np.ndarray, pieces: list[int], lookahead: int) -> np.ndarray:
    state = model.new_stream(lookahead)
    out, start, k = [], 0, 0
    while start < audio.size:
        n = pieces[k % len(pieces)]
        out.append(model.stream(state, audio[start : start + n]).numpy())
        start, k = start + n, k + 1
    out.append(model.finish(state).numpy())
    return np.concatenate(out)


@pytest.mark.parametrize("lookahead", [0, 1, 2, 3])
@pytest.mark.parametrize("piece_ms", [20, 40, 100])
def test_stream_in_pieces_equals_the_whole_clip(model, speech, lookahead, piece_ms) -> None:
    whole = _whole(model, speech, lookahead)
    got = _streamed(model, speech, [piece_ms * SAMPLE_RATE // 1000], lookahead)
    assert got.shape == whole.shape
    assert np.abs(got - whole).max() < TOLERANCE
    assert (got.argmax(1) == whole.argmax(1)).all()


def test_ragged_pieces_and_tiny_pieces(model, speech) -> None:
    whole = _whole(model, speech, 1)
    got = _streamed(model, speech, [1, 7, 159, 160, 321, 0, 2000, 33], 1)
    assert np.abs(got - whole).max() < TOLERANCE


def test_a_frame_is_emitted_as_soon_as_its_chunk_has_its_audio(model, speech) -> None:
    """Chunk of 3 frames (lookahead 2): frames 0-2 are final once audio reaches 320 * 3 + 40 samples."""
    state = model.new_stream(2)
    assert model.stream(state, speech[:999]).shape[0] == 0
    assert model.stream(state, speech[999:1000]).shape[0] == 3
    assert stream_latency_ms(2) == pytest.approx(1000 * (2 * 320 + 360) / SAMPLE_RATE)


def test_two_interleaved_streams_do_not_leak(model, speech) -> None:
    other = np.ascontiguousarray(0.5 * speech[::-1])  # another "speaker"
    a, b = model.new_stream(2), model.new_stream(2)
    out_a, out_b = [], []
    step = 640
    for start in range(0, speech.size, step):
        out_a.append(model.stream(a, speech[start : start + step]).numpy())
        out_b.append(model.stream(b, other[start : start + 2 * step // 3]).numpy())
        out_b.append(model.stream(b, other[start + 2 * step // 3 : start + step]).numpy())
    out_a.append(model.finish(a).numpy())
    out_b.append(model.finish(b).numpy())
    assert np.abs(np.concatenate(out_a) - _whole(model, speech, 2)).max() < TOLERANCE
    assert np.abs(np.concatenate(out_b) - _whole(model, other, 2)).max() < TOLERANCE


def test_future_audio_does_not_move_final_frames(model, speech) -> None:
    """The chunked recogniser's frames depend on no audio past their chunk (the full model's do)."""
    cut = 40 * 320
    changed = speech.copy()
    changed[cut + 400 :] = 0.3 * np.sin(np.arange(changed.size - cut - 400))
    a, b = _whole(model, speech, 3), _whole(model, changed, 3)
    final = cut // 320 // 4 * 4  # frames of the chunks that end before sample cut + 360
    assert np.abs(a[:final] - b[:final]).max() < TOLERANCE
    assert np.abs(a[final + 4 :] - b[final + 4 :]).max() > 0.1


def test_full_context_mode_is_the_recogniser(model, speech) -> None:
    """The streaming module's forward is the full-context recogniser, on the same weights."""
    full = rec.Recogniser.from_hama()
    wav = torch.from_numpy(speech)[None]
    with torch.no_grad():
        assert torch.equal(model(wav)[0], full(wav)[0])
    assert model.state_dict().keys() == full.state_dict().keys()


def test_batch_of_different_lengths_matches_one_at_a_time(model, speech) -> None:
    clips = [speech[:9000], speech[3000:], speech[5000:20000]]
    n = max(c.size for c in clips)
    wav = torch.zeros(len(clips), n)
    for i, c in enumerate(clips):
        wav[i, : c.size] = torch.from_numpy(c)
    lengths = torch.tensor([c.size for c in clips])
    with torch.no_grad():
        lp, out_lengths = model.forward_chunked(wav, lengths, lookahead=1)
    for i, c in enumerate(clips):
        alone = _whole(model, c, 1)
        assert int(out_lengths[i]) == alone.shape[0]
        assert np.abs(lp[i, : alone.shape[0]].numpy() - alone).max() < TOLERANCE


def test_refusals(model, speech) -> None:
    with pytest.raises(ValueError, match="lookahead"):
        model.new_stream(4)
    state = model.new_stream(0)
    model.stream(state, speech[:150])
    with pytest.raises(ValueError, match="200 samples"):
        model.finish(state)
    state = model.new_stream(0)
    model.stream(state, speech[:1000])
    model.finish(state)
    with pytest.raises(ValueError, match="finished"):
        model.stream(state, speech[:10])


def test_distillation_loss_and_checkpoint(model, speech, tmp_path) -> None:
    from ksdiff_runtime.training import streaming_distil as sd

    wav, lengths = sd.pad_batch([speech, speech[:20000]])
    with torch.no_grad():
        teacher, out_lengths = model(wav, lengths)
        student, _ = model.forward_chunked(wav, lengths, lookahead=0)
    assert float(sd.distil_loss(teacher, teacher, out_lengths)) == pytest.approx(0.0, abs=1e-6)
    assert float(sd.distil_loss(student, teacher, out_lengths)) > 0.1
    # a run of no steps writes a checkpoint that loads as the untrained chunked recogniser
    sd.train(tmp_path, minutes=0.0, batch_synthetic=1, batch_real=0, lr=1e-4, left_frames=20, checkpoint_s=60)
    loaded = sd.load_distilled(tmp_path / "last.pt")
    assert loaded.left_frames == 20
    pairs = zip(loaded.state_dict().values(), model.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)


def test_held_out_data_is_never_trained_on() -> None:
    from ksdiff_runtime.training import streaming_distil as sd

    train, test = set(sd.real_prompts("train")), set(sd.real_prompts("test"))
    assert not train & test
    assert all(sd.prompt_language(p) == "en" for p in test)
    # the same clip again (espeak-ng's output varies by a few samples between calls), and train differs
    a, b, c = sd.synthetic_clip("test", 3), sd.synthetic_clip("test", 3), sd.synthetic_clip("train", 3)
    assert abs(a.size - b.size) < 0.01 * a.size and abs(a.size - c.size) > 0.01 * a.size


@pytest.mark.parametrize("lookahead", [0, 2, 3])
@pytest.mark.parametrize("whole_clip", [False, True])
def test_the_step_module_is_the_chunked_recogniser(model, speech, lookahead, whole_clip) -> None:
    """StreamStep (the module exported as the ONNX step) in torch, a chunk a call or the whole clip in one, its state
    carried by the host as the runtime carries it: its gathered depthwise taps (cut at each chunk's end) and its STFT
    and convolutions as matrix products give the chunked recogniser's frames. Its log-mel is float32 where the
    reference's is float64, both rounded to float16: measured 1.1e-3 at most."""
    from ksdiff_runtime.features.streaming_recogniser import CONV_LEFT, StreamStep
    from ksdiff_runtime.features.streaming_recogniser_onnx import RecogniserStream

    step = StreamStep(model).eval()
    blocks, W = len(model.blocks), model.left_frames
    cache = np.zeros((blocks, rec.HEADS, W, rec.WIDTH // rec.HEADS), np.float32)
    s = RecogniserStream(lookahead + 1, cache, cache.copy(), np.zeros((blocks, CONV_LEFT, rec.WIDTH), np.float32),
                         np.zeros(W, np.float32), np.zeros(0, np.float32))
    s.push(speech)
    s.end()
    frames = s.ready_chunks() * s.chunk if whole_clip else None
    out = []
    with torch.no_grad():
        while s.ready_chunks():
            window = s.window(frames)
            state = (s.keys, s.values, s.conv, s.cache_valid)
            lp, *after = step(*(torch.from_numpy(a[None]) for a in window), torch.tensor(s.chunk),
                              *(torch.from_numpy(a[None]) for a in state))
            out.append(lp[0, : int(window[2].sum())].numpy())
            s.advance(*(a[0].numpy() for a in after), frames)
    got, whole = np.concatenate(out), _whole(model, speech, lookahead)
    assert got.shape == whole.shape
    assert np.abs(got - whole).max() < 5e-3
    assert (got.argmax(1) == whole.argmax(1)).all()
