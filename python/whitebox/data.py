"""Image data sets through whitebox's readers (MNIST IDX, CIFAR binary, ImageFolder)."""

from ._whitebox import load_data as load

__all__ = ["load"]
