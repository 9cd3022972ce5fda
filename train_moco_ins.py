"""Instance Discrimination (Wu et al., 2018: a memory bank of one feature per image, eq. 2-4) or, with --moco, Momentum
Contrast (He et al., 2019: a queue of keys from a momentum-updated key encoder, eq. 1-2), on one RGB ResNet-50.

The seed README's recipes run as they are, e.g.

    # InsDis
    python train_moco_ins.py --batch_size 128 --num_workers 24 --nce_k 16384 --softmax \
        --data_folder /path/to/imagenet100 --model_path /path/to/save --tb_path /path/to/tensorboard
    # MoCo
    python train_moco_ins.py --batch_size 128 --num_workers 24 --nce_k 16384 --softmax --moco \
        --data_folder /path/to/imagenet100 --model_path /path/to/save --tb_path /path/to/tensorboard

On a laptop CPU, with the bundled demo data (resnet18 is this project's small addition):

    python train_moco_ins.py --dataset demo --image_size 64 --model resnet18 --batch_size 64 --nce_k 1024 \
        --softmax --moco --epochs 5 --num_workers 0 --model_path runs/models --tb_path runs/tb
"""
import copy

import torch
import torch.distributed as dist

import util
from dataset import DeviceView, moco_train_transform
from models import INS_MODEL_NAMES, build_ins_model
from NCE.NCEAverage import MemoryInsDis, MemoryMoCo, gather_from_all_processes
from NCE.NCECriterion import contrast_criterion


def parse_option(argv=None):
    parser = util.ArgumentParser('argument for training')
    util.add_common_flags(parser, dataset='imagenet100')
    util.add_pretrain_flags(parser, model_default='resnet50', model_choices=INS_MODEL_NAMES)
    parser.add_argument('--crop', type=float, default=0.2, help='minimum crop')
    parser.add_argument('--aug', type=str, default='CJ', choices=['NULL', 'CJ'])
    parser.add_argument('--warm', action='store_true', help='linear learning-rate warm-up over --warm_epochs')
    parser.add_argument('--warm_epochs', type=int, default=5, help='length of the --warm warm-up')
    parser.add_argument('--moco', action='store_true', help='using MoCo (otherwise Instance Discrimination)')
    parser.add_argument('--alpha', type=float, default=0.999, help='exponential moving average weight')
    parser.add_argument('--gpu', default=None, type=int, help='GPU id to use (implies --device cuda)')
    opt = parser.parse_args(argv)
    util.check_pretrain(opt)
    if not 0 <= opt.alpha <= 1:
        raise util.UserError(f'--alpha must be in [0, 1], got {opt.alpha}')
    if opt.dataset == 'imagenet' and 'alexnet' not in opt.model:
        opt.crop = 0.08
    opt.method = 'softmax' if opt.softmax else 'nce'
    prefix = f'MoCo{opt.alpha}' if opt.moco else 'InsDis'
    opt.model_name = (f'{prefix}_{opt.method}_{opt.nce_k}_{opt.model}_lr_{opt.learning_rate}_'
                      f'decay_{opt.weight_decay}_bsz_{opt.batch_size}_crop_{opt.crop}')
    if opt.warm:
        opt.model_name += '_warm'
    if opt.amp:
        opt.model_name += f'_amp_{opt.opt_level}'
    opt.model_name += f'_aug_{opt.aug}'
    return opt


@torch.no_grad()
def moment_update(model, model_ema, alpha):
    """model_ema = alpha * model_ema + (1 - alpha) * model, over the parameters (MoCo eq. 2)."""
    for p, p_ema in zip(model.parameters(), model_ema.parameters()):
        p_ema.mul_(alpha).add_(p.detach(), alpha=1 - alpha)


@torch.no_grad()
def shuffle_bn_keys(key_encoder, x_k, rt):
    """ShuffleBN (MoCo, He et al. 2019, Sec. 3.3): the keys are computed on a batch shuffled across all processes,
    so the BatchNorm statistics a key sees are not those of its own query's batch (which would let the model cheat);
    the keys come back in x_k's order. In one process the shuffle changes nothing BatchNorm can see (as with the
    reference on one GPU), but it is kept so that a run draws the same random numbers either way.
    """
    if not rt.distributed:
        shuffle = torch.randperm(x_k.shape[0], device=x_k.device)
        return key_encoder(x_k[shuffle])[torch.argsort(shuffle)]
    batch, lo = x_k.shape[0], rt.rank * x_k.shape[0]
    x_all = gather_from_all_processes(x_k)                       # (world x B) x 3 x H x W
    shuffle = torch.randperm(x_all.shape[0], device=x_k.device)
    dist.broadcast(shuffle, src=0)                               # one permutation for all processes
    feat_all = gather_from_all_processes(key_encoder(x_all[shuffle[lo:lo + batch]]))   # shuffled order
    return feat_all[torch.argsort(shuffle)][lo:lo + batch]


def main(argv=None):
    opt = parse_option(argv)
    rt = util.setup_runtime(opt)
    run = util.RunFolder(f'{opt.model_path}/{opt.model_name}')

    train_set = util.build_split(opt, 'pretrain', moco_train_transform(opt.image_size, opt.crop, opt.aug),
                                 two_crop=opt.moco)
    n_data = len(train_set)
    util.check_sizes(opt, n_data)
    rt.print(f'number of samples: {n_data}')
    loader = util.make_loader(train_set, opt, rt, seed=opt.seed or 0)

    view = DeviceView('RGB').to(rt.device)
    model = rt.place(build_ins_model(opt.model, opt.feat_dim))
    modules = {'model': model}
    if opt.moco:
        model_ema = copy.deepcopy(model)          # the key encoder starts as the query encoder
        for p in model_ema.parameters():
            p.requires_grad_(False)
        modules['model_ema'] = model_ema
        contrast = MemoryMoCo(opt.feat_dim, n_data, opt.nce_k, opt.nce_t, opt.softmax,
                              z_momentum=opt.z_momentum).to(rt.device)
    else:
        contrast = MemoryInsDis(opt.feat_dim, n_data, opt.nce_k, opt.nce_t, opt.nce_m, opt.softmax,
                                z_momentum=opt.z_momentum).to(rt.device)
    modules['contrast'] = contrast
    for module in modules.values():            # DDP syncs `model`; the rest starts from rank 0's copy too
        rt.broadcast(module)
    criterion = contrast_criterion(opt.softmax, n_data)
    trained = rt.wrap(model)
    optimizer = util.sgd(model, opt)

    def step(batch):
        images, _, index = batch
        x = view(images.to(rt.device, non_blocking=True))        # B x 3 (x2 for MoCo) x H x W
        if opt.moco:
            x_q, x_k = x[:, :3], x[:, 3:]
            with rt.autocast():
                feat_q = trained(x_q)                             # B x D
                feat_k = shuffle_bn_keys(model_ema, x_k, rt)      # B x D, in x_k's order
            out = contrast(feat_q.float(), feat_k.float())        # B x (K+1)
        else:
            with rt.autocast():
                feat = trained(x)
            out = contrast(feat.float(), index.to(rt.device, non_blocking=True))   # B x (K+1)
        loss = criterion(out).squeeze()
        return util.StepResult(loss=loss, batch_size=images.shape[0],
                               metrics={'loss': loss, 'prob': out[:, 0].mean()})

    def set_lr(epoch, step_in_epoch, n_batches):
        lr = util.adjust_learning_rate(epoch, opt, optimizer)
        if opt.warm:
            lr *= util.warmup_factor(epoch, step_in_epoch, n_batches, opt.warm_epochs)
            for group in optimizer.param_groups:
                group['lr'] = lr

    fit = util.Fit(
        opt=opt, rt=rt, run=run, modules=modules, optimizer=optimizer, loader=loader, step_fn=step,
        # the key encoder always runs with BatchNorm in train mode, as in the reference
        train_modules=[model] + ([model_ema] if opt.moco else []),
        fields=[('loss', 'loss'), ('prob', 'prob')],
        tags=[('loss', 'ins_loss'), ('prob', 'ins_prob'), ('learning_rate', 'learning_rate')],
        set_lr=set_lr, after_step=(lambda: moment_update(model, model_ema, opt.alpha)) if opt.moco else None,
        epoch_end=util.knn_monitor(opt, rt, lambda images: model(view(images)), [model]),
        argv=util.command_line(__file__, argv))
    fit()


if __name__ == '__main__':
    util.run_main(main)
