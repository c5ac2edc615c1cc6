"""Store-and-forward: events wait on disk until a cloud link takes them.

* :mod:`~edgewatch.store_forward.queue` — the bounded, persistent SQLite FIFO;
* :mod:`~edgewatch.store_forward.forwarder` — the thread that sends from it, with retries and timeouts;
* :mod:`~edgewatch.store_forward.sink` — the Bytewax sink that appends to it.
"""

from edgewatch.store_forward.forwarder import Forwarder, Sender, SendTimeout, call_with_timeout
from edgewatch.store_forward.queue import BufferInUse, Envelope, StoreAndForward, Stored, source_message_id
from edgewatch.store_forward.sink import BufferPolicy, ForwardingSink

__all__ = [
    "BufferInUse",
    "BufferPolicy",
    "Envelope",
    "Forwarder",
    "ForwardingSink",
    "SendTimeout",
    "Sender",
    "StoreAndForward",
    "Stored",
    "call_with_timeout",
    "source_message_id",
]
