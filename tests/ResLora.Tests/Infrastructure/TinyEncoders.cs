using System.Text.Json.Nodes;
using ResLora.IO;
using ResLora.Models.Encoders;
using TorchSharp;
using static TorchSharp.torch;

namespace ResLora.Tests.Infrastructure;

/// <summary>Tiny BERT/RoBERTa folders with random weights and a small WordPiece vocabulary, built in the test.</summary>
internal static class TinyEncoders
{
    /// <summary>Specials first (BERT's order), then whole words and a few continuation pieces.</summary>
    public static readonly string[] Vocab =
    {
        "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
        "the", "a", "movie", "film", "was", "is", "good", "great", "bad", "awful", "fun", "boring", "plot", "acting",
        "really", "not", "very", "and", "but", "i", "liked", "hated", "it", ".", "!", ",", "##s", "##ly", "##ing",
        "love", "loved", "terrible", "excellent", "dull", "story",
    };

    public static JsonObject ConfigJson(string modelType = "bert", int hidden = 16, int layers = 2, int heads = 2, int intermediate = 24)
    {
        bool roberta = modelType != "bert";
        return new JsonObject
        {
            ["model_type"] = modelType,
            ["architectures"] = new JsonArray(roberta ? "RobertaModel" : "BertModel"),
            ["vocab_size"] = Vocab.Length,
            ["hidden_size"] = hidden,
            ["num_hidden_layers"] = layers,
            ["num_attention_heads"] = heads,
            ["intermediate_size"] = intermediate,
            ["max_position_embeddings"] = 64,
            ["type_vocab_size"] = roberta ? 1 : 2,
            ["layer_norm_eps"] = 1e-12,
            ["hidden_act"] = "gelu",
            ["pad_token_id"] = roberta ? 1 : 0,
            ["hidden_dropout_prob"] = 0.1,
            ["attention_probs_dropout_prob"] = 0.1,
        };
    }

    /// <summary>Random weights (std 0.2; LayerNorm weights near 1, biases small but non-zero) by Hugging Face name without prefix.</summary>
    public static Dictionary<string, Tensor> RandomWeights(EncoderConfig c, long seed, bool pooler = true, double std = 0.2)
    {
        using var gen = new torch.Generator((ulong)seed);
        var d = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        foreach (var (name, shape) in BertEncoder.ExpectedWeights(c, pooler))
        {
            if (name.Contains("LayerNorm.weight", StringComparison.Ordinal)) d[name] = torch.rand(shape, generator: gen) * 0.5 + 0.75;
            else if (name.EndsWith(".bias", StringComparison.Ordinal)) d[name] = torch.rand(shape, generator: gen) * 0.2 - 0.1;
            else d[name] = torch.randn(shape, generator: gen) * std;
        }
        return d;
    }

    /// <summary>Writes config.json, model.safetensors (keys with <paramref name="keyPrefix"/>) and vocab.txt into a new folder.</summary>
    public static (string Dir, EncoderConfig Config, Dictionary<string, Tensor> Weights) WriteFolder(string dir, string modelType = "bert", long seed = 1, bool pooler = true, string keyPrefix = "", Action<JsonObject>? edit = null, double std = 0.2)
    {
        Directory.CreateDirectory(dir);
        var json = ConfigJson(modelType);
        edit?.Invoke(json);
        var c = EncoderConfig.FromJson(json);
        var w = RandomWeights(c, seed, pooler, std);
        File.WriteAllText(Path.Combine(dir, "config.json"), json.ToJsonString());
        HfCheckpoint.SaveWeights(dir, w.Select(kv => new KeyValuePair<string, Tensor>(keyPrefix + kv.Key, kv.Value)));
        File.WriteAllLines(Path.Combine(dir, "vocab.txt"), Vocab);
        File.WriteAllText(Path.Combine(dir, "tokenizer_config.json"), "{\"do_lower_case\": true, \"model_max_length\": 64}");
        return (dir, c, w);
    }

    /// <summary>
    /// The encoder's last hidden states written with plain tensor ops from the weight dictionary, independent of the model
    /// code: embeddings (+ RoBERTa's pad-offset positions), post-LayerNorm blocks with erf GELU, additive padding mask.
    /// </summary>
    public static Tensor ReferenceHidden(EncoderConfig c, IReadOnlyDictionary<string, Tensor> w, Tensor ids, Tensor? mask, Tensor? types)
    {
        long b = ids.shape[0], t = ids.shape[1];
        int nh = c.NumAttentionHeads, hd = c.HiddenSize / nh;
        Tensor Ln(Tensor x, string p) => nn.functional.layer_norm(x, new long[] { c.HiddenSize }, w[p + ".weight"], w[p + ".bias"], c.LayerNormEps);
        Tensor Lin(Tensor x, string p) => torch.matmul(x, w[p + ".weight"].t()) + w[p + ".bias"];
        Tensor pos;
        if (c.Family == EncoderFamily.Roberta)
        {
            // position of a real token = pad + (its index among the real tokens, counted from 1); padding gets pad.
            var real = ids.ne(c.PadTokenId).to_type(ScalarType.Int64);
            pos = real.cumsum(1) * real + c.PadTokenId;
        }
        else pos = torch.arange(t).unsqueeze(0).expand(b, t);
        var h = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][pos]
            + w["embeddings.token_type_embeddings.weight"][types ?? torch.zeros_like(ids)];
        h = Ln(h, "embeddings.LayerNorm");
        var add = mask is null ? torch.zeros(b, 1, 1, t) : (1 - mask.to_type(ScalarType.Float32)).view(b, 1, 1, t) * float.MinValue;
        for (int i = 0; i < c.NumHiddenLayers; i++)
        {
            string p = $"encoder.layer.{i}.";
            Tensor Split(Tensor x) => x.view(b, t, nh, hd).permute(0, 2, 1, 3);
            var q = Split(Lin(h, p + "attention.self.query"));
            var k = Split(Lin(h, p + "attention.self.key"));
            var v = Split(Lin(h, p + "attention.self.value"));
            var att = torch.softmax(torch.matmul(q, k.permute(0, 1, 3, 2)) / Math.Sqrt(hd) + add, -1);
            var ctx = torch.matmul(att, v).permute(0, 2, 1, 3).reshape(b, t, c.HiddenSize);
            var a = Ln(Lin(ctx, p + "attention.output.dense") + h, p + "attention.output.LayerNorm");
            var inter = Lin(a, p + "intermediate.dense");
            inter = 0.5 * inter * (1 + torch.special.erf(inter / Math.Sqrt(2)));
            h = Ln(Lin(inter, p + "output.dense") + a, p + "output.LayerNorm");
        }
        return h;
    }
}
