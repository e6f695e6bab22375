using LLama;
using LLama.Common;
using LLama.Native;

namespace ResLora.Tests.IO.Gguf;

/// <summary>A GGUF loaded by llama.cpp (through LLamaSharp) on one thread, F32 KV cache: logits for every position, tokenization.</summary>
internal sealed class LlamaCppRunner : IDisposable
{
    private readonly ModelParams _params;
    public LLamaWeights Weights { get; }

    public LlamaCppRunner(string gguf, uint context = 128)
    {
        _params = new ModelParams(gguf)
        {
            ContextSize = context, BatchSize = context, UBatchSize = context, Threads = 1, BatchThreads = 1, GpuLayerCount = 0,
            TypeK = GGMLType.GGML_TYPE_F32, TypeV = GGMLType.GGML_TYPE_F32, FlashAttention = false,
        };
        Weights = LLamaWeights.LoadFromFile(_params);
    }

    /// <summary>Logits (positions × vocab) of <paramref name="ids"/> from one fresh context, optionally with LoRA adapters applied.</summary>
    public float[][] Logits(IReadOnlyList<int> ids, params LoraAdapter[] adapters)
    {
        using var ctx = Weights.CreateContext(_params);
        if (adapters.Length > 0)
        {
            var list = adapters.Select(a => (a, 1f)).ToArray();
            ctx.NativeHandle.SetLoraAdapters(list);
        }
        var batch = new LLamaBatch();
        for (int i = 0; i < ids.Count; i++) batch.Add((LLamaToken)ids[i], i, LLamaSeqId.Zero, true);
        var rc = ctx.NativeHandle.Decode(batch);
        if (rc != DecodeResult.Ok) throw new InvalidOperationException($"llama_decode: {rc}");
        return Enumerable.Range(0, ids.Count).Select(i => ctx.NativeHandle.GetLogitsIth(i).ToArray()).ToArray();
    }

    /// <summary>Greedy continuation of <paramref name="prompt"/> for <paramref name="n"/> tokens.</summary>
    public List<int> Greedy(IReadOnlyList<int> prompt, int n)
    {
        var seq = prompt.ToList();
        var outp = new List<int>();
        for (int k = 0; k < n; k++)
        {
            var last = Logits(seq)[^1];
            int best = Array.IndexOf(last, last.Max());
            outp.Add(best);
            seq.Add(best);
        }
        return outp;
    }

    public int[] Tokenize(string text, bool special = true) =>
        Weights.NativeHandle.Tokenize(text, false, special, System.Text.Encoding.UTF8).Select(t => (int)t).ToArray();

    public void Dispose() => Weights.Dispose();
}
