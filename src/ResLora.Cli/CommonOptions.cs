using System.CommandLine;

namespace ResLora.Cli;

/// <summary>
/// Options several verbs share: the runtime (device, dtype, threads; with <c>baseBits</c>, the packed base of
/// <c>--base-bits</c>) and the model folder.
/// </summary>
internal sealed class RuntimeOptionSet(bool baseBits = false, bool heap = false)
{
    public Option<string> Device { get; } = new("--device") { Description = "cpu (default), cuda or cuda:N (needs TorchSharp's CUDA package).", DefaultValueFactory = _ => "cpu" };
    public Option<string> Dtype { get; } = new("--dtype") { Description = "float32 (default, the reference path) or bfloat16.", DefaultValueFactory = _ => "float32" };
    public Option<int?> Threads { get; } = new("--threads") { Description = $"Torch threads. Default: {RuntimeOptions.ThreadsVariable} if set, else the cores free now (the cores this process may use, after affinity and any cgroup CPU quota, minus those other processes keep busy; at least 1). 0 = libtorch's default, one per core, which slows badly beside other work." };
    public Option<string>? BaseBits { get; } = baseBits
        ? new("--base-bits") { Description = "Keep the frozen base's decoder linears packed, dequantized per matmul: 8 (int8, a scale per output channel), 4 = nf4 (NF4 as QLoRA: blocks of 64, double-quantized scales), int4 (4-bit round-to-nearest, groups of 64), 16 (full precision, default). Adapters stay float32; merge writes full-precision weights.", DefaultValueFactory = _ => "16" }
        : null;
    public Option<string>? Heap { get; } = heap
        ? new("--heap") { Description = "What happens to freed activation memory once the model is loaded (Linux): fast (default; blocks under 32 MiB are kept for reuse: quickest steps, highest peak), balanced (blocks of 4 MiB and more go back to the system), lean (all but small blocks go back: lowest peak, slowest steps). Measured at a 0.5B model, bf16, batch 4 x 512: fast 5.6 GB and 16 s a step, balanced 4.6 GB and 24 s, lean 3.5 GB and 40 s.", DefaultValueFactory = _ => "fast" }
        : null;

    private (ParseResult For, ThreadChoice Choice)? _chosen;

    public void AddTo(Command cmd)
    {
        cmd.Options.Add(Device);
        cmd.Options.Add(Dtype);
        cmd.Options.Add(Threads);
        if (BaseBits is not null) cmd.Options.Add(BaseBits);
        if (Heap is not null) cmd.Options.Add(Heap);
    }

    /// <summary>
    /// The runtime the flags ask for, on this machine. The thread count is <c>--threads</c>, else RESLORA_THREADS, else the
    /// free cores (<see cref="RuntimeOptions.ChooseThreads"/>); <see cref="AnnounceThreads"/> says which and why.
    /// </summary>
    public RuntimeOptions Read(ParseResult r)
    {
        // One choice per command line: a verb that reads the runtime twice probes the machine once.
        var threads = _chosen is { } c && ReferenceEquals(c.For, r) ? c.Choice : RuntimeOptions.ChooseThreads(r.GetValue(Threads));
        _chosen = (r, threads);
        var o = new RuntimeOptions { Device = r.GetValue(Device)!, Dtype = r.GetValue(Dtype)!, Threads = threads.Threads, BaseBits = BaseBits is null ? "16" : r.GetValue(BaseBits)!, Heap = Heap is null ? "fast" : r.GetValue(Heap)! };
        _ = o.TorchDevice;
        _ = o.ScalarType;
        _ = o.BaseStorage;
        _ = o.HeapMode;
        return o.ForThisMachine(w => Console.Error.WriteLine($"warning: {w}"));
    }

    /// <summary>
    /// A training observer that gives the thread choice of the last <see cref="Read"/> as the run's first message
    /// ("threads: 1 (2 cores allowed, 1 busy with other processes; --threads N to override)"): when the run starts, after
    /// the checks whose one-line errors must stay the only output.
    /// </summary>
    public Training.ITrainObserver AnnounceThreads(Training.ITrainObserver inner) =>
        _chosen is { } c ? new ThreadsAnnouncer(inner, c.Choice.ToString()) : inner;

    private sealed class ThreadsAnnouncer(Training.ITrainObserver inner, string line) : Training.ITrainObserver
    {
        private bool _said;

        private void First()
        {
            if (_said) return;
            _said = true;
            inner.OnMessage(line);
        }

        public void OnStart(int totalSteps, int startStep) { First(); inner.OnStart(totalSteps, startStep); }
        public void OnStep(Training.StepReport report) { First(); inner.OnStep(report); }
        public void OnEval(Training.EvalReport report) { First(); inner.OnEval(report); }
        public void OnMessage(string message) { First(); inner.OnMessage(message); }
        public void OnFinish(Training.TrainSummary summary, string outDir) { First(); inner.OnFinish(summary, outDir); }
    }

    /// <summary>Refuses --base-bits for a model it does not apply to (BERT-family encoders keep full-precision bases).</summary>
    public static void RefuseBaseBits(RuntimeOptions o, string what)
    {
        if (o.BaseStorage != BaseWeightStorage.Full)
            throw new UserInputException($"--base-bits {o.BaseBits} packs the bases of LLaMA-family decoders; {what} is a BERT-family encoder, whose base stays full precision. Drop --base-bits.");
    }
}

internal static class CliPaths
{
    /// <summary>Checks a model folder exists before anything heavy happens.</summary>
    public static string ModelDir(string? dir, string flag = "--model") => IO.InputPaths.ExistingModelFolder(dir, flag);
}
