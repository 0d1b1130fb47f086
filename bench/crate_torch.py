"""Faithful PyTorch CRATE (the computation of the official model/crate.py: 3 GEMMs in ISTA),
checked against tests/golden before timing, for the whitebox benchmark. Not part of the product.

--form official: that computation in f32; --form algebra: whitebox's algebra in PyTorch (ISTA as
one GEMM relu(x·M − ηλ), M = I + η(W − WᵀW); attention by F.scaled_dot_product_attention), f32;
--form bf16: the official computation under torch.autocast("cpu", torch.bfloat16)."""
import argparse, contextlib, json, math, os, resource, statistics, sys, time

import torch
import torch.nn as nn
import torch.nn.functional as F

ALGEBRA = False  # set by --form algebra


class PreNorm(nn.Module):
    def __init__(self, dim, fn):
        super().__init__()
        self.norm, self.fn = nn.LayerNorm(dim), fn

    def forward(self, x):
        return self.fn(self.norm(x))


class FeedForward(nn.Module):  # the ISTA block, as in the official code
    def __init__(self, dim, step_size=0.1, lambd=0.1):
        super().__init__()
        self.weight = nn.Parameter(torch.Tensor(dim, dim))
        nn.init.kaiming_uniform_(self.weight)
        self.step_size, self.lambd = step_size, lambd

    def forward(self, x):
        if ALGEBRA:  # x + η(xW − xWᵀW) − ηλ = x·M − ηλ
            w = self.weight
            m = torch.eye(w.shape[0], dtype=w.dtype) + self.step_size * (w - w.t() @ w)
            return F.relu(x @ m - self.step_size * self.lambd)
        x1 = F.linear(x, self.weight, bias=None)
        grad_1 = F.linear(x1, self.weight.t(), bias=None)
        grad_2 = F.linear(x, self.weight.t(), bias=None)
        grad_update = self.step_size * (grad_2 - grad_1) - self.step_size * self.lambd
        return F.relu(x + grad_update)


class Attention(nn.Module):
    def __init__(self, dim, heads, dim_head):
        super().__init__()
        inner = heads * dim_head
        self.heads, self.scale = heads, dim_head ** -0.5
        self.qkv = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(0.0))

    def forward(self, x):
        b, n, _ = x.shape
        w = self.qkv(x).view(b, n, self.heads, -1).transpose(1, 2)
        if ALGEBRA:
            out = F.scaled_dot_product_attention(w, w, w).transpose(1, 2).reshape(b, n, -1)
            return self.to_out(out)
        attn = torch.softmax(torch.matmul(w, w.transpose(-1, -2)) * self.scale, dim=-1)
        out = torch.matmul(attn, w).transpose(1, 2).reshape(b, n, -1)
        return self.to_out(out)


class Transformer(nn.Module):
    def __init__(self, dim, depth, heads, dim_head, ista):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList([PreNorm(dim, Attention(dim, heads, dim_head)), PreNorm(dim, FeedForward(dim, ista))])
            for _ in range(depth))

    def forward(self, x):
        for attn, ff in self.layers:
            x = ff(attn(x) + x)
        return x


class CRATE(nn.Module):
    def __init__(self, image_size, patch_size, num_classes, dim, depth, heads, pool="cls", channels=3,
                 dim_head=64, dropout=0.0, emb_dropout=0.0, ista=0.1, arch="crate"):
        super().__init__()
        self.p = patch_size
        n = (image_size // patch_size) ** 2
        pd = channels * patch_size * patch_size
        self.to_patch_embedding = nn.Sequential(nn.Identity(), nn.LayerNorm(pd), nn.Linear(pd, dim), nn.LayerNorm(dim))
        self.pos_embedding = nn.Parameter(torch.randn(1, n + 1, dim))
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.transformer = Transformer(dim, depth, heads, dim_head, ista)
        self.pool = pool
        self.mlp_head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, num_classes))

    def forward(self, img):
        b, c, hh, ww = img.shape
        p = self.p
        x = img.reshape(b, c, hh // p, p, ww // p, p).permute(0, 2, 4, 3, 5, 1).reshape(b, (hh // p) * (ww // p), p * p * c)
        x = self.to_patch_embedding(x)
        x = torch.cat([self.cls_token.expand(b, -1, -1), x], dim=1) + self.pos_embedding[:, : x.shape[1] + 1]
        x = self.transformer(x)
        x = x.mean(dim=1) if self.pool == "mean" else x[:, 0]
        return self.mlp_head(x)


def check_golden(path):
    from safetensors import safe_open
    with safe_open(path, "pt") as f:
        meta = f.metadata()
        t = {k: f.get_tensor(k) for k in f.keys()}
    m = CRATE(**json.loads(meta["ctor"]))
    m.load_state_dict({k[6:]: v for k, v in t.items() if k.startswith("param.")})
    err = (m(t["input"]) - t["logits"]).abs().max().item()
    assert err < 1e-5, f"faithful PyTorch CRATE differs from golden logits by {err}"
    return err


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True, help="JSON file with CRATE constructor args")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--golden", default=None)
    ap.add_argument("--form", choices=["official", "algebra", "bf16"], default="official")
    a = ap.parse_args()
    global ALGEBRA
    ALGEBRA = a.form == "algebra"
    amp = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if a.form == "bf16" else contextlib.nullcontext
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    gerr = check_golden(a.golden) if a.golden else None
    cfg = json.load(open(a.config))
    m = CRATE(**cfg)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4, weight_decay=0.05)
    x = torch.randn(a.batch_size, cfg.get("channels", 3), cfg["image_size"], cfg["image_size"])
    y = torch.randint(0, cfg["num_classes"], (a.batch_size,))
    tt = []
    for i in range(a.warmup + a.steps):
        t0 = time.perf_counter()
        with amp():
            loss = F.cross_entropy(m(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= a.warmup:
            tt.append(time.perf_counter() - t0)
    m.eval()
    ti = []
    with torch.no_grad():
        for i in range(a.warmup + a.steps):
            t0 = time.perf_counter()
            with amp():
                m(x)
            if i >= a.warmup:
                ti.append(time.perf_counter() - t0)
    ts, is_ = statistics.median(tt), statistics.median(ti)
    print(json.dumps({"train_img_s": a.batch_size / ts, "infer_img_s": a.batch_size / is_, "train_step_s": ts, "infer_s": is_,
                      "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                      "golden_max_abs_err": gerr, "form": a.form, "torch": torch.__version__, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
