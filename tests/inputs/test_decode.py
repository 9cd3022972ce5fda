"""decode.read_rgb (JPEG through torchvision's decode_jpeg) against PIL's decode, and the loader that
ImageFolderInstance picks for each transform: same pixels, same crops, PIL's errors for files it cannot read."""
import os
import warnings

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image
from torchvision import transforms
from torchvision.datasets.folder import default_loader

from inputs import decode
import dataset
from conftest import make_image_folder
from engine.errors import UserError

JPEG_VARIANTS = {  # Pillow save options -> a JPEG flavour a data set may hold
    'baseline 4:2:0 q90': dict(quality=90),
    'progressive': dict(quality=90, progressive=True),
    '4:4:4': dict(quality=95, subsampling=0),
    '4:2:2': dict(quality=75, subsampling=1),
    'optimised q30': dict(quality=30, optimize=True),
}


def save(path, array, mode='RGB', **options):
    Image.fromarray(array).convert(mode).save(path, **options)
    return str(path)


def pil_pixels(path):
    """What torchvision's default loader decodes, as a uint8 3 x H x W tensor."""
    return torch.from_numpy(np.array(default_loader(path))).permute(2, 0, 1)


@pytest.mark.parametrize('variant', sorted(JPEG_VARIANTS))
@pytest.mark.parametrize('photo', ['astronaut', 'chelsea'])
def test_jpeg_pixels_equal_pil(tmp_path, variant, photo):
    path = save(tmp_path / 'x.jpg', getattr(skimage.data, photo)(), **JPEG_VARIANTS[variant])
    ours = decode.read_rgb(path)
    assert isinstance(ours, torch.Tensor) and ours.dtype == torch.uint8 and ours.shape[0] == 3
    assert torch.equal(ours, pil_pixels(path))


@pytest.mark.parametrize('mode', ['L', 'CMYK'])
def test_grayscale_and_cmyk_jpeg_become_the_same_rgb(tmp_path, mode):
    path = save(tmp_path / 'x.jpg', skimage.data.coffee(), mode=mode, quality=90)
    ours = decode.read_rgb(path)
    assert ours.shape == (3, 400, 600) and torch.equal(ours, pil_pixels(path))


def test_other_formats_and_broken_jpegs_go_through_pil(tmp_path):
    png = save(tmp_path / 'x.png', skimage.data.coffee())
    image = decode.read_rgb(png)
    assert isinstance(image, Image.Image) and image.mode == 'RGB'
    assert np.array_equal(np.array(image), skimage.data.coffee())
    good = save(tmp_path / 'good.jpg', skimage.data.coffee(), quality=90)
    data = open(good, 'rb').read()
    (tmp_path / 'cut.jpg').write_bytes(data[:len(data) // 2])
    with pytest.raises(OSError, match='truncated'):  # PIL's error, as the default loader raises it
        decode.read_rgb(str(tmp_path / 'cut.jpg'))
    (tmp_path / 'junk.jpg').write_bytes(data[:3] + b'not a jpeg at all' * 10)
    with pytest.raises(OSError):
        decode.read_rgb(str(tmp_path / 'junk.jpg'))
    with pytest.raises(FileNotFoundError):
        decode.read_rgb(str(tmp_path / 'missing.jpg'))


def test_pils_decompression_bomb_limit_applies_to_jpeg(tmp_path, monkeypatch):
    # PIL checks a file's pixel count as it reads the header; decode_jpeg would decode anything (a 631-byte file can
    # claim 20000 x 20000), so read_rgb reads the header with PIL first. The limit lowered to keep the test small.
    path = save(tmp_path / 'x.jpg', skimage.data.coffee(), quality=90)  # 600 x 400 = 240,000 pixels
    monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', 100_000)
    with pytest.raises(Image.DecompressionBombError):  # over twice the limit: an error, as PIL's default loader
        decode.read_rgb(path)
    with pytest.raises(Image.DecompressionBombError):
        default_loader(path)
    monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', 200_000)
    with pytest.warns(Image.DecompressionBombWarning):  # over the limit: PIL's warning, then the same pixels
        ours = decode.read_rgb(path)
    assert isinstance(ours, torch.Tensor) and ours.shape == (3, 400, 600)


def test_warnings_made_errors_fall_back_to_pil(tmp_path):
    # python -W error: torchvision 0.29's deprecation notice raises inside decode_jpeg; PIL then decodes, same pixels.
    path = save(tmp_path / 'x.jpg', skimage.data.coffee(), quality=90)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        image = decode.read_rgb(path)
    expected = pil_pixels(path)
    if isinstance(image, torch.Tensor):  # a torchvision without the notice decodes it itself
        assert torch.equal(image, expected)
    else:
        assert torch.equal(torch.from_numpy(np.array(image)).permute(2, 0, 1), expected)


def test_fast_crop_refuses_tensors_it_cannot_crop():
    crop = dataset.cmc_train_transform(32, 0.2)
    for bad in (torch.zeros(64, 64, 3, dtype=torch.uint8), torch.zeros(3, 64, 64), torch.zeros(1, 3, 64, 64)):
        with pytest.raises(ValueError, match='uint8 C x H x W'):
            crop(bad)
    assert crop(torch.zeros(1, 64, 64, dtype=torch.uint8)).shape == (1, 32, 32)  # grayscale stays one channel


def test_fast_crop_of_the_tensor_equals_the_crop_of_the_pil_image(tmp_path):
    path = save(tmp_path / 'x.jpg', skimage.data.astronaut(), quality=90)
    crop = dataset.cmc_train_transform(96, 0.2)
    for seed in range(5):
        torch.manual_seed(seed)
        from_pil = crop(default_loader(path))
        torch.manual_seed(seed)
        from_tensor = crop(decode.read_rgb(path))
        assert from_tensor.is_contiguous() and torch.equal(from_tensor, from_pil)


def make_folder(root):
    """An ImageFolder of JPEGs: root/train/class_{0,1}/{0,1,2}.jpg."""
    return make_image_folder(root, classes=2, per_class=3, size=80, splits=('train',), ext='jpg')


def test_image_folder_picks_the_loader_by_transform_and_items_agree(tmp_path):
    root = make_folder(tmp_path)
    fast = dataset.build_dataset('folder', root, 'train', dataset.cmc_train_transform(64, 0.2))
    pil = dataset.build_dataset('folder', root, 'train', dataset.cmc_train_transform(64, 0.2, fast=False))
    assert fast.loader is decode.read_rgb and pil.loader is decode.read_pil_rgb
    assert isinstance(fast.image(0), Image.Image)  # image() stays a PIL image for every transform
    reference = dataset.ImageFolderInstance(os.path.join(root, 'train'), transform=dataset.cmc_train_transform(64, 0.2))
    reference.loader = default_loader  # the same transform fed PIL images: a second path to the same crops
    for index in range(len(fast)):
        torch.manual_seed(index)
        ours, target, item = fast[index]
        torch.manual_seed(index)
        expected, expected_target, expected_item = reference[index]
        assert torch.equal(ours, expected) and (target, item) == (expected_target, expected_item)


def test_skip_bad_images_with_the_tensor_loader(tmp_path):
    root = make_folder(tmp_path)
    transform = dataset.cmc_train_transform(32, 0.2)
    torch.manual_seed(0)
    expected = dataset.build_dataset('folder', root, 'train', transform)[2]  # what the skip must hand out instead
    broken = os.path.join(root, 'train', 'class_0', '1.jpg')  # item 1 (class_0 holds 0, 1, 2)
    with open(broken, 'rb') as handle:
        head = handle.read(300)
    with open(broken, 'wb') as handle:
        handle.write(head)
    strict = dataset.build_dataset('folder', root, 'train', transform)
    with pytest.raises(UserError, match='cannot decode image .*1.jpg.*--skip_bad_images'):
        strict[1]
    lenient = dataset.build_dataset('folder', root, 'train', transform, skip_bad_images=True)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter('always')
        torch.manual_seed(0)
        image, target, index = lenient[1]
    assert (index, target, lenient.num_skipped) == (2, 0, 1)
    assert torch.equal(image, expected[0])  # the next item's crop, read through read_rgb


def png16_rgb(path, rgb):
    """A 16-bit-per-channel RGB PNG written by hand (Pillow writes none): rgb is H x W x 3 uint16."""
    import struct
    import zlib
    height, width, _ = rgb.shape
    raw = b''.join(b'\x00' + rgb[y].astype('>u2').tobytes() for y in range(height))

    def chunk(kind, data):
        return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))
    header = struct.pack('>IIBBBBB', width, height, 16, 2, 0, 0, 0)
    with open(path, 'wb') as f:
        f.write(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header) + chunk(b'IDAT', zlib.compress(raw)) +
                chunk(b'IEND', b''))


GRADIENT = np.linspace(0, 65535, 4 * 300).round().astype(np.uint16).reshape(4, 300)    # 16 bits, 0 .. 65535


@pytest.mark.parametrize('mode, ext', [('I;16', 'png'), ('I', 'tif')])
def test_16_bit_images_are_scaled_to_8_bits_not_clipped(tmp_path, mode, ext):
    """A depth sensor's or a microscope's 16-bit PNG: x / 257 rounded (65535 -> 255), where PIL's convert clips every
    value above 255 to white (the old loader: a binary mask). Mode I (32-bit) holding 16-bit values alike."""
    path = str(tmp_path / f'depth.{ext}')
    Image.fromarray(GRADIENT).convert(mode).save(path)
    assert Image.open(path).mode == mode
    expected = np.repeat(np.round(GRADIENT / 257.0).astype(np.uint8)[..., None], 3, axis=2)      # H x W x 3
    assert (np.asarray(default_loader(path)) == 255).mean() > 0.99           # what clipping gave
    for read in (decode.read_pil_rgb, decode.read_rgb):
        image = read(path)
        assert image.mode == 'RGB' and np.array_equal(np.asarray(image), expected)
    assert expected.min() == 0 and expected.max() == 255 and len(np.unique(expected)) == 256     # every level


def test_16_bit_images_reach_every_data_set_scaled(tmp_path):
    for split in ('train', 'val'):
        for view in ('rgb', 'depth'):
            os.makedirs(tmp_path / split / view / 'c0')
            image = Image.fromarray(GRADIENT[:, :4]) if view == 'depth' else Image.new('RGB', (4, 4), (9, 9, 9))
            image.save(tmp_path / split / view / 'c0' / 'a.png')
    eight = np.round(GRADIENT[:, :4] / 257.0).astype(np.uint8)
    folder = dataset.ImageFolderInstance(tmp_path / 'train' / 'depth', transform=transforms.PILToTensor())
    assert torch.equal(folder[0][0], torch.from_numpy(np.stack([eight] * 3)))
    assert np.array_equal(np.asarray(folder.image(0))[..., 0], eight)        # what the colour check looks at
    multiview = dataset.build_dataset('multiview_folder', str(tmp_path), 'train', None, views=['L', 'depth'])
    assert torch.equal(multiview[0][0][3], torch.from_numpy(eight))


def test_16_bit_rgb_pngs_are_read_by_their_high_byte(tmp_path):
    rgb = (np.arange(6 * 7 * 3).reshape(6, 7, 3) * 523).astype(np.uint16)
    png16_rgb(tmp_path / 'rgb16.png', rgb)
    ours = np.asarray(decode.read_pil_rgb(str(tmp_path / 'rgb16.png'))).astype(int)
    assert np.array_equal(ours, rgb >> 8) and np.abs(ours - np.round(rgb / 257.0)).max() <= 1


@pytest.mark.parametrize('values, expected', [((0.0, 0.5, 1.0), (0, 128, 255)), ((0.0, 100.0, 255.0), (0, 100, 255))])
def test_float_images_in_0_1_or_whole_numbers_in_0_255_are_scaled(tmp_path, values, expected):
    path = str(tmp_path / 'f.tif')
    Image.fromarray(np.array([values], dtype=np.float32), mode='F').save(path)
    assert np.asarray(decode.read_pil_rgb(path))[0, :, 0].tolist() == list(expected)


@pytest.mark.parametrize('values', [(0.0, 1000.0), (0.5, 1.5)])
def test_float_images_without_a_sure_scale_are_named_not_guessed(tmp_path, values):
    """[0, 1.5] could be a [0, 1] image that overshoots or a dark [0, 255] one: a guess either way, so refused."""
    os.makedirs(tmp_path / 'train' / 'c0')
    path = str(tmp_path / 'train' / 'c0' / 'f.tif')
    Image.fromarray(np.array([values], dtype=np.float32), mode='F').save(path)
    data = dataset.ImageFolderInstance(tmp_path / 'train', transform=transforms.PILToTensor())
    low, high = (f'{v:g}' for v in values)
    with pytest.raises(UserError, match=rf'cannot decode image {path} \(ValueError: a float image \(mode F\) with '
                                        rf'values in \[{low}, {high}\]: only \[0, 1\], or whole numbers in \[0, 255\]'):
        data[0]


def test_read_pil_rgb_is_torchvisions_loader_on_8_bit_images(tmp_path):
    rng = np.random.RandomState(0)
    pixels = rng.randint(0, 256, (9, 11, 3)).astype(np.uint8)
    images = {'rgb.png': Image.fromarray(pixels), 'l.png': Image.fromarray(pixels[..., 0]),
              'p.png': Image.fromarray(pixels).convert('P'), 'rgba.png': Image.fromarray(pixels).convert('RGBA'),
              'la.png': Image.fromarray(pixels).convert('LA'), 'cmyk.jpg': Image.fromarray(pixels).convert('CMYK')}
    for name, image in images.items():
        image.save(tmp_path / name)
        assert np.array_equal(np.asarray(decode.read_pil_rgb(str(tmp_path / name))),
                              np.asarray(default_loader(str(tmp_path / name)))), name
