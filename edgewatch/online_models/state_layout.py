"""Where a detector's state lives when it is kept as arrays: one row per device."""

from __future__ import annotations

import numpy as np


class StateLayout:
    """Where a detector's state fields live: fields of one dtype and shape share a block
    ``(devices, fields, features, *shape)`` (per-device fields: ``(devices, fields, *shape)``),
    so a step gathers and scatters each block with one numpy call instead of one per field.

    ``fields`` and ``device_fields`` map a name to ``(dtype, initial value)`` or
    ``(dtype, initial value, shape)``; ``"features"`` in a shape stands for the number of
    features (a matrix per device: ``(features, features)``).
    """

    def __init__(self, fields: dict[str, tuple], device_fields: dict[str, tuple] | None = None):
        self.blocks: dict[tuple, list[tuple[str, float]]] = {}
        for per_feature, table in ((True, fields), (False, device_fields or {})):
            for name, (dtype, initial, *shape) in table.items():
                key = (np.dtype(dtype).str, tuple(shape[0]) if shape else (), per_feature)
                self.blocks.setdefault(key, []).append((name, initial))

    def allocate(self, devices: int, features: int) -> list[np.ndarray]:
        arrays = []
        for (dtype, shape, per_feature), fields in self.blocks.items():
            shape = self._sizes(shape, features)
            block = np.empty((devices, len(fields), *((features,) if per_feature else ()), *shape), dtype=dtype)
            for index, (_, initial) in enumerate(fields):
                block[:, index] = initial
            arrays.append(block)
        return arrays

    def write_row(self, blocks: list[np.ndarray], row: int, fields: dict[str, np.ndarray]) -> None:
        """Set one device's state (a warm start) from ``fields`` shaped ``(features, *shape)``."""
        for block, names in zip(blocks, self.blocks.values(), strict=True):
            for index, (name, _) in enumerate(names):
                block[row, index] = fields[name]

    def read_row(self, blocks: list[np.ndarray], row: int) -> dict[str, np.ndarray]:
        """One device's state by field (copies): what :meth:`write_row` takes."""
        return {
            name: block[row, index].copy()
            for block, names in zip(blocks, self.blocks.values(), strict=True)
            for index, (name, _) in enumerate(names)
        }

    def reset_rows(self, blocks: list[np.ndarray], rows: np.ndarray) -> None:
        """Put ``rows`` back to the fields' initial values (a freed row, ready for a new device)."""
        for block, names in zip(blocks, self.blocks.values(), strict=True):
            for index, (_, initial) in enumerate(names):
                block[rows, index] = initial

    def with_later_fields(self, arrays: list[np.ndarray], later: frozenset) -> list[np.ndarray]:
        """Blocks saved before some of the ``later`` fields existed (they end their blocks: a block saved
        before the last k of them lacks those k), completed with those fields' initial values; other
        blocks as they are (a mismatch is the caller's to refuse)."""
        if len(arrays) != len(self.blocks):
            return arrays
        completed = []
        for array, fields in zip(arrays, self.blocks.values(), strict=True):
            later_tail = 0
            while later_tail < len(fields) and fields[len(fields) - 1 - later_tail][0] in later:
                later_tail += 1
            added = len(fields) - array.shape[1] if array.ndim >= 2 else 0
            if 0 < added <= later_tail:
                extra = np.empty((array.shape[0], added, *array.shape[2:]), array.dtype)
                for index, (_, initial) in enumerate(fields[len(fields) - added :]):
                    extra[:, index] = initial
                array = np.concatenate([array, extra], axis=1)
            completed.append(array)
        return completed

    def row_shapes(self, features: int) -> list[tuple[str, tuple[int, ...]]]:
        """dtype and shape of one device's slice of each block (what a page must hold)."""
        return [
            (dtype, (len(fields), *((features,) if per_feature else ()), *self._sizes(shape, features)))
            for (dtype, shape, per_feature), fields in self.blocks.items()
        ]

    @staticmethod
    def _sizes(shape: tuple, features: int) -> tuple[int, ...]:
        """A field's shape with ``"features"`` replaced by the number of features."""
        return tuple(features if size == "features" else size for size in shape)

    def position(self, name: str) -> int:
        """Where field ``name`` sits in its block (fields of one dtype and shape share a block)."""
        return next(index for names in self.blocks.values() for index, (field, _) in enumerate(names) if field == name)

    def by_field(self, blocks: list[np.ndarray]) -> dict[str, np.ndarray]:
        """Each field's name mapped to the block that holds it (what a detector's kernel takes)."""
        return {name: block for block, names in zip(blocks, self.blocks.values(), strict=True) for name, _ in names}
