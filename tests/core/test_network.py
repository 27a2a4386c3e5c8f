"""The DHR-CLIP network: encoding views in batches and precision of the text tower."""
import torch
from conftest import small_config

from dhrclip import DHRCLIP


def test_text_features_stay_fp32_when_the_vision_tower_runs_in_bf16(clip_file):
    torch.manual_seed(0)
    half = DHRCLIP.create(small_config(clip_file), device="cpu", precision="bf16").model
    full = DHRCLIP.create(small_config(clip_file), device="cpu", precision="fp32").model
    full.prompt_learner.load_state_dict(half.prompt_learner.state_dict())
    text = half.text_features()
    assert text.dtype == torch.float32 and torch.equal(text, full.text_features())
    with torch.autocast("cpu", dtype=torch.bfloat16):  # even inside a caller's autocast
        assert torch.equal(half.text_features(), text)
    feats = half.encode_views(torch.randint(0, 256, (1, 3, 112, 112), dtype=torch.uint8))
    assert feats.global_tokens[0].dtype == torch.bfloat16  # the vision tower does run in bf16
    assert all(m.dtype == torch.float32 for m in half.layer_maps(feats, text))


def test_encoding_batched_equals_one_by_one(clip_file):
    model = DHRCLIP.create(small_config(clip_file), device="cpu").model
    canvas = torch.randint(0, 256, (3, 3, 112, 112), dtype=torch.uint8)
    text = model.text_features()
    together = model.anomaly_maps(model.encode_views(canvas), text)
    alone = torch.cat([model.anomaly_maps(model.encode_views(canvas[i:i + 1]), text) for i in range(3)])
    assert torch.allclose(together, alone, atol=1e-5)
