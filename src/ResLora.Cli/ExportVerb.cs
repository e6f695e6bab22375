using System.CommandLine;
using ResLora.Pipelines;

namespace ResLora.Cli;

internal static class ExportVerb
{
    public static Command Build()
    {
        var model = new Option<string>("--model") { Description = "Base Hugging Face model folder the adapter was trained on.", Required = true };
        var adapter = new Option<string?>("--adapter") { Description = "Adapter folder (any method) to export (--as lora, gguf-lora), or to merge into the model first (--as gguf)." };
        var output = new Option<string>("--out") { Description = "New folder for the exported adapter (--as lora), or new .gguf file (--as gguf, gguf-lora).", Required = true };
        var asKind = new Option<string>("--as") { Description = "Export format: lora (a PEFT LoRA folder that vLLM and other LoRA servers load), gguf (the model, merged with --adapter if given, for llama.cpp/Ollama), gguf-lora (the adapter as llama.cpp's LoRA GGUF).", DefaultValueFactory = _ => "lora" };
        var ggufType = new Option<string>("--gguf-type") { Description = "Tensor type of the GGUF matrices (--as gguf): f32, f16, bf16, q8_0, q4_0. Norms and biases stay f32.", DefaultValueFactory = _ => "f16" };
        var ollama = new Option<bool>("--ollama") { Description = "Also write an Ollama Modelfile next to the GGUF (FROM, ADAPTER, chat TEMPLATE and stop tokens when the chat format is recognised)." };
        var rank = new Option<int>("--rank") { Description = "Rank of the truncated SVD for DoRA, LoHa, LoKr, AdaLoRA and IA3 adapters (the energy kept is reported).", DefaultValueFactory = _ => 16 };
        var folding = new FoldingOptionSet();
        var rt = new RuntimeOptionSet();
        var cmd = new Command("export", "Export any adapter as a plain PEFT LoRA (--as lora): LoRA/RefLoRA copied, ResLoRA bs exactly, ResLoRA is/ms by the least-squares fold (--distill N), the others by truncated SVD; reports closeness to the original on held-out text. --as gguf writes the model (merged with --adapter) for llama.cpp/Ollama, --as gguf-lora the adapter as llama.cpp's LoRA GGUF (docs/gguf.md).");
        foreach (var o in new Option[] { model, adapter, output, asKind, rank, ggufType, ollama }) cmd.Options.Add(o);
        folding.AddTo(cmd);
        rt.AddTo(cmd);
        cmd.SetAction(r => CliErrors.Guard(() =>
        {
            string kind = r.GetValue(asKind) ?? "lora";
            if (kind is "gguf" or "gguf-lora") return GgufExportVerb.Run(kind, r.GetValue(model), r.GetValue(adapter), r.GetValue(output)!, r.GetValue(ggufType)!, r.GetValue(ollama), rt.Read(r),
                new ExportOptions { Rank = r.GetValue(rank), Texts = folding.Read(r), DistillSteps = r.GetValue(folding.Distill), DistillLearningRate = r.GetValue(folding.DistillLr) });
            if (kind is not "lora") throw new UserInputException($"--as {kind}: the export formats are lora (a PEFT LoRA folder), gguf (the model for llama.cpp) and gguf-lora (the adapter for llama.cpp).");
            if (r.GetValue(ollama)) throw new UserInputException("--ollama goes with --as gguf or gguf-lora (a Modelfile points at a GGUF file).");
            string dir = CliPaths.ModelDir(r.GetValue(model));
            var report = ExportPipeline.AsLora(dir, r.GetValue(adapter) ?? throw new UserInputException("--as lora needs --adapter DIR (the adapter to export)."), r.GetValue(output)!, rt.Read(r),
                new ExportOptions { Rank = r.GetValue(rank), Texts = folding.Read(r), DistillSteps = r.GetValue(folding.Distill), DistillLearningRate = r.GetValue(folding.DistillLr) }, w => Console.Error.WriteLine($"note: {w}"));
            Console.Out.WriteLine(report.Describe());
            foreach (var n in report.Notes) Console.Out.WriteLine($"note: {n}");
            Console.Out.WriteLine(FoldingOptionSet.HeldOutLine(report.HeldOut, report.HeldOutSource));
            return 0;
        }));
        return cmd;
    }
}
