"""Faithful PyTorch causal CRATE (the computation of crate-lm's crate_overcomplete.py: shared
c_attn projection, F.scaled_dot_product_attention(is_causal=True), two overcomplete ISTA steps
decoded with the tied dictionary, final ln_f, lm_head tied to wte), checked against
tests/golden/crate_lm_overcomplete.safetensors before timing a training step of the official
recipe (AdamW β (0.9, 0.95), weight decay 0.1 on ≥ 2-D parameters, clip 1.0), as `whitebox lm
train` runs it. For the whitebox benchmark; not part of the product."""
import argparse, contextlib, json, math, resource, statistics, time

import torch
import torch.nn as nn
import torch.nn.functional as F

ETA, LAMBDA = 0.1, 0.1


class CausalMssa(nn.Module):
    def __init__(self, d, n_head):
        super().__init__()
        self.c_attn = nn.Linear(d, d, bias=False)
        self.c_proj = nn.Linear(d, d, bias=True)
        self.n_head = n_head

    def forward(self, x):
        b, t, d = x.shape
        w = self.c_attn(x).view(b, t, self.n_head, d // self.n_head).transpose(1, 2)
        y = F.scaled_dot_product_attention(w, w, w, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(b, t, d))


class OvercompleteIsta(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(4 * d, d))
        nn.init.kaiming_uniform_(self.weight)

    def forward(self, x):
        wx = F.linear(x, self.weight)  # Dᵀx
        a0 = F.relu(ETA * wx - ETA * LAMBDA)
        a1 = F.relu(a0 + ETA * (wx - F.linear(F.linear(a0, self.weight.t()), self.weight)) - ETA * LAMBDA)
        return F.linear(a1, self.weight.t())


class Block(nn.Module):
    def __init__(self, d, n_head):
        super().__init__()
        self.prenorm_1, self.attn = nn.LayerNorm(d), CausalMssa(d, n_head)
        self.prenorm_2, self.ista = nn.LayerNorm(d), OvercompleteIsta(d)

    def forward(self, x):
        x = x + self.attn(self.prenorm_1(x))
        return self.ista(self.prenorm_2(x))


class CrateLm(nn.Module):
    def __init__(self, vocab_size, block_size, n_layer, n_head, n_embd, **_):
        super().__init__()
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(vocab_size, n_embd), wpe=nn.Embedding(block_size, n_embd),
            h=nn.ModuleList(Block(n_embd, n_head) for _ in range(n_layer)), ln_f=nn.LayerNorm(n_embd)))
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight
        for name, p in self.named_parameters():  # nanoGPT init (ISTA keeps kaiming)
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * n_layer))
            elif name.endswith(("c_attn.weight", "wte.weight", "wpe.weight")):
                nn.init.normal_(p, 0.0, 0.02)
            elif name.endswith("c_proj.bias"):
                nn.init.zeros_(p)

    def forward(self, idx):
        t = idx.shape[1]
        x = self.transformer.wte(idx) + self.transformer.wpe(torch.arange(t))
        for block in self.transformer.h:
            x = block(x)
        return self.lm_head(self.transformer.ln_f(x))


def check_golden(path):
    from safetensors import safe_open
    with safe_open(path, "pt") as f:
        meta = f.metadata()
        t = {k: f.get_tensor(k) for k in f.keys()}
    m = CrateLm(**json.loads(meta["config"]))
    m.load_state_dict({k[6:]: v for k, v in t.items() if k.startswith("param.")})
    err = (m(t["idx"]) - t["logits"]).abs().max().item()
    assert err < 1e-5, f"faithful PyTorch crate-lm differs from golden logits by {err}"
    return err


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vocab", type=int, default=89)
    ap.add_argument("--context", type=int, default=64)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--golden", default=None)
    ap.add_argument("--bf16", action="store_true", help="torch.autocast(cpu, bfloat16), as train.py")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    gerr = check_golden(a.golden) if a.golden else None
    m = CrateLm(a.vocab, a.context, a.layers, a.heads, a.dim)
    decay = [p for p in m.parameters() if p.dim() >= 2]
    no_decay = [p for p in m.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=1e-4, betas=(0.9, 0.95))
    amp = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if a.bf16 else contextlib.nullcontext
    x = torch.randint(0, a.vocab, (a.batch_size, a.context))
    y = torch.randint(0, a.vocab, (a.batch_size, a.context))
    tt = []
    for i in range(a.warmup + a.steps):
        t0 = time.perf_counter()
        with amp():
            logits = m(x)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1), ignore_index=-1)
        loss.item()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= a.warmup:
            tt.append(time.perf_counter() - t0)
    ts = statistics.median(tt)
    tokens = a.batch_size * a.context
    print(json.dumps({"train_tok_s": tokens / ts, "train_step_s": ts,
                      "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                      "golden_max_abs_err": gerr, "bf16": a.bf16, "torch": torch.__version__,
                      "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
