using ResLora.Adapters;
using ResLora.IO;
using ResLora.Models;
using ResLora.Pipelines;
using ResLora.Tests.Infrastructure;
using TorchSharp;
using static ResLora.Tests.Adapters.AdapterTestKit;
using static TorchSharp.torch;

namespace ResLora.Tests.Pipelines;

/// <summary>Many adapters on one base: mixed batches against each row alone, switching, unloading, memory, refusals.</summary>
public sealed class AdapterSetTests : IClassFixture<MultiAdapterFixture>
{
    private static readonly string[] Served = { "lora", "rslora", "dora", "exported" };
    private readonly MultiAdapterFixture _f;

    public AdapterSetTests(MultiAdapterFixture fixture) => _f = fixture;

    private AdapterSet LoadSet(params string[] names)
    {
        var set = AdapterSet.Load(_f.ModelDir, new RuntimeOptions());
        try
        {
            foreach (var n in names) set.Add(n, _f.Dir(n));
            return set;
        }
        catch
        {
            set.Dispose();
            throw;
        }
    }

    /// <summary>The single-adapter model of today's code path (LoraLinear/DoraLinear), or the plain base for null.</summary>
    private CausalLM Reference(string? adapter) =>
        adapter is null ? ModelSessions.LoadBase(_f.ModelDir, new RuntimeOptions()) : ModelSessions.LoadWithAdapter(_f.ModelDir, _f.Dir(adapter), new RuntimeOptions());

    private static bool Same(Tensor a, Tensor b) => a.shape.SequenceEqual(b.shape) && MaxAbsDiff(a, b) == 0;

    /// <summary>With DoRA in the batch each adapter's rows run apart; without it the projections fuse every row's term
    /// into two bmm over stacked factors (ranks 4, 8 and exported per-module ranks zero-padded, adapters absent from a
    /// projection as zeros). Both give each row its logits alone.</summary>
    [Theory]
    [InlineData("lora,-,dora,rslora,exported,lora,base")]
    [InlineData("lora,-,rslora,exported,lora,base,exported")]
    public void MixedBatch_EachRow_MatchesThatRowAloneWithItsAdapter(string rows)
    {
        string?[] perRow = rows.Split(',').Select(r => r == "-" ? null : r).ToArray(); // "-": null, "base": the base by name
        using var set = LoadSet(Served);
        using var ids = TinyModels.RandomIds(perRow.Length, 9, _f.Config.VocabSize, 21);
        using var mixed = set.Forward(ids, null, perRow);
        Assert.Equal(new long[] { perRow.Length, 9, _f.Config.VocabSize }, mixed.shape);
        using var baseModel = Reference(null);
        for (int i = 0; i < perRow.Length; i++)
        {
            string? a = perRow[i] == "base" ? null : perRow[i];
            using var row = ids.narrow(0, i, 1);
            using var reference = Reference(a);
            using var alone = reference.forward(row);
            using var got = mixed.narrow(0, i, 1);
            Assert.True(MaxAbsDiff(got, alone) <= 1e-5, $"row {i} ({a ?? "base"}): max |Δ| {MaxAbsDiff(got, alone)}");
            if (a is not null)
            {
                using var plain = baseModel.forward(row);
                Assert.True(MaxAbsDiff(alone, plain) > 1e-2, $"adapter {a} must change the logits");
            }
        }
    }

    [Theory]
    [InlineData(0.0)]
    [InlineData(0.8)]
    public void Generate_MixedBatchWithPadding_EqualsEachPromptAloneWithItsAdapter(double temperature)
    {
        using var set = LoadSet(Served);
        var prompts = new[] { new[] { 1, 5, 9, 14 }, new[] { 1, 7 }, new[] { 1, 3, 3, 8, 20, 11 }, new[] { 1, 30, 4 }, new[] { 1, 12, 13, 6, 2 } };
        string?[] perRow = { "dora", "lora", null, "exported", "rslora" };
        var options = new GenerationOptions { MaxNewTokens = 6, Temperature = temperature, Seed = 5 };
        var streamed = new List<int>[prompts.Length];
        for (int i = 0; i < prompts.Length; i++) streamed[i] = new List<int>();
        var outputs = set.Generate(prompts, perRow, options, (row, token) => streamed[row].Add(token));
        for (int i = 0; i < prompts.Length; i++)
        {
            using var reference = Reference(perRow[i]);
            var alone = TextGenerator.Generate(reference, prompts[i], options);
            Assert.Equal(alone, outputs[i]);
            Assert.Equal(outputs[i], streamed[i]);
        }
    }

    [Fact]
    public void Generate_RowsWithTheirOwnSettings_EachEqualsThatRowAlone()
    {
        using var set = LoadSet(Served);
        var prompts = new[] { new[] { 1, 5, 9, 14 }, new[] { 1, 7 }, new[] { 1, 3, 3, 8, 20, 11 }, new[] { 1, 30, 4 }, new[] { 1, 12 } };
        string?[] perRow = { "dora", "lora", null, "exported", "rslora" };
        var options = new[]
        {
            new GenerationOptions { MaxNewTokens = 7 },
            new GenerationOptions { MaxNewTokens = 2, Temperature = 0.9, Seed = 3 },
            new GenerationOptions { MaxNewTokens = 5, Temperature = 0.7, TopP = 0.8, Seed = 11 },
            new GenerationOptions { MaxNewTokens = 0 },
            new GenerationOptions { MaxNewTokens = 6, StopWhen = o => o.Count == 3 },
        };
        var rows = prompts.Select((p, i) => new GenerationRow(p, perRow[i], options[i])).ToList();
        var outputs = set.Generate(rows);
        for (int i = 0; i < prompts.Length; i++)
        {
            using var reference = Reference(perRow[i]);
            Assert.Equal(TextGenerator.Generate(reference, prompts[i], options[i]), outputs[i]);
        }
        Assert.Equal(new[] { 7, 2, 5, 0, 3 }, outputs.Select(o => o.Count));
    }

    [Fact]
    public void Generate_CancelledRow_LeavesTheBatchAndTheOthersAreUnchanged()
    {
        using var set = LoadSet("lora", "dora");
        var prompts = new[] { new[] { 1, 5, 9 }, new[] { 1, 7 }, new[] { 1, 4, 4, 4 } };
        string?[] perRow = { "lora", "dora", null };
        var options = new GenerationOptions { MaxNewTokens = 6 };
        using var cancel = new CancellationTokenSource();
        var rows = prompts.Select((p, i) => new GenerationRow(p, perRow[i], options) { Cancellation = i == 1 ? cancel.Token : default, OnToken = i == 1 ? _ => cancel.Cancel() : null }).ToList();
        var outputs = set.Generate(rows);
        Assert.Single(outputs[1]); // cancelled after its first token
        foreach (int i in new[] { 0, 2 })
        {
            using var reference = Reference(perRow[i]);
            Assert.Equal(TextGenerator.Generate(reference, prompts[i], options), outputs[i]);
        }
    }

    [Fact]
    public void Generate_StopsEachRowAtItsEndOfSequence()
    {
        using var set = LoadSet("lora");
        var prompts = new[] { new[] { 1, 5, 9 }, new[] { 1, 7 } };
        var free = set.Generate(prompts, new[] { "lora", null }, new GenerationOptions { MaxNewTokens = 5 });
        int stop = free[0][1];
        var outputs = set.Generate(prompts, new[] { "lora", null }, new GenerationOptions { MaxNewTokens = 5, EosTokenIds = new[] { stop } });
        Assert.Equal(free[0].Take(free[0].ToList().IndexOf(stop) + 1), outputs[0]);
        Assert.Equal(free[1].Contains(stop) ? free[1].Take(free[1].ToList().IndexOf(stop) + 1) : free[1], outputs[1]);
    }

    [Fact]
    public void SwitchAndUnload_LeaveTheBaseBitExact()
    {
        using var set = LoadSet("lora", "dora");
        var before = set.Model.BaseParameters().ToDictionary(kv => kv.Key, kv => kv.Value.detach().clone());
        using var ids = TinyModels.RandomIds(2, 8, _f.Config.VocabSize, 22);
        using var baseModel = Reference(null);
        using var baseLogits = baseModel.forward(ids);

        Assert.Null(set.Active);
        using (var l = set.Model.forward(ids)) Assert.True(Same(l, baseLogits), "no adapter active: the plain projections' logits, bit for bit");
        foreach (var a in new[] { "lora", "dora" })
        {
            set.Active = a;
            using var reference = Reference(a);
            using var expected = reference.forward(ids);
            using var got = set.Model.forward(ids);
            Assert.True(MaxAbsDiff(got, expected) <= 1e-6, $"{a} active: max |Δ| {MaxAbsDiff(got, expected)}");
        }
        set.Active = MultiLoraPlan.BaseName;
        Assert.Null(set.Active);
        using (var l = set.Model.forward(ids)) Assert.True(Same(l, baseLogits), "switched back to the base: bit-exact");

        set.Active = "dora";
        long bytes = set.AdapterBytes, doraBytes = set.Adapters.Single(a => a.Name == "dora").Bytes;
        set.Remove("dora");
        Assert.Null(set.Active); // the active adapter was removed: the base is active
        Assert.Equal(new[] { "lora" }, set.Adapters.Select(a => a.Name));
        Assert.Equal(bytes - doraBytes, set.AdapterBytes);
        Assert.All(set.Plan.Layers.Values, l => Assert.DoesNotContain("dora", l.AdapterNames));
        using (var l = set.Model.forward(ids)) Assert.True(Same(l, baseLogits), "after unloading: bit-exact");
        foreach (var (name, p) in set.Model.BaseParameters()) Assert.True(Same(p, before[name]), $"{name} changed");
        foreach (var t in before.Values) t.Dispose();

        // The name is free again, and the adapter comes back identical.
        set.Add("dora", _f.Dir("dora"));
        set.Active = "dora";
        using var again = set.Model.forward(ids);
        using var doraRef = Reference("dora");
        using var expectedAgain = doraRef.forward(ids);
        Assert.True(MaxAbsDiff(again, expectedAgain) <= 1e-6);
    }

    [Fact]
    public void Add_GrowsMemoryByTheAdapterTensorsOnly()
    {
        using var set = LoadSet();
        var paramsBefore = set.Model.named_parameters().Select(p => (p.name, p.parameter.Handle)).ToList();
        foreach (var n in Served)
        {
            var loaded = set.Add(n, _f.Dir(n));
            using var contents = AdapterFolder.Load(_f.Dir(n));
            long fileBytes = contents.Tensors.Values.SelectMany(m => m.Values).Sum(t => t.numel() * 4); // float32, as a float32 base holds them
            Assert.Equal(fileBytes, loaded.Bytes);
            Assert.Equal(contents.Tensors.Count, loaded.Modules);
        }
        Assert.Equal(Served.Sum(n => set.Adapters.Single(a => a.Name == n).Bytes), set.AdapterBytes);
        // No parameter appeared or was replaced: the base weights are the same tensors, shared by every adapter.
        Assert.Equal(paramsBefore, set.Model.named_parameters().Select(p => (p.name, p.parameter.Handle)).ToList());
        Assert.Equal("dora", set.Adapters.Single(a => a.Name == "dora").Kind);
        Assert.Equal("rslora", set.Adapters.Single(a => a.Name == "rslora").Kind);
        // The exported ResLoRA bs adapter has per-module ranks (r·(blocks in the chain)), carried by rank_pattern.
        Assert.NotEmpty(set.Adapters.Single(a => a.Name == "exported").Config.RankPattern);
    }

    [Theory]
    [InlineData("reslora", "reslora adapter (peft_type RESLORA)")]
    [InlineData("loha", "loha adapter (peft_type LOHA)")]
    public void Add_OtherAdapterTypes_AreRefusedByName(string name, string expected)
    {
        using var set = LoadSet();
        var e = Assert.Throws<UserInputException>(() => set.Add(name, _f.Dir(name)));
        Assert.Contains(expected, e.Message);
        Assert.Contains("reslora export", e.Message);
        Assert.Empty(set.Adapters);
        Assert.All(set.Plan.Layers.Values, l => Assert.Empty(l.AdapterNames));
    }

    [Fact]
    public void Misuse_IsRefusedWithActionableMessages()
    {
        using var set = LoadSet("lora");
        Assert.Contains("already loaded", Assert.Throws<UserInputException>(() => set.Add("lora", _f.Dir("dora"))).Message);
        Assert.Contains("not 'base'", Assert.Throws<UserInputException>(() => set.Add("base", _f.Dir("dora"))).Message);
        Assert.Contains("letters, digits", Assert.Throws<UserInputException>(() => set.Add("a:b", _f.Dir("dora"))).Message);
        Assert.Contains("no such folder", Assert.Throws<DirectoryNotFoundException>(() => set.Add("x", Path.Combine(_f.Root, "missing"))).Message);
        Assert.Contains("loaded: lora", Assert.Throws<UserInputException>(() => set.Active = "nope").Message);
        using var ids = TinyModels.RandomIds(2, 4, _f.Config.VocabSize, 3);
        Assert.Contains("no adapter named 'nope'", Assert.Throws<UserInputException>(() => set.Forward(ids, null, new[] { "lora", "nope" })).Message);
        Assert.Contains("one adapter (or null for none) per row", Assert.Throws<UserInputException>(() => set.Forward(ids, null, new[] { "lora" })).Message);
        // A failed forward leaves no route behind.
        using var ok = set.Forward(ids, null, new[] { "lora", null });
        Assert.Contains("remove it first", Assert.Throws<UserInputException>(() => set.Add("lora", _f.Dir("lora"))).Message);
    }

    [Fact]
    public void Add_FolderForOtherModules_IsRefusedAndInstallsNothing()
    {
        string dir = Path.Combine(_f.Root, "wrong-target-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dir);
        File.Copy(Path.Combine(_f.Dir("lora8"), AdapterFolder.WeightsFileName), Path.Combine(dir, AdapterFolder.WeightsFileName));
        // The config says q_proj only; the tensors also cover v_proj.
        File.WriteAllText(Path.Combine(dir, AdapterFolder.ConfigFileName), AdapterConfigJson.Serialize(new LoraConfig { R = 8, LoraAlpha = 8, TargetModules = ModuleTargets.List("q_proj") }));
        using var set = LoadSet();
        var e = Assert.Throws<UserInputException>(() => set.Add("w", dir));
        Assert.Contains("v_proj", e.Message);
        Assert.Contains("does not target", e.Message);
        Assert.Empty(set.Adapters);
        Assert.All(set.Plan.Layers.Values, l => Assert.Empty(l.AdapterNames));
    }
}
