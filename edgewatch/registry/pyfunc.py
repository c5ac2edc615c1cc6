"""The pyfunc flavour: ``mlflow.pyfunc.load_model(uri).predict(readings)`` scores a batch.

The registered model carries the ``edgewatch train`` directory as its artifact ``model_dir``;
:class:`EdgewatchPyfunc` loads it with :func:`edgewatch.online_models.artifact.load` (its own
checks) and scores through the flow's bank (:func:`~edgewatch.online_models.bank.new_bank`):
each device starts from its fitted model, readings are scored then learned in order, exactly
as ``edgewatch run`` would label them.

Readings: a pandas DataFrame with ``device_id``, ``timestamp`` (epoch seconds or ISO-8601) and
one column per feature (a missing value leaves the feature out of that reading), or a list of
dicts ``{"device_id", "timestamp", "features": {name: value}}`` (``deviceId``/``values``, the
generic telemetry shape, also work). The answer is a DataFrame, one row per input row, in order:
``device_id``, ``timestamp``, ``score``, ``is_anomaly``, ``error`` (why a row was refused, else
empty). Validation is the flow's: a row the flow would dead-letter is refused here the same way.

An RUL model (``edgewatch train --task rul``) is logged with :class:`EdgewatchRulPyfunc`: the
same readings in, one row per input row out: ``device_id``, ``timestamp``, ``cycle``, ``p10``,
``p50``, ``p90``, ``error`` — each device's rows are one run, estimated in order through a fresh
:class:`~edgewatch.rul.online.RulFleet`, as ``edgewatch run-rul`` would.

The wrapper is logged as *code* (MLflow's models-from-code), not as a pickle.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import orjson

from edgewatch.online_models import artifact as artifact_module
from edgewatch.online_models.bank import new_bank
from edgewatch.schema import RawMessage, Reading, parse_message

#: the name of the model directory among the pyfunc model's artifacts
ARTIFACT_NAME = "model_dir"
#: the code MLflow runs to build the wrapper when the model is loaded (models-from-code)
MODEL_CODE = '''"""edgewatch pyfunc model: see edgewatch.registry.pyfunc."""
import mlflow

from edgewatch.registry.pyfunc import EdgewatchPyfunc

mlflow.models.set_model(EdgewatchPyfunc())
'''
COLUMNS = ["device_id", "timestamp", "score", "is_anomaly", "error"]
RUL_COLUMNS = ["device_id", "timestamp", "cycle", "p10", "p50", "p90", "error"]


def model_code(kind: str) -> str:
    """The models-from-code file of a model of ``kind`` (``anomaly`` or ``rul``)."""
    return MODEL_CODE if kind == "anomaly" else MODEL_CODE.replace("EdgewatchPyfunc", "EdgewatchRulPyfunc")


def readings_of(rows: Iterable[dict]) -> list[Reading | str]:
    """Each row as a :class:`Reading`, or the reason it cannot be one (the flow's validation)."""
    parsed: list[Reading | str] = []
    for number, row in enumerate(rows):
        device = row.get("device_id", row.get("deviceId"))
        features = row.get("features", row.get("values"))
        if features is None:
            reserved = {"device_id", "deviceId", "timestamp"}
            features = {name: value for name, value in row.items() if name not in reserved}
        features = {name: value for name, value in features.items() if not _missing(value)}
        body = {"deviceId": device, "timestamp": _time(row.get("timestamp")), "values": features}
        try:
            raw_value = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
        except TypeError as exc:
            parsed.append(f"row {number}: {exc}")
            continue
        result = parse_message(RawMessage(None, raw_value, [], "predict", 0, number))
        parsed.append(result if isinstance(result, Reading) else f"row {number}: {result.reason}")
    return parsed


def score_batch(fitted: artifact_module.ModelArtifact, rows: Iterable[dict], threshold: float | None = None) -> list:
    """``[device_id, timestamp, score, is_anomaly, error]`` per row, through a fresh bank."""
    bank = new_bank(fitted.spec, threshold, fitted)
    parsed = readings_of(rows)
    readings = [item for item in parsed if isinstance(item, Reading)]
    result = bank.label(readings)
    verdicts = {id(event.reading): event for event in result.events}
    refused = {id(dead.raw): dead.reason for dead in result.dead_letters}
    answer = []
    for item in parsed:
        if isinstance(item, str):
            answer.append([None, None, None, None, item])
        elif id(item) in verdicts:
            event = verdicts[id(item)]
            answer.append([item.device_id, item.timestamp, event.score, bool(event.is_anomaly), ""])
        else:
            answer.append([item.device_id, item.timestamp, None, None, refused.get(id(item.raw), "not scored")])
    return answer


def estimate_batch(model, rows: Iterable[dict]) -> list:
    """``[device_id, timestamp, cycle, p10, p50, p90, error]`` per row, through a fresh RUL fleet."""
    from edgewatch.rul.online import RulFleet

    parsed = readings_of(rows)
    batch = RulFleet(model).update_many([item for item in parsed if isinstance(item, Reading)])
    estimates = {id(estimate.raw): estimate for estimate in batch.estimates}
    refused = {id(dead.raw): dead.reason for dead in batch.rejected}
    answer = []
    for item in parsed:
        if isinstance(item, str):
            answer.append([None, None, None, None, None, None, item])
        elif (found := estimates.get(id(item.raw))) is not None:
            answer.append([item.device_id, item.timestamp, found.cycle, found.p10, found.p50, found.p90, ""])
        else:
            answer.append([item.device_id, item.timestamp, None, None, None, None, refused.get(id(item.raw), "")])
    return answer


try:
    from mlflow.pyfunc import PythonModel
except ImportError:  # the edge runtime (no mlflow): the flavour is only for the registry side
    PythonModel = object


class EdgewatchPyfunc(PythonModel):
    """MLflow pyfunc wrapper of an ``edgewatch train`` directory."""

    def load_context(self, context) -> None:
        self.fitted = artifact_module.load(Path(context.artifacts[ARTIFACT_NAME]))

    def predict(self, context, model_input, params=None):
        import pandas as pd

        rows = _rows(model_input)
        threshold = (params or {}).get("threshold")
        return pd.DataFrame(score_batch(self.fitted, rows, threshold), columns=COLUMNS)


class EdgewatchRulPyfunc(PythonModel):
    """MLflow pyfunc wrapper of an ``edgewatch train --task rul`` directory."""

    def load_context(self, context) -> None:
        from edgewatch.rul import artifact as rul_artifact

        self.fitted = rul_artifact.load(Path(context.artifacts[ARTIFACT_NAME]))

    def predict(self, context, model_input, params=None):
        import pandas as pd

        rows = _rows(model_input)
        return pd.DataFrame(estimate_batch(self.fitted, rows), columns=RUL_COLUMNS)


def _rows(model_input) -> list[dict]:
    import pandas as pd

    if isinstance(model_input, pd.DataFrame):
        return model_input.to_dict("records")
    if isinstance(model_input, dict):
        return [model_input]
    return list(model_input)


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _time(value):
    if hasattr(value, "timestamp") and callable(value.timestamp):  # datetime, pandas Timestamp
        return value.timestamp()
    if hasattr(value, "item"):  # numpy scalar
        return value.item()
    return value
