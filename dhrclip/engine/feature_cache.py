"""Cache of encoded training views (docs/method.md §7).

The backbone is frozen and training has no augmentation, so every image's
encoded views are the same in every epoch. The first epoch fills this cache;
later epochs read it and cost only the text encoder, the maps and the loss.
"""
from __future__ import annotations

import errno
import logging
import os
import shutil
from pathlib import Path

import torch

from ..config import FEATURE_CACHE_MODES
from ..core.network import ViewFeatures
from ..errors import UserError
from .distributed import processes_on_this_machine

log = logging.getLogger(__name__)

_FREE_FRACTION = 0.5  # auto uses at most this share of what is free


def _host_bytes_available() -> int:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def _disk_bytes_available(folder: Path) -> int:
    """Free bytes on the disk that holds (or will hold) ``folder``."""
    existing = next((p for p in (folder, *folder.parents) if p.exists()), Path("."))
    try:
        return shutil.disk_usage(existing).free
    except OSError:
        return 0


def _reserve(file: Path, size: int) -> None:
    """Create ``file`` with ``size`` bytes allocated on disk. A memory-mapped file that is only
    truncated to its size gets its blocks as it is written, and a full disk then kills the
    process with a bus error; reserving them first turns it into one line here."""
    try:
        with open(file, "wb") as handle:
            if size == 0:
                return
            try:
                os.posix_fallocate(handle.fileno(), 0, size)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                    raise
                if _disk_bytes_available(file.parent) < size:  # a file system that cannot reserve
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(file)) from exc
                handle.truncate(size)
    except OSError as exc:
        file.unlink(missing_ok=True)
        raise UserError(f"cannot make the feature cache file {file} of {size / 1e9:.2f} GB: {exc.strerror or exc}; "
                        f"free disk space or set feature_cache off", field="feature_cache") from exc


class FeatureCache:
    """Per-image storage for view features, masks and labels, filled batch by batch.

    ``mode``: ``memory`` (the training device when it is a GPU with room,
    otherwise host RAM), ``disk`` (memory-mapped files under ``directory``, their
    space reserved first) or ``auto`` (device memory, then host memory, then disk, by
    size; where nothing has room, no cache, and every epoch encodes the views again).
    """

    def __init__(self, mode: str, size: int, device: torch.device, directory: Path) -> None:
        if mode not in FEATURE_CACHE_MODES or mode == "off":
            raise ValueError(f"FeatureCache mode must be one of auto, memory, disk; got {mode!r}")
        self.mode, self.size, self.device, self.directory = mode, size, device, Path(directory)
        self.slots: list[torch.Tensor] = []
        self.filled = torch.zeros(size, dtype=torch.bool)
        self.layers = 0
        self.views: dict | None = None  # the batch-independent fields of ViewFeatures
        self.where = "unallocated"

    @property
    def complete(self) -> bool:
        return self.where != "nowhere" and bool(self.filled.all())

    def _allocate(self, examples: list[torch.Tensor]) -> None:
        per_image = sum(t[0].numel() * t.element_size() for t in examples)
        need = per_image * self.size
        place = self._choose(need)
        self.where = place
        if place == "nowhere":
            log.warning("feature cache: %.2f GB fits neither in memory nor on the free disk under %s; every epoch "
                        "encodes the images again", need / 1e9, self.directory)
            return
        log.info("feature cache: %.2f GB in %s", need / 1e9, place)
        for i, t in enumerate(examples):
            shape, dtype = (self.size, *t.shape[1:]), t.dtype
            if place == "disk":
                self.directory.mkdir(parents=True, exist_ok=True)
                file = self.directory / f"slot_{i}.bin"
                numel = int(torch.Size(shape).numel())
                _reserve(file, numel * t.element_size())
                slot = torch.from_file(str(file), shared=True, size=numel, dtype=dtype).view(shape)
            else:
                slot = torch.empty(shape, dtype=dtype, device=self.device if place == "device" else "cpu")
            self.slots.append(slot)

    def _choose(self, need: int) -> str:
        if self.mode == "disk":
            return "disk"
        on_gpu = self.device.type == "cuda"
        if on_gpu and need < _FREE_FRACTION * torch.cuda.mem_get_info(self.device)[0]:
            return "device"
        # every process of the job on this machine fills its own cache from the same free memory and disk
        share = need * processes_on_this_machine()
        if self.mode == "memory" or share < _FREE_FRACTION * _host_bytes_available():
            return "host"
        return "disk" if share < _FREE_FRACTION * _disk_bytes_available(self.directory) else "nowhere"

    @staticmethod
    def _flatten(feats: ViewFeatures, masks: torch.Tensor, labels: torch.Tensor, tiles: int) -> list[torch.Tensor]:
        """Everything of a batch with the image as the leading dimension."""
        per_image_tiles = [t.unflatten(0, (-1, tiles)) for t in feats.tile_tokens]
        return [*feats.global_tokens, *per_image_tiles, feats.global_embedding,
                feats.tile_embedding.unflatten(0, (-1, tiles)), masks, labels]

    def store(self, indices: torch.Tensor, feats: ViewFeatures, masks: torch.Tensor, labels: torch.Tensor,
              tiles: int) -> None:
        parts = self._flatten(feats, masks, labels, tiles)
        if self.where == "unallocated":
            self.layers = len(feats.global_tokens)
            self.views = {"global_grid": feats.global_grid, "tile_grid": feats.tile_grid, "tiles": feats.tiles,
                          "global_size": feats.global_size}
            self._allocate(parts)
        if self.where == "nowhere":
            return
        for slot, part in zip(self.slots, parts):
            slot[indices.to(slot.device)] = part.detach().to(slot.device)
        self.filled[indices] = True

    def load(self, indices: torch.Tensor, device: torch.device) -> tuple[ViewFeatures, torch.Tensor, torch.Tensor]:
        parts = [slot[indices.to(slot.device)].to(device, non_blocking=True) for slot in self.slots]
        n = self.layers
        if self.views is None:
            raise ValueError("the feature cache is empty")
        feats = ViewFeatures(
            global_tokens=parts[:n],
            tile_tokens=[t.flatten(0, 1) for t in parts[n:2 * n]],
            global_embedding=parts[2 * n],
            tile_embedding=parts[2 * n + 1].flatten(0, 1),
            **self.views,
        )
        return feats, parts[2 * n + 2], parts[2 * n + 3]

    def close(self) -> None:
        """Free the storage and remove cache files."""
        self.slots.clear()
        if self.where == "disk":
            shutil.rmtree(self.directory, ignore_errors=True)


class GroupedFeatureCache:
    """One ``FeatureCache`` per group of images whose views share a shape (with ``grid="auto"``,
    the images of one tile grid), addressed by the images' dataset indices."""

    def __init__(self, mode: str, groups: list[int], device: torch.device, directory: Path) -> None:
        self.group = torch.tensor(groups, dtype=torch.long)
        self.slot = torch.zeros(len(groups), dtype=torch.long)
        self.caches: dict[int, FeatureCache] = {}
        for g in sorted(set(groups)):
            members = torch.nonzero(self.group == g).flatten()
            self.slot[members] = torch.arange(len(members))
            folder = directory / f"grid_{g}" if len(set(groups)) > 1 else directory
            self.caches[g] = FeatureCache(mode, len(members), device, folder)

    @property
    def complete(self) -> bool:
        return all(cache.complete for cache in self.caches.values())

    def _cache(self, indices: torch.Tensor) -> FeatureCache:
        groups = self.group[indices].unique()
        if len(groups) != 1:
            raise ValueError("a batch of the feature cache must hold images of one group")
        return self.caches[int(groups[0])]

    def store(self, indices: torch.Tensor, feats: ViewFeatures, masks: torch.Tensor, labels: torch.Tensor,
              tiles: int) -> None:
        self._cache(indices).store(self.slot[indices], feats, masks, labels, tiles)

    def load(self, indices: torch.Tensor, device: torch.device) -> tuple[ViewFeatures, torch.Tensor, torch.Tensor]:
        return self._cache(indices).load(self.slot[indices], device)

    def close(self) -> None:
        for cache in self.caches.values():
            cache.close()
