"""The styles finding (scripts/findings_styles.py through scripts/findings.py styles) on a generated styles data set
laid out as scripts/build_styles_data.py writes it."""
import argparse
import csv
import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, 'scripts'))
import findings_styles as styles  # noqa: E402

CLASSES = ('Animals', 'Flags', 'Symbols')


def make_styles_folder(root, per_class=(4, 2), size=32):
    """root/{train,val}/{rgb,fluent,openmoji}/<class>/<code>.png and labels.csv. fluent is a copy of rgb (so a probe
    tested on fluent must score as on rgb); openmoji is other noise. Subcategories: '<class>-a' for the first train and
    val image of a class, '<class>-b' for the rest, and 'lonely' for the last val image of the last class (no train
    image: left out of the subcategory evaluation)."""
    rng = np.random.RandomState(0)
    rows = []
    for split, count in zip(('train', 'val'), per_class):
        for c, name in enumerate(CLASSES):
            for i in range(count):
                code = f'{split[0].upper()}{c}{i}'
                rgb = rng.randint(0, 256, (size, size, 3)).astype(np.uint8)
                rgb[:, :, c] = 255                                  # some class signal
                other = rng.randint(0, 256, (size, size, 3)).astype(np.uint8)
                for style, pixels in (('rgb', rgb), ('fluent', rgb), ('openmoji', other)):
                    os.makedirs(root / split / style / name, exist_ok=True)
                    Image.fromarray(pixels).save(root / split / style / name / f'{code}.png')
                lonely = split == 'val' and c == len(CLASSES) - 1 and i == count - 1
                sub = 'lonely' if lonely else f'{name}-{"a" if i == 0 else "b"}'
                rows.append((split, name, f'{code}.png', code, name, sub))
    with open(root / 'labels.csv', 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(['split', 'class', 'file', 'unified', 'category', 'subcategory'])
        writer.writerows(sorted(rows))
    return root


def test_label_trees_point_at_the_right_style_and_leave_out_untrained_classes(tmp_path):
    data = make_styles_folder(tmp_path / 'styles')
    trees = styles.build_trees(str(data), str(tmp_path / 'work'), styles.LABEL_SETS)
    assert sorted(trees) == [('category', 'fluent'), ('category', 'openmoji'), ('category', 'rgb'),
                             ('subcategory', 'rgb')]
    link = os.path.join(trees['category', 'openmoji'], 'val', 'rgb', 'Flags', 'V10.png')
    assert os.path.realpath(link) == str(data / 'val' / 'openmoji' / 'Flags' / 'V10.png')
    for style in ('fluent', 'openmoji'):         # the file views and train stay themselves
        kept = os.path.join(trees['category', 'openmoji'], 'val', style, 'Flags', 'V10.png')
        assert os.path.realpath(kept) == str(data / 'val' / style / 'Flags' / 'V10.png')
    train = os.path.join(trees['category', 'openmoji'], 'train', 'rgb', 'Flags', 'T10.png')
    assert os.path.realpath(train) == str(data / 'train' / 'rgb' / 'Flags' / 'T10.png')
    sub = trees['subcategory', 'rgb']
    assert sorted(os.listdir(os.path.join(sub, 'train', 'rgb'))) == sorted(f'{c}-{x}' for c in CLASSES for x in 'ab')
    assert sorted(os.listdir(os.path.join(sub, 'val', 'rgb'))) == sorted(
        [f'{c}-a' for c in CLASSES] + ['Animals-b', 'Flags-b'])      # Symbols' second val image is 'lonely': left out
    assert styles.label_counts(str(data), 'subcategory') == (6, 1)
    assert styles.label_counts(str(data), 'category') == (3, 0)
    assert styles.metric('subcategory', 'rgb', 'knn') == 'knn L subcategory'
    assert styles.metric('category', 'fluent', 'probe') == 'probe L -> fluent'


def test_a_data_set_without_labels_csv_is_one_error_line(tmp_path):
    data = make_styles_folder(tmp_path / 'styles')
    os.remove(data / 'labels.csv')
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'scripts', 'findings.py'), 'styles', '--smoke',
                           '--data_folder', str(data), '--work', str(tmp_path / 'w'), '--results', str(tmp_path / 'r')],
                          capture_output=True, text=True, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1 and lines[0].startswith('error: ') and 'labels.csv' in lines[0]
    assert 'build_styles_data.py' in lines[0] and not (tmp_path / 'r').exists()
    os.makedirs(tmp_path / 'r')
    (tmp_path / 'r' / 'findings.md').write_text('kept\n')
    make_styles_folder(tmp_path / 'styles')                 # labels.csv back: --report of no stored seed
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'scripts', 'findings.py'), 'styles', '--report',
                           '--data_folder', str(data), '--results', str(tmp_path / 'r')],
                          capture_output=True, text=True, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1 and lines[0].startswith('error: --report: ')
    assert 'no seed at 20 epochs' in lines[0]
    assert os.listdir(tmp_path / 'r') == ['findings.md'] and (tmp_path / 'r' / 'findings.md').read_text() == 'kept\n'


def one_error_line(args, cwd=None):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'scripts', 'findings.py'), 'styles', *args],
                          capture_output=True, text=True, timeout=300, cwd=cwd)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1 and lines[0].startswith('error: '), proc.stderr[-2000:]
    return lines[0]


def test_bad_data_and_flags_stop_with_one_line_before_any_work(tmp_path):
    data = make_styles_folder(tmp_path / 'styles')
    common = ['--smoke', '--data_folder', str(data), '--work', str(tmp_path / 'w'), '--results', str(tmp_path / 'r')]
    assert '--epochs 0: give at least 1' in one_error_line([*common, '--epochs', '0'])
    assert '--lanes must be at least 1' in one_error_line([*common, '--lanes', '0'])
    os.remove(data / 'train' / 'rgb' / 'Flags' / 'T10.png')
    line = one_error_line(common)
    assert 'T10.png' in line and 'build_styles_data.py' in line
    with open(data / 'labels.csv') as f:
        rows = [r.split(',')[:5] for r in f.read().splitlines()]
    with open(data / 'labels.csv', 'w') as f:
        f.write('\n'.join(','.join(r) for r in rows) + '\n')          # the subcategory column dropped
    assert 'lacks subcategory' in one_error_line(common)
    assert not (tmp_path / 'r').exists() and not (tmp_path / 'w').exists()


def test_stored_baselines_follow_the_label_sets_and_data_they_were_made_from(tmp_path, monkeypatch):
    import findings
    data = make_styles_folder(tmp_path / 'styles')
    made = []

    def counted(folder, label_sets):
        made.append(list(label_sets))
        return {'majority class': {'knn L': float(len(made))}}
    monkeypatch.setattr(findings.styles, 'pixel_baselines', counted)
    args = argparse.Namespace(data_folder=str(data), labels=['category'], results=str(tmp_path / 'r'))
    store, saved = str(tmp_path / 'r' / 's.json'), {}
    for labels in (['category'], ['category'], ['subcategory', 'category'], ['category', 'subcategory']):
        args.labels = labels
        findings.baselines_of(args, store, saved)
    assert made == [['category'], ['subcategory', 'category']]       # recomputed once, when the label sets changed
    args.data_folder = str(make_styles_folder(tmp_path / 'other'))
    findings.baselines_of(args, store, saved)
    assert len(made) == 3 and json.load(open(store)) == saved and saved[findings.BASELINES]['rows'] == {
        'majority class': {'knn L': 3.0}}


def test_styles_finding_smoke(tmp_path):
    data = make_styles_folder(tmp_path / 'styles')
    results = tmp_path / 'results'
    proc = subprocess.run(['bash', os.path.join(ROOT, 'scripts', 'findings_styles.sh'), '--smoke',  # 1 lane itself
                           '--data_folder', str(data), '--results', str(results), '--work', str(tmp_path / 'work')],
                          capture_output=True, text=True, timeout=900, env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    stored = json.load(open(results / 'findings_styles_smoke.json'))
    assert sorted(stored) == ['baselines without pretraining', 'seed 0, 1 epochs']
    made_from = {k: v for k, v in stored['baselines without pretraining'].items() if k != 'rows'}
    assert made_from == {'data_folder': os.path.realpath(data), 'labels': ['category', 'subcategory'], 'image_size': 32}
    rows = stored['seed 0, 1 epochs']['rows']
    assert list(rows) == [label for label, *_ in styles.runs(smoke=True)] + ['random init']
    metrics = ['knn L', 'probe L', 'probe L -> fluent', 'probe L -> openmoji', 'knn L subcategory',
               'probe L subcategory']
    for label, row in rows.items():
        assert sorted(m for m in row if m != 'minutes') == sorted(metrics), label
        # fluent's val images are rgb's: the same probe (same train features, same seed) scores the same on them
        assert row['probe L -> fluent'] == row['probe L'], label
        assert all(0 <= row[m] <= 100 for m in metrics)
        # every score is a whole number of the 6 category (5 subcategory) val images
        assert abs(row['probe L'] * 6 / 100 - round(row['probe L'] * 6 / 100)) < 1e-6
        assert abs(row['probe L subcategory'] * 5 / 100 - round(row['probe L subcategory'] * 5 / 100)) < 1e-6
    text = open(results / 'findings.md').read()
    assert 'SMOKE MODE' in text and '| random init |' in text and 'probe on OpenMoji val (L)' in text
    assert 'subcategory: 6 classes (1 val image of classes without a train image left out)' in text
    gains = text.split('Gain over')[1]                 # one seed: the paired difference alone, no sd
    assert '| contrastive, +fluent, core |' in gains and '| predictive, +fluent, core |' in gains
    assert '/1) |' in gains and '| random init |' not in gains
    with Image.open(results / 'findings_styles_smoke.png') as image:
        assert image.format == 'PNG' and image.size[0] > image.size[1]
    baselines = text.split('Without pretraining')[1]
    assert abs(stored['baselines without pretraining']['rows']['majority class']['knn L'] - 100 * 2 / 6) < 1e-9
    assert '| majority class | 33.3 | 33.3 |' in baselines and '| standardised L pixels |' in baselines
    assert stored['seed 0, 1 epochs']['data_folder'] == os.path.realpath(data)
    other = make_styles_folder(tmp_path / 'other')        # its seeds' data, not another data set's: one error line
    before = open(results / 'findings_styles_smoke.json').read()
    for flags in (['--report'], []):
        line = one_error_line(['--smoke', *flags, '--data_folder', str(other), '--results', str(results),
                               '--work', str(tmp_path / 'work2')])
        assert f'seeds trained on {os.path.realpath(data)}, not --data_folder {os.path.realpath(other)}' in line
    assert open(results / 'findings_styles_smoke.json').read() == before and not (tmp_path / 'work2').exists()
    # --report rewrites the section from the store alone: the same text, nothing trained
    os.remove(results / 'findings.md')
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'scripts', 'findings.py'), 'styles', '--smoke',
                           '--report', '--data_folder', str(data), '--results', str(results), '--work', '/nonexistent'],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert open(results / 'findings.md').read() == text and not os.path.exists('/nonexistent')


def test_lanes_take_the_costliest_runs_first_and_the_table_keeps_its_order():
    chosen = styles.runs()
    ordered = styles.by_cost(chosen)
    assert sorted(ordered) == sorted(chosen)                      # the same ten runs, none lost or repeated
    # predictive decoders: full graph n(n-1) (4 views: 12), core view 2(n-1) (4 views: 6, 3 views: 4, 2 views: 2)
    assert [label for label, *_ in ordered] == [
        'predictive, +fluent, openmoji, full', 'predictive, +fluent, openmoji, core', 'predictive, +fluent, full',
        'predictive, +fluent, core', 'predictive, L, ab',
        'contrastive, +fluent, openmoji, full', 'contrastive, +fluent, openmoji, core', 'contrastive, +fluent, full',
        'contrastive, +fluent, core', 'contrastive, L, ab']


def test_gains_are_paired_by_seed_against_the_same_objectives_two_views():
    import findings_report
    knn = {'contrastive, L, ab': (40.0, 50.0, 45.0), 'contrastive, +fluent, core': (44.0, 53.0, 50.0),
           'predictive, L, ab': (30.0, 30.0, 30.0), 'predictive, +fluent, core': (29.0, 31.0, 28.0),
           'random init': (20.0, 20.0, 20.0)}
    runs = {f'seed {k}, 20 epochs': {'rows': {label: {'knn L': v[k]} for label, v in knn.items()}, 'minutes': 1.0}
            for k in range(3)}
    lines = findings_report.styles_gains(runs).strip().splitlines()
    rows = {line.split(' | ')[0][2:]: line.split(' | ')[1].rstrip(' |') for line in lines if line.startswith('| ')}
    # contrastive differences 4, 3, 5: mean 4, sample sd 1, so 4.0 sd; all three positive
    assert rows['contrastive, +fluent, core'] == '+4.0 +- 1.0 (4.0 sd, 3/3)'
    # predictive differences -1, 1, -2: mean -2/3, sd sqrt(((-1/3)^2 + (5/3)^2 + (4/3)^2) / 2) = sqrt(7/3) = 1.53
    assert rows['predictive, +fluent, core'] == '-0.7 +- 1.5 (-0.4 sd, 1/3)'
    assert set(rows) == {'run', 'contrastive, +fluent, core', 'predictive, +fluent, core'}   # no base, no random
    assert findings_report.gain_cell([2.0, 2.0]) == '+2.0 +- 0.0 (sd 0, 2/2)'


def test_pixel_baselines_against_formulas_written_out(tmp_path):
    from skimage.color import rgb2lab
    from torchvision.transforms import CenterCrop, Resize
    from pretrained import linear_eval
    data = make_styles_folder(tmp_path / 'styles')
    base = styles.pixel_baselines(str(data), styles.LABEL_SETS)
    majority, pixels = base['majority class'], base['standardised L pixels']
    # balanced train (4 per category): the first class, Animals, 2 of the 6 val images; subcategories: train has
    # 1 '-a' and 3 '-b' per class, so 'Animals-b' (first of the largest); val keeps 5 images (not 'lonely'), one each
    assert majority['probe L'] == majority['knn L'] == majority['probe L -> openmoji']
    assert abs(majority['probe L'] - 100 * 2 / 6) < 1e-9
    assert majority['probe L subcategory'] == majority['knn L subcategory']
    assert abs(majority['knn L subcategory'] - 100 * 1 / 5) < 1e-9

    def l_of(split, style='rgb'):  # walks the folders (not labels.csv); the encoders' crop: 32 * 256 / 224 -> 37, 32
        x, y = [], []
        for c, name in enumerate(CLASSES):
            folder = data / split / style / name
            for file in sorted(os.listdir(folder)):
                image = CenterCrop(32)(Resize(37)(Image.open(folder / file).convert('RGB')))
                x.append(rgb2lab(np.asarray(image))[..., 0].ravel())
                y.append(c)
        return np.array(x), np.array(y)
    (train_x, train_y), (val_x, val_y) = l_of('train'), l_of('val')
    mean, sd = train_x.mean(0), train_x.std(0)
    sd[sd == 0] = 1
    a, b = (train_x - mean) / sd, (val_x - mean) / sd
    a, b = a / np.linalg.norm(a, axis=1, keepdims=True), b / np.linalg.norm(b, axis=1, keepdims=True)
    votes = np.exp(b @ a.T / 0.07) @ np.eye(3)[train_y]          # k = 200 > 12: every train image votes
    assert abs(pixels['knn L'] - 100 * np.mean(votes.argmax(1) == val_y)) < 1e-9
    # a subcategory with one train image: no probe (it cannot be cross-validated), the kNN still
    assert 'probe L subcategory' not in pixels and 'knn L subcategory' in pixels
    # the probe on each style's own val images: fluent's are rgb's, openmoji's are other noise
    for style, name in (('rgb', 'probe L'), ('fluent', 'probe L -> fluent'), ('openmoji', 'probe L -> openmoji')):
        assert pixels[name] == linear_eval.probe(train_x, train_y, l_of('val', style)[0], val_y)['mean'], style
    assert pixels['probe L -> fluent'] == pixels['probe L'] != pixels['probe L -> openmoji']
