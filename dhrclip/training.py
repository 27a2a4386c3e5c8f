"""Prompt training (docs/method.md §7): the whole loop, readable in one sitting."""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from .checkpoint import Checkpoint, latest_checkpoint, load_prompts, read_checkpoint, save_checkpoint
from .config import ModelConfig, TrainConfig, check_resumable
from .data import CanvasDataset, has_masks, read_meta, worker_count
from .detector import DHRCLIP, check_backbone
from .errors import UserError
from .feature_cache import FeatureCache
from .losses import image_loss, segmentation_loss
from .model import DHRCLIPModel, ViewFeatures
from .runtime import seed_everything

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
    predict rebuild the same detector. Returns, for each epoch run:
    {"epoch", "loss" (mean over steps), "seconds", "images"}.
    """
    generator = seed_everything(config.seed)
    save_path = config.save_path
    by_class = read_meta(config.data_path, "test")
    items = [item for cls in by_class for item in by_class[cls]]
    if not has_masks(items):
        missing = next(item.image for item in items if item.anomaly and item.mask is None)
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

    dataset = CanvasDataset(items, net.config.target_image_size, bit_depth=config.bit_depth)
    cache = None if config.feature_cache == "off" else FeatureCache(
        config.feature_cache, len(dataset), device, save_path / "feature_cache")
    history: list[dict] = []
    log.info("training on %s: %d images of %d classes from %s, %d epochs", config.dataset or
             config.data_path.resolve().name, len(items), len(by_class), config.data_path, config.epochs)
    try:
        for epoch in range(start_epoch, config.epochs + 1):
            started = time.perf_counter()
            batches = list(torch.randperm(len(dataset), generator=generator).split(config.batch_size))
            net.train()
            total, steps = 0.0, 0
            for step, (feats, masks, labels) in enumerate(
                    tqdm(_batches(net, dataset, batches, cache, config.num_workers), total=len(batches),
                         desc=f"epoch {epoch}/{config.epochs}", leave=False, disable=None), start=1):
                text = net.text_features()  # fp32: the prompts change every step
                loss = segmentation_loss(net.layer_maps(feats, text), masks)
                if config.image_loss_weight:
                    loss = loss + config.image_loss_weight * image_loss(feats.global_embedding, text, labels)
                if not math.isfinite(loss.item()):
                    raise UserError(f"the loss became {loss.item()} at epoch {epoch}, step {step}; training "
                                    f"stopped, the last good checkpoint is kept in {save_path}")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total, steps = total + loss.item(), steps + 1
            mean = total / max(steps, 1)
            seconds = time.perf_counter() - started
            history.append({"epoch": epoch, "loss": mean, "seconds": seconds, "images": len(dataset)})
            if epoch % config.print_freq == 0:
                line = f"epoch [{epoch}/{config.epochs}], loss:{mean:.4f}, {len(dataset) / seconds:.1f} images/s"
                log.info(line)
                _append_log(save_path, line)
            if epoch % config.save_freq == 0 or epoch == config.epochs:
                path = save_path / f"epoch_{epoch}.pth"
                save_checkpoint(path, {
                    **model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "generator": generator.get_state(),
                    "epoch": epoch,
                    "train_config": config.to_dict(),
                })
                model.checkpoint = path
    finally:
        if cache is not None:
            cache.close()
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


def _batches(model: DHRCLIPModel, dataset: CanvasDataset, batches: list[torch.Tensor], cache: FeatureCache | None,
             num_workers: int | str) -> Iterator[tuple[ViewFeatures, torch.Tensor, torch.Tensor]]:
    """Yield (view features, masks, labels) per batch, from the cache once it is full."""
    device = model.device
    if cache is not None and cache.complete:
        for indices in batches:
            yield cache.load(indices, device)
        return
    loader = DataLoader(dataset, batch_sampler=batches, num_workers=worker_count(num_workers, len(dataset)),
                        pin_memory=device.type == "cuda", persistent_workers=False)
    for indices, batch in zip(batches, loader):
        images = batch["image"].to(device, non_blocking=True)
        masks = batch["mask"].to(device, non_blocking=True)
        labels = batch["label"].to(device, non_blocking=True)
        feats = model.encode_views(images)
        if cache is not None:
            cache.store(indices, feats, masks, labels, model.tiles.count)
        yield feats, masks, labels
