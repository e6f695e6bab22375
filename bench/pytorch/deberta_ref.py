#!/usr/bin/python3
"""PyTorch peer for ResLora's DeBERTa-v2/v3 encoder, written from the semantics of transformers' modeling_deberta_v2
(DebertaV2Embeddings, DisentangledSelfAttention with log-bucket relative positions, XSoftmax, ContextPooler), without
transformers itself (Debian python3-torch 1.13 only).

  deberta_ref.py make DIR --variant v3|v2 [--seed N] [--labels 3|1]   tiny random DebertaV2ForSequenceClassification folder
                                                                       + data.jsonl (texts longer than the bucket range)
  deberta_ref.py check DIR PREDICTIONS.jsonl CLS.jsonl MEAN.jsonl      reference logits / hidden states vs ResLora's output
"""
import json, math, struct, sys
import torch
import torch.nn.functional as F

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "a", "movie", "film", "was", "is", "good", "great", "bad",
         "awful", "fun", "boring", "plot", "acting", "really", "not", "very", "and", "but", "i", "liked", "hated", "it",
         ".", "!", ",", "##s", "##ly", "##ing", "love", "loved", "terrible", "excellent", "dull", "story"]
WORDS = [w for w in VOCAB[5:] if not w.startswith("##")]


def config(variant, labels):
    c = {"model_type": "deberta-v2", "vocab_size": len(VOCAB), "hidden_size": 32, "num_hidden_layers": 2,
         "num_attention_heads": 4, "intermediate_size": 48, "max_position_embeddings": 128, "hidden_act": "gelu",
         "layer_norm_eps": 1e-7, "pad_token_id": 0, "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
         "relative_attention": True, "pooler_hidden_act": "gelu", "pooler_dropout": 0, "pooler_hidden_size": 32}
    if variant == "v3":  # DeBERTa-v3's choices: shared keys, no absolute positions or types, normed rel embeddings, buckets
        c.update({"type_vocab_size": 0, "position_buckets": 16, "max_relative_positions": -1, "pos_att_type": "p2c|c2p",
                  "norm_rel_ebd": "layer_norm", "share_att_key": True, "position_biased_input": False})
    else:  # v2-style: separate positional projections, absolute positions, token types, embed_proj, clamped distances
        c.update({"type_vocab_size": 2, "position_buckets": -1, "max_relative_positions": 8, "pos_att_type": ["c2p", "p2c"],
                  "norm_rel_ebd": "none", "share_att_key": False, "position_biased_input": True, "embedding_size": 24})
    names = [f"c{i}" for i in range(labels)] if labels > 1 else ["LABEL_0"]
    c.update({"architectures": ["DebertaV2ForSequenceClassification"], "num_labels": labels,
              "id2label": {str(i): n for i, n in enumerate(names)}, "label2id": {n: i for i, n in enumerate(names)},
              "problem_type": "single_label_classification" if labels > 1 else "regression"})
    return c


def settings(c):
    rel = c.get("max_relative_positions", -1)
    rel = c["max_position_embeddings"] if rel < 1 else rel
    buckets = c.get("position_buckets", -1)
    pat = c.get("pos_att_type") or []
    pat = [x.strip() for x in pat.lower().split("|")] if isinstance(pat, str) else pat
    return rel, buckets, (buckets if buckets > 0 else rel), pat, c.get("embedding_size", c["hidden_size"])


def shapes(c):
    h, m = c["hidden_size"], c["intermediate_size"]
    rel, buckets, span, pat, e = settings(c)
    s = {"deberta.embeddings.word_embeddings.weight": [c["vocab_size"], e]}
    if c.get("position_biased_input", True): s["deberta.embeddings.position_embeddings.weight"] = [c["max_position_embeddings"], e]
    if c["type_vocab_size"] > 0: s["deberta.embeddings.token_type_embeddings.weight"] = [c["type_vocab_size"], e]
    if e != h: s["deberta.embeddings.embed_proj.weight"] = [h, e]
    s["deberta.embeddings.LayerNorm.weight"] = [h]; s["deberta.embeddings.LayerNorm.bias"] = [h]
    proj = ["query_proj", "key_proj", "value_proj"]
    if not c.get("share_att_key", False):
        proj += (["pos_key_proj"] if "c2p" in pat else []) + (["pos_query_proj"] if "p2c" in pat else [])
    for i in range(c["num_hidden_layers"]):
        p = f"deberta.encoder.layer.{i}."
        for n in ["attention.self." + x for x in proj] + ["attention.output.dense"]:
            s[p + n + ".weight"] = [h, h]; s[p + n + ".bias"] = [h]
        for n, shp in [("attention.output.LayerNorm", [h]), ("output.LayerNorm", [h])]:
            s[p + n + ".weight"] = shp; s[p + n + ".bias"] = shp
        s[p + "intermediate.dense.weight"] = [m, h]; s[p + "intermediate.dense.bias"] = [m]
        s[p + "output.dense.weight"] = [h, m]; s[p + "output.dense.bias"] = [h]
    s["deberta.encoder.rel_embeddings.weight"] = [2 * span, h]
    if "layer_norm" in c.get("norm_rel_ebd", "none"):
        s["deberta.encoder.LayerNorm.weight"] = [h]; s["deberta.encoder.LayerNorm.bias"] = [h]
    s["pooler.dense.weight"] = [h, h]; s["pooler.dense.bias"] = [h]
    s["classifier.weight"] = [c["num_labels"], h]; s["classifier.bias"] = [c["num_labels"]]
    return s


def write_safetensors(path, tensors):
    header, blobs, off = {}, [], 0
    for name, t in tensors.items():
        b = t.contiguous().numpy().astype("<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b); off += len(b)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h))); f.write(h)
        for b in blobs: f.write(b)


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n)); data = f.read()
    out = {}
    for name, e in header.items():
        if name == "__metadata__": continue
        a, b = e["data_offsets"]
        out[name] = torch.frombuffer(bytearray(data[a:b]), dtype=torch.float32).reshape(e["shape"]).clone()
    return out


def make(d, variant, seed, labels):
    import os
    os.makedirs(d, exist_ok=True)
    c = config(variant, labels)
    g = torch.Generator().manual_seed(seed)
    w = {}
    for name, shp in shapes(c).items():
        if "LayerNorm.weight" in name: w[name] = torch.rand(shp, generator=g) * 0.5 + 0.75
        elif name.endswith(".bias"): w[name] = torch.rand(shp, generator=g) * 0.2 - 0.1
        else: w[name] = torch.randn(shp, generator=g) * 0.3
    json.dump(c, open(f"{d}/config.json", "w"), indent=1)
    write_safetensors(f"{d}/model.safetensors", w)
    open(f"{d}/vocab.txt", "w").write("\n".join(VOCAB) + "\n")
    json.dump({"do_lower_case": True, "model_max_length": 128}, open(f"{d}/tokenizer_config.json", "w"))
    rng = torch.Generator().manual_seed(seed + 1)
    names = list(c["id2label"].values())
    with open(f"{d}/data.jsonl", "w") as f:
        for n in [5, 12, 40, 70, 100, 9]:  # words; +[CLS]/[SEP]. 100 > 2·position_buckets and > max_relative_positions
            text = " ".join(WORDS[int(i)] for i in torch.randint(len(WORDS), (n,), generator=rng))
            label = names[int(torch.randint(len(names), (1,), generator=rng))] if labels > 1 else 0.5
            f.write(json.dumps({"text": text, "label": label}) + "\n")


def log_bucket(rel, bucket_size, max_position):  # make_log_bucket_position
    sign = torch.sign(rel)
    mid = bucket_size // 2
    abs_pos = torch.where((rel < mid) & (rel > -mid), torch.tensor(mid - 1).type_as(rel), torch.abs(rel))
    log_pos = torch.ceil(torch.log(abs_pos / mid) / torch.log(torch.tensor((max_position - 1) / mid)) * (mid - 1)) + mid
    return torch.where(abs_pos <= mid, rel.type_as(log_pos), log_pos * sign)


def forward(c, w, ids, types=None):
    """One unpadded sequence (1, t): last hidden states and DebertaV2ForSequenceClassification's logits."""
    rel_max, buckets, span, pat, e = settings(c)
    h_size, nh = c["hidden_size"], c["num_attention_heads"]
    hd = h_size // nh
    eps = c["layer_norm_eps"]
    ln = lambda x, p: F.layer_norm(x, (h_size,), w[p + ".weight"], w[p + ".bias"], eps)
    lin = lambda x, p: x @ w[p + ".weight"].T + w[p + ".bias"]
    t = ids.shape[1]
    x = w["deberta.embeddings.word_embeddings.weight"][ids]
    if c.get("position_biased_input", True): x = x + w["deberta.embeddings.position_embeddings.weight"][torch.arange(t)][None]
    if c["type_vocab_size"] > 0: x = x + w["deberta.embeddings.token_type_embeddings.weight"][types if types is not None else torch.zeros_like(ids)]
    if e != h_size: x = x @ w["deberta.embeddings.embed_proj.weight"].T
    x = ln(x, "deberta.embeddings.LayerNorm")
    q_ids = torch.arange(t)
    rel = q_ids[:, None] - q_ids[None, :]
    if buckets > 0 and rel_max > 0: rel = log_bucket(rel, buckets, rel_max)
    rel = rel.long()
    rel_emb = w["deberta.encoder.rel_embeddings.weight"][: 2 * span]
    if "layer_norm" in c.get("norm_rel_ebd", "none"): rel_emb = ln(rel_emb, "deberta.encoder.LayerNorm")
    scale_factor = 1 + len([p for p in pat if p in ("c2p", "p2c")])
    heads = lambda y: y.view(y.shape[0], -1, nh, hd).permute(0, 2, 1, 3)  # (b, heads, n, hd)
    for i in range(c["num_hidden_layers"]):
        p = f"deberta.encoder.layer.{i}.attention.self."
        q, k, v = heads(lin(x, p + "query_proj")), heads(lin(x, p + "key_proj")), heads(lin(x, p + "value_proj"))
        scale = math.sqrt(hd * scale_factor)
        s = q @ k.transpose(-1, -2) / scale
        share = c.get("share_att_key", False)
        if "c2p" in pat:
            pk = heads(lin(rel_emb[None], p + ("key_proj" if share else "pos_key_proj")))
            idx = torch.clamp(rel + span, 0, 2 * span - 1)
            s = s + torch.gather(q @ pk.transpose(-1, -2), -1, idx.expand(1, nh, t, t)) / scale
        if "p2c" in pat:
            pq = heads(lin(rel_emb[None], p + ("query_proj" if share else "pos_query_proj")))
            idx = torch.clamp(-rel + span, 0, 2 * span - 1)
            s = s + torch.gather(k @ pq.transpose(-1, -2), -1, idx.expand(1, nh, t, t)).transpose(-1, -2) / scale
        ctx = (torch.softmax(s, -1) @ v).permute(0, 2, 1, 3).reshape(1, t, h_size)
        lp = f"deberta.encoder.layer.{i}."
        a = ln(lin(ctx, lp + "attention.output.dense") + x, lp + "attention.output.LayerNorm")
        inter = F.gelu(lin(a, lp + "intermediate.dense"))
        x = ln(lin(inter, lp + "output.dense") + a, lp + "output.LayerNorm")
    pooled = F.gelu(lin(x[:, 0], "pooler.dense"))
    return x, lin(pooled, "classifier")


def check(d, pred_path, cls_path, mean_path):
    torch.set_default_dtype(torch.float32)
    c = json.load(open(f"{d}/config.json"))
    w = read_safetensors(f"{d}/model.safetensors")
    texts = [json.loads(l)["text"] for l in open(f"{d}/data.jsonl")]
    preds = [json.loads(l) for l in open(pred_path)]
    cls = [json.loads(l)["embedding"] for l in open(cls_path)]
    mean = [json.loads(l)["embedding"] for l in open(mean_path)]
    names = [c["id2label"][str(i)] for i in range(c["num_labels"])]
    worst = {"logits or probabilities": 0.0, "first-token hidden state": 0.0, "mean hidden state": 0.0}
    for i, text in enumerate(texts):
        ids = torch.tensor([[2] + [VOCAB.index(x) for x in text.split()] + [3]])
        with torch.no_grad():
            hidden, logits = forward(c, w, ids)
        if c["num_labels"] == 1: got, want = torch.tensor([preds[i]["prediction"]]), logits[0]
        else: got, want = torch.tensor([preds[i]["probabilities"][n] for n in names]), torch.softmax(logits[0], -1)
        worst["logits or probabilities"] = max(worst["logits or probabilities"], (got - want).abs().max().item())
        worst["first-token hidden state"] = max(worst["first-token hidden state"], (torch.tensor(cls[i]) - hidden[0, 0]).abs().max().item())
        worst["mean hidden state"] = max(worst["mean hidden state"], (torch.tensor(mean[i]) - hidden[0].mean(0)).abs().max().item())
        print(f"  example {i}: {ids.shape[1]} tokens, reference {'logit' if c['num_labels'] == 1 else 'probabilities'} {[round(x, 5) for x in want.tolist()]}")
    for k, v in worst.items(): print(f"max |difference| {k}: {v:.3g}")
    return 0 if max(worst.values()) < 1e-5 else 1


if __name__ == "__main__":
    a = sys.argv[1:]
    if a and a[0] == "make":
        opts = dict(zip(a[2::2], a[3::2]))
        make(a[1], opts.get("--variant", "v3"), int(opts.get("--seed", "1")), int(opts.get("--labels", "3")))
    elif a and a[0] == "check" and len(a) == 5:
        sys.exit(check(*a[1:]))
    else:
        print(__doc__); sys.exit(2)
