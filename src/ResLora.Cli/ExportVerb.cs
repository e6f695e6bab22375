using System.CommandLine;
using ResLora.Pipelines;

namespace ResLora.Cli;

internal static class ExportVerb
{
    public static Command Build()
    {
        var model = new Option<string>("--model") { Description = "Base Hugging Face model folder the adapter was trained on.", Required = true };
        var adapter = new Option<string>("--adapter") { Description = "Adapter folder (any method) to export.", Required = true };
        var output = new Option<string>("--out") { Description = "New folder for the exported adapter (must not exist or be empty).", Required = true };
        var asKind = new Option<string>("--as") { Description = "Export format: lora (a PEFT LoRA folder that vLLM and other LoRA servers load).", DefaultValueFactory = _ => "lora" };
        var rank = new Option<int>("--rank") { Description = "Rank of the truncated SVD for DoRA, LoHa, LoKr, AdaLoRA and IA3 adapters (the energy kept is reported).", DefaultValueFactory = _ => 16 };
        var folding = new FoldingOptionSet();
        var rt = new RuntimeOptionSet();
        var cmd = new Command("export", "Export any adapter as a plain PEFT LoRA: LoRA/RefLoRA copied, ResLoRA bs exactly, ResLoRA is/ms by the least-squares fold (--distill N), the others by truncated SVD; reports closeness to the original on held-out text.");
        foreach (var o in new Option[] { model, adapter, output, asKind, rank }) cmd.Options.Add(o);
        folding.AddTo(cmd);
        rt.AddTo(cmd);
        cmd.SetAction(r => CliErrors.Guard(() =>
        {
            if (r.GetValue(asKind) is not "lora") throw new UserInputException($"--as {r.GetValue(asKind)}: the export format is lora (the one LoRA servers load).");
            string dir = CliPaths.ModelDir(r.GetValue(model));
            var report = ExportPipeline.AsLora(dir, r.GetValue(adapter)!, r.GetValue(output)!, rt.Read(r),
                new ExportOptions { Rank = r.GetValue(rank), Texts = folding.Read(r), DistillSteps = r.GetValue(folding.Distill), DistillLearningRate = r.GetValue(folding.DistillLr) }, w => Console.Error.WriteLine($"note: {w}"));
            Console.Out.WriteLine(report.Describe());
            foreach (var n in report.Notes) Console.Out.WriteLine($"note: {n}");
            Console.Out.WriteLine(FoldingOptionSet.HeldOutLine(report.HeldOut, report.HeldOutSource));
            return 0;
        }));
        return cmd;
    }
}
