"""inputs.transforms: the training crops of CMC and of InsDis / MoCo, and the evaluation crop, on tiny generated
images."""
import numpy as np
import pytest
import torch
from conftest import chw, random_images
from PIL import Image
from torchvision import transforms

import dataset
from engine.errors import UserError

TO_TENSOR = transforms.PILToTensor()


def test_train_transforms_give_uint8_crops():
    image = Image.fromarray(random_images(1, 80, 100, 0)[0])
    for transform in (dataset.cmc_train_transform(64, 0.2), dataset.moco_train_transform(64, 0.2, 'CJ'),
                      dataset.moco_train_transform(64, 0.2, 'NULL')):
        torch.manual_seed(0)
        first = transform(image)
        torch.manual_seed(0)
        assert torch.equal(transform(image), first)  # seeded -> reproducible
        assert first.dtype == torch.uint8 and first.shape == (3, 64, 64)
        assert not torch.equal(transform(image), first)  # random crops
    with pytest.raises(UserError, match="unknown augmentation 'XX'"):
        dataset.moco_train_transform(64, 0.2, 'XX')


def test_moco_colour_augmentation_only_with_cj():
    flat = Image.new('RGB', (40, 30), (200, 30, 90))
    torch.manual_seed(0)
    null = [dataset.moco_train_transform(16, 0.2, 'NULL')(flat) for _ in range(10)]
    cj = [dataset.moco_train_transform(16, 0.2, 'CJ')(flat) for _ in range(20)]
    colour = torch.tensor([200, 30, 90], dtype=torch.uint8).view(3, 1, 1)
    assert all(torch.equal(crop, colour.expand(3, 16, 16)) for crop in null)  # crops of a flat image
    assert sum(torch.equal(crop, colour.expand(3, 16, 16)) for crop in cj) == 0
    assert any(torch.equal(crop[0], crop[1]) and torch.equal(crop[1], crop[2]) for crop in cj)  # some grey


@pytest.mark.parametrize('image_size, resized', [(64, 73), (224, 256)])
def test_eval_transform_sizes(image_size, resized):
    transform = dataset.eval_transform(image_size)
    assert transform.transforms[0].size == resized and transform.transforms[1].size == (image_size, image_size)
    array = random_images(1, 300, 400, 1)[0]
    out = transform(Image.fromarray(array))
    assert out.dtype == torch.uint8 and out.shape == (3, image_size, image_size)
    # Same as PIL: shorter side -> resized, centre crop (torchvision rounds the offsets).
    width = int(resized * 400 / 300)
    big = Image.fromarray(array).resize((width, resized), Image.BILINEAR)
    left, top = int(round((width - image_size) / 2)), int(round((resized - image_size) / 2))
    expected = np.asarray(big.crop((left, top, left + image_size, top + image_size)))
    assert torch.equal(out, chw(expected))
