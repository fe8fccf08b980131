"""The preflight's pure parts: the unit read as systemd reads it, the systemd-run command
derived from it, the one line read back, and the child's check in this process."""

import errno
import sys
from pathlib import Path

import pytest

from glmtts import install, preflight
from glmtts.errors import EngineLoadError
from tests.support.host import RecordingHost

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = "/srv/deploy"  # a rendered unit for a deploy tree somewhere else
UNIT = install.render_unit((ROOT / "ops/glmtts.service").read_text(), DEPLOY)
TEMPLATE = install.render_unit((ROOT / "ops/glmtts@.service").read_text(), DEPLOY)
DROP_IN = install.drop_in_text(["/home/ops/.pyenv/versions/3.11.9"])


def props(cmd):
    return [a.split("=", 1)[1] for a in cmd if a.startswith("--property=")]


def test_every_service_setting_of_the_real_unit_is_passed_or_skipped_for_a_reason():
    assigned = preflight.assignments([UNIT, DROP_IN], "glmtts.service")
    keys = {k for k, _ in assigned}
    cmd, limit_s = preflight.command(assigned, "glmtts.service")
    passed = props(cmd)
    for key in keys - set(preflight.SKIPPED):
        assert any(p.startswith(key + "=") for p in passed), key
    for key in keys & set(preflight.SKIPPED):
        assert not any(p.startswith(key + "=") for p in passed), key
    # the sandbox, as the unit and the installer's drop-in say it, in order
    for expected in ("User=glmtts", "Group=glmtts", "WorkingDirectory=%s" % DEPLOY, "ProtectSystem=strict",
                     "ReadWritePaths=/var/lib/glmtts /var/log/glmtts", "PrivateTmp=yes", "NoNewPrivileges=yes",
                     "CapabilityBoundingSet=", "EnvironmentFile=-/etc/glmtts/glmtts.env", "UMask=0027",
                     "DeviceAllow=char-nvidia rw", "SystemCallFilter=~@privileged", "RemoveIPC=yes",
                     "Environment=GLMTTS_CONFIG=/etc/glmtts/glmtts.toml PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1",
                     "BindReadOnlyPaths=/home/ops/.pyenv/versions/3.11.9"):
        assert expected in passed, expected
    assert passed.index("ProtectHome=yes") < passed.index("ProtectHome=tmpfs")  # the drop-in wins, as in systemd
    for never in ("Type=", "WatchdogSec=", "Restart=", "ExecStart=", "ExecReload=", "NotifyAccess=",
                  "StandardOutput=", "StandardError=", "TimeoutStartSec=", "RestartPreventExitStatus="):
        assert not any(p.startswith(never) for p in passed), never
    # the start budget bounds the one-shot instead
    assert limit_s == 15 * 60 and passed[0] == "RuntimeMaxSec=900"
    assert cmd[:5] == ["systemd-run", "--wait", "--pipe", "--collect", "--quiet"]
    tail = cmd[cmd.index("%s/.venv/bin/python" % DEPLOY):]
    assert tail == ["%s/.venv/bin/python" % DEPLOY, "-m", "glmtts.preflight", "--as", "glmtts.service",
                    "--writable", "/var/lib/glmtts", "--writable", "/var/log/glmtts"]


def test_unit_section_and_install_section_are_not_passed():
    passed = props(preflight.command(preflight.assignments([UNIT], "glmtts.service"), "glmtts.service")[0])
    assert not any(p.startswith(("StartLimitBurst=", "After=", "Wants=", "WantedBy=", "Description=")) for p in passed)


def test_template_specifiers_are_resolved_for_the_instance_checked():
    assigned = preflight.assignments([TEMPLATE], "glmtts@1.service")
    passed = props(preflight.command(assigned, "glmtts@1.service")[0])
    assert "Environment=CUDA_VISIBLE_DEVICES=1" in passed
    assert "EnvironmentFile=/etc/glmtts/instance-1.env" in passed
    assert "SyslogIdentifier=glmtts@1" in passed and not any("%i" in p for p in passed)


def test_a_config_override_comes_after_the_units_environment():
    assigned = preflight.assignments([UNIT], "glmtts.service")
    cmd, _ = preflight.command(assigned, "glmtts.service", config="/etc/glmtts/other.toml", text="hello")
    assert props(cmd)[-1] == "Environment=GLMTTS_CONFIG=/etc/glmtts/other.toml"
    assert cmd[-2:] == ["--text", "hello"]


@pytest.mark.parametrize("text,expected", [
    ("[Service]\nUser=a\n", [("User", "a")]),
    ("[Unit]\nUser=no\n[Service]\n# c\n; c\nUser=a\n", [("User", "a")]),
    ("[Service]\nReadWritePaths=/a \\\n  /b\n", [("ReadWritePaths", "/a /b")]),
    ("[Service]\n  Environment = A=1 B=2 \n", [("Environment", "A=1 B=2")]),
    ("[Service]\nCapabilityBoundingSet=\n", [("CapabilityBoundingSet", "")]),
])
def test_parse_section(text, expected):
    assert preflight.parse_section(text) == expected


def test_list_values_follow_appends_and_empty_resets():
    assigned = [("ReadWritePaths", "/a -/b"), ("ReadWritePaths", ""), ("ReadWritePaths", "/c"), ("ReadWritePaths", "/d")]
    assert preflight.list_value(assigned, "ReadWritePaths") == ["/c", "/d"]


@pytest.mark.parametrize("span,expected", [("15min", 900), ("180", 180), ("1h 30s", 3630), ("90s", 90),
                                           ("500ms", 0.5), ("infinity", None)])
def test_time_spans(span, expected):
    assert preflight.seconds(span) == expected


def tree_host(root, files, **kw):
    """The recording host over a directory tree at ``root`` holding ``files`` (path -> text)."""
    for p, text in files.items():
        f = root / p.lstrip("/")
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
    return RecordingHost(root, offline=False, **kw)


def test_unit_texts_apply_drop_ins_by_name_and_the_installers_pending_writes(tmp_path):
    etc = "/etc/systemd/system"
    tree = tree_host(tmp_path, {etc + "/glmtts.service": UNIT, etc + "/glmtts.service.d/50-local.conf": "[Service]\nUser=local\n",
                 etc + "/glmtts.service.d/notes.txt": "ignored", "/run/systemd/system/glmtts.service.d/05-rt.conf": "[Service]\nNice=5\n"})
    texts = preflight.unit_texts(tree, "glmtts.service", {etc + "/glmtts.service.d/10-deploy-paths.conf": DROP_IN})
    assert texts == [UNIT, "[Service]\nNice=5\n", DROP_IN, "[Service]\nUser=local\n"]
    assert preflight.last(preflight.assignments(texts, "glmtts.service"), "User") == "local"
    # the installer about to remove its drop-in: it is not read
    texts = preflight.unit_texts(tree, "glmtts.service", {etc + "/glmtts.service.d/50-local.conf": None})
    assert texts == [UNIT, "[Service]\nNice=5\n"]
    with pytest.raises(preflight.PreflightError, match="glmtts@0.service is not installed"):
        preflight.unit_texts(tree, "glmtts@0.service")


WHERE = "glmtts.service's sandbox: user glmtts, ProtectSystem=strict"


def test_read_result_takes_the_marked_line_among_engine_chatter():
    out = "loading...\nglmtts-preflight: ok engine espeak loaded in 0.40 s; '你好。' -> 0.51 s\n"
    r = preflight.read_result(0, out, "warnings\n", WHERE)
    assert r.ok and r.exit_code == 0
    assert r.line == "preflight ok (%s): engine espeak loaded in 0.40 s; '你好。' -> 0.51 s" % WHERE
    r = preflight.read_result(3, "glmtts-preflight: FAILED: engine x load(): weights missing\n", "", WHERE)
    assert not r.ok and r.exit_code == 3 and r.line == "preflight FAILED (%s): engine x load(): weights missing" % WHERE


@pytest.mark.parametrize("rc,stderr,expected", [
    (203, "", "the unit's interpreter cannot be executed in the sandbox (status 203/EXEC)"),
    (217, "", "the unit's User= does not exist (status 217/USER)"),
    (1, "Failed to connect to bus: No such file or directory\n", "systemd-run --wait needs the D-Bus system bus"),
    (1, "Unknown assignment: Frobnicate=yes\n", "the preflight did not report (exit 1): Unknown assignment: Frobnicate=yes"),
    (None, "", "no answer within 900 s"),
])
def test_read_result_without_a_line_still_says_what_failed(rc, stderr, expected):
    r = preflight.read_result(rc, "", stderr, WHERE, 900)
    assert not r.ok and r.exit_code == 1 and expected in r.line and "\n" not in r.line


def _raised(exc, wrap=None):
    try:
        try:
            raise exc
        except Exception as inner:
            if wrap is None:
                raise
            raise wrap from None  # the engine registry does this: the original is still __context__
    except Exception as e:
        return e


def test_explain_names_the_read_only_path_and_the_fix():
    e = _raised(OSError(errno.EROFS, "Read-only file system", "/venv/site-packages/tn/zh_tn_tagger.fst"))
    code, line = preflight.explain(e, "load()", "glmtts", "glmtts.service", ["/var/lib/glmtts", "/var/log/glmtts"])
    assert code == 3
    assert line == ("engine glmtts load() cannot write /venv/site-packages/tn/zh_tn_tagger.fst: read-only file system "
                    "(ProtectSystem=strict in glmtts.service leaves only /var/lib/glmtts /var/log/glmtts writable); "
                    "fix: make the engine write under /var/lib/glmtts, or let it write there with a drop-in "
                    "`ReadWritePaths=/venv/site-packages/tn` (systemctl edit glmtts.service)")


def test_explain_a_missing_dependency_even_behind_a_wrapper():
    e = _raised(ModuleNotFoundError("No module named 'torchaudio'", name="torchaudio"), EngineLoadError("front end failed"))
    code, line = preflight.explain(e, "load()", "glmtts")
    assert code == 3 and "missing dependency: no module named 'torchaudio' in %s" % sys.prefix in line
    assert "-m pip install torchaudio" in line
    # a typo in engine.name is a configuration error, not a missing dependency
    e = _raised(ModuleNotFoundError("No module named 'mypkg'", name="mypkg"))
    assert "missing dependency" not in preflight.explain(e, "import", "mypkg.engine:E")[1]


def test_explain_keeps_an_engine_errors_own_message_and_code():
    code, line = preflight.explain(EngineLoadError("ckpt/llm.safetensors not found in /opt/GLM-TTS"), "load()", "glmtts")
    assert code == 3 and line == "engine glmtts load(): ckpt/llm.safetensors not found in /opt/GLM-TTS"
    code, line = preflight.explain(_raised(RuntimeError("boom")), "synthesize()", "x:Y")
    assert code == 1 and line.startswith("engine x:Y synthesize(): RuntimeError: boom (at ")


def _config(tmp_path, engine):
    path = tmp_path / "glmtts.toml"
    path.write_text('[engine]\nname = "%s"\n' % engine)
    return str(path)


def test_check_in_process_speaks_and_says_it_had_no_sandbox(tmp_path):
    r = preflight.in_process(_config(tmp_path, "espeak"), reason="--in-process")
    assert r.ok and r.exit_code == 0, r.line
    assert r.line.startswith("preflight ok (WITHOUT the unit's sandbox: in-process as ")
    assert "engine espeak loaded in " in r.line and "s of audio at 24000 Hz" in r.line


def test_check_fails_on_silence_and_on_a_broken_load(tmp_path):
    r = preflight.in_process(_config(tmp_path, "tests.plugins.faults:BrokenEngine"))
    assert not r.ok and r.exit_code == 3
    assert "load(): test engine cannot load: weights file ckpt/missing.safetensors not found" in r.line
    r = preflight.in_process(_config(tmp_path, "tests.plugins.preflight_engines:SilentEngine"))
    assert not r.ok and r.exit_code == 1 and "gave silence or next to nothing" in r.line


def test_child_prints_one_marked_line_on_stdout(tmp_path, capfd):
    code = preflight.main(["--config", _config(tmp_path, "espeak"), "--text", "hello"])
    out = capfd.readouterr().out
    assert code == 0 and out.count("\n") == 1 and out.startswith("glmtts-preflight: ok engine espeak loaded in ")
    assert "'hello' -> " in out


def test_engines_check_without_systemd_runs_in_process_and_says_so(tmp_path, capsys):
    from glmtts import cli
    from glmtts.cli import engines as cmd_engines

    assert cmd_engines.why_no_sandbox("glmtts.service", booted=str(tmp_path / "absent")) == "systemd is not PID 1 here"
    rc = cli.main(["--config", _config(tmp_path, "espeak"), "engines", "check", "--in-process"])
    lines = capsys.readouterr().out.splitlines()
    assert rc == 0 and len(lines) == 1
    assert lines[0].startswith("preflight ok (WITHOUT the unit's sandbox: in-process as ") and "--in-process" in lines[0]
    rc = cli.main(["--config", _config(tmp_path, "tests.plugins.faults:BrokenEngine"), "engines", "check", "--in-process"])
    assert rc == 3 and capsys.readouterr().out.startswith("preflight FAILED (WITHOUT the unit's sandbox")


def test_engines_check_with_the_unit_installed_uses_its_sandbox(tmp_path, monkeypatch, capsys):
    from glmtts import cli
    from glmtts.cli import engines as cmd_engines

    host = tree_host(tmp_path, {"/etc/systemd/system/glmtts.service": UNIT}, answers={
        "systemd-run": (0, "glmtts-preflight: ok engine espeak loaded in 0.40 s; 'x' -> 0.51 s\n", "")})
    monkeypatch.setattr(cmd_engines, "why_no_sandbox", lambda unit: None)
    monkeypatch.setattr(cmd_engines.os, "geteuid", lambda: 0)
    args = cli.build_parser().parse_args(["--config", "/etc/glmtts/x.toml", "engines", "check"])
    assert cmd_engines.run_check(args, host=host) == 0
    assert capsys.readouterr().out == ("preflight ok (glmtts.service's sandbox: user glmtts, ProtectSystem=strict): "
                                       "engine espeak loaded in 0.40 s; 'x' -> 0.51 s\n")
    [(_, cmd, _)] = host.calls
    assert "--property=Environment=GLMTTS_CONFIG=/etc/glmtts/x.toml" in cmd
    monkeypatch.setattr(cmd_engines.os, "geteuid", lambda: 1000)
    assert cli.main(["engines", "check"]) == 1
    assert "needs root: sudo glmtts engines check" in capsys.readouterr().err


def test_engines_help_describes_check(capsys):
    from glmtts import cli

    with pytest.raises(SystemExit):
        cli.main(["engines", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "check load the configured engine and synthesize once, inside the installed unit's sandbox" in text
