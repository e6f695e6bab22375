using System.Text.Json.Nodes;
using ResLora.IO;
using ResLora.Models.Deberta;
using ResLora.Models.Encoders;
using ResLora.Tests.Infrastructure;
using TorchSharp;
using static TorchSharp.torch;

namespace ResLora.Tests.Models;

/// <summary>
/// Tiny DeBERTa-v2 folders with random weights and an independent plain-tensor forward written from transformers'
/// modeling_deberta_v2 semantics: relative buckets computed in double per (i, j) in C#, the positional terms by indexing
/// the projected table with an explicit (seq, seq) index and a dot product (not gather), the pairwise padding mask.
/// </summary>
internal static class ReferenceDeberta
{
    /// <summary>A DeBERTa-v3-style config (no absolute positions, no token types, shared keys, layer-normed rel embeddings).</summary>
    public static JsonObject V3Json(int buckets = 8, int maxRelative = -1) => new()
    {
        ["model_type"] = "deberta-v2",
        ["architectures"] = new JsonArray("DebertaV2ForMaskedLM"),
        ["vocab_size"] = TinyEncoders.Vocab.Length,
        ["hidden_size"] = 16,
        ["num_hidden_layers"] = 2,
        ["num_attention_heads"] = 2,
        ["intermediate_size"] = 24,
        ["max_position_embeddings"] = 64,
        ["type_vocab_size"] = 0,
        ["layer_norm_eps"] = 1e-7,
        ["hidden_act"] = "gelu",
        ["pad_token_id"] = 0,
        ["hidden_dropout_prob"] = 0.1,
        ["attention_probs_dropout_prob"] = 0.1,
        ["relative_attention"] = true,
        ["position_buckets"] = buckets,
        ["max_relative_positions"] = maxRelative,
        ["pos_att_type"] = "p2c|c2p",
        ["norm_rel_ebd"] = "layer_norm",
        ["share_att_key"] = true,
        ["position_biased_input"] = false,
        ["pooler_hidden_act"] = "gelu",
        ["pooler_dropout"] = 0,
    };

    /// <summary>A DeBERTa-v2-style variant: separate pos_key/pos_query projections, absolute positions, token types, embed_proj, no buckets.</summary>
    public static JsonObject V2Json()
    {
        var j = V3Json(buckets: -1, maxRelative: 6);
        j["share_att_key"] = false;
        j["position_biased_input"] = true;
        j["type_vocab_size"] = 2;
        j["embedding_size"] = 12;
        j["norm_rel_ebd"] = "none";
        j["pos_att_type"] = new JsonArray("c2p", "p2c");
        return j;
    }

    /// <summary>Random weights by Hugging Face name: the encoder without prefix, plus pooler and classifier when <paramref name="head"/>.</summary>
    public static Dictionary<string, Tensor> RandomWeights(EncoderConfig c, long seed, bool head)
    {
        var shapes = DebertaFamily.Instance.EncoderWeights(c);
        if (head)
            foreach (var kv in DebertaFamily.Instance.ClassifierPoolerWeights(c).Concat(DebertaFamily.Instance.HeadWeights(c))) shapes[kv.Key] = kv.Value;
        using var gen = new torch.Generator((ulong)seed);
        var d = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        foreach (var (name, shape) in shapes)
        {
            if (name.Contains("LayerNorm.weight", StringComparison.Ordinal)) d[name] = torch.rand(shape, generator: gen) * 0.5 + 0.75;
            else if (name.EndsWith(".bias", StringComparison.Ordinal)) d[name] = torch.rand(shape, generator: gen) * 0.2 - 0.1;
            else d[name] = torch.randn(shape, generator: gen) * 0.3;
        }
        return d;
    }

    /// <summary>config.json, model.safetensors (encoder keys under <paramref name="keyPrefix"/>) and a WordPiece vocab.txt.</summary>
    public static (string Dir, EncoderConfig Config, Dictionary<string, Tensor> Weights) WriteFolder(string dir, JsonObject json, long seed = 1, string keyPrefix = "deberta.", bool head = false)
    {
        Directory.CreateDirectory(dir);
        var c = EncoderConfig.FromJson(json);
        var w = RandomWeights(c, seed, head);
        File.WriteAllText(Path.Combine(dir, "config.json"), json.ToJsonString());
        HfCheckpoint.SaveWeights(dir, w.Select(kv => new KeyValuePair<string, Tensor>(
            kv.Key.StartsWith("pooler.", StringComparison.Ordinal) || kv.Key.StartsWith("classifier.", StringComparison.Ordinal) ? kv.Key : keyPrefix + kv.Key, kv.Value)));
        File.WriteAllLines(Path.Combine(dir, "vocab.txt"), TinyEncoders.Vocab);
        File.WriteAllText(Path.Combine(dir, "tokenizer_config.json"), "{\"do_lower_case\": true, \"model_max_length\": 64}");
        return (dir, c, w);
    }

    /// <summary>transformers' make_log_bucket_position for one relative position, in double.</summary>
    public static long Bucket(long r, int buckets, int maxPosition)
    {
        if (buckets <= 0) return r;
        int mid = buckets / 2;
        if (Math.Abs(r) <= mid) return r;
        double logPos = Math.Ceiling(Math.Log(Math.Abs(r) / (double)mid) / Math.Log((maxPosition - 1) / (double)mid) * (mid - 1)) + mid;
        return (long)(Math.Sign(r) * logPos);
    }

    /// <summary>Last hidden states (batch, seq, hidden) from the weight dictionary with plain tensor ops.</summary>
    public static Tensor Hidden(EncoderConfig c, IReadOnlyDictionary<string, Tensor> w, Tensor ids, Tensor? mask, Tensor? types)
    {
        var s = DebertaSettings.From(c);
        long b = ids.shape[0], t = ids.shape[1];
        int nh = c.NumAttentionHeads, hd = c.HiddenSize / nh, span = s.AttSpan;
        Tensor Ln(Tensor x, string p) => nn.functional.layer_norm(x, new long[] { c.HiddenSize }, w[p + ".weight"], w[p + ".bias"], c.LayerNormEps);
        Tensor Lin(Tensor x, string p) => torch.matmul(x, w[p + ".weight"].t()) + w[p + ".bias"];
        var m = mask?.to_type(ScalarType.Float32) ?? torch.ones(b, t);
        var h = w["embeddings.word_embeddings.weight"][ids];
        if (s.PositionBiasedInput) h = h + w["embeddings.position_embeddings.weight"][torch.arange(t)].unsqueeze(0);
        if (c.TypeVocabSize > 0) h = h + w["embeddings.token_type_embeddings.weight"][types ?? torch.zeros_like(ids)];
        if (s.EmbeddingSize != c.HiddenSize) h = torch.matmul(h, w["embeddings.embed_proj.weight"].t());
        h = Ln(h, "embeddings.LayerNorm") * m.unsqueeze(-1);

        // c2p index [i, j] = clamp(δ(i − j) + span); p2c index [a, c] (key row a, before the transpose) = clamp(−δ(a − c) + span).
        var c2pIdx = new long[t * t];
        var p2cIdx = new long[t * t];
        for (long i = 0; i < t; i++)
            for (long j = 0; j < t; j++)
            {
                c2pIdx[i * t + j] = Math.Clamp(Bucket(i - j, s.PositionBuckets, s.MaxRelativePositions) + span, 0, 2 * span - 1);
                p2cIdx[i * t + j] = Math.Clamp(-Bucket(i - j, s.PositionBuckets, s.MaxRelativePositions) + span, 0, 2 * span - 1);
            }
        var c2p = torch.tensor(c2pIdx, new long[] { t, t });
        var p2c = torch.tensor(p2cIdx, new long[] { t, t });
        var rel = w["encoder.rel_embeddings.weight"];
        if (s.NormRelEmbeddings) rel = Ln(rel, "encoder.LayerNorm");
        var pair = (m.unsqueeze(2) * m.unsqueeze(1)).unsqueeze(1); // (b, 1, i, j)
        double scale = Math.Sqrt(hd * 3.0);
        for (int l = 0; l < c.NumHiddenLayers; l++)
        {
            string p = $"encoder.layer.{l}.";
            Tensor Split(Tensor x) => x.view(b, t, nh, hd).permute(0, 2, 1, 3);
            Tensor Table(Tensor x) => x.view(2 * span, nh, hd).permute(1, 0, 2); // (heads, 2span, hd)
            var q = Split(Lin(h, p + "attention.self.query_proj"));
            var k = Split(Lin(h, p + "attention.self.key_proj"));
            var v = Split(Lin(h, p + "attention.self.value_proj"));
            var posK = Table(Lin(rel, p + (s.ShareAttKey ? "attention.self.key_proj" : "attention.self.pos_key_proj")));
            var posQ = Table(Lin(rel, p + (s.ShareAttKey ? "attention.self.query_proj" : "attention.self.pos_query_proj")));
            var scores = torch.matmul(q, k.permute(0, 1, 3, 2));
            // c2p[i, j] = q_i · posK[c2p[i, j]]; p2c[i, j] = k_j · posQ[p2c[j, i]]
            scores = scores + (q.unsqueeze(3) * posK.index_select(1, c2p.flatten()).view(nh, t, t, hd).unsqueeze(0)).sum(-1);
            scores = scores + (k.unsqueeze(3) * posQ.index_select(1, p2c.flatten()).view(nh, t, t, hd).unsqueeze(0)).sum(-1).permute(0, 1, 3, 2);
            scores = scores / scale;
            var att = torch.softmax(scores.masked_fill(pair.eq(0), double.NegativeInfinity), -1);
            att = torch.where(pair.eq(0), torch.zeros_like(att), att); // padding query rows (all −∞, NaN) become 0
            var ctx = torch.matmul(att, v).permute(0, 2, 1, 3).reshape(b, t, c.HiddenSize);
            var a = Ln(Lin(ctx, p + "attention.output.dense") + h, p + "attention.output.LayerNorm");
            var inter = Lin(a, p + "intermediate.dense");
            inter = 0.5 * inter * (1 + torch.special.erf(inter / Math.Sqrt(2)));
            h = Ln(Lin(inter, p + "output.dense") + a, p + "output.LayerNorm");
        }
        return h;
    }

    /// <summary>DebertaV2ForSequenceClassification's logits: gelu(pooler.dense(h[:, 0])) then classifier.</summary>
    public static Tensor Logits(EncoderConfig c, IReadOnlyDictionary<string, Tensor> w, Tensor ids, Tensor? mask, Tensor? types)
    {
        var first = Hidden(c, w, ids, mask, types)[.., 0, ..];
        var pooled = nn.functional.gelu(torch.matmul(first, w["pooler.dense.weight"].t()) + w["pooler.dense.bias"]);
        return torch.matmul(pooled, w["classifier.weight"].t()) + w["classifier.bias"];
    }
}
