using System.CommandLine;
using System.Globalization;
using ResLora.IO;
using ResLora.Training;

namespace ResLora.Cli;

internal static class EvalVerb
{
    public static Command Build()
    {
        var model = new Option<string>("--model") { Description = "Hugging Face model folder.", Required = true };
        var adapter = new Option<string?>("--adapter") { Description = "Adapter folder (PEFT format) to evaluate unmerged on top of the model." };
        var data = new Option<string>("--data") { Description = "JSONL or JSON-array data (same shapes and templates as train).", Required = true };
        var promptTemplate = new Option<string?>("--prompt-template") { Description = "Prompt built from record fields." };
        var completionTemplate = new Option<string?>("--completion-template") { Description = "Completion built from record fields." };
        var seqLen = new Option<int>("--seq-len") { Description = "Longest sequence in tokens.", DefaultValueFactory = _ => 256 };
        var batch = new Option<int>("--batch-size") { Description = "Sequences per batch.", DefaultValueFactory = _ => 8 };
        var maxNew = new Option<int>("--max-new-tokens") { Description = "Longest generated answer for exact-match accuracy.", DefaultValueFactory = _ => 16 };
        var limit = new Option<int>("--accuracy-examples") { Description = "Prompt/completion examples whose answers are generated (0 = skip accuracy).", DefaultValueFactory = _ => 200 };
        var wbits = new Option<int>("--wbits") { Description = "Fake-quantize decoder weights to this many bits first (16 = off; an adapter is merged before).", DefaultValueFactory = _ => 16 };
        var abits = new Option<int>("--abits") { Description = "Per-token activation bits on every decoder linear input (16 = off).", DefaultValueFactory = _ => 16 };
        var wquant = new Option<string>("--wquant") { Description = "rtn or gptq (gptq needs --calib).", DefaultValueFactory = _ => "rtn" };
        var calib = new Option<string?>("--calib") { Description = "Calibration data for GPTQ." };
        var rt = new RuntimeOptionSet();
        var cmd = new Command("eval", "Loss, perplexity and exact-match accuracy of a model (optionally with an adapter) on a data set.");
        foreach (var o in new Option[] { model, adapter, data, promptTemplate, completionTemplate, seqLen, batch, maxNew, limit, wbits, abits, wquant, calib }) cmd.Options.Add(o);
        rt.AddTo(cmd);
        cmd.SetAction(r => CliErrors.Guard(() =>
        {
            string dir = CliPaths.ModelDir(r.GetValue(model));
            var runtime = rt.Read(r);
            var examples = DataSet.Load(r.GetValue(data)!, new DataTemplates(r.GetValue(promptTemplate), r.GetValue(completionTemplate)));
            var tokenizer = TokenizerLoader.Load(dir);
            using var m = ModelSession.LoadModel(dir, r.GetValue(adapter), runtime);
            var q = new Quantization.QuantizeOptions { WBits = r.GetValue(wbits), ABits = r.GetValue(abits), Method = r.GetValue(wquant)! };
            q.Validate();
            IDisposable? quant = null;
            if (q.WBits < 16 || q.ABits < 16)
            {
                if (r.GetValue(adapter) is not null) Adapters.AdapterModel.MergeAll(m);
                List<TorchSharp.torch.Tensor>? cal = null;
                if (r.GetValue(calib) is { } cf) cal = Quantization.QuantizeFolder.CalibrationBatches(tokenizer, DataSet.Load(cf).Select(e => e.Prompt + e.Completion), 256, 64);
                quant = Quantization.ModelQuantizer.Apply(m, q, cal);
            }
            using var quantScope = quant;
            int bs = r.GetValue(batch);
            if (bs < 1) throw new ArgumentException($"--batch-size must be at least 1, got {bs}.");
            var res = Evaluation.Run(m, tokenizer, examples, r.GetValue(seqLen), bs, r.GetValue(maxNew), r.GetValue(limit));
            string acc = res.Accuracy is { } a ? string.Create(CultureInfo.InvariantCulture, $", exact-match accuracy {a:P1} on {res.AccuracyExamples}") : "";
            Console.Out.WriteLine(string.Create(CultureInfo.InvariantCulture, $"examples {res.Examples}, loss tokens {res.LossTokens}: loss {res.Loss:0.0000}, perplexity {res.Perplexity:0.000}") + acc);
            return 0;
        }));
        return cmd;
    }
}
