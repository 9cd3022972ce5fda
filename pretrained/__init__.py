"""A pretrained encoder taken elsewhere: loaded from any checkpoint the probes accept, run on uint8 RGB images, and
exported for other libraries (README, "Use the encoder elsewhere").

encoder              ``PretrainedEncoder``: preprocess (uint8 RGB -> the views), features at a layer, info
load                 ``load_encoder(path)``: a .pth checkpoint (ours, the reference's, the released) or .safetensors
safetensors_format   every encoder as safetensors, its preprocessing in the metadata (no pickle)
torchvision_format   ResNets at width 1 as torchvision's (and timm's) state dicts, one per CMC view
detectron2_format    ResNet-50 backbones as the .pkl of moco's detectron2 converter, and back
hub                  the torch.hub entries of ``hubconf.py``: cmc, insdis, moco
feature_map          features over a data set, their kNN top-1 and a 2-D map (extract_features.py, the demo)
outputs              output files: refused before any work, written all or nothing
"""
from pretrained.encoder import DEFAULT_LAYER, PretrainedEncoder
from pretrained.load import load_encoder

__all__ = ['DEFAULT_LAYER', 'PretrainedEncoder', 'load_encoder']
