from typing import Dict, List, Sequence, Union

import numpy as np

from . import Model

_PerSample = Union[float, np.ndarray]

def coding_rate(z: np.ndarray, eps_sq: float = 0.01) -> _PerSample:
    """``R(Z) = ½ logdet(I + d/(Nε²) ZᵀZ)`` of ``Z`` ``[N, d]`` (per sample for ``[B, N, d]``)."""

def compression(z: np.ndarray, u: Union[Sequence[np.ndarray], np.ndarray], eps_sq: float = 0.01) -> _PerSample:
    """``R^c(Z; U) = Σ_k ½ logdet(I + p/(Nε²) (ZU_k)ᵀ(ZU_k))``; ``U``: K bases ``[d, p]`` or ``[K, d, p]``."""

def sparsity(z: np.ndarray) -> _PerSample:
    """The fraction of zero entries of ``Z``."""

def measures(model: Model, x: np.ndarray, eps_sq: float = 0.01, official_eps: float = 0.01) -> Dict[str, float]:
    """Every measure of a CRATE classifier on images ``x``, under the golden JSON's names."""

def layers(model: Model, x: np.ndarray, eps_sq: float = 0.01, official_eps: float = 0.01) -> List[Dict[str, float]]:
    """The per-layer table of ``whitebox measure``: one dict per layer."""
