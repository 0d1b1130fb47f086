from os import PathLike
from typing import Any, Dict, Union

def load(dir: Union[str, "PathLike[str]"], format: str = "auto") -> Dict[str, Any]:
    """``{"train": (images, labels), "test": (images, labels), "class_names": [...]}``: uint8
    images ``[N, C, H, W]`` and int64 labels; ``format``: auto, idx, cifar10, cifar100, folder."""
