"""Tree ensembles as plain arrays, evaluated by a numba kernel (no training library at run time).

A fitted gradient-boosting model (LightGBM's ``dump_model()`` JSON) becomes five flat node
arrays — split feature (``-1`` at a leaf), threshold, left child, right child, leaf value — and
the root index of each tree. A row goes left when ``x <= threshold``; its prediction is the sum
of the leaves it reaches, one per tree.

>>> import numpy as np
>>> stump = {"tree_info": [{"tree_structure": {"split_feature": 0, "threshold": 1.5, "decision_type": "<=",
...     "left_child": {"leaf_value": -1.0}, "right_child": {"leaf_value": 2.0}}}]}
>>> forest = Forest.from_lightgbm_dump(stump)
>>> forest.predict(np.array([[1.0], [3.0]])).tolist()
[-1.0, 2.0]
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np


@dataclass
class Forest:
    """A sum of regression trees in flat arrays."""

    feature: np.ndarray  # int32[nodes], -1 at a leaf
    threshold: np.ndarray  # float64[nodes]
    left: np.ndarray  # int32[nodes]
    right: np.ndarray  # int32[nodes]
    value: np.ndarray  # float64[nodes], the leaf value at a leaf
    roots: np.ndarray  # int32[trees]

    @classmethod
    def from_lightgbm_dump(cls, dump: dict) -> Forest:
        """The trees of a LightGBM ``Booster.dump_model()``."""
        feature, threshold, left, right, value, roots = [], [], [], [], [], []

        def add(node: dict) -> int:
            index = len(feature)
            feature.append(-1)
            threshold.append(0.0)
            left.append(-1)
            right.append(-1)
            value.append(float(node.get("leaf_value", 0.0)))
            if "split_feature" in node:
                if node.get("decision_type", "<=") != "<=":
                    raise ValueError(f"unsupported split {node['decision_type']!r}: only numeric '<=' splits")
                feature[index] = int(node["split_feature"])
                threshold[index] = float(node["threshold"])
                left[index] = add(node["left_child"])
                right[index] = add(node["right_child"])
            return index

        for tree in dump["tree_info"]:
            roots.append(add(tree["tree_structure"]))
        return cls(
            np.array(feature, dtype=np.int32),
            np.array(threshold, dtype=np.float64),
            np.array(left, dtype=np.int32),
            np.array(right, dtype=np.int32),
            np.array(value, dtype=np.float64),
            np.array(roots, dtype=np.int32),
        )

    def predict(self, rows: np.ndarray) -> np.ndarray:
        """The ensemble's output for each row of ``rows`` (float64[n, features])."""
        return predict_forest(
            np.ascontiguousarray(rows, dtype=np.float64),
            self.feature,
            self.threshold,
            self.left,
            self.right,
            self.value,
            self.roots,
        )

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {
            f"{prefix}.{name}": getattr(self, name)
            for name in ("feature", "threshold", "left", "right", "value", "roots")
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], prefix: str) -> Forest:
        types = {"feature": np.int32, "left": np.int32, "right": np.int32, "roots": np.int32}
        parts = {
            name: np.asarray(arrays[f"{prefix}.{name}"], dtype=types.get(name, np.float64))
            for name in ("feature", "threshold", "left", "right", "value", "roots")
        }
        forest = cls(**parts)
        forest.check()
        return forest

    def check(self) -> None:
        """Refuse arrays that would send the kernel out of bounds or into a loop."""
        nodes = len(self.feature)
        if not all(len(a) == nodes for a in (self.threshold, self.left, self.right, self.value)):
            raise ValueError("forest arrays differ in length")
        inner = self.feature >= 0
        children = np.concatenate([self.left[inner], self.right[inner]])
        indices = np.arange(nodes)
        if children.size and (
            children.min() < 0
            or children.max() >= nodes
            or np.any(self.left[inner] <= indices[inner])
            or np.any(self.right[inner] <= indices[inner])
        ):
            raise ValueError("forest children must point forward inside the node arrays")
        if self.roots.size and (self.roots.min() < 0 or self.roots.max() >= nodes):
            raise ValueError("forest roots out of range")


@numba.njit(cache=True, nogil=True)
def predict_forest(rows, feature, threshold, left, right, value, roots):
    n = rows.shape[0]
    out = np.zeros(n)
    for i in range(n):
        total = 0.0
        for root in roots:
            node = root
            while feature[node] >= 0:
                node = left[node] if rows[i, feature[node]] <= threshold[node] else right[node]
            total += value[node]
        out[i] = total
    return out
