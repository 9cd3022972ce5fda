"""Flags that decide the GPUs, checked on the CPU (pure functions of what a process sees): torchrun never gets
DataParallel, --gpu is refused under torchrun, and ShuffleBN's splits must divide each DataParallel GPU's chunk."""
import pytest

from engine import runtime
from engine.errors import UserError
from engine.runtime import choose_parallel
from train_moco_ins import check_data_parallel_splits


def test_torchrun_with_one_process_and_several_gpus_is_not_dataparallel():
    assert choose_parallel(4, 1) == 'dataparallel'                       # python train_*.py, 4 GPUs visible
    assert choose_parallel(4, 1, torchrun=True) == 'single'              # torchrun --nproc_per_node 1
    assert choose_parallel(4, 2, torchrun=True) == 'ddp'


def test_gpu_flag_under_torchrun_is_one_error():
    runtime._check_gpu_flag(None, True, True)                            # no --gpu: nothing to say
    with pytest.raises(UserError, match=r'^--gpu 1 with torchrun: each process uses the GPU of its LOCAL_RANK'):
        runtime._check_gpu_flag(1, True, True)
    runtime._check_gpu_flag(0, False, False)                             # the CPU: --device's business


@pytest.mark.parametrize('batch_size, gpus, splits, ok', [
    (48, 4, 8, False),     # the reviewer's case: 12 images per GPU, 8 splits
    (64, 4, 8, True),      # 16 per GPU, 2 per split
    (48, 4, 4, True),      # 12 per GPU, 3 per split
    (50, 4, 2, False),     # DataParallel's chunks 13, 13, 12, 12
    (48, 1, 8, True),      # no DataParallel: parse_option checked 48 % 8 already
    (48, 4, 1, True),      # no split BatchNorm
])
def test_shuffle_bn_splits_must_divide_each_gpus_chunk(batch_size, gpus, splits, ok):
    if ok:
        check_data_parallel_splits(batch_size, gpus, splits)
    else:
        with pytest.raises(UserError, match=f'choose a --batch_size divisible by {gpus * splits}'):
            check_data_parallel_splits(batch_size, gpus, splits)
