"""engine.knn: the weighted kNN classifier against a hand computation."""
import math

import pytest
import torch

from engine import knn, runtime


def test_knn_predict_matches_hand_computation():
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [-1.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 2])
    query = torch.tensor([[2.0, 0.0]])                       # normalised to (1, 0)
    scores = knn.knn_predict(train, labels, query, n_classes=3, k=2, t=0.5)
    # similarities: 1, 0, 0.6, -1 -> top-2: train 0 (class 0, s=1) and train 2 (class 1, s=0.6)
    expected = torch.tensor([[math.exp(1 / 0.5), math.exp(0.6 / 0.5), 0.0]])
    # float32 cosine (normalising (0.6, 0.8): ~3 U), / t = 0.5 (exact), exp (~2 U) vs float64: <= ~8 U = 5e-7 relative;
    # the empty class is exactly 0
    torch.testing.assert_close(scores, expected, rtol=1e-6, atol=0)
    # with k=3 the third neighbour (class 1, s=0) adds exp(0) = 1 to class 1, which then wins
    scores3 = knn.knn_predict(train, labels, query, n_classes=3, k=3, t=0.5)
    assert scores3[0, 1].item() == pytest.approx(math.exp(1.2) + 1.0, rel=1e-6, abs=0)  # as above; exp(0) = 1 exactly
    assert scores3.argmax(1).item() == 0                      # exp(2) = 7.39 > exp(1.2) + 1 = 4.32


class Points(torch.utils.data.Dataset):
    """Eight labelled 3-d points, served as (x, target, index) like the image data sets."""
    classes = ['a', 'b']

    def __len__(self):
        return 8

    def __getitem__(self, i):
        return torch.full((3,), float(i)), i % 2, i


def test_a_stop_signal_interrupts_the_knn_pass_between_batches(capsys):
    """A signal during the epoch-end kNN pass: the run stops after its step and its save, not after the monitor's
    pass over the data (one process: under torchrun every process must reach the same collectives)."""
    import types

    from engine.signals import StopSignal
    rt = runtime.Runtime(device=torch.device('cpu'))
    seen = []

    def encode(x):
        seen.append(len(x))
        return x

    opt = types.SimpleNamespace(knn_freq=1, dataset='folder', epochs=3, batch_size=2, num_workers=0)
    evaluate = knn.knn_monitor(opt, rt, encode, [], lambda: (Points(), Points()))
    assert evaluate(1, {}).scalars['knn_top1'] >= 0 and seen == [2] * 8        # 4 batches of each split
    with StopSignal() as stop:
        stop.signum = 15                                    # SIGTERM came during the epoch's last step
        seen.clear()
        assert evaluate(2, {}) is None and seen == []
    assert 'kNN monitor: interrupted by the stop signal' in capsys.readouterr().out
