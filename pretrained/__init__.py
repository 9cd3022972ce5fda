"""A pretrained encoder taken elsewhere: loaded from any checkpoint the probes accept, run on uint8 RGB images, and
exported for other libraries (README, "Use the encoder elsewhere").

encoder              ``PretrainedEncoder``: preprocess (uint8 RGB -> the views), features at a layer, info
load                 ``load_encoder(path)``: a .pth checkpoint (ours, the reference's, the released) or .safetensors
safetensors_format   every encoder as safetensors, its preprocessing in the metadata (no pickle)
hub                  the torch.hub entries of ``hubconf.py``: cmc, insdis, moco
"""
from pretrained.encoder import DEFAULT_LAYER, PretrainedEncoder
from pretrained.load import load_encoder

__all__ = ['DEFAULT_LAYER', 'PretrainedEncoder', 'load_encoder']
