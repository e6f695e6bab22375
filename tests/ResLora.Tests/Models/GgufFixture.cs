using System.Text;
using ResLora.IO.Gguf;
using ResLora.Models;
using ResLora.Text;
using TorchSharp;

namespace ResLora.Tests.Models;

/// <summary>
/// Test fixture, not the product exporter: writes a GGUF from a Hugging Face config and weights the way llama.cpp's
/// convert_hf_to_gguf.py does (set_gguf_parameters' keys, names via <see cref="GgufNames.ToGguf"/>, q/k permuted for the
/// <c>llama</c> architecture, 1-D tensors kept F32), with a vocabulary given as GGUF tokenizer keys.
/// </summary>
internal static class GgufFixture
{
    /// <summary>The tokenizer.ggml.* keys convert_hf_to_gguf writes.</summary>
    public sealed record Vocab(string Model, IReadOnlyList<string> Tokens, IReadOnlyList<int> Types, IReadOnlyList<float>? Scores = null,
        IReadOnlyList<string>? Merges = null, string? Pre = null, int? Bos = 1, int? Eos = 2, int? Unk = null, bool? AddBos = true, string? ChatTemplate = null);

    /// <summary>A byte-level vocabulary of <paramref name="n"/> plain tokens (ids 0..2 are control tokens) and no merges: enough for model round trips.</summary>
    public static Vocab PlainVocab(int n) => new("gpt2",
        Enumerable.Range(0, n).Select(i => i switch { 0 => "<unk>", 1 => "<s>", 2 => "</s>", _ => $"t{i}" }).ToList(),
        Enumerable.Range(0, n).Select(i => i < 3 ? GgufTokenizerFiles.Control : GgufTokenizerFiles.Normal).ToList(),
        Merges: new List<string>(), Pre: "llama-bpe", ChatTemplate: "{{ messages[0]['content'] }}");

    public static void SetVocab(GgufWriter w, Vocab v)
    {
        w.Set("tokenizer.ggml.model", v.Model);
        if (v.Pre is not null) w.Set("tokenizer.ggml.pre", v.Pre);
        w.SetStrings("tokenizer.ggml.tokens", v.Tokens);
        if (v.Scores is not null) w.SetFloats("tokenizer.ggml.scores", v.Scores);
        w.SetInts("tokenizer.ggml.token_type", v.Types);
        if (v.Merges is not null) w.SetStrings("tokenizer.ggml.merges", v.Merges);
        if (v.Bos is { } b) w.Set("tokenizer.ggml.bos_token_id", (uint)b);
        if (v.Eos is { } e) w.Set("tokenizer.ggml.eos_token_id", (uint)e);
        if (v.Unk is { } u) w.Set("tokenizer.ggml.unknown_token_id", (uint)u);
        if (v.AddBos is { } ab) w.Set("tokenizer.ggml.add_bos_token", ab);
        if (v.ChatTemplate is not null) w.Set("tokenizer.chat_template", v.ChatTemplate);
    }

    /// <summary>
    /// A GGUF of <paramref name="c"/> and <paramref name="weights"/> (HF names, float32), matrices stored as <paramref name="type"/>.
    /// <paramref name="meta"/> adds keys, <paramref name="skip"/> leaves tensors out (for corruption tests).
    /// </summary>
    public static void Write(string path, ModelConfig c, IReadOnlyDictionary<string, torch.Tensor> weights, GgmlType type, Vocab vocab,
        Action<GgufWriter>? meta = null, Func<string, bool>? skip = null)
    {
        var names = ModelFamilies.ForCausalLM(c.ModelType).Gguf(c);
        string a = names.Architecture;
        var w = new GgufWriter();
        w.Set("general.architecture", a);
        w.Set("general.name", "tiny");
        w.Set($"{a}.block_count", (uint)c.NumHiddenLayers);
        w.Set($"{a}.context_length", (uint)c.MaxPositionEmbeddings);
        w.Set($"{a}.embedding_length", (uint)c.HiddenSize);
        w.Set($"{a}.feed_forward_length", (uint)c.IntermediateSize);
        w.Set($"{a}.attention.head_count", (uint)c.NumAttentionHeads);
        w.Set($"{a}.attention.head_count_kv", (uint)c.NumKeyValueHeads);
        w.Set($"{a}.rope.freq_base", (float)c.RopeTheta);
        w.Set($"{a}.attention.layer_norm_rms_epsilon", (float)c.RmsNormEps);
        if (c.HeadDimRaw is { } hd)
        {
            w.Set($"{a}.attention.key_length", (uint)hd);
            w.Set($"{a}.attention.value_length", (uint)hd);
        }
        if (a == "llama")
        {
            w.Set($"{a}.vocab_size", (uint)c.VocabSize);
            w.Set($"{a}.rope.dimension_count", (uint)c.HeadDim);
        }
        if (c.RopeScaling is { Kind: "linear" } rs)
        {
            w.Set($"{a}.rope.scaling.type", "linear");
            w.Set($"{a}.rope.scaling.factor", (float)rs.Factor);
        }
        meta?.Invoke(w);
        SetVocab(w, vocab);
        foreach (var (hf, t) in weights)
        {
            if (c.TieWordEmbeddings && hf == "lm_head.weight") continue;
            string gg = names.ToGguf(hf) ?? throw new InvalidOperationException(hf);
            if (skip?.Invoke(gg) == true) continue;
            long[] shape = t.shape;
            float[] x = t.to_type(torch.ScalarType.Float32).data<float>().ToArray();
            if (names.PermuteHeads(hf, c) is { } heads) x = GgufNames.Permute(x, shape, heads);
            w.AddTensor(gg, shape, shape.Length == 1 ? GgmlType.F32 : type, () => x);
        }
        w.Write(path);
    }

    /// <summary>
    /// Rewrites tensor <paramref name="name"/>'s directory entry (row length and type) and its data in place; the new data must
    /// have the old byte size (a GGUF written with an F32 stand-in of the same size). For hand-built K-quant tensors.
    /// </summary>
    public static void Patch(string path, string name, long rowLength, GgmlType type, byte[] data)
    {
        var bytes = File.ReadAllBytes(path);
        long dataOffset;
        GgufTensorInfo info;
        using (var g = GgufFile.Open(path))
        {
            info = g.Tensor(name);
            dataOffset = g.DataOffset;
        }
        if (data.Length != info.Bytes) throw new ArgumentException($"{data.Length} bytes for a slot of {info.Bytes}");
        var key = Encoding.UTF8.GetBytes(name);
        int at = -1;
        for (int i = 0; i + key.Length + 8 <= bytes.Length && at < 0; i++)
            if (BitConverter.ToUInt64(bytes, i) == (ulong)key.Length && bytes.AsSpan(i + 8, key.Length).SequenceEqual(key)) at = i + 8 + key.Length;
        if (at < 0) throw new ArgumentException(name);
        uint nd = BitConverter.ToUInt32(bytes, at);
        BitConverter.TryWriteBytes(bytes.AsSpan(at + 4), (ulong)rowLength);
        BitConverter.TryWriteBytes(bytes.AsSpan(at + 4 + 8 * (int)nd), (uint)type);
        data.CopyTo(bytes, dataOffset + info.Offset);
        File.WriteAllBytes(path, bytes);
    }

    /// <summary>
    /// Greedy BPE training on <paramref name="words"/> (each a list of symbols): the most frequent adjacent pair is merged,
    /// <paramref name="merges"/> times (ties by first occurrence). Returns the merges in order.
    /// </summary>
    public static List<(string A, string B)> TrainBpe(IEnumerable<List<string>> words, int merges)
    {
        var ws = words.Select(w => w.ToList()).ToList();
        var result = new List<(string, string)>();
        for (int m = 0; m < merges; m++)
        {
            var counts = new Dictionary<(string, string), int>();
            var order = new List<(string, string)>();
            foreach (var w in ws)
                for (int i = 0; i + 1 < w.Count; i++)
                {
                    var p = (w[i], w[i + 1]);
                    if (!counts.TryGetValue(p, out int n)) order.Add(p);
                    counts[p] = n + 1;
                }
            if (order.Count == 0) break;
            var best = order.OrderByDescending(p => counts[p]).First();
            result.Add(best);
            foreach (var w in ws)
                for (int i = 0; i + 1 < w.Count; i++)
                    if (w[i] == best.Item1 && w[i + 1] == best.Item2) { w[i] += w[i + 1]; w.RemoveAt(i + 1); }
        }
        return result;
    }

    /// <summary>Varied texts: corpus sentences, their fragments, digits, punctuation, runs of spaces and newlines, accents, CJK and emoji.</summary>
    public static List<string> Texts(int n, int seed)
    {
        string[] words = Corpus.Split(' ', StringSplitOptions.RemoveEmptyEntries);
        string[] extras = { "1234567", "3.14159", "naïve café", "日本語のテキスト", "emoji 🙂👍", "tab\there", "line\nbreak\n\nx", "  two  spaces", "it's", "THEY'LL", "a-b_c/d", "$5.00!", "x  ", "\u00e9t\u00e9", "Ünïcödé" };
        var r = new Random(seed);
        var texts = new List<string>();
        for (int i = 0; i < n; i++)
        {
            var sb = new StringBuilder();
            int k = r.Next(1, 12);
            for (int j = 0; j < k; j++)
            {
                if (j > 0) sb.Append(r.Next(8) == 0 ? "  " : " ");
                sb.Append(r.Next(5) == 0 ? extras[r.Next(extras.Length)] : words[r.Next(words.Length)]);
            }
            texts.Add(i % 3 == 0 ? " " + sb : sb.ToString());
        }
        return texts;
    }

    public const string Corpus = "the quick brown fox jumps over the lazy dog . the dog sleeps in the sun and the fox runs into the forest , "
        + "then the fox thinks about the other dogs . there is nothing in the world that the fox loves more than the thrill of the run "
        + "in the morning , the fox and the dog meet again ; they talk , they laugh , they share their thoughts and their things . "
        + "numbers like 12 and 345 appear too , with words such as running , thinking , jumped , lazily and quickly .";
}
