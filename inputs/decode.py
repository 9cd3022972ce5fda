"""Reading image files on the CPU workers (`read_rgb`, `image_loader`): the ImageFolder loader for transforms that
take tensors decodes JPEG files with torchvision's libjpeg-turbo (`torchvision.io.decode_jpeg`) straight into a uint8
tensor: the same pixels as PIL's decode + convert('RGB'), without PIL's two copies (convert, then the numpy view of the
bytes). Other transforms get PIL RGB images (`read_pil_rgb`); `lazy_loader` leaves JPEG undecoded for draft decoding
(`inputs.crops`). Images of more than 8 bits per channel (16-bit PNGs from depth sensors and microscopes) are scaled to
8 bits, never clipped, by every reader (`eight_bit`). `DECODE_ERRORS`: what a broken file raises, in one place.
"""
import io
import warnings

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

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

SIXTEEN_BIT_MODES = ('I;16', 'I;16L', 'I;16B', 'I;16N')


def eight_bit(image):
    """A PIL image of more than 8 bits per channel as an 8-bit grayscale ('L') image, scaled, never clipped (PIL's
    own ``convert`` clips everything above 255): 16-bit values (modes I;16*, and I when its values fit in 16 bits, as
    Pillow opens some 16-bit PNGs) become x / 257, rounded (65535 -> 255): intensities such as depth or microscopy,
    not label maps (store those as 8-bit images). Float values (mode F) in [0, 1] become x * 255; whole numbers in
    [0, 255] stay as they are (an 8-bit image stored as float). Every other float image has no scale that is not a
    guess: ValueError (a ``DECODE_ERRORS``, so the loader names the file), as for a 32-bit image beyond 16 bits.
    Every other mode is returned as it is (16-bit RGB PNGs Pillow reads by their high byte, x >> 8, within one level
    of x / 257)."""
    if image.mode not in SIXTEEN_BIT_MODES + ('I', 'F'):
        return image
    pixels = np.asarray(image, dtype=np.float64)
    low, high = (float(pixels.min()), float(pixels.max())) if pixels.size else (0.0, 0.0)
    if image.mode == 'F':
        whole = bool(np.all(pixels == np.round(pixels)))
        if not (0 <= low <= high <= 1 or (0 <= low <= high <= 255 and whole)):
            raise ValueError(f'a float image (mode F) with values in [{low:g}, {high:g}]: only [0, 1], or whole '
                             f'numbers in [0, 255], have a scale to 8 bits; save it so, or as an 8- or 16-bit image')
        scaled = pixels * 255 if high <= 1 else pixels
    else:
        if not 0 <= low <= high <= 65535:
            raise ValueError(f'a 32-bit integer image (mode {image.mode}) with values in [{low:g}, {high:g}]: no '
                             f'8-bit scale fits it; save it as an 8- or 16-bit image')
        scaled = pixels / 257.0
    return Image.fromarray(scaled.round().astype(np.uint8), mode='L')


def to_rgb(image):
    """A decoded PIL image as 8-bit RGB (``eight_bit`` first: high bit depths are scaled, not clipped)."""
    return eight_bit(image).convert('RGB')


def read_pil_rgb(path):
    """The image file at path as an 8-bit PIL RGB image: torchvision's default loader, with high bit depths scaled
    (``eight_bit``) instead of clipped."""
    with open(path, 'rb') as handle:
        try:
            image = Image.open(handle)
        except UnidentifiedImageError:        # PIL would name the file object: name the file
            raise UnidentifiedImageError(f'cannot identify image file {path!r}') from None
        return to_rgb(image)


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
    try:
        image = Image.open(io.BytesIO(data))  # parses the header only
    except UnidentifiedImageError:            # PIL would name the BytesIO: name the file, as the default loader does
        raise UnidentifiedImageError(f'cannot identify image file {path!r}') from None
    if image.format == 'JPEG' and decode_jpeg is not None:
        try:
            return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
        except (RuntimeError, Warning):  # refused, or torchvision's deprecation notice made an error (-W error)
            pass
    return to_rgb(image)


def image_loader(transform):
    """The ImageFolder loader for a transform: `read_rgb` when it takes tensors (``transform.accepts_tensors``), else
    `read_pil_rgb` (PIL images)."""
    return read_rgb if getattr(transform, 'accepts_tensors', False) else read_pil_rgb


__all__ = ['read_rgb', 'read_pil_rgb', 'to_rgb', 'eight_bit', 'image_loader', 'lazy_loader', 'DECODE_ERRORS']
