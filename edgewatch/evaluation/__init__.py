"""Evaluation of detectors: NAB scoring (``edgewatch.evaluation.nab``)."""
