// llama.cpp's view of a GGUF for bench/gguf.sh, through LLamaSharp 0.30.0 (as tests/ResLora.Tests/IO/Gguf/LlamaCppRunner.cs):
//   tokenize   --gguf F --texts T.jsonl            one JSON line {"ids": [...]} per text (a JSON string or {"text": ...} per
//                                                   line): llama.cpp's tokenization without BOS, special tokens parsed
//                                                   (what `reslora tokenize --texts --json` prints)
//   perplexity --gguf F --text FILE [--ctx N] [--threads N]
//       FILE plain text: its tokens (no BOS, special tokens parsed) cut into non-overlapping windows of N tokens (default
//       the model's training context), each window decoded from an empty KV cache; the mean NLL over positions 1..n-1 of
//       every window (the first token of a window is never predicted).
//       FILE *.jsonl ({"text": ...} per line): every record is its own window, tokenized as `reslora eval` does a {"text"}
//       record: BOS (when the GGUF's tokenizer.ggml.add_bos_token says so) + tokens + EOS, cut at N.
//       Prints: "tokens T predicted P windows W: nll X perplexity Y" (T all tokens, P the positions the mean is over).
using System.Globalization;
using System.Text;
using System.Text.Json;
using LLama;
using LLama.Common;
using LLama.Native;

if (Environment.GetEnvironmentVariable("LLAMACPP_LOG") != "1")
    NativeLibraryConfig.All.WithLogCallback((level, msg) => { if (level == LLamaLogLevel.Error) Console.Error.Write(msg); });

try
{
    if (args.Length < 1) return Usage();
    var opts = ParseOptions(args.Skip(1).ToArray());
    return args[0] switch
    {
        "tokenize" => Tokenize(Need(opts, "--gguf"), Need(opts, "--texts")),
        "perplexity" => Perplexity(Need(opts, "--gguf"), Need(opts, "--text"), Int(opts, "--ctx", 0), Int(opts, "--threads", Environment.ProcessorCount)),
        _ => Usage(),
    };
}
catch (ArgumentException e)
{
    Console.Error.WriteLine($"LlamaCppCheck: {e.Message}");
    return 2;
}

static int Usage()
{
    Console.Error.WriteLine("usage: LlamaCppCheck tokenize --gguf F --texts T.jsonl | perplexity --gguf F --text FILE [--ctx N] [--threads N]");
    return 2;
}

static Dictionary<string, string> ParseOptions(string[] a)
{
    var d = new Dictionary<string, string>(StringComparer.Ordinal);
    for (int i = 0; i < a.Length; i += 2)
    {
        if (!a[i].StartsWith("--", StringComparison.Ordinal) || i + 1 >= a.Length) throw new ArgumentException($"expected --option value, got '{a[i]}'");
        d[a[i]] = a[i + 1];
    }
    return d;
}

static string Need(Dictionary<string, string> o, string name) => o.TryGetValue(name, out var v) ? v : throw new ArgumentException($"{name} is required");

static int Int(Dictionary<string, string> o, string name, int dflt) =>
    o.TryGetValue(name, out var v) ? int.Parse(v, CultureInfo.InvariantCulture) : dflt;

// One text per line: a JSON string, or an object with "text".
static List<string> ReadTexts(string path)
{
    var list = new List<string>();
    foreach (var line in File.ReadLines(path))
    {
        if (line.Trim().Length == 0) continue;
        using var doc = JsonDocument.Parse(line);
        var root = doc.RootElement;
        list.Add(root.ValueKind == JsonValueKind.String ? root.GetString()! : root.GetProperty("text").GetString()!);
    }
    return list;
}

static ModelParams Params(string gguf, uint ctx, int threads) => new(gguf)
{
    ContextSize = ctx, BatchSize = ctx, UBatchSize = ctx, Threads = threads, BatchThreads = threads, GpuLayerCount = 0,
    TypeK = GGMLType.GGML_TYPE_F32, TypeV = GGMLType.GGML_TYPE_F32, FlashAttention = false,
};

static int[] Encode(LLamaWeights w, string text) =>
    w.NativeHandle.Tokenize(text, false, true, Encoding.UTF8).Select(t => (int)t).ToArray();

static int Tokenize(string gguf, string textsPath)
{
    var texts = ReadTexts(textsPath);
    var p = new ModelParams(gguf) { VocabOnly = true, GpuLayerCount = 0 };
    using var w = LLamaWeights.LoadFromFile(p);
    var stdout = Console.Out;
    foreach (var t in texts) stdout.WriteLine(JsonSerializer.Serialize(new { ids = Encode(w, t) }));
    return 0;
}

static int Perplexity(string gguf, string textPath, int ctxArg, int threads)
{
    // The weights do not depend on the context size; without --ctx the window is the model's training context.
    using var w = LLamaWeights.LoadFromFile(new ModelParams(gguf) { GpuLayerCount = 0 });
    int ctx = ctxArg > 0 ? ctxArg : w.ContextSize;
    if (ctx < 2) throw new ArgumentException($"--ctx must be at least 2, got {ctx}");
    var p = Params(gguf, (uint)ctx, threads);
    var windows = new List<int[]>();
    if (textPath.EndsWith(".jsonl", StringComparison.OrdinalIgnoreCase))
    {
        var vocab = w.NativeHandle.Vocab;
        foreach (var t in ReadTexts(textPath))
        {
            var ids = new List<int>();
            if (vocab.ShouldAddBOS && vocab.BOS is { } bos) ids.Add((int)bos);
            ids.AddRange(Encode(w, t));
            if (vocab.EOS is { } eos) ids.Add((int)eos);
            windows.Add(ids.Take(ctx).ToArray());
        }
    }
    else
    {
        var all = Encode(w, File.ReadAllText(textPath));
        for (int s = 0; s + 1 < all.Length; s += ctx) windows.Add(all.Skip(s).Take(ctx).ToArray());
    }
    double nll = 0;
    long predicted = 0, tokens = 0;
    using var context = w.CreateContext(p);
    foreach (var win in windows)
    {
        tokens += win.Length;
        if (win.Length < 2) continue;
        context.NativeHandle.MemoryClear(true);
        var batch = new LLamaBatch();
        for (int i = 0; i < win.Length; i++) batch.Add((LLamaToken)win[i], i, LLamaSeqId.Zero, i < win.Length - 1);
        var rc = context.NativeHandle.Decode(batch);
        if (rc != DecodeResult.Ok) throw new InvalidOperationException($"llama_decode: {rc}");
        for (int i = 0; i + 1 < win.Length; i++)
        {
            var logits = context.NativeHandle.GetLogitsIth(i);
            double max = double.NegativeInfinity;
            foreach (var l in logits) max = Math.Max(max, l);
            double sum = 0;
            foreach (var l in logits) sum += Math.Exp(l - max);
            nll += max + Math.Log(sum) - logits[win[i + 1]];
            predicted++;
        }
    }
    double mean = nll / Math.Max(1, predicted);
    Console.Out.WriteLine(string.Create(CultureInfo.InvariantCulture,
        $"tokens {tokens} predicted {predicted} windows {windows.Count}: nll {mean:0.000000} perplexity {Math.Exp(mean):0.0000}"));
    return 0;
}
