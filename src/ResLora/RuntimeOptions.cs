namespace ResLora;

/// <summary>Runtime choices kept apart from the model config: device, dtype, torch threads, base storage, heap policy.</summary>
public sealed record RuntimeOptions
{
    public string Device { get; init; } = "cpu";
    /// <summary>float32 (default, the reference path) or bfloat16. float16 is refused on CPU: its matmul is unusably slow there.</summary>
    public string Dtype { get; init; } = "float32";
    /// <summary>
    /// Torch intra-op threads; 0 leaves libtorch's default (one per core). The <c>reslora</c> tool fills it from
    /// <c>--threads</c>, <c>RESLORA_THREADS</c> or the free cores (<see cref="ChooseThreads"/>). Tests and CI use 1.
    /// </summary>
    public int Threads { get; init; }
    /// <summary>
    /// How the frozen base's decoder linears are stored (<c>--base-bits</c>): 16 (full precision, default), 8 (int8 per
    /// output channel), 4 or nf4 (NF4, QLoRA's), int4 (4-bit round-to-nearest, groups of 64).
    /// </summary>
    public string BaseBits { get; init; } = "16";
    /// <summary>
    /// What glibc does with freed blocks once a model is loaded (<c>reslora train --heap</c>): fast (default: freed blocks
    /// under 32 MiB are kept for reuse; the quickest steps, and right for generation and serving, whose KV caches grow a
    /// block per token), balanced or lean (lower peaks, slower steps); see <see cref="ResLora.HeapMode"/>. Linux with
    /// glibc only; ignored where the user set <c>MALLOC_MMAP_THRESHOLD_</c>.
    /// </summary>
    public string Heap { get; init; } = "fast";

    public torch.Device TorchDevice => ParseDevice(Device);
    public torch.ScalarType ScalarType => ParseDtype(Dtype, Device);
    public BaseWeightStorage BaseStorage => ParseBaseBits(BaseBits);
    public HeapMode HeapMode => ParseHeap(Heap);

    public static HeapMode ParseHeap(string heap) => heap.Trim().ToLowerInvariant() switch
    {
        "balanced" => HeapMode.Balanced,
        "fast" => HeapMode.Fast,
        "lean" => HeapMode.Lean,
        _ => throw new UserInputException($"--heap '{heap}' is not a heap policy: use fast (default: quickest steps, highest peak), balanced or lean (lowest peak, slowest steps)."),
    };

    /// <summary>
    /// Backs large tensors with transparent huge pages (Linux): much faster CPU training steps. Call it first thing in
    /// Main, before any tensor exists (libtorch reads the setting once); the <c>reslora</c> tool does. False when it did
    /// nothing (another OS, or <c>THP_MEM_ALLOC_ENABLE</c> already set by the user).
    /// </summary>
    public static bool UseHugePages() => NativeHeap.UseHugePages();

    /// <summary>
    /// Asks libtorch's OpenMP threads to sleep instead of spin while they wait, when <c>RESLORA_PASSIVE_WAIT=1</c> (off by
    /// default: alone it cost a third of the speed, docs/benchmarks.md); call before the first torch call (the OpenMP
    /// runtime reads it once, when libtorch loads); the <c>reslora</c> tool does. False when it did nothing: not asked, or
    /// the user set <c>OMP_WAIT_POLICY</c>, <c>GOMP_SPINCOUNT</c>, <c>KMP_BLOCKTIME</c> or <c>KMP_LIBRARY</c>, which are kept.
    /// </summary>
    public static bool WaitPassively() => OpenMpWait.Apply();

    /// <summary>The environment variable that sets the thread count when <c>--threads</c> is not given.</summary>
    public const string ThreadsVariable = "RESLORA_THREADS";

    /// <summary>
    /// The torch thread count for a run: <paramref name="flag"/> (<c>--threads</c>) when given (0 = libtorch's default, one
    /// per core, spinning: the choice before this existed), else <see cref="ThreadsVariable"/>, else the cores free now
    /// (<see cref="ThreadBudget.Choose"/> of <paramref name="probe"/>, default <see cref="ThreadBudget.Probe"/>: affinity and
    /// cgroup quota minus the cores other processes keep busy, at least 1).
    /// </summary>
    internal static ThreadChoice ChooseThreads(int? flag, Func<string, string?>? env = null, Func<CpuBudget>? probe = null)
    {
        if (flag is { } f)
        {
            if (f < 0) throw new UserInputException($"--threads must be 0 (libtorch's default) or more, got {f}.");
            return new ThreadChoice(f, f == 0 ? "--threads 0" : "--threads");
        }
        if ((env ?? Environment.GetEnvironmentVariable)(ThreadsVariable) is { Length: > 0 } v)
        {
            if (!int.TryParse(v, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int n))
                throw new UserInputException($"{ThreadsVariable}='{v}' is not a thread count: set it to a whole number (0 = libtorch's default), or unset it to choose from the free cores.");
            return new ThreadChoice(n, $"{ThreadsVariable}={n}; --threads N to override");
        }
        return ThreadBudget.Choose((probe ?? ThreadBudget.Probe)());
    }

    /// <summary>Whether libtorch was asked for huge pages in this process (<see cref="UseHugePages"/> or THP_MEM_ALLOC_ENABLE=1).</summary>
    public static bool HugePagesRequested => NativeHeap.HugePagesRequested;

    public static BaseWeightStorage ParseBaseBits(string bits) => bits.Trim().ToLowerInvariant() switch
    {
        "16" or "32" or "none" or "" => BaseWeightStorage.Full,
        "8" or "int8" => BaseWeightStorage.Int8,
        "4" or "nf4" => BaseWeightStorage.Nf4,
        "int4" => BaseWeightStorage.Int4,
        _ => throw new UserInputException($"--base-bits {bits} is not supported; use 8 (int8, one scale per output channel), 4 or nf4 (NF4 as QLoRA: blocks of 64, double-quantized scales), int4 (4-bit round-to-nearest, groups of 64), or 16 for a full-precision base (the default)."),
    };

    public static torch.Device ParseDevice(string device)
    {
        string d = device.Trim().ToLowerInvariant();
        if (d == "cpu") return torch.CPU;
        if (d == "cuda" || d.StartsWith("cuda:", StringComparison.Ordinal))
        {
            if (!torch.cuda.is_available())
                throw new UserInputException($"--device {device}: CUDA is not available. Install TorchSharp's CUDA package (TorchSharp-cuda-linux or -windows) on a machine with an NVIDIA GPU, or use --device cpu.");
            return torch.device(d);
        }
        throw new UserInputException($"--device '{device}' is not known; use cpu, cuda or cuda:N.");
    }

    public static torch.ScalarType ParseDtype(string dtype, string device = "cpu") => dtype.Trim().ToLowerInvariant() switch
    {
        "float32" or "fp32" or "f32" => torch.ScalarType.Float32,
        "bfloat16" or "bf16" => torch.ScalarType.BFloat16,
        "float16" or "fp16" or "f16" when !device.StartsWith("cpu", StringComparison.OrdinalIgnoreCase) => torch.ScalarType.Float16,
        "float16" or "fp16" or "f16" => throw new UserInputException($"--dtype {dtype}: float16 matmul on CPU is unusably slow; use --dtype float32 or bfloat16 on CPU."),
        _ => throw new UserInputException($"--dtype '{dtype}' is not known; use float32 or bfloat16."),
    };

    /// <summary>
    /// The options to run with on this machine: a bfloat16 request on a CPU without a fast bf16 matmul falls back to
    /// float32, with a warning through <paramref name="warn"/> that says what that costs. <paramref name="detect"/> replaces
    /// the detection (<see cref="CpuHasFastBf16"/>, tests); a CPU that cannot be told (null) keeps bfloat16.
    /// </summary>
    public RuntimeOptions ForThisMachine(Action<string> warn, Func<bool?>? detect = null)
    {
        if (ScalarType != torch.ScalarType.BFloat16 || TorchDevice.type != DeviceType.CPU) return this;
        if ((detect ?? CpuHasFastBf16)() != false) return this;
        // Measured on an AVX2-only CPU: bf16 matmul 0.21 GFLOP/s, float32 11× that on the same (busy) machine.
        warn("--dtype bfloat16: this CPU has no fast bfloat16 matmul (libtorch's needs AVX-512 on x86-64, or the BF16 extension on Arm64), " +
             "so bf16 matmuls would run on libtorch's reference kernel (measured 0.2 GFLOP/s, about 10× slower than float32 on the same CPU). " +
             "Using float32 instead: the frozen base takes twice the memory of a bf16 base; add --base-bits 8 or 4 to shrink it.");
        return this with { Dtype = "float32" };
    }

    /// <summary>Models with more parameters than this train with a bfloat16 frozen base unless <c>--dtype</c> says otherwise.</summary>
    public const long Bf16DefaultAboveParameters = 100_000_000;

    /// <summary>
    /// The dtype default for a model of <paramref name="parameters"/> when <c>--dtype</c> was not given: above
    /// <see cref="Bf16DefaultAboveParameters"/>, a bfloat16 frozen base (adapters stay float32: half the base's memory,
    /// ~3× float32's tokens/s on a CPU with AVX-512 BF16, loss within 0.02 of float32 in the 1.1B run) where the
    /// device runs bf16 fast (a GPU, or <see cref="CpuHasFastBf16"/>); on a CPU without it float32 stays, said through
    /// <paramref name="note"/> with what bf16 would cost there. Smaller models keep float32 (the reference path) silently.
    /// </summary>
    public RuntimeOptions DefaultForModelSize(long parameters, Action<string> note, Func<bool?>? detect = null)
    {
        if (parameters <= Bf16DefaultAboveParameters || ScalarType != torch.ScalarType.Float32) return this;
        string size = $"{parameters / 1e6:0} M parameters";
        if (TorchDevice.type == DeviceType.CPU && (detect ?? CpuHasFastBf16)() == false)
        {
            note($"the model has {size}, over the {Bf16DefaultAboveParameters / 1_000_000} M above which training defaults to a bfloat16 frozen base, " +
                 "but this CPU has no fast bfloat16 matmul (bf16 would run about 10× slower than float32 here): keeping float32. " +
                 "Add --base-bits 8 or 4 to shrink the frozen base instead.");
            return this;
        }
        note($"the model has {size}: training with a bfloat16 frozen base (adapters in float32), the default above " +
             $"{Bf16DefaultAboveParameters / 1_000_000} M parameters; pass --dtype float32 for the float32 reference path.");
        return this with { Dtype = "bfloat16" };
    }

    /// <summary>
    /// Whether this CPU runs bfloat16 matmuls on a fast kernel, as PyTorch decides it (mkldnn_bf16_device_check): oneDNN's bf16
    /// path needs AVX-512 (F, BW, VL, DQ; native AVX512-BF16 is faster still) on x86-64, or the BF16 extension on Arm64.
    /// Null when it cannot be told (Arm64 outside Linux).
    /// </summary>
    public static bool? CpuHasFastBf16()
    {
        switch (System.Runtime.InteropServices.RuntimeInformation.ProcessArchitecture)
        {
            case System.Runtime.InteropServices.Architecture.X64:
                return System.Runtime.Intrinsics.X86.Avx512F.IsSupported && System.Runtime.Intrinsics.X86.Avx512BW.IsSupported
                    && System.Runtime.Intrinsics.X86.Avx512BW.VL.IsSupported && System.Runtime.Intrinsics.X86.Avx512DQ.IsSupported;
            case System.Runtime.InteropServices.Architecture.Arm64 when OperatingSystem.IsLinux() && File.Exists("/proc/cpuinfo"):
                return File.ReadLines("/proc/cpuinfo").Any(l => l.StartsWith("Features", StringComparison.Ordinal) && l.Split(' ', ':', '\t').Contains("bf16"));
            case System.Runtime.InteropServices.Architecture.Arm64:
                return null;
            default:
                return false;
        }
    }

    /// <summary>Applies the thread setting (process-global in libtorch) and the heap policy for the next model load.</summary>
    public void Apply()
    {
        if (Threads > 0) torch.set_num_threads(Threads);
        NativeHeap.Mode = HeapMode;
    }
}

/// <summary>How the frozen base's decoder linear weights are held in memory (<see cref="RuntimeOptions.BaseBits"/>).</summary>
public enum BaseWeightStorage
{
    /// <summary>Full-precision parameters in the runtime's dtype.</summary>
    Full,
    /// <summary>int8 codes, one float32 scale per output channel (~0.25× float32).</summary>
    Int8,
    /// <summary>NF4 codes, blocks of 64, double-quantized block scales (~0.13× float32).</summary>
    Nf4,
    /// <summary>4-bit round-to-nearest codes, one float32 scale per group of 64 (~0.14× float32).</summary>
    Int4,
}
