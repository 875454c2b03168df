"""The MatAnyone network (pq-yang/MatAnyone v1 and v2 share it), written for our streaming core.

Only the module tree and the state-dict key names follow the official checkpoint: they are the
interface that lets ``matanyone.pth`` / ``model.safetensors`` load unchanged (562 keys, see
``loader.py``). The forward code is ours. Nothing here downloads anything: the ResNet backbones are
built empty and filled by the checkpoint.

Shapes: ``B`` batch (always 1 here), ``K`` objects (1: the single-object layout), ``h, w`` = stride 16.
Object-grouped tensors are ``(B, K, C, h, w)``. The network is single-object; a multi-object checkpoint
is converted by the loader (its extra "others" input channel sees zeros with one object).

Numerics: a few steps run in float32 even under autocast (the GRU updates, the object summariser's
MLPs, the matting head), as in the official code. ``fp32_island`` makes that explicit.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

# Architecture constants of the released checkpoints (config/model/base.yaml of the official repo).
PIXEL_DIM = 256
KEY_DIM = 64
VALUE_DIM = 256
SENSORY_DIM = 256
EMBED_DIM = 256
NUM_QUERIES = 16
NUM_HEADS = 8
NUM_BLOCKS = 3
FF_DIM = 2048
PE_SCALE = 32.0
PE_TEMPERATURE = 128.0
PIXEL_MEAN = (0.485, 0.456, 0.406)
PIXEL_STD = (0.229, 0.224, 0.225)


@contextmanager
def fp32_island(x: torch.Tensor):
    """Disable autocast for the enclosed ops (callers cast their inputs with ``.float()``)."""
    if torch.is_autocast_enabled(x.device.type):
        with torch.autocast(device_type=x.device.type, enabled=False):
            yield
    else:
        yield


def _group(fn, g: torch.Tensor) -> torch.Tensor:
    """Apply a 4-D op to a (B, K, C, H, W) tensor by folding K into the batch."""
    b, k = g.shape[:2]
    out = fn(g.flatten(0, 1))
    return out.view(b, k, *out.shape[1:])


def _resize_groups(g: torch.Tensor, ratio: float, mode: str) -> torch.Tensor:
    align = False if mode == "bilinear" else None
    return _group(lambda t: F.interpolate(t, scale_factor=ratio, mode=mode, align_corners=align), g)


# ---------------------------------------------------------------------------------------------
# Backbones (ResNet-50 trunk for the image, ResNet-18 trunk for image + mask). Stride on the 3x3.

class _Bottleneck(nn.Module):
    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = None
        if stride != 1 or cin != planes * 4:
            self.downsample = nn.Sequential(nn.Conv2d(cin, planes * 4, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(planes * 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn1(self.conv1(x)).relu_()
        out = self.bn2(self.conv2(out)).relu_()
        out = self.bn3(self.conv3(out))
        out += x if self.downsample is None else self.downsample(x)
        return out.relu_()


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or cin != planes:
            self.downsample = nn.Sequential(nn.Conv2d(cin, planes, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn1(self.conv1(x)).relu_()
        out = self.bn2(self.conv2(out))
        out += x if self.downsample is None else self.downsample(x)
        return out.relu_()


def _layer(block, cin: int, planes: int, count: int, stride: int) -> tuple[nn.Sequential, int]:
    expansion = 4 if block is _Bottleneck else 1
    blocks = [block(cin, planes, stride)]
    blocks += [block(planes * expansion, planes) for _ in range(count - 1)]
    return nn.Sequential(*blocks), planes * expansion


class PixelEncoder(nn.Module):
    """ResNet-50 stem + layers 1-3 (layer1 is called ``res2`` in the checkpoint)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.res2, c = _layer(_Bottleneck, 64, 64, 3, 1)
        self.layer2, c = _layer(_Bottleneck, c, 128, 4, 2)
        self.layer3, c = _layer(_Bottleneck, c, 256, 6, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        f2 = self.bn1(self.conv1(x)).relu_()
        f4 = self.res2(F.max_pool2d(f2, 3, 2, 1))
        f8 = self.layer2(f4)
        f16 = self.layer3(f8)
        return f16, f8, f4, f2, x


class KeyProjection(nn.Module):
    def __init__(self):
        super().__init__()
        self.pix_feat_proj = nn.Conv2d(1024, PIXEL_DIM, 1)
        self.key_proj = nn.Conv2d(PIXEL_DIM, KEY_DIM, 3, padding=1)
        self.d_proj = nn.Conv2d(PIXEL_DIM, 1, 3, padding=1)  # shrinkage
        self.e_proj = nn.Conv2d(PIXEL_DIM, KEY_DIM, 3, padding=1)  # selection

    def forward(self, f16: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.pix_feat_proj(f16)
        shrinkage = self.d_proj(x) ** 2 + 1
        selection = torch.sigmoid(self.e_proj(x))
        return self.key_proj(x), shrinkage, selection


# ---------------------------------------------------------------------------------------------
# Group blocks

class CAResBlock(nn.Module):
    """Residual block with ECA-style channel attention (1-D conv over pooled channels)."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(dim, dim, 3, padding=1)
        self.conv2 = nn.Conv2d(dim, dim, 3, padding=1)
        t = int((abs(math.log2(dim)) + 1) // 2)
        k = t if t % 2 else t + 1
        self.conv = nn.Conv1d(1, 1, kernel_size=k, padding=(k - 1) // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(self.conv1(F.relu(x)).relu_())
        b, c = y.shape[:2]
        w = F.adaptive_avg_pool2d(y, 1).view(b, 1, c)
        w = self.conv(w).transpose(-1, -2).unsqueeze(-1).sigmoid()
        return y * w + x


class GroupResBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.downsample = nn.Conv2d(cin, cout, 1) if cin != cout else None
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)

    def forward(self, g: torch.Tensor, consume: bool = False) -> torch.Tensor:
        """``consume``: g is a temporary of the caller and may be overwritten (saves a copy)."""
        if self.downsample is None:
            skip, act = g, F.relu(g)
        else:
            skip = _group(self.downsample, g)
            act = g.relu_() if consume else F.relu(g)
        out = _group(lambda t: self.conv2(self.conv1(t).relu_()), act)
        out += skip
        return out


class _Distributor(nn.Module):
    """Holds the two 1x1 transforms of a fusion block (checkpoint name ``distributor``)."""

    def __init__(self, x_dim: int, g_dim: int, out_dim: int):
        super().__init__()
        self.x_transform = nn.Conv2d(x_dim, out_dim, 1)
        self.g_transform = nn.Conv2d(g_dim, out_dim, 1)


class GroupFeatureFusionBlock(nn.Module):
    """out = CARes(CARes(x_transform(x) broadcast over objects + g_transform(g)))."""

    def __init__(self, x_dim: int, g_dim: int, out_dim: int):
        super().__init__()
        self.distributor = _Distributor(x_dim, g_dim, out_dim)
        self.block1 = CAResBlock(out_dim)
        self.block2 = CAResBlock(out_dim)

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        b, k = g.shape[:2]
        x = self.distributor.x_transform(x).unsqueeze(1).expand(-1, k, -1, -1, -1)
        g = x + _group(self.distributor.g_transform, g)
        g = self.block2(self.block1(g.flatten(0, 1)))
        return g.view(b, k, *g.shape[1:])


def _gru(h: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    dim = values.shape[2] // 3
    forget = torch.sigmoid(values[:, :, :dim])
    update = torch.sigmoid(values[:, :, dim:dim * 2])
    new = torch.tanh(values[:, :, dim * 2:])
    return forget * h * (1 - update) + update * new


class SensoryDeepUpdater(nn.Module):
    def __init__(self):
        super().__init__()
        self.transform = nn.Conv2d(VALUE_DIM + SENSORY_DIM, SENSORY_DIM * 3, 3, padding=1)

    def forward(self, g: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        with fp32_island(g):
            g, h = g.float(), h.float()
            return _gru(h, _group(self.transform, torch.cat([g, h], 2)))


class SensoryUpdaterFullscale(nn.Module):
    """Decoder-side sensory GRU fed by every decoder scale (16 .. 1), pooled to stride 16."""

    def __init__(self):
        super().__init__()
        self.g16_conv = nn.Conv2d(256, SENSORY_DIM, 1)
        self.g8_conv = nn.Conv2d(128, SENSORY_DIM, 1)
        self.g4_conv = nn.Conv2d(128, SENSORY_DIM, 1)
        self.g2_conv = nn.Conv2d(64, SENSORY_DIM, 1)
        self.g1_conv = nn.Conv2d(17, SENSORY_DIM, 1)
        self.transform = nn.Conv2d(SENSORY_DIM * 2, SENSORY_DIM * 3, 3, padding=1)

    def forward(self, feats: list[torch.Tensor], h: torch.Tensor, p1_pooled: bool = False) -> torch.Tensor:
        """feats = [p16, p8, p4, p2, p1 (17 ch: features + alpha logit)]; ``p1_pooled``: p1 is already
        area-pooled to stride 16 (the banded decoder pools band by band)."""
        p16, p8, p4, p2, p1 = feats
        p1 = p1 if p1_pooled else _resize_groups(p1, 1 / 16, "area")
        g = (_group(self.g16_conv, p16) + _group(self.g8_conv, _resize_groups(p8, 1 / 2, "area"))
             + _group(self.g4_conv, _resize_groups(p4, 1 / 4, "area"))
             + _group(self.g2_conv, _resize_groups(p2, 1 / 8, "area"))
             + _group(self.g1_conv, p1))
        with fp32_island(g):
            g, h = g.float(), h.float()
            return _gru(h, _group(self.transform, torch.cat([g, h], 2)))


# ---------------------------------------------------------------------------------------------
# Mask encoder, pixel fuser, decoder, uncertainty head

class MaskEncoder(nn.Module):
    """ResNet-18 trunk on [image, mask(, others)] -> value map; optional deep sensory update."""

    def __init__(self, in_extra: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(3 + in_extra, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1, c = _layer(_BasicBlock, 64, 64, 2, 1)
        self.layer2, c = _layer(_BasicBlock, c, 128, 2, 2)
        self.layer3, c = _layer(_BasicBlock, c, 256, 2, 2)
        self.fuser = GroupFeatureFusionBlock(PIXEL_DIM, 256, VALUE_DIM)
        self.sensory_update = SensoryDeepUpdater()

    def forward(self, image: torch.Tensor, pix_feat: torch.Tensor, sensory: torch.Tensor,
                masks: torch.Tensor, deep_update: bool) -> tuple[torch.Tensor, torch.Tensor]:
        b, k = masks.shape[:2]
        g = torch.cat([image.unsqueeze(1).expand(-1, k, -1, -1, -1), masks.unsqueeze(2)], 2)
        g = g.flatten(0, 1)
        g = F.relu(F.max_pool2d(self.bn1(self.conv1(g)), 3, 2, 1))  # pool before relu, as trained
        g = self.layer3(self.layer2(self.layer1(g)))
        g = self.fuser(pix_feat, g.view(b, k, *g.shape[1:]))
        new_sensory = self.sensory_update(g, sensory) if deep_update else sensory
        return g, new_sensory


class PixelFeatureFuser(nn.Module):
    def __init__(self):
        super().__init__()
        self.fuser = GroupFeatureFusionBlock(PIXEL_DIM, VALUE_DIM, EMBED_DIM)
        self.sensory_compress = nn.Conv2d(SENSORY_DIM + 1, VALUE_DIM, 1)

    def forward(self, pix_feat: torch.Tensor, pixel_memory: torch.Tensor, sensory: torch.Tensor,
                last_mask16: torch.Tensor) -> torch.Tensor:
        readout = _group(self.sensory_compress, torch.cat([sensory, last_mask16.unsqueeze(2)], 2))
        return self.fuser(pix_feat, pixel_memory + readout)


class _Upsample(nn.Module):
    """x2 bilinear upsample, add the skip feature, then a group residual block."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.out_conv = GroupResBlock(cin, cout)

    def forward(self, g: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        g = _resize_groups(g, 2, "bilinear")
        g += skip.unsqueeze(1)  # (the official adds skip + g: same sum, no extra full-size tensor)
        del skip
        return self.out_conv(g, consume=True)


class _FeatProc(nn.Module):
    def __init__(self):
        super().__init__()
        self.transforms = nn.ModuleList(nn.Conv2d(i, o, 1) for i, o in
                                        zip((512, 256, 64, 3), (256, 128, 128, 64)))


class MaskDecoder(nn.Module):
    """Upsamples the readout to stride 1 with encoder skips; ``pred_mat`` gives the alpha logit."""

    def __init__(self):
        super().__init__()
        self.sensory_update = SensoryUpdaterFullscale()
        self.decoder_feat_proc = _FeatProc()
        self.up_16_8 = _Upsample(256, 128)
        self.up_8_4 = _Upsample(128, 128)
        self.up_4_2 = _Upsample(128, 64)
        self.up_2_1 = _Upsample(64, 16)
        self.pred_seg = nn.Conv2d(16, 1, 3, padding=1)  # segmentation head: training only
        self.pred_mat = nn.Conv2d(16, 1, 3, padding=1)

    def forward(self, ms_feat: tuple[torch.Tensor, ...], readout: torch.Tensor, sensory: torch.Tensor,
                update_sensory: bool) -> tuple[torch.Tensor, torch.Tensor]:
        b, k = readout.shape[:2]
        proj = self.decoder_feat_proc.transforms
        # each skip projection is made just before its stage: at 4K the stride-1 one alone is 2 GiB
        p16 = readout
        p8 = self.up_16_8(p16, proj[0](ms_feat[1]))
        p4 = self.up_8_4(p8, proj[1](ms_feat[2]))
        p2 = self.up_4_2(p4, proj[2](ms_feat[3]))
        full_h, full_w = ms_feat[4].shape[-2:]
        rows = max(16, self.band_bytes // (64 * 4 * full_w * b * k) // 16 * 16)
        if full_h <= rows:
            p1 = self.up_2_1(p2, proj[3](ms_feat[4]))
            logits = self._head(p1)
            if update_sensory:
                p1 = torch.cat([p1, logits.view(b, k, 1, *logits.shape[-2:])], 2)
                sensory = self.sensory_update([p16, p8, p4, p2, p1], sensory)
        else:
            logits, pooled = self._stride1_in_bands(p2, ms_feat[4], rows)
            if update_sensory:
                sensory = self.sensory_update([p16, p8, p4, p2, pooled], sensory, p1_pooled=True)
        return sensory, logits.view(b, k, *logits.shape[-2:])

    # the stride-1 stage holds 64-channel full-resolution tensors (2 GiB each at 4K in fp32): above
    # this size it runs in horizontal bands with a halo, which gives the same values
    band_bytes = 256 << 20

    def _head(self, p1: torch.Tensor) -> torch.Tensor:
        with fp32_island(p1):
            return self.pred_mat(F.relu(p1.flatten(0, 1).float()))

    def _stride1_in_bands(self, p2: torch.Tensor, f1: torch.Tensor, rows: int):
        """up_2_1 + pred_mat band by band. Output rows [y0, y1) need p1 rows +-1 (pred_mat), which need
        the upsampled input rows +-2 more (two 3x3 convs): a halo of 3 rows, recomputed per band and
        cropped. The bilinear x2 upsample of a p2 crop with 2 spare rows is exact on the rows kept.
        Bands are multiples of 16 rows, so the stride-16 area pooling for the sensory update can be
        done band by band as well. -> logits (B*K, 1, H, W) float32, pooled p1 (B, K, 17, H/16, W/16)."""
        b, k, _, h2, _ = p2.shape
        full_h, full_w = f1.shape[-2:]
        proj = self.decoder_feat_proc.transforms[3]
        logits = torch.empty((b * k, 1, full_h, full_w), device=p2.device, dtype=torch.float32)
        pooled = []
        for y0 in range(0, full_h, rows):
            y1 = min(full_h, y0 + rows)
            ga, gb = max(0, y0 - 3), min(full_h, y1 + 3)  # rows of the upsampled input needed
            s0, s1 = max(0, ga // 2 - 2), min(h2, (gb + 1) // 2 + 2)  # p2 rows feeding them
            g = _resize_groups(p2[:, :, :, s0:s1], 2, "bilinear")[:, :, :, ga - 2 * s0:gb - 2 * s0]
            g += proj(f1[:, :, ga:gb]).unsqueeze(1)
            p1 = self.up_2_1.out_conv(g, consume=True)
            del g
            lg = self._head(p1)[:, :, y0 - ga:y1 - ga]
            logits[:, :, y0:y1] = lg
            p1 = torch.cat([p1[:, :, :, y0 - ga:y1 - ga], lg.view(b, k, 1, y1 - y0, full_w)], 2)
            pooled.append(_resize_groups(p1, 1 / 16, "area"))
        return logits, torch.cat(pooled, 3)


class UncertPred(nn.Module):
    """Region-adaptive fusion gate: where to trust the memory readout vs the last frame's value."""

    def __init__(self):
        super().__init__()
        self.conv1x1_v2 = nn.Conv2d(PIXEL_DIM * 2 + 1 + VALUE_DIM, 64, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.conv3x3 = nn.Conv2d(64, 32, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(32)
        self.conv3x3_out = nn.Conv2d(32, 1, 3, padding=1, bias=False)

    def forward(self, last_feat, cur_feat, last_mask, mem_val_diff) -> torch.Tensor:
        last_mask = F.interpolate(last_mask, size=last_feat.shape[-2:], mode="area")
        x = torch.cat([last_feat, cur_feat, last_mask, mem_val_diff], 1)
        x = F.relu(self.bn1(self.conv1x1_v2(x)))
        x = F.relu(self.bn2(self.conv3x3(x)))
        return self.conv3x3_out(x)


# ---------------------------------------------------------------------------------------------
# Object transformer and summariser

class SinePE(nn.Module):
    """2-D sine/cosine encoding over a normalised grid; ``inv_freq`` is a checkpoint buffer."""

    def __init__(self, dim: int = EMBED_DIM):
        super().__init__()
        self.dim = int(math.ceil(dim / 4) * 2)
        inv = 1.0 / (PE_TEMPERATURE ** (torch.arange(0, self.dim, 2).float() / self.dim))
        self.register_buffer("inv_freq", inv)
        self._cache: tuple[tuple, torch.Tensor] | None = None

    def forward(self, h: int, w: int, dtype: torch.dtype) -> torch.Tensor:
        """(h, w, 2*dim) channel-last encoding, cached per size."""
        key = (h, w, dtype, self.inv_freq.device, self.inv_freq.data_ptr(), self.inv_freq._version)
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        dev = self.inv_freq.device
        pos_y = torch.arange(h, device=dev, dtype=self.inv_freq.dtype)
        pos_x = torch.arange(w, device=dev, dtype=self.inv_freq.dtype)
        pos_y = pos_y / (pos_y[-1] + 1e-6) * PE_SCALE
        pos_x = pos_x / (pos_x[-1] + 1e-6) * PE_SCALE
        ey = torch.outer(pos_y, self.inv_freq)
        ex = torch.outer(pos_x, self.inv_freq)
        ey = torch.stack((ey.sin(), ey.cos()), -1).flatten(-2)
        ex = torch.stack((ex.sin(), ex.cos()), -1).flatten(-2)
        emb = torch.empty((h, w, self.dim * 2), device=dev, dtype=dtype)
        emb[:, :, :self.dim] = ex
        emb[:, :, self.dim:] = ey.unsqueeze(1)
        self._cache = (key, emb)
        return emb


class _CrossAttention(nn.Module):
    def __init__(self, norm: bool):
        super().__init__()
        self.cross_attn = nn.MultiheadAttention(EMBED_DIM, NUM_HEADS, batch_first=True)
        self.norm = nn.LayerNorm(EMBED_DIM) if norm else None

    def forward(self, x, mem, x_pe, mem_pe, attn_mask=None) -> torch.Tensor:
        if self.norm is not None:
            x = self.norm(x)
        out = self.cross_attn(x + x_pe, mem + mem_pe, mem, attn_mask=attn_mask, need_weights=False)[0]
        return x + out  # the residual starts from the normed x


class _SelfAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(EMBED_DIM, NUM_HEADS, batch_first=True)
        self.norm = nn.LayerNorm(EMBED_DIM)

    def forward(self, x, pe) -> torch.Tensor:
        x = self.norm(x)
        q = x + pe
        return x + self.self_attn(q, q, x, need_weights=False)[0]


class _FFN(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear1 = nn.Linear(EMBED_DIM, FF_DIM)
        self.linear2 = nn.Linear(FF_DIM, EMBED_DIM)
        self.norm = nn.LayerNorm(EMBED_DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.linear2(F.relu(self.linear1(self.norm(x))))


class _PixelFFN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = CAResBlock(EMBED_DIM)


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.read_from_pixel = _CrossAttention(norm=True)
        self.self_attn = _SelfAttention()
        self.ffn = _FFN()
        self.read_from_query = _CrossAttention(norm=False)
        self.pixel_ffn = _PixelFFN()

    def forward(self, q, pixel_flat, q_pe, pixel_pe, attn_mask, hw) -> tuple[torch.Tensor, torch.Tensor]:
        q = self.read_from_pixel(q, pixel_flat, q_pe, pixel_pe, attn_mask)
        q = self.ffn(self.self_attn(q, q_pe))
        pixel_flat = self.read_from_query(pixel_flat, q, pixel_pe, q_pe)
        bk = pixel_flat.shape[0]
        pix = pixel_flat.view(bk, hw[0], hw[1], EMBED_DIM).permute(0, 3, 1, 2).contiguous()
        pix = self.pixel_ffn.conv(pix)
        return q, pix


class QueryTransformer(nn.Module):
    """16 object queries read the pixels (masked by an auxiliary fg/bg prediction) and write back."""

    def __init__(self):
        super().__init__()
        self.query_init = nn.Embedding(NUM_QUERIES, EMBED_DIM)
        self.query_emb = nn.Embedding(NUM_QUERIES, EMBED_DIM)
        self.summary_to_query_init = nn.Linear(EMBED_DIM, EMBED_DIM)
        self.summary_to_query_emb = nn.Linear(EMBED_DIM, EMBED_DIM)
        self.pixel_init_proj = nn.Conv2d(EMBED_DIM, EMBED_DIM, 1)
        self.pixel_emb_proj = nn.Conv2d(EMBED_DIM, EMBED_DIM, 1)
        self.spatial_pe = SinePE()
        self.blocks = nn.ModuleList(_Block() for _ in range(NUM_BLOCKS))
        self.mask_pred = nn.ModuleList(nn.Sequential(nn.ReLU(), nn.Conv2d(EMBED_DIM, 1, 1))
                                       for _ in range(NUM_BLOCKS + 1))

    def _attn_mask(self, aux: torch.Tensor) -> torch.Tensor:
        """(B*K*heads, Q, HW) bool, True = blocked: the first half of the queries see the predicted
        foreground only, the second half the background only; a row blocked everywhere is opened."""
        with fp32_island(aux):
            prob = aux.float().sigmoid()
            both = torch.cat([torch.prod(1 - prob, dim=1, keepdim=True), prob], 1).clamp(1e-7, 1 - 1e-7)
            logits = torch.log(both / (1 - both))
        fg = (logits[:, 1:] >= logits.max(dim=1, keepdim=True)[0]).flatten(2)  # (B, K, HW)
        half = NUM_QUERIES // 2
        rep = (1, 1, NUM_HEADS, half, 1)
        blocked_fg = (~fg).unsqueeze(2).unsqueeze(2).repeat(*rep).flatten(0, 2)
        blocked_bg = fg.unsqueeze(2).unsqueeze(2).repeat(*rep).flatten(0, 2)
        mask = torch.cat([blocked_fg, blocked_bg], 1)
        mask[torch.where(mask.sum(-1) == mask.shape[-1])] = False
        return mask

    def forward(self, pixel: torch.Tensor, obj_mem: torch.Tensor, *, all_aux: bool = False,
                trace: dict | None = None) -> torch.Tensor:
        """pixel (B, K, C, h, w); obj_mem (B, K, Q, C+1) running sums (last channel = area)."""
        b, k, _, h, w = pixel.shape
        obj = obj_mem.view(b * k, NUM_QUERIES, EMBED_DIM + 1)
        obj_values = obj[:, :, :-1] / (obj[:, :, -1:] + 1e-4)
        query = self.query_init.weight.unsqueeze(0) + self.summary_to_query_init(obj_values)
        query_pe = self.query_emb.weight.unsqueeze(0) + self.summary_to_query_emb(obj_values)

        flat = pixel.flatten(0, 1)
        pix = self.pixel_init_proj(flat)
        pix_emb = self.pixel_emb_proj(flat).flatten(2).transpose(1, 2)
        pixel_pe = self.spatial_pe(h, w, flat.dtype).view(1, h * w, -1) + pix_emb

        aux = self.mask_pred[0](pix).view(b, k, h, w)
        if trace is not None:
            trace["aux_logits_0"] = aux
        for i, block in enumerate(self.blocks):
            mask = self._attn_mask(aux)
            pixel_flat = pix.flatten(2).transpose(1, 2).contiguous()
            query, pix = block(query, pixel_flat, query_pe, pixel_pe, mask, (h, w))
            if i + 1 < NUM_BLOCKS or all_aux or trace is not None:
                aux = self.mask_pred[i + 1](pix).view(b, k, h, w)
                if trace is not None:
                    trace[f"aux_logits_{i + 1}"] = aux
        return pix.view(b, k, *pix.shape[1:])


class ObjectSummarizer(nn.Module):
    """16 weighted pools of the mask value (8 inside the mask, 8 outside): sums and areas."""

    def __init__(self):
        super().__init__()
        self.pos_enc = SinePE()
        self.input_proj = nn.Linear(VALUE_DIM, EMBED_DIM)
        self.feature_pred = nn.Sequential(nn.Linear(EMBED_DIM, EMBED_DIM), nn.ReLU(),
                                          nn.Linear(EMBED_DIM, EMBED_DIM))
        self.weights_pred = nn.Sequential(nn.Linear(EMBED_DIM, EMBED_DIM), nn.ReLU(),
                                          nn.Linear(EMBED_DIM, NUM_QUERIES))

    def forward(self, masks: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        h, w = value.shape[-2:]
        masks = F.interpolate(masks, size=(h, w), mode="area").unsqueeze(-1)
        half = NUM_QUERIES // 2
        allowed = torch.cat([masks.expand(-1, -1, -1, -1, half), (1 - masks).expand(-1, -1, -1, -1, half)], -1)
        value = self.input_proj(value.permute(0, 1, 3, 4, 2))
        value = value + self.pos_enc(h, w, value.dtype)
        with fp32_island(value):
            value = value.float()
            feature = self.feature_pred(value)
            weights = self.weights_pred(value).sigmoid() * allowed
            sums = torch.einsum("bkhwq,bkhwc->bkqc", weights, feature)
            area = weights.flatten(2, 3).sum(2).unsqueeze(-1)
        return torch.cat([sums, area], -1)


class _AuxComputer(nn.Module):
    """Training-only auxiliary head; kept so that the checkpoint loads strictly."""

    def __init__(self):
        super().__init__()
        self.sensory_aux = nn.Module()
        self.sensory_aux.projection = nn.Conv2d(SENSORY_DIM, SENSORY_DIM + 1, 1)


# ---------------------------------------------------------------------------------------------

class MatAnyoneNet(nn.Module):
    """All sub-networks under their checkpoint names; the per-step glue lives in ``core.py``."""

    def __init__(self):
        super().__init__()
        self.pixel_encoder = PixelEncoder()
        self.pix_feat_proj = nn.Conv2d(1024, PIXEL_DIM, 1)
        self.key_proj = KeyProjection()
        self.mask_encoder = MaskEncoder()
        self.mask_decoder = MaskDecoder()
        self.pixel_fuser = PixelFeatureFuser()
        self.object_transformer = QueryTransformer()
        self.object_summarizer = ObjectSummarizer()
        self.aux_computer = _AuxComputer()
        self.temp_sparity = UncertPred()
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(-1, 1, 1), persistent=False)
        self.eval()

    def train(self, mode: bool = True) -> "MatAnyoneNet":
        # inference only: BatchNorm always uses its running statistics
        return super().train(False)

    def normalise(self, image: torch.Tensor) -> torch.Tensor:
        return (image - self.pixel_mean) / self.pixel_std

    def encode_image(self, image: torch.Tensor):
        """image (B, 3, H, W) in [0, 1], padded -> (f16, f8, f4, f2, f1), pix_feat, key, shrinkage, selection."""
        ms = self.pixel_encoder(self.normalise(image))
        pix_feat = self.pix_feat_proj(ms[0])
        key, shrinkage, selection = self.key_proj(ms[0])
        return ms, pix_feat, key, shrinkage, selection

    def encode_mask(self, image: torch.Tensor, pix_feat: torch.Tensor, sensory: torch.Tensor,
                    masks: torch.Tensor, *, deep_update: bool, summarise: bool = True):
        """-> mask value (B,K,256,h,w), sensory, object summaries (B,K,16,257) or None."""
        value, sensory = self.mask_encoder(self.normalise(image), pix_feat, sensory, masks, deep_update)
        summaries = self.object_summarizer(masks, value) if summarise else None
        return value, sensory, summaries

    def pixel_fusion(self, pix_feat, value, sensory, last_mask) -> torch.Tensor:
        last_mask16 = F.interpolate(last_mask, size=sensory.shape[-2:], mode="area")
        return self.pixel_fuser(pix_feat, value, sensory, last_mask16)

    def uncertainty(self, last_pix_feat, pix_feat, last_mask, mem_val_diff) -> torch.Tensor:
        return self.temp_sparity(last_pix_feat, pix_feat, last_mask, mem_val_diff)

    def segment(self, ms_feat, readout, sensory, update_sensory: bool):
        """-> new sensory, raw alpha logits (B, K, H, W) in float32."""
        return self.mask_decoder(ms_feat, readout, sensory, update_sensory)


def layout_extra_keys() -> dict[str, int]:
    """The two keys whose input-channel count differs between the single (here) and multi layouts."""
    return {"mask_encoder.conv1.weight": 4, "pixel_fuser.sensory_compress.weight": SENSORY_DIM + 1}
