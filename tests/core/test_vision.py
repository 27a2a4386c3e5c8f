"""V-V attention and the dual-path vision encoder against explicit, slow versions of docs/method.md §3."""
import torch
from spec_reference import loop_attention, slow_vision

from dhrclip.core.attention import dual_attention, self_attention
from dhrclip.core.vision import VisionEncoder
from dhrclip.data.synthetic import tiny_clip


def test_vv_and_plain_attention_match_per_head_loop():
    attn = tiny_clip().visual.transformer.resblocks[0].attn  # 2 heads
    assert attn.num_heads == 2
    x = torch.randn(3, 7, attn.embed_dim)
    original, vv = dual_attention(attn, x)
    assert torch.allclose(original, loop_attention(attn, x, vv=False), atol=1e-5)
    assert torch.allclose(vv, loop_attention(attn, x, vv=True), atol=1e-5)
    assert torch.allclose(self_attention(attn, x), original, atol=1e-6)


def test_vision_encoder_matches_slow_spec_reading():
    visual = tiny_clip().visual
    enc = VisionEncoder(visual, features_list=[1, 2, 3, 4], dpam=3)
    images = torch.randn(2, 3, 70, 84)  # a grid other than the native 4x4, non-square
    with torch.no_grad():
        out = enc(images)
        tokens, emb = slow_vision(visual, images, [1, 2, 3, 4], dpam=3)
    assert out.grid == (5, 6)
    for got, want in zip(out.tokens, tokens):
        assert torch.allclose(got, want, atol=1e-4)
    assert torch.allclose(out.embedding, emb, atol=1e-4)


def test_taps_are_distinct_layers_and_positional_table_is_untouched():
    visual = tiny_clip().visual
    before = visual.positional_embedding.detach().clone()
    enc = VisionEncoder(visual, features_list=[3, 4], dpam=3)
    with torch.no_grad():
        enc(torch.randn(1, 3, 56, 56))
        enc(torch.randn(1, 3, 98, 98))
        out = enc(torch.randn(1, 3, 70, 70))
    assert not torch.allclose(out.tokens[0], out.tokens[1])
    assert torch.equal(visual.positional_embedding, before)


def test_view_size_off_the_patch_grid_uses_whole_patches():
    enc = VisionEncoder(tiny_clip().visual, features_list=[4], dpam=3)
    view = torch.randn(1, 3, 60, 75)
    with torch.no_grad():
        out, cropped = enc(view), enc(view[..., :56, :70])
    assert out.grid == (4, 5)
    assert torch.allclose(out.tokens[0], cropped.tokens[0], atol=1e-6)
