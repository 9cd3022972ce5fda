"""Contrastive Multiview Coding (Tian, Krishnan and Isola, 2019): pretrain two view encoders (L / ab of Lab, or
Y / CbCr of YCbCr) with a memory bank and the NCE or softmax contrastive loss (eq. 3-5 of the paper).

The seed README's recipes run as they are, e.g.

    # AlexNet on one GPU
    python train_CMC.py --batch_size 256 --num_workers 36 \
        --data_folder /path/to/imagenet --model_path /path/to/save --tb_path /path/to/tensorboard
    # ResNet-50 v1 as the seed README ran it (one process; it used DataParallel over 4 GPUs, we use one GPU)
    python train_CMC.py --model resnet50v1 --batch_size 128 --num_workers 24 \
        --data_folder /path/to/imagenet --model_path /path/to/save --tb_path /path/to/tensorboard
    # the same global batch on 4 GPUs with DDP: --batch_size is per process (4 x 32), so the run is named bsz_32
    torchrun --nproc_per_node 4 train_CMC.py --model resnet50v1 --batch_size 32 --num_workers 6 \
        --data_folder /path/to/imagenet --model_path /path/to/save --tb_path /path/to/tensorboard

On a laptop CPU, with the bundled demo data:

    python train_CMC.py --dataset demo --image_size 64 --model alexnet --batch_size 64 --nce_k 1024 \
        --epochs 5 --num_workers 0 --model_path runs/models --tb_path runs/tb
"""

import torch
import torch.nn.functional as F

import util
from dataset import DeviceView, GRAYSCALE_DATASETS, cmc_train_transform
from models import CMC_MODEL_NAMES, build_cmc_model
from NCE.NCEAverage import NCEAverage
from NCE.NCECriterion import contrast_criterion


def parse_option(argv=None):
    parser = util.ArgumentParser('argument for training')
    util.add_common_flags(parser)
    util.add_pretrain_flags(parser, model_default='alexnet', model_choices=CMC_MODEL_NAMES)
    parser.add_argument('--view', type=str, default='Lab', choices=['Lab', 'YCbCr'])
    parser.add_argument('--crop_low', type=float, default=0.2, help='low area in crop')
    opt = parser.parse_args(argv)
    util.check_pretrain(opt)
    if opt.dataset in GRAYSCALE_DATASETS:
        raise util.UserError(f'--dataset {opt.dataset} is grayscale: it has no {opt.view} colour views to split; '
                             f'use train_moco_ins.py, or a colour data set')
    if opt.dataset == 'imagenet' and opt.model != 'alexnet':
        opt.crop_low = 0.08
    opt.method = 'softmax' if opt.softmax else 'nce'
    opt.model_name = (f'memory_{opt.method}_{opt.nce_k}_{opt.model}_lr_{opt.learning_rate}_'
                      f'decay_{opt.weight_decay}_bsz_{opt.batch_size}')
    if opt.amp:
        opt.model_name += f'_amp_{opt.opt_level}'
    opt.model_name += f'_view_{opt.view}'
    return opt


def main(argv=None):
    opt = parse_option(argv)
    rt = util.setup_runtime(opt)
    run = util.RunFolder(f'{opt.model_path}/{opt.model_name}')

    train_set = util.build_split(opt, 'pretrain', cmc_train_transform(opt.image_size, opt.crop_low))
    n_data = len(train_set)
    util.check_sizes(opt, n_data)
    rt.print(f'number of samples: {n_data}')
    loader = util.make_loader(train_set, opt, rt, seed=opt.seed or 0)

    view = DeviceView(opt.view).to(rt.device)
    model = rt.place(build_cmc_model(opt.model, opt.feat_dim))
    contrast = NCEAverage(opt.feat_dim, n_data, opt.nce_k, opt.nce_t, opt.nce_m, opt.softmax,
                          z_momentum=opt.z_momentum).to(rt.device)
    rt.broadcast(contrast)                     # one memory bank: every process starts from rank 0's
    criterion_l, criterion_ab = contrast_criterion(opt.softmax, n_data), contrast_criterion(opt.softmax, n_data)
    trained = rt.wrap(model)
    optimizer = util.sgd(model, opt)

    def step(batch):
        images, _, index = batch
        x = view(images.to(rt.device, non_blocking=True))              # B x 3 x H x W, normalised L|ab
        index = index.to(rt.device, non_blocking=True)
        with rt.autocast():
            feat_l, feat_ab = trained(x)                              # B x feat_dim each
        # The contrast runs in float32: exp(s / T) overflows float16.
        out_l, out_ab = contrast(feat_l.float(), feat_ab.float(), index)   # B x (K+1) x 1 each
        l_loss, ab_loss = criterion_l(out_l).squeeze(), criterion_ab(out_ab).squeeze()
        return util.StepResult(loss=l_loss + ab_loss, batch_size=images.shape[0], metrics={
            'loss': l_loss + ab_loss, 'l_loss': l_loss, 'ab_loss': ab_loss,
            'l_prob': out_l[:, 0].mean(), 'ab_prob': out_ab[:, 0].mean()})

    def encode(images):                                               # for the kNN monitor
        feat_l, feat_ab = model(view(images))
        return torch.cat([F.normalize(feat_l, dim=1), F.normalize(feat_ab, dim=1)], dim=1)

    fit = util.Fit(
        opt=opt, rt=rt, run=run, modules={'model': model, 'contrast': contrast}, optimizer=optimizer,
        loader=loader, step_fn=step, train_modules=[model],
        fields=[('loss', 'loss'), ('l_prob', 'l_p'), ('ab_prob', 'ab_p'), ('l_loss', 'l_loss'),
                ('ab_loss', 'ab_loss')],
        tags=[('l_loss', 'l_loss'), ('l_prob', 'l_prob'), ('ab_loss', 'ab_loss'), ('ab_prob', 'ab_prob')],
        set_lr=lambda epoch, step, n: util.adjust_learning_rate(epoch, opt, optimizer),
        epoch_end=util.knn_monitor(opt, rt, encode, [model]), argv=util.command_line(__file__, argv))
    fit()


if __name__ == '__main__':
    util.run_main(main)
