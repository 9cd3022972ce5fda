"""Input-pipeline throughput per CPU core: the reference's per-image float64 path against ours, lever by lever.

Input: --images JPEG files (quality 90, --image-size, default 500 x 375, ImageNet-like) cut from scikit-image's bundled
photographs (random crops, resizes and flips of astronaut, coffee, chelsea, rocket, hubble_deep_field), written to a
temporary folder. Every pipeline reads the same files with a torch DataLoader (batches of --batch), one item per file:

  reference  per image in the worker: PIL decode, RandomResizedCrop(224, scale=(0.2, 1)), flip, scikit-image float64
             conversion (rgb2lab / rgb2ycbcr), ToTensor, Normalize (dataset.VIEW_STATS); MoCo/InsDis RGB: crop,
             RandomGrayscale, ColorJitter, flip, ToTensor, Normalize (ImageNet statistics).
  ours       as training runs it: workers read JPEG files into uint8 tensors (decode.read_rgb: torchvision's
             decode_jpeg) and deliver uint8 crops (dataset.cmc_train_transform; MoCo: PIL, moco_train_transform),
             the main process converts each batch with dataset.DeviceView (on the CPU here, so it is CPU time;
             there DeviceView runs views.kernels' uint8 kernels for Lab, YCbCr and RGB).
  levers     the generic view (DeviceView(space, cpu_kernel=False): the formula accelerators run, here on the CPU),
             draft decode (crops.DraftRandomResizedCrop on lazily opened JPEGs), views.kernels.FastView in the
             workers, persistent workers, prefetch_factor, pin_memory (only with an accelerator).

How "per core" is measured: CPU seconds, not wall seconds, so that other work on a shared machine does not count.
  cpu = process_time() of the main process (its conversion, collation hand-off, pin thread)
      + user + system time of the worker processes, read from getrusage(RUSAGE_CHILDREN) after the DataLoader has
        joined them (non-persistent workers are joined at the end of the epoch; persistent ones when the loader is
        deleted, which is inside the measured span).
  img/s per core = images / cpu;  img/s = images / wall (what the run delivered; it depends on the machine's load).
Every process runs one thread (torch, OpenMP and OpenBLAS limited to 1 before numpy loads), so a worker is one core.
Each figure is the best of --repeats runs. Conversion micro-benchmarks (224 x 224, one thread) use the best
process_time of many calls.

    .venv/bin/python bench/loader.py                # ~200 images, about 2-4 minutes on 2 cores
    .venv/bin/python bench/loader.py --smoke        # 8 tiny images, a few seconds: checks it runs (no claims)
"""
import os

for _variable in ('OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS'):
    os.environ.setdefault(_variable, '1')  # before numpy / torch load: per-core figures need one thread

import argparse  # noqa: E402
import datetime  # noqa: E402
import gc  # noqa: E402
import io  # noqa: E402
import multiprocessing  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import skimage.color  # noqa: E402
import skimage.data  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402
from torchvision import transforms  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from inputs import crops, decode  # noqa: E402
from views import kernels  # noqa: E402
import dataset  # noqa: E402

from jpeg_files import make_jpegs  # noqa: E402  (bench/, the script's own folder, is on sys.path)


def full_loader(path):
    """torchvision's default loader (as the reference's ImageFolder): decode now, as RGB."""
    with open(path, 'rb') as handle:
        return Image.open(handle).convert('RGB')


class Files(Dataset):
    """`items` items cycling over the files: transform(loader(path)), no labels (the loader pipeline is timed)."""

    def __init__(self, paths, loader, transform, items=None):
        self.paths, self.loader, self.transform = paths, loader, transform
        self.items = items or len(paths)

    def __len__(self):
        return self.items

    def __getitem__(self, index):
        return self.transform(self.loader(self.paths[index % len(self.paths)]))


# ---------------------------------------------------------------------------------------------------------------------
# Pipelines
# ---------------------------------------------------------------------------------------------------------------------

class Pipeline:
    """One way of producing a batch: loader + worker transform, then an optional main-process batch step."""

    def __init__(self, name, loader, transform, main_step=None, **loader_options):
        self.name, self.loader, self.transform = name, loader, transform
        self.main_step = main_step
        self.loader_options = loader_options


def reference_moco_transform(size):
    """The reference InsDis / MoCo CPU path ('CJ'): crop, grayscale, jitter, flip, ToTensor, Normalize (float32)."""
    mean, std = dataset.VIEW_STATS['RGB']
    return transforms.Compose([
        transforms.RandomResizedCrop(size, scale=(0.2, 1.0)), transforms.RandomGrayscale(p=0.2),
        transforms.ColorJitter(0.4, 0.4, 0.4, 0.4), transforms.RandomHorizontalFlip(),
        transforms.ToTensor(), transforms.Normalize(mean, std)])


def worker_fast_view(size, space):
    """Worker transform: draft crop, then FastView(space) per image (float32 leaves the worker)."""
    view = kernels.FastView(space)
    return transforms.Compose([crops.FastRandomResizedCrop(size, scale=(0.2, 1.0)), view])


def cmc_pipelines(space, size):
    """Reference, ours as training runs it (the default crop, DeviceView), and the levers one by one."""
    generic = dataset.DeviceView(space, cpu_kernel=False)  # the formula accelerators run, here on the CPU
    crop = dataset.cmc_train_transform(size)  # and the loader ImageFolderInstance picks for it (decode.read_rgb)
    return [
        Pipeline(f'{space} reference (skimage f64)', full_loader, dataset.reference_cmc_transform(size, 0.2, space)),
        Pipeline(f'{space} before: PIL crop + generic view', full_loader,
                 dataset.cmc_train_transform(size, fast=False), generic),
        Pipeline(f'{space} + torch resize, generic view', full_loader, dataset.cmc_train_transform(size), generic),
        Pipeline(f'{space} + draft decode (PIL resize)', decode.lazy_loader,
                 crops.DraftRandomResizedCrop(size), generic),
        Pipeline(f'{space} + PIL decode, DeviceView', full_loader, dataset.cmc_train_transform(size),
                 dataset.DeviceView(space)),
        Pipeline(f'{space} ours as trained: DeviceView', decode.image_loader(crop), crop,
                 dataset.DeviceView(space)),
        Pipeline(f'{space} ours + FastView (workers)', decode.lazy_loader, worker_fast_view(size, space)),
    ]


def moco_pipelines(size):
    """InsDis / MoCo RGB with colour jitter: reference, ours (DeviceView('RGB'): the uint8 kernel on the CPU)."""
    ours = dataset.moco_train_transform(size, 0.2, 'CJ')
    return [
        Pipeline('RGB+CJ reference (ToTensor f32)', full_loader, reference_moco_transform(size)),
        Pipeline('RGB+CJ ours: uint8 + DeviceView', full_loader, ours, dataset.DeviceView('RGB')),
    ]


def lever_pipelines(size):
    """Loader options on Lab as trained (read_rgb, fast crop, DeviceView's CPU kernel in main)."""
    crop, view = dataset.cmc_train_transform(size), dataset.DeviceView('Lab')
    read = decode.image_loader(crop)
    levers = [
        Pipeline('Lab lever: persistent workers', read, crop, view, persistent_workers=True),
        Pipeline('Lab lever: prefetch_factor 4', read, crop, view, prefetch_factor=4),
    ]
    if torch.cuda.is_available():
        levers.append(Pipeline('Lab lever: pin_memory', read, crop, view, pin_memory=True))
    return levers


# ---------------------------------------------------------------------------------------------------------------------
# Measurement
# ---------------------------------------------------------------------------------------------------------------------

def children_cpu():
    """User + system CPU seconds of all joined child processes so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def join_workers(timeout=30.0):
    """Wait until every worker process has exited and been reaped, so that RUSAGE_CHILDREN includes its CPU time."""
    start = time.monotonic()
    collected = False
    while multiprocessing.active_children():  # also reaps the ones that have exited
        waited = time.monotonic() - start
        if waited > 1.0 and not collected:  # an iterator kept alive by a reference cycle: collect it
            gc.collect()
            collected = True
        if waited > timeout:
            raise RuntimeError("DataLoader workers did not exit: their CPU time would be missing")
        time.sleep(0.002)


def run_epochs(pipeline, paths, workers, batch, epochs=1, items=None):
    """Run `epochs` passes of `items` items; returns (images, wall seconds, CPU seconds of all processes)."""
    data = Files(paths, pipeline.loader, pipeline.transform, items)
    options = dict(pipeline.loader_options)
    if workers == 0:
        options = {k: v for k, v in options.items() if k not in ('persistent_workers', 'prefetch_factor')}
    wall0, main0, child0 = time.perf_counter(), time.process_time(), children_cpu()
    loader = DataLoader(data, batch_size=batch, shuffle=True, num_workers=workers, **options)
    images, item = 0, None
    for _ in range(epochs):
        for item in loader:
            if pipeline.main_step is not None:
                item = pipeline.main_step(item)
            images += item.shape[0]
    del loader, item  # persistent workers are shut down here
    join_workers()
    wall = time.perf_counter() - wall0
    return images, wall, (time.process_time() - main0) + (children_cpu() - child0)


def measure(pipeline, paths, workers, batch, repeats, epochs=1, items=None):
    """Best (img/s wall, img/s per core) over `repeats` runs."""
    best_wall, best_core = 0.0, 0.0
    for _ in range(repeats):
        images, wall, cpu = run_epochs(pipeline, paths, workers, batch, epochs, items)
        best_wall, best_core = max(best_wall, images / wall), max(best_core, images / cpu)
    return best_wall, best_core


def cpu_time_per_call(fn, calls):
    """Best process_time of one call of fn over `calls` calls (seconds): per-core cost, immune to time slicing."""
    best = float('inf')
    for _ in range(calls):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return best


# ---------------------------------------------------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------------------------------------------------

def machine_line():
    """CPU model, cores, torch version, date."""
    model = platform.processor() or 'unknown CPU'
    try:
        with open('/proc/cpuinfo') as handle:
            model = next(line.split(':', 1)[1].strip() for line in handle if line.startswith('model name'))
    except (OSError, StopIteration):
        pass
    return (f"machine: {model}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"scikit-image {skimage.__version__}, date {datetime.date.today().isoformat()}")


def conversion_table(size, calls):
    """Per-image CPU ms and ratios of skimage / fast_* / DeviceView (generic, CPU kernel) on size x size crops;
    returns the ratios."""
    photo = np.array(Image.fromarray(skimage.data.astronaut()).resize((size, size), Image.BILINEAR))
    chw = torch.from_numpy(photo).permute(2, 0, 1).contiguous()
    batch = chw[None].expand(32, -1, -1, -1).contiguous()
    print(f"\nconversions, one {size} x {size} image, 1 thread (best CPU time of {calls} calls)")
    print(f"{'conversion':40s} {'ms/img':>8s} {'img/s':>8s} {'vs skimage':>10s}")
    ratios = {}
    for space, reference, fast in (('Lab', skimage.color.rgb2lab, kernels.fast_rgb_to_lab),
                                   ('YCbCr', skimage.color.rgb2ycbcr, kernels.fast_rgb_to_ycbcr)):
        base = cpu_time_per_call(lambda: reference(photo), calls)
        generic, kernel = dataset.DeviceView(space, cpu_kernel=False), dataset.DeviceView(space)
        rows = [(f'skimage {reference.__name__} (f64)', base),
                (f'kernels.{fast.__name__}', cpu_time_per_call(lambda: fast(chw), calls)),
                (f'generic DeviceView({space!r}) (batch 32)',
                 cpu_time_per_call(lambda: generic(batch), max(3, calls // 8)) / 32),
                (f'DeviceView({space!r}) CPU kernel (batch 32)',
                 cpu_time_per_call(lambda: kernel(batch), max(3, calls // 8)) / 32)]
        for name, seconds in rows:
            print(f"{name:40s} {seconds * 1e3:8.3f} {1 / seconds:8.0f} {base / seconds:9.1f}x")
        ratios[space] = base / rows[1][1]
    return ratios


def stage_table(paths, size, calls):
    """Per-image CPU ms of each stage of one item (decode, crop, convert), to explain the pipeline figures."""
    data = [open(path, 'rb').read() for path in paths[:8]]
    crop, pil_crop = dataset.cmc_train_transform(size), dataset.cmc_train_transform(size, fast=False)

    def decode_tensor(data):  # what decode.read_rgb does with a JPEG file's bytes
        return decode.decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    torch.manual_seed(0)
    stages = [
        ('decode full (PIL)', lambda d: Image.open(io.BytesIO(d)).convert('RGB')),
        ('decode full (torchvision decode_jpeg)', decode_tensor),
        ('decode + RRC + flip + PILToTensor', lambda d: pil_crop(Image.open(io.BytesIO(d)).convert('RGB'))),
        ('draft decode + RRC + flip (PIL resize)', lambda d: crops.DraftRandomResizedCrop(size)(Image.open(
            io.BytesIO(d)))),
        ('decode + RRC + flip (PIL, torch resize)', lambda d: crop(Image.open(io.BytesIO(d)).convert('RGB'))),
        ('decode + RRC + flip (ours: decode_jpeg)', lambda d: crop(decode_tensor(d))),
        ('reference Lab item (all steps)', lambda d: dataset.reference_cmc_transform(size, 0.2, 'Lab')(
            Image.open(io.BytesIO(d)).convert('RGB'))),
    ]
    print(f"\nstages of one item, 1 thread (best CPU time of {calls} calls, mean over {len(data)} files)")
    for name, fn in stages:
        seconds = np.mean([cpu_time_per_call(lambda: fn(d), calls) for d in data])
        print(f"{name:40s} {seconds * 1e3:8.3f} ms")


def pipeline_table(groups, paths, args, header, workers_list=None):
    """Measure every pipeline at each worker count; print rows; return {(name, workers): per-core ratio to the
    reference measured just before it, in the same group} (ratios, so that tables run at different times of a
    shared machine's load are never divided by one another)."""
    print(f"\n{header}")
    print(f"{'pipeline':40s} {'workers':>7s} {'img/s':>8s} {'img/s/core':>10s} {'vs ref/core':>11s}")
    results = {}
    for group in groups:
        for workers in workers_list or args.workers:
            reference_core = None
            for pipeline in group:
                wall, core = measure(pipeline, paths, workers, args.batch, args.repeats, args.epochs, args.items)
                reference_core = reference_core or core
                results[(pipeline.name, workers)] = core / reference_core
                print(f"{pipeline.name:40s} {workers:7d} {wall:8.1f} {core:10.1f} {core / reference_core:10.2f}x",
                      flush=True)
    return results


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--images', type=int, default=200, help='JPEG files to generate')
    parser.add_argument('--items', type=int, default=600,
                        help='items per epoch, cycling over the files (amortises worker start-up as an epoch would)')
    parser.add_argument('--image-size', type=int, nargs=2, default=(500, 375), metavar=('W', 'H'))
    parser.add_argument('--large-size', type=int, nargs=2, default=(1000, 750), metavar=('W', 'H'),
                        help='also time the draft lever on files this big (0 0 to skip)')
    parser.add_argument('--crop', type=int, default=224, help='output crop size')
    parser.add_argument('--batch', type=int, default=32)
    parser.add_argument('--workers', type=int, nargs='+', default=[1, 2])
    parser.add_argument('--repeats', type=int, default=2, help='runs per figure (best kept)')
    parser.add_argument('--epochs', type=int, default=1, help='passes over the files per run')
    parser.add_argument('--calls', type=int, default=40, help='calls per conversion micro-benchmark')
    parser.add_argument('--smoke', action='store_true', help='8 tiny images, 1 repeat: checks that it runs')
    args = parser.parse_args(argv)
    if args.smoke:
        args.images, args.items, args.image_size, args.large_size, args.crop = 8, 8, (96, 72), (0, 0), 32
        args.batch, args.repeats, args.calls, args.workers = 4, 1, 2, [0]  # levers still run 1 worker
    return args


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(1)
    print(machine_line())
    print(f"{args.images} JPEGs q90 of {args.image_size[0]}x{args.image_size[1]} ({args.items} items/epoch), "
          f"crop {args.crop}, batch {args.batch},"
          f" best of {args.repeats}" + ("  [SMOKE: no timing claims]" if args.smoke else ''))
    with tempfile.TemporaryDirectory(prefix='bench_loader_') as folder:
        paths = make_jpegs(folder, args.images, tuple(args.image_size))
        ratios = conversion_table(args.crop, args.calls)
        stage_table(paths, args.crop, args.calls)
        groups = [cmc_pipelines('Lab', args.crop), cmc_pipelines('YCbCr', args.crop), moco_pipelines(args.crop)]
        results = pipeline_table(groups, paths, args, 'pipelines (per core = images / CPU seconds of all processes)')
        levers = [[cmc_pipelines('Lab', args.crop)[0]] + lever_pipelines(args.crop)]
        results.update(pipeline_table(levers, paths, args, 'loader levers on Lab ours (DeviceView, CPU kernel)',
                                      [max(1, w) for w in args.workers]))
        if args.large_size[0] > 0:
            large = make_jpegs(tempfile.mkdtemp(dir=folder), max(8, args.images // 2), tuple(args.large_size))
            pipeline_table([cmc_pipelines('Lab', args.crop)[:4]], large, args,
                           f'draft lever on {args.large_size[0]}x{args.large_size[1]} files')
        summarise(results, ratios, args)


def summarise(results, ratios, args):
    """One line: per-core ratios to the reference of two fixed Lab pipelines from the main table (never a maximum
    over rows, which would pick loader-option noise), each the mean over the worker counts run, with the range."""
    def mean_over_workers(name):
        values = [results[(name, workers)] for workers in args.workers if (name, workers) in results]
        return sum(values) / len(values), min(values), max(values)
    trained, trained_low, trained_high = mean_over_workers('Lab ours as trained: DeviceView')
    lab, lab_low, lab_high = mean_over_workers('Lab ours + FastView (workers)')
    print(f"\nSUMMARY: Lab@{args.crop} per core vs the reference, mean over {args.workers} workers: as trained "
          f"(uint8 crops, DeviceView in the main process, counted) {trained:.2f}x ({trained_low:.2f}-"
          f"{trained_high:.2f}; target >= 3x: {'met' if trained >= 3 else 'NOT met'}); colour in the workers "
          f"{lab:.2f}x ({lab_low:.2f}-{lab_high:.2f}); "
          f"conversions: Lab {ratios['Lab']:.1f}x "
          f"(target 2.5x: {'met' if ratios['Lab'] >= 2.5 else 'NOT met'}), YCbCr {ratios['YCbCr']:.1f}x "
          f"(target 3x: {'met' if ratios['YCbCr'] >= 3 else 'NOT met'})" + ("  [SMOKE]" if args.smoke else ''))


if __name__ == '__main__':
    main()
