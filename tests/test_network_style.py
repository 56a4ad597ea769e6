"""A style take on the network's own style input (engine/network_style.py): the style encoder exported and run by
every backend, the take's vector and the network's response to it, the output's gains measured against that
response, and the take reaching a stream's denoiser rows, a bake and a server's clients."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from ksdiff_runtime import motion
from ksdiff_runtime.backends import load_backend
from ksdiff_runtime.backends.artifact import SHIPPED_EXPORT, STYLE_ENCODER_FILE, load_export
from ksdiff_runtime.backends.base import take_style
from ksdiff_runtime.backends.torch_backend import TorchBackend
from ksdiff_runtime.cli import main
from ksdiff_runtime.engine.controls import Controls
from ksdiff_runtime.engine.engine import StreamingEngine
from ksdiff_runtime.engine.network_style import RESPONSE_BOUNDS, NetworkStyles
from ksdiff_runtime.engine.style import MODEL_PROFILES, STYLES, StyleProfile, style_for
from ksdiff_runtime.model.checkpoint import load_model
from ksdiff_runtime.model.config import DEFAULT_CHECKPOINT

D = motion.NUM_BLENDSHAPES


@pytest.fixture(scope="module")
def shipped():
    """The shipped model in ONNX Runtime, as serve runs it."""
    return load_backend("onnxruntime", DEFAULT_CHECKPOINT, threads=1)


@pytest.fixture(scope="module")
def styles(shipped) -> NetworkStyles:
    return NetworkStyles(shipped)


def test_the_shipped_export_has_the_style_encoder_and_it_reads_takes_as_torch_does(shipped) -> None:
    _, _, manifest = load_export(SHIPPED_EXPORT)
    assert manifest["graphs"]["style_encoder"]["file"] == STYLE_ENCODER_FILE
    assert manifest["verify"]["max_abs_error"]["style_encoder"] < 1e-5
    model = load_model(DEFAULT_CHECKPOINT).float().eval()
    torch_backend = TorchBackend(model)
    for name in STYLES:
        take = style_for(name).take
        assert take is not None
        ref = model.style_of_take(torch.from_numpy(take[0]), torch.from_numpy(take[1])).numpy()
        for backend in (shipped, torch_backend):
            v = take_style(backend, *take)
            assert v.shape == (model.cfg.style_dim,) and np.linalg.norm(v) == pytest.approx(1.0, abs=1e-5)
            np.testing.assert_allclose(v, ref, atol=1e-5, err_msg=f"{name} on {backend.name}")
    # five takes, five styles: none the same vector
    vs = np.stack([take_style(shipped, *style_for(n).take) for n in STYLES])
    cos = vs @ vs.T
    assert np.all(cos[~np.eye(len(STYLES), dtype=bool)] < 0.999)


def test_a_take_shorter_than_the_style_window_holds_its_last_frame_and_an_empty_one_is_an_error(shipped) -> None:
    b, h = style_for("lively").take
    L = shipped.constants.cfg.style_clip_frames
    short = take_style(shipped, b[:40], h[:40])
    held = take_style(shipped, np.concatenate([b[:40], np.repeat(b[39:40], L - 40, 0)]),
                      np.concatenate([h[:40], np.repeat(h[39:40], L - 40, 0)]))
    np.testing.assert_allclose(short, held, atol=1e-6)
    with pytest.raises(ValueError, match="a take with no frames has no style"):
        take_style(shipped, b[:0], h[:0])


def test_the_network_follows_the_takes_and_the_gains_make_up_the_rest(styles: NetworkStyles) -> None:
    """The shipped network moves its brows and jaw less with the stillest take's vector and more with the most
    animated one's (measured baked: brows 0.70x and 1.23x, jaw 0.79x and 1.15x); each gain is the take's profile
    over the model's own scaled by that response, so the network and the gains together still aim at the take.
    Without a live measurement, live streams use the baked response."""
    still, animated = styles.attach(style_for("still")), styles.attach(style_for("animated"))
    for s in (still, animated):
        assert s.network.live is s.network.baked and s.network.response("live") is s.network.baked
        for v in s.network.baked.to_dict().values():
            assert RESPONSE_BOUNDS[0] <= v <= RESPONSE_BOUNDS[1]
    assert still.network.baked.expression < 0.9 < 1.1 < animated.network.baked.expression
    assert still.network.baked.articulation < 0.9 < 1.05 < animated.network.baked.articulation
    for made in ("live", "bake"):
        own = MODEL_PROFILES[made]
        for s in (still, animated):
            r, g, alone = s.network.response(made), s.gains(own, made), style_for(s.name).gains(own, made)
            assert g["brows"] == pytest.approx(np.clip(s.profile.expression / (own.expression * r.expression),
                                                       0.25, 6))
            assert g["jaw"] == pytest.approx(np.clip(s.profile.articulation / (own.articulation * r.articulation),
                                                     0.5, 2.0))
            assert (g["jaw"] - alone["jaw"]) * (r.articulation - 1) < 0  # the network did part of it
    # made once: the same take again is the same object's vector, no new measurement
    assert styles.attach(style_for("still")).network is still.network
    # nothing to attach: no style, or a style that is not a take of frames
    assert styles.controls(Controls()) == Controls()
    bare = style_for("calm").__class__("calm", style_for("calm").profile)
    assert styles.attach(bare) is bare and bare.network is None


def _frames(engine: StreamingEngine, audio: np.ndarray, style: str) -> np.ndarray:
    frames = engine.stream_clip(audio, controls=Controls.from_dict({"style": style}))
    return np.stack([np.concatenate([f.blendshapes, f.head]) for f in frames])


def test_a_streams_take_reaches_its_denoiser_rows_only_with_the_network_style_on(shipped,
                                                                               speech_16k: np.ndarray) -> None:
    """Live streams on the shipped model: with no style the two engines give the same frames; with a take, the
    network style changes the motion (the vector reaches the denoisers), and the stillest take's jaw still goes
    less far than the most animated one's."""
    audio = np.tile(speech_16k, 2)
    out: dict[tuple[bool, str], np.ndarray] = {}
    for on in (False, True):
        engine = StreamingEngine(shipped, "low-latency", front_end_threads=1, network_style=on)
        try:
            assert (engine.network_styles is not None) == on
            for style in ("none", "still", "animated"):
                out[on, style] = _frames(engine, audio, style)
        finally:
            engine.close()
    np.testing.assert_array_equal(out[True, "none"], out[False, "none"])
    for style in ("still", "animated"):
        assert np.abs(out[True, style] - out[False, style]).max() > 0.02, style
    jaw = {k: StyleProfile.of(v[:, :D], v[:, D:]).articulation for k, v in out.items()}
    assert jaw[True, "still"] < jaw[True, "none"] < jaw[True, "animated"], jaw


def test_set_controls_makes_a_file_take_ready_on_the_callers_thread(shipped, tmp_path: Path,
                                                                    speech_16k: np.ndarray) -> None:
    """A take given through the Python API (a bake of the sample line as the reference) is ready for the network
    when set_controls returns; an engine without the network style leaves it on the output."""
    take = tmp_path / "take.json"
    wav = tmp_path / "speech.wav"
    sf.write(wav, np.tile(speech_16k, 2), motion.SAMPLE_RATE, subtype="FLOAT")
    assert main(["bake", str(wav), "-o", str(take), "--seed", "1"]) == 0
    controls = Controls.from_dict({"style": str(take)}, allow_files=True)
    for on in (False, True):
        engine = StreamingEngine(shipped, "low-latency", front_end_threads=1, network_style=on)
        try:
            sid = engine.open_stream()
            engine.set_controls(sid, controls)
            style = engine.sessions.get(sid).controls.style
            assert style.name == str(take) and (style.network is not None) == on
            engine.end_stream(sid)
            while engine.has_work():
                engine.step()
        finally:
            engine.close()


def test_bake_with_the_network_style(tmp_path: Path, speech_wav: Path) -> None:
    out = {flag: tmp_path / f"{i}.json" for i, flag in enumerate((False, True))}
    for flag, path in out.items():
        extra = ["--network-style"] if flag else []
        assert main(["bake", str(speech_wav), "-o", str(path), "--seed", "2", "--style", "lively", *extra]) == 0
    a, b = (np.array([f["blendshapes"] for f in json.loads(p.read_text())["frames"]]) for p in out.values())
    assert a.shape == b.shape and np.isfinite(b).all() and b.min() >= 0 and b.max() <= 1
    assert np.abs(a - b).max() > 0.02


def test_a_servers_clients_styles_reach_the_network_ready_since_it_warmed_up(tmp_path: Path,
                                                                           speech_16k: np.ndarray) -> None:
    """`serve --network-style`: the built-in takes and the configured one are made ready as the engine warms up,
    so a client's open_stream or set_controls naming one costs the server's thread a lookup; the stream's controls
    carry the take's vector, and its frames come."""
    from peers import Peer, frames_of, is_end, push_clip, speech

    from ksdiff_runtime.engine.controls import stream_frames
    from ksdiff_runtime.outputs import files
    from ksdiff_runtime.server.runtime import Runtime, build_engine
    from ksdiff_sdk import protocol as P

    t = np.arange(90) / 30
    take = tmp_path / "streamer.csv"
    files.write_csv(take, np.full((90, 52), 0.1, np.float32), 0.03 * np.stack([np.sin(2 * np.pi * t)] * 3, axis=1),
                    np.zeros((90, 4), np.float32), 30)
    engine = build_engine("onnxruntime", "low-latency", network_style=True,
                          controls=Controls.from_dict({"style": str(take)}, allow_files=True))
    try:
        made = dict(engine.network_styles._made)
        assert {name for name, _ in made} == {*STYLES, str(take)}
        assert engine.controls.style.network is not None
        # measured live as well, as this engine streams: the stillest take's brows respond less, the most
        # animated one's more, than baked (measured: 0.69x and 1.52x live, 0.70x and 1.23x baked)
        still, animated = (made[n, style_for(n).profile] for n in ("still", "animated"))
        assert still.live is not still.baked and still.live.expression < 0.8 < 1.3 < animated.live.expression
        assert animated.live.expression > animated.baked.expression
        with Runtime(engine, pub="tcp://127.0.0.1:0", router="tcp://127.0.0.1:0", admission=False) as rt:
            peer = Peer(rt, P.frame_topic("styled"), P.stream_topic("styled"))
            try:
                peer.request("open_stream", stream="styled", sample_rate=16000, channels=1, format="f32le",
                             controls={"style": "animated"})
                assert rt.sessions.get("styled").controls.style.network is made["animated", style_for(
                    "animated").profile]
                back = peer.request("set_controls", stream="styled", controls={"style": "streamer.csv"})
                assert back["controls"]["style"] == "streamer.csv"
                assert rt.sessions.get("styled").controls.style.network is engine.controls.style.network
                pcm = speech(1.0, speech_16k).astype("<f4").tobytes()
                push_clip(peer, "styled", pcm, 4, 1600)
                peer.request("end_stream", stream="styled")
                frames = frames_of(peer.wait_pub(is_end("styled")), "styled")
            finally:
                peer.close()
        assert len(frames) == stream_frames(len(pcm) // 4, 30)
        assert engine.network_styles._made.keys() == made.keys()  # nothing made on the way
    finally:
        engine.close()
