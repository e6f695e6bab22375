using System.Text;
using ResLora.Adapters;
using ResLora.IO.Gguf;
using ResLora.Models;
using ResLora.Pipelines;
using ResLora.Tests.Infrastructure;
using ResLora.Tests.Pipelines;
using ResLora.Text;
using Xunit.Abstractions;
using static ResLora.Tests.IO.Gguf.GgufExportLlamaCppTests;

namespace ResLora.Tests.IO.Gguf;

/// <summary>GGUF export in llama.cpp beyond F32 logits: quantized types' measured error, tokenizer parity, gguf-lora.</summary>
public class GgufExportExtrasTests
{
    private readonly ITestOutputHelper _out;
    public GgufExportExtrasTests(ITestOutputHelper output) => _out = output;

    private static void InTemp(string prefix, Action<string> body)
    {
        string dir = TestDirs.InMemory(prefix);
        try { body(dir); }
        finally { Directory.Delete(dir, true); }
    }

    [Fact]
    public void QuantizedTypesStayWithinMeasuredBounds()
    {
        InTemp("gguf-q", dir =>
        {
            using var model = GgufTinyFolders.Write(dir, GgufTinyFolders.Llama(), GgufTinyFolders.Llama3Regex, seed: 7);
            var ids = Prompt(11);
            var ours = OurLogits(model, ids);
            // Bounds: about 2x the error measured on this random-weight model (F16 2.3e-3, BF16 2.1e-2, Q8_0 6.3e-2, Q4_0 0.65 of the largest logit).
            foreach (var (type, bound) in new[] { (GgmlType.F16, 5e-3), (GgmlType.BF16, 4e-2), (GgmlType.Q8_0, 0.12), (GgmlType.Q4_0, 0.9) })
            {
                string gguf = Path.Combine(dir, $"model-{type}.gguf");
                var report = GgufExport.Write(model, dir, gguf, type);
                using var cpp = new LlamaCppRunner(gguf);
                double rel = RelativeError(ours, cpp.Logits(ids));
                _out.WriteLine($"{type}: {report.Bytes} bytes, max |Δlogit| / max |logit| = {rel:0.###e0}");
                Assert.True(rel < bound, $"{type}: relative logit error {rel} over bound {bound}");
            }
        });
    }

    [Fact]
    public void AddedTokenPastTheEmbeddingRows_IsLeftOutWithANote_ButAVocabularyTokenThereIsRefused()
    {
        // Gemma 3's text models ship a tokenizer.json whose <image_soft_token> (an added token) is one id past their
        // 262,144 rows: llama.cpp's converter leaves it out, and so does the export, saying so.
        InTemp("gguf-added", dir =>
        {
            using var model = GgufTinyFolders.Write(dir, GgufTinyFolders.Llama(), GgufTinyFolders.Llama3Regex);
            int rows = model.Config.VocabSize;
            string tj = Path.Combine(dir, "tokenizer.json");
            var root = (System.Text.Json.Nodes.JsonObject)System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(tj))!;
            var added = (System.Text.Json.Nodes.JsonArray)root["added_tokens"]!;
            added.Add(new System.Text.Json.Nodes.JsonObject { ["id"] = rows, ["content"] = "<image_soft_token>", ["special"] = true });
            File.WriteAllText(tj, root.ToJsonString());
            string gguf = Path.Combine(dir, "m.gguf");
            var report = GgufExport.Write(model, dir, gguf, GgmlType.F32);
            Assert.Contains(report.Notes, n => n.Contains("<image_soft_token>", StringComparison.Ordinal) && n.Contains($"({rows})", StringComparison.Ordinal));
            using (var f = GgufFile.Open(gguf))
            {
                var tokens = f.GetArray("tokenizer.ggml.tokens")!;
                Assert.Equal(rows, tokens.Items.Count);
                Assert.DoesNotContain("<image_soft_token>", tokens.Items.Cast<string>());
            }

            // A vocabulary (not added) token past the rows means the tokenizer belongs to another model: refused.
            var vocab = (System.Text.Json.Nodes.JsonObject)root["model"]!["vocab"]!;
            vocab["zzz-extra"] = rows + 1;
            File.WriteAllText(tj, root.ToJsonString());
            var e = Assert.Throws<UserInputException>(() => GgufExport.Write(model, dir, Path.Combine(dir, "n.gguf"), GgmlType.F32));
            Assert.Contains("beyond the model's", e.Message);
        });
    }

    [Fact]
    public void QuantizedRowsNotMultipleOf32AreRefusedNamingTheTensor()
    {
        InTemp("gguf-q48", dir =>
        {
            using var model = GgufTinyFolders.Write(dir, GgufTinyFolders.Llama() with { IntermediateSize = 48 }, null);
            var e = Assert.Throws<UserInputException>(() => GgufExport.Write(model, dir, Path.Combine(dir, "m.gguf"), GgmlType.Q8_0));
            Assert.Contains("ffn_down", e.Message);
            Assert.False(File.Exists(Path.Combine(dir, "m.gguf")));
        });
    }

    [Fact]
    public void MetadataAndTensorTypesFollowLlamaCppsConverter()
    {
        InTemp("gguf-meta", dir =>
        {
            using var model = GgufTinyFolders.Write(dir, GgufTinyFolders.Qwen3() with { VocabSize = GgufTinyFolders.ByteLevelVocab + 3 }, GgufTinyFolders.Qwen2Regex, seed: 3);
            string gguf = Path.Combine(dir, "m.gguf");
            GgufExport.Write(model, dir, gguf, GgmlType.Q8_0);
            using var f = GgufFile.Open(gguf);
            Assert.Equal(3u, f.Version);
            Assert.Equal("qwen3", f.GetString("general.architecture"));
            Assert.Equal(7, f.GetInteger("general.file_type"));
            Assert.Equal(16, f.GetInteger("qwen3.attention.key_length"));
            Assert.Equal(2, f.GetInteger("qwen3.attention.head_count_kv"));
            Assert.Equal("gpt2", f.GetString("tokenizer.ggml.model"));
            Assert.Equal("qwen2", f.GetString("tokenizer.ggml.pre"));
            var tokens = (GgufArray)f.Metadata["tokenizer.ggml.tokens"];
            var types = (GgufArray)f.Metadata["tokenizer.ggml.token_type"];
            Assert.Equal(GgufTinyFolders.ByteLevelVocab + 3, tokens.Items.Count);
            Assert.Equal($"[PAD{GgufTinyFolders.ByteLevelVocab}]", tokens.Items[GgufTinyFolders.ByteLevelVocab]);
            Assert.Equal(5, Convert.ToInt32(types.Items[^1]));       // UNUSED
            Assert.Equal(3, Convert.ToInt32(types.Items[GgufTinyFolders.ByteLevelVocab - 1])); // <|im_end|>: CONTROL
            Assert.DoesNotContain(f.Tensors, t => t.Name == "output.weight"); // tied
            Assert.Equal(GgmlType.Q8_0, f.Tensor("token_embd.weight").Type);
            Assert.Equal(GgmlType.F32, f.Tensor("blk.0.attn_q_norm.weight").Type);
            Assert.Equal(GgmlType.F32, f.Tensor("output_norm.weight").Type);
            Assert.Equal(new long[] { 4 * 16, 32 }, f.Tensor("blk.1.attn_q.weight").Shape); // heads × head_dim rows, hidden columns
        });
    }

    [Fact]
    public void UnknownPreTokenizerRegexIsRefusedNamingIt()
    {
        InTemp("gguf-pre", dir =>
        {
            using var model = GgufTinyFolders.Write(dir, GgufTinyFolders.Llama(), @"\p{L}+|\s+", seed: 3);
            var e = Assert.Throws<UserInputException>(() => GgufExport.Write(model, dir, Path.Combine(dir, "m.gguf"), GgmlType.F16));
            Assert.Contains(@"\p{L}+|\s+", e.Message);
            Assert.Contains("tokenizer.json", e.Message);
        });
    }

    internal static List<string> Texts()
    {
        var baseTexts = new[]
        {
            "the cat sat on the mat", "The Theory of everything.", "  leading spaces", "trailing spaces   ", "tabs\tand\nnew\nlines\r\n",
            "numbers 1 12 123 1234 12345 3.14159", "it's we're they've I'm you'll he'd", "CAPS and MiXeD case", "émigré café naïve",
            "日本語のテキスト", "emoji 🙂🚀 done", "punctuation!!! ??? ... ---", "a", " ", "\n\n\n", "x=y+z*(w-1)", "<s>hello</s>",
            "<|im_start|>user\nhi<|im_end|>", "wings and things ringing", "Ünïcödé ẞ ß", "1,000,000 and 2024-01-01",
        };
        var rng = new Random(5);
        var words = "the he in a er s on w re at en c is b or ing 1 12 f cat dog 🙂 é 7 42 ! ? , . \n \t".Split(' ');
        var list = baseTexts.ToList();
        while (list.Count < 120)
        {
            var sb = new StringBuilder();
            int n = rng.Next(1, 12);
            for (int i = 0; i < n; i++) sb.Append(words[rng.Next(words.Length)]).Append(rng.Next(3) == 0 ? "" : " ");
            list.Add(sb.ToString());
        }
        return list;
    }

    [Theory]
    [InlineData("llama-bpe")]
    [InlineData("qwen2")]
    [InlineData("gpt-2")]
    [InlineData("spm")]
    public void LlamaCppTokenizesAsWeDo(string kind)
    {
        InTemp("gguf-tok", dir =>
        {
            ModelConfig config;
            if (kind == "spm")
            {
                var ids = ChatTokenizerFiles.WriteSentencePiece(dir, new[] { "<s>", "</s>" }, "abcdefghijklmnopqrstuvwxyzT".Select(c => c.ToString()).Append("\u2581").ToList(),
                    new[] { ("\u2581", "t"), ("h", "e"), ("\u2581t", "he"), ("i", "n"), ("in", "g"), ("\u2581", "a"), ("e", "r"), ("o", "n") },
                    new System.Text.Json.Nodes.JsonObject { ["bos_token"] = "<s>", ["eos_token"] = "</s>", ["add_bos_token"] = true });
                config = GgufTinyFolders.Llama() with { VocabSize = ids.Values.Max() + 1 };
                using var m = TinyModels.Build(config, 3);
                ModelFolder.Save(dir, config, m.BaseParameters().Select(kv => new KeyValuePair<string, TorchSharp.torch.Tensor>(kv.Key, kv.Value)));
            }
            else
            {
                string? regex = kind switch { "llama-bpe" => GgufTinyFolders.Llama3Regex, "qwen2" => GgufTinyFolders.Qwen2Regex, _ => null };
                config = kind == "qwen2" ? GgufTinyFolders.Qwen2() : GgufTinyFolders.Llama();
                GgufTinyFolders.Write(dir, config, regex, seed: 3).Dispose();
            }
            using var model = ModelLoader.Load(dir, new RuntimeOptions());
            string gguf = Path.Combine(dir, "model.gguf");
            GgufExport.Write(model, dir, gguf, GgmlType.F32);
            var ours = TokenizerLoader.Load(dir);
            using var cpp = new LlamaCppRunner(gguf);
            int same = 0;
            var texts = Texts();
            var diffs = new List<string>();
            foreach (var t in texts)
            {
                var a = ours.Encode(t).ToArray();
                var b = cpp.Tokenize(t);
                if (a.SequenceEqual(b)) same++;
                else diffs.Add($"{t.Replace("\n", "\\n")}: ours [{string.Join(",", a)}] llama.cpp [{string.Join(",", b)}]");
            }
            _out.WriteLine($"{kind}: {same}/{texts.Count} texts tokenized identically");
            foreach (var d in diffs.Take(5)) _out.WriteLine(d);
            Assert.True(same == texts.Count, $"{kind}: {texts.Count - same} of {texts.Count} differ, e.g. {diffs.FirstOrDefault()}");
        });
    }

    [Fact]
    public void GgufLoraAppliedByLlamaCppEqualsOurMergedModel()
    {
        InTemp("gguf-lora", dir =>
        {
            string modelDir = Path.Combine(dir, "model"), adapterDir = Path.Combine(dir, "adapter");
            GgufTinyFolders.Write(modelDir, GgufTinyFolders.Llama(), GgufTinyFolders.Llama3Regex, seed: 7).Dispose();
            MultiAdapterFixture.SaveTrainedLooking(modelDir, adapterDir, new LoraConfig { R = 4, LoraAlpha = 8, TargetModules = ModuleTargets.AllLinear }, 10, 0.2);
            string baseGguf = Path.Combine(dir, "base.gguf"), loraGguf = Path.Combine(dir, "lora.gguf");
            GgufExport.Export(modelDir, null, baseGguf, GgmlType.F32, new RuntimeOptions());
            var report = GgufLoraExport.Export(modelDir, adapterDir, loraGguf, new RuntimeOptions(), new ExportOptions());
            Assert.Equal(8f, report.Alpha);

            var ids = Prompt(11);
            using var merged = ModelSessions.LoadWithAdapter(modelDir, adapterDir, new RuntimeOptions());
            var ours = OurLogits(merged, ids);
            using var cpp = new LlamaCppRunner(baseGguf);
            var adapter = cpp.Weights.NativeHandle.LoadLoraFromFile(loraGguf);
            double rel = RelativeError(ours, cpp.Logits(ids, adapter));
            double without = RelativeError(ours, cpp.Logits(ids));
            _out.WriteLine($"gguf-lora in llama.cpp vs our LoRA model: {rel:0.###e0} (base alone: {without:0.###e0})");
            Assert.True(rel < 1e-4, $"relative error {rel}");
            Assert.True(without > 1e-2, "the adapter must change the logits for the check to mean something");
        });
    }
}
