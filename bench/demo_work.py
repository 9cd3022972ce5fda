"""The demo's work, today's recipe against the one before it: CPU time and wall time of ``scripts/run_demo.py`` in
float32 (``--amp off``, as a CPU without bfloat16 runs it), on this machine, one after the other: each commit's demo
from a detached worktree of it (``--new`` left out: the working tree as it is, uncommitted changes included).

    python bench/demo_work.py --old dd23bd6                 # ~45 minutes on 2 cores: the old recipe is most of it
    python bench/demo_work.py --old dd23bd6 --only old      # one half; its figures are kept in --record and the
    python bench/demo_work.py --old dd23bd6 --only new      #   second call prints both, with the ratio

CPU time is the user + system time of the demo and every process it starts (``resource.getrusage``, children): the
work, whatever the number of cores. Wall time depends on the lanes and on what else the machine does. Machines
differ by 3x or more, so only the ratio carries from one to another.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_demo_at(ref, seed, keep):
    """(cpu seconds, wall seconds, the demo's table) of ``run_demo.py --amp off`` at git ``ref`` ('' for the working
    tree), run in a detached worktree under ``keep`` (results stay there)."""
    folder = os.path.join(keep, ref or 'worktree')
    if ref:
        subprocess.run(['git', 'worktree', 'add', '--detach', '--force', folder, ref], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL)
    else:
        folder = ROOT
    out = os.path.join(keep, f'demo_{ref or "worktree"}')
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    subprocess.run([sys.executable, 'scripts/run_demo.py', '--amp', 'off', '--seed', str(seed), '--out', out],
                   cwd=folder, check=True)
    wall = time.time() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if ref:
        subprocess.run(['git', 'worktree', 'remove', '--force', folder], cwd=ROOT, check=False)
    return cpu, wall, open(out + '.md').read()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--old', required=True, help='the commit with the previous recipe')
    p.add_argument('--new', default='', help='the commit with the new recipe (default: the working tree)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--only', choices=['old', 'new'], default=None)
    p.add_argument('--keep', default=os.path.join(ROOT, 'runs', 'bench_demo_work'))
    p.add_argument('--record', default=None, help='JSON of each half\'s figures (default: <keep>/record.json)')
    args = p.parse_args(argv)
    os.makedirs(args.keep, exist_ok=True)
    record_path = args.record or os.path.join(args.keep, 'record.json')
    record = json.load(open(record_path)) if os.path.exists(record_path) else {}
    for half, ref in (('old', args.old), ('new', args.new)):
        if args.only in (None, half):
            cpu, wall, table = run_demo_at(ref, args.seed, args.keep)
            record[half] = {'ref': ref or 'working tree', 'cpu_s': cpu, 'wall_s': wall, 'table': table,
                            'date': time.strftime('%Y-%m-%d %H:%M'), 'cpus': os.cpu_count()}
            with open(record_path, 'w') as f:
                json.dump(record, f, indent=1)
    for half in ('old', 'new'):
        if half in record:
            r = record[half]
            print(f'{half} recipe ({r["ref"]}, {r["date"]}, {r["cpus"]} CPUs): float32 CPU time {r["cpu_s"] / 60:.1f} '
                  f'min, wall {r["wall_s"] / 60:.1f} min')
    if 'old' in record and 'new' in record:
        old, new = record['old'], record['new']
        print(f'ratio new / old: CPU time {new["cpu_s"] / old["cpu_s"]:.3f}, wall {new["wall_s"] / old["wall_s"]:.3f}')


if __name__ == '__main__':
    main()
