#!/usr/bin/env python3
"""PyTorch peer of ResLora's training step, written from the specs (shared specs reslora.md, peft-format.md).

Reads what `reslora bench pytorch-parity` wrote (a Hugging Face model folder, the initial adapter factors and the
token batches, all safetensors), trains the same steps with the same optimizer, and prints JSON with the losses and
step times. Used only by bench/compare-pytorch.sh; never by the build or the tests.
"""
import json, math, struct, sys, time, argparse
import torch
import torch.nn.functional as F

DT = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I64": torch.int64, "F64": torch.float64, "I32": torch.int32}


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    base = 8 + n
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        b, end = e["data_offsets"]
        buf = bytearray(data[base + b: base + end])
        t = torch.frombuffer(buf, dtype=DT[e["dtype"]]) if end > b else torch.empty(0, dtype=DT[e["dtype"]])
        out[name] = t.reshape(e["shape"]).clone()
    return out


class Cfg:
    def __init__(self, d):
        self.hidden = d["hidden_size"]; self.inter = d["intermediate_size"]; self.layers = d["num_hidden_layers"]
        self.heads = d["num_attention_heads"]; self.kv = d.get("num_key_value_heads") or self.heads
        self.head_dim = d.get("head_dim") or self.hidden // self.heads; self.eps = d.get("rms_norm_eps", 1e-6)
        self.theta = d.get("rope_theta", 10000.0); self.tied = d.get("tie_word_embeddings", False)
        self.vocab = d["vocab_size"]


def rms(x, w, eps):
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return w * xf.to(x.dtype)


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


class Adapter:
    """LoRA or ResLoRA (is/bs/ms) over one chain per module type; links only between equal shapes (spec §2)."""

    def __init__(self, method, structure, pre_num, scaling, factors):
        self.method, self.structure, self.pre_num, self.s = method, structure, pre_num, scaling
        self.A = {k: torch.nn.Parameter(v["A"].clone()) for k, v in factors.items()}
        self.B = {k: torch.nn.Parameter(v["B"].clone()) for k, v in factors.items()}
        self.chain = {}
        by_type = {}
        for name in sorted(factors, key=lambda n: int(n.split(".")[2])):
            by_type.setdefault(name.split(".")[-1], []).append(name)
        for t, names in by_type.items():
            prev = None
            for n in names:
                ok = prev is not None and self.A[n].shape == self.A[prev].shape and self.B[n].shape == self.B[prev].shape
                self.chain[n] = prev if ok else None
                prev = n
        self.stash = {}

    def params(self):
        return list(self.A.values()) + list(self.B.values())

    def preds(self, n):
        out, q = [], self.chain[n]
        m = 10 ** 9 if self.pre_num < 0 else self.pre_num
        while q is not None and len(out) < m:
            out.append(q); q = self.chain[q]
        return out

    def delta(self, name, x):
        A, B, s = self.A[name], self.B[name], self.s
        if self.method == "lora":
            return s * ((x @ A.t()) @ B.t())
        if self.structure == "is":
            p = self.chain[name]
            xp = x if p is None else self.stash[p]
            self.stash[name] = x
            return s * (((x + xp) @ A.t()) @ B.t())
        if self.structure == "bs":
            names = [name] + self.preds(name)
            Ac = torch.cat([self.A[n] for n in names], 0)
            Bc = torch.cat([self.B[n] for n in names], 1)
            return s * ((x @ Ac.t()) @ Bc.t())
        if self.structure == "ms":
            z = x @ A.t()
            self.stash[name] = z
            acc = z
            for q in self.preds(name):
                acc = acc + self.stash[q]
            return s * (acc @ B.t())
        raise ValueError(self.structure)


class Llama(torch.nn.Module):
    def __init__(self, cfg, w, adapter):
        super().__init__()
        self.c, self.w, self.ad = cfg, w, adapter
        inv = 1.0 / (cfg.theta ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.int64).float() / cfg.head_dim))
        self.inv_freq = inv

    def lin(self, name, x):
        y = x @ self.w[name + ".weight"].t()
        if name + ".bias" in self.w:
            y = y + self.w[name + ".bias"]
        if self.ad is not None and name in self.ad.A:
            y = y + self.ad.delta(name, x)
        return y

    def forward(self, ids, mask):
        c, w = self.c, self.w
        b, t = ids.shape
        self.ad is not None and self.ad.stash.clear()
        h = w["model.embed_tokens.weight"][ids]
        pos = torch.arange(t, dtype=torch.float32)
        fr = torch.outer(pos, self.inv_freq)
        emb = torch.cat((fr, fr), -1)
        cos, sin = emb.cos(), emb.sin()
        causal = torch.ones(t, t, dtype=torch.bool).tril()
        keep = causal[None, None] & mask.bool()[:, None, None, :]
        for i in range(c.layers):
            p = f"model.layers.{i}."
            x = rms(h, w[p + "input_layernorm.weight"], c.eps)
            q = self.lin(p + "self_attn.q_proj", x).view(b, t, c.heads, c.head_dim).transpose(1, 2)
            k = self.lin(p + "self_attn.k_proj", x).view(b, t, c.kv, c.head_dim).transpose(1, 2)
            v = self.lin(p + "self_attn.v_proj", x).view(b, t, c.kv, c.head_dim).transpose(1, 2)
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
            rep = c.heads // c.kv
            k = k.repeat_interleave(rep, 1); v = v.repeat_interleave(rep, 1)
            # PyTorch 1.13 (Debian's python3-torch) has no scaled_dot_product_attention: the same math by hand.
            sc = (q @ k.transpose(-1, -2)) / math.sqrt(c.head_dim)
            att = sc.masked_fill(~keep, float("-inf")).softmax(-1) @ v
            att = att.transpose(1, 2).reshape(b, t, c.heads * c.head_dim)
            h = h + self.lin(p + "self_attn.o_proj", att)
            x = rms(h, w[p + "post_attention_layernorm.weight"], c.eps)
            g = self.lin(p + "mlp.gate_proj", x); u = self.lin(p + "mlp.up_proj", x)
            h = h + self.lin(p + "mlp.down_proj", F.silu(g) * u)
        h = rms(h, w["model.norm.weight"], c.eps)
        head = w["model.embed_tokens.weight"] if c.tied else w["lm_head.weight"]
        return h @ head.t()


def loss_fn(logits, labels):
    v = logits.shape[-1]
    return F.cross_entropy(logits[:, :-1].reshape(-1, v).float(), labels[:, 1:].reshape(-1), ignore_index=-100)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    spec = json.load(open(f"{a.dir}/parity.json"))
    cfg = Cfg(json.load(open(f"{a.dir}/model/config.json")))
    w = read_safetensors(f"{a.dir}/model/model.safetensors")
    for v in w.values():
        v.requires_grad_(False)
    init = read_safetensors(f"{a.dir}/adapter_init.safetensors")
    factors = {}
    for k, v in init.items():
        mod, which = k.rsplit(".", 1)
        factors.setdefault(mod, {})[which] = v
    ad = Adapter(spec["method"], spec.get("structure"), spec.get("pre_num", 1), spec["scaling"], factors)
    model = Llama(cfg, w, ad)
    batches = read_safetensors(f"{a.dir}/batches.safetensors")
    ids, masks, labels = batches["input_ids"], batches["attention_mask"], batches["labels"]
    opt = torch.optim.AdamW(ad.params(), lr=spec["lr"], betas=(0.9, 0.999), eps=1e-8, weight_decay=spec["weight_decay"])
    losses, times = [], []
    for step in range(spec["steps"]):
        i = step % ids.shape[0]
        t0 = time.perf_counter()
        loss = loss_fn(model(ids[i], masks[i]), labels[i])
        loss.backward()
        opt.step(); opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
        losses.append(loss.item())
    print(json.dumps({"impl": "pytorch", "torch": torch.__version__, "threads": a.threads, "losses": losses, "step_seconds": times}))


if __name__ == "__main__":
    main()
