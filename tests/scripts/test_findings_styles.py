"""The styles finding (scripts/findings_styles.py through scripts/findings.py styles) on a generated styles data set
laid out as scripts/build_styles_data.py writes it."""
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


def test_styles_finding_smoke(tmp_path):
    data = make_styles_folder(tmp_path / 'styles')
    results = tmp_path / 'results'
    proc = subprocess.run(['bash', os.path.join(ROOT, 'scripts', 'findings_styles.sh'), '--smoke', '--lanes', '1',
                           '--data_folder', str(data), '--results', str(results), '--work', str(tmp_path / 'work')],
                          capture_output=True, text=True, timeout=900, env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    stored = json.load(open(results / 'findings_styles_smoke.json'))
    (rows,) = [seed['rows'] for seed in stored.values()]
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
    assert 'subcategory: 6 classes (1 val images of classes without a train image left out)' in text
    with Image.open(results / 'findings_styles_smoke.png') as image:
        assert image.format == 'PNG' and image.size[0] > image.size[1]
