"""Loading CLIP weights: OpenAI files, JIT archives, open_clip and safetensors files, tags offline."""
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dhrclip.core import backbone
from dhrclip.core.backbone import load_clip
from dhrclip.data.synthetic import tiny_clip
from dhrclip.errors import UserError


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


def scripted_archive(model, path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated; OpenAI's archives are not
        torch.jit.save(torch.jit.script(model), str(path))
    return path


class Payload(torch.nn.Module):
    """A scripted module whose ``__setstate__`` writes a file: what ``torch.jit.load`` would run."""

    def __init__(self, marker: str):
        super().__init__()
        self.marker = marker

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    @torch.jit.export
    def __getstate__(self) -> str:
        return self.marker

    @torch.jit.export
    def __setstate__(self, state: str) -> None:
        written = torch.from_file(state, True, 8).fill_(1.0)  # creates the file named by the state
        self.marker = state + str(int(written.sum().item()))
        self.training = False


def booby_trapped_clip(path, marker, seed=0):
    """A TorchScript archive of the tiny CLIP (its tensors intact) with a code-running submodule."""
    model = tiny_clip(seed=seed)
    model.payload = Payload(str(marker))
    return scripted_archive(model, path)


def test_torchscript_archive_loads_identical_tensors_without_torch_jit(tmp_path, monkeypatch):
    model = tiny_clip(seed=4)
    path = scripted_archive(model, tmp_path / "tiny_jit.pt")
    def refuse(*args, **kwargs):
        raise AssertionError("torch.jit.load must not be called on a user's file")
    monkeypatch.setattr(torch.jit, "load", refuse)
    loaded, _ = load_clip(pretrained=str(path))
    assert same_weights(loaded, model)
    assert type(loaded.visual.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"  # OpenAI's format


def test_the_trap_is_real_under_torch_jit_load(tmp_path):
    """The archive of the next test does run code when torch.jit.load opens it."""
    marker = tmp_path / "marker"
    path = booby_trapped_clip(tmp_path / "trap.pt", marker)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.load(str(path))
    assert marker.exists()


def test_torchscript_archive_code_never_runs(tmp_path, source_data):
    from conftest import SMALL, train_small

    from dhrclip import DHRCLIP, cli
    from dhrclip.data.synthetic import synthetic_image
    marker = tmp_path / "marker"
    (tmp_path / "shared").mkdir()  # a folder shared as "checkpoint + weights"
    path = booby_trapped_clip(tmp_path / "shared" / "ViT-tiny.pt", marker, seed=0)
    loaded, _ = load_clip(pretrained=str(path))                        # the loader itself
    assert same_weights(loaded, tiny_clip(seed=0))
    train_small(source_data, tmp_path / "shared", path)                 # a run whose checkpoint records it
    DHRCLIP.from_checkpoint(tmp_path / "shared")                        # the API, through the recorded file
    Image.fromarray(synthetic_image("disk", 48, 48, np.random.default_rng(0))).save(tmp_path / "part.png")
    for flags in ([], ["--pretrained", str(path)]):                   # the command line, recorded or named
        cli.predict_main(["--checkpoint_path", str(tmp_path / "shared"), "--input", str(tmp_path / "part.png"),
                          "--save_path", str(tmp_path / "out"), "--overwrite", *flags, *SMALL[-6:]])
    assert not marker.exists()


def test_torchscript_archive_with_foreign_globals_is_refused(tmp_path):
    import pickle
    import zipfile

    class Exploit:
        def __reduce__(self):
            return (print, ("ran",))
    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("evil/data.pkl", pickle.dumps(Exploit(), protocol=2))
        archive.writestr("evil/constants.pkl", pickle.dumps((), protocol=2))
    with pytest.raises(UserError, match=r"print, which a weights file has no need of"):
        load_clip(pretrained=str(path))


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


def test_torchscript_storage_larger_than_the_file_is_refused_before_inflating(tmp_path):
    """A zip bomb: a few hundred KB that declare 80 MB of tensor data."""
    import collections
    import io
    import pickle
    import zipfile

    numel = 20_000_000

    class Storage:
        pass

    class Tensor:
        def __reduce__(self):
            return torch._utils._rebuild_tensor_v2, (Storage(), 0, (numel,), (1,), False, collections.OrderedDict())

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", torch.FloatStorage, "0", "cpu", numel) if isinstance(obj, Storage) else None

    data = io.BytesIO()
    Pickler(data, protocol=2).dump(Tensor())
    path = tmp_path / "bomb.pt"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("bomb/data.pkl", data.getvalue())
        archive.writestr("bomb/constants.pkl", pickle.dumps((), protocol=2))
        archive.writestr("bomb/data/0", bytes(numel * 4))
    assert path.stat().st_size < 1_000_000
    with pytest.raises(UserError, match="storages declare more bytes than the file holds"):
        load_clip(pretrained=str(path))


def test_quick_gelu_tags_other_than_openai_are_refused_in_gelu_architectures(tmp_path, monkeypatch):
    import open_clip

    from dhrclip.core import backbone
    plain = tmp_path / "b32.pt"
    torch.save(open_clip.create_model("ViT-B-32", pretrained=None).state_dict(), plain)
    monkeypatch.setattr(backbone, "_download", lambda model, tag: plain)
    with pytest.raises(UserError, match="trained with QuickGELU .* use model ViT-B-32-quickgelu"):
        backbone.load_clip("ViT-B-32", "laion400m_e32")
