"""edgewatch: streaming anomaly detection for industrial device fleets at the edge."""

__version__ = "0.1.0"
