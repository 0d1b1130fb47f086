from os import PathLike
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import numpy as np

from . import data as data, measure as measure

__version__: str

_Path = Union[str, "PathLike[str]"]
_Config = Union[str, Dict[str, Any]]

class WhiteboxError(ValueError):
    """An error of the whitebox library: bad input, a file that cannot be used, a failed run."""

class Model:
    """A model of any whitebox kind with its weights, on the CPU."""

    @property
    def kind(self) -> str:
        """The model kind: ``crate``, ``crate-alpha``, ``crate-mae``, ``tost``, ``crate-lm``, ``gpt``, ``crate-bert``…"""
    @property
    def config(self) -> Dict[str, Any]:
        """The config as a dict (the official constructor's argument names where there is one)."""
    @property
    def num_params(self) -> int:
        """Number of parameters."""
    def forward(self, x: np.ndarray) -> Union[np.ndarray, Dict[str, np.ndarray]]:
        """Logits: NCHW float32 images → ``[N, classes]``; int64 ids ``[B, T]`` → ``[B, T, vocab]``.
        CRATE-MAE returns the dict of :meth:`outputs`."""
    def outputs(
        self, x: np.ndarray, noise: Optional[np.ndarray] = None, activations: bool = False
    ) -> Dict[str, np.ndarray]:
        """Every output of ``x`` under the golden names, as ``whitebox forward`` writes them."""
    def activations(self, x: np.ndarray) -> Dict[str, np.ndarray]:
        """Per-layer activations of ``x``: ``act.embed``, ``act.layer{i}.{mssa,attn,ista}``, ``act.final_norm``…"""
    def state_dict(self) -> Dict[str, np.ndarray]:
        """The weights under the official PyTorch keys."""
    def generate(
        self, prompt: str = "\n", max_new_tokens: int = 500, temperature: float = 0.8, top_k: int = 200, seed: int = 1337
    ) -> str:
        """The text a language model generates after ``prompt`` (without the prompt), as ``whitebox lm generate``."""
    def fill_mask(self, text: str, top_k: int = 5) -> Dict[str, Any]:
        """CRATE-BERT's fill-in of each ``<mask>``: ``{"filled": str, "top": [[(char, p), …] per mask]}``."""
    def save(self, path: _Path) -> None:
        """Write the weights (safetensors, official keys, config in the metadata), atomically."""

def load(path: _Path, config: Optional[_Config] = None, strict: bool = True) -> Model:
    """Load a weights file of any kind (official ``.pth``/``.pth.tar``, safetensors).

    ``config``: a preset name, a JSON file's path or a dict of constructor arguments; by default
    the file's metadata, a nanoGPT ``model_args`` or ``config.json`` beside the file."""

def from_state_dict(state: Dict[str, np.ndarray], config: _Config, strict: bool = True) -> Model:
    """A model of ``config`` with the weights ``state`` (official keys → float32 arrays)."""

def create(config: _Config, seed: int = 0) -> Model:
    """A freshly initialised model of ``config``."""

def read_tensors(path: _Path) -> Tuple[Dict[str, np.ndarray], Dict[str, str]]:
    """Every tensor of a safetensors file and its metadata."""

def train(callback: Optional[Callable[[Dict[str, Any]], Optional[bool]]] = None, **settings: Any) -> Dict[str, Any]:
    """Train a classifier as ``whitebox train`` does; settings are its flags (``run_dir``,
    ``epochs``, ``train_limit``, …, plus ``progress``). ``callback(metrics)`` runs after each
    epoch's checkpoint; returning ``False`` stops the run there. Ctrl-C raises
    ``KeyboardInterrupt`` after the checkpoint is written. Returns the outcome (``test_acc``,
    ``test_loss``, ``epochs``, ``steps``, ``seconds``, ``train_seconds``, ``weights``)."""
