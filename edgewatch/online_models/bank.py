"""A bank of per-device detectors: the state of one shard of the fleet."""

from __future__ import annotations

import io
import logging
import pickle

from river.base import AnomalyDetector

from edgewatch.online_models.artifact import ModelArtifact
from edgewatch.online_models.registry import DetectorSpec
from edgewatch.schema import BankResult, DeadLetter, LabeledEvent, Reading

log = logging.getLogger(__name__)


class ModelBank:
    """One online detector per device; score, label with the threshold, then learn.

    Every device starts from its fitted model in ``artifact`` (a warm start, see
    :mod:`~edgewatch.online_models.artifact`) or, without one, as a fresh detector from
    ``spec``. Detectors that take the source time get it (``score_one(x, t)``). A reading
    the detector cannot handle becomes a dead letter instead of stopping the flow.

    >>> from edgewatch.online_models.registry import BUILTIN
    >>> from edgewatch.schema import RawMessage, Reading, SourceRef
    >>> bank = ModelBank(BUILTIN["robust-zscore"])
    >>> raw = RawMessage(b"pump-1", b"", [], *SourceRef("telemetry", 0, 0))
    >>> events = bank.label([Reading("pump-1", 0.0, {"rpm": 1450.0}, raw)]).events
    >>> events[0].score, events[0].is_anomaly, len(bank)
    (0.0, False, 1)
    """

    def __init__(self, spec: DetectorSpec, threshold: float | None = None, artifact: ModelArtifact | None = None):
        self.spec = spec
        self.threshold = spec.threshold if threshold is None else threshold
        self.version = artifact.version if artifact is not None else spec.version
        self._artifact = artifact
        self._uses_time = spec.uses_time
        self.models: dict[str, AnomalyDetector] = {}

    def __len__(self) -> int:
        return len(self.models)

    def _new_model(self, device_id: str) -> AnomalyDetector:
        return self._artifact.model_for(device_id) if self._artifact is not None else self.spec.factory()

    def label(self, readings: list[Reading]) -> BankResult:
        events: list[LabeledEvent] = []
        dead: list[DeadLetter] = []
        models, name, version, threshold = self.models, self.spec.name, self.version, self.threshold
        for reading in readings:
            model = models.get(reading.device_id)
            if model is None:
                model = models[reading.device_id] = self._new_model(reading.device_id)
            try:
                if self._uses_time:
                    score = float(model.score_one(reading.features, reading.timestamp))
                    model.learn_one(reading.features, reading.timestamp)
                else:
                    score = float(model.score_one(reading.features))
                    model.learn_one(reading.features)
            except Exception as exc:  # a plugged-in detector must not stop the fleet
                log.warning("detector failed on %s: %s", reading.device_id, exc)
                dead.append(DeadLetter(reading.raw, f"detector error: {type(exc).__name__}: {exc}", "detect"))
                continue
            events.append(LabeledEvent(reading, score, score >= threshold, name, version))
        return BankResult(events, dead, [], [])

    def snapshot(self) -> bytes:
        """The per-device models as bytes (Bytewax stores them at every epoch).

        River objects have no data format of their own, so this one is a pickle; :meth:`restore`
        reads it with :class:`RiverUnpickler`, which builds nothing outside River, numpy and a
        few plain builtins (the vectorized bank, the default, stores data only)."""
        return pickle.dumps(self.models, protocol=pickle.HIGHEST_PROTOCOL)

    def restore(self, state: bytes) -> None:
        self.models = RiverUnpickler(io.BytesIO(state)).load()


class RiverUnpickler(pickle.Unpickler):
    """Unpickles River models and nothing else: any global outside River's and edgewatch's
    model modules, a few numpy array constructors and plain builtin types is refused
    (:class:`pickle.UnpicklingError`) before it is called."""

    ALLOWED_PACKAGES = ("river.", "edgewatch.online_models.")
    ALLOWED = frozenset(
        {("builtins", n) for n in ("set", "frozenset", "dict", "list", "tuple", "int", "float", "complex", "bool",
                                   "str", "bytes", "bytearray", "object", "slice", "range")}
        | {(m, n) for m in ("numpy", "numpy.core.multiarray", "numpy._core.multiarray", "numpy.core.numeric",
                            "numpy._core.numeric")
                  for n in ("ndarray", "dtype", "_reconstruct", "scalar", "_frombuffer")}
        | {("copyreg", "_reconstructor"), ("functools", "partial"), ("random", "Random"),
           ("collections", "defaultdict"), ("collections", "deque"), ("collections", "Counter"),
           ("collections", "OrderedDict")}
    )  # fmt: skip

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED and not module.startswith(self.ALLOWED_PACKAGES):
            raise pickle.UnpicklingError(f"snapshot refers to {module}.{name}: not a River model, refusing it")
        return super().find_class(module, name)


def new_bank(
    spec: DetectorSpec,
    threshold: float | None = None,
    artifact: ModelArtifact | None = None,
    limits=None,
    shards: int = 1,
):
    """The bank the flow uses: arrays for detectors that have them (within ``limits``, a
    :class:`~edgewatch.state.limits.StateLimits`, split over ``shards``), River objects otherwise."""
    from edgewatch.online_models.vector_bank import VectorBank

    if spec.vectorized and (artifact is None or hasattr(spec.factory(), "export_arrays")):
        return VectorBank(spec, threshold, artifact, limits, shards)
    return ModelBank(spec, threshold, artifact)
