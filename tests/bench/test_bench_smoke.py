"""Every benchmark in bench/ runs in its --smoke mode (tiny sizes, no timing asserted): they keep working as the code
they measure changes. Each is a subprocess, as a user runs it; a few seconds each on an idle 2-core machine."""
import os
import subprocess
import sys

import pytest
from conftest import ROOT

ENV = {**os.environ, 'OMP_NUM_THREADS': '1'}

# script -> lines its smoke output must contain (the rows a reader looks for)
BENCHES = {
    'loader.py': ('machine:', 'skimage rgb2lab', 'Lab reference (skimage f64)', 'Lab ours as trained: DeviceView',
                  'Lab + torch resize, generic view', 'YCbCr reference', 'RGB+CJ reference',
                  'Lab lever: persistent workers', 'SUMMARY: Lab@'),
    'end_to_end.py': ('reference (--color_on_cpu, float32)', 'ours (float32)', 'SUMMARY: alexnet end to end'),
    'bench_colour.py': ('reference (skimage f64)', 'DeviceView cpu'),
    'bench_sampler.py': ('build: our uniform sampler', 'our uniform sampler'),
    'bench_finite.py': ('reference path: save to /dev/null', 'the finite check alone', 'SUMMARY: the finite check'),
    'bench_step.py': ('scores + backward, tiny bank', 'resnet18v1 SGD step'),
    'baseline_pixels.py': ('majority class', 'logistic regression on 8x8 pixels'),
    'baseline_supervised.py': ('supervised ResNet-18', 'val top-1'),
}


@pytest.mark.parametrize('script', sorted(BENCHES))
def test_bench_smoke(script):
    result = subprocess.run([sys.executable, os.path.join('bench', script), '--smoke'], cwd=ROOT, env=ENV,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    for row in BENCHES[script]:
        assert row in result.stdout, f'{script} --smoke printed no {row!r}:\n{result.stdout[-2000:]}'
