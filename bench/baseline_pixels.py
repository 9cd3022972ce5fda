"""Reference baselines on the bundled demo set data/emoji64.npz: what a learned representation has to beat.

Prints val top-1 / top-5 of
  * the majority class (always predict the largest training class; top-5: the five largest training classes), and
  * multinomial logistic regression on raw pixels: images area-downscaled to --size x --size, every feature
    standardised with the training mean / std, then softmax regression with an L2 penalty
    (weight_decay / 2 * ||W||^2, bias unpenalised), fitted full batch with L-BFGS (strong Wolfe line search).
CPU, deterministic (seeded), well under a minute.

    python bench/baseline_pixels.py
    python bench/baseline_pixels.py --size 32 --weight_decay 1e-2
"""
import argparse
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def topk_accuracy(scores, labels, k):
    """Fraction of rows whose label is among the k highest scores (scores: N x C, labels: N)."""
    topk = scores.topk(k, dim=1).indices  # N x k
    return (topk == labels[:, None]).any(dim=1).float().mean().item()


def pixel_features(images, size):
    """N x 64 x 64 x 3 uint8 -> N x (3 * size * size) float32 in [0, 1], area-averaged down to size x size."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0  # N x 3 x 64 x 64
    x = F.interpolate(x, size=(size, size), mode="area")  # N x 3 x size x size
    return x.flatten(1)  # N x 3*size*size


class PixelLogisticRegression(torch.nn.Module):
    """Multinomial logistic regression (one linear layer + softmax cross-entropy) on standardised features.

    The standardisation statistics are buffers, so state_dict() holds the whole fitted model.
    """

    def __init__(self, num_features, num_classes):
        super().__init__()
        self.register_buffer("feature_mean", torch.zeros(num_features))
        self.register_buffer("feature_std", torch.ones(num_features))
        self.linear = torch.nn.Linear(num_features, num_classes)
        torch.nn.init.zeros_(self.linear.weight)  # convex problem: start at the origin, no seed dependence
        torch.nn.init.zeros_(self.linear.bias)

    def set_standardisation(self, train_features):
        """Per-feature mean / std of the training features (std floored: constant pixels, e.g. white corners)."""
        self.feature_mean.copy_(train_features.mean(dim=0))
        self.feature_std.copy_(train_features.std(dim=0).clamp_min(1e-3))

    def forward(self, features):
        return self.linear((features - self.feature_mean) / self.feature_std)  # N x C


def fit_lbfgs(model, features, labels, weight_decay, steps):
    """Minimise mean cross-entropy + weight_decay / 2 * ||W||^2 with full-batch L-BFGS; returns the final loss."""
    optimizer = torch.optim.LBFGS(model.linear.parameters(), lr=1.0, max_iter=steps, history_size=20,
                                  tolerance_grad=1e-6, tolerance_change=1e-9, line_search_fn="strong_wolfe")

    def objective():
        return F.cross_entropy(model(features), labels) + 0.5 * weight_decay * model.linear.weight.pow(2).sum()

    def closure():
        optimizer.zero_grad()
        loss = objective()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return objective().item()


def main(argv=None):
    parser = argparse.ArgumentParser(description="majority-class and raw-pixel logistic-regression baselines")
    parser.add_argument("--data", default=os.path.join(REPO_ROOT, "data", "emoji64.npz"))
    parser.add_argument("--size", type=int, default=16, help="downscaled side length (64 keeps full resolution)")
    parser.add_argument("--weight_decay", type=float, default=1e-2)
    parser.add_argument("--steps", type=int, default=300, help="L-BFGS iterations")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="8 x 8 pixels, 3 iterations: checks that it runs")
    args = parser.parse_args(argv)
    if args.smoke:
        args.size, args.steps = 8, 3

    torch.manual_seed(args.seed)
    with np.load(args.data, allow_pickle=False) as demo:
        classes = demo["classes"].tolist()
        train_x, val_x = pixel_features(demo["train_images"], args.size), pixel_features(demo["val_images"], args.size)
        train_y, val_y = torch.from_numpy(demo["train_labels"]), torch.from_numpy(demo["val_labels"])
    num_classes = len(classes)
    print(f"{args.data}: {len(train_y)} train / {len(val_y)} val, {num_classes} classes")

    # Majority class: scores are the training class frequencies, the same for every image.
    train_counts = torch.bincount(train_y, minlength=num_classes).float()  # C
    prior_scores = train_counts.expand(len(val_y), num_classes)  # N_val x C
    print(f"majority class ({classes[int(train_counts.argmax())]}): "
          f"val top-1 {topk_accuracy(prior_scores, val_y, 1):.4f}  top-5 {topk_accuracy(prior_scores, val_y, 5):.4f}")

    start = time.time()
    model = PixelLogisticRegression(train_x.shape[1], num_classes)
    model.set_standardisation(train_x)
    loss = fit_lbfgs(model, train_x, train_y, args.weight_decay, args.steps)
    with torch.no_grad():
        train_scores, val_scores = model(train_x), model(val_x)
    print(f"logistic regression on {args.size}x{args.size} pixels (wd {args.weight_decay:g}, {args.steps} L-BFGS "
          f"iters, final loss {loss:.4f}, {time.time() - start:.1f}s): "
          f"train top-1 {topk_accuracy(train_scores, train_y, 1):.4f}  "
          f"val top-1 {topk_accuracy(val_scores, val_y, 1):.4f}  top-5 {topk_accuracy(val_scores, val_y, 5):.4f}")


if __name__ == "__main__":
    main()
