"""whitebox: CRATE white-box transformers (sparse rate reduction) from Python.

Load official PyTorch checkpoints or whitebox's own safetensors, run them on numpy arrays, measure
the white box (coding rate, compression, sparsity) of any features, and train CRATE classifiers
with whitebox's fast CPU engine. Every function releases the GIL while it computes; every error
is a :class:`WhiteboxError` (a ``ValueError``) or a ``FileNotFoundError`` with the library's
message.

>>> import whitebox, numpy as np
>>> model = whitebox.load("runs/fmnist/model.safetensors")
>>> logits = model.forward(np.zeros((8, 1, 28, 28), np.float32))
"""

from ._whitebox import (
    Model,
    WhiteboxError,
    __version__,
    create,
    from_state_dict,
    load,
    read_tensors,
    train,
)
from . import data, measure

__all__ = [
    "Model",
    "WhiteboxError",
    "__version__",
    "create",
    "data",
    "from_state_dict",
    "load",
    "measure",
    "read_tensors",
    "train",
]
