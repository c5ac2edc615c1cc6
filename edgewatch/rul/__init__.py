"""Remaining useful life (RUL) of each machine, online, from a fleet model that learns from failures.

One concern per module:

* :mod:`~edgewatch.rul.features` — per-engine online feature state (operating-regime
  normalization, health index, EWMAs, slopes, change since the run's start): one numba kernel.
* :mod:`~edgewatch.rul.trees` — tree ensembles as plain arrays and their numba kernel.
* :mod:`~edgewatch.rul.model` — :class:`RulModel`: features → P10 / P50 / P90.
* :mod:`~edgewatch.rul.train` — ``train_rul(run_to_failure_readings)`` (LightGBM, ``train`` extra).
* :mod:`~edgewatch.rul.artifact` — data-only versioned artifact (arrays + JSON + sha256).
* :mod:`~edgewatch.rul.events` — :class:`RulEstimate`, :class:`RunEnd` and their JSON schemas.
* :mod:`~edgewatch.rul.online` — :class:`RulFleet`: ``update(reading) -> RulEstimate``,
  maintenance alerts, ``end_run(RunEnd)``, bounded periodic refit. Its docstring is the API
  the RUL flow builds on.

Scoring on C-MAPSS is :mod:`edgewatch.evaluation.cmapss`.
"""
