"""A model's weights as numpy arrays: the form the tensor-map codec and the stores take.

The protocol and the state stores know numpy only (DECISIONS §28); these two functions
are the model side of that boundary.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from shared.arrays import AnyArray

__all__ = ["load_state_arrays", "state_arrays"]


def state_arrays(model: nn.Module, prefix: str = "") -> dict[str, AnyArray]:
    """Copies of ``model``'s state dict as numpy arrays, keys prefixed with ``prefix``."""
    return {
        prefix + name: value.detach().cpu().numpy().copy()
        for name, value in model.state_dict().items()
    }


def load_state_arrays(model: nn.Module, arrays: dict[str, AnyArray], prefix: str = "") -> None:
    """Load the entries of ``arrays`` whose key starts with ``prefix`` into ``model``.

    Raises:
        RuntimeError: keys or shapes that do not fit the model (``load_state_dict``).
    """
    model.load_state_dict(
        {
            name[len(prefix) :]: torch.from_numpy(np.array(value))
            for name, value in arrays.items()
            if name.startswith(prefix)
        }
    )
