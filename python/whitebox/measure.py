"""White-box measures on any array, and per layer of a CRATE model.

``Z`` is ``[N, d]`` (N tokens of width d; one value back) or ``[B, N, d]`` (a float64 array of
B values back), float32 or float64, from whitebox or from any other network.
"""

from ._whitebox import coding_rate, compression, layers, measures, sparsity

__all__ = ["coding_rate", "compression", "layers", "measures", "sparsity"]
