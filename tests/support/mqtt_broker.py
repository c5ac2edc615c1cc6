"""The test MQTT broker process: amqtt with TLS on 127.0.0.1:8883, anonymous, recording.

    python -m tests.support.mqtt_broker broker CERT KEY RECORD
    python -m tests.support.mqtt_broker twin-broker CERT KEY RECORD TWIN

It prints ``ready`` once it listens and shuts down on SIGTERM. A broker plugin appends every
CONNECT and every received PUBLISH (``twin-broker``: every SUBSCRIBE too) to the JSON-lines file
RECORD. ``twin-broker`` also does what edgeHub does for a module twin: it answers
``$iothub/twin/GET`` with the twin document in TWIN and ``$iothub/twin/PATCH/properties/reported``
with 204, and turns a test's control message on :data:`TWIN_CONTROL_TOPIC` into a
``$iothub/twin/PATCH/properties/desired/?$version=N``. (Plain amqtt closes any client that
publishes to a ``$`` topic, so the broker subclass answers those requests itself.)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

from amqtt.plugins.base import BasePlugin

from tests.support.iothub import BROKER_PORT

TWIN_CONTROL_TOPIC = "edgewatch-test/twin/desired"
REPORTED_TOPIC = "$iothub/twin/PATCH/properties/reported/"


class PublishRecorder(BasePlugin):
    """amqtt plugin: appends every CONNECT and every received PUBLISH to a JSON-lines file."""

    @dataclass
    class Config:
        path: str = ""

    def _append(self, record: dict) -> None:
        with open(self.config.path, "a") as out:
            out.write(json.dumps({"time": time.time(), **record}) + "\n")

    async def on_broker_client_connected(self, *, client_id, client_session) -> None:
        self._append(
            {
                "event": "connect",
                "client_id": client_id,
                "username": client_session.username,
                "password": client_session.password,
                "clean_session": client_session.clean_session,
            }
        )

    async def on_broker_message_received(self, *, client_id, message) -> None:
        self._append(
            {
                "event": "publish",
                "client_id": client_id,
                "topic": message.topic,
                "qos": message.qos,
                "dup": bool(message.publish_packet and message.publish_packet.dup_flag),
                "payload": bytes(message.data).decode("utf-8", "replace"),
            }
        )


class TwinRecorder(PublishRecorder):
    """The publish recorder, plus every SUBSCRIBE (so the test knows when the module listens)."""

    async def on_broker_client_subscribed(self, *, client_id, topic, qos) -> None:
        self._append({"event": "subscribe", "client_id": client_id, "topic": topic})


def broker_config(cert: str, key: str, record: str, recorder: type[PublishRecorder] = PublishRecorder) -> dict:
    """amqtt settings: TLS on 127.0.0.1:8883, anonymous, every event recorded by `recorder` to `record`."""
    return {
        "listeners": {
            "default": {
                "type": "tcp",
                "bind": f"127.0.0.1:{BROKER_PORT}",
                "ssl": True,
                "certfile": cert,
                "keyfile": key,
            }
        },
        "plugins": {
            "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
            f"tests.support.mqtt_broker.{recorder.__name__}": {"path": record},  # also when run as __main__
        },
    }


def serve_until_sigterm(make_broker) -> None:
    """Run the amqtt broker `make_broker()` builds (inside the event loop, as amqtt requires),
    print "ready" once it listens, shut it down on SIGTERM."""

    async def serve() -> None:
        broker = make_broker()
        await broker.start()
        stopping = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
        print("ready", flush=True)
        await stopping.wait()
        await broker.shutdown()

    asyncio.run(serve())


def run_broker(cert: str, key: str, record: str) -> None:
    """The recording broker; SIGTERM stops it."""
    from amqtt.broker import Broker

    serve_until_sigterm(lambda: Broker(broker_config(cert, key, record)))


# -- what edgeHub does for a module twin ----------------------------------------------------------


def merge_patch(document: dict, patch: dict) -> None:
    """JSON merge patch, as the twin service applies one: ``null`` removes a property."""
    for name, value in patch.items():
        if name == "$version":
            continue
        if value is None:
            document.pop(name, None)
        elif isinstance(value, dict) and isinstance(document.get(name), dict):
            merge_patch(document[name], value)
        else:
            document[name] = value


def twin_service(twin: dict, topic: str, payload: bytes) -> list[tuple[str, bytes]]:
    """The replies to one twin request (or to the test's desired-properties control message)."""
    request_id = unquote(topic.rpartition("$rid=")[2])
    if topic.startswith("$iothub/twin/GET/"):
        return [(f"$iothub/twin/res/200/?$rid={request_id}", json.dumps(twin).encode())]
    if topic.startswith(REPORTED_TOPIC):
        merge_patch(twin["reported"], json.loads(payload))
        twin["reported"]["$version"] += 1
        return [(f"$iothub/twin/res/204/?$rid={request_id}&$version={twin['reported']['$version']}", b"")]
    if topic == TWIN_CONTROL_TOPIC:
        patch = json.loads(payload)
        merge_patch(twin["desired"], patch)
        twin["desired"]["$version"] += 1
        version = twin["desired"]["$version"]
        return [
            (
                f"$iothub/twin/PATCH/properties/desired/?$version={version}",
                json.dumps({**patch, "$version": version}).encode(),
            )
        ]
    return []


def run_twin_broker(cert: str, key: str, record: str, twin_file: str) -> None:
    """The recording broker, answering twin requests as edgeHub does; SIGTERM stops it."""
    from amqtt.broker import Broker
    from amqtt.events import BrokerEvents

    class TwinServiceBroker(Broker):
        def __init__(self, config: dict, twin: dict):
            super().__init__(config)
            self.twin = twin

        async def _handle_message_delivery(self, client_session, handler, wait_deliver) -> bool:
            message = wait_deliver.result()
            topic = message.topic if message is not None else ""
            if not (topic.startswith("$iothub/twin/") or topic == TWIN_CONTROL_TOPIC):
                return await super()._handle_message_delivery(client_session, handler, wait_deliver)
            await self.plugins_manager.fire_event(
                BrokerEvents.MESSAGE_RECEIVED, client_id=client_session.client_id, message=message
            )
            for reply_topic, reply in twin_service(self.twin, topic, bytes(message.data)):
                await self.internal_message_broadcast(reply_topic, reply, 1)
            return True

    config = broker_config(cert, key, record, recorder=TwinRecorder)
    serve_until_sigterm(lambda: TwinServiceBroker(config, json.loads(Path(twin_file).read_text())))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.mqtt_broker")
    commands = parser.add_subparsers(dest="command", required=True)
    for command, files in (("broker", ("cert", "key", "record")), ("twin-broker", ("cert", "key", "record", "twin"))):
        command_parser = commands.add_parser(command)
        for name in files:
            command_parser.add_argument(name)
    args = parser.parse_args(argv)
    if args.command == "broker":
        run_broker(args.cert, args.key, args.record)
    else:
        run_twin_broker(args.cert, args.key, args.record, args.twin)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
