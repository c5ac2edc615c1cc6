"""``edgewatch ui``: the fleet in a browser, for sites without Grafana.

The view reads the flow's outputs (``labeled``, ``alarms``, ``drift``) through a
:class:`~edgewatch.ui.feeds.Feed` into a bounded :class:`~edgewatch.ui.state.FleetState`
and serves it with :class:`~edgewatch.ui.server.ViewServer`: a fleet overview, one device's
recent readings and score against the threshold with its alarms drawn on them, the alarm list
and the drift events, updated live. Its page, script and style sheet ship in this package:
nothing is loaded from the internet.
"""

from edgewatch.ui.feeds import Feed, InProcessFeed, KafkaFeed, Topics
from edgewatch.ui.server import ViewServer
from edgewatch.ui.state import FleetState

__all__ = ["Feed", "FleetState", "InProcessFeed", "KafkaFeed", "Topics", "ViewServer"]
