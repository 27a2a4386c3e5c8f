"""Prompt training (docs/method.md §7): the whole loop, readable in one sitting.

Under torchrun each process owns a contiguous shard of the images: it encodes
them (the expensive first epoch) and caches their features. Every step draws
the same global batch of ``batch_size`` images as one process would; each
process computes the loss of the images of that batch it owns, scaled by their
share of the batch, and DistributedDataParallel sums the gradients, so each
step's update is the single process's. A process may own none of a batch's
images (the batch size need not divide by the number of processes); it then
adds a zero loss so that the gradient exchange still happens.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..detector.checkpoint import Checkpoint, latest_checkpoint, load_prompts, read_checkpoint, save_checkpoint
from ..config import ModelConfig, TrainConfig, check_resumable
from ..data.canvases import AutoGrid, CanvasDataset, Item, collate, has_masks, placements, read_meta, worker_count
from ..data.images import image_shape
from ..detector.facade import DHRCLIP, check_backbone
from .distributed import barrier, sum_across, world
from ..errors import UserError
from .feature_cache import GroupedFeatureCache
from ..core.losses import image_loss, segmentation_loss
from ..core.network import DHRCLIPModel, ViewFeatures
from ..core.runtime import seed_everything
from ..core.tiling import choose_grid

log = logging.getLogger(__name__)


def _append_log(save_path: Path, line: str) -> None:
    with open(save_path / "log.txt", "a") as handle:
        handle.write(line + "\n")


def train(config: TrainConfig, model: ModelConfig | DHRCLIP | None = None) -> list[dict]:
    """Train the prompts on the test split of ``config.data_path``.

    ``model``: a ``ModelConfig``, built on ``config.device`` at
    ``config.precision`` once the data check out, or a ``DHRCLIP`` to train in
    place (it keeps its own device and precision; its ``checkpoint`` becomes
    the last one written). Without one: the checkpoint's settings when
    resuming, else the authors' settings. Resuming refuses other settings.
    Every ``epoch_N.pth`` carries the model's configuration, so test and
    predict rebuild the same detector. Under torchrun the work is shared (see
    the module docstring) and only rank 0 writes checkpoints and logs.
    Returns, for each epoch run: {"epoch", "loss" (mean over steps),
    "seconds", "images"}.
    """
    here = world()
    generator = seed_everything(config.seed)
    save_path = config.save_path
    by_class = read_meta(config.data_path, "test")
    items = [item for cls in by_class for item in by_class[cls]]
    if not has_masks(items):
        missing = next(item.image for item in items if item.anomaly and not item.masks)
        raise UserError(f"training needs a mask for every anomalous image, and {missing} has none; "
                        f"train on a dataset with ground truth (e.g. MVTec AD or VisA)")
    resume = _resume_point(config.resume)
    if not isinstance(model, DHRCLIP):
        model = DHRCLIP.create(model or (resume.config if resume else None), device=config.device,
                               precision=config.precision)
    net = model.model
    device = net.device
    save_path.mkdir(parents=True, exist_ok=True)
    optimizer = torch.optim.Adam(net.prompt_learner.parameters(), lr=config.learning_rate, betas=(0.5, 0.999))

    start_epoch = 1
    if resume is not None:
        if resume.config is not None:
            check_resumable(net.config, resume.config)
            check_backbone(net.config, resume.config)
        load_prompts(net.prompt_learner, resume)
        optimizer.load_state_dict(resume.state["optimizer"])
        generator.set_state(resume.state["generator"])
        start_epoch = int(resume.state["epoch"]) + 1
        log.info("resuming from %s at epoch %d", resume.path, start_epoch)

    owned = here.shard(len(items))
    groups = _grid_groups(items, net.config.patch_image_size, config)
    canvas = (AutoGrid(net.config.patch_image_size, config.max_tiles) if config.grid == "auto"
              else net.config.target_image_size)
    dataset = CanvasDataset(items[owned.start:owned.stop], canvas, bit_depth=config.bit_depth)
    cache_folder = save_path / "feature_cache" / (f"rank{here.rank}" if here.size > 1 else "")
    cache = None if config.feature_cache == "off" else GroupedFeatureCache(
        config.feature_cache, groups[owned.start:owned.stop], device, cache_folder)
    prompts = net.prompt_learner if here.size == 1 else DistributedDataParallel(
        net.prompt_learner, device_ids=[device] if device.type == "cuda" else None)
    history: list[dict] = []
    log.info("training on %s: %d images of %d classes from %s, %d epochs", config.dataset or
             config.data_path.resolve().name, len(items), len(by_class), config.data_path, config.epochs)
    try:
        for epoch in range(start_epoch, config.epochs + 1):
            started = time.perf_counter()
            batches = _local_batches(torch.randperm(len(items), generator=generator), config.batch_size, owned,
                                     groups)
            net.train()
            total = torch.zeros(1, dtype=torch.float64)
            for step, ((local, size), loaded) in enumerate(
                    zip(batches, tqdm(_batches(net, dataset, [b for b, _ in batches], cache, config.num_workers),
                                      total=len(batches), desc=f"epoch {epoch}/{config.epochs}", leave=False,
                                      disable=None if here.is_main else True)), start=1):
                text = net.text_features(prompts())  # fp32: the prompts change every step
                if loaded is None:  # none of this global batch is ours: a zero loss keeps the exchange going
                    loss = text.sum() * 0.0
                else:
                    feats, masks, labels = loaded
                    loss = segmentation_loss(net.layer_maps(feats, text), masks)
                    if config.image_loss_weight:
                        loss = loss + config.image_loss_weight * image_loss(feats.global_embedding, text, labels)
                    if not math.isfinite(loss.item()):
                        raise UserError(f"the loss became {loss.item()} at epoch {epoch}, step {step}; training "
                                        f"stopped, the last good checkpoint is kept in {save_path}")
                    loss = loss * (len(local) / size)  # this rank's share of the global batch mean
                optimizer.zero_grad(set_to_none=True)
                (loss * here.size).backward()  # DistributedDataParallel averages over ranks; the shares sum
                optimizer.step()
                total += loss.item()
            mean = float(sum_across(total)) / max(len(batches), 1)
            seconds = time.perf_counter() - started
            history.append({"epoch": epoch, "loss": mean, "seconds": seconds, "images": len(items)})
            if epoch % config.print_freq == 0 and here.is_main:
                line = f"epoch [{epoch}/{config.epochs}], loss:{mean:.4f}, {len(items) / seconds:.1f} images/s"
                log.info(line)
                _append_log(save_path, line)
            if (epoch % config.save_freq == 0 or epoch == config.epochs) and here.is_main:
                save_checkpoint(save_path / f"epoch_{epoch}.pth", {
                    **model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "generator": generator.get_state(),
                    "epoch": epoch,
                    "train_config": config.to_dict(),
                })
            if epoch % config.save_freq == 0 or epoch == config.epochs:
                barrier()  # every rank's model.checkpoint names a file that exists
                model.checkpoint = save_path / f"epoch_{epoch}.pth"
    finally:
        if cache is not None:
            cache.close()
            if here.size > 1:
                with contextlib.suppress(OSError):  # the shared feature_cache/ folder, once every rank's is gone
                    cache_folder.parent.rmdir()
    return history


def _resume_point(folder: Path | None) -> Checkpoint | None:
    """The checkpoint to resume from, checked before any work starts."""
    if folder is None:
        return None
    last = latest_checkpoint(folder)
    if last is None:
        raise UserError(f"resume {folder}: no epoch_N.pth to resume from", field="resume")
    state = read_checkpoint(last)
    if "optimizer" not in state.state or "generator" not in state.state:
        raise UserError(f"{last} has no optimizer state (not written by this train.py); cannot resume from it",
                        field="resume")
    return state


def _grid_groups(items: list[Item], tile: int, config: TrainConfig) -> list[int]:
    """Each image's group: images of one group share a canvas (with ``grid="auto"``, a tile grid
    read from the image headers; one group on the fixed canvas)."""
    if config.grid == "fixed":
        return [0] * len(items)
    grids = [choose_grid(*image_shape(item.image), tile, config.max_tiles) for item in items]
    names = {g: k for k, g in enumerate(sorted(set(grids)))}
    log.info("grid auto: %s", ", ".join(f"{grids.count(g)} images on {g[0]}x{g[1]} tiles" for g in names))
    return [names[g] for g in grids]


def _global_batches(order: torch.Tensor, batch_size: int, groups: list[int]) -> list[torch.Tensor]:
    """``order`` cut into batches of ``batch_size`` images of one group: each group's images in
    their order in ``order``, batches ranked by where their first image falls in it. With one
    group this is ``order.split(batch_size)``."""
    if len(set(groups)) <= 1:
        return list(order.split(batch_size))
    group = torch.tensor(groups)[order]
    batches = [chunk for g in group.unique() for chunk in order[group == g].split(batch_size)]
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order))
    return sorted(batches, key=lambda b: int(rank[b[0]]))


def _local_batches(order: torch.Tensor, batch_size: int, owned: range,
                   groups: list[int]) -> list[tuple[torch.Tensor, int]]:
    """The global batches of ``order`` (as one process draws them), each as the positions of its
    images in this rank's shard ``owned`` and the global batch's size."""
    batches = []
    for batch in _global_batches(order, batch_size, groups):
        mine = batch[(batch >= owned.start) & (batch < owned.stop)] - owned.start
        batches.append((mine, len(batch)))
    return batches


def _batches(model: DHRCLIPModel, dataset: CanvasDataset, batches: list[torch.Tensor],
             cache: GroupedFeatureCache | None,
             num_workers: int | str) -> Iterator[tuple[ViewFeatures, torch.Tensor, torch.Tensor] | None]:
    """Yield (view features, masks, labels) per batch, from the cache once it is full; None for
    an empty batch."""
    device = model.device
    if cache is not None and cache.complete:
        for indices in batches:
            yield cache.load(indices, device) if len(indices) else None
        return
    filled = [indices for indices in batches if len(indices)]
    loader = iter(DataLoader(dataset, batch_sampler=filled, num_workers=worker_count(num_workers, len(dataset)),
                             pin_memory=device.type == "cuda", persistent_workers=False, collate_fn=collate))
    for indices in batches:
        if not len(indices):
            yield None
            continue
        batch = next(loader)
        images = batch["image"].to(device, non_blocking=True)
        masks = batch["mask"].to(device, non_blocking=True)
        labels = batch["label"].to(device, non_blocking=True)
        placed = placements(batch)
        tiles = model.grid(placed[0].rows, placed[0].cols) if placed else None
        feats = model.encode_views(images, tiles, placed)
        if cache is not None:
            cache.store(indices, feats, masks, labels, feats.tiles.count)
        yield feats, masks, labels
