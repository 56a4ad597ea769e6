"""The VTube Studio output's leftovers from earlier reviews, against the fake VTube Studio (tests/fake_vts.py) on
127.0.0.1, ephemeral ports: the delay a slow VTube Studio adds to the face, errors answered to parameter values,
custom parameters created without one round trip each, the token file (atomic, private), a home folder that
cannot be found, and a connection kept alive (or found dead) while the user takes their time with the popup.

Every wait is on a condition with a timeout; frames are paced like a live source.
"""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fake_vts import FakeVTubeStudio, authenticated

from ksdiff_runtime.outputs import vts as vts_module
from ksdiff_runtime.outputs.vts import CUSTOM_PARAMETERS, VtsOutput, default_token_path
from ksdiff_sdk import Frame, schema

TIMEOUT_S = 10.0
INJECT = "InjectParameterDataRequest"
CREATE = "ParameterCreationRequest"


def jaw_frame(index: int, fps: int, jaw: float, stream: str = "mic") -> Frame:
    """A frame whose jawOpen (-> MouthOpen) is ``jaw``: the value names the frame in VTube Studio."""
    bs = np.zeros(schema.NUM_BLENDSHAPES, np.float32)
    bs[schema.BLENDSHAPE_INDEX["jawOpen"]] = jaw
    return Frame(stream, index, index, fps, index / fps, bs, np.zeros(3, np.float32), np.zeros(4, np.float32), None,
                 0, 100.0, 1.0, False)


# --- 1. the delay a slow VTube Studio adds ------------------------------------------------------------
def measure_delay(vts: FakeVTubeStudio, out: VtsOutput, fps: int, seconds: float) -> tuple[float, float, float]:
    """Play ``seconds`` of frames at ``fps``, each with a MouthOpen of its own, and return the delay from a frame's
    send() to VTube Studio applying its values (median, 95th percentile, in seconds) over the frames that reached it,
    and the share of the frames that did (the others were replaced by a newer one before they went out)."""
    n = int(seconds * fps)
    jaws = [round(0.001 * (i + 1), 6) for i in range(n)]  # each frame's MouthOpen: 0.001, 0.002, ...
    handed: dict[float, float] = {}
    start = time.monotonic()
    for i, jaw in enumerate(jaws):
        pause = start + i / fps - time.monotonic()
        if pause > 0:
            time.sleep(pause)  # paced like a live source, not a synchronisation
        handed[jaw] = time.monotonic()
        out.send(jaw_frame(i, fps, jaw))
    # the last frame's values applied: everything before it has been too (or was replaced)
    assert vts.wait_for(lambda s: any(abs(i.values["MouthOpen"] - jaws[-1]) < 1e-7 for i in s.injections), 30.0)
    applied: dict[float, float] = {}
    for injection in vts.injections():
        jaw = round(injection.values["MouthOpen"], 6)
        if jaw in handed and jaw not in applied:  # its first time; later ones are keep-alives
            applied[jaw] = injection.t
    delays = [applied[jaw] - handed[jaw] for jaw in applied]
    return float(np.percentile(delays, 50)), float(np.percentile(delays, 95)), len(applied) / n



def delay_with(busy_s: float, fps: int, token_path: Path, seconds: float = 3.0) -> tuple[float, float, float]:
    """``measure_delay`` against a VTube Studio that takes ``busy_s`` per injection (one at a time)."""
    fake = FakeVTubeStudio()
    out = VtsOutput(fake.url, token_path=token_path)
    try:
        assert fake.wait_for(authenticated(), TIMEOUT_S)
        fake.busy_s[INJECT] = busy_s
        return measure_delay(fake, out, fps, seconds)
    finally:
        out.close()
        fake.close()


@pytest.mark.timeout(60)
def test_a_slow_vtube_studio_shows_each_frame_about_one_answer_after_it_came(token_path):
    """VTube Studio taking 100 ms per injection (a busy PC) while frames come at 30 fps: the output sends the newest
    values whenever VTube Studio has answered, so a frame is shown about 100 ms after it came. Before, 8 requests
    queued in VTube Studio and each frame was shown 0.8 s late (p50 824 ms)."""
    p50, p95, delivered = delay_with(0.1, 30, token_path)
    print(f"vts: 100 ms per answer, 30 fps: delay p50 {p50 * 1e3:.0f} ms, p95 {p95 * 1e3:.0f} ms, "
          f"{delivered:.0%} of the frames shown")
    assert p50 < 0.2 and p95 < 0.3  # one answer's time plus a frame's age and a busy machine's jitter


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("busy_s", "fps"), [(0.0, 60), (0.02, 30)])
def test_a_fast_vtube_studio_still_gets_nearly_every_frame(token_path, busy_s, fps):
    """The bound on requests awaiting an answer starves no VTube Studio that keeps up: at 60 fps with instant answers,
    and at 30 fps with 20 ms per answer, nearly every frame goes out, promptly."""
    p50, p95, delivered = delay_with(busy_s, fps, token_path)
    print(f"vts: {busy_s * 1e3:.0f} ms per answer, {fps} fps: delay p50 {p50 * 1e3:.0f} ms, p95 {p95 * 1e3:.0f} ms, "
          f"{delivered:.0%} of the frames shown")
    assert delivered >= 0.8 and p50 < busy_s + 0.03 and p95 < busy_s + 0.1


if __name__ == "__main__":  # the delay table: python tests/test_vts_leftovers.py [max in flight ...]
    import sys
    import tempfile

    for bound in [int(a) for a in sys.argv[1:]] or [vts_module.MAX_IN_FLIGHT]:
        vts_module.MAX_IN_FLIGHT = bound
        for busy, rate in [(0.0, 30), (0.0, 60), (0.02, 30), (0.02, 60), (0.1, 30), (0.1, 60)]:
            with tempfile.TemporaryDirectory() as folder:
                p50, p95, shown = delay_with(busy, rate, Path(folder) / "token", seconds=5.0)
            print(f"in flight <= {bound}: {busy * 1e3:3.0f} ms per answer, {rate} fps: delay p50 {p50 * 1e3:4.0f} ms, "
                  f"p95 {p95 * 1e3:4.0f} ms, {shown:4.0%} of the frames shown", flush=True)


# --- 2. errors answered to parameter values -----------------------------------------------------------
@pytest.mark.parametrize(("refused", "error_id", "custom"), [("MouthSmile", 454, False),
                                                              ("MouthSmile", 454, True)])
def test_a_parameter_vtube_studio_refuses_leaves_the_face_moving(vts, token_path, outputs, logs, refused, error_id,
                                                                  custom):
    """VTube Studio refuses a whole injection for one parameter in it: another plugin controls MouthSmile (454); its
    message names the parameter. The output leaves that one out and sends the others (the custom ones too), so the
    face goes on moving; said once, not per frame. Before, every injection carried it and was refused: the face
    froze for good."""
    vts.refuse_ids[refused] = error_id
    out = VtsOutput(vts.url, token_path=token_path, custom=custom)
    outputs.append(out)
    assert vts.wait_for(authenticated(), TIMEOUT_S)
    jaws = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    for i, jaw in enumerate(jaws):
        out.send(jaw_frame(i, 30, jaw))
        # the next frame once this one is shown or refused (a live source's pace would do; this is deterministic)
        assert vts.wait_for(lambda s, jaw=jaw: len(s.errors) >= 1 and any(
            abs(j.values["MouthOpen"] - jaw) < 1e-6 for j in s.injections), TIMEOUT_S), f"frame {jaw} never shown"
    shown = vts.injections()
    assert all(refused not in j.values for j in shown)
    if custom:  # the other custom parameters still go out
        assert set(CUSTOM_PARAMETERS) - {refused} <= set(shown[-1].values)
    assert vts.state.errors == [(INJECT, error_id)]  # refused once, then left out
    assert logs.count(refused) == 1


def test_custom_parameters_deleted_in_vtube_studio_are_made_again_at_once(vts, token_path, outputs):
    """The user deletes our custom parameters in VTube Studio: it refuses every injection that carries one (453,
    naming it). The output connects again, which re-creates all 52 in one round trip, and the face goes on with
    them. Left out one refused injection at a time instead (as fd322f8 did), 52 deleted parameters froze the face
    for 52 answers, and again each time they were tried."""
    out = VtsOutput(vts.url, token_path=token_path, custom=True)
    outputs.append(out)
    out.send(jaw_frame(0, 30, 0.1))
    assert vts.wait_for(lambda s: len(s.injections) >= 1, TIMEOUT_S)
    vts.custom.clear()  # deleted in VTube Studio

    def moving_with_custom(s: Any) -> bool:
        return any(abs(j.values["MouthOpen"] - 0.2) < 1e-6 and set(CUSTOM_PARAMETERS) <= set(j.values)
                   for j in s.injections)

    deadline, index = time.monotonic() + TIMEOUT_S, 1
    while not moving_with_custom(vts.state) and time.monotonic() < deadline:
        out.send(jaw_frame(index, 30, 0.2))
        time.sleep(1 / 30)  # paced like a live source (30 fps), not a synchronisation
        index += 1
    assert vts.wait_for(moving_with_custom, TIMEOUT_S)
    assert vts.state.connections == 2  # one reconnection re-created them
    assert vts.state.errors.count((INJECT, 453)) <= 2  # not one per parameter


def test_the_last_frame_handed_over_before_close_goes_out_while_an_injection_awaits_its_answer(vts, token_path,
                                                                                                outputs):
    """A stream's last, neutral frame handed over just before close(), while the previous injection still awaits
    VTube Studio's answer (50 ms): it goes out once that answer comes, within the close's grace. With one injection
    in flight at a time it was dropped, and the model kept its last open mouth."""
    vts.busy_s[INJECT] = 0.05
    out = VtsOutput(vts.url, token_path=token_path)
    outputs.append(out)
    assert vts.wait_for(authenticated(), TIMEOUT_S)
    out.send(jaw_frame(0, 30, 0.5))
    assert vts.wait_for(lambda s: any(t == INJECT for _, _, t, _ in s.requests), TIMEOUT_S)  # in flight
    out.send(jaw_frame(1, 30, 0.0))
    out.close()
    assert vts.wait_for(lambda s: any(abs(j.values["MouthOpen"]) < 1e-9 for j in s.injections), TIMEOUT_S)


def test_a_refused_parameter_is_tried_again_later_and_sent_once_accepted(vts, token_path, outputs, monkeypatch):
    """Left out for LEFT_OUT_S (30 s; 0.3 s here), then tried again: once the other plugin has let MouthSmile go,
    the output drives it again, in the same session."""
    monkeypatch.setattr(vts_module, "LEFT_OUT_S", 0.3)
    vts.refuse_ids["MouthSmile"] = 454
    out = VtsOutput(vts.url, token_path=token_path)
    outputs.append(out)
    assert vts.wait_for(authenticated(), TIMEOUT_S)
    out.send(jaw_frame(0, 30, 0.1))
    assert vts.wait_for(lambda s: len(s.injections) >= 1, TIMEOUT_S)  # refused, then sent without MouthSmile
    del vts.refuse_ids["MouthSmile"]  # the other plugin stops
    deadline = time.monotonic() + TIMEOUT_S
    index = 1
    while not any("MouthSmile" in j.values for j in vts.injections()) and time.monotonic() < deadline:
        out.send(jaw_frame(index, 30, 0.2))
        time.sleep(1 / 30)  # paced like a live source (30 fps), not a synchronisation
        index += 1
    assert any("MouthSmile" in j.values for j in vts.injections())
    assert vts.state.connections == 1


# --- 3. custom parameters at startup -----------------------------------------------------------------
def test_custom_parameters_from_a_far_vtube_studio_are_created_in_about_one_round_trip(vts, token_path, outputs):
    """VTube Studio on another PC answers 100 ms after each request: the 52 ParameterCreationRequests go out together
    (their answers are matched by requestID), so the face moves about 0.1 s after authentication. One after the
    other, the values came 52 x 0.1 = 5.2 s after it, at every (re)connection."""
    vts.latency_s[CREATE] = 0.1
    out = VtsOutput(vts.url, token_path=token_path, custom=True)
    outputs.append(out)
    out.send(jaw_frame(0, 30, 0.5))
    assert vts.wait_for(lambda s: len(s.injections) >= 1, TIMEOUT_S)
    authenticated_at = max(t for t, _, kind, _ in vts.state.requests if kind == "AuthenticationRequest")
    took = vts.injections()[0].t - authenticated_at
    print(f"vts: 52 custom parameters 100 ms away: values {took:.2f} s after authentication")
    assert took < 1.0
    assert sorted(vts.state.created) == sorted(CUSTOM_PARAMETERS)
    assert set(CUSTOM_PARAMETERS) <= set(vts.injections()[0].values)  # every one created is sent
    assert vts.state.errors == []


def test_custom_parameters_refused_one_by_one_leave_the_others_sent(vts, token_path, outputs, logs):
    """Another plugin owns one of our names (error 352): that one is not sent, said once; the other 51 are."""
    taken = CUSTOM_PARAMETERS[3]
    vts.custom[taken] = ("other-plugin", "someone")
    out = VtsOutput(vts.url, token_path=token_path, custom=True)
    outputs.append(out)
    out.send(jaw_frame(0, 30, 0.5))
    assert vts.wait_for(lambda s: len(s.injections) >= 1, TIMEOUT_S)
    sent = set(vts.injections()[0].values)
    assert taken not in sent and set(CUSTOM_PARAMETERS) - {taken} <= sent
    assert logs.count(f"custom parameter {taken} not created") == 1


# --- 4. the token file ------------------------------------------------------------------------------
def test_the_token_folder_made_earlier_with_the_umask_is_made_private(vts, tmp_path, outputs, monkeypatch):
    """~/.config/ksdiff-runtime/ made before (an older version, the user, with the umask's 0755): storing the token
    makes it 0700, as documented; before, it stayed 0755 and anyone could list it."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    folder = tmp_path / "xdg" / "ksdiff-runtime"
    folder.mkdir(parents=True)
    os.chmod(folder, 0o755)
    out = VtsOutput(vts.url)  # the default token path, in the user's config directory
    outputs.append(out)
    assert vts.wait_for(authenticated(), TIMEOUT_S)
    token = folder / "vtube_studio_token"
    assert token.read_text().strip() in vts.tokens
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700 and stat.S_IMODE(token.stat().st_mode) == 0o600


def test_a_token_path_given_to_the_output_leaves_its_folder_as_it_is(vts, tmp_path, outputs):
    """A token path chosen by the caller may sit in any folder (their home, a project): it is not ours to chmod."""
    folder = tmp_path / "shared"
    folder.mkdir()
    os.chmod(folder, 0o755)
    out = VtsOutput(vts.url, token_path=folder / "token")
    outputs.append(out)
    assert vts.wait_for(authenticated(), TIMEOUT_S)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755 and stat.S_IMODE((folder / "token").stat().st_mode) == 0o600


def test_the_token_is_never_written_through_a_stale_or_planted_temporary_file(vts, token_path, tmp_path, outputs):
    """The temporary file is a new one each time (O_EXCL): a link left where a fixed name would be (a crash, or
    someone else in a folder they could write to) is not followed. Before, the token went into the link's target."""
    token_path.parent.mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    (token_path.parent / (token_path.name + ".tmp")).symlink_to(elsewhere)
    out = VtsOutput(vts.url, token_path=token_path)
    outputs.append(out)
    assert vts.wait_for(authenticated(), TIMEOUT_S)
    assert not elsewhere.exists()
    assert token_path.read_text().strip() in vts.tokens and not token_path.is_symlink()
    # nothing else is left beside the token (the planted link is not ours to remove)
    assert sorted(p.name for p in token_path.parent.iterdir()) == [token_path.name, token_path.name + ".tmp"]


def test_a_token_that_cannot_be_stored_is_used_and_said_once_not_asked_for_again_and_again(vts, token_path, outputs,
                                                                                          logs):
    """A token the file cannot hold (not ASCII: VTube Studio's are hex, a look-alike server's may not be): the
    session goes on with it and the failure is said once. Before, the encoding error ended the session as an
    unreadable answer and the next one asked again: a popup after every click on 'Allow'."""
    vts.next_token = "t\u00f6ken-\u00e9"
    out = VtsOutput(vts.url, token_path=token_path)
    outputs.append(out)
    out.send(jaw_frame(0, 30, 0.5))
    assert vts.wait_for(lambda s: len(s.injections) >= 1, TIMEOUT_S)
    assert vts.count("AuthenticationTokenRequest") == 1 and vts.state.connections == 1
    assert logs.count("cannot store the token") == 1
    assert not token_path.parent.exists() or list(token_path.parent.iterdir()) == []  # no half-written file


# --- 5. no home directory ------------------------------------------------------------------------------
def test_no_home_directory_gives_a_clear_warning_and_a_working_output_not_a_traceback(vts, outputs, logs,
                                                                                     monkeypatch):
    """A service or container with HOME unset and a user without a passwd entry: Path.home() raises RuntimeError,
    which stopped serve with a traceback when --vts was given. Now the output runs with the token kept in memory,
    and says once how to keep it. (getpwuid is made to fail as for a uid unknown to /etc/passwd: the test cannot
    change its own uid.)"""
    import pwd

    def no_entry(uid: int) -> pwd.struct_passwd:
        raise KeyError(f"getpwuid(): uid not found: {uid}")

    monkeypatch.delenv("HOME", raising=False)
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.setattr(pwd, "getpwuid", no_entry)
    assert default_token_path() is None
    out = VtsOutput(vts.url)
    outputs.append(out)
    out.send(jaw_frame(0, 30, 0.5))
    assert vts.wait_for(lambda s: len(s.injections) >= 1, TIMEOUT_S)
    assert logs.count("no home directory to keep VTube Studio's token in") == 1
    assert logs.count("Set XDG_CONFIG_HOME or HOME") == 1


# --- 6. the token popup left open ------------------------------------------------------------------
def test_a_popup_answered_late_keeps_its_connection_and_asks_once(vts, token_path, outputs, monkeypatch):
    """The user takes their time with the popup: the connection is checked (and kept busy for NATs) all along, and
    stays; when they click 'Allow', that same connection is authenticated; there is one popup, not a loop of them.
    (A probe every 0.1 s here stands for every 10 s: 15 of them pass before the click, as in 2.5 minutes.)"""
    monkeypatch.setattr(vts_module, "POPUP_PROBE_S", 0.1)
    vts.approve = None  # the popup stays open until answer_popup
    out = VtsOutput(vts.url, token_path=token_path)
    outputs.append(out)
    assert vts.wait_for(lambda s: vts.popup_requests == 1, TIMEOUT_S)
    assert vts.wait_for(lambda s: sum(kind == "APIStateRequest" for _, _, kind, _ in s.requests) >= 16, TIMEOUT_S)
    vts.answer_popup(True)
    assert vts.wait_for(authenticated(), TIMEOUT_S)
    out.send(jaw_frame(0, 30, 0.5))
    assert vts.wait_for(lambda s: len(s.injections) >= 1, TIMEOUT_S)
    assert vts.state.connections == 1 and vts.popup_requests == 1 and vts.count("AuthenticationTokenRequest") == 1
    assert token_path.read_text().strip() in vts.tokens


def test_a_vtube_studio_that_goes_silent_while_the_popup_is_open_is_reconnected(vts, token_path, outputs, logs,
                                                                                 monkeypatch):
    """VTube Studio's PC sleeps (or a cable is pulled) while the popup waits: nothing closes the connection, nothing
    comes. The output finds the connection dead and connects again, and is allowed there. Before, it waited for the
    popup's answer on the dead connection for ever: no parameters until serve restarted."""
    monkeypatch.setattr(vts_module, "POPUP_PROBE_S", 0.2)
    monkeypatch.setattr(vts_module, "REPLY_TIMEOUT_S", 0.5)
    vts.approve = None
    out = VtsOutput(vts.url, token_path=token_path)
    outputs.append(out)
    assert vts.wait_for(lambda s: vts.popup_requests == 1, TIMEOUT_S)
    vts.approve = True  # VTube Studio back: the next popup is allowed
    gone = vts.vanish()
    assert vts.wait_for(authenticated(), TIMEOUT_S)
    took = next(t for t, _, kind, _ in vts.state.requests if kind == "AuthenticationRequest") - gone
    print(f"vts: silent while the popup was open: authenticated on a new connection {took:.2f} s later")
    assert vts.state.connections == 2
    assert logs.count("stopped answering while its access popup was open") == 1
