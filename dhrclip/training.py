"""Prompt training (SPEC §7): the whole loop, readable in one sitting."""
from __future__ import annotations

import argparse
import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from .checkpoint import latest_checkpoint, load_prompts, read_checkpoint, save_checkpoint
from .cli import build_model, plain_config
from .data import CanvasDataset, has_masks, read_meta
from .errors import UserError
from .feature_cache import FeatureCache
from .losses import segmentation_loss
from .maps import TEMPERATURE
from .model import DHRCLIP, ViewFeatures
from .runtime import autocast, resolve_device, resolve_precision, seed_everything

log = logging.getLogger(__name__)


def _append_log(save_path: Path, line: str) -> None:
    with open(save_path / "log.txt", "a") as handle:
        handle.write(line + "\n")


def train(args: argparse.Namespace) -> list[dict]:
    """Train the prompts on ``args.train_data_path``.

    Returns, for each epoch run: {"epoch", "loss" (mean over steps), "seconds", "images"}.
    """
    generator = seed_everything(args.seed)
    device = resolve_device(args.device)
    dtype = resolve_precision(args.precision, device)
    save_path = Path(args.save_path)
    data_path = Path(args.train_data_path or f"./data/{args.dataset}")
    by_class = read_meta(data_path, "test")
    items = [item for cls in by_class for item in by_class[cls]]
    if not has_masks(items):
        missing = next(item.image for item in items if item.anomaly and item.mask is None)
        raise UserError(f"training needs a mask for every anomalous image, and {missing} has none; "
                        f"train on a dataset with ground truth (e.g. MVTec AD or VisA)")
    model = build_model(args, device)
    save_path.mkdir(parents=True, exist_ok=True)
    optimizer = torch.optim.Adam(model.prompt_learner.parameters(), lr=args.learning_rate, betas=(0.5, 0.999))

    start_epoch = 1
    if args.resume is not None:
        last = latest_checkpoint(Path(args.resume))
        if last is None:
            raise UserError(f"--resume {args.resume}: no epoch_N.pth to resume from")
        state = read_checkpoint(last)
        load_prompts(model.prompt_learner, state)
        if "optimizer" not in state or "generator" not in state:
            raise UserError(f"{last} has no optimizer state (not written by this train.py); cannot resume from it")
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        start_epoch = int(state["epoch"]) + 1
        log.info("resuming from %s at epoch %d", last, start_epoch)

    dataset = CanvasDataset(items, args.target_image_size)
    cache = None if args.feature_cache == "off" else FeatureCache(
        args.feature_cache, len(dataset), device, save_path / "feature_cache")
    history: list[dict] = []
    log.info("training on %d images of %d classes from %s, %d epochs", len(items), len(by_class),
             data_path, args.epoch)
    try:
        for epoch in range(start_epoch, args.epoch + 1):
            started = time.perf_counter()
            batches = list(torch.randperm(len(dataset), generator=generator).split(args.batch_size))
            model.train()
            total, steps = 0.0, 0
            for step, (feats, masks, labels) in enumerate(
                    tqdm(_batches(model, dataset, batches, cache, device, dtype, args), total=len(batches),
                         desc=f"epoch {epoch}/{args.epoch}", leave=False, disable=None), start=1):
                with autocast(device, dtype):
                    text = model.text_features()
                loss = segmentation_loss(model.layer_maps(feats, text.float()), masks)
                if args.image_loss_weight:
                    logits = model.image_logits(feats, text.float()) / TEMPERATURE
                    loss = loss + args.image_loss_weight * F.cross_entropy(logits, labels.long())
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
            if epoch % args.print_freq == 0:
                line = f"epoch [{epoch}/{args.epoch}], loss:{mean:.4f}, {len(dataset) / seconds:.1f} images/s"
                log.info(line)
                _append_log(save_path, line)
            if epoch % args.save_freq == 0 or epoch == args.epoch:
                save_checkpoint(save_path / f"epoch_{epoch}.pth", {
                    "prompt_learner": model.prompt_learner.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "generator": generator.get_state(),
                    "epoch": epoch,
                    "config": plain_config(args),
                })
    finally:
        if cache is not None:
            cache.close()
    return history


def _batches(model: DHRCLIP, dataset: CanvasDataset, batches: list[torch.Tensor], cache: FeatureCache | None,
             device: torch.device, dtype: torch.dtype, args: argparse.Namespace
             ) -> Iterator[tuple[ViewFeatures, torch.Tensor, torch.Tensor]]:
    """Yield (view features, masks, labels) per batch, from the cache once it is full."""
    if cache is not None and cache.complete:
        for indices in batches:
            yield cache.load(indices, device)
        return
    loader = DataLoader(dataset, batch_sampler=batches, num_workers=args.num_workers,
                        pin_memory=device.type == "cuda", persistent_workers=False)
    for indices, batch in zip(batches, loader):
        images = batch["image"].to(device, non_blocking=True)
        masks = batch["mask"].to(device, non_blocking=True)
        labels = batch["label"].to(device, non_blocking=True)
        with autocast(device, dtype):
            feats = model.encode_views(images)
        if cache is not None:
            cache.store(indices, feats, masks, labels, model.tiles.count)
        yield feats, masks, labels
