"""Secrets come from the environment or a secrets folder, never the command line, and never show."""

from __future__ import annotations

import os
import subprocess
import sys

from typer.testing import CliRunner

from edgewatch.cli import app
from edgewatch.config import FlowSettings

SECRET = "s3cr3t-do-not-print"
CONNECTION_STRING = f"HostName=h.azure-devices.net;DeviceId=d;SharedAccessKey={SECRET}"


def test_secrets_are_not_options():
    help_text = CliRunner().invoke(app, ["run", "--help"], terminal_width=200).output
    for option in ("--sasl-password", "--iothub-connection-string", "--eventhubs-connection-string"):
        assert option not in help_text
    result = CliRunner().invoke(app, ["run", "--sasl-password", SECRET])
    assert result.exit_code == 2 and "No such option" in result.output


def test_secrets_from_env_or_a_secrets_folder_never_print(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEWATCH_SASL_PASSWORD", SECRET)
    settings = FlowSettings()
    assert settings.sasl_password.get_secret_value() == SECRET
    assert SECRET not in repr(settings) and SECRET not in str(settings.model_dump())
    assert settings.client_config().get("sasl.password") == SECRET  # only where the client needs it
    monkeypatch.delenv("EDGEWATCH_SASL_PASSWORD")
    folder = tmp_path / "secrets"
    folder.mkdir()
    (folder / "EDGEWATCH_IOTHUB_CONNECTION_STRING").write_text(CONNECTION_STRING)  # as the variable
    monkeypatch.setenv("EDGEWATCH_SECRETS_DIR", str(folder))
    import importlib

    import edgewatch.config as config

    reloaded = importlib.reload(config)  # the secrets folder is read when the settings class is defined
    try:
        assert reloaded.FlowSettings().iothub_connection_string.get_secret_value() == CONNECTION_STRING
    finally:
        monkeypatch.delenv("EDGEWATCH_SECRETS_DIR")
        importlib.reload(config)


def test_a_failing_run_does_not_print_its_secrets(tmp_path):
    env = {**os.environ, "EDGEWATCH_SASL_PASSWORD": SECRET, "EDGEWATCH_IOTHUB_CONNECTION_STRING": CONNECTION_STRING}
    result = subprocess.run(
        [sys.executable, "-m", "edgewatch", "run", "--bootstrap", "127.0.0.1:1", "--security-protocol",
         "SASL_PLAINTEXT", "--sasl-mechanism", "PLAIN", "--sasl-username", "u"],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert SECRET not in result.stdout + result.stderr
