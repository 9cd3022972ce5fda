"""The demo end to end in smoke mode (one short epoch per stage): table, figure and reusable encoders."""
import os
import re
import math
import subprocess
import sys

import pytest

from engine import checkpoint
from models import build_cmc_model, build_ins_model
from conftest import ROOT


def test_demo_smoke(tmp_path):
    out = tmp_path / 'demo'
    proc = subprocess.run([sys.executable, 'scripts/run_demo.py', '--smoke', '--out', str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert '[1/6] pretraining cmc' in proc.stdout and '[6/6] writing the table' in proc.stdout
    table = (tmp_path / 'demo.md').read_text()
    rows = [[c.strip() for c in line.strip('|').split('|')] for line in table.splitlines()
            if line.startswith('| ') and not line.startswith('| method')]
    assert [r[0] for r in rows] == ['CMC (Lab)', 'InsDis', 'MoCo', 'random init (resnet18v1, CMC)',
                                    'random init (resnet18x0.5, RGB)']
    number = r'(-?[\d.]+)'
    for label, probe, margin, cached, cached_margin, knn, knn_margin, minutes in rows:
        mean, sd = map(float, re.fullmatch(rf'{number} \+- {number}', probe).groups())
        assert 0 <= mean <= 100 and sd >= 0 and 0 <= float(cached) <= 100 and 0 <= float(knn) <= 100
    by_label = {r[0]: r for r in rows}
    for method, partner in (('CMC (Lab)', 'random init (resnet18v1, CMC)'), ('MoCo', 'random init (resnet18x0.5, RGB)')):
        # each margin is the method's number minus its random encoder's (the probe's: the first seed's predictions)
        assert float(by_label[method][4]) == pytest.approx(float(by_label[method][3]) - float(by_label[partner][3]),
                                                           abs=0.11)   # each number rounded
        assert float(by_label[method][6]) == pytest.approx(float(by_label[method][5]) - float(by_label[partner][5]),
                                                           abs=0.11)   # each number rounded
        assert re.fullmatch(rf'[+-]{number} \+- {number}', by_label[method][2])
        probe_margin = float(by_label[method][2].split(' +- ')[0])
        assert probe_margin == pytest.approx(float(by_label[method][1].split(' +- ')[0])
                                             - float(by_label[partner][1].split(' +- ')[0]), abs=0.11)
    assert by_label['random init (resnet18x0.5, RGB)'][2] == ''
    assert (tmp_path / 'demo.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    # the val feature maps of CMC and its random encoder, side by side, each title with its kNN top-1
    from PIL import Image

    from pretrained.feature_map import DPI, LEGEND_INCHES, PANEL_INCHES
    with Image.open(out / 'feature_map.png') as image:
        assert image.format == 'PNG' and image.size == ((2 * PANEL_INCHES + LEGEND_INCHES) * DPI, PANEL_INCHES * DPI)
        titles = image.text['Title']
    names = re.findall(r'(CMC \(Lab\)|random init \(resnet18v1, CMC\)), layer 6: \S+ of 36 val images; kNN top-1 '
                       r'[\d.]+%', titles)
    assert names == ['CMC (Lab)', 'random init (resnet18v1, CMC)']
    assert f'random init (layer 6, kNN in the titles): {out}/feature_map.png' in proc.stdout
    # every probed encoder is kept in the pretraining checkpoint format and loads into its architecture
    for name, build in (('cmc', build_cmc_model), ('random', build_cmc_model), ('insdis', build_ins_model),
                        ('moco', build_ins_model), ('random_rgb', build_ins_model)):
        ckpt = checkpoint.load_checkpoint(str(out / f'{name}.pth'))
        arch = 'resnet18v1' if build is build_cmc_model else 'resnet18x0.5'     # run_demo's CMC_MODEL, RGB_MODEL
        build(arch).load_state_dict(ckpt['model'])
        assert 'epoch' in ckpt and 'opt' in ckpt
        assert ckpt['opt']['image_size'] == 32        # the random ones too: extract_features.py crops at it


def test_a_failing_lane_stops_the_other_and_its_error_is_raised(tmp_path):
    import time
    import pytest
    sys.path.insert(0, os.path.join(ROOT, 'scripts'))
    import demo_lanes
    done = []

    def fail():
        time.sleep(1.0)                 # the other lane's script is running by now
        raise SystemExit('lane one failed')

    def long_script():
        demo_lanes.run_script(['-c', 'import time; time.sleep(120)'], str(tmp_path / 'long.log'),
                            demo_lanes.Progress(1), 1)

    t0 = time.time()
    with pytest.raises(SystemExit, match='lane one failed'):
        demo_lanes.run_lanes([[fail], [long_script, lambda: done.append('after')]])
    assert time.time() - t0 < 30 and done == [] and not demo_lanes.RUNNING


def test_progress_shows_every_nth_epoch_with_the_knn_that_follows_it(tmp_path, capsys):
    sys.path.insert(0, os.path.join(ROOT, 'scripts'))
    import demo_lanes
    printed = ['epoch 1, total time 1.2', 'kNN (k=200, t=0.07) top-1 on val: 40.00', 'epoch 2, total time 2.6',
               'kNN (k=200, t=0.07) top-1 on val: 45.56', 'epoch 3, total time 3.0', 'epoch 4, total time 4.4',
               'kNN (k=200, t=0.07) top-1 on val: 50.00', 'epoch 5, total time 5.0']
    demo_lanes.run_script(['-c', f'print({chr(10).join(printed)!r})'], str(tmp_path / 'log'), demo_lanes.Progress(1),
                        5, every=2, label='cmc')
    lines = [line.split('min  ', 1)[1].strip() for line in capsys.readouterr().out.splitlines()]
    # after epoch 2: 3 epochs to go at 2.6 s (the first, 1.2 s, warms up); then every 2nd epoch, the mean of the
    # epochs since the first times the epochs to go, and the latest kNN (epoch 5 printed none: 50.0 is epoch 4's)
    assert lines == ['cmc about 8 s left in this stage (3 epochs at 3 s)',
                     'cmc epoch 2/5, 8 s left, kNN top-1 45.6',
                     f'cmc epoch 4/5, {(2.6 + 3.0 + 4.4) / 3:.0f} s left, kNN top-1 50.0',
                     'cmc epoch 5/5, done, kNN top-1 50.0']
    assert (tmp_path / 'log').read_text() == '\n'.join(printed) + '\n'


def test_minutes_scales_every_stage_by_one_factor_to_fit_the_budget(capsys):
    sys.path.insert(0, os.path.join(ROOT, 'scripts'))
    import demo_lanes
    import run_demo
    per_epoch = {'cmc': 2.0, 'insdis': 3.0, 'moco': 4.0}        # seconds, as a calibration would time them
    progress = demo_lanes.Progress(1)
    chosen = run_demo.fit_minutes(10, {'cmc': 150, 'insdis': 50, 'moco': 30},
                                  lambda method, n, calibrate: per_epoch[method], progress)
    # lanes: cmc 150 x 2 = 300 s; insdis then moco 50 x 3 + 30 x 4 = 270 s; evaluation EVAL_CMC_EPOCHS CMC epochs
    assert run_demo.EVAL_CMC_EPOCHS == 20
    scale = (600 - 20 * 2.0) / 300                              # (the calibration itself took ~0 s here)
    assert chosen == {'cmc': math.floor(150 * scale - 1e-6), 'insdis': math.floor(50 * scale),   # rounded down
                      'moco': math.floor(30 * scale - 1e-6)}
    said = capsys.readouterr().out
    assert 'cmc 2.0 s, insdis 3.0 s, moco 4.0 s' in said and f'by {scale:.2f}' in said and '~6 min' in said
    tiny = run_demo.fit_minutes(0.5, {'cmc': 150, 'insdis': 50, 'moco': 30},
                                lambda method, n, calibrate: per_epoch[method], progress)
    assert tiny == {'cmc': 1, 'insdis': 1, 'moco': 1} and 'will overrun' in capsys.readouterr().out


def test_minutes_and_epochs_refuse_nonsense_before_anything_is_removed(tmp_path, capsys):
    sys.path.insert(0, os.path.join(ROOT, 'scripts'))
    import run_demo
    kept = tmp_path / 'demo' / 'runs' / 'kept.txt'
    kept.parent.mkdir(parents=True)
    kept.write_text('an earlier run')
    for argv in (['--minutes', '0'], ['--minutes', 'inf'], ['--minutes', 'nan'], ['--minutes', '1e300'],
                 ['--minutes', '5', '--smoke'], ['--minutes', '5', '--epochs', 'cmc=2'], ['--epochs', 'cmc=x'],
                 ['--epochs', 'cmc'], ['--epochs', 'cmc=1,,moco=1'], ['--epochs', 'mocoo=4'], ['--epochs', 'cmc=0']):
        with pytest.raises(SystemExit) as e:
            run_demo.main([*argv, '--out', str(tmp_path / 'demo')])
        assert e.value.code == 2, argv
        assert 'error: --' in capsys.readouterr().err
    assert kept.read_text() == 'an earlier run'
    assert run_demo.parse_args(['--epochs', 'cmc=3,probe=2']).epochs == {'cmc': 3, 'probe': 2}


def test_summarise_gives_mean_and_sd_of_each_cells_first_number(tmp_path):
    sys.path.insert(0, os.path.join(ROOT, 'scripts'))
    import demo_report
    tables = []
    for i, (probe, margin, knn) in enumerate(((70.0, 12.0, 65.0), (74.0, 14.0, 69.0))):
        path = tmp_path / f'demo{i}.md'
        path.write_text('\n'.join([
            '# Demo results', '', demo_report.HEADER, '|---|---:|---:|---:|---:|---:|---:|---:|',
            f'| CMC (Lab) | {probe} +- 0.5 | +{margin} +- 2.4 | 69.0 | +12.4 | {knn} | +30.0 | 10.0 |',
            '| random init (resnet18v1, CMC) | 58.0 +- 0.0 |  | 56.6 |  | 32.5 |  | 0.5 |',
            '| CMC (Lab) | 68.3 | 92.6 | 63.0 | 16.0 |']))        # a row of the old 5-column table: not counted
        tables.append(str(path))
    lines = demo_report.summarise(tables).splitlines()
    cmc = next(line for line in lines if line.startswith('| CMC (Lab)'))
    sd = 2 ** 0.5 * 2                                            # sample sd of (70, 74); of (12, 14) it is sqrt(2)
    assert cmc == (f'| CMC (Lab) | 72.0 +- {sd:.1f} | +13.0 +- {2 ** 0.5:.1f} | 69.0 +- 0.0 | +12.4 +- 0.0 | '
                   f'67.0 +- {sd:.1f} | +30.0 +- 0.0 | 10.0 +- 0.0 | 2 |')
    random = next(line for line in lines if line.startswith('| random init'))
    assert random == ('| random init (resnet18v1, CMC) | 58.0 +- 0.0 |  | 56.6 +- 0.0 |  | 32.5 +- 0.0 |  | 0.5 +- 0.0 '
                      '| 2 |')
    # one run: no sd to give
    assert '| CMC (Lab) | 70.0 | +12.0 | 69.0 | +12.4 | 65.0 | +30.0 | 10.0 | 1 |' in demo_report.summarise(tables[:1])
    from engine.errors import UserError
    old = tmp_path / 'old.md'
    old.write_text('| method | probe top-1 | probe top-5 | kNN top-1 | minutes |\n'
                   '| CMC (Lab) | 68.3 | 92.6 | 63.0 | 16.0 |')
    for path, says in ((tmp_path / 'missing.md', 'No such file'), (tmp_path, 'directory'), (old, 'other columns')):
        with pytest.raises(UserError, match=says):
            demo_report.summarise([tables[0], str(path)])
