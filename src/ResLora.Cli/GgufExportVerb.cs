using ResLora.IO.Gguf;
using ResLora.Pipelines;

namespace ResLora.Cli;

/// <summary><c>reslora export --as gguf | gguf-lora</c>: the model or the adapter as llama.cpp's GGUF, optionally with an Ollama Modelfile.</summary>
internal static class GgufExportVerb
{
    public static int Run(string kind, string? modelArg, string? adapter, string output, string typeName, bool ollama, RuntimeOptions runtime, ExportOptions loraOptions)
    {
        string dir = CliPaths.ModelDir(modelArg);
        void Note(string w) => Console.Error.WriteLine($"note: {w}");
        if (ollama) OllamaModelfile.CheckFree(output); // before the export's work, not after it
        if (kind == "gguf")
        {
            var type = GgmlTypes.Parse(typeName) ?? throw new UserInputException($"--gguf-type {typeName}: choose f32, f16, bf16, q8_0 or q4_0.");
            var report = GgufExport.Export(dir, adapter, output, type, runtime, Note);
            Console.Out.WriteLine(report.Describe());
            if (report.Merge is { } m) Console.Out.WriteLine(FormattableString.Invariant($"merged {m.Method} first: merged vs unmerged logits on the probe: max |Δ| {m.MaxAbsDiff:0.###e0}"));
            foreach (var n in report.Notes) Console.Out.WriteLine($"note: {n}");
            if (ollama) Console.Out.WriteLine(OllamaModelfile.Write(dir, output, adapterGguf: null));
            return 0;
        }
        if (adapter is null) throw new UserInputException("--as gguf-lora needs --adapter DIR (the adapter to export).");
        var lora = GgufLoraExport.Export(dir, adapter, output, runtime, loraOptions, Note);
        Console.Out.WriteLine(lora.Describe());
        foreach (var n in lora.Notes) Console.Out.WriteLine($"note: {n}");
        if (ollama) Console.Out.WriteLine(OllamaModelfile.Write(dir, baseGguf: null, adapterGguf: output));
        return 0;
    }
}
