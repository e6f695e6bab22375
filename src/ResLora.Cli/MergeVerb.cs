using System.CommandLine;
using System.Globalization;
using ResLora.Adapters;
using ResLora.Pipelines;
using ResLora.Text;
using ResLora.Training.Classification;

namespace ResLora.Cli;

internal static class MergeVerb
{
    public static Command Build()
    {
        var model = new Option<string>("--model") { Description = "Base Hugging Face model folder.", Required = true };
        var adapter = new Option<string>("--adapter") { Description = "Adapter folder (PEFT format) to fold into the base weights.", Required = true };
        var output = new Option<string>("--out") { Description = "New folder for the merged model (must not exist or be empty).", Required = true };
        var probe = new Option<string?>("--probe") { Description = "Text whose logits are compared merged vs unmerged (default: a fixed sentence)." };
        var merge = new Option<string?>("--merge") { Description = "How to merge: auto (every method: its best merge; ResLoRA is/ms try bi, bw or a, and ls, keeping the one closest to the unmerged model on held-out text) or, for ResLoRA, bi, bw, a (ms A-merge) or ls (least-squares fold on calibration text); default: the adapter's saved choice." };
        var outDtype = new Option<string>("--out-dtype") { Description = "dtype of the merged weights: auto (default: the base's stored dtype, so a bf16 base stays bf16), float32, bfloat16 or float16. The merge is computed in --dtype (float32 by default) and rounded once when written.", DefaultValueFactory = _ => "auto" };
        var checkWeights = new Option<bool>("--check-weights") { Description = "Read every base weight once first and refuse NaN/infinite values or integer-typed weights (as inspect --check; adapter tensors are always checked)." };
        var folding = new FoldingOptionSet();
        var rt = new RuntimeOptionSet(baseBits: true);
        var cmd = new Command("merge", "Fold an adapter into the base weights and write a complete Hugging Face model folder; reports the merged-vs-unmerged logit difference.");
        foreach (var o in new Option[] { model, adapter, output, probe, merge, outDtype, checkWeights }) cmd.Options.Add(o);
        folding.AddTo(cmd);
        rt.AddTo(cmd);
        cmd.SetAction(r => CliErrors.Guard(() =>
        {
            string dir = CliPaths.ModelDir(r.GetValue(model));
            var runtime = rt.Read(r);
            if (r.GetValue(checkWeights)) InspectPipeline.RequireCleanWeights(dir);
            string text = r.GetValue(probe) ?? "The quick brown fox jumps over the lazy dog. 12 + 30 = 42.";
            if (Classification.IsEncoderFolder(dir))
            {
                if (r.GetValue(outDtype) is { } od && od != "auto") throw new UserInputException($"--out-dtype applies to LLaMA-family decoders; {dir} is a BERT-family encoder, whose merged folder is written in --dtype. Drop --out-dtype.");
                RuntimeOptionSet.RefuseBaseBits(runtime, dir);
                var (_, pairs) = Classification.LoadTokenizer(dir);
                var check = new[] { new EncodedExample(pairs.EncodeForModel(text, null, 128), 0, 0f) };
                double diff = Classification.Merge(dir, r.GetValue(adapter)!, r.GetValue(output)!, runtime, check);
                Console.Out.WriteLine($"merged the adapter and its classification head into {Path.GetFullPath(r.GetValue(output)!)}");
                Console.Out.WriteLine(string.Create(CultureInfo.InvariantCulture, $"merged vs unmerged logits on the probe: max |Δ| {diff:0.###e0}"));
                return 0;
            }
            var tokenizer = TokenizerLoader.Load(dir);
            var ids = Prompts.Ids(tokenizer, text).Select(i => (long)i).ToArray();
            using var probeIds = torch.tensor(ids).unsqueeze(0);
            var options = new MergeOptions { MergeKind = r.GetValue(merge), Texts = folding.Read(r), DistillSteps = r.GetValue(folding.Distill), DistillLearningRate = r.GetValue(folding.DistillLr), OutputDtype = r.GetValue(outDtype) };
            var report = MergePipeline.MergeToFolder(dir, r.GetValue(adapter)!, r.GetValue(output)!, runtime, probeIds, options, w => Console.Error.WriteLine($"note: {w}"));
            Console.Out.WriteLine($"merged {report.MergedModules} {report.Method} modules into {report.OutDir}");
            Console.Out.WriteLine($"wrote {report.Dtype} weights ({report.DtypeSource}; merged in {runtime.Dtype}, rounded once)");
            if (report.QuantizedBase is { } q) Console.Out.WriteLine($"quantized base: {q}");
            Console.Out.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"merged vs unmerged logits on the probe ({ids.Length} tokens): max |Δ| {report.MaxAbsDiff:0.###e0}, mean |Δ| {report.MeanAbsDiff:0.###e0} (largest logit {report.LogitScale:0.###})"));
            Console.Out.WriteLine(FoldingOptionSet.HeldOutLine(report.HeldOut, report.HeldOutSource));
            if (report.Candidates.FirstOrDefault(c => c.Fold is not null)?.Fold is { DistillSteps: > 0 } f)
                Console.Out.WriteLine(string.Create(CultureInfo.InvariantCulture, $"distillation: {f.DistillSteps} steps, calibration KL {f.DistillFirstKl:0.###e0} → {f.DistillLastKl:0.###e0} ({f.DistillSeconds:0.0} s)"));
            Console.Out.WriteLine($"report: {Path.Combine(report.OutDir, MergeReport.FileName)}");
            return 0;
        }));
        return cmd;
    }
}
