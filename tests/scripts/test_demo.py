"""The demo end to end in smoke mode (one short epoch per stage): table, figure and reusable encoders."""
import os
import re
import subprocess
import sys

from engine import checkpoint
from models import build_cmc_model, build_ins_model
from conftest import ROOT


def test_demo_smoke(tmp_path):
    out = tmp_path / 'demo'
    proc = subprocess.run([sys.executable, 'scripts/run_demo.py', '--smoke', '--out', str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert '[1/9] pretraining cmc' in proc.stdout and '[9/9] writing the table' in proc.stdout
    table = (tmp_path / 'demo.md').read_text()
    rows = re.findall(r'^\| (.+?) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|$', table, re.M)
    assert [r[0] for r in rows] == ['CMC (Lab)', 'InsDis', 'MoCo', 'random init (resnet18v1, CMC)',
                                    'random init (resnet18, RGB)']
    for _, top1, top5, knn, minutes in rows:
        assert 0 <= float(top1) <= float(top5) <= 100 and 0 <= float(knn) <= 100
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
        arch = 'resnet18v1' if build is build_cmc_model else 'resnet18'
        build(arch).load_state_dict(ckpt['model'])
        assert 'epoch' in ckpt and 'opt' in ckpt
        assert ckpt['opt']['image_size'] == 64        # the random ones too: extract_features.py crops at it


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
    assert lines == ['cmc about 8 s left in this stage (3 epochs at 3 s)',       # after epoch 2: 3 x 2.6 s
                     'cmc epoch 2/5 (3 s), kNN top-1 45.6', 'cmc epoch 4/5 (4 s), kNN top-1 50.0',
                     'cmc epoch 5/5 (5 s)']
    assert (tmp_path / 'log').read_text() == '\n'.join(printed) + '\n'
