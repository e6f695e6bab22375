namespace ResLora;

/// <summary>Runtime choices kept apart from the model config: device, dtype, torch threads.</summary>
public sealed record RuntimeOptions
{
    public string Device { get; init; } = "cpu";
    /// <summary>float32 (default, the reference path) or bfloat16. float16 is refused on CPU: its matmul is unusably slow there.</summary>
    public string Dtype { get; init; } = "float32";
    /// <summary>Torch intra-op threads; 0 leaves libtorch's default. Tests and CI use 1.</summary>
    public int Threads { get; init; }

    public torch.Device TorchDevice => ParseDevice(Device);
    public torch.ScalarType ScalarType => ParseDtype(Dtype, Device);

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

    /// <summary>Applies the thread setting (process-global in libtorch).</summary>
    public void Apply()
    {
        if (Threads > 0) torch.set_num_threads(Threads);
    }
}
