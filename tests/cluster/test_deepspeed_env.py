"""`ardiff deepspeed-env`: the .deepspeed_env file the DeepSpeed hostfile launcher exports on every host."""

import os
import stat
import subprocess
import sys
from pathlib import Path

from deepspeed.launcher.multinode_runner import PDSHRunner

from ardiff_scale.cli import main

SECRET = "wJalr/XUtnFEMI+K7MDENG=bPxRfiCY"


def run(tmp_path: Path, monkeypatch, capsys, *args: str, **extra: str) -> tuple[int, str]:
    for name in [n for n in os.environ if n.startswith(("AWS_", "MLFLOW_", "ARDIFF_", "HF_", "NCCL_", "GLOO_",
                                                          "FSSPEC_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("ARDIFF_X", "two words")
    monkeypatch.setenv("UNRELATED_TOKEN", "do-not-travel")
    monkeypatch.setenv("MLFLOW_RUN_ID", "set-per-process")
    for name, value in extra.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    status = main(["deepspeed-env", *args])
    return status, capsys.readouterr().out


def launcher_exports(path: Path) -> dict[str, str]:
    """What deepspeed/launcher/runner.py does with the file: split each line at its first '=' and hand it to
    the multi-node runner's add_export, which strips it and quotes it for the remote shell."""
    runner = PDSHRunner.__new__(PDSHRunner)  # the default runner of `deepspeed --hostfile`
    runner.exports = {}
    for line in path.read_text().splitlines(keepends=True):
        key, value = line.split("=", maxsplit=1)
        runner.add_export(key, value)
    return runner.exports


def test_writes_the_travelling_variables_and_prints_only_their_names(tmp_path, monkeypatch, capsys):
    status, out = run(tmp_path, monkeypatch, capsys)
    assert status == 0
    written = tmp_path / ".deepspeed_env"
    assert written.read_text().splitlines() == [
        "ARDIFF_X=two words", "AWS_ENDPOINT_URL=http://127.0.0.1:9000", f"AWS_SECRET_ACCESS_KEY={SECRET}"]
    assert stat.S_IMODE(written.stat().st_mode) == 0o600  # credentials
    assert "AWS_SECRET_ACCESS_KEY" in out and "ARDIFF_X" in out and "deepspeed --hostfile" in out
    assert SECRET not in out and "127.0.0.1:9000" not in out and "UNRELATED" not in out
    # The launcher reads it back as the same variables, quoted where the remote shell needs it.
    assert launcher_exports(written) == {"ARDIFF_X": '"two words"', "AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
                                         "AWS_SECRET_ACCESS_KEY": SECRET}


def test_refuses_to_overwrite_unless_forced(tmp_path, monkeypatch, capsys):
    target = tmp_path / "env" / "ds.env"
    target.parent.mkdir()
    target.write_text("KEEP=1\n")
    status, out = run(tmp_path, monkeypatch, capsys, "--output", str(target))
    assert status == 2 and target.read_text() == "KEEP=1\n"
    target.chmod(0o644)
    status, out = run(tmp_path, monkeypatch, capsys, "--output", str(target), "--force")
    assert status == 0 and "ARDIFF_X=two words\n" in target.read_text() and "KEEP" not in target.read_text()
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_a_value_the_launcher_cannot_carry_is_refused(tmp_path, monkeypatch, capsys):
    status, _ = run(tmp_path, monkeypatch, capsys, ARDIFF_MULTILINE="one\ntwo")
    assert status == 2 and not (tmp_path / ".deepspeed_env").exists()


def test_the_command_line_entry_writes_the_file(tmp_path):
    env = {"PATH": os.environ["PATH"], "AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "OTHER": "x"}
    done = subprocess.run([sys.executable, "-m", "ardiff_scale.cli", "deepspeed-env"], cwd=tmp_path, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / ".deepspeed_env").read_text() == "AWS_ENDPOINT_URL=http://127.0.0.1:9000\n"
