"""Turn deployment.template.json into the deployment manifest IoT Hub accepts.

    export EDGEWATCH_IMAGE=myregistry.azurecr.io/edgewatch:0.1.0
    export CONTAINER_REGISTRY_ADDRESS=myregistry.azurecr.io
    export CONTAINER_REGISTRY_USERNAME=... CONTAINER_REGISTRY_PASSWORD=...
    python k8s/iotedge/render_deployment.py > deployment.json
    az iot edge set-modules --hub-name HUB --device-id DEVICE --content deployment.json

What the VS Code / iotedgedev tooling does with a template, without them: ``${NAME}``
placeholders come from the environment (``EDGEWATCH_MODEL_VERSION`` may stay empty; without
``CONTAINER_REGISTRY_ADDRESS`` the registry credentials are left out, for public images), and
every ``createOptions`` object becomes the JSON string IoT Edge expects, split into
``createOptions01``… when it is longer than IoT Hub's 512 characters per twin string.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

TEMPLATE = Path(__file__).resolve().with_name("deployment.template.json")
PLACEHOLDER = re.compile(r"\$\{([A-Z][A-Z0-9_]*)\}")
#: Placeholders that may be empty.
OPTIONAL = {"EDGEWATCH_MODEL_VERSION": ""}
REGISTRY_VARIABLES = ("CONTAINER_REGISTRY_ADDRESS", "CONTAINER_REGISTRY_USERNAME", "CONTAINER_REGISTRY_PASSWORD")
#: IoT Hub's limit on one twin string; longer createOptions continue in createOptions01..07.
CHUNK = 512
MAX_CHUNKS = 8

#: The inputs and outputs each module of the template has: what routes may name.
MODULE_ENDPOINTS = {
    "SimulatedTemperatureSensor": {"inputs": {"control"}, "outputs": {"temperatureOutput"}},
    "edgewatch": {"inputs": {"telemetry"}, "outputs": {"labeled", "alarms", "drift", "deadletter"}},
}


class TemplateError(ValueError):
    """A placeholder has no value, or createOptions does not fit a twin."""


def placeholders(template: str) -> set[str]:
    return set(PLACEHOLDER.findall(template))


def substitute(template: str, variables: dict[str, str]) -> str:
    """Replace every ``${NAME}``; values are JSON-escaped, so any string is safe inside quotes."""
    missing = sorted(name for name in placeholders(template) if name not in variables)
    if missing:
        raise TemplateError(f"set {', '.join(missing)} (see k8s/iotedge/render_deployment.py)")
    return PLACEHOLDER.sub(lambda match: json.dumps(variables[match.group(1)])[1:-1], template)


def stringify_create_options(settings: dict) -> None:
    """``createOptions`` object → compact JSON string(s), as IoT Edge reads them."""
    text = json.dumps(settings.get("createOptions", {}), separators=(",", ":"), sort_keys=True)
    chunks = [text[i : i + CHUNK] for i in range(0, len(text), CHUNK)] or ["{}"]
    if len(chunks) > MAX_CHUNKS:
        raise TemplateError(f"createOptions is {len(text)} characters, more than IoT Edge's {CHUNK * MAX_CHUNKS}")
    settings["createOptions"] = chunks[0]
    for index, chunk in enumerate(chunks[1:], start=1):
        settings[f"createOptions{index:02d}"] = chunk


def every_module(agent: dict) -> dict[str, dict]:
    return {**agent["systemModules"], **agent["modules"]}


def render(variables: dict[str, str] | None = None, template_text: str | None = None) -> dict:
    """The deployment manifest for ``variables`` (default: the environment)."""
    variables = {**OPTIONAL, **(dict(os.environ) if variables is None else variables)}
    text = TEMPLATE.read_text() if template_text is None else template_text
    with_registry = bool(variables.get("CONTAINER_REGISTRY_ADDRESS"))
    if not with_registry:
        variables = {**{name: "" for name in REGISTRY_VARIABLES}, **variables}
    manifest = json.loads(substitute(text, variables))
    manifest.pop("$schema-template", None)
    agent = manifest["modulesContent"]["$edgeAgent"]["properties.desired"]
    if not with_registry:
        agent["runtime"]["settings"].pop("registryCredentials", None)
    for module in every_module(agent).values():
        stringify_create_options(module["settings"])
    return manifest


def joined_create_options(settings: dict) -> str:
    """The whole createOptions string of a rendered module, chunks put back together."""
    extra = sorted(key for key in settings if re.fullmatch(r"createOptions\d\d", key))
    return settings["createOptions"] + "".join(settings[key] for key in extra)


def template_modules() -> dict[str, dict]:
    return every_module(json.loads(TEMPLATE.read_text())["modulesContent"]["$edgeAgent"]["properties.desired"])


def main() -> int:
    try:
        manifest = render()
    except TemplateError as exc:
        print(f"render_deployment: {exc}", file=sys.stderr)
        return 2
    json.dump(manifest, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
