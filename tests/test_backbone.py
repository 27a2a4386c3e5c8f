"""Loading CLIP weights: OpenAI files, JIT archives, open_clip and safetensors files, tags offline."""
import time
from pathlib import Path

import pytest
import torch

from dhrclip import backbone
from dhrclip.backbone import load_clip
from dhrclip.errors import UserError
from dhrclip.synthetic import tiny_clip


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k].float(), sb[k].float()) for k in sa)


def test_openai_format_file_roundtrip_infers_architecture(clip_file):
    model, file = load_clip(pretrained=str(clip_file))  # the default model is ViT-L; the file decides
    assert file == clip_file
    assert same_weights(model, tiny_clip(seed=0))
    assert len(model.visual.transformer.resblocks) == 4
    assert type(model.visual.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"


def test_narrow_openai_file_gets_one_head_per_tower(tmp_path):
    model = tiny_clip(seed=6, vision_width=32, text_width=32, embed_dim=16)
    path = tmp_path / "narrow.pt"
    torch.save(model.state_dict(), path)
    loaded, _ = load_clip(pretrained=str(path))
    assert same_weights(loaded, model)
    assert loaded.visual.transformer.resblocks[0].attn.num_heads == 1
    assert loaded.transformer.resblocks[0].attn.num_heads == 1


def test_half_precision_openai_file_loads_as_fp32(tmp_path):
    model = tiny_clip(seed=3)
    path = tmp_path / "half.pt"
    torch.save({k: v.half() for k, v in model.state_dict().items()}, path)
    loaded, _ = load_clip(pretrained=str(path))
    assert loaded.visual.proj.dtype == torch.float32


def test_jit_archive_loads_through_torch_jit(tmp_path):
    model = tiny_clip(seed=4)
    scripted = torch.jit.script(model)
    path = tmp_path / "tiny_jit.pt"
    torch.jit.save(scripted, str(path))
    assert same_weights(load_clip(pretrained=str(path))[0], model)


def test_safetensors_and_wrapped_open_clip_state_dicts(tmp_path):
    from safetensors.torch import save_file
    model = tiny_clip(seed=5)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "w.safetensors"))
    assert same_weights(load_clip(pretrained=str(tmp_path / "w.safetensors"))[0], model)
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "wrapped.pt")
    assert same_weights(load_clip(pretrained=str(tmp_path / "wrapped.pt"))[0], model)


def test_file_matching_model_config_uses_that_config(tmp_path):
    import open_clip
    model = open_clip.create_model("ViT-B-16", pretrained=None)  # GELU, not QuickGELU
    path = tmp_path / "vitb16.pt"
    torch.save(model.state_dict(), path)
    loaded, _ = load_clip("ViT-B-16", str(path))
    assert type(loaded.visual.transformer.resblocks[0].mlp.gelu).__name__ == "GELU"


def test_unreachable_tag_fails_fast_with_instructions(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("network unreachable")
    monkeypatch.setattr(backbone, "download_pretrained", offline)
    monkeypatch.setattr(backbone, "_reachable", lambda host, timeout=5.0: True)
    started = time.perf_counter()
    with pytest.raises(UserError, match="ViT-L-14-336px.pt.*pretrained"):
        load_clip("ViT-L-14-336-quickgelu", "openai")
    assert time.perf_counter() - started < 10


@pytest.mark.parametrize("pretrained,message", [
    ("/nonexistent/ViT-L-14-336px.pt", "not found"),
    ("not_a_tag", "not an open_clip tag"),
])
def test_bad_pretrained_values(pretrained, message):
    with pytest.raises(UserError, match=message):
        load_clip("ViT-L-14-336-quickgelu", pretrained)


def test_corrupt_and_non_clip_files(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"\x00garbage" * 100)
    with pytest.raises(UserError, match="corrupt"):
        load_clip(pretrained=str(tmp_path / "junk.pt"))
    torch.save({"weight": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="not a CLIP"):
        load_clip(pretrained=str(tmp_path / "other.pt"))


class _Payload:
    def __reduce__(self):
        return (Path.touch, (Path(_Payload.target),))


def test_crafted_pickle_weights_are_refused_without_running(tmp_path):
    _Payload.target = str(tmp_path / "pwned")
    torch.save({"visual.proj": _Payload()}, tmp_path / "evil.pt")
    with pytest.raises(UserError, match="refused"):
        load_clip(pretrained=str(tmp_path / "evil.pt"))
    assert not (tmp_path / "pwned").exists()


def test_offline_tag_without_cache_fails_at_once(monkeypatch):
    monkeypatch.setattr(backbone, "_reachable", lambda host, timeout=5.0: False)
    monkeypatch.setattr(backbone, "_cached", lambda cfg: None)
    with pytest.raises(UserError, match="cannot be reached.*pretrained as /path/to/ViT-L-14-336px.pt"):
        load_clip("ViT-L-14-336-quickgelu", "openai")


def test_offline_tag_uses_a_cached_copy(monkeypatch, clip_file):
    monkeypatch.setattr(backbone, "_reachable", lambda host, timeout=5.0: False)
    monkeypatch.setattr(backbone, "_cached", lambda cfg: clip_file)
    assert len(load_clip("ViT-L-14-336-quickgelu", "openai")[0].visual.transformer.resblocks) == 4


def _openai_style_file(path, model):
    """``model``'s weights with the extra keys only OpenAI's own files carry."""
    state = dict(model.state_dict())
    state.update(input_resolution=torch.tensor(224), context_length=torch.tensor(77), vocab_size=torch.tensor(49408))
    torch.save(state, path)
    return path


def test_openai_weights_in_a_gelu_architecture_are_refused_naming_the_right_model(tmp_path, monkeypatch):
    import open_clip
    path = _openai_style_file(tmp_path / "ViT-B-16.pt", open_clip.create_model("ViT-B-16", pretrained=None))
    with pytest.raises(UserError, match="use model ViT-B-16-quickgelu") as error:
        load_clip("ViT-B-16", str(path))
    assert error.value.field == "model"
    loaded, _ = load_clip("ViT-B-16-quickgelu", str(path))
    assert type(loaded.visual.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"
    plain = tmp_path / "plain.pt"  # the same layout saved by open_clip (no OpenAI keys) is a GELU model's file
    torch.save(open_clip.create_model("ViT-B-16", pretrained=None).state_dict(), plain)
    monkeypatch.setattr(backbone, "_download", lambda model, tag: plain)
    with pytest.raises(UserError, match="QuickGELU"):  # the 'openai' tag means OpenAI's weights
        load_clip("ViT-B-16", "openai")
