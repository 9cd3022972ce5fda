"""--online_probe (engine/online_probe.py): a linear classifier trained on the encoder's detached features during
pretraining. It leaves the encoder, the memories and the random streams bit for bit as they are, logs the top-1 that
the checkpoint's encoder and probe give, learns, resumes exactly, and is off (one line) without a labelled val split.
Tiny generated colour images at 32 px, ResNet-18 encoders, on the CPU."""
import contextlib
import glob
import io
import os
import re
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from PIL import Image
from test_reliability import assert_same_state as assert_same  # tensors bit for bit, recursively

import train_CMC
import train_moco_ins
from engine.checkpoint import load_checkpoint
from engine.errors import UserError
from engine.online_probe import FeatureTap, OnlineProbe
from engine.runtime import Runtime
from inputs.build import build_dataset
from inputs.transforms import eval_transform
from models import build_cmc_model, build_ins_model
from views import ViewStack

COLOURS = [(230, 30, 30), (30, 200, 40), (40, 60, 230), (230, 210, 40)]      # one per class: trivially separable
SMALL = ['--image_size', '32', '--batch_size', '8', '--nce_k', '8', '--num_workers', '0', '--device', 'cpu',
         '--seed', '0', '--knn_freq', '0', '--print_freq', '100']
TOP1 = re.compile(r'^online probe top-1 on val: (\d+\.\d\d)$', re.MULTILINE)


def colour_folder(root, splits=('train', 'val'), per_class=(24, 6), size=36):
    """root/<split>/class_<c>/<i>.png: class c is COLOURS[c] plus noise of +-20 per pixel."""
    rng = np.random.RandomState(0)
    for split, count in zip(splits, per_class):
        for c, colour in enumerate(COLOURS):
            os.makedirs(os.path.join(root, split, f'class_{c}'))
            for i in range(count):
                pixels = np.array(colour) + rng.randint(-20, 21, (size, size, 3))
                Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(os.path.join(root, split, f'class_{c}',
                                                                                        f'{i}.png'))
    return str(root)


@pytest.fixture(scope='module')
def colours(tmp_path_factory):
    return colour_folder(tmp_path_factory.mktemp('colours'))


def pretrain(script, out, data, *extra, epochs=2):
    """Run ``script``'s main on ``data``; returns (its last checkpoint, what it printed)."""
    args = ['--dataset', 'folder', '--data_folder', data, '--model_path', str(out / 'm'), '--tb_path', str(out / 'tb'),
            '--epochs', str(epochs), *SMALL, *extra]
    if script is train_CMC:
        args += ['--model', 'resnet18v1']
    else:
        args += ['--model', 'resnet18', '--softmax']
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        script.main(args)
    (current,) = glob.glob(str(out / 'm' / '*' / 'current.pth'))
    return load_checkpoint(current), printed.getvalue()


# The probe's run: 4 epochs of 12 steps. A slow encoder (its lr 0.001): the val pass runs it in eval mode, whose
# BatchNorm statistics lag far behind a fast-moving encoder's in so few steps (the probe then meets other features).
SLOW = ['--learning_rate', '0.001']


@pytest.fixture(scope='module')
def probed(tmp_path_factory, colours):
    """CMC with --online_probe, 4 epochs: (checkpoint, printed, tmp folder)."""
    out = tmp_path_factory.mktemp('probed')
    return (*pretrain(train_CMC, out, colours, *SLOW, '--online_probe', epochs=4), out)


@pytest.mark.parametrize('script, extra', [(train_CMC, ['--num_workers', '2']), (train_moco_ins, ['--moco']),
                                           (train_moco_ins, [])], ids=['cmc-2-workers', 'moco', 'insdis'])
def test_the_encoder_memories_and_random_streams_are_bit_identical_with_and_without(tmp_path, image_folder, script,
                                                                                    extra):
    plain, _ = pretrain(script, tmp_path / 'plain', image_folder, *extra)
    probed, printed = pretrain(script, tmp_path / 'probed', image_folder, *extra, '--online_probe')
    assert len(TOP1.findall(printed)) == 2
    for key in ('model', 'model_ema', 'contrast', 'optimizer', 'rng'):        # rng: nothing drew from the streams
        assert (key in plain) == (key in probed) == (key != 'model_ema' or '--moco' in extra), key
        if key in plain:
            assert_same(plain[key], probed[key], key)


def test_the_cmc_encoder_is_bit_identical_with_and_without(tmp_path, colours, probed):
    ckpt, _, _ = probed
    plain, _ = pretrain(train_CMC, tmp_path, colours, *SLOW, epochs=4)
    assert 'online_probe' not in plain
    for key in ('model', 'contrast', 'optimizer', 'rng'):
        assert_same(plain[key], ckpt[key], key)


@torch.no_grad()
def recomputed_top1(ckpt, data):
    """The val top-1 of the checkpoint's encoder and probe, by another path than the script's: a fresh model's
    ``forward(x, 6)`` per view, concatenated, then the probe's BatchNorm (running statistics) and linear layer."""
    model = build_cmc_model('resnet18v1', view_channels=ckpt['opt']['view_channels'])
    model.load_state_dict(ckpt['model'])
    model.eval()
    val = build_dataset('folder', data, 'val', eval_transform(32))
    images = torch.stack([val[i][0] for i in range(len(val))])                 # N x 3 x 32 x 32 uint8
    labels = torch.tensor(val.targets)
    features = torch.cat(model(ViewStack(ckpt['opt']['views'])(images), 6), 1)    # N x (256 + 256)
    p = ckpt['online_probe']
    logits = F.linear(F.batch_norm(features, p['norm.running_mean'], p['norm.running_var']), p['weight'], p['bias'])
    return 100 * (logits.argmax(1) == labels).sum().item() / len(labels)


def test_the_logged_top1_is_what_the_checkpoint_gives_and_the_probe_learns(colours, probed):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    ckpt, printed, out = probed
    top1 = recomputed_top1(ckpt, colours)
    assert ckpt['online_probe_top1'] == top1
    assert TOP1.findall(printed)[-1] == f'{top1:.2f}'
    (tb,) = glob.glob(str(out / 'tb' / '*'))
    events = EventAccumulator(tb)
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars('online_probe_top1')][-1] == (4, pytest.approx(top1))
    assert top1 >= 75                        # 4 classes of plain colours: chance is 25
    assert ckpt['online_probe']['weight'].shape == (4, 512)


def test_a_resumed_run_ends_with_the_uninterrupted_runs_probe(tmp_path, colours, probed):
    pretrain(train_CMC, tmp_path, colours, *SLOW, '--online_probe')
    resumed, printed = pretrain(train_CMC, tmp_path, colours, *SLOW, '--online_probe', '--resume', 'auto', epochs=4)
    assert_same(resumed['online_probe'], probed[0]['online_probe'])
    assert_same(resumed['model'], probed[0]['model'])
    assert TOP1.findall(printed)[-1] == TOP1.findall(probed[1])[-1]


def test_a_run_without_the_probe_resumes_with_a_fresh_one(tmp_path, image_folder):
    first, _ = pretrain(train_CMC, tmp_path, image_folder, epochs=1)
    assert 'online_probe' not in first
    resumed, printed = pretrain(train_CMC, tmp_path, image_folder, '--online_probe', '--resume', 'auto')
    notes = [line for line in printed.splitlines() if 'online probe' in line and 'starts' in line]
    assert len(notes) == 1 and 'written without --online_probe' in notes[0]
    assert resumed['epoch'] == 2 and len(TOP1.findall(printed)) == 1
    assert resumed['online_probe']['weight'].abs().sum() > 0


def test_resuming_on_another_number_of_classes_says_so_in_one_line(tmp_path):
    """The same images, class_3's moved into class_2: the checkpoint's probe has 4 rows, the data set now 3."""
    four = colour_folder(tmp_path / 'four', per_class=(3, 2))
    three = shutil.copytree(four, tmp_path / 'three')
    for split in ('train', 'val'):
        for name in os.listdir(three / split / 'class_3'):
            os.rename(three / split / 'class_3' / name, three / split / 'class_2' / f'moved_{name}')
        os.rmdir(three / split / 'class_3')
    ckpt, _ = pretrain(train_CMC, tmp_path, four, '--online_probe', epochs=1)
    (current,) = glob.glob(str(tmp_path / 'm' / '*' / 'current.pth'))
    before = Path(current).read_bytes()
    with pytest.raises(UserError) as e:
        pretrain(train_CMC, tmp_path, str(three), '--online_probe', '--resume', 'auto')
    assert str(e.value) == (f'{current}: its online probe classifies 4 classes, but the data set now has 3; resume on '
                            f'the data it was trained on, or drop --online_probe to resume without the probe')
    assert Path(current).read_bytes() == before and ckpt['online_probe']['weight'].shape == (4, 512)


def test_without_a_labelled_val_split_the_probe_is_off_in_one_line(tmp_path):
    data = colour_folder(tmp_path / 'data', splits=('train',))
    ckpt, printed = pretrain(train_CMC, tmp_path, data, '--online_probe', epochs=1)
    off = [line for line in printed.splitlines() if line.startswith('online probe off:')]
    assert off == ['online probe off: the data set has no labelled train/val split to train and validate it on']
    assert 'online_probe' not in ckpt and not TOP1.findall(printed)


@pytest.mark.parametrize('name', ['alexnet', 'resnet18v1', 'resnet18'])
def test_the_tap_keeps_the_heads_inputs_of_a_training_forward_only(name):
    """What the probe trains on is forward(x, 6) (ResNet) or forward(x, 7) (AlexNet), views concatenated, taken
    from the training forward; eval-mode forwards (the kNN monitor's) record nothing unless asked to."""
    torch.manual_seed(0)
    model = build_ins_model(name) if name == 'resnet18' else build_cmc_model(name)
    x = torch.randn(2, 3, 64, 64)
    tap = FeatureTap([m for m in model.modules() if hasattr(m, 'projection_head')])
    model(x)
    layer = 7 if name == 'alexnet' else 6
    expected = model(x, layer)
    expected = torch.cat(expected, 1) if isinstance(expected, (list, tuple)) else expected
    assert tap.dim == expected.shape[1] and torch.equal(tap.take(torch.device('cpu')), expected)
    model.eval()
    model(x)
    assert tap.parts == {}
    with tap.recording():
        model(x)
    assert tap.take(torch.device('cpu')).shape == expected.shape


def test_the_tap_puts_dataparallel_slices_back_in_device_order():
    """Replicas record (view, device) slices in any order (threads); the batch is device 0's rows, then 1's."""
    tap = FeatureTap([])
    rows = torch.arange(12.).reshape(4, 3)
    tap.parts = {(1, 1): rows[2:, 2:], (0, 1): rows[2:, :2], (1, 0): rows[:2, 2:], (0, 0): rows[:2, :2]}
    assert torch.equal(tap.take(torch.device('cpu')), rows)


def _ddp_worker(rank, port, out):
    """Each of 2 processes steps its probe on its own batches; both must end with the same probe."""
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    dist.init_process_group('gloo', rank=rank, world_size=2)
    rt = Runtime(device=torch.device('cpu'), rank=rank, world_size=2)
    tap = FeatureTap([])
    probe = OnlineProbe(5, 3, tap, rt)
    g = torch.Generator().manual_seed(rank)
    for _ in range(3):
        tap.parts = {(0, -1): torch.randn(4, 5, generator=g) * (rank + 1)}
        probe.step(torch.randint(0, 3, (4,), generator=g))
    torch.save(probe.state_dict(), os.path.join(out, f'rank{rank}.pt'))
    dist.destroy_process_group()


def test_under_torchrun_every_process_keeps_the_same_probe(tmp_path):
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    mp.start_processes(_ddp_worker, args=(port, str(tmp_path)), nprocs=2, start_method='fork')   # no re-imports
    a, b = (torch.load(tmp_path / f'rank{r}.pt') for r in range(2))
    assert_same(a, b)
    assert a['weight'].abs().sum() > 0 and not torch.equal(a['norm.running_mean'], torch.zeros(5))
