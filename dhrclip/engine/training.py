"""Prompt training (docs/method.md §7): the whole loop, readable in one sitting.

The batches come from ``FeatureBatches``, which hides the feature cache, the grid groups and
the processes' shards. Under torchrun each process computes the loss of the images of each
global batch it owns, scaled by their share of the batch, and DistributedDataParallel sums the
gradients, so each step's update is the single process's. A process may own none of a batch's
images (the batch size need not divide by the number of processes); it then adds a zero loss
so that the gradient exchange still happens.
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from ..config import ModelConfig, TrainConfig
from ..core.losses import image_loss, segmentation_loss
from ..core.network import DHRCLIPNetwork
from ..core.runtime import seed_everything
from ..data.meta import Item, has_masks, read_meta
from ..detector.checkpoint import (
    Checkpoint,
    ResumeState,
    latest_checkpoint,
    load_prompts,
    read_checkpoint,
    read_resume_state,
    save_checkpoint,
)
from ..detector.facade import DHRCLIP, check_backbone
from ..detector.signature import RESUME, Signature
from ..errors import UserError
from ..files import remove_temporaries
from .distributed import barrier, sum_across, world
from .feature_batches import FeatureBatch, FeatureBatches

log = logging.getLogger(__name__)


def train(config: TrainConfig, model: ModelConfig | DHRCLIP | None = None) -> list[dict]:
    """Train the prompts on the test split of ``config.data_path``.

    ``model``: a ``ModelConfig``, built on ``config.run.device`` at
    ``config.run.precision`` once the data check out, or a ``DHRCLIP`` to train in
    place (it keeps its own device and precision; its ``checkpoint`` becomes
    the last one written). Without one: the checkpoint's settings when
    resuming, else the authors' settings. Resuming refuses other settings.
    Every ``epoch_N.pth`` carries the model's configuration, so test and
    predict rebuild the same detector. Under torchrun the work is shared (see
    the module docstring) and only rank 0 writes checkpoints and logs.
    Returns, for each epoch run: {"epoch", "loss" (mean over steps),
    "seconds", "images"}.
    """
    here, run = world(), config.run
    generator = seed_everything(run.seed)
    items = _training_items(config)
    resume = resume_point(config.resume) if config.resume is not None else None
    if resume is not None and resume[1].epoch >= config.epochs:
        done = resume[1].epoch
        raise UserError(f"{resume[0].path} has trained {done} epoch(s) already, and epochs is {config.epochs}: "
                        f"nothing is left to train; raise epochs above {done}", field="epochs")
    _claim(config)
    if not isinstance(model, DHRCLIP):
        model = DHRCLIP.create(model or (resume[0].config if resume else None), device=run.device,
                               precision=run.precision)
    net = model.model
    optimizer = torch.optim.Adam(net.prompt_learner.parameters(), lr=config.learning_rate, betas=(0.5, 0.999))
    start = _restore(resume, model, optimizer, generator, config) if resume else 1
    prompts = net.prompt_learner if here.size == 1 else DistributedDataParallel(
        net.prompt_learner, device_ids=[net.device] if net.device.type == "cuda" else None)
    cache_folder = config.save_path / "feature_cache" / (f"rank{here.rank}" if here.size > 1 else "")
    history: list[dict] = []
    with FeatureBatches(net, items, model.grid_for(run), run, config.feature_cache, cache_folder, here) as batches:
        for epoch in range(start, config.epochs + 1):
            began, total, steps = time.perf_counter(), torch.zeros(1, dtype=torch.float64), 0
            net.train()
            for steps, batch in enumerate(batches.epoch(generator, f"epoch {epoch}/{config.epochs}"), start=1):
                text = net.text_features(prompts())  # fp32: the prompts change every step
                loss = _loss(net, batch, text, config.image_loss_weight)
                if not math.isfinite(loss.item()):
                    raise UserError(f"the loss became {loss.item()} at epoch {epoch}, step {steps}; training "
                                    f"stopped, the last good checkpoint is kept in {config.save_path}")
                optimizer.zero_grad(set_to_none=True)
                (loss * here.size).backward()  # DistributedDataParallel averages over ranks; the shares sum
                optimizer.step()
                total += loss.item()
            history.append({"epoch": epoch, "loss": float(sum_across(total)) / max(steps, 1),
                            "seconds": time.perf_counter() - began, "images": len(items)})
            _report(history[-1], config)
            if epoch % config.save_freq == 0 or epoch == config.epochs:
                _save(model, optimizer, generator, epoch, config)
    return history


def _claim(config: TrainConfig) -> None:
    """Make ``save_path`` this run's: a folder holding another run's checkpoints is refused (its later
    epochs would pass for this run's), unless this run continues it or ``overwrite`` replaces it."""
    here, folder = world(), config.save_path
    previous = sorted(folder.glob("epoch_*.pth"))
    continuing = config.resume is not None and folder.resolve() == config.resume.resolve()
    if previous and not continuing:
        if not config.overwrite:
            raise UserError(f"{folder} holds a previous run ({', '.join(p.name for p in previous[:3])}"
                            f"{', ...' if len(previous) > 3 else ''}); continue it with `resume`, choose another "
                            f"save_path, or set `overwrite` to replace it", field="save_path")
        barrier()  # every rank has looked before rank 0 removes anything
        if here.is_main:
            for path in [*previous, folder / "log.txt"]:
                path.unlink(missing_ok=True)
            log.info("removed the previous run's %d checkpoint(s) from %s", len(previous), folder)
    if here.is_main and (stale := remove_temporaries(folder)):
        log.info("removed %d unfinished file(s) that an interrupted run left in %s", stale, folder)
    barrier()
    folder.mkdir(parents=True, exist_ok=True)


def _loss(net: DHRCLIPNetwork, batch: FeatureBatch | None, text: torch.Tensor, image_weight: float) -> torch.Tensor:
    """This process's share of the global batch's mean loss (docs/method.md §7); zero when it owns
    none of the batch, which keeps the gradient exchange going."""
    if batch is None:
        return text.sum() * 0.0
    loss = segmentation_loss(net.layer_maps(batch.feats, text), batch.masks)
    if image_weight:
        loss = loss + image_weight * image_loss(batch.feats.global_embedding, text, batch.labels)
    return loss * batch.share


def _training_items(config: TrainConfig) -> list[Item]:
    """Every item of the test split, refused unless every anomalous image has its mask."""
    by_class = read_meta(config.data_path, "test")
    items = [item for cls in by_class for item in by_class[cls]]
    if not has_masks(items):
        missing = next(item.image for item in items if item.anomaly and not item.masks)
        raise UserError(f"training needs a mask for every anomalous image, and {missing} has none; "
                        f"train on a dataset with ground truth (e.g. MVTec AD or VisA)")
    log.info("training on %s: %d images of %d classes from %s, %d epochs", config.dataset or
             config.data_path.resolve().name, len(items), len(by_class), config.data_path, config.epochs)
    return items


def _report(epoch: dict, config: TrainConfig) -> None:
    """The epoch's loss and speed, in the log and in save_path/log.txt (rank 0)."""
    if epoch["epoch"] % config.print_freq or not world().is_main:
        return
    line = (f"epoch [{epoch['epoch']}/{config.epochs}], loss:{epoch['loss']:.4f}, "
            f"{epoch['images'] / epoch['seconds']:.1f} images/s")
    log.info(line)
    with open(config.save_path / "log.txt", "a") as handle:
        handle.write(line + "\n")


def _save(model: DHRCLIP, optimizer: torch.optim.Optimizer, generator: torch.Generator, epoch: int,
          config: TrainConfig) -> None:
    """epoch_N.pth with what test, predict and resume need (rank 0 writes; every rank's
    ``model.checkpoint`` then names it)."""
    path = config.save_path / f"epoch_{epoch}.pth"
    if world().is_main:
        record = {**config.to_dict(), "data_path": str(config.data_path.resolve())}  # resumable from any folder
        save_checkpoint(path, {**model.state_dict(), "optimizer": optimizer.state_dict(),
                               "generator": generator.get_state(), "epoch": epoch, "train_config": record})
    barrier()
    model.checkpoint = path


def resume_point(folder: Path) -> tuple[Checkpoint, ResumeState]:
    """The checkpoint of the run in ``folder`` to resume from (its last epoch_N.pth) and its
    training state, checked before any work starts."""
    last = latest_checkpoint(folder)
    if last is None:
        raise UserError(f"resume {folder}: no epoch_N.pth to resume from", field="resume")
    checkpoint = read_checkpoint(last)
    return checkpoint, read_resume_state(checkpoint)


def _restore(resume: tuple[Checkpoint, ResumeState], model: DHRCLIP, optimizer: torch.optim.Optimizer,
             generator: torch.Generator, config: TrainConfig) -> int:
    """Load the prompts, optimizer and generator of the run being resumed; the first epoch to run."""
    checkpoint, state = resume
    net = model.model
    if checkpoint.config is not None:
        record = model.grid_for(config.run).record()
        Signature(checkpoint.config, record).check(Signature(net.config, record), RESUME, str(checkpoint.path))
        check_backbone(net.config, checkpoint.config)
    load_prompts(net.prompt_learner, checkpoint)
    try:
        optimizer.load_state_dict(state.optimizer)
        generator.set_state(state.generator)
        for group in optimizer.param_groups:  # the run's learning rate, which resuming may change
            group["lr"] = config.learning_rate
    except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as exc:
        raise UserError(f"checkpoint {checkpoint.path}: its optimizer or generator state does not fit this run "
                        f"({str(exc).splitlines()[0][:120]}); cannot resume from it", field="resume") from exc
    log.info("resuming from %s at epoch %d", checkpoint.path, state.epoch + 1)
    return state.epoch + 1
