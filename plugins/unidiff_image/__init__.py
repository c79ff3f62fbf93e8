"""unidiff_image: the VQ image modality (work in progress): text-conditioned generation of 28x28 animal silhouettes
from captions, as a vector-quantised image tokenizer's codes diffused like any other token sequence. So far only the
data (Animal-MNIST, its captions and its train/valid split: `unidiff_image.animals`) and the VQ tokenizer
(`unidiff_image.vq`, a diffusers VQModel: 28x28 images <-> 7x7 codes) exist; the plugin registers
nothing yet.
"""

__version__ = "0.1.0"
