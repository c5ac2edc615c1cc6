"""Simulated device fleets that stream labeled telemetry (see :mod:`edgewatch.simulator.fleet`)."""

from edgewatch.simulator.fleet import FAULT_HEADER, FAULT_KINDS, Fleet, SimRecord

__all__ = ["FAULT_HEADER", "FAULT_KINDS", "Fleet", "SimRecord"]
