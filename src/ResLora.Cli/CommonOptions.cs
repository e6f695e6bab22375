using System.CommandLine;

namespace ResLora.Cli;

/// <summary>Options several verbs share: the runtime (device, dtype, threads) and the model folder.</summary>
internal sealed class RuntimeOptionSet
{
    public Option<string> Device { get; } = new("--device") { Description = "cpu (default), cuda or cuda:N (needs TorchSharp's CUDA package).", DefaultValueFactory = _ => "cpu" };
    public Option<string> Dtype { get; } = new("--dtype") { Description = "float32 (default, the reference path) or bfloat16.", DefaultValueFactory = _ => "float32" };
    public Option<int> Threads { get; } = new("--threads") { Description = "Torch threads (0 = libtorch's default).", DefaultValueFactory = _ => 0 };

    public void AddTo(Command cmd)
    {
        cmd.Options.Add(Device);
        cmd.Options.Add(Dtype);
        cmd.Options.Add(Threads);
    }

    public RuntimeOptions Read(ParseResult r)
    {
        var o = new RuntimeOptions { Device = r.GetValue(Device)!, Dtype = r.GetValue(Dtype)!, Threads = r.GetValue(Threads) };
        if (o.Threads < 0) throw new UserInputException($"--threads must be 0 or more, got {o.Threads}.");
        _ = o.TorchDevice;
        _ = o.ScalarType;
        return o;
    }
}

internal static class CliPaths
{
    /// <summary>Checks a model folder exists before anything heavy happens.</summary>
    public static string ModelDir(string? dir, string flag = "--model")
    {
        if (string.IsNullOrWhiteSpace(dir)) throw new UserInputException($"{flag} is required: a Hugging Face model folder (config.json, *.safetensors, tokenizer.json).");
        if (!Directory.Exists(dir)) throw new DirectoryNotFoundException($"{flag} {dir}: no such folder. Pass a Hugging Face model folder (config.json, *.safetensors, tokenizer.json).");
        return dir;
    }
}
