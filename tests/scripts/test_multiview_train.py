"""CMC with any number of views end to end (Tian et al. 2019, Sec. 3.3): --views / --paradigm in train_CMC.py, the
multiview_folder data set, the predictive objective, LinearProbing.py --probe_views and the findings scripts' smoke
mode. Tiny generated data, 64 px, one epoch, --num_workers 0."""
import glob
import os
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image

import LinearProbing
import train_CMC
from dataset import build_dataset, cmc_train_transform
from engine import checkpoint, errors
from views import DeviceView, ViewStack
from conftest import ROOT

TINY = ['--image_size', '64', '--num_workers', '0', '--batch_size', '8', '--device', 'cpu', '--seed', '0',
        '--print_freq', '1', '--model', 'alexnet', '--nce_k', '8', '--epochs', '1']


def train(tmp_path, data, *extra, dataset='folder'):
    """train_CMC.main on tiny data; returns (run folder, its current.pth loaded)."""
    train_CMC.main(['--dataset', dataset, '--data_folder', data, '--model_path', str(tmp_path / 'models'),
                    '--tb_path', str(tmp_path / 'tb'), *TINY, *extra])
    (folder,) = glob.glob(str(tmp_path / 'models' / '*'))
    return folder, checkpoint.load_checkpoint(os.path.join(folder, 'current.pth'))


def tb_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    (folder,) = glob.glob(str(tmp_path / 'tb' / '*'))
    acc = EventAccumulator(folder)
    acc.Reload()
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()['scalars']}


def test_views_L_ab_is_view_Lab_bit_for_bit(tmp_path, image_folder, capsys):
    folder_a, a = train(tmp_path / 'a', image_folder, '--view', 'Lab')
    out_a = capsys.readouterr().out
    folder_b, b = train(tmp_path / 'b', image_folder, '--views', 'L', 'ab')
    out_b = capsys.readouterr().out
    assert os.path.basename(folder_a) == os.path.basename(folder_b) == \
        'memory_nce_8_alexnet_lr_0.03_decay_0.0001_bsz_8_view_Lab'
    for key in ('model', 'contrast'):
        assert list(a[key]) == list(b[key])
        assert all(torch.equal(a[key][name], b[key][name]) for name in a[key])
    assert set(b['contrast']) == {'params', 'memory_l', 'memory_ab'}
    assert any('.l_to_ab.' in k for k in b['model']) and any('.ab_to_l.' in k for k in b['model'])
    assert a['opt']['views'] == b['opt']['views'] == ['L', 'ab'] and a['opt']['view'] == b['opt']['view'] == 'Lab'
    lines = lambda out: [line.split('\t', 3)[-1] for line in out.splitlines() if line.startswith('Train:')]  # noqa
    assert lines(out_a) == lines(out_b) and '\tl_p ' in out_a
    assert {'l_loss', 'ab_loss', 'l_prob', 'ab_prob'} <= set(tb_scalars(tmp_path / 'b'))


def test_view_stack_equals_device_view_and_refuses_both_flags(tmp_path, image_folder):
    x = torch.randint(0, 256, (3, 3, 8, 8), dtype=torch.uint8)
    assert torch.equal(ViewStack(['L', 'ab'])(x), DeviceView('Lab')(x))
    assert torch.equal(ViewStack(['Y', 'CbCr'])(x), DeviceView('YCbCr')(x))
    expected = torch.cat([DeviceView('HSV')(x)[:, 1:2], DeviceView('Lab')(x)[:, :1]], 1)
    assert torch.equal(ViewStack(['S', 'L'])(x), expected)
    with pytest.raises(errors.UserError, match='not both'):
        train_CMC.parse_option(['--view', 'Lab', '--views', 'L', 'ab', '--data_folder', image_folder,
                                '--model_path', 'm', '--tb_path', 't'])
    with pytest.raises(errors.UserError, match='need --dataset multiview_folder'):
        train_CMC.parse_option(['--views', 'L', 'depth', '--data_folder', image_folder, '--model_path', 'm',
                                '--tb_path', 't'])


@pytest.fixture(scope='module')
def three_views(tmp_path_factory, image_folder):
    """train(..., '--views', 'L', 'ab', 'S', '--paradigm', paradigm) -> (its root, run folder, checkpoint), trained
    once per paradigm in this module (the full one is also probed below); tests only read the run."""
    runs = {}

    def run(paradigm):
        if paradigm not in runs:
            root = tmp_path_factory.mktemp(f'three_views_{paradigm}')
            runs[paradigm] = (root, *train(root, image_folder, '--views', 'L', 'ab', 'S', '--paradigm', paradigm))
        return runs[paradigm]
    return run


@pytest.mark.parametrize('paradigm, pairs', [('core', ['L_ab', 'ab_L', 'L_S', 'S_L']),
                                             ('full', ['L_ab', 'ab_L', 'L_S', 'S_L', 'ab_S', 'S_ab'])])
def test_three_views_core_and_full(three_views, paradigm, pairs):
    root, folder, ckpt = three_views(paradigm)
    assert os.path.basename(folder).endswith('_views_L_ab_S' + ('_full' if paradigm == 'full' else ''))
    assert set(ckpt['contrast']) == {'params', 'memory_l', 'memory_ab', 'memory_s'}
    assert ckpt['contrast']['params'].numel() == 3 + len(pairs)
    assert {k.split('.')[1] for k in ckpt['model']} == {'l_to_ab', 'ab_to_l', 's'}   # encoder.<view network>
    tags = set(tb_scalars(root))
    assert {f'{kind}_{pair}' for pair in pairs for kind in ('loss', 'prob')} <= tags
    assert not any(tag.startswith('loss_') and tag[5:] not in pairs for tag in tags)


def make_multiview_folder(root, classes=3, per_class=4, size=72):
    """rgb/ colour noise; depth/ = the rgb image's red channel (L PNG); normal/ = rgb with channels reversed."""
    rng = np.random.RandomState(0)
    for split in ('train', 'val'):
        for c in range(classes):
            for i in range(per_class):
                rgb = rng.randint(0, 256, (size, size, 3)).astype(np.uint8)
                rgb[:, :, c] = np.linspace(0, 255, size).astype(np.uint8)[None, :]   # some class signal
                for view, pixels in (('rgb', rgb), ('depth', rgb[:, :, 0]), ('normal', rgb[:, :, ::-1])):
                    os.makedirs(os.path.join(root, split, view, f'c{c}'), exist_ok=True)
                    Image.fromarray(np.ascontiguousarray(pixels)).save(os.path.join(root, split, view, f'c{c}',
                                                                                      f'{i}.png'))
    return str(root)


def test_multiview_folder_shares_the_crop_and_trains(tmp_path):
    data = make_multiview_folder(tmp_path / 'nyu')
    views = ['L', 'ab', 'depth', 'normal']
    dataset = build_dataset('multiview_folder', data, 'pretrain', cmc_train_transform(64, 0.2), views=views)
    assert dataset.file_channels == {'depth': 1, 'normal': 3} and len(dataset) == 12
    torch.manual_seed(0)
    for index in range(len(dataset)):
        img, target, i = dataset[index]
        assert img.dtype == torch.uint8 and img.shape == (7, 64, 64) and i == index
        assert torch.equal(img[3], img[0])                 # depth (the red channel) cropped exactly as rgb
        assert torch.equal(img[4:7], img[[2, 1, 0]])       # normal (rgb reversed) too
    x = ViewStack(views, dataset.file_channels)(img[None])
    assert x.shape == (1, 1 + 2 + 1 + 3, 64, 64)
    _, ckpt = train(tmp_path, data, '--views', 'L', 'depth', '--batch_size', '4', '--nce_k', '4',
                    dataset='multiview_folder')
    assert set(ckpt['contrast']) == {'params', 'memory_l', 'memory_depth'} and ckpt['opt']['view_channels'] == [1, 1]


def test_multiview_folder_missing_file_is_one_error_line(tmp_path):
    data = make_multiview_folder(tmp_path / 'nyu')
    os.remove(os.path.join(data, 'train', 'depth', 'c1', '2.png'))
    os.remove(os.path.join(data, 'train', 'normal', 'c0', '0.png'))
    with pytest.raises(errors.UserError) as error:
        build_dataset('multiview_folder', data, 'train', None, views=['L', 'depth', 'normal'])
    message = str(error.value)
    assert '\n' not in message and message.startswith('2 view files are missing')
    assert 'depth/c1/2.*' in message and 'normal/c0/0.*' in message


def test_predictive_objective_learns_and_is_probed(tmp_path, image_folder):
    folder, ckpt = train(tmp_path, image_folder, '--objective', 'predictive', '--epochs', '4')
    assert os.path.basename(folder).endswith('_view_Lab_predictive')
    assert {'model', 'decoders'} <= set(ckpt) and 'contrast' not in ckpt
    assert set(ckpt['model']) == set(train_CMC.build_cmc_model('alexnet').state_dict())
    scalars = tb_scalars(tmp_path)
    total = [a + b for a, b in zip(scalars['loss_L_to_ab'], scalars['loss_ab_to_L'])]
    assert len(total) == 4 and total[-1] < total[0]
    result = LinearProbing.main(probe_args(tmp_path, image_folder, os.path.join(folder, 'current.pth')))
    assert 0 <= result['last_acc1'] <= 100


def probe_args(tmp_path, data, model_path, *extra):
    return ['--dataset', 'folder', '--data_folder', data, '--model_path', model_path, '--save_path',
            str(tmp_path / 'probe'), '--tb_path', str(tmp_path / 'tb_probe'), '--model', 'alexnet', '--layer', '5',
            '--image_size', '64', '--num_workers', '0', '--batch_size', '8', '--epochs', '1', '--seed', '0',
            '--cache_features', *extra]


def test_probe_views_on_a_three_view_checkpoint(tmp_path, image_folder, three_views):
    _, folder, _ = three_views('full')
    path = os.path.join(folder, 'current.pth')
    LinearProbing.main(probe_args(tmp_path, image_folder, path, '--probe_views', 'L'))
    LinearProbing.main(probe_args(tmp_path, image_folder, path))
    widths = {}
    for run in glob.glob(str(tmp_path / 'probe' / '*')):
        weight = checkpoint.load_checkpoint(os.path.join(run, 'current.pth'))['classifier']
        widths[run.endswith('_probe_L')] = weight['classifier.LinearClassifier.weight'].shape[1]
    assert widths == {True: 128 * 36, False: 3 * 128 * 36}        # AlexNet conv5: 128 channels per view, 6 x 6
    with pytest.raises(errors.UserError, match='choose distinct views among'):
        LinearProbing.main(probe_args(tmp_path, image_folder, path, '--probe_views', 'H'))
    with pytest.raises(errors.UserError, match='contradicts'):
        LinearProbing.main(probe_args(tmp_path, image_folder, path, '--view', 'YCbCr'))


def test_findings_scripts_smoke(tmp_path, image_folder):
    """Both findings scripts in smoke mode, side by side (one thread each: most of a smoke run is starting Python and
    importing torch, so two cores take both in the time of one), each with its own results and work folders."""
    runs = {}
    try:
        for script in ('findings_views.sh', 'findings_objective.sh'):
            folder = tmp_path / script
            folder.mkdir()
            with open(folder / 'output.log', 'w') as log:
                runs[script] = folder, subprocess.Popen(
                    ['bash', os.path.join(ROOT, 'scripts', script), '--smoke', '--dataset', 'folder', '--data_folder',
                     image_folder, '--results', str(folder / 'results'), '--work', str(folder / 'work')],
                    env={**os.environ, 'OMP_NUM_THREADS': '1'}, stdout=log, stderr=subprocess.STDOUT)
        for script, (folder, proc) in runs.items():
            proc.wait(timeout=900)
            assert proc.returncode == 0, f'{script}:\n' + open(folder / 'output.log').read()[-3000:]
            text = open(folder / 'results' / 'findings.md').read()
            assert 'SMOKE MODE' in text and '| random init |' in text, script
            assert glob.glob(str(folder / 'results' / 'findings_*_smoke.png')), script
    finally:
        for _, proc in runs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_multiview_folder_skips_hidden_entries(tmp_path):
    data = make_multiview_folder(tmp_path / 'nyu')
    for view in ('rgb', 'depth'):
        os.makedirs(os.path.join(data, 'train', view, '.ipynb_checkpoints'))
        Image.new('RGB', (72, 72)).save(os.path.join(data, 'train', view, '.ipynb_checkpoints', '0.png'))
        Image.new('RGB', (72, 72)).save(os.path.join(data, 'train', view, 'c0', '._0.png'))
    os.makedirs(os.path.join(data, 'train', '.DS_Store_folder'))
    dataset = build_dataset('multiview_folder', data, 'train', None, views=['L', 'depth'])
    assert len(dataset) == 12 and dataset.classes == ['c0', 'c1', 'c2']     # as without them
    assert sorted(os.path.relpath(p, os.path.join(data, 'train')) for p in dataset.hidden_entries) == [
        'depth/.ipynb_checkpoints', 'depth/c0/._0.png', 'rgb/.ipynb_checkpoints', 'rgb/c0/._0.png']


def test_a_multiview_folder_without_val_trains_with_the_knn_monitor_off(tmp_path, capsys):
    data = make_multiview_folder(tmp_path / 'nyu')
    import shutil
    shutil.rmtree(os.path.join(data, 'val'))
    _, ckpt = train(tmp_path, data, '--views', 'L', 'depth', '--batch_size', '4', '--nce_k', '4',
                    dataset='multiview_folder')
    assert 'kNN monitor off: no labelled train/val split found' in capsys.readouterr().out and ckpt['epoch'] == 1


def test_a_view_file_with_other_channels_or_a_second_extension_is_one_line(tmp_path):
    data = make_multiview_folder(tmp_path / 'nyu')
    odd = os.path.join(data, 'train', 'depth', 'c1', '2.png')
    Image.open(odd).convert('RGB').save(odd)                  # a depth map saved as RGB among grey ones
    dataset = build_dataset('multiview_folder', data, 'train', None, views=['L', 'depth'])
    first = os.path.join(data, 'train', 'depth', 'c0', '0.png')
    with pytest.raises(errors.UserError, match=rf"{odd} has 3 channel\(s\) where {first} has 1: store every file of "
                                               r"the view folder 'depth' with the same channels"):
        dataset[dataset.keys.index('c1/2')]
    Image.new('L', (72, 72)).save(os.path.join(data, 'train', 'depth', 'c0', '1.jpg'))
    with pytest.raises(errors.UserError, match=r'c0/1.jpg and .*c0/1.png are the same instance of depth: keep one'):
        build_dataset('multiview_folder', data, 'train', None, views=['L', 'depth'])
