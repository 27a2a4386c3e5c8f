"""Metrics against brute force: every threshold enumerated, regions by a plain flood fill."""
import importlib.util

import numpy as np
import pytest
from conftest import ROOT
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from dhrclip.metrics import image_metrics, legacy_aupro, pixel_metrics


def _reference_metric_step():
    """The reference's literal metric loop, kept in the metrics benchmark as its baseline."""
    spec = importlib.util.spec_from_file_location("bench_metrics", ROOT / "scripts" / "bench_metrics.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.reference_metric_step


def flood_regions(mask):
    """8-connected regions of a 2-D bool mask, as lists of (y, x)."""
    seen = np.zeros_like(mask, dtype=bool)
    regions = []
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        stack, region = [(y0, x0)], []
        seen[y0, x0] = True
        while stack:
            y, x = stack.pop()
            region.append((y, x))
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    ny, nx = y + dy, x + dx
                    if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        stack.append((ny, nx))
        regions.append(region)
    return regions


def brute_aupro(masks, maps, limit=0.3):
    maps = maps.astype(np.float64)
    regions = [(i, r) for i, m in enumerate(masks) for r in flood_regions(m)]
    normal = ~masks
    fpr, pro = [0.0], [0.0]
    for t in sorted(set(maps.ravel().tolist()), reverse=True):
        pred = maps >= t
        fpr.append((pred & normal).sum() / normal.sum())
        pro.append(np.mean([np.mean([pred[i][y, x] for y, x in r]) for i, r in regions]))
    return brute_area(fpr, pro, limit)


def brute_f1max(y, s):
    best = 0.0
    for t in set(s.tolist()):
        pred = s >= t
        tp, fp, fn = (pred & y).sum(), (pred & ~y).sum(), (~pred & y).sum()
        best = max(best, 2 * tp / (2 * tp + fp + fn))
    return best


def random_case(seed, n=3, h=12, w=14, levels=None):
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, h, w), bool)
    for i in range(n - 1):  # the last image stays normal
        for _ in range(rng.integers(1, 4)):
            y, x = rng.integers(0, h - 2), rng.integers(0, w - 2)
            masks[i, y:y + rng.integers(1, 4), x:x + rng.integers(1, 4)] = True
    masks[0, 0, 0] = True  # a single-pixel region at a corner
    maps = rng.random((n, h, w)) + 0.4 * masks
    if levels:
        maps = np.round(maps * levels) / levels  # many ties
    return masks, maps.astype(np.float32)


@pytest.mark.parametrize("seed,levels", [(0, None), (1, None), (2, 7), (3, 3), (4, 20)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_pixel_metrics_match_brute_force(seed, levels, dtype):
    masks, maps = random_case(seed, levels=levels)
    maps = maps.astype(dtype)
    got = pixel_metrics(masks, maps)
    y, s = masks.ravel(), maps.ravel().astype(np.float64)
    assert got["auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-9)
    assert got["ap"] == pytest.approx(average_precision_score(y, s), abs=1e-9)
    assert got["f1max"] == pytest.approx(brute_f1max(y, s), abs=1e-9)
    assert got["aupro"] == pytest.approx(brute_aupro(masks, maps), abs=1e-9)


def test_aupro_is_invariant_under_monotone_transforms_and_outliers():
    masks, maps = random_case(5)
    base = pixel_metrics(masks, maps.astype(np.float64))["aupro"]
    assert pixel_metrics(masks, np.exp(3 * maps.astype(np.float64)))["aupro"] == pytest.approx(base, abs=1e-9)
    outlier = maps.astype(np.float64).copy()
    outlier[2, 0, 0] = 1e6  # a single normal pixel far above the rest
    assert pixel_metrics(masks, outlier)["aupro"] == pytest.approx(brute_aupro(masks, outlier), abs=1e-9)


def test_constant_maps_and_empty_masks():
    masks, _ = random_case(6)
    const = np.full(masks.shape, 0.5, np.float32)
    got = pixel_metrics(masks, const)
    assert got["auroc"] == pytest.approx(0.5)
    assert got["aupro"] == pytest.approx(brute_aupro(masks, const), abs=1e-9)
    none = pixel_metrics(np.zeros_like(masks), const)
    assert none == {"auroc": None, "aupro": None, "f1max": None, "ap": None}
    all_anomalous = pixel_metrics(np.ones_like(masks), const)
    assert all_anomalous["auroc"] is None and all_anomalous["aupro"] is None


def test_negative_zero_and_positive_zero_are_one_threshold_in_float16():
    masks = np.array([[[True, False, False, True]]])
    maps = np.array([[[0.0, -0.0, 0.5, -0.0]]], np.float16)
    assert pixel_metrics(masks, maps)["auroc"] == pytest.approx(roc_auc_score(masks.ravel(), [0, 0, 0.5, 0]))


def test_nan_in_a_map_is_an_error_naming_the_image():
    masks, maps = random_case(7)
    maps[1, 3, 3] = np.nan
    with pytest.raises(ValueError, match="map 1"):
        pixel_metrics(masks, maps)


def test_image_metrics_and_undefined_cases():
    labels = np.array([0, 0, 1, 1, 1, 0])
    scores = np.array([0.1, 0.4, 0.35, 0.8, 0.4, 0.2])
    got = image_metrics(labels, scores)
    assert got["auroc"] == pytest.approx(roc_auc_score(labels, scores))
    assert got["ap"] == pytest.approx(average_precision_score(labels, scores))
    p, r, _ = precision_recall_curve(labels, scores)
    assert got["f1max"] == pytest.approx(np.max(2 * p * r / np.maximum(p + r, 1e-12)))
    only_normal = image_metrics(np.zeros(3), np.array([0.1, 0.2, 0.3]))
    assert only_normal == {"auroc": None, "ap": None, "f1max": None}
    only_anomalous = image_metrics(np.ones(3), np.array([0.1, 0.2, 0.3]))  # AP and F1 would be 1 for any scores
    assert only_anomalous == {"auroc": None, "ap": None, "f1max": None}


def test_legacy_aupro_reproduces_the_reference_loop():
    masks, maps = random_case(8, n=4, h=20, w=20)
    reference = _reference_metric_step()(masks.astype(np.uint8), maps)[3]
    assert legacy_aupro(masks, maps) == pytest.approx(reference, abs=1e-12)


def brute_pixel_metrics(masks_list, maps_list):
    """Every metric by brute force over images of any sizes, scored as float16 like test.py."""
    y = np.concatenate([m.ravel() for m in masks_list])
    s = np.concatenate([m.astype(np.float16).astype(np.float64).ravel() for m in maps_list])
    has_pos, has_neg = y.any(), (~y).any()
    regions = [(i, r) for i, m in enumerate(masks_list) for r in flood_regions(m)]
    aupro = None
    if regions and has_neg:
        fpr, pro = [0.0], [0.0]
        for t in sorted(set(s.tolist()), reverse=True):
            fpr.append(sum(((mp.astype(np.float16) >= t) & ~mk).sum() for mp, mk in zip(maps_list, masks_list))
                       / (~y).sum())
            pro.append(np.mean([np.mean([maps_list[i].astype(np.float16)[yy, xx] >= t for yy, xx in r])
                                for i, r in regions]))
        aupro = brute_area(fpr, pro, 0.3)
    return {
        "auroc": roc_auc_score(y, s) if has_pos and has_neg else None,
        "aupro": aupro,
        "f1max": brute_f1max(y, s) if has_pos else None,
        "ap": average_precision_score(y, s) if has_pos else None,
    }


def brute_area(fpr, pro, limit):
    area = 0.0
    for k in range(1, len(fpr)):
        x0, x1, y0, y1 = fpr[k - 1], fpr[k], pro[k - 1], pro[k]
        if x0 >= limit:
            break
        if x1 > limit:
            y1 = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            x1 = limit
        area += (x1 - x0) * (y0 + y1) / 2
    return area / limit


def mixed_size_class(seed, anomalies=True):
    """Images of three sizes, ties, a single-pixel region, a constant map; optionally no defects at all."""
    rng = np.random.default_rng(seed)
    masks, maps = [], []
    for k, (h, w) in enumerate([(9, 11), (9, 11), (13, 7), (6, 6), (13, 7)]):
        mask = np.zeros((h, w), bool)
        if anomalies and k != 3:
            for _ in range(rng.integers(1, 3)):
                y, x = rng.integers(0, h - 2), rng.integers(0, w - 2)
                mask[y:y + rng.integers(1, 3), x:x + rng.integers(1, 4)] = True
        if anomalies and k == 0:
            mask[-1, -1] = True  # single-pixel region in a corner
        amap = np.round((rng.random((h, w)) + 0.5 * mask) * 6) / 6  # coarse levels: many ties
        if k == 3:
            amap = np.full((h, w), 0.5)  # a constant map
        masks.append(mask)
        maps.append(amap.astype(np.float32))
    return masks, maps


def _accumulate(masks_list, maps_list, groups):
    """One accumulator per group of images, fed image by image, then merged."""
    import torch

    from dhrclip.metrics import PixelAccumulator

    parts = []
    for group in groups:
        acc = PixelAccumulator()
        for i in group:
            acc.update(torch.from_numpy(maps_list[i][None]), torch.from_numpy(masks_list[i][None]))
        parts.append(acc)
    total = parts[0]
    for part in parts[1:]:
        total.merge(part)
    return total.compute()


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("anomalies", [True, False])
def test_accumulator_matches_brute_force_on_images_of_different_sizes(seed, anomalies):
    masks, maps = mixed_size_class(seed, anomalies)
    got = _accumulate(masks, maps, [range(len(masks))])
    want = brute_pixel_metrics(masks, maps)
    for name, value in want.items():
        if value is None:
            assert got[name] is None, name
        else:
            assert got[name] == pytest.approx(value, abs=1e-9), name


def test_accumulator_is_invariant_to_batch_and_shard_boundaries():
    import torch

    from dhrclip.metrics import PixelAccumulator, region_sizes

    masks, maps = random_case(9, n=6, levels=5)
    whole = PixelAccumulator().update(torch.from_numpy(maps), torch.from_numpy(masks)).compute()
    for groups in ([[0, 1, 2], [3, 4, 5]], [[5], [0, 3], [1, 2, 4]], [[i] for i in range(6)]):
        assert _accumulate(list(masks), list(maps), groups) == whole  # exactly equal, not approximately
    # region sizes given by the caller (as the data loader does) are the same state
    found = [region_sizes(m) for m in masks]
    given = PixelAccumulator().update(torch.from_numpy(maps), torch.from_numpy(masks),
                                      torch.from_numpy(np.stack([s for s, _ in found])), sum(c for _, c in found))
    assert given.compute() == whole


def test_region_sizes_and_the_float16_score_order():
    import torch

    from dhrclip.metrics import FLOAT16_RANK, float16_patterns, region_sizes

    mask = np.zeros((5, 6), bool)
    mask[0, 0] = True                 # size 1
    mask[2:4, 2:4] = True             # size 4, touching diagonally ...
    mask[4, 4] = True                 # ... this pixel: one 8-connected region of 5
    sizes, count = region_sizes(mask)
    assert count == 2 and sizes[0, 0] == 1 and sizes[4, 4] == 5 and sizes[2, 2] == 5 and sizes[1, 1] == 0
    values = np.array([-3.5, -0.0, 0.0, 1e-7, 0.25, 60000.0], np.float16)
    keys = FLOAT16_RANK[float16_patterns(torch.from_numpy(values)).numpy()]
    assert (np.diff(keys) >= 0).all() and keys[1] == keys[2]  # numeric order; -0.0 and +0.0 one key
    assert len(set(keys.tolist())) == len(values) - 1
    # every finite float16 value, by its pattern: the ranks order them as their values
    every = (np.arange(65536) - 32768).astype(np.int16).view(np.float16)
    finite = np.isfinite(every)
    by_value = np.argsort(every[finite].astype(np.float64), kind="stable")
    assert (np.diff(FLOAT16_RANK[np.flatnonzero(finite)][by_value]) >= 0).all()


def test_accumulator_takes_region_sizes_with_their_count_and_empty_batches():
    import torch

    from dhrclip.metrics import PixelAccumulator, region_sizes

    masks, maps = random_case(10, n=2)
    sizes = torch.from_numpy(np.stack([region_sizes(m)[0] for m in masks]))
    with pytest.raises(ValueError, match="together"):
        PixelAccumulator().update(torch.from_numpy(maps), torch.from_numpy(masks), sizes)
    acc = PixelAccumulator().update(torch.zeros(0, 5, 5), torch.zeros(0, 5, 5, dtype=torch.bool))
    assert int(acc.state.sum()) == 0


def test_a_score_float16_cannot_hold_is_refused_like_nan():
    """A one-pixel defect at 2e5 on a background of 1e5 would round to two infinities and tie
    (AUROC 0.5 instead of 1.0): refused, naming the map."""
    import torch

    from dhrclip.metrics import PixelAccumulator

    maps = torch.full((2, 4, 4), 1e5)
    maps[1, 0, 0] = 2e5
    masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    masks[1, 0, 0] = True
    with pytest.raises(ValueError, match="score map 0 contains NaN, Inf, or a score beyond float16's range"):
        PixelAccumulator().update(maps, masks)
    assert PixelAccumulator().update(maps / 10, masks).compute()["auroc"] == pytest.approx(1.0)  # in range: exact


def test_scores_in_a_narrow_band_get_a_bound_on_their_rounding_error_and_a_warning(caplog):
    """Scores between 0.5 and 0.5005 span one or two float16 steps: the accumulator bounds how far
    rounding can have moved AUROC and AUPRO (ties counted half), against the exact float64 value;
    spread over [0, 1] the bound is negligible."""
    import torch

    from dhrclip.engine.class_metrics import ClassState
    from dhrclip.metrics import PixelAccumulator

    rng = np.random.default_rng(0)
    masks = np.zeros((6, 32, 32), bool)
    masks[3:, 8:20, 8:20] = True
    raw = rng.random((6, 32, 32)) + masks * 0.6
    narrow = 0.5 + 0.0005 * raw / raw.max()
    exact = pixel_metrics(masks, narrow.astype(np.float64))
    acc = PixelAccumulator().update(torch.from_numpy(narrow.astype(np.float32)), torch.from_numpy(masks))
    rounded, bound = acc.compute(), acc.rounding_bound()
    assert bound["auroc"] > 1.0
    assert abs(100 * (rounded["auroc"] - exact["auroc"])) <= bound["auroc"] + 1e-9
    assert abs(100 * (rounded["aupro"] - exact["aupro"])) <= bound["aupro"] + 1e-9
    spread = PixelAccumulator().update(torch.from_numpy((raw / raw.max()).astype(np.float32)), torch.from_numpy(masks))
    assert max(spread.rounding_bound().values()) < 0.05
    with caplog.at_level("WARNING"):
        ClassState(acc).compute("bottle", "exact")
    assert "class bottle: its scores span few float16 steps" in caplog.text
