"""What a task's model offers the inference step: one batch, or a group's batches in one call.

``TaskInference`` hands a model every batch of a group at once (``predict_many``): one call
per group, so one round trip where the model sits behind a proxy, and, on an accelerator, every
batch launched before the one wait for their results, so that the host prepares the next batch
while the device runs this one. Each batch's outcome comes back apart, a result or the
exception it raised (its traceback dropped: its frames hold the batch's tensors), so that one
batch's fault never loses the others' results; the caller sorts faults of the data from those
of the machine.
"""

from __future__ import annotations

from typing import Sequence, Union

import numpy as np

# (windows of sub-word ids, each window's word positions, heads): one padded batch
Request = tuple[Sequence[np.ndarray], Sequence[np.ndarray], Sequence[Union[str, None]]]
# label ids (int16) and probabilities (float32), each ``[positions, heads]``
Result = tuple[np.ndarray, np.ndarray]


class Predictor:
    """A model's batch interface. A subclass defines ``predict`` (one batch, synchronous) or
    ``predict_many`` (a group's batches, launched together), or both; each default is built
    on the other."""

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if cls.predict is Predictor.predict and cls.predict_many is Predictor.predict_many:
            raise TypeError(f"{cls.__name__} must define predict or predict_many")

    def predict(self, windows: Sequence[np.ndarray], positions: Sequence[np.ndarray],
                heads: Sequence[str | None], pad_to: int | None = None) -> Result:
        """One batch; raises what it raised."""
        result = self.predict_many([(windows, positions, heads)], pad_to)[0]
        if isinstance(result, Exception):
            raise result
        return result

    def predict_many(self, batches: Sequence[Request], pad_to: int | None = None
                     ) -> list[Result | Exception]:
        """Each batch's result, or the exception it raised, in order."""
        out: list[Result | Exception] = []
        for windows, positions, heads in batches:
            try:
                out.append(self.predict(windows, positions, heads, pad_to))
            except Exception as e:  # noqa: BLE001 - returned to the caller, which sorts it
                out.append(e.with_traceback(None))
        return out
