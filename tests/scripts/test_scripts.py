"""The four scripts end to end on a tiny generated ImageFolder, on the CPU, in seconds."""
import argparse
import glob
import os
import subprocess
import sys

import pytest
import torch

import eval_moco_ins
import LinearProbing
import train_CMC
import train_moco_ins
from engine import checkpoint, errors
from conftest import TEST_DEVICE
from methods import MoCo
from models import build_cmc_model, build_ins_model
from conftest import ROOT

TINY = ['--image_size', '64', '--num_workers', '0', '--batch_size', '8', '--device', TEST_DEVICE, '--seed', '0',
        '--print_freq', '1']


def paths(tmp_path, data):
    return ['--data_folder', data, '--model_path', str(tmp_path / 'models'), '--tb_path', str(tmp_path / 'tb')]


def cmc_args(tmp_path, data, *extra):
    return ['--dataset', 'folder', '--model', 'alexnet', '--nce_k', '8', '--epochs', '2', '--save_freq', '1',
            *paths(tmp_path, data), *TINY, *extra]


def run_dir(tmp_path, kind='models'):
    (folder,) = glob.glob(str(tmp_path / kind / '*'))
    return folder


def tb_tags(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(folder)
    acc.Reload()
    return set(acc.Tags()['scalars'])


def test_train_cmc_writes_reference_checkpoints_and_tags(tmp_path, image_folder, capsys):
    train_CMC.main(cmc_args(tmp_path, image_folder))
    folder = run_dir(tmp_path)
    assert os.path.basename(folder) == 'memory_nce_8_alexnet_lr_0.03_decay_0.0001_bsz_8_view_Lab'
    assert sorted(os.listdir(folder)) == ['ckpt_epoch_1.pth', 'ckpt_epoch_2.pth', 'current.pth']
    ckpt = checkpoint.load_checkpoint(os.path.join(folder, 'ckpt_epoch_2.pth'))
    assert {'opt', 'model', 'contrast', 'optimizer', 'epoch'} <= set(ckpt)
    assert ckpt['epoch'] == 2 and isinstance(ckpt['opt'], dict) and ckpt['opt']['nce_k'] == 8
    assert set(ckpt['model']) == set(build_cmc_model('alexnet').state_dict())
    assert set(ckpt['contrast']) == {'params', 'memory_l', 'memory_ab'}
    assert ckpt['contrast']['memory_l'].shape == (24, 128)
    # Z was set on the first batch (NCE mode): no longer -1
    assert (ckpt['contrast']['params'][2:4] > 0).all()
    assert {'l_loss', 'l_prob', 'ab_loss', 'ab_prob', 'knn_top1'} <= tb_tags(run_dir(tmp_path, 'tb'))
    out = capsys.readouterr().out
    assert 'Train: [1][1/3]' in out and '\tl_p ' in out and 'kNN (k=200, t=0.07) top-1 on val' in out


@pytest.mark.parametrize('moco', [False, True])
def test_train_moco_ins(tmp_path, image_folder, moco):
    args = ['--dataset', 'folder', '--model', 'resnet18', '--nce_k', '8', '--epochs', '1', '--softmax',
            '--warm', *paths(tmp_path, image_folder), *TINY] + (['--moco'] if moco else [])
    train_moco_ins.main(args)
    folder = run_dir(tmp_path)
    prefix = 'MoCo0.999' if moco else 'InsDis'
    assert os.path.basename(folder) == (f'{prefix}_softmax_8_resnet18_lr_0.03_decay_0.0001_bsz_8_crop_0.2_warm_aug_CJ')
    ckpt = checkpoint.load_checkpoint(os.path.join(folder, 'current.pth'))
    assert set(ckpt['model']) == set(build_ins_model('resnet18').state_dict())
    if moco:
        assert set(ckpt['model_ema']) == set(ckpt['model'])
        # EMA with alpha 0.999 after 3 steps: close to, but not equal to, the query encoder
        w, w_ema = ckpt['model']['encoder.conv1.weight'], ckpt['model_ema']['encoder.conv1.weight']
        assert not torch.equal(w, w_ema)
        # 3 steps of 8 keys enqueued into a queue of 8: the pointer wrapped around to 24 % 8 == 0
        assert int(ckpt['contrast']['queue_ptr']) == 0
    else:
        assert ckpt['contrast']['memory'].shape == (24, 128)
    assert {'ins_loss', 'ins_prob', 'learning_rate'} <= tb_tags(run_dir(tmp_path, 'tb'))


def probe_args(tmp_path, data, model_path, *extra):
    return ['--dataset', 'folder', '--data_folder', data, '--model_path', model_path, '--save_path',
            str(tmp_path / 'probe'), '--tb_path', str(tmp_path / 'probe_tb'), '--epochs', '2', *TINY, *extra]


def test_linear_probing_evaluates_a_reference_format_checkpoint(tmp_path, image_folder, capsys):
    """The released weights: an argparse.Namespace opt and ``encoder.module.`` keys."""
    model = build_cmc_model('alexnet')
    sd = {k.replace('encoder.', 'encoder.module.', 1): v for k, v in model.state_dict().items()}
    ref = tmp_path / 'memory_nce_16384_alexnet' / 'ckpt_epoch_240.pth'
    ref.parent.mkdir()
    torch.save({'opt': argparse.Namespace(model='alexnet'), 'model': sd, 'epoch': 240}, str(ref))
    result = LinearProbing.main(probe_args(tmp_path, image_folder, str(ref), '--model', 'alexnet', '--layer', '5'))
    out = capsys.readouterr().out
    assert out.count(' * Acc@1 ') == 2 and 'best Acc@1' in out
    assert 0 <= result['best_acc1'] <= 100
    folder = run_dir(tmp_path, 'probe')
    assert os.path.basename(folder) == 'calibrated_memory_nce_16384_alexnet_bsz_8_lr_0.1_decay_0'
    best = checkpoint.load_checkpoint(os.path.join(folder, 'alexnet_layer5.pth'))
    assert {'opt', 'epoch', 'classifier', 'best_acc1', 'optimizer'} <= set(best)
    assert best['classifier']['classifier.LinearClassifier.weight'].shape == (3, 256 * 6 * 6)
    assert {'train_acc', 'train_acc5', 'train_loss', 'test_acc', 'test_acc5', 'test_loss'} <= tb_tags(
        run_dir(tmp_path, 'probe_tb'))
    assert len(open(os.path.join(folder, 'time_linear.txt')).read().splitlines()) == 2


def test_eval_moco_ins_with_bn_cosine_adam_warm_and_cached_features(tmp_path, image_folder, capsys):
    model = build_ins_model('resnet18')
    ckpt = tmp_path / 'run' / 'current.pth'
    checkpoint.save_checkpoint({'opt': {}, 'model': model.state_dict(), 'epoch': 1}, str(ckpt))
    result = eval_moco_ins.main(probe_args(tmp_path, image_folder, str(ckpt), '--model', 'resnet18', '--bn',
                                           '--cosine', '--adam', '--warm', '--learning_rate', '0.01',
                                           '--cache_features', '--layer', '5'))
    assert 0 <= result['best_acc1'] <= 100
    folder = run_dir(tmp_path, 'probe')
    assert os.path.basename(folder) == 'run_bsz_8_lr_0.01_decay_0_crop_0.2_aug_CJ_useBN_useAdam_cosine_warm'
    saved = checkpoint.load_checkpoint(os.path.join(folder, 'current.pth'))
    assert set(saved['feature_bn']) >= {'bn.running_mean', 'bn.running_var'}
    assert saved['classifier']['classifier.LinearClassifier.weight'].shape[0] == 3


def test_resume_continues_with_equal_memory_and_optimizer(tmp_path, image_folder):
    small = ['--model', 'resnet18v1']                 # a fifth of AlexNet's checkpoint: four of them are written
    one_go = tmp_path / 'one_go'
    train_CMC.main(cmc_args(one_go, image_folder, *small))
    split = tmp_path / 'split'
    train_CMC.main(cmc_args(split, image_folder, *small, '--epochs', '1'))
    train_CMC.main(cmc_args(split, image_folder, *small, '--epochs', '2', '--resume', 'auto'))
    a = checkpoint.load_checkpoint(os.path.join(run_dir(one_go), 'current.pth'))
    b = checkpoint.load_checkpoint(os.path.join(run_dir(split), 'current.pth'))
    assert a['epoch'] == b['epoch'] == 2
    for key in ('memory_l', 'memory_ab', 'params'):
        assert torch.equal(a['contrast'][key], b['contrast'][key]), key
    for k in a['model']:
        assert torch.equal(a['model'][k], b['model'][k]), k
    sa, sb = a['optimizer']['state'], b['optimizer']['state']
    assert sa.keys() == sb.keys() and all(torch.equal(sa[i]['momentum_buffer'], sb[i]['momentum_buffer']) for i in sa)


SPEC_DEFAULTS = {
    'train_CMC': dict(print_freq=10, tb_freq=500, save_freq=10, batch_size=128, num_workers=18, epochs=240,
                      learning_rate=0.03, lr_decay_epochs=[120, 160, 200], lr_decay_rate=0.1, beta1=0.5, beta2=0.999,
                      weight_decay=1e-4, momentum=0.9, resume='', model='alexnet', softmax=False, nce_k=16384,
                      nce_t=0.07, nce_m=0.5, feat_dim=128, dataset='imagenet', view='Lab', amp=False, opt_level='O2',
                      crop_low=0.2),
    'train_moco_ins': dict(print_freq=10, tb_freq=500, save_freq=10, batch_size=128, num_workers=18, epochs=240,
                           learning_rate=0.03, lr_decay_epochs=[120, 160, 200], lr_decay_rate=0.1, beta1=0.5,
                           beta2=0.999, weight_decay=1e-4, momentum=0.9, resume='', crop=0.2, dataset='imagenet100',
                           aug='CJ', warm=False, amp=False, opt_level='O2', model='resnet50', softmax=False,
                           nce_k=16384, nce_t=0.07, nce_m=0.5, moco=False, alpha=0.999, gpu=None),
    'LinearProbing': dict(print_freq=10, tb_freq=500, save_freq=5, batch_size=256, num_workers=32, epochs=60,
                          learning_rate=0.1, lr_decay_epochs=[30, 40, 50], lr_decay_rate=0.2, momentum=0.9,
                          weight_decay=0, beta1=0.5, beta2=0.999, resume='', model='alexnet', layer=6,
                          dataset='imagenet', view='Lab', crop_low=0.2, log='time_linear.txt', gpu=None),
    'eval_moco_ins': dict(print_freq=10, tb_freq=500, save_freq=5, batch_size=256, num_workers=32, epochs=60,
                          learning_rate=0.1, lr_decay_epochs=[30, 40, 50], lr_decay_rate=0.2, momentum=0.9,
                          weight_decay=0, beta1=0.5, beta2=0.999, resume='', model='resnet50', layer=6, crop=0.2,
                          dataset='imagenet100', aug='CJ', bn=False, cosine=False, adam=False, warm=False, amp=False,
                          opt_level='O2', syncBN=False, gpu=None),
}
SCRIPTS = {'train_CMC': train_CMC, 'train_moco_ins': train_moco_ins, 'LinearProbing': LinearProbing,
           'eval_moco_ins': eval_moco_ins}


@pytest.mark.parametrize('name', sorted(SPEC_DEFAULTS))
def test_every_spec_flag_parses_to_its_default(name, tmp_path):
    ckpt = tmp_path / 'x.pth'
    ckpt.write_bytes(b'')
    required = ['--data_folder', 'd', '--tb_path', 't']
    required += (['--model_path', 'm'] if name.startswith('train') else ['--model_path', str(ckpt), '--save_path', 's'])
    opt = SCRIPTS[name].parse_option(required)
    for flag, value in SPEC_DEFAULTS[name].items():
        assert getattr(opt, flag) == value, flag


def without(missing):
    args = ['--data_folder', 'd', '--model_path', 'm', '--tb_path', 't']
    i = args.index(missing)
    del args[i:i + 2]
    return args


@pytest.mark.parametrize('missing', ['--data_folder', '--model_path', '--tb_path'])
def test_missing_required_path_is_one_clear_line(missing, capsys):
    """What ``python train_CMC.py`` runs (errors.run_main(main) with its arguments), here in this process; the test
    below starts the real process once (a Python and torch start costs seconds)."""
    with pytest.raises(SystemExit) as stop:
        errors.run_main(train_CMC.main, without(missing))
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip() == f'error: {missing} is required'


def test_missing_required_path_ends_the_process_with_exit_2_and_one_line():
    """As a user sees it: the exit status, and nothing else on stderr (importing the script prints nothing)."""
    proc = subprocess.run([sys.executable, 'train_CMC.py', *without('--model_path')], cwd=ROOT, capture_output=True,
                          text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == 'error: --model_path is required'


def test_amp_runs_on_the_cpu_with_bfloat16_and_names_the_run(tmp_path, image_folder):
    train_CMC.main(cmc_args(tmp_path, image_folder, '--amp', '--epochs', '1', '--softmax'))
    folder = run_dir(tmp_path)
    assert os.path.basename(folder).endswith('_amp_O2_view_Lab')
    ckpt = checkpoint.load_checkpoint(os.path.join(folder, 'current.pth'))
    # the contrast ran in float32 and the bank stays float32 under autocast
    assert ckpt['contrast']['memory_l'].dtype == torch.float32
    assert torch.isfinite(ckpt['contrast']['memory_l']).all()
    assert 'amp' in ckpt  # the (disabled, bf16) GradScaler state, as the reference's key


def write_fashion_mnist(root, n_train=24, n_val=12):
    """Tiny idx files in Fashion-MNIST's format (greyscale 28 x 28, labels 0..2)."""
    import struct
    import numpy as np
    rng = np.random.RandomState(0)
    for prefix, count in (('train', n_train), ('t10k', n_val)):
        images = rng.randint(0, 256, (count, 28, 28)).astype(np.uint8)
        labels = (np.arange(count) % 3).astype(np.uint8)
        (root / f'{prefix}-images-idx3-ubyte').write_bytes(struct.pack('>HBBIII', 0, 8, 3, count, 28, 28)
                                                           + images.tobytes())
        (root / f'{prefix}-labels-idx1-ubyte').write_bytes(struct.pack('>HBBI', 0, 8, 1, count) + labels.tobytes())
    return str(root)


def test_grayscale_fashion_mnist_refuses_colour_views_and_feeds_insdis_three_channels(tmp_path):
    data = write_fashion_mnist(tmp_path)
    with pytest.raises(errors.UserError, match='fashion-mnist is grayscale: it has no Lab colour views'):
        train_CMC.parse_option(['--dataset', 'fashion-mnist', *paths(tmp_path, data)])
    train_moco_ins.main(['--dataset', 'fashion-mnist', '--model', 'resnet18', '--nce_k', '8', '--epochs', '1',
                         *paths(tmp_path, data), *TINY[:1], '32', *TINY[2:]])
    ckpt = checkpoint.load_checkpoint(os.path.join(run_dir(tmp_path), 'current.pth'))
    assert ckpt['contrast']['memory'].shape == (24, 128)
    # what InsDis was fed: the grey image replicated into three equal channels, pixel for pixel
    import dataset
    import numpy as np
    from torchvision.transforms import PILToTensor
    served = dataset.build_dataset('fashion-mnist', data, 'pretrain', PILToTensor())
    img, target, index = served[5]
    raw = np.frombuffer((tmp_path / 'train-images-idx3-ubyte').read_bytes()[16:], np.uint8).reshape(-1, 28, 28)
    assert img.shape == (3, 28, 28) and (target, index) == (5 % 3, 5)
    assert all(torch.equal(img[c], torch.from_numpy(raw[5].copy())) for c in range(3))


def test_shuffle_bn_keys_come_back_in_order():
    """With a batch-independent key encoder (eval mode), ShuffleBN must return exactly the unshuffled keys."""
    torch.manual_seed(0)
    encoder = build_ins_model('resnet18').eval()
    x = torch.randn(6, 3, 64, 64)
    moco = MoCo(encoder, feat_dim=128, n_data=10, K=4).eval()      # its key encoder: a copy, in eval mode too
    # the same per-sample ops at other batch positions: kernels may block rows differently, a few ulps per layer
    # through 18 layers; the tolerances of test_models' functional-path checks
    torch.testing.assert_close(moco.shuffled_keys(x), encoder(x), rtol=1e-4, atol=1e-5)
