"""Object-agnostic deep prompts (docs/method.md §4): positions and features."""
import open_clip
import pytest
import torch
import torch.nn.functional as F

from dhrclip.core.prompts import PromptLearner, TextEncoder
from dhrclip.data.synthetic import tiny_clip
from dhrclip.errors import UserError


def make(depth=3, n_ctx=5, t_n_ctx=2):
    clip = tiny_clip()
    prompts = PromptLearner(clip.ln_final.weight.shape[0], n_ctx=n_ctx, depth=depth, t_n_ctx=t_n_ctx)
    return clip, prompts, TextEncoder(clip, prompts)


def test_each_block_sees_its_deep_prompt_at_positions_1_to_t_n_ctx():
    clip, prompts, enc = make(depth=3, n_ctx=5, t_n_ctx=2)
    seen = []
    hooks = [blk.ln_1.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().clone()))
             for blk in clip.transformer.resblocks]
    with torch.no_grad():
        enc()
    for h in hooks:
        h.remove()
    pos = clip.positional_embedding
    # block 0: the plain prompt, learned words at 1..n_ctx
    assert torch.allclose(seen[0][0, 1:6], prompts.ctx_pos[0, 0] + pos[1:6], atol=1e-6)
    assert torch.allclose(seen[0][1, 1:6], prompts.ctx_neg[0, 0] + pos[1:6], atol=1e-6)
    # blocks 1 and 2 (depth 3): positions 1..2 replaced for both prompts; block 3 untouched
    for i in (1, 2):
        for row in (0, 1):
            assert torch.equal(seen[i][row, 1:3], prompts.compound_prompts_text[i - 1])
    assert not torch.equal(seen[3][0, 1:3], prompts.compound_prompts_text[1])


def test_text_features_match_independent_computation():
    clip, prompts, enc = make(depth=3, n_ctx=5, t_n_ctx=2)
    tokens = open_clip.tokenize(["X X X X X object.", "X X X X X damaged object."])
    with torch.no_grad():
        x = clip.token_embedding(tokens)
        x[0, 1:6] = prompts.ctx_pos[0, 0]
        x[1, 1:6] = prompts.ctx_neg[0, 0]
        x = x + clip.positional_embedding
        for i, blk in enumerate(clip.transformer.resblocks):
            if 1 <= i < 3:
                x[:, 1:3] = prompts.compound_prompts_text[i - 1]
            h = blk.ln_1(x)
            x = x + blk.attn(h, h, h, attn_mask=clip.attn_mask, need_weights=False)[0]
            x = x + blk.mlp(blk.ln_2(x))
        x = clip.ln_final(x)
        want = F.normalize(x[torch.arange(2), tokens.argmax(-1)] @ clip.text_projection, dim=-1)
        got = enc()
    assert got.shape == (2, 64)
    assert torch.allclose(got, want, atol=1e-5)


def test_gradients_reach_every_prompt_tensor():
    _, prompts, enc = make()
    enc().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in prompts.parameters())


def test_depth_beyond_text_layers_is_a_user_error():
    with pytest.raises(UserError, match="depth 9 exceeds") as error:
        make(depth=9)
    assert error.value.field == "depth"
