"""Loading the frozen CLIP backbone through open_clip (tags, local files, random init).

Every source ends as an open_clip ``CLIP`` in fp32 on the CPU, with the file its
weights came from (None for random weights). Local files are
read without running code: OpenAI's TorchScript archives by a restricted unpickler
(``torchscript.py``), everything else with ``torch.load(weights_only=True)`` or safetensors.
"""
from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import open_clip
import torch
from huggingface_hub import try_to_load_from_cache
from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
from open_clip.pretrained import download_pretrained, get_pretrained_cfg, list_pretrained_tags_by_model

from ..config import DEFAULT_MODEL
from ..errors import UserError
from ..files import safe_torch_load
from .torchscript import is_torchscript_archive, read_torchscript_tensors

log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
_DOWNLOAD_TIMEOUT_S = 30
_REQUIRED_KEYS = ("visual.conv1.weight", "visual.positional_embedding", "visual.proj", "token_embedding.weight",
                  "positional_embedding", "text_projection", "ln_final.weight")
# Keys that only OpenAI's own files carry (open_clip's state dicts have the same layout otherwise).
_OPENAI_ONLY_KEYS = ("input_resolution", "context_length", "vocab_size")


def is_weights_path(pretrained: str) -> bool:
    """Whether ``pretrained`` names a file rather than an open_clip tag or ``none``."""
    path = Path(pretrained).expanduser()
    return pretrained.lower() != "none" and (path.suffix in WEIGHT_SUFFIXES or "/" in pretrained or path.exists())


def load_clip(model_name: str = DEFAULT_MODEL, pretrained: str = "openai") -> tuple[CLIP, Path | None]:
    """Build the backbone named by ``model``/``pretrained``, frozen, in eval mode and fp32.

    ``pretrained`` is an open_clip tag (``openai``), a path to a weights file, or
    ``none`` for random weights (tests, benchmarks). Returns the model and the
    file its weights were read from (None for random weights).
    """
    if model_name not in open_clip.list_models():
        raise UserError(f"model {model_name} is not an open_clip architecture "
                        f"(see open_clip.list_models(), e.g. {DEFAULT_MODEL})", field="model")
    file = None
    if pretrained.lower() == "none":
        model = open_clip.create_model(model_name, pretrained=None)
    else:
        tag = not is_weights_path(pretrained)
        file = _download(model_name, pretrained) if tag else Path(pretrained).expanduser()
        state, openai_format = read_weights(file)
        # open_clip marks the tags whose weights were trained with QuickGELU (OpenAI's and some others).
        quick = openai_format or (tag and (pretrained == "openai" or
                                           bool(get_pretrained_cfg(model_name, pretrained).get("quick_gelu"))))
        model = model_from_state_dict(state, model_name, source=str(file), quick_gelu_weights=quick)
    if not isinstance(model, CLIP):
        raise UserError(f"model {model_name} is not a plain CLIP (custom text towers are not supported)",
                        field="model")
    model.eval().requires_grad_(False)
    return model.float(), file


def uses_quick_gelu(clip: CLIP) -> bool:
    """Whether the backbone's MLPs use QuickGELU (OpenAI's activation) rather than GELU."""
    return any(isinstance(m, open_clip.transformer.QuickGELU) for m in clip.visual.modules())


def _reachable(host: str, timeout: float = 5.0) -> bool:
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _cached(cfg: dict) -> Path | None:
    """A copy of the tag's weights already in open_clip's or Hugging Face's cache."""
    hub = cfg.get("hf_hub", "")
    if hub:
        repo, filename = os.path.split(hub.rstrip("/")) if not hub.endswith("/") else (hub.rstrip("/"), "")
        for name in ([filename] if filename else [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME]):
            found = try_to_load_from_cache(repo, name)
            if isinstance(found, str):
                return Path(found)
    url = cfg.get("url", "")
    local = Path("~/.cache/clip").expanduser() / Path(urlparse(url).path).name if url else None
    return local if local and local.is_file() else None


def _download(model_name: str, tag: str) -> Path:
    """Weights for an open_clip tag: from the cache, else downloaded; fails at once when offline."""
    cfg = get_pretrained_cfg(model_name, tag)
    if not cfg:
        tags = ", ".join(list_pretrained_tags_by_model(model_name)) or "none"
        raise UserError(f"pretrained {tag}: not a weights file, and not an open_clip tag of {model_name} "
                        f"(its tags: {tags})", field="pretrained")
    url = cfg.get("url", "")
    fetch = Path(urlparse(url).path).name if url else cfg.get("hf_hub", "")
    advice = (f"download {url or fetch} where there is internet and give pretrained as /path/to/"
              f"{Path(fetch).name or 'weights'}")
    host = os.environ.get("HF_ENDPOINT", "https://huggingface.co") if cfg.get("hf_hub") else url
    if not _reachable(urlparse(host).hostname or host):
        cached = _cached(cfg)
        if cached is None:
            raise UserError(f"the '{tag}' weights of {model_name} are not cached and {urlparse(host).hostname} "
                            f"cannot be reached; {advice}", field="pretrained")
        return cached
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(_DOWNLOAD_TIMEOUT_S)
    try:
        target = download_pretrained(cfg)
    except Exception as exc:  # network stacks raise many types; all mean "not available"
        raise UserError(f"could not download the '{tag}' weights of {model_name} ({type(exc).__name__}); "
                        f"{advice}", field="pretrained") from exc
    finally:
        socket.setdefaulttimeout(previous)
    if not target:
        raise UserError(f"open_clip has no download for '{tag}' of {model_name}; {advice}", field="pretrained")
    return Path(target)


def read_weights(path: Path) -> tuple[dict[str, torch.Tensor], bool]:
    """State dict of a CLIP weights file, whatever its container, without executing code,
    and whether the file is in OpenAI's own format (a JIT archive, or OpenAI's extra keys)."""
    if not path.is_file():
        raise UserError(f"weights file not found: {path} (give pretrained as an existing file, "
                        f"e.g. OpenAI's ViT-L-14-336px.pt)", field="pretrained")
    state: Any
    jit = path.suffix != ".safetensors" and is_torchscript_archive(path)
    if jit:
        state = read_torchscript_tensors(path)
    elif path.suffix == ".safetensors":
        from safetensors.torch import load_file
        try:
            state = load_file(str(path))
        except Exception as exc:
            raise UserError(f"cannot read weights file {path}: corrupt ({type(exc).__name__})",
                            field="pretrained") from exc
    else:
        state = safe_torch_load(path, "weights file")
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise UserError(f"{path} does not hold a state dict", field="pretrained")
    openai_format = jit or any(key in state for key in _OPENAI_ONLY_KEYS)
    # attn_mask is a derived causal mask that JIT archives carry along; the model rebuilds it.
    state = {k.removeprefix("module."): v for k, v in state.items()
             if k not in _OPENAI_ONLY_KEYS and not k.endswith("attn_mask")}
    missing = [key for key in _REQUIRED_KEYS if key not in state]
    if missing:
        raise UserError(f"{path} is not a CLIP ViT checkpoint (missing {', '.join(missing[:3])})", field="pretrained")
    return state, openai_format


def infer_config(state: dict[str, torch.Tensor]) -> dict:
    """open_clip model config of an OpenAI-layout ViT state dict, from tensor shapes alone."""
    vision_width = state["visual.conv1.weight"].shape[0]
    patch = state["visual.conv1.weight"].shape[-1]
    grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    text_width = state["ln_final.weight"].shape[0]
    return {
        "embed_dim": state["text_projection"].shape[1],
        "vision_cfg": {
            "image_size": patch * grid,
            "layers": len({k.split(".")[3] for k in state if k.startswith("visual.transformer.resblocks.")}),
            "width": vision_width,
            "patch_size": patch,
            "head_width": min(64, vision_width),  # OpenAI: one head per 64 channels, at least one
        },
        "text_cfg": {
            "context_length": state["positional_embedding"].shape[0],
            "vocab_size": state["token_embedding.weight"].shape[0],
            "width": text_width,
            "heads": max(1, text_width // 64),
            "layers": len({k.split(".")[2] for k in state if k.startswith("transformer.resblocks.")}),
        },
    }


def _same_architecture(named: dict | None, inferred: dict) -> bool:
    """Whether the named model's config has the shapes of the file (absent fields take open_clip's defaults)."""
    if not named:
        return False
    vision = {**vars(CLIPVisionCfg()), **named.get("vision_cfg", {})}
    text = {**vars(CLIPTextCfg()), **named.get("text_cfg", {})}
    return (named.get("embed_dim") == inferred["embed_dim"]
            and all(vision.get(k) == v for k, v in inferred["vision_cfg"].items())
            and all(text.get(k) == v for k, v in inferred["text_cfg"].items()))


def model_from_state_dict(state: dict[str, torch.Tensor], model_name: str, source: str,
                          quick_gelu_weights: bool = False) -> CLIP:
    """Build the CLIP that ``state`` fits and load it in fp32.

    When the file fits ``model_name``'s architecture, that config decides details
    the shapes cannot show (QuickGELU or GELU); weights trained with QuickGELU
    (``quick_gelu_weights``: OpenAI's, for one) in a GELU architecture are
    refused, since every feature would change silently.
    Otherwise the file is taken as an OpenAI-style ViT and its architecture is
    inferred, with QuickGELU as OpenAI trained it.
    """
    inferred = infer_config(state)
    named = open_clip.get_model_config(model_name)
    if _same_architecture(named, inferred):
        if quick_gelu_weights and not named.get("quick_gelu", False):
            right = f"{model_name}-quickgelu"
            advice = f"use model {right}" if right in open_clip.list_models() else "use a -quickgelu architecture"
            raise UserError(f"{source} holds weights trained with QuickGELU (as OpenAI's), but model {model_name} "
                            f"uses GELU; {advice}", field="model")
        model = open_clip.create_model(model_name, pretrained=None)
    else:
        log.info("%s does not fit model %s; using the architecture in the file (%s layers, width %s, "
                 "patch %s, QuickGELU)", source, model_name, inferred["vision_cfg"]["layers"],
                 inferred["vision_cfg"]["width"], inferred["vision_cfg"]["patch_size"])
        model = CLIP(inferred["embed_dim"], vision_cfg=CLIPVisionCfg(**inferred["vision_cfg"]),
                     text_cfg=CLIPTextCfg(**inferred["text_cfg"]), quick_gelu=True)
    try:
        model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    except RuntimeError as exc:
        raise UserError(f"{source} does not fit a CLIP of its own shapes: {str(exc).splitlines()[1][:200]}",
                        field="pretrained") from exc
    return model
