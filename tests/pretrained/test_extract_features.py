"""scripts/extract_features.py on tiny generated image folders and random-init checkpoints: the saved features against
the encoder run here on images decoded and cropped by hand, the kNN in the map's title against a kNN written out in
numpy, the map itself, and one error line for each bad input."""
import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, make_image_folder
from PIL import Image

from engine import checkpoint, errors
from models import build_cmc_model
from pretrained import load_encoder
from pretrained.feature_map import DPI, LEGEND_INCHES, PANEL_INCHES

sys.path.insert(0, os.path.join(ROOT, 'scripts'))
import extract_features

SIZE = 32                                   # the checkpoint's image_size: Resize(round(32 * 256 / 224) = 37), crop 32


def save_cmc(path, views=('L', 'ab'), channels=(1, 2), **extra):
    torch.manual_seed(0)
    model = build_cmc_model('resnet18v1', view_channels=channels, view_names=list(views))
    checkpoint.save_checkpoint({'opt': {'model': 'resnet18v1', 'views': list(views), 'view_channels': list(channels),
                                        'image_size': SIZE}, 'model': model.state_dict(), 'epoch': 1, **extra}, path)
    return str(path)


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    """(data folder, checkpoint, npz path, png path) of one extraction of both splits with --plot."""
    root = tmp_path_factory.mktemp('extract')
    data = make_image_folder(root / 'data', classes=3, per_class=4, size=40)
    ckpt = save_cmc(root / 'cmc.pth')
    out, png = str(root / 'feats' / 'cmc.npz'), str(root / 'feats' / 'cmc.png')
    extract_features.main(['--model_path', ckpt, '--dataset', 'folder', '--data_folder', data, '--out', out,
                           '--plot', png, '--num_workers', '0', '--batch_size', '5'])
    return data, ckpt, out, png


def eval_crop(path, size=SIZE):
    """torchvision's Resize(round(size * 256 / 224)) + CenterCrop(size) + PILToTensor, written out (square images)."""
    resized = round(size * 256 / 224)
    image = Image.open(path).convert('RGB').resize((resized, resized), Image.BILINEAR)
    top = round((resized - size) / 2.0)               # torchvision: int(round(...))
    image = image.crop((top, top, top + size, top + size))
    return torch.from_numpy(np.asarray(image).transpose(2, 0, 1).copy())


def test_features_labels_and_paths_match_the_encoder_on_the_folder(run):
    data, ckpt, out, _ = run
    saved = np.load(out, allow_pickle=False)
    expected_paths = [os.path.join(data, split, f'class_{c}', f'{i}.png')
                      for split in ('train', 'val') for c in range(3) for i in range(4)]
    assert saved['paths'].tolist() == expected_paths
    assert saved['labels'].tolist() == [int(p.split('class_')[1][0]) for p in expected_paths]
    assert saved['labels'].dtype == np.int64 and saved['features'].dtype == np.float32
    assert saved['split'].tolist() == ['train'] * 12 + ['val'] * 12
    assert saved['classes'].tolist() == ['class_0', 'class_1', 'class_2'] and int(saved['layer']) == 6
    encoder = load_encoder(ckpt)
    images = torch.stack([eval_crop(p) for p in expected_paths])
    want = encoder.features(images, 6).numpy()
    assert saved['features'].shape == (24, 512)              # two half-width ResNet-18s: 256 each, concatenated
    np.testing.assert_allclose(saved['features'], want, atol=1e-5, rtol=0)
    info = json.loads(str(saved['info']))
    assert info['method'] == 'cmc' and info['views'] == ['L', 'ab'] and info['image_size'] == SIZE


def numpy_knn(train, train_labels, val, val_labels, parts, k=200, t=0.07):
    """Top-1 (%) of the weighted kNN: each view's half unit-normed, then the whole; cosine similarity, the k most
    similar train features vote exp(s / t) for their class."""
    def unit(x):
        return x / np.linalg.norm(x, axis=1, keepdims=True)
    train, val = (unit(np.concatenate([unit(p) for p in np.split(x.astype(np.float64), parts, axis=1)], axis=1))
                  for x in (train, val))
    sim = val @ train.T
    top = np.argsort(-sim, axis=1)[:, :min(k, len(train))]
    votes = np.zeros((len(val), train_labels.max() + 1))
    for q in range(len(val)):
        np.add.at(votes[q], train_labels[top[q]], np.exp(sim[q, top[q]] / t))
    return 100 * np.mean(votes.argmax(1) == val_labels)


def test_knn_in_the_title_and_the_map_image(run):
    _, _, out, png = run
    saved = np.load(out, allow_pickle=False)
    is_train = saved['split'] == 'train'
    expected = numpy_knn(saved['features'][is_train], saved['labels'][is_train], saved['features'][~is_train],
                         saved['labels'][~is_train], parts=2)
    assert float(saved['knn_top1']) == pytest.approx(expected, abs=1e-9)
    with Image.open(png) as image:
        image.verify()
    with Image.open(png) as image:
        assert image.format == 'PNG'
        assert image.size == ((PANEL_INCHES + LEGEND_INCHES) * DPI, PANEL_INCHES * DPI)
        title = image.text['Title']
    (shown,) = re.findall(r'layer 6: (?:t-SNE|UMAP) of 12 val images; kNN top-1 ([\d.]+)%', title)
    assert shown == f'{expected:.1f}'
    assert not [name for name in os.listdir(os.path.dirname(out)) if name.endswith('.tmp')]


def test_one_split_and_overwrite(run, tmp_path):
    data, ckpt, out, _ = run
    mine = tmp_path / 'val.npz'
    mine.write_bytes(b'old')
    args = ['--model_path', ckpt, '--dataset', 'folder', '--data_folder', data, '--out', str(mine), '--split', 'val',
            '--num_workers', '0', '--overwrite']
    extract_features.main(args)
    saved, both = np.load(mine, allow_pickle=False), np.load(out, allow_pickle=False)
    assert saved['split'].tolist() == ['val'] * 12 and 'knn_top1' not in saved
    np.testing.assert_allclose(saved['features'], both['features'][12:], atol=1e-5, rtol=0)


def test_multiview_folder_features_come_from_the_views_tensor(tmp_path):
    from inputs.build import build_dataset
    from inputs.transforms import eval_transform
    from views import ViewStack
    rng = np.random.default_rng(0)
    for split in ('train', 'val'):
        for c in range(2):
            for i in range(3):
                rgb = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
                for view, pixels in (('rgb', rgb), ('depth', rgb[:, :, 1])):
                    os.makedirs(tmp_path / 'nyu' / split / view / f'c{c}', exist_ok=True)
                    Image.fromarray(np.ascontiguousarray(pixels)).save(tmp_path / 'nyu' / split / view / f'c{c}'
                                                                       / f'{i}.png')
    ckpt = save_cmc(tmp_path / 'depth.pth', views=('L', 'depth'), channels=(1, 1))
    out = tmp_path / 'depth.npz'
    extract_features.main(['--model_path', ckpt, '--dataset', 'multiview_folder', '--data_folder',
                           str(tmp_path / 'nyu'), '--out', str(out), '--num_workers', '0', '--split', 'train'])
    saved = np.load(out, allow_pickle=False)
    dataset = build_dataset('multiview_folder', str(tmp_path / 'nyu'), 'train', eval_transform(SIZE),
                            views=['L', 'depth'])
    views = ViewStack(['L', 'depth'], {'depth': 1})(torch.stack([dataset[i][0] for i in range(len(dataset))]))
    np.testing.assert_allclose(saved['features'], load_encoder(ckpt).features(views).numpy(), atol=1e-5, rtol=0)
    assert [os.path.relpath(p, tmp_path / 'nyu' / 'train') for p in saved['paths']] == \
        [f'rgb/c{c}/{i}.png' for c in range(2) for i in range(3)]


def fails(argv, capsys):
    """The one error line of a run that must fail (non-zero exit)."""
    with pytest.raises(SystemExit) as e:
        errors.run_main(extract_features.main, argv)
    lines = capsys.readouterr().err.strip().splitlines()
    assert e.value.code != 0 and len(lines) == 1 and lines[0].startswith('error: '), lines
    return lines[0]


def test_bad_input_is_one_error_line_and_nothing_written(run, tmp_path, capsys):
    data, ckpt, out, png = run
    files = [Path(out), Path(png)]
    before = [f.read_bytes() for f in files]
    base = ['--model_path', ckpt, '--dataset', 'folder', '--data_folder', data, '--num_workers', '0']
    new = str(tmp_path / 'new.npz')
    assert 'already exists; pass --overwrite' in fails(base + ['--out', out], capsys)
    assert 'already exists; pass --overwrite' in fails(base + ['--out', new, '--plot', png], capsys)
    assert 'is a folder; give the file to write' in fails(base + ['--out', str(tmp_path)], capsys)
    assert 'give a .png, .pdf or .svg file' in fails(base + ['--out', new, '--plot', str(tmp_path / 'm.gif')], capsys)
    assert 'does not exist' in fails(['--model_path', ckpt, '--dataset', 'folder', '--data_folder',
                                      str(tmp_path / 'nowhere'), '--out', new], capsys)
    assert '--layer 9 is out of range for --model resnet18v1 (layers 1..7)' in fails(base + ['--out', new, '--layer',
                                                                                           '9'], capsys)
    probe = save_cmc(tmp_path / 'probe.pth', classifier={'weight': torch.zeros(3, 512)})
    assert "is a linear probe's checkpoint" in fails(base[:1] + [probe] + base[2:] + ['--out', new], capsys)
    assert '--plot needs --split both' in fails(base + ['--out', new, '--plot', str(tmp_path / 'm.png'), '--split',
                                                       'train'], capsys)
    unlabelled = tmp_path / 'unlabelled.npz'
    pixels = np.random.default_rng(0).integers(0, 256, (4, 40, 40, 3), dtype=np.uint8)
    np.savez(unlabelled, classes=np.array(['a']), train_images=pixels, train_labels=-np.ones(4, np.int64),
             val_images=pixels, val_labels=-np.ones(4, np.int64))
    assert '--plot needs labelled images' in fails(['--model_path', ckpt, '--dataset', 'demo', '--data_folder',
                                                    str(unlabelled), '--out', new, '--plot',
                                                    str(tmp_path / 'm.png')], capsys)
    assert [f.read_bytes() for f in files] == before
    assert sorted(os.listdir(tmp_path)) == ['probe.pth', 'unlabelled.npz']
