"""inputs.crops: draft (reduced-scale) JPEG decoding against full decoding, and the torch-resized uint8 crops against
torchvision's."""
import io
import pickle

import pytest
import skimage.color
import skimage.data
import torch
from PIL import Image
from torchvision import transforms

import dataset
from inputs import crops, decode

PHOTOS = ('astronaut', 'coffee', 'chelsea')


def jpeg_bytes(name, size=(500, 375), quality=90):
    """A scikit-image photograph resized to `size` and saved as JPEG."""
    image = Image.fromarray(getattr(skimage.data, name)()).convert('RGB').resize(size, Image.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, 'JPEG', quality=quality)
    return buffer.getvalue()


@pytest.mark.parametrize('name', PHOTOS)
@pytest.mark.parametrize('size', [64, 112])
def test_draft_decode_matches_full_decode(name, size):
    data = jpeg_bytes(name)
    torch.manual_seed(0)
    scales = set()
    for _ in range(25):
        image = Image.open(io.BytesIO(data))
        box = transforms.RandomResizedCrop.get_params(image, [0.2, 1.0], [3 / 4, 4 / 3])  # (top, left, h, w)
        scales.add(crops.draft_scale(image.size, box, size))
        drafted = crops.decode_crop(image, box, size)
        full = crops.decode_crop(Image.open(io.BytesIO(data)), box, size, use_draft=False)
        diff = (drafted.int() - full.int()).abs()
        assert drafted.shape == full.shape == (3, size, size) and drafted.dtype == torch.uint8
        assert diff.float().mean().item() <= crops.DRAFT_TOLERANCE['mean_abs']
        assert diff.max().item() <= crops.DRAFT_TOLERANCE['max_abs']
    assert scales & {2, 4}, f"no reduced-scale decode exercised (scales {scales})"


def test_draft_really_decodes_small():
    image = Image.open(io.BytesIO(jpeg_bytes('coffee')))
    crops.decode_crop(image, (0, 0, 375, 500), 64)  # 375 / 4 >= 64: quarter scale
    assert image.size == (125, 94)


def test_transform_matches_torchvision_when_no_draft_applies():
    # 224 px from a 500 x 375 photo never has 448 px to spare: full decode, so the seeded draw and pixels equal
    # dataset.cmc_train_transform's exactly.
    data = jpeg_bytes('chelsea')
    for seed in range(5):
        torch.manual_seed(seed)
        expected = dataset.cmc_train_transform(224, fast=False)(Image.open(io.BytesIO(data)).convert('RGB'))
        torch.manual_seed(seed)
        ours = crops.DraftRandomResizedCrop(224)(decode.lazy_loader(io.BytesIO(data)))
        assert ours.dtype == torch.uint8 and ours.shape == (3, 224, 224)
        assert torch.equal(ours, expected)


def test_transform_is_picklable_and_handles_png(tmp_path):
    transform = pickle.loads(pickle.dumps(crops.DraftRandomResizedCrop(48, scale=(0.5, 1.0))))
    path = tmp_path / 'x.png'
    Image.fromarray(skimage.data.coffee()).save(path)
    out = transform(decode.lazy_loader(str(path)))
    assert out.dtype == torch.uint8 and out.shape == (3, 48, 48)
    grey = Image.fromarray(skimage.data.camera())  # mode L: converted to RGB after decoding
    assert transform(grey).shape == (3, 48, 48)
    assert 'DraftRandomResizedCrop' in repr(transform)


def test_torch_resized_crop_matches_torchvision():
    # torch's uint8 antialiased bilinear kernel against PIL's (torchvision's RandomResizedCrop), same integer boxes:
    # measured max 1 level, mean 0.02 on 300 boxes; TORCH_RESIZE_TOLERANCE bounds every crop.
    image = Image.open(io.BytesIO(jpeg_bytes('astronaut'))).convert('RGB')
    torch.manual_seed(0)
    for size in (224, 64):
        for _ in range(20):
            box = transforms.RandomResizedCrop.get_params(image, [0.2, 1.0], [3 / 4, 4 / 3])
            expected = transforms.functional.pil_to_tensor(transforms.functional.resized_crop(image, *box, [size] * 2))
            diff = (crops.torch_resized_crop(image, box, size).int() - expected.int()).abs()
            assert diff.max() <= crops.TORCH_RESIZE_TOLERANCE['max_abs']
            assert diff.float().mean() <= crops.TORCH_RESIZE_TOLERANCE['mean_abs']


def test_fast_crop_draws_as_torchvision_and_keeps_grayscale():
    # Same seeded box and flip as dataset.cmc_train_transform(fast=False), pixels within the resize tolerance.
    image = Image.open(io.BytesIO(jpeg_bytes('chelsea'))).convert('RGB')
    fast = pickle.loads(pickle.dumps(dataset.cmc_train_transform(96, 0.2)))
    for seed in range(4):
        torch.manual_seed(seed)
        expected = dataset.cmc_train_transform(96, 0.2, fast=False)(image)
        torch.manual_seed(seed)
        ours = fast(image)
        assert ours.dtype == torch.uint8 and ours.shape == (3, 96, 96) and ours.is_contiguous()
        assert (ours.int() - expected.int()).abs().max() <= crops.TORCH_RESIZE_TOLERANCE['max_abs']
    assert fast(Image.fromarray(skimage.data.camera())).shape == (1, 96, 96)       # mode L stays one channel
