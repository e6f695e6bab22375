using System.Diagnostics;
using ResLora.Extensions.AI;
using ResLora.Tests.Architecture;
using ResLora.Tests.Serving;

namespace ResLora.Tests.ExtensionsAI;

/// <summary>
/// Where the chat client lives and how it is shown: the core library takes no Microsoft.Extensions.AI dependency (the
/// client's own assembly does), the sample runs on a real model folder and chats with base and adapters, and
/// docs/serving.md shows the sample's code as it is.
/// </summary>
public sealed class ChatClientPackagingTests : IClassFixture<ServingFixture>
{
    private readonly ServingFixture _f;

    public ChatClientPackagingTests(ServingFixture fixture) => _f = fixture;

    [Fact]
    public void CoreAssembly_ReferencesNoMicrosoftExtensionsAI()
    {
        string[] forbidden = { "Microsoft.Extensions.AI" };
        Assert.Empty(LayerRulesTests.ForbiddenReferences(typeof(ResLora.Models.ModelConfig).Assembly, forbidden));
        Assert.Contains("Microsoft.Extensions.AI.Abstractions", LayerRulesTests.ForbiddenReferences(typeof(ResLoraChatClient).Assembly, forbidden));
    }

    /// <summary>The checkout's root: the folder above this test's output that holds ResLora.sln.</summary>
    private static string Root()
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d is not null; d = d.Parent)
            if (File.Exists(Path.Combine(d.FullName, "ResLora.sln"))) return d.FullName;
        throw new InvalidOperationException($"no ResLora.sln above {AppContext.BaseDirectory}");
    }

    [Fact]
    public void Docs_ShowTheSamplesCode()
    {
        string sample = File.ReadAllText(Path.Combine(Root(), "samples", "ChatClientSample", "Program.cs")).ReplaceLineEndings("\n");
        string docs = File.ReadAllText(Path.Combine(Root(), "docs", "serving.md")).ReplaceLineEndings("\n");
        // The docs show the body of the sample's try block, one indent level out.
        int from = sample.IndexOf("    using IChatClient chat", StringComparison.Ordinal), to = sample.IndexOf("    return 0;", StringComparison.Ordinal);
        Assert.True(from > 0 && to > from, "the sample lost the lines the docs quote");
        var body = sample[from..to].TrimEnd().Split('\n').Select(l => l.StartsWith("    ", StringComparison.Ordinal) ? l[4..] : l);
        Assert.Contains("```csharp\n" + string.Join("\n", body) + "\n```", docs);
    }

    [Fact]
    public async Task Sample_ChatsAndStreams_WithBaseAndAdapters()
    {
        // The sample is built beside this test project (same configuration): its output folder mirrors ours.
        string config = new DirectoryInfo(Path.TrimEndingDirectorySeparator(AppContext.BaseDirectory)).Parent!.Name; // bin/CONFIG/net10.0
        string dll = Path.Combine(Root(), "samples", "ChatClientSample", "bin", config, "net10.0", "ChatClientSample.dll");
        Assert.True(File.Exists(dll), $"{dll} is missing: build the solution (the sample is part of it)");
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in new[] { dll, "--model", _f.ModelDir, "--adapter", $"lora={_f.Dir("lora")}", "--adapter", $"dora={_f.Dir("dora")}" }) psi.ArgumentList.Add(a);
        psi.Environment["OMP_NUM_THREADS"] = "1";
        using var p = Process.Start(psi)!;
        var stderr = p.StandardError.ReadToEndAsync();
        string output = await p.StandardOutput.ReadToEndAsync();
        using var timeout = new CancellationTokenSource(TimeSpan.FromMinutes(2));
        await p.WaitForExitAsync(timeout.Token);
        Assert.True(p.ExitCode == 0, $"exit {p.ExitCode}: {await stderr}");
        // The generated text (noise from a random model) may hold line breaks: find the sample's markers in order.
        output = output.ReplaceLineEndings("\n");
        Assert.StartsWith("reslora: tiny-chat\n[tiny-chat] ", output);
        Assert.Matches(@"\(\d+ tokens, (Stop|Length|stop|length)\)\n\[base\] ", output);
        int at = 0;
        foreach (var marker in new[] { "\n[base] ", "\n[lora] ", "\n[dora] " })
        {
            int next = output.IndexOf(marker, at, StringComparison.Ordinal);
            Assert.True(next > at, $"'{marker.Trim()}' missing or out of order in: {output}");
            at = next;
        }
    }
}
