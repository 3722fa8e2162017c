"""The array types of the protocol, the state stores and the cache rules: numpy, not torch.

Everything that crosses a process boundary or is stored (indices, rounds, signals, soft
labels, masks) is a numpy array with one of these dtypes, so that the processes that
never run a model (the cache service, the launcher) need not import torch (DECISIONS
§28). Model code converts at its edge with ``torch.from_numpy`` and ``Tensor.numpy()``,
which share memory and copy nothing.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["AnyArray", "BoolArray", "IndexArray", "LabelArray"]

IndexArray = npt.NDArray[np.int64]
"""(n,) public indices, written rounds or small codes (signals), as int64."""
LabelArray = npt.NDArray[np.float32]
"""(n, C) soft labels, as float32."""
BoolArray = npt.NDArray[np.bool_]
"""(n,) flags, as bool."""
AnyArray = npt.NDArray[Any]
"""An array of any dtype (a model's weights on their way to bytes)."""
