"""edgewatch as an HTTP scoring service, the way Azure ML runs it.

:mod:`edgewatch.serving.score` is an Azure ML entry script (``init()`` / ``run(raw_data)``).
Azure ML online endpoints serve it with PyPI's ``azureml-inference-server-http``: gunicorn
running ``azureml_inference_server_http.server.entry:app`` with ``AZUREML_ENTRY_SCRIPT``
pointing at the script and ``AZUREML_MODEL_DIR`` at the model. :func:`serve` does exactly
that, bound to loopback by default, so ``edgewatch serve`` answers the same requests on a
laptop or an edge node as the endpoint does in Azure.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

#: The entry script Azure ML and :func:`serve` load.
SCORE_SCRIPT = Path(__file__).resolve().with_name("score.py")
#: The WSGI app of the Azure ML inference server; importing it runs the entry script's ``init()``.
SERVER_APP = "azureml_inference_server_http.server.entry:app"
DEFAULT_PORT = 5001  # the inference server's own default


def server_environment(model_dir: Path | None = None) -> dict[str, str]:
    """The variables the inference server reads, as an Azure ML deployment sets them.

    >>> env = server_environment(Path("/models/edgewatch"))
    >>> env["AZUREML_ENTRY_SCRIPT"].endswith("score.py"), env["AZUREML_MODEL_DIR"]
    (True, '/models/edgewatch')
    """
    env = {
        "AZUREML_ENTRY_SCRIPT": str(SCORE_SCRIPT),
        "AML_APP_ROOT": str(SCORE_SCRIPT.parent),
        "AML_APP_INSIGHTS_ENABLED": "false",
    }
    if model_dir is not None:
        env["AZUREML_MODEL_DIR"] = str(azureml_layout(Path(model_dir).resolve()))
    return env


def azureml_layout(model_dir: Path) -> Path:
    """A model directory as Azure ML mounts a registered model: ``<root>/<name>/<version>/``.

    The inference server reads model ids from that layout at start (and logs a traceback for a
    flat folder); a folder that is itself an edgewatch model (``model.json``) gets a temporary
    ``<root>/edgewatch/1`` link to it; anything else is passed as it is.
    """
    import tempfile

    if not (model_dir / "model.json").is_file():
        return model_dir
    root = Path(tempfile.mkdtemp(prefix="edgewatch-serve-"))
    (root / "edgewatch").mkdir()
    (root / "edgewatch" / "1").symlink_to(model_dir, target_is_directory=True)
    return root


def gunicorn_argv(host: str = "127.0.0.1", port: int = DEFAULT_PORT, workers: int = 1) -> list[str]:
    """gunicorn's arguments, as the inference server builds them, but bound to ``host``.

    Each worker process loads its own model bank: with several workers a device's readings
    may reach different banks, so keep one worker unless clients pin devices to workers.

    >>> gunicorn_argv(port=8080)[:4]
    ['gunicorn', '-b', '127.0.0.1:8080', '-w']
    """
    return [
        "gunicorn",
        "-b",
        f"{host}:{port}",
        "-w",
        str(workers),
        "--timeout",
        os.environ.get("WORKER_TIMEOUT", "300"),
        "--access-logfile",
        "-",
        "--error-logfile",
        "-",
        SERVER_APP,
    ]


def check_model(model_dir: Path | None = None) -> None:
    """Load the model :func:`serve` would serve (``model_dir``, else ``AZUREML_MODEL_DIR`` /
    ``EDGEWATCH_MODEL_DIR``) as its workers will: raises ``ArtifactError`` (bad, unsigned or
    badly signed with ``EDGEWATCH_MODEL_PUBLIC_KEY`` set) or ``FileNotFoundError``."""
    from edgewatch.config import FlowSettings
    from edgewatch.online_models import artifact
    from edgewatch.serving.score import find_model_dir

    root = model_dir or os.environ.get("AZUREML_MODEL_DIR") or os.environ.get("EDGEWATCH_MODEL_DIR")
    if root:
        artifact.load(find_model_dir(Path(root)), FlowSettings(_env_file=None).model_public_key)


def serve(model_dir: Path | None = None, host: str = "127.0.0.1", port: int = DEFAULT_PORT, workers: int = 1) -> None:
    """Serve ``POST /score`` and ``GET /`` until SIGTERM or Ctrl-C (what ``edgewatch serve`` runs).

    ``model_dir`` is an ``edgewatch train`` output (or a folder holding one); without it the
    server uses ``AZUREML_MODEL_DIR``/``EDGEWATCH_MODEL_DIR`` from the environment, else fresh
    detectors. A model that fails its sha256 check (or, with ``EDGEWATCH_MODEL_PUBLIC_KEY``, its
    signature check) stops the server before it listens.
    """
    try:
        from gunicorn.app.wsgiapp import WSGIApplication
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        raise RuntimeError(
            "edgewatch serve needs azureml-inference-server-http (pip install 'edgewatch[serve]')"
        ) from exc

    os.environ.update(server_environment(model_dir))
    sys.argv = gunicorn_argv(host, port, workers)
    WSGIApplication("%(prog)s [OPTIONS] [APP_MODULE]").run()
