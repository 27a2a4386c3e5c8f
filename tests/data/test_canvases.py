"""Images as canvases of their grid: masks, workers."""
from dhrclip.core.grid import FixedGrid
from dhrclip.data.canvases import CanvasDataset, Masks, worker_count
from dhrclip.data.meta import read_meta


def test_normal_images_get_an_all_zero_mask_of_their_own_shape(data):
    items = read_meta(data, "test")["stripes"]
    normal = next(i for i in items if not i.anomaly)
    sample = CanvasDataset([normal], FixedGrid(112, 112, 1), masks=Masks.SCORED)[0]
    assert sample["mask"].shape == (112, 112) and not sample["mask"].any()
    assert tuple(sample["size"].tolist()) == (48, 64)


def test_auto_workers_start_none_for_small_jobs():
    assert worker_count("auto", 10, True) == 0 and worker_count("auto", 1000, True) >= 1
    assert worker_count(3, 10, False) == 3
