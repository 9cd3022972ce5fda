"""scripts/extract_features.py on tiny generated image folders and random-init checkpoints: the saved features against
the encoder run here on images decoded and cropped by hand, the kNN in the map's title against a kNN written out in
numpy, the map itself, and one error line for each bad input."""
import errno
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
from pretrained import feature_map as fm
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


def nyu_folder(root, views=('rgb', 'depth')):
    """root/{train,val}/<view>/c{0,1}/{0,1,2}.png: random 40 x 40 RGB images and their green channel as depth."""
    rng = np.random.default_rng(0)
    for split in ('train', 'val'):
        for c in range(2):
            for i in range(3):
                rgb = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
                for view, pixels in (('rgb', rgb), ('depth', rgb[:, :, 1])):
                    if view in views:
                        os.makedirs(root / split / view / f'c{c}', exist_ok=True)
                        Image.fromarray(np.ascontiguousarray(pixels)).save(root / split / view / f'c{c}' / f'{i}.png')
    return str(root)


def test_multiview_folder_features_come_from_the_views_tensor(tmp_path):
    from inputs.build import build_dataset
    from inputs.transforms import eval_transform
    from views import ViewStack
    nyu_folder(tmp_path / 'nyu')
    ckpt = save_cmc(tmp_path / 'depth.pth', views=('L', 'depth'), channels=(1, 1))
    out = tmp_path / 'depth.npz'
    extract_features.main(['--model_path', ckpt, '--dataset', 'multiview_folder', '--data_folder',
                           str(tmp_path / 'nyu'), '--out', str(out), '--num_workers', '0', '--split', 'train'])
    saved = np.load(out, allow_pickle=False)
    dataset = build_dataset('multiview_folder', str(tmp_path / 'nyu'), 'train', eval_transform(SIZE),
                            views=['L', 'depth'])
    views = ViewStack(['L', 'depth'], {'depth': 1})(torch.stack([dataset[i][0] for i in range(len(dataset))]))
    np.testing.assert_allclose(saved['features'], load_encoder(ckpt).features(views=views).numpy(), atol=1e-5, rtol=0)
    assert [os.path.relpath(p, tmp_path / 'nyu' / 'train') for p in saved['paths']] == \
        [f'rgb/c{c}/{i}.png' for c in range(2) for i in range(3)]
    with pytest.raises(errors.UserError, match=r'trained on views read from files \(depth\): give --dataset multiview_folder'):
        extract_features.main(['--model_path', ckpt, '--dataset', 'folder', '--data_folder', str(tmp_path / 'nyu'),
                               '--out', str(tmp_path / 'rgb.npz'), '--num_workers', '0'])


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


def save_rgb(path, model='resnet18', **opt):
    """A MoCo checkpoint (random weights) recording ``opt``."""
    from models import build_ins_model
    torch.manual_seed(0)
    checkpoint.save_checkpoint({'opt': {'model': model, 'moco': True, **opt}, 'model': build_ins_model(model).state_dict(),
                                'epoch': 1}, path)
    return str(path)


def test_an_rgb_encoder_reads_the_rgb_folders_of_multiview_data(tmp_path, capsys):
    data = nyu_folder(tmp_path / 'nyu')
    ckpt, out = save_rgb(tmp_path / 'moco.pth', image_size=SIZE), tmp_path / 'moco.npz'
    extract_features.main(['--model_path', ckpt, '--dataset', 'multiview_folder', '--data_folder', data, '--out',
                           str(out), '--num_workers', '0', '--split', 'val'])
    assert ('--dataset multiview_folder: a moco encoder reads the RGB images of the rgb/ folders (the other view '
            'folders are for CMC encoders)') in capsys.readouterr().out
    saved = np.load(out, allow_pickle=False)
    paths = [os.path.join(data, 'val', 'rgb', f'c{c}', f'{i}.png') for c in range(2) for i in range(3)]
    assert saved['paths'].tolist() == paths and saved['labels'].tolist() == [0, 0, 0, 1, 1, 1]
    from inputs.build import build_dataset
    from inputs.transforms import eval_transform
    stacked = build_dataset('multiview_folder', data, 'val', eval_transform(SIZE), views=['L', 'depth'])
    rgb = torch.stack([stacked[i][0][:3] for i in range(len(stacked))])          # the rgb files, as CMC's L reads them
    np.testing.assert_allclose(saved['features'], load_encoder(ckpt).features(images=rgb).numpy(), atol=1e-5, rtol=0)
    depth_only = nyu_folder(tmp_path / 'depth_only', views=('depth',))
    assert fails(['--model_path', ckpt, '--dataset', 'multiview_folder', '--data_folder', depth_only, '--out',
                  str(tmp_path / 'x.npz')], capsys) == (
        f'error: {depth_only}/train has no rgb/ folder: a moco encoder reads the RGB images of --dataset '
        f'multiview_folder from <split>/rgb/<class>/ (its other view folders are for CMC encoders)')


def test_outputs_that_are_one_file_or_empty_are_refused_before_any_work(run, tmp_path, capsys):
    data, ckpt, _, _ = run
    base = ['--model_path', ckpt, '--dataset', 'folder', '--data_folder', data, '--num_workers', '0']
    same = str(tmp_path / 'f.png')
    assert fails(base + ['--out', same, '--plot', same], capsys) == (
        f'error: --plot {same} is the same file as --out {same}: one would overwrite the other; give each its own file')
    os.symlink(tmp_path / 'f.npz', tmp_path / 'link.png')                       # to an --out not yet written
    line = fails(base + ['--out', str(tmp_path / 'f.npz'), '--plot', str(tmp_path / 'link.png'), '--overwrite'], capsys)
    assert line.startswith(f'error: --plot {tmp_path}/link.png is the same file as --out {tmp_path}/f.npz')
    assert fails(base + ['--out', ''], capsys) == 'error: --out is empty; give the file to write'
    assert fails(base + ['--out', same, '--plot', ''], capsys) == 'error: --plot is empty; give the file to write'
    assert os.listdir(tmp_path) == ['link.png']


def test_the_image_size_says_where_it_comes_from_and_alexnet_needs_64(tmp_path, capsys):
    """Each run stops at the missing data folder, after the line (nothing extracted)."""
    base = ['--dataset', 'folder', '--data_folder', str(tmp_path / 'nowhere'), '--out', str(tmp_path / 'x.npz')]
    unrecorded = save_rgb(tmp_path / 'old.pth')
    with pytest.raises(SystemExit):
        errors.run_main(extract_features.main, ['--model_path', unrecorded, *base])
    assert capsys.readouterr().out.splitlines() == [
        'image size 224: the checkpoint does not record one; give --image_size if it was trained at another size']
    with pytest.raises(SystemExit):
        errors.run_main(extract_features.main, ['--model_path', save_rgb(tmp_path / 'new.pth', image_size=48), *base])
    assert capsys.readouterr().out.splitlines() == [
        "image size 48: the checkpoint's training size (give --image_size for another)"]
    torch.manual_seed(0)
    alexnet = str(tmp_path / 'alexnet.pth')
    checkpoint.save_checkpoint({'opt': {'model': 'alexnet', 'views': ['L', 'ab'], 'view_channels': [1, 2],
                                        'image_size': 64}, 'model': build_cmc_model('alexnet').state_dict()}, alexnet)
    assert fails(['--model_path', alexnet, *base, '--image_size', '32'], capsys) == (
        'error: --model alexnet needs --image_size 64 or more (its pooling runs out of pixels), got 32')


def test_skip_bad_images_leaves_an_undecodable_image_out(run, tmp_path, capsys):
    _, ckpt, _, _ = run
    data = make_image_folder(tmp_path / 'data', classes=2, per_class=3, size=40)
    bad = os.path.join(data, 'val', 'class_0', '1.png')
    Path(bad).write_bytes(Path(bad).read_bytes()[:60])                          # a truncated PNG
    args = ['--model_path', ckpt, '--dataset', 'folder', '--data_folder', data, '--split', 'val', '--num_workers', '0',
            '--out', str(tmp_path / 'val.npz')]
    assert 'pass --skip_bad_images to skip such files' in fails(args, capsys)
    with pytest.warns(UserWarning, match='skipping undecodable image'):
        extract_features.main(args + ['--skip_bad_images'])
    assert 'val: 5 images -> (5, 512) features at layer 6' in capsys.readouterr().out
    saved = np.load(tmp_path / 'val.npz', allow_pickle=False)
    paths = [os.path.join(data, 'val', f'class_{c}', f'{i}.png') for c in range(2) for i in range(3)]
    paths.remove(bad)
    assert saved['paths'].tolist() == paths and saved['labels'].tolist() == [0, 0, 1, 1, 1]
    want = load_encoder(ckpt).features(images=torch.stack([eval_crop(p) for p in paths])).numpy()
    np.testing.assert_allclose(saved['features'], want, atol=1e-5, rtol=0)


def test_a_full_disk_leaves_both_outputs_as_they_were(run, tmp_path, monkeypatch):
    """--out and --plot are written together: the plot's write filling the disk keeps the old --out too, and the
    line's advice is this script's (not a training run's --resume)."""
    data, ckpt, _, _ = run
    out, png = tmp_path / 'f.npz', tmp_path / 'f.png'
    out.write_bytes(b'old')

    def no_room(*args, **kwargs):
        raise OSError(errno.ENOSPC, 'No space left on device')

    monkeypatch.setattr(fm, 'feature_map_writer', lambda panels, path: no_room)
    with pytest.raises(errors.UserError) as e:
        extract_features.main(['--model_path', ckpt, '--dataset', 'folder', '--data_folder', data, '--out', str(out),
                               '--plot', str(png), '--num_workers', '0', '--overwrite'])
    assert re.fullmatch(rf'could not write {re.escape(str(png))}: No space left on device \(\d+ MiB free there\); free '
                        r'some space or give --plot on another disk \(no existing file was changed\)', str(e.value))
    assert os.listdir(tmp_path) == ['f.npz'] and out.read_bytes() == b'old'
