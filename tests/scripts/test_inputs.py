"""Inputs that would silently give wrong numbers (issue 11): splits whose class folders differ, images without the
colour a view needs, resumes with changed flags, runs without --seed, and the empty run folder of a failed run."""
import glob
import hashlib
import os
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import LinearProbing
import train_CMC
from conftest import make_image_folder
from engine import checkpoint
from engine.errors import UserError
from models import build_cmc_model

TINY = ['--image_size', '64', '--num_workers', '0', '--batch_size', '8', '--device', 'cpu', '--print_freq', '100']


def cmc(tmp_path, data, *extra):
    return ['--dataset', 'folder', '--data_folder', data, '--model', 'resnet18v1', '--nce_k', '8', '--epochs', '1',
            '--model_path', str(tmp_path / 'models'), '--tb_path', str(tmp_path / 'tb'), *TINY, *extra]


def probe(tmp_path, data, ckpt, *extra):
    return ['--dataset', 'folder', '--data_folder', data, '--model_path', ckpt, '--model', 'resnet18v1', '--layer',
            '6', '--save_path', str(tmp_path / 'probe'), '--tb_path', str(tmp_path / 'probe_tb'), '--epochs', '15',
            '--cache_features', '--bn', '--seed', '0', *TINY, *extra]


def val_same_as_train(root, drop=(), add=()):
    """The issue's case: val holds the very images of train (4 classes x 6), less the classes in ``drop``, plus
    empty-named copies of class_0 under the names in ``add`` (a class train lacks)."""
    make_image_folder(root, classes=4, per_class=6, splits=('train',))
    shutil.copytree(os.path.join(root, 'train'), os.path.join(root, 'val'))
    for name in drop:
        shutil.rmtree(os.path.join(root, 'val', name))
    for name in add:
        shutil.copytree(os.path.join(root, 'train', 'class_0'), os.path.join(root, 'val', name))
    return str(root)


@pytest.fixture(scope='module')
def random_encoder(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp('enc') / 'random' / 'current.pth'
    checkpoint.save_checkpoint({'opt': {'model': 'resnet18v1'}, 'model': build_cmc_model('resnet18v1').state_dict(),
                                'epoch': 0}, str(path))
    return str(path)


# --------------------------------------------------------------------------- 1. class folders that differ

def test_probe_maps_val_labels_by_class_name(tmp_path, random_encoder, capsys):
    complete = LinearProbing.main(probe(tmp_path / 'a', val_same_as_train(tmp_path / 'full'), random_encoder))
    partial = LinearProbing.main(probe(tmp_path / 'b', val_same_as_train(tmp_path / 'part', drop=['class_0']),
                                       random_encoder))
    out = capsys.readouterr().out
    # Before the fix the partial val's labels 0..2 meant classes 1..3 to it and 0..2 to the classifier: Acc@1 0.0.
    assert complete['last_acc1'] == 100.0 and partial['last_acc1'] == complete['last_acc1']
    assert "note: the val split lacks 1 of the 4 train classes (class_0); its labels follow the train split's " \
           "numbering, by class name" in out


def knn_by_hand(run, data, val_labels):
    """The monitor's number by a second path: the run's encoder, the train split's labels and ``val_labels``."""
    from views import DeviceView
    from dataset import eval_transform
    from engine.knn import knn_predict
    ckpt = checkpoint.load_checkpoint(os.path.join(run, 'current.pth'))
    model = build_cmc_model('resnet18v1')
    model.load_state_dict(ckpt['model'])
    model.eval()

    def features(split):
        files = sorted(glob.glob(os.path.join(data, split, '*', '*.png')))
        x = torch.stack([eval_transform(64)(Image.open(f).convert('RGB')) for f in files])
        with torch.no_grad():
            return torch.cat([torch.nn.functional.normalize(f, dim=1) for f in model(DeviceView('Lab')(x))], 1)

    train_labels = torch.arange(4).repeat_interleave(6)                   # class_0..class_3, 6 files each
    pred = knn_predict(features('train'), train_labels, features('val'), n_classes=4).argmax(1)
    return (pred == val_labels).float().mean().item() * 100


def test_knn_monitor_maps_val_labels_by_class_name(tmp_path, capsys):
    data = val_same_as_train(tmp_path / 'part', drop=['class_0'])
    train_CMC.main(cmc(tmp_path, data, '--seed', '0'))
    out = capsys.readouterr().out
    printed = float(re.search(r'top-1 on val: ([\d.]+)', out).group(1))
    (run,) = glob.glob(str(tmp_path / 'models' / '*'))
    by_name = knn_by_hand(run, data, torch.arange(1, 4).repeat_interleave(6))   # val's classes are train's 1..3
    by_position = knn_by_hand(run, data, torch.arange(0, 3).repeat_interleave(6))   # what val numbered them
    assert printed == pytest.approx(by_name, abs=0.005)                  # printed with two decimals
    assert abs(by_name - by_position) > 10                               # the two labellings are far apart here
    assert 'the val split lacks 1 of the 4 train classes' in out


@pytest.mark.parametrize('script', ['probe', 'cmc'])
def test_a_val_class_train_lacks_stops_before_any_work(tmp_path, random_encoder, script):
    data = val_same_as_train(tmp_path / 'data', add=['zebra'])
    argv = probe(tmp_path, data, random_encoder) if script == 'probe' else cmc(tmp_path, data, '--seed', '0')
    main = LinearProbing.main if script == 'probe' else train_CMC.main
    with pytest.raises(UserError, match=r"has class folder 'zebra' that the train split lacks; add it to train, "
                                        r"or remove it from val"):
        main(argv)
    assert not (tmp_path / 'probe').exists() and not (tmp_path / 'models').exists()
    assert not (tmp_path / 'tb').exists() and not (tmp_path / 'probe_tb').exists()


# --------------------------------------------------------------------------- 2. images without colour

def grey_folder(root, mode, grey_classes=(0, 1, 2)):
    """make_image_folder's images, turned grayscale in the classes listed: mode 'L' files, or RGB with R = G = B."""
    make_image_folder(root, classes=3, per_class=8)
    for path in glob.glob(os.path.join(root, '*', '*', '*.png')):
        if int(path.split(os.sep)[-2].split('_')[1]) in grey_classes:
            grey = Image.open(path).convert('L')
            (grey if mode == 'L' else grey.convert('RGB')).save(path)
    return str(root)


@pytest.mark.parametrize('mode', ['L', 'RGB'])
@pytest.mark.parametrize('view', ['Lab', 'YCbCr'])
def test_grayscale_images_stop_a_colour_view_run(tmp_path, mode, view):
    with pytest.raises(UserError) as e:
        train_CMC.main(cmc(tmp_path, grey_folder(tmp_path / 'data', mode), '--view', view, '--seed', '0'))
    chroma = {'Lab': 'ab', 'YCbCr': 'CbCr'}[view]
    assert str(e.value) == (f'--view {view} needs colour images, but all 24 images sampled from the training set are '
                            f'grayscale (equal R, G and B), so its {chroma} view would be constant; use '
                            f'train_moco_ins.py (one RGB encoder), or a colour data set')
    assert not (tmp_path / 'models').exists()


def test_the_colour_check_reads_what_the_view_sees():
    """The grayscale test is about the view: a grey image's ab channels are constant to float precision."""
    from views import DeviceView
    make = lambda pixels: torch.from_numpy(np.asarray(pixels)).permute(2, 0, 1)[None]   # noqa: E731
    rng = np.random.RandomState(0)
    grey = np.repeat(rng.randint(0, 256, (16, 16, 1)), 3, axis=2).astype(np.uint8)
    lab = DeviceView('Lab')(make(grey))
    # a* and b* of R = G = B are 0 up to float32 rounding of the white-point division: per channel, constant to
    # about 1e-5 of the normalised range, while L spreads over it
    assert lab[0, 1].std() < 1e-4 and lab[0, 2].std() < 1e-4 and lab[0, 0].std() > 0.1


def test_partly_grayscale_data_is_noted_and_trains(tmp_path, capsys):
    train_CMC.main(cmc(tmp_path, grey_folder(tmp_path / 'data', 'L', grey_classes=(0,)), '--seed', '0'))
    out = capsys.readouterr().out
    assert 'note: 8 of 24 images sampled from the training set (33%) are grayscale: their ab view is constant' in out
    assert os.path.isfile(glob.glob(str(tmp_path / 'models' / '*' / 'current.pth'))[0])


# --------------------------------------------------------------------------- 3. resumes with changed flags

def digest(folder):
    return {name: hashlib.sha256(open(os.path.join(folder, name), 'rb').read()).hexdigest()
            for name in sorted(os.listdir(folder))}


def test_a_resume_with_flags_that_fix_the_state_is_refused(tmp_path, image_folder):
    train_CMC.main(cmc(tmp_path, image_folder, '--seed', '0', '--nce_k', '16'))
    (run,) = glob.glob(str(tmp_path / 'models' / '*'))
    before = digest(run)
    current = os.path.join(run, 'current.pth')
    with pytest.raises(UserError) as e:
        train_CMC.main(cmc(tmp_path, image_folder, '--seed', '0', '--nce_k', '8', '--nce_t', '0.1', '--epochs', '2',
                           '--resume', current))
    assert str(e.value) == (f'cannot resume {current} with other values of flags that fix its state: --nce_k 8 '
                            f'(checkpoint: 16), --nce_t 0.1 (checkpoint: 0.07); resume with the checkpoint\'s values, '
                            f'or start a new run in another --model_path')
    assert digest(run) == before


def test_a_resume_with_flags_that_may_change_is_noted_and_continues(tmp_path, image_folder, capsys):
    train_CMC.main(cmc(tmp_path, image_folder, '--seed', '0', '--nce_k', '16'))
    (run,) = glob.glob(str(tmp_path / 'models' / '*'))
    train_CMC.main(cmc(tmp_path, image_folder, '--seed', '0', '--nce_k', '16', '--epochs', '2', '--print_freq', '2',
                       '--lr_decay_epochs', '1', '--resume', 'auto'))
    assert ('note: resuming with changed flags: --epochs 2 (checkpoint: 1), --lr_decay_epochs [1] (checkpoint: '
            '[120, 160, 200]), --print_freq 2 (checkpoint: 100)') in capsys.readouterr().out
    ckpt = checkpoint.load_checkpoint(os.path.join(run, 'current.pth'))
    # the contrast buffers describe the run that trained: K = 16, T = 0.07
    assert ckpt['epoch'] == 2 and ckpt['contrast']['params'][0].item() == 16
    assert ckpt['contrast']['params'][1].item() == pytest.approx(0.07, rel=1e-7, abs=0)   # float32 of 0.07


def test_a_resume_under_another_number_of_processes_is_refused(tmp_path, image_folder):
    train_CMC.main(cmc(tmp_path, image_folder, '--seed', '0'))
    (current,) = glob.glob(str(tmp_path / 'models' / '*' / 'current.pth'))
    ckpt = checkpoint.load_checkpoint(current)
    assert ckpt['world_size'] == 1
    ckpt['world_size'] = 2                                   # as if saved by torchrun --nproc_per_node 2
    checkpoint.save_checkpoint(ckpt, current)
    with pytest.raises(UserError, match=r'--nproc_per_node 1 \(checkpoint: 2\)'):
        train_CMC.main(cmc(tmp_path, image_folder, '--seed', '0', '--epochs', '2', '--resume', 'auto'))


# --------------------------------------------------------------------------- 4. runs without --seed

def test_without_seed_a_seed_is_drawn_printed_stored_and_repeats_the_run(tmp_path, image_folder, capsys):
    seeds = []
    for name in ('a', 'b'):
        train_CMC.main(cmc(tmp_path / name, image_folder))
        (seed,) = re.findall(r'no --seed given: drew seed (\d+) \(pass --seed \1 to repeat this run\)',
                             capsys.readouterr().out)
        ckpt = checkpoint.load_checkpoint(glob.glob(str(tmp_path / name / 'models' / '*' / 'current.pth'))[0])
        assert ckpt['opt']['seed'] == int(seed) and ckpt['opt']['seed_drawn'] is True
        seeds.append(int(seed))
    assert seeds[0] != seeds[1]                              # two runs, two data orders (a 1 in 2**31 chance)
    train_CMC.main(cmc(tmp_path / 'again', image_folder, '--seed', str(seeds[0])))
    first, again = (checkpoint.load_checkpoint(glob.glob(str(tmp_path / n / 'models' / '*' / 'current.pth'))[0])
                    for n in ('a', 'again'))
    for key in ('model', 'contrast'):                        # the same run, bit for bit (CPU, no workers)
        assert all(torch.equal(first[key][k], again[key][k]) for k in first[key])


# --------------------------------------------------------------------------- 5. no empty run folder after a failure

def corrupt_one_image(data):
    path = sorted(glob.glob(os.path.join(data, 'train', 'class_2', '*.png')))[-1]
    with open(path, 'wb') as f:
        f.write(b'not a png')


def test_a_failed_run_leaves_no_empty_folder(tmp_path):
    data = make_image_folder(tmp_path / 'data', classes=3, per_class=8)
    corrupt_one_image(data)
    with pytest.raises(UserError, match='cannot decode image'):
        train_CMC.main(cmc(tmp_path, data, '--seed', '0'))
    assert not (tmp_path / 'models').exists()                # the run's folder and the --model_path it made


def test_a_failed_resume_keeps_the_runs_folder_untouched(tmp_path):
    data = make_image_folder(tmp_path / 'data', classes=3, per_class=8)
    train_CMC.main(cmc(tmp_path, data, '--seed', '0'))
    (run,) = glob.glob(str(tmp_path / 'models' / '*'))
    before = digest(run)
    corrupt_one_image(data)
    with pytest.raises(UserError, match='cannot decode image'):
        train_CMC.main(cmc(tmp_path, data, '--seed', '0', '--epochs', '2', '--resume', 'auto'))
    assert digest(run) == before


def test_a_failed_run_keeps_a_model_path_that_was_there(tmp_path):
    data = make_image_folder(tmp_path / 'data', classes=3, per_class=8)
    (tmp_path / 'models').mkdir()
    (tmp_path / 'models' / 'notes.txt').write_text('mine')
    corrupt_one_image(data)
    with pytest.raises(UserError, match='cannot decode image'):
        train_CMC.main(cmc(tmp_path, data, '--seed', '0'))
    assert os.listdir(tmp_path / 'models') == ['notes.txt']


# --------------------------------------------------------------------------- found by a review as a new user

def test_grayscale_with_a_little_channel_noise_is_still_grayscale(tmp_path):
    """+-3 levels of independent noise per channel (a scanner's, say) leave the chroma views all but constant."""
    root = grey_folder(tmp_path / 'data', 'RGB')
    rng = np.random.RandomState(1)
    for path in glob.glob(os.path.join(root, '*', '*', '*.png')):
        pixels = np.asarray(Image.open(path), dtype=np.int16) + rng.randint(-3, 4, (72, 72, 3))
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path)
    with pytest.raises(UserError, match='all 24 images sampled from the training set are grayscale'):
        train_CMC.main(cmc(tmp_path, root, '--view', 'YCbCr', '--seed', '0'))


def test_resume_auto_says_when_it_finds_no_run_to_continue(tmp_path, image_folder, capsys):
    train_CMC.main(cmc(tmp_path, image_folder, '--seed', '0'))
    capsys.readouterr()
    train_CMC.main(cmc(tmp_path, image_folder, '--seed', '0', '--learning_rate', '0.05', '--resume', 'auto'))
    out = capsys.readouterr().out
    (new,) = glob.glob(str(tmp_path / 'models' / '*lr_0.05*'))   # the learning rate is part of the run name
    assert f'--resume auto: no current.pth in {tmp_path / "models" / os.path.basename(new)}; starting a new run' in out


def test_a_resume_without_seed_says_which_seed_it_continues_with(tmp_path, image_folder, capsys):
    train_CMC.main(cmc(tmp_path, image_folder))
    (seed,) = re.findall(r'drew seed (\d+)', capsys.readouterr().out)
    train_CMC.main(cmc(tmp_path, image_folder, '--epochs', '2', '--resume', 'auto'))
    out = capsys.readouterr().out
    assert f"no --seed given: continuing with the checkpoint's seed {seed}" in out and 'drew seed' not in out
    (changed,) = [line for line in out.splitlines() if 'changed flags' in line]
    assert changed == 'note: resuming with changed flags: --epochs 2 (checkpoint: 1)'


@pytest.mark.parametrize('script', ['cmc', 'probe'])
def test_a_batch_of_one_is_refused_in_one_line(tmp_path, image_folder, random_encoder, script):
    with pytest.raises(UserError, match='--batch_size 1 is too small: BatchNorm in training needs at least 2'):
        if script == 'cmc':
            train_CMC.main(cmc(tmp_path, image_folder, '--batch_size', '1'))
        else:
            LinearProbing.main(probe(tmp_path, image_folder, random_encoder, '--batch_size', '1'))


def test_an_empty_val_class_folder_is_an_error_not_a_silent_monitor_off(tmp_path):
    data = val_same_as_train(tmp_path / 'data')
    for path in glob.glob(os.path.join(data, 'val', 'class_3', '*')):
        os.remove(path)
    with pytest.raises(UserError) as error:       # named as the one empty folder, not as "no images found"
        train_CMC.main(cmc(tmp_path, data, '--seed', '0'))
    assert str(error.value) == (f'class folder class_3 under {data}/val holds no images (.jpg, .jpeg, .png, .bmp, '
                                f'.webp, ...) while the other 3 hold some; add images to it, or remove it')


def test_class_names_that_differ_in_case_are_named(tmp_path, random_encoder):
    data = val_same_as_train(tmp_path / 'data')
    os.rename(os.path.join(data, 'val', 'class_3'), os.path.join(data, 'val', 'Class_3'))
    with pytest.raises(UserError, match=r"'Class_3' \(train has 'Class_3' / 'class_3': the names differ in case\)"):
        LinearProbing.main(probe(tmp_path, data, random_encoder))


def test_a_probe_resume_with_other_probe_views_is_refused(tmp_path, image_folder):
    # --probe_views fixes the classifier's input (which views' features it reads): resuming a probe of L with ab
    # would train an L-shaped classifier on ab features without a word.
    train_CMC.main(cmc(tmp_path, image_folder, '--seed', '0'))
    (ckpt,) = glob.glob(str(tmp_path / 'models' / '*' / 'current.pth'))
    LinearProbing.main(probe(tmp_path, image_folder, ckpt, '--epochs', '1', '--probe_views', 'L'))
    (current,) = glob.glob(str(tmp_path / 'probe' / '*' / 'current.pth'))
    with pytest.raises(UserError, match=r"--probe_views \['ab'\] \(checkpoint: \['L'\]\)") as error:
        LinearProbing.main(probe(tmp_path, image_folder, ckpt, '--epochs', '2', '--probe_views', 'ab',
                                 '--resume', current))
    assert str(error.value).endswith('start a new run in another --save_path')    # the probes' folder flag


# --------------------------------------------------------------------------- hidden entries (issue 22)

def add_hidden_entries(root):
    """What Jupyter and macOS leave behind: a .ipynb_checkpoints folder holding an image (a would-be class), an
    AppleDouble ._<name>.png beside each class's first image (not a PNG at all), a .DS_Store file."""
    for split in ('train', 'val'):
        os.makedirs(os.path.join(root, split, '.ipynb_checkpoints'))
        Image.new('RGB', (72, 72), (1, 2, 3)).save(os.path.join(root, split, '.ipynb_checkpoints', 'x.png'))
        for folder in glob.glob(os.path.join(root, split, 'class_*')):
            with open(os.path.join(folder, '._0.png'), 'wb') as f:
                f.write(b'\x00\x05\x16\x07 AppleDouble resource fork, not an image')
        with open(os.path.join(root, split, '.DS_Store'), 'wb') as f:
            f.write(b'Bud1')
    return root


def test_hidden_entries_are_neither_classes_nor_images_and_are_said_once(tmp_path, capsys):
    data = add_hidden_entries(val_same_as_train(tmp_path / 'data'))
    train_CMC.main(cmc(tmp_path, data, '--seed', '0'))
    out = capsys.readouterr().out
    for split in ('train', 'val'):
        line = f'note: skipped 5 hidden entries under {data}/{split} (names starting with ".": ._0.png, '\
               f'.ipynb_checkpoints): neither classes nor images'
        assert out.count(line) == 1, out
    ckpt = checkpoint.load_checkpoint(glob.glob(str(tmp_path / 'models' / '*' / 'current.pth'))[0])
    assert ckpt['contrast']['memory_l'].shape[0] == 24            # 4 classes x 6 images, nothing hidden among them
    assert 'kNN (k=200, t=0.07) top-1 on val' in out               # val's hidden folder is no 5th class either


def test_the_probe_refuses_grayscale_data_only_for_the_views_it_probes(tmp_path, random_encoder):
    data = grey_folder(tmp_path / 'data', 'L')
    with pytest.raises(UserError) as error:
        LinearProbing.main(probe(tmp_path, data, random_encoder))
    assert str(error.value) == (f'--probe_views L ab (of {random_encoder}) needs colour images, but all 24 images '
                                f'sampled from the training set are grayscale (equal R, G and B), so its ab view '
                                f'would be constant; probe it on a colour data set (--dataset, --data_folder), or '
                                f'probe only views without colour (--probe_views)')
    assert LinearProbing.main(probe(tmp_path, data, random_encoder, '--probe_views', 'L'))['best_acc1'] >= 0
