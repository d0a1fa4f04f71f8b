"""modelsafe: save and load models and checkpoints safely, fast, across frameworks.

>>> import os, tempfile, modelsafe as ms
>>> path = os.path.join(tempfile.mkdtemp(), "state.safetensors")
>>> ms.save({"weights": [1.0, 2.0]}, path)
>>> ms.load(path)
{'weights': [1.0, 2.0]}

Importing modelsafe imports no ML framework; adapters load on first use.
"""

from . import objects as _objects, rng as _rng
from ._version import __version__
from .api import load, open, save
from .checkpoints import CheckpointInfo, Checkpoints
from .errors import (
    CheckpointNotFoundError,
    CheckpointRemovedError,
    CorruptCheckpointError,
    FrameworkNotInstalledError,
    IncompatibleStateError,
    InvalidArgumentError,
    MissingRecipeError,
    ModelsafeError,
    NewerFormatError,
    RunConflictError,
    RunLockedError,
    StorageError,
    TensorKeyError,
    UnknownClassError,
    UnsafeObjectError,
    UnsupportedFormatError,
    UnsupportedObjectError,
)
from .load_into import LoadReport, load_into
from .reader import Reader
from .recipes import build, rebuildable, register

_objects.install(_rng.CODECS)  # the tree learns framework objects, rebuildables and modelsafe's own generators
from . import (  # noqa: F401  (register a directory opener, a codec)
    distributed,  # torch is imported by its first save or load, not here
    pretrained as _pretrained,
    stateful as _stateful,
)

__all__ = [
    "__version__",
    "save",
    "load",
    "open",
    "load_into",
    "LoadReport",
    "rebuildable",
    "build",
    "register",
    "Reader",
    "Checkpoints",
    "distributed",
    "CheckpointInfo",
    "ModelsafeError",
    "CorruptCheckpointError",
    "NewerFormatError",
    "CheckpointNotFoundError",
    "UnsupportedObjectError",
    "UnsafeObjectError",
    "UnknownClassError",
    "MissingRecipeError",
    "IncompatibleStateError",
    "StorageError",
    "FrameworkNotInstalledError",
    "InvalidArgumentError",
    "RunConflictError",
    "RunLockedError",
    "CheckpointRemovedError",
    "UnsupportedFormatError",
    "TensorKeyError",
]
