import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from dhrclip.core.grid import TileGrid
from dhrclip.core.maps import combine_views, gaussian_blur, image_logits, image_scores, minmax_normalize


@pytest.mark.parametrize("sigma,size", [(8, (64, 48)), (4, (112, 112)), (2.5, (9, 20)), (8, (10, 10))])
def test_gaussian_blur_equals_scipy(sigma, size):
    maps = torch.rand(2, *size, dtype=torch.float64)
    want = np.stack([gaussian_filter(m, sigma) for m in maps.numpy()])
    assert np.allclose(gaussian_blur(maps, sigma).numpy(), want, atol=1e-10)  # float64: the torch path
    single = maps.float()  # float32 on the CPU: scipy's, one map per thread; with autograd: the torch path
    want = np.stack([gaussian_filter(m, sigma) for m in single.numpy()])
    assert np.array_equal(gaussian_blur(single, sigma).numpy(), want)
    assert np.allclose(gaussian_blur(single.requires_grad_(), sigma).detach().numpy(), want, atol=1e-6)


def test_minmax_per_image_and_constant_map():
    maps = torch.tensor([[[1.0, 3.0], [2.0, 5.0]], [[4.0, 4.0], [4.0, 4.0]]])
    out = minmax_normalize(maps)
    assert torch.allclose(out[0], torch.tensor([[0.0, 0.5], [0.25, 1.0]]))
    assert torch.equal(out[1], torch.zeros(2, 2))


def test_combine_views_mixes_global_and_stitched_tiles():
    grid = TileGrid.square(8, 4)
    g = torch.zeros(1, 2, 2, 2)
    g[:, 1] = 1.0                      # global view says anomalous everywhere
    t = torch.zeros(4, 2, 1, 1)
    t[:, 0] = 1.0                      # tiles say normal everywhere
    m = combine_views(g, t, grid, global_size=6, alpha=0.75)
    assert m.shape == (1, 2, 8, 8)
    assert torch.allclose(m[:, 1], torch.full((1, 8, 8), 0.75))
    assert torch.allclose(m[:, 0], torch.full((1, 8, 8), 0.25))


def test_image_score_normalises_every_view_by_hand():
    grid = TileGrid.square(4, 2)
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    glob = torch.tensor([[3.0, 4.0]])                         # normalised: (0.6, 0.8)
    tiles = torch.tensor([[10.0, 0.0], [0.0, 5.0], [1.0, 1.0], [0.0, 2.0]])
    tile_logits = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5 ** 0.5, 0.5 ** 0.5], [0.0, 1.0]]).mean(0)
    mixed = 0.75 * torch.tensor([0.6, 0.8]) + 0.25 * tile_logits
    logits = image_logits(glob, tiles, text, grid, 0.75)
    assert torch.allclose(logits[0], mixed, atol=1e-6)
    want = torch.softmax(mixed / 0.07, 0)[1]
    assert torch.allclose(image_scores(logits)[0], want, atol=1e-6)


def bilinear(image, size):
    """Plain bilinear resize of a 2-D array with half-pixel centres (align_corners=False), pixel by pixel."""
    h, w = image.shape
    out = np.zeros((size, size))
    for y in range(size):
        for x in range(size):
            sy, sx = max((y + 0.5) * h / size - 0.5, 0), max((x + 0.5) * w / size - 0.5, 0)
            y0, x0 = min(int(sy), h - 1), min(int(sx), w - 1)
            y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
            fy, fx = sy - y0, sx - x0
            top = image[y0, x0] * (1 - fx) + image[y0, x1] * fx
            bottom = image[y1, x0] * (1 - fx) + image[y1, x1] * fx
            out[y, x] = top * (1 - fy) + bottom * fy
    return out


def test_global_map_is_upsampled_in_two_steps_grid_to_s_to_t():
    rng = np.random.default_rng(0)
    grid = TileGrid.square(20, 12)
    g = torch.tensor(rng.random((1, 2, 3, 3)), dtype=torch.float64)
    t = torch.zeros(4, 2, 2, 2, dtype=torch.float64)
    got = combine_views(g, t, grid, global_size=7, alpha=1.0)[0, 1].numpy()
    want = bilinear(bilinear(g[0, 1].numpy(), 7), 20)
    assert np.allclose(got, want, atol=1e-12)
    assert not np.allclose(got, bilinear(g[0, 1].numpy(), 20), atol=1e-3)  # one step would differ


@pytest.mark.parametrize("sigma", [0.0, 1.0, 4.0])
def test_box_blur_is_scipys_gaussian_of_each_box_alone(sigma):
    """Each map smoothed within its box (mirrored at the box's edges, as scipy mirrors at an
    array's), zero outside; boxes of different sizes in one batch, one of them a single pixel."""
    from scipy.ndimage import gaussian_filter

    from dhrclip.core.maps import box_blur

    maps = torch.rand(3, 40, 50, generator=torch.Generator().manual_seed(2), dtype=torch.float64).float()
    boxes = [(5, 7, 30, 20), (0, 0, 40, 50), (12, 33, 1, 1)]
    out = box_blur(maps, torch.tensor(boxes), sigma)
    for i, (top, left, h, w) in enumerate(boxes):
        want = np.zeros((40, 50), np.float64)
        crop = maps[i, top:top + h, left:left + w].double().numpy()
        want[top:top + h, left:left + w] = gaussian_filter(crop, sigma) if sigma else crop
        assert np.abs(out[i].double().numpy() - want).max() < 1e-5
