"""The forwarder: a background thread that drains a store-and-forward queue through a sender.

A :class:`Sender` delivers to one cloud endpoint (IoT Hub, edgeHub, Event Hubs); every SDK call
goes through :func:`call_with_timeout`, since the SDKs can wait forever on a stalled broker.
Failed deliveries are retried with tenacity (exponential backoff with jitter) until the link
takes them or the forwarder stops.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from tenacity import RetryError, Retrying, retry_if_exception_type, wait_exponential_jitter

from edgewatch.store_forward.queue import StoreAndForward, Stored

log = logging.getLogger(__name__)


class SendTimeout(TimeoutError):
    """A send did not finish in time; the client may be wedged and is replaced."""


def call_with_timeout(function: Callable, timeout: float, *args):
    """``function(*args)`` on a daemon thread; raise :class:`SendTimeout` after ``timeout`` s.

    SDK calls that wait forever on a stalled broker cannot be cancelled; the caller
    abandons the thread (it ends when the SDK gives up or the client is shut down).
    """
    outcome: dict[str, object] = {}
    done = threading.Event()

    def run() -> None:
        try:
            outcome["value"] = function(*args)
        except BaseException as exc:
            outcome["error"] = exc
        finally:
            done.set()

    threading.Thread(target=run, name=f"edgewatch-call-{getattr(function, '__name__', 'send')}", daemon=True).start()
    if not done.wait(timeout):
        raise SendTimeout(f"{getattr(function, '__name__', 'call')} did not finish within {timeout:g} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


#: seconds between two log lines about refused credentials
REFUSAL_LOG_SECONDS = 300.0

#: what the SDKs call an authentication refusal (IoT Hub: CONNACK "not authorized"; Event Hubs: 401)
_REFUSALS = ("UnauthorizedError", "CredentialError", "AuthenticationError", "ClientAuthenticationError")


def refused_credentials(error: BaseException | None) -> bool:
    """Whether an error, or one it was raised from, says the credentials were refused.

    >>> class UnauthorizedError(Exception): ...
    >>> try:
    ...     try:
    ...         raise UnauthorizedError("CONNACK 5")
    ...     except UnauthorizedError as cause:
    ...         raise ConnectionError("connection failed") from cause
    ... except ConnectionError as exc:
    ...     refused_credentials(exc)
    True
    >>> refused_credentials(TimeoutError("no answer"))
    False
    """
    seen = 0
    while error is not None and seen < 8:
        text = str(error).lower()
        if type(error).__name__ in _REFUSALS or "not authori" in text or "unauthorized" in text:
            return True
        error, seen = error.__cause__ or error.__context__, seen + 1
    return False


def close_quietly(close: Callable[[], object], name: str) -> None:
    """Close an SDK client that is being thrown away: its errors are only logged (debug)."""
    try:
        close()
    except Exception as exc:  # nothing left to do with it
        log.debug("%s: close failed: %s", name, exc)


def close_in_background(close: Callable[[], object], name: str) -> None:
    """:func:`close_quietly` on a daemon thread, without waiting: a client thrown away after a
    stall may block in its own shutdown."""
    threading.Thread(target=close_quietly, args=(close, name), name=name, daemon=True).start()


class Sender(Protocol):
    """Delivers buffered messages to one cloud endpoint.

    ``deliver`` acknowledges what was delivered (``buffer.ack``) as it goes, discards what can
    never be delivered (``buffer.discard``), and raises on anything that may work later: the
    forwarder then waits and tries again from the oldest message still in the buffer.
    """

    batch_size: int

    def deliver(self, batch: list[Stored], buffer: StoreAndForward) -> None: ...

    def close(self) -> None: ...


class Forwarder:
    """Drains a :class:`StoreAndForward` through a :class:`Sender` on a background thread.

    Failed deliveries are retried forever (tenacity, exponential backoff with jitter up to
    ``retry_max_seconds``); the first failure of an outage is logged as a warning, the recovery
    as info. :meth:`stop` may first give the sender ``drain_seconds`` to empty the buffer.
    """

    def __init__(self, buffer: StoreAndForward, sender: Sender, retry_max_seconds: float = 30.0):
        self.buffer = buffer
        self.sender = sender
        self._stopping = threading.Event()
        self._down_since: float | None = None
        self._refusal_logged = -REFUSAL_LOG_SECONDS
        self._retrying = Retrying(
            retry=retry_if_exception_type(Exception),
            wait=wait_exponential_jitter(multiplier=0.5, max=retry_max_seconds, jitter=0.5),
            stop=lambda _state: self._stopping.is_set(),
            sleep=self._stopping.wait,
            before_sleep=self._on_failure,
        )
        self._thread = threading.Thread(target=self._run, name=f"edgewatch-forward-{buffer.name}", daemon=True)

    def start(self) -> Forwarder:
        self._thread.start()
        return self

    def stop(self, drain_seconds: float = 0.0, join_seconds: float = 10.0) -> bool:
        """Stop sending (after up to ``drain_seconds`` of draining); True if the buffer is empty.

        What is left stays in the file for the next run.
        """
        deadline = time.monotonic() + drain_seconds
        while len(self.buffer) and time.monotonic() < deadline and self._thread.is_alive():
            time.sleep(0.05)
        self._stopping.set()
        self._thread.join(join_seconds)
        if self._thread.is_alive():
            log.warning("store-and-forward %s: sender still busy after stop; abandoning it", self.buffer.name)
        try:
            call_with_timeout(self.sender.close, join_seconds)
        except Exception as exc:  # the process is stopping: report, do not raise
            log.warning("store-and-forward %s: closing the sender failed: %s", self.buffer.name, exc)
        return len(self.buffer) == 0

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                sent = self._retrying(self._forward_once)
            except RetryError:  # stopped while retrying
                return
            if self._down_since is not None:
                log.info(
                    "store-and-forward %s: link back after %.0f s; %d message(s) left to send",
                    self.buffer.name,
                    time.monotonic() - self._down_since,
                    len(self.buffer),
                )
                self._down_since = None
            if not sent:
                self.buffer.wait_for_messages(timeout=0.5)

    def _forward_once(self) -> int:
        batch = self.buffer.peek(self.sender.batch_size)
        if batch:
            self.sender.deliver(batch, self.buffer)
        return len(batch)

    def _on_failure(self, state) -> None:
        error = state.outcome.exception()
        if refused_credentials(error):
            # not an outage: retrying will not help until someone fixes the key (it may be re-enabled
            # on the hub's side, so keep trying), and the operator must hear it as such
            now = time.monotonic()
            if self._down_since is None:
                self._down_since = now
            if now - self._refusal_logged >= REFUSAL_LOG_SECONDS:
                self._refusal_logged = now
                log.error(
                    "store-and-forward %s: the cloud refused edgewatch's credentials (%s: %s): fix the connection "
                    "string or key; %d message(s) kept in the buffer meanwhile",
                    self.buffer.name,
                    type(error).__name__,
                    error,
                    len(self.buffer),
                )
            return
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.warning(
                "store-and-forward %s: link down (%s: %s); buffering, %d message(s) waiting",
                self.buffer.name,
                type(error).__name__,
                error,
                len(self.buffer),
            )
        else:
            log.debug("store-and-forward %s: still down (%s: %s)", self.buffer.name, type(error).__name__, error)
