"""Saved-voice names against a real service (espeak engine, UI on): unique
case-insensitively at save and at rename (409 voice_name_taken naming the other voice),
rename and delete from the API and from the UI's Voices tab (its Gradio endpoints), and
voices saved twice under one name before the rule existed: the oldest one answers, and
the service says so in its log."""

import io
import json
import os

import numpy as np
import pytest
import requests
import soundfile as sf

from tests.support.gradio_api import GradioAPI
from tests.support.service import ServiceProcess

pytestmark = pytest.mark.integration

TEXT = "你好，欢迎使用语音合成服务。"
TRANSCRIPT = "今天天气很好，我们一起去公园散步吧。"


def voice_like(f0, seconds=3.0, sr=16000):
    """A harmonic tone at ``f0`` with syllable-rate loudness: a reference whose pitch the
    espeak engine measures, so two of them (110 Hz, 240 Hz) give different voices."""
    t = np.arange(int(seconds * sr)) / sr
    tone = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4.0 * t) ** 2
    buf = io.BytesIO()
    sf.write(buf, (0.25 * tone * envelope / np.abs(tone).max()).astype(np.float32), sr, format="WAV")
    return buf.getvalue()


LOW, HIGH = voice_like(110.0), voice_like(240.0)


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    s = ServiceProcess(tmp_path_factory.mktemp("voices"), ui=True)
    s.start(timeout=120)
    yield s
    s.stop()


@pytest.fixture
def svc(running):
    """The module's service with no saved voices: each test starts from a clean state."""
    for v in running.get("/v1/voices").json()["data"]:
        assert running.delete("/v1/voices/" + v["id"]).status_code == 200
    return running


def save(svc, name, ref=LOW):
    return svc.post("/v1/voices", data={"name": name, "prompt_text": TRANSCRIPT},
                    files={"prompt_audio": ("ref.wav", ref, "audio/wav")})


def saved(svc, name, ref=LOW):
    r = save(svc, name, ref)
    assert r.status_code == 201, r.text
    return r.json()


def speak(svc, voice):
    return svc.post("/v1/audio/speech", json={"input": TEXT, "voice": voice, "seed": 3})


def patch(svc, voice_id, body):
    return requests.patch(svc.url + "/v1/voices/" + voice_id, json=body, timeout=60)


def names(svc):
    return sorted(v["name"] for v in svc.get("/v1/voices").json()["data"])


def test_a_name_is_unique_case_insensitively_at_save(svc):
    anna = saved(svc, "Anna")
    for clash in ("anna", " ANNA "):
        r = save(svc, clash, HIGH)
        assert r.status_code == 409, r.text
        assert r.json() == {"error": {
            "message": "a voice named 'Anna' already exists (%s); choose another name or rename/delete that one"
                       % anna["id"],
            "type": "invalid_request_error", "code": "voice_name_taken", "param": "name"}}
    assert names(svc) == ["Anna"]
    assert len(os.listdir(os.path.join(svc.state_dir, "voices"))) == 1, "a refused save left files behind"
    # a different name is fine, and so is no name (the id stands in)
    assert saved(svc, "Annabel")["name"] == "Annabel"
    nameless = saved(svc, "")
    assert nameless["name"] == nameless["id"]


@pytest.mark.parametrize("name", ["default", "Alloy", "voice_0123456789ab", "x" * 65])
def test_names_that_could_never_be_used_are_refused(svc, name):
    r = save(svc, name)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_name" and err["param"] == "name", err
    assert svc.get("/v1/voices").json()["data"] == []


def test_rename_checks_the_same_rule_and_the_new_name_works_at_once(svc):
    anna, bob = saved(svc, "Anna", LOW), saved(svc, "Bob", HIGH)
    r = patch(svc, bob["id"], {"name": "ANNA"})
    assert r.status_code == 409, r.text
    assert r.json()["error"]["code"] == "voice_name_taken" and anna["id"] in r.json()["error"]["message"]
    assert names(svc) == ["Anna", "Bob"]

    r = patch(svc, bob["id"], {"name": "  Carl "})
    assert r.status_code == 200, r.text
    assert r.json()["name"] == "Carl" and r.json()["id"] == bob["id"]
    assert svc.get("/v1/voices/" + bob["id"]).json()["name"] == "Carl"
    by_name, by_id = speak(svc, "carl"), speak(svc, bob["id"])  # names are looked up case-insensitively
    assert by_name.status_code == 200 and by_id.status_code == 200, (by_name.text, by_id.text)
    assert by_name.content == by_id.content
    assert by_name.content != speak(svc, anna["id"]).content, "the two references gave the same voice"
    r = speak(svc, "Bob")
    assert r.status_code == 404 and "'Bob'" in r.json()["error"]["message"], r.text
    # a voice may change the case of its own name
    assert patch(svc, anna["id"], {"name": "anna"}).json()["name"] == "anna"


@pytest.mark.parametrize("body, code", [({}, "invalid_name"), ({"name": "  "}, "invalid_name"),
                                        ({"name": 7}, "invalid_name"), ({"prompt_text": "x"}, "invalid_request"),
                                        (["Anna"], "invalid_json")])
def test_rename_refuses_bad_bodies_with_what_to_fix(svc, body, code):
    voice = saved(svc, "Anna")
    r = patch(svc, voice["id"], body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == code, r.text
    assert names(svc) == ["Anna"]


def test_rename_or_delete_of_an_unknown_voice_is_404(svc):
    for r in (patch(svc, "voice_0123456789ab", {"name": "X"}), svc.delete("/v1/voices/voice_0123456789ab")):
        assert r.status_code == 404 and r.json()["error"]["code"] == "voice_not_found", r.text
        assert "voice_0123456789ab" in r.json()["error"]["message"]


def test_delete_then_use_is_404_naming_the_voice(svc):
    voice = saved(svc, "Dora")
    assert speak(svc, "Dora").status_code == 200
    r = svc.delete("/v1/voices/" + voice["id"])
    assert r.status_code == 200 and r.json() == {"id": voice["id"], "object": "voice.deleted", "deleted": True}
    for ref in (voice["id"], "Dora"):
        r = speak(svc, ref)
        assert r.status_code == 404, r.text
        assert r.json()["error"]["code"] == "voice_not_found" and repr(ref) in r.json()["error"]["message"]
    assert svc.get("/v1/voices/" + voice["id"]).status_code == 404
    assert not os.path.exists(os.path.join(svc.state_dir, "voices", voice["id"]))
    assert saved(svc, "Dora")["name"] == "Dora", "a deleted voice's name is free again"


def test_duplicates_from_before_the_rule_the_oldest_answers_and_the_log_says_so(svc):
    older, newer = saved(svc, "Anna", LOW), saved(svc, "Erik", HIGH)
    # what a state directory from an older version can hold: two voices named Anna
    meta_path = os.path.join(svc.state_dir, "voices", newer["id"], "meta.json")
    with open(meta_path, encoding="utf-8") as f:
        meta = json.load(f)
    meta.update(name="Anna", created=older["created"] + 1)
    with open(meta_path, "w", encoding="utf-8") as f:
        json.dump(meta, f)

    r = speak(svc, "Anna")
    assert r.status_code == 200, r.text
    assert r.content == speak(svc, older["id"]).content != speak(svc, newer["id"]).content
    log = svc.stderr()
    assert "2 saved voices are named 'Anna' (%s, %s" % (older["id"], newer["id"]) in log, log[-2000:]
    # the way out: rename the newer one; both are then usable by name
    assert patch(svc, newer["id"], {"name": "Anna 2"}).status_code == 200
    assert speak(svc, "Anna 2").content == speak(svc, newer["id"]).content
    # and a new save of the name is refused while any voice has it
    assert save(svc, "ANNA").status_code == 409


def test_the_ui_voices_tab_saves_renames_and_deletes_with_the_api_rules(svc):
    ui = GradioAPI(svc.url)
    path = ui.upload("ref.wav", LOW)
    listing, which, status = ui.call("save_voice", ["Fay", ui.file(path, "ref.wav"), TRANSCRIPT])
    assert status.startswith("Saved voice Fay"), status
    fay = next(v for v in svc.get("/v1/voices").json()["data"] if v["name"] == "Fay")
    assert [fay["id"], "Fay"] == listing["data"][0][:2]
    other = saved(svc, "Gus")

    # renaming to a taken name: the API's 409 message on the page, nothing changed
    _listing, _which, _new_name, status = ui.call("rename_voice", [fay["id"], "gus"])
    assert "a voice named 'Gus' already exists (%s)" % other["id"] in status, status
    assert names(svc) == ["Fay", "Gus"]

    listing, _which, new_name, status = ui.call("rename_voice", [fay["id"], "Hanna"])
    assert status == "Renamed %s to Hanna." % fay["id"], status
    assert svc.get("/v1/voices/" + fay["id"]).json()["name"] == "Hanna"
    assert speak(svc, "hanna").status_code == 200

    listing, _which, status = ui.call("delete_voice", [fay["id"]])
    assert status == "Deleted %s." % fay["id"], status
    assert [row[0] for row in listing["data"]] == [other["id"]]
    assert speak(svc, fay["id"]).status_code == 404

    _listing, _which, status = ui.call("delete_voice", [None])
    assert "pick the voice to delete first" in status, status
