using ResLora.Adapters;
using ResLora.Pipelines;
using ResLora.Tests.Infrastructure;
using ResLora.Tests.IO.Gguf;
using ResLora.Tests.Pipelines;

namespace ResLora.Tests.Cli;

/// <summary>reslora export --as gguf / gguf-lora from the command line: merged export checked in llama.cpp, Modelfiles, bad input.</summary>
[Collection("console")]
public sealed class GgufExportCliTests : IDisposable
{
    private readonly string _dir = TestDirs.InMemory("reslora-ggufcli-");

    public void Dispose() => Directory.Delete(_dir, true);

    private (string Model, string Adapter) Folders(AdapterConfigBase cfg, string name = "adapter")
    {
        string model = Path.Combine(_dir, "model");
        if (!Directory.Exists(model)) CliHarness.ModelFolder(model);
        string adapter = Path.Combine(_dir, name);
        MultiAdapterFixture.SaveTrainedLooking(model, adapter, cfg, 10, 0.2);
        return (model, adapter);
    }

    [Fact]
    public void QuantizedFolder_ExportsItsWeights_AndSaysTheActivationQuantizersStayBehind()
    {
        string model = Path.Combine(_dir, "model"), w4a8 = Path.Combine(_dir, "w4a8"), plain = Path.Combine(_dir, "plain.gguf"), q = Path.Combine(_dir, "q.gguf");
        CliHarness.ModelFolder(model);
        var quant = CliHarness.Run("quantize", "--model", model, "--wbits", "4", "--abits", "8", "--out", w4a8);
        Assert.True(quant.Rc == 0, quant.Err);
        var a = CliHarness.Run("export", "--as", "gguf", "--model", model, "--out", plain, "--gguf-type", "f32");
        Assert.True(a.Rc == 0, a.Err);
        Assert.DoesNotContain("activation quantization", a.Err);
        var b = CliHarness.Run("export", "--as", "gguf", "--model", w4a8, "--out", q, "--gguf-type", "f32");
        Assert.True(b.Rc == 0, b.Err);
        Assert.Contains("note: ", b.Err);
        Assert.Contains("per-token activation quantization", b.Err);
    }

    [Fact]
    public void MergedGgufEqualsTheMergedModelInLlamaCppAndModelfilesAreWritten()
    {
        var (model, adapter) = Folders(new LoraConfig { R = 4, LoraAlpha = 8, TargetModules = ModuleTargets.AllLinear });
        string outDir = Path.Combine(_dir, "out");
        Directory.CreateDirectory(outDir);
        string gguf = Path.Combine(outDir, "merged.gguf");
        var (rc, output, err) = CliHarness.Run("export", "--as", "gguf", "--model", model, "--adapter", adapter, "--out", gguf, "--gguf-type", "f32", "--ollama", "--threads", "1");
        Assert.True(rc == 0, err + output);
        Assert.Contains("GGUF v3, architecture llama", output);
        Assert.Contains("merged lora first", output);
        Assert.Contains("no TEMPLATE", output); // the demo tokenizer has no chat template
        Assert.StartsWith("FROM ./merged.gguf", File.ReadAllText(Path.Combine(outDir, "Modelfile")));

        using var merged = ModelSessions.LoadWithAdapter(model, adapter, new RuntimeOptions());
        var ids = Enumerable.Range(0, 64).Select(i => 3 + i * 7 % 40).ToArray();
        using var cpp = new LlamaCppRunner(gguf);
        double rel = GgufExportLlamaCppTests.RelativeError(GgufExportLlamaCppTests.OurLogits(merged, ids), cpp.Logits(ids));
        Assert.True(rel < 1e-4, $"relative error {rel}");
        var text = "hello world 12 + 30";
        Assert.Equal(ResLora.Text.TokenizerLoader.Load(model).Encode(text), cpp.Tokenize(text));

        string loraDir = Path.Combine(_dir, "lora-out");
        Directory.CreateDirectory(loraDir);
        (rc, output, err) = CliHarness.Run("export", "--as", "gguf-lora", "--model", model, "--adapter", adapter, "--out", Path.Combine(loraDir, "a.gguf"), "--ollama");
        Assert.True(rc == 0, err + output);
        Assert.Contains("llama.cpp LoRA adapter", output);
        Assert.Contains("ADAPTER ./a.gguf", File.ReadAllText(Path.Combine(loraDir, "Modelfile")));
    }

    [Fact]
    public void NonLoraAdapterIsConvertedFirstWithItsReport()
    {
        var (model, adapter) = Folders(new LoraConfig { R = 4, LoraAlpha = 6, UseDora = true, TargetModules = ModuleTargets.List("q_proj", "v_proj") }, "dora");
        string gguf = Path.Combine(_dir, "dora.gguf");
        var (rc, output, err) = CliHarness.Run("export", "--as", "gguf-lora", "--model", model, "--adapter", adapter, "--out", gguf, "--rank", "4");
        Assert.True(rc == 0, err + output);
        Assert.Contains("converted first: exported ", output);
        Assert.Contains("truncated SVD", output);
        using var cpp = new LlamaCppRunner(Path.Combine(_dir, "base-check.gguf") is var b && CliHarness.Run("export", "--as", "gguf", "--model", model, "--out", b, "--gguf-type", "f32").Item1 == 0 ? b : throw new Xunit.Sdk.XunitException("base export failed"));
        var lora = cpp.Weights.NativeHandle.LoadLoraFromFile(gguf);
        Assert.Equal(64, cpp.Logits(Enumerable.Range(3, 64).Select(i => i % 40 + 3).ToArray(), lora).Length);
    }

    [Theory]
    [InlineData("--gguf-type", "q5_k", "--gguf-type q5_k")]
    [InlineData("--out", "model.bin", "ending in .gguf")]
    public void BadInputIsAClearError(string flag, string value, string expected)
    {
        string model = Path.Combine(_dir, "model");
        CliHarness.ModelFolder(model);
        var args = new List<string> { "export", "--as", "gguf", "--model", model, "--out", Path.Combine(_dir, "m.gguf") };
        int at = args.IndexOf(flag);
        if (at >= 0) args[at + 1] = value;
        else args.AddRange(new[] { flag, value });
        var (rc, output, err) = CliHarness.Run(args.ToArray());
        Assert.NotEqual(0, rc);
        Assert.Contains(expected, err + output);
        Assert.DoesNotContain("   at ", err);
    }

    [Fact]
    public void ChatFormatsAreRecognisedForOllama()
    {
        Assert.Equal("ChatML", OllamaModelfile.Recognise("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>{% endfor %}").Name);
        Assert.Equal("Llama-3", OllamaModelfile.Recognise("<|start_header_id|>{{ role }}<|end_header_id|>").Name);
        Assert.Equal("Llama-2/Mistral", OllamaModelfile.Recognise("[INST] {{ content }} [/INST]").Name);
        Assert.Null(OllamaModelfile.Recognise("{{ content }}").Template);
        Assert.Contains("<|im_end|>", OllamaModelfile.Recognise("<|im_start|>").Stops);
    }
}
