#!/usr/bin/env python3
"""PyTorch peer of ResLora's training step, written from the specs (shared specs reslora.md, peft-format.md).

Reads what `reslora bench pytorch` wrote: parity.json, the initial adapter factors and the token batches (safetensors),
and the model, which is either the bench's own float32 folder (<dir>/model) or, with `bench pytorch --model`, the
Hugging Face folder parity.json names (one model.safetensors or model.safetensors.index.json + shards, float32 or
bf16). Trains the same steps with the same optimizer and prints JSON with the losses, the step times and this
process's peak RSS. Used only by `reslora bench pytorch` (bench/compare-pytorch.sh, bench/scale.sh --peer); never by
the build or the tests.

dtype (parity.json "dtype"): float32, or bfloat16 as `reslora train --dtype bfloat16` and PEFT run it: every base
weight in bf16, the adapter factors in float32, the adapter input cast to float32 and the scaled adapter output cast
back to bf16 before it is added to the base output (peft-format.md §2.5, ResLora's LowRankLinear).
"""
import argparse, json, math, os, resource, struct, time
import torch
import torch.nn.functional as F

DT = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I64": torch.int64, "F64": torch.float64, "I32": torch.int32}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def read_safetensors(path, dtype=None, out=None):
    """Tensors of one safetensors file, each read on its own (the file is never held whole) and converted to `dtype`
    (floating tensors only) when given; a tensor already of that dtype keeps the buffer it was read into."""
    out = {} if out is None else out
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        base = 8 + n
        for name, e in header.items():
            if name == "__metadata__":
                continue
            b, end = e["data_offsets"]
            st = DT[e["dtype"]]
            if end > b:
                buf = bytearray(end - b)
                f.seek(base + b)
                f.readinto(buf)
                t = torch.frombuffer(buf, dtype=st).reshape(e["shape"])
            else:
                t = torch.empty(e["shape"], dtype=st)
            if dtype is not None and t.is_floating_point() and t.dtype != dtype:
                t = t.to(dtype)
            out[name] = t
    return out


def read_model_weights(folder, dtype):
    """A Hugging Face folder's weights as `dtype`: model.safetensors, or the shards model.safetensors.index.json lists,
    one shard and one tensor at a time (peak: the weights plus one tensor as stored)."""
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.exists(index):
        shards = sorted(set(json.load(open(index))["weight_map"].values()))
    elif os.path.exists(os.path.join(folder, "model.safetensors")):
        shards = ["model.safetensors"]
    else:
        shards = sorted(f for f in os.listdir(folder) if f.endswith(".safetensors"))
        if not shards:
            raise SystemExit(f"{folder}: no model.safetensors, model.safetensors.index.json or *.safetensors")
    w = {}
    for s in shards:
        read_safetensors(os.path.join(folder, s), dtype, w)
    return w


class Cfg:
    def __init__(self, d):
        self.hidden = d["hidden_size"]; self.inter = d["intermediate_size"]; self.layers = d["num_hidden_layers"]
        self.heads = d["num_attention_heads"]; self.kv = d.get("num_key_value_heads") or self.heads
        self.head_dim = d.get("head_dim") or self.hidden // self.heads; self.eps = d.get("rms_norm_eps", 1e-6)
        self.theta = d.get("rope_theta", 10000.0); self.tied = d.get("tie_word_embeddings", False)
        self.vocab = d["vocab_size"]; self.rope_scaling = d.get("rope_scaling")
        self.model_type = d.get("model_type", "llama"); self.sliding_window = d.get("sliding_window")
        self.use_sliding_window = d.get("use_sliding_window", False); self.max_window_layers = d.get("max_window_layers") or 0

    def window_of(self, layer):
        if self.model_type == "mistral":
            return self.sliding_window
        if self.model_type in ("qwen2", "qwen3") and self.use_sliding_window and layer >= self.max_window_layers:
            return self.sliding_window
        return None


def inverse_frequencies(c):
    """inv_freq (head_dim/2,) float32 after rope scaling, as transformers' modeling_rope_utils.py ("default", "linear",
    "llama3": _compute_llama3_parameters) and ResLora's Rotary.InverseFrequencies."""
    inv = 1.0 / (c.theta ** (torch.arange(0, c.head_dim, 2, dtype=torch.int64).float() / c.head_dim))
    rs = c.rope_scaling or {}
    kind = (rs.get("rope_type") or rs.get("type") or "default").lower()
    if kind == "default":
        return inv
    if kind == "linear":
        return inv / rs.get("factor", 1.0)
    if kind == "llama3":
        factor, low, high = rs.get("factor", 1.0), rs.get("low_freq_factor", 1.0), rs.get("high_freq_factor", 4.0)
        old_len = rs.get("original_max_position_embeddings", 8192)
        low_freq_wavelen, high_freq_wavelen = old_len / low, old_len / high
        wavelen = 2 * math.pi / inv
        # Long wavelengths are divided by the factor, short ones kept, the band between interpolated smoothly.
        scaled = torch.where(wavelen > low_freq_wavelen, inv / factor, inv)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
        return torch.where(is_medium, smoothed, scaled).float()
    raise SystemExit(f"config.json: rope_scaling kind '{kind}' is not supported (default, linear, llama3)")


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
        """The scaled low-rank term of one projection, in the adapter's dtype; x is already in that dtype."""
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
    def __init__(self, cfg, w, adapter, dtype):
        super().__init__()
        self.c, self.w, self.ad, self.dtype = cfg, w, adapter, dtype
        self.inv_freq = inverse_frequencies(cfg)

    def lin(self, name, x):
        y = x @ self.w[name + ".weight"].t()
        if name + ".bias" in self.w:
            y = y + self.w[name + ".bias"]
        if self.ad is not None and name in self.ad.A:
            # PEFT's rule (and ours): the adapter input cast to the adapter's dtype, the scaled result cast back.
            # (PEFT adds in float32 and casts the sum; we cast the term and add in the base dtype: the same up to one
            # bf16 rounding. A no-op in float32.)
            y = y + self.ad.delta(name, x.to(self.ad.A[name].dtype)).to(y.dtype)
        return y

    def forward(self, ids, mask):
        c, w = self.c, self.w
        b, t = ids.shape
        self.ad is not None and self.ad.stash.clear()
        h = w["model.embed_tokens.weight"][ids]
        # cos/sin in float32 (positions ⊗ inv_freq), then the model's dtype, as transformers and Rotary.CosSin.
        pos = torch.arange(t, dtype=torch.float32)
        fr = torch.outer(pos, self.inv_freq)
        emb = torch.cat((fr, fr), -1)
        cos, sin = emb.cos().to(self.dtype), emb.sin().to(self.dtype)
        causal = torch.ones(t, t, dtype=torch.bool).tril()
        keep_full = causal[None, None] & mask.bool()[:, None, None, :]
        for i in range(c.layers):
            p = f"model.layers.{i}."
            # Sliding window (modeling_mistral / modeling_qwen2's layer_types): query i sees keys j with i - j < window.
            window = c.window_of(i)
            keep = keep_full if window is None else keep_full & torch.ones(t, t, dtype=torch.bool).triu(-(window - 1))[None, None]
            x = rms(h, w[p + "input_layernorm.weight"], c.eps)
            q = self.lin(p + "self_attn.q_proj", x).view(b, t, c.heads, c.head_dim)
            k = self.lin(p + "self_attn.k_proj", x).view(b, t, c.kv, c.head_dim)
            # Qwen3 (modeling_qwen3.py): an RMSNorm over head_dim of each head of q and k, before rotary.
            if p + "self_attn.q_norm.weight" in w:
                q = rms(q, w[p + "self_attn.q_norm.weight"], c.eps)
                k = rms(k, w[p + "self_attn.k_norm.weight"], c.eps)
            q, k = q.transpose(1, 2), k.transpose(1, 2)
            v = self.lin(p + "self_attn.v_proj", x).view(b, t, c.kv, c.head_dim).transpose(1, 2)
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
            rep = c.heads // c.kv
            k = k.repeat_interleave(rep, 1); v = v.repeat_interleave(rep, 1)
            # PyTorch 1.13 (Debian's python3-torch) has no scaled_dot_product_attention: transformers' eager attention
            # by hand (scores in the model's dtype, softmax in float32 and cast back).
            sc = (q @ k.transpose(-1, -2)) / math.sqrt(c.head_dim)
            att = sc.masked_fill(~keep, float("-inf")).softmax(-1, dtype=torch.float32).to(v.dtype) @ v
            att = att.transpose(1, 2).reshape(b, t, c.heads * c.head_dim)
            h = h + self.lin(p + "self_attn.o_proj", att)
            x = rms(h, w[p + "post_attention_layernorm.weight"], c.eps)
            g = self.lin(p + "mlp.gate_proj", x); u = self.lin(p + "mlp.up_proj", x)
            h = h + self.lin(p + "mlp.down_proj", F.silu(g) * u)
        h = rms(h, w["model.norm.weight"], c.eps)
        head = w["model.embed_tokens.weight"] if c.tied or "lm_head.weight" not in w else w["lm_head.weight"]
        return h @ head.t()


def loss_fn(logits, labels):
    """Masked next-token cross-entropy (ResLora's Trainer.CausalLmLoss): logits in float32, mean over labels != -100."""
    v = logits.shape[-1]
    return F.cross_entropy(logits[:, :-1].reshape(-1, v).float(), labels[:, 1:].reshape(-1), ignore_index=-100)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    spec = json.load(open(f"{a.dir}/parity.json"))
    dtype = DTYPES[spec.get("dtype", "float32")]
    model_dir = spec.get("model_dir") or f"{a.dir}/model"
    t0 = time.perf_counter()
    cfg = Cfg(json.load(open(f"{model_dir}/config.json")))
    w = read_model_weights(model_dir, dtype)
    for v in w.values():
        v.requires_grad_(False)
    load_seconds = time.perf_counter() - t0
    init = read_safetensors(f"{a.dir}/adapter_init.safetensors")
    factors = {}
    for k, v in init.items():
        mod, which = k.rsplit(".", 1)
        factors.setdefault(mod, {})[which] = v.float()
    ad = Adapter(spec["method"], spec.get("structure"), spec.get("pre_num", 1), spec["scaling"], factors)
    model = Llama(cfg, w, ad, dtype)
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
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    print(json.dumps({"impl": "pytorch", "torch": torch.__version__, "threads": a.threads, "dtype": str(dtype).replace("torch.", ""),
                      "losses": losses, "step_seconds": times, "load_seconds": load_seconds, "peak_rss": peak}))


if __name__ == "__main__":
    main()
