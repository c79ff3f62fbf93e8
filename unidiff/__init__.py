"""unidiff: discrete (masked) diffusion over token sequences of any modality.

The engine (this package) trains and samples one bidirectional denoiser over a joint vocabulary; modality plugins
(the ``unidiff`` entry-point group) bring tokenizers, output heads, datasets and shipped models.
"""

from unidiff.data import Segment
from unidiff.errors import CheckpointError, ModalityInputError, UnidiffError, UnknownNameError
from unidiff.pipeline import Generation, Pipeline
from unidiff.plugins import Registry, get_plugin_manager

__version__ = "0.1.0"
__all__ = ["CheckpointError", "Generation", "ModalityInputError", "Pipeline", "Registry", "Segment",
           "UnidiffError", "UnknownNameError", "get_plugin_manager", "__version__"]
