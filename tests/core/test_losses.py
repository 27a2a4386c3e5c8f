import math

import torch

from dhrclip.core.losses import dice_loss, focal_loss


def test_focal_loss_hand_computed():
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8]]).T.reshape(1, 2, 1, 2)  # pixel 0: p_n .9, pixel 1: p_n .2
    target = torch.tensor([[[0, 1]]])
    s = 1e-5
    pt0 = (1 - s) * 0.9 + s * 0.1 + s
    pt1 = s * 0.2 + (1 - s) * 0.8 + s
    expected = (-(1 - pt0) ** 2 * math.log(pt0) - (1 - pt1) ** 2 * math.log(pt1)) / 2
    assert math.isclose(focal_loss(probs, target).item(), expected, rel_tol=1e-6)


def test_dice_loss_hand_computed():
    pred = torch.tensor([[[0.5, 1.0], [0.0, 0.25]], [[0.0, 0.0], [0.0, 0.0]]])
    gt = torch.tensor([[[1, 1], [0, 0]], [[0, 0], [0, 0]]])
    first = 1 - (2 * 1.5 + 1) / (1.75 + 2 + 1)
    second = 1 - (0 + 1) / (0 + 0 + 1)
    assert math.isclose(dice_loss(pred, gt).item(), (first + second) / 2, rel_tol=1e-6)


def test_image_loss_uses_the_global_view_alone_by_hand():
    from dhrclip.core.losses import image_loss
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    glob = torch.tensor([[3.0, 4.0], [1.0, 0.0]])  # normalised: (0.6, 0.8) and (1, 0)
    labels = torch.tensor([1, 0])
    logits = torch.tensor([[0.6, 0.8], [1.0, 0.0]]) / 0.07
    want = -(torch.log_softmax(logits, 1)[0, 1] + torch.log_softmax(logits, 1)[1, 0]) / 2
    assert torch.allclose(image_loss(glob, text, labels), want, atol=1e-6)
