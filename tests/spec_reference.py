"""An independent, deliberately plain implementation of the method (docs/method.md §2-§6, §10) for one image at a time.

It shares no code with the package beyond open_clip's modules: per-head
attention loops, PIL resizing, scipy smoothing, scikit-learn metrics.
"""
from __future__ import annotations

import math

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
STD = np.array([0.26862954, 0.26130258, 0.27577711])


def loop_attention(attn, x, vv: bool):
    """Per-sample, per-head attention written out with plain matrix products."""
    d = x.shape[-1]
    h = attn.num_heads
    hd = d // h
    w, b = attn.in_proj_weight, attn.in_proj_bias
    out = torch.zeros_like(x)
    for n in range(x.shape[0]):
        q = x[n] @ w[:d].T + b[:d]
        k = x[n] @ w[d:2 * d].T + b[d:2 * d]
        v = x[n] @ w[2 * d:].T + b[2 * d:]
        heads = []
        for i in range(h):
            sl = slice(i * hd, (i + 1) * hd)
            qi, ki, vi = (v[:, sl], v[:, sl], v[:, sl]) if vv else (q[:, sl], k[:, sl], v[:, sl])
            heads.append(torch.softmax(qi @ ki.T / math.sqrt(hd), dim=-1) @ vi)
        out[n] = torch.cat(heads, dim=-1) @ attn.out_proj.weight.T + attn.out_proj.bias
    return out


def slow_vision(visual, images, features_list, dpam):
    """docs/method.md §3 read literally, one image at a time, with torch's own nn.MultiheadAttention."""
    blocks = list(visual.transformer.resblocks)
    n_layers = len(blocks)
    taps = {layer: [] for layer in features_list}
    embeddings = []
    for img in images:
        x = visual.conv1(img[None])
        gh, gw = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)[0]
        x = torch.cat([visual.class_embedding[None], x])
        table = visual.positional_embedding
        g0 = int(math.sqrt(table.shape[0] - 1))
        grid = table[1:].reshape(1, g0, g0, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(gh, gw), mode="bilinear", align_corners=False)
        x = visual.ln_pre(x + torch.cat([table[:1], grid.permute(0, 2, 3, 1).reshape(gh * gw, -1)]))
        x_o, x_v = x[None], None
        for i, blk in enumerate(blocks, start=1):
            dual = i >= n_layers - dpam + 2
            if dual and x_v is None:
                x_v = x_o.clone()
            h = blk.ln_1(x_o)
            if dual:
                x_v = x_v + loop_attention(blk.attn, h, vv=True)
            x_o = x_o + blk.attn(h, h, h, need_weights=False)[0]
            x_o = x_o + blk.mlp(blk.ln_2(x_o))
            if i in taps:
                src = x_v if x_v is not None else x_o
                taps[i].append(visual.ln_post(src[0]) @ visual.proj)
        embeddings.append(x_o[0, 0] @ visual.proj)
    return [torch.stack(taps[layer]) for layer in features_list], torch.stack(embeddings)


def slow_text(clip, ctx_pos, ctx_neg, deep):
    """docs/method.md §4: the two prompts with deep prompts, via torch's nn.MultiheadAttention."""
    n_ctx, t_n_ctx = ctx_pos.shape[0], deep[0].shape[0] if deep else 0
    words = " ".join(["X"] * n_ctx)
    tokens = open_clip.tokenize([f"{words} object.", f"{words} damaged object."])
    x = clip.token_embedding(tokens)
    x[0, 1:1 + n_ctx] = ctx_pos
    x[1, 1:1 + n_ctx] = ctx_neg
    x = x + clip.positional_embedding
    for i, blk in enumerate(clip.transformer.resblocks):
        if 1 <= i <= len(deep):
            x[:, 1:1 + t_n_ctx] = deep[i - 1]
        h = blk.ln_1(x)
        x = x + blk.attn(h, h, h, attn_mask=clip.attn_mask, need_weights=False)[0]
        x = x + blk.mlp(blk.ln_2(x))
    x = clip.ln_final(x)
    return F.normalize(x[torch.arange(2), tokens.argmax(-1)] @ clip.text_projection, dim=-1)


def _to_tensor(img: Image.Image) -> torch.Tensor:
    arr = (np.asarray(img, dtype=np.float64) / 255.0 - MEAN) / STD
    return torch.tensor(arr, dtype=torch.float32).permute(2, 0, 1)


def slow_image(clip, text, path, S, P, T, layers, dpam, sigma=8.0, alpha=0.75):
    """Anomaly map (T, T) and image score of one image (docs/method.md §2, §5, §6)."""
    canvas = Image.open(path).convert("RGB").resize((T, T), Image.BICUBIC)
    # the global view: the normalised canvas resized to S×S, bicubic with antialiasing (as a GPU resizes
    # floats; PIL's resize of the uint8 canvas would round every pixel to 8 bits first)
    glob = F.interpolate(_to_tensor(canvas)[None], size=(S, S), mode="bicubic", antialias=True, align_corners=False)
    views = [(glob[0], None)]
    offsets = [0, T - P]
    for y in offsets:
        for x in offsets:
            views.append((_to_tensor(canvas.crop((x, y, x + P, y + P))), (y, x)))
    anomaly = np.zeros((T, T))
    global_logits, tile_logits = None, []
    per_layer = {layer: {"global": None, "sum": np.zeros((2, T, T)), "count": np.zeros((T, T))} for layer in layers}
    for view, offset in views:
        tokens, emb = slow_vision(clip.visual, view[None], layers, dpam)
        logits = F.normalize(emb, dim=-1) @ text.T
        if offset is None:
            global_logits = logits[0]
        else:
            tile_logits.append(logits[0])
        size = S if offset is None else P
        for layer, tok in zip(layers, tokens):
            patches = F.normalize(tok[0, 1:], dim=-1)
            side = int(round(math.sqrt(patches.shape[0])))
            probs = (patches @ text.T / 0.07).softmax(-1).T.reshape(1, 2, side, side)
            probs = F.interpolate(probs, size=(size, size), mode="bilinear", align_corners=False)[0].numpy()
            entry = per_layer[layer]
            if offset is None:
                entry["global"] = F.interpolate(torch.tensor(probs)[None], size=(T, T), mode="bilinear",
                                                align_corners=False)[0].numpy()
            else:
                y, x = offset
                entry["sum"][:, y:y + P, x:x + P] += probs
                entry["count"][y:y + P, x:x + P] += 1
    for entry in per_layer.values():
        m = alpha * entry["global"] + (1 - alpha) * entry["sum"] / entry["count"]
        anomaly += (m[1] + 1 - m[0]) / 2
    anomaly = ndimage.gaussian_filter(anomaly, sigma)
    anomaly = (anomaly - anomaly.min()) / (anomaly.max() - anomaly.min())
    mixed = alpha * global_logits + (1 - alpha) * torch.stack(tile_logits).mean(0)
    score = float((mixed / 0.07).softmax(-1)[1])
    return anomaly, score


def slow_aupro(masks, maps, limit=0.3):
    """MVTec AD AUPRO: sort once, every distinct score a threshold, 8-connected regions."""
    regions = np.zeros(masks.shape, np.int64)
    n = 0
    for i, m in enumerate(masks):
        lab, k = ndimage.label(m, structure=np.ones((3, 3)))
        regions[i] = np.where(lab > 0, lab + n, 0)
        n += k
    sizes = np.bincount(regions.ravel())
    w = np.where(regions > 0, 1.0 / sizes[regions] / n, 0.0).ravel()
    s = maps.ravel()
    order = np.argsort(-s, kind="stable")
    s, w, neg = s[order], w[order], (~masks).ravel()[order]
    fpr = np.cumsum(neg) / neg.sum()
    pro = np.cumsum(w)
    last = np.append(s[1:] != s[:-1], True)
    fpr, pro = np.concatenate([[0], fpr[last]]), np.concatenate([[0], pro[last]])
    keep = fpr <= limit
    x, y = list(fpr[keep]), list(pro[keep])
    if x[-1] < limit:
        j = np.searchsorted(fpr, limit, side="right")
        y.append(pro[j - 1] + (pro[j] - pro[j - 1]) * (limit - fpr[j - 1]) / (fpr[j] - fpr[j - 1]))
        x.append(limit)
    return float(np.trapezoid(y, x) / limit)


def slow_pixel_metrics(masks, maps):
    y, s = masks.ravel(), maps.ravel()
    p, r, _ = precision_recall_curve(y, s)
    f1 = 2 * p * r / np.where(p + r > 0, p + r, 1)
    return {"pixel_auroc": roc_auc_score(y, s), "pixel_aupro": slow_aupro(masks, maps),
            "pixel_f1max": float(f1.max()), "pixel_ap": average_precision_score(y, s)}
