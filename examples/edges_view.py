"""A view of your own, in one file: the Sobel gradient magnitude of an image's luminance, as a one-channel view.

    python train_CMC.py --view_module examples/edges_view.py --views L ab edges --dataset demo --image_size 64 \
        --model resnet18v1 --batch_size 64 --nce_k 1024 --epochs 5 --num_workers 0 --model_path runs/models \
        --tb_path runs/tb
    python LinearProbing.py --dataset demo --image_size 64 --model resnet18v1 --layer 6 --probe_views edges \
        --model_path runs/models/<run>/current.pth --save_path runs/probe --tb_path runs/tb --cache_features --bn \
        --num_workers 0

A view is a function of the uint8 RGB batch on the device (B x 3 x H x W) that returns the view's float tensor
(B x C x H x W), normalised; ``register_view(name, channels, fn)`` makes it a view that ``--views`` can name (README,
"Add a view"). The checkpoint remembers this file, so the probes and ``--resume`` find it again.
"""
import torch
import torch.nn.functional as F

from views import register_view

# scikit-image's rgb2gray weights (ITU-R BT.709 luma), and its Sobel filter: the derivative [1, 0, -1] along one axis
# smoothed by [1, 2, 1] / 4 along the other, the magnitude sqrt((g_rows^2 + g_cols^2) / 2) (skimage.filters.sobel).
GREY_WEIGHTS = (0.2125, 0.7154, 0.0721)
SMOOTH = torch.tensor([1.0, 2.0, 1.0]) / 4
DERIVATIVE = torch.tensor([1.0, 0.0, -1.0])


def sobel_edges(rgb):
    """uint8 B x 3 x H x W -> float32 B x 1 x H x W: the Sobel gradient magnitude of the luminance in [0, 1] (equal to
    ``skimage.filters.sobel(skimage.color.rgb2gray(image))``, whose edge pixels replicate the border), mapped from
    [0, 1] onto [-1, 1] as a view read from files is."""
    r, g, b = rgb.float().div(255).unbind(1)
    grey = (GREY_WEIGHTS[0] * r + GREY_WEIGHTS[1] * g + GREY_WEIGHTS[2] * b).unsqueeze(1)     # B x 1 x H x W
    padded = F.pad(grey, (1, 1, 1, 1), mode='replicate')                                    # B x 1 x H+2 x W+2
    kernels = torch.stack([torch.outer(DERIVATIVE, SMOOTH), torch.outer(SMOOTH, DERIVATIVE)])  # 2 x 3 x 3
    gradients = F.conv2d(padded, kernels.unsqueeze(1).to(rgb.device))                      # B x 2 x H x W
    magnitude = gradients.pow(2).mean(1, keepdim=True).sqrt()                               # B x 1 x H x W, [0, 1]
    return magnitude.sub(0.5).div(0.5)


register_view('edges', 1, sobel_edges)
