"""Memory limits of the device banks (settings) and their Prometheus metrics.

Model state costs about 2 KB per feature per device with the default detector
(``compact-novelty``: 2,056 bytes per feature plus 8 per device; ``robust-zscore``: 72 bytes per
feature), plus about 150 bytes per device of bookkeeping (its id, its row, its last-seen
tick). A device with 5 features therefore holds ~10.5 KB, and the defaults below bound a
process to ``max_devices`` devices: ~1 GB at 5 features each.

Policy when ``max_devices`` is reached: the least recently seen devices of the shard are
**dropped** (their model is forgotten, their page rewritten without them); one that comes back
starts over, from its warm-start model when an artifact is loaded. Evictions free a tenth of
the shard's room at once, so they stay rare. Readings beyond the other two limits become dead
letters (stage ``detect``) with the limit in the reason.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class StateLimits(BaseSettings):
    """``EDGEWATCH_MAX_FEATURES_PER_DEVICE``, ``EDGEWATCH_MAX_FEATURE_SETS``, ``EDGEWATCH_MAX_DEVICES``."""

    model_config = SettingsConfigDict(env_prefix="EDGEWATCH_", extra="ignore")

    max_features_per_device: int = Field(32, ge=1, description="features one reading may carry to be scored")
    max_feature_sets: int = Field(256, ge=1, description="distinct feature sets (device kinds) per shard")
    max_devices: int = Field(
        100_000, ge=1, description="devices held in memory by the process (split evenly over its shards)"
    )

    def devices_per_shard(self, shards: int) -> int:
        return max(1, -(-self.max_devices // shards))


DEVICES_HELD = Gauge("edgewatch_devices_in_memory", "Devices whose model state is held in memory")
DEVICES_EVICTED = Counter("edgewatch_devices_evicted", "Least recently seen devices dropped at the device limit")
STATE_BYTES_WRITTEN = Counter("edgewatch_state_bytes_written", "Bytes of device pages written to the state store")
