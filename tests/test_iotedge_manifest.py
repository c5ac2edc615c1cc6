"""The Azure IoT Edge deployment manifest template k8s/iotedge/deployment.template.json.

It is valid JSON with the runtime's schema versions and images; every edgeHub route parses
against the route grammar (a small parser below, including WHERE conditions) and names only
modules, outputs and inputs that exist; the edgewatch routes send every labeled message
upstream exactly once (anomalies first, kept longest); createOptions become the JSON strings
IoT Edge expects (split at 512 characters); the edgewatch module runs non-root on a
read-only root with its state and model mounted where the image and settings expect them.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.scripts import load_script

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "k8s" / "iotedge" / "deployment.template.json"
VARIABLES = {"EDGEWATCH_IMAGE": "myregistry.azurecr.io/edgewatch:0.1.0", "EDGEWATCH_MODEL_VERSION": "cn-20261123"}


renderer = load_script(TEMPLATE.with_name("render_deployment.py"))


# --- the IoT Edge route grammar ------------------------------------------------------------------
#   route     := FROM source [WHERE condition] INTO sink
#   source    := /messages/modules/<module>/outputs/<output | *>
#   sink      := $upstream | BrokeredEndpoint("/modules/<module>/inputs/<input>")
#   condition := or ; or := and (OR and)* ; and := not (AND not)* ; not := NOT not | compare
#   compare   := operand [(= | != | <> | < | <= | > | >=) operand] | ( condition )
#   operand   := property | $system_property | $body.path | 'string' | number | true | false | null | f(args)

NAME = r"[A-Za-z0-9_.-]+"
ROUTE = re.compile(
    rf"^\s*FROM\s+/messages/modules/(?P<module>{NAME})/outputs/(?P<output>{NAME}|\*)"
    r"(?:\s+WHERE\s+(?P<condition>.+?))?"
    rf"\s+INTO\s+(?:(?P<upstream>\$upstream)|BrokeredEndpoint\(\s*\"/modules/(?P<to_module>{NAME})/inputs/(?P<to_input>{NAME})\"\s*\))\s*$",
    re.IGNORECASE | re.DOTALL,
)
TOKEN = re.compile(
    r"\s*(?:(?P<string>'(?:[^']|'')*')|(?P<number>-?\d+(?:\.\d+)?)|(?P<op><>|!=|<=|>=|=|<|>)"
    r"|(?P<paren>[(),])|(?P<name>\$?[A-Za-z_][A-Za-z0-9_.-]*))"
)
KEYWORDS = {"AND", "OR", "NOT", "TRUE", "FALSE", "NULL"}


class RouteSyntaxError(ValueError):
    pass


@dataclass(frozen=True)
class Route:
    module: str
    output: str
    condition: tuple | None
    to_module: str | None
    to_input: str | None

    @property
    def upstream(self) -> bool:
        return self.to_module is None


def tokenize(text: str) -> list[tuple[str, str]]:
    tokens, position = [], 0
    while position < len(text.rstrip()):
        match = TOKEN.match(text, position)
        if not match or match.end() == position:
            raise RouteSyntaxError(f"unexpected {text[position:]!r}")
        kind = match.lastgroup
        value = match.group(kind)
        if kind == "name" and value.upper() in KEYWORDS:
            kind, value = "keyword", value.upper()
        tokens.append((kind, value))
        position = match.end()
    return tokens


class ConditionParser:
    """Recursive descent over the tokens of a WHERE clause; builds a small expression tree."""

    def __init__(self, text: str):
        self.tokens = tokenize(text)
        self.position = 0

    def parse(self) -> tuple:
        tree = self.disjunction()
        if self.position != len(self.tokens):
            raise RouteSyntaxError(f"unexpected {self.tokens[self.position][1]!r}")
        return tree

    def peek(self, kind: str, value: str | None = None) -> bool:
        if self.position >= len(self.tokens):
            return False
        token_kind, token_value = self.tokens[self.position]
        return token_kind == kind and (value is None or token_value == value)

    def take(self, kind: str, value: str | None = None) -> str:
        if not self.peek(kind, value):
            found = self.tokens[self.position][1] if self.position < len(self.tokens) else "end of condition"
            raise RouteSyntaxError(f"expected {value or kind}, found {found!r}")
        self.position += 1
        return self.tokens[self.position - 1][1]

    def disjunction(self) -> tuple:
        tree = self.conjunction()
        while self.peek("keyword", "OR"):
            self.take("keyword", "OR")
            tree = ("or", tree, self.conjunction())
        return tree

    def conjunction(self) -> tuple:
        tree = self.negation()
        while self.peek("keyword", "AND"):
            self.take("keyword", "AND")
            tree = ("and", tree, self.negation())
        return tree

    def negation(self) -> tuple:
        if self.peek("keyword", "NOT"):
            self.take("keyword", "NOT")
            return ("not", self.negation())
        return self.comparison()

    def comparison(self) -> tuple:
        if self.peek("paren", "("):
            self.take("paren", "(")
            tree = self.disjunction()
            self.take("paren", ")")
            return tree
        left = self.operand()
        if self.peek("op"):
            return ("compare", self.take("op"), left, self.operand())
        return ("truthy", left)

    def operand(self) -> tuple:
        if self.peek("string"):
            return ("literal", self.take("string")[1:-1].replace("''", "'"))
        if self.peek("number"):
            return ("literal", float(self.take("number")))
        if self.peek("keyword"):
            word = self.take("keyword")
            if word not in ("TRUE", "FALSE", "NULL"):
                raise RouteSyntaxError(f"{word} where a value belongs")
            return ("literal", {"TRUE": True, "FALSE": False, "NULL": None}[word])
        name = self.take("name")
        if self.peek("paren", "("):
            self.take("paren", "(")
            arguments = [] if self.peek("paren", ")") else [self.disjunction()]
            while self.peek("paren", ","):
                self.take("paren", ",")
                arguments.append(self.disjunction())
            self.take("paren", ")")
            return ("call", name.upper(), tuple(arguments))
        return ("property", name)


def parse_route(text: str) -> Route:
    match = ROUTE.match(text)
    if not match:
        raise RouteSyntaxError(f"not a route: {text!r}")
    condition = ConditionParser(match["condition"]).parse() if match["condition"] else None
    return Route(match["module"], match["output"], condition, match["to_module"], match["to_input"])


def evaluate(tree: tuple | None, properties: dict[str, str]) -> bool:
    """Whether a message with these application properties matches (undefined compares as no match)."""
    if tree is None:
        return True

    def value(node: tuple):
        kind = node[0]
        if kind == "literal":
            return node[1]
        if kind == "property":
            return properties.get(node[1])
        if kind == "call" and node[1] == "IS_DEFINED":
            return value(node[2][0]) is not None
        raise NotImplementedError(node)

    kind = tree[0]
    if kind == "or":
        return evaluate(tree[1], properties) or evaluate(tree[2], properties)
    if kind == "and":
        return evaluate(tree[1], properties) and evaluate(tree[2], properties)
    if kind == "not":
        return not evaluate(tree[1], properties)
    if kind == "truthy":
        return bool(value(tree[1]))
    op, left, right = tree[1], value(tree[2]), value(tree[3])
    if left is None or right is None:
        return False
    return {
        "=": left == right,
        "!=": left != right,
        "<>": left != right,
        "<": left < right,
        "<=": left <= right,
        ">": left > right,
        ">=": left >= right,
    }[op]


@pytest.mark.parametrize(
    "text",
    [
        "FROM /messages/modules/a/outputs/b INTO $upstream",
        "from /messages/modules/a/outputs/* where x = 'y' and (n > 3 or not flag = true) into $upstream",
        'FROM /messages/modules/a/outputs/b WHERE IS_DEFINED(anomaly) INTO BrokeredEndpoint("/modules/c/inputs/d")',
    ],
)
def test_route_parser_accepts_the_grammar(text):
    parse_route(text)


@pytest.mark.parametrize(
    "text",
    [
        "FROM /messages/modules/a/outputs/b INTO BrokeredEndpoint(/modules/c/inputs/d)",  # unquoted endpoint
        "FROM /messages/modules/a/b INTO $upstream",  # no /outputs/
        "FROM /messages/modules/a/outputs/b WHERE anomaly = INTO $upstream",  # no right operand
        "FROM /messages/modules/a/outputs/b WHERE (anomaly = 'true' INTO $upstream",  # unbalanced
        "FROM /messages/modules/a/outputs/b WHERE anomaly == 'true' INTO $upstream",  # not an operator
        "FROM /messages/modules/a/outputs/b INTO $downstream",
    ],
)
def test_route_parser_rejects_what_edgehub_would(text):
    with pytest.raises(RouteSyntaxError):
        parse_route(text)


# --- the template ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def template() -> dict:
    return json.loads(TEMPLATE.read_text())


@pytest.fixture(scope="module")
def manifest() -> dict:
    return renderer.render(VARIABLES)


def desired(document: dict, module: str) -> dict:
    return document["modulesContent"][module]["properties.desired"]


def routes(document: dict) -> dict[str, tuple[Route, dict]]:
    """name → (parsed route, its options: priority, timeToLiveSecs)."""
    parsed = {}
    for name, spec in desired(document, "$edgeHub")["routes"].items():
        text, options = (spec, {}) if isinstance(spec, str) else (spec["route"], spec)
        parsed[name] = (parse_route(text), options)
    return parsed


def test_runtime_schema_versions_and_images(template):
    agent, hub = desired(template, "$edgeAgent"), desired(template, "$edgeHub")
    assert agent["schemaVersion"] == "1.1" and hub["schemaVersion"] == "1.2"
    system = agent["systemModules"]
    assert system["edgeAgent"]["settings"]["image"] == "mcr.microsoft.com/azureiotedge-agent:1.5"
    assert system["edgeHub"]["settings"]["image"] == "mcr.microsoft.com/azureiotedge-hub:1.5"
    assert agent["runtime"]["type"] == "docker"
    for name, module in agent["modules"].items():
        assert module["type"] == "docker" and module["status"] == "running", name
        assert module["restartPolicy"] in ("never", "on-failure", "on-unhealthy", "always"), name
        assert all(isinstance(item["value"], str) for item in module.get("env", {}).values()), name


def test_every_route_parses_and_names_existing_modules_and_endpoints(template):
    modules = renderer.template_modules()
    parsed = routes(template)
    assert parsed
    for name, (route, options) in parsed.items():
        assert route.module in modules, f"{name}: no module {route.module}"
        assert route.output in renderer.MODULE_ENDPOINTS[route.module]["outputs"] | {"*"}, name
        if not route.upstream:
            assert route.to_module in modules, f"{name}: no module {route.to_module}"
            assert route.to_input in renderer.MODULE_ENDPOINTS[route.to_module]["inputs"], name
        assert set(options) <= {"route", "priority", "timeToLiveSecs"}, name
        if "priority" in options:
            assert options["priority"] in range(10), name
    used = {(route.module, route.output) for route, _ in parsed.values()}
    for module, endpoints in renderer.MODULE_ENDPOINTS.items():  # every output goes somewhere
        assert all((module, output) in used for output in endpoints["outputs"]), module


def test_sensor_telemetry_reaches_edgewatch(template):
    targets = [
        route
        for route, _ in routes(template).values()
        if (route.module, route.output) == ("SimulatedTemperatureSensor", "temperatureOutput")
    ]
    assert [(r.to_module, r.to_input, r.condition) for r in targets] == [("edgewatch", "telemetry", None)]


@pytest.mark.parametrize("anomaly", ["true", "false"])
def test_each_labeled_message_goes_upstream_exactly_once_anomalies_first(template, anomaly):
    labeled = [
        (route, options)
        for route, options in routes(template).values()
        if (route.module, route.output) == ("edgewatch", "labeled")
    ]
    going_up = [o for r, o in labeled if r.upstream and evaluate(r.condition, {"anomaly": anomaly})]
    assert len(going_up) == 1
    assert any("'anomaly'" in repr(r.condition) for r, _ in labeled), "no route filters on the anomaly property"
    if anomaly == "true":
        (chosen,) = going_up
        others = [o for _, o in labeled if o is not chosen]
        assert others and all(chosen["priority"] < other["priority"] for other in others)
        assert all(chosen["timeToLiveSecs"] >= other["timeToLiveSecs"] for other in others)


def test_store_and_forward_keeps_messages_while_offline(template):
    ttl = desired(template, "$edgeHub")["storeAndForwardConfiguration"]["timeToLiveSecs"]
    assert isinstance(ttl, int) and ttl >= 3600
    hub = desired(template, "$edgeAgent")["systemModules"]["edgeHub"]
    storage = hub["env"]["storageFolder"]["value"]
    assert any(bind.endswith(f":{storage}") for bind in hub["settings"]["createOptions"]["HostConfig"]["Binds"])


def test_create_options_become_the_json_strings_iot_edge_expects(template, manifest):
    original = renderer.template_modules()
    rendered = renderer.every_module(desired(manifest, "$edgeAgent"))
    assert set(rendered) == set(original)
    for name, module in rendered.items():
        settings = module["settings"]
        chunk_keys = [key for key in settings if key.startswith("createOptions")]
        assert all(isinstance(settings[key], str) and len(settings[key]) <= 512 for key in chunk_keys), name
        assert json.loads(renderer.joined_create_options(settings)) == original[name]["settings"]["createOptions"]


def test_long_create_options_are_split_in_512_character_chunks():
    settings = {"createOptions": {"Env": [f"VARIABLE_{i}={'x' * 40}" for i in range(40)]}}
    expected = json.loads(json.dumps(settings["createOptions"]))
    renderer.stringify_create_options(settings)
    assert sorted(settings) == ["createOptions", *(f"createOptions{i:02d}" for i in range(1, len(settings)))]
    assert len(settings) > 2 and all(len(value) <= 512 for value in settings.values())
    assert json.loads(renderer.joined_create_options(settings)) == expected


def dockerfile_user() -> str:
    users = [line.split()[1] for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("USER ")]
    return users[-1]


def test_edgewatch_module_runs_non_root_with_state_and_model_where_edgewatch_looks(template):
    module = desired(template, "$edgeAgent")["modules"]["edgewatch"]
    options = module["settings"]["createOptions"]
    host = options["HostConfig"]
    env = {name: item["value"] for name, item in module["env"].items()}
    assert options["User"] == dockerfile_user()
    assert host["ReadonlyRootfs"] is True and "/tmp" in host["Tmpfs"]
    binds = {bind.split(":")[1]: bind for bind in host["Binds"]}
    assert "/var/lib/edgewatch" in binds and not binds["/var/lib/edgewatch"].startswith("/")  # a named volume
    assert env["EDGEWATCH_RECOVERY_DIR"].startswith("/var/lib/edgewatch/")
    assert binds[env["EDGEWATCH_MODEL_DIR"]].endswith(":ro")
    assert "RestartPolicy" not in host, "edgeAgent restarts modules (restartPolicy), not Docker"
    assert options["Cmd"] and module["settings"]["image"] == "${EDGEWATCH_IMAGE}"


def test_module_twin_holds_what_edgewatch_reads(template, manifest):
    twin = desired(template, "edgewatch")
    assert set(twin) == {"threshold", "modelVersion", "sendMode"}
    assert 0 <= twin["threshold"] <= 1 and twin["sendMode"] in ("all", "anomalies")
    assert desired(manifest, "edgewatch")["modelVersion"] == VARIABLES["EDGEWATCH_MODEL_VERSION"]


def test_placeholders_are_all_known_and_all_replaced(manifest):
    names = renderer.placeholders(TEMPLATE.read_text())
    assert names == {"EDGEWATCH_IMAGE", "EDGEWATCH_MODEL_VERSION", *renderer.REGISTRY_VARIABLES}
    assert "${" not in json.dumps(manifest)
    assert "registryCredentials" not in desired(manifest, "$edgeAgent")["runtime"]["settings"]  # public images
    with_registry = renderer.render(
        {**VARIABLES, "CONTAINER_REGISTRY_ADDRESS": "r.io", "CONTAINER_REGISTRY_USERNAME": "u"}
        | {"CONTAINER_REGISTRY_PASSWORD": 'p"w'}
    )
    credentials = desired(with_registry, "$edgeAgent")["runtime"]["settings"]["registryCredentials"]
    assert credentials["edgewatchRegistry"] == {"address": "r.io", "username": "u", "password": 'p"w'}
    with pytest.raises(renderer.TemplateError, match="EDGEWATCH_IMAGE"):
        renderer.render({})


def test_renderer_command_writes_the_manifest():
    env = {"PATH": "/usr/bin:/bin", **VARIABLES}
    result = subprocess.run(
        [sys.executable, str(TEMPLATE.with_name("render_deployment.py"))], env=env, capture_output=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert set(document) == {"modulesContent"}
    assert desired(document, "$edgeAgent")["modules"]["edgewatch"]["settings"]["image"] == VARIABLES["EDGEWATCH_IMAGE"]
