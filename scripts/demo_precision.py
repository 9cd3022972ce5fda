"""The demo's choice of precision (``scripts/run_demo.py``): bfloat16 autocast where a few timed SGD steps of its CMC
encoder show it faster than float32 on this CPU, instead of trusting CPU flags."""
import time


def time_steps(amp_dtype, steps, threads, model_name, image_size, batch=64, give_up=float('inf')):
    """Best CPU seconds (process time: other work on a shared machine does not count) of one SGD step of the CMC
    encoder ``model_name`` at ``image_size`` px, channels-last, as the demo trains it, over ``steps`` steps after one
    warm-up step, with ``threads`` CPU threads; stops early once a step after the warm-up costs more than give_up."""
    import torch
    from engine import runtime
    from models import build_cmc_model
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        rt = runtime.Runtime(device=torch.device('cpu'), amp_dtype=amp_dtype)
        model = rt.place(build_cmc_model(model_name))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        x = torch.randn(batch, 3, image_size, image_size).contiguous(memory_format=torch.channels_last)
        best = float('inf')
        for step in range(steps + 1):
            t0 = time.process_time()
            with rt.autocast():
                feat_l, feat_ab = model(x)
            (feat_l.float().sum() + feat_ab.float().sum()).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            seconds = time.process_time() - t0
            if step == 0:             # warms up: allocations, oneDNN's kernel choice (seconds for bfloat16)
                continue
            best = min(best, seconds)
            if seconds > give_up:     # clearly the slower one (emulated bfloat16 is several times float32)
                break
        return best
    finally:
        torch.set_num_threads(before)


def choose_precision(choice, threads, model_name, image_size, steps=3, batch=16):
    """(pretraining flags, why): with 'auto', time ``steps`` SGD steps of float32 and of bfloat16 autocast on this
    CPU and take the faster (bfloat16 only when >= 5% faster: it also rounds), instead of trusting CPU flags. batch
    16, a quarter of the demo's: the ratio, not the time, decides."""
    if choice != 'auto':
        return (['--amp'] if choice == 'on' else []), f'--amp {choice}'
    import torch
    f32 = time_steps(None, steps, threads, model_name, image_size, batch)
    bf16 = time_steps(torch.bfloat16, steps, threads, model_name, image_size, batch, give_up=3 * f32)
    faster = bf16 < 0.95 * f32
    return (['--amp'] if faster else []), (f'an SGD step of batch {batch} cost {f32 * 1e3:.0f} ms of CPU in float32, '
                                           f'{bf16 * 1e3:.0f} ms in bfloat16 autocast ({threads} thread(s), best of '
                                           f'{steps}), so {"bfloat16" if faster else "float32"} is faster here')
