"""Reading image files on the CPU workers (`read_rgb`, `image_loader`): the ImageFolder loader for transforms that
take tensors decodes JPEG files with torchvision's libjpeg-turbo (`torchvision.io.decode_jpeg`) straight into a uint8
tensor: the same pixels as PIL's decode + convert('RGB'), without PIL's two copies (convert, then the numpy view of the
bytes). Other transforms get torchvision's PIL loader; `lazy_loader` leaves JPEG undecoded for draft decoding
(`inputs.crops`). `DECODE_ERRORS`: what a broken file raises, in one place.
"""
import io
import warnings

import torch
from PIL import Image
from torchvision.datasets.folder import default_loader

try:
    from torchvision.io import ImageReadMode, decode_jpeg
except ImportError:  # a torchvision without its image codecs (deprecated in 0.29 for TorchCodec's): PIL decodes all
    decode_jpeg = None
# torchvision 0.29 warns on every decode that its codecs move to TorchCodec (the same libjpeg-turbo, the same pixels:
# compared 2026-11-30 with torchcodec 0.17); not the user's concern, and the ImportError above covers the removal.
warnings.filterwarnings('ignore', message='The image decoding and encoding capabilities of TorchVision are deprecated',
                        category=DeprecationWarning)


def lazy_loader(path):
    """ImageFolder loader that opens without decoding (PIL decodes on first pixel access), so draft still applies.

    Unlike torchvision's default loader it does not `.convert('RGB')` up front; `decode_crop` converts after the
    (possibly reduced) decode.
    """
    return Image.open(path)


# What reading a broken, unreadable or oversized image file raises (PIL's errors, also through `read_rgb`).
DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def read_rgb(path):
    """The image file at path as RGB: a uint8 3 x H x W tensor for JPEG files, else a PIL RGB image.

    PIL reads the header first (the format, and its decompression-bomb check: `Image.MAX_IMAGE_PIXELS`, as the default
    loader applies it). JPEG then decodes with `torchvision.io.decode_jpeg` (libjpeg-turbo, as PIL; the same pixels as
    ``Image.open(path).convert('RGB')`` on baseline, progressive, 4:4:4 / 4:2:2 / 4:2:0, grayscale and CMYK files,
    tests/inputs/test_decode.py) into a channels-last view of its H x W x 3 buffer: 0.4 ms less decode per 500 x 375
    file, ~0.6 ms less worker CPU per training item (bench/README.md). A JPEG that libjpeg-turbo refuses (truncated,
    corrupt) and every other format go through PIL, so errors are PIL's (`DECODE_ERRORS`), as with torchvision's
    default loader. Unlike PIL, libjpeg-turbo prints its warnings about damaged but decodable files to stderr
    ("Corrupt JPEG data: N extraneous bytes before marker 0xd9"), once per decode.
    """
    with open(path, 'rb') as handle:
        data = handle.read()
    image = Image.open(io.BytesIO(data))  # parses the header only
    if image.format == 'JPEG' and decode_jpeg is not None:
        try:
            return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
        except (RuntimeError, Warning):  # refused, or torchvision's deprecation notice made an error (-W error)
            pass
    return image.convert('RGB')


def image_loader(transform):
    """The ImageFolder loader for a transform: `read_rgb` when it takes tensors (``transform.accepts_tensors``), else
    torchvision's default PIL loader."""
    return read_rgb if getattr(transform, 'accepts_tensors', False) else default_loader


__all__ = ['read_rgb', 'image_loader', 'lazy_loader', 'DECODE_ERRORS']
