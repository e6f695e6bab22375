using System.CommandLine;
using ResLora.Pipelines;
using ResLora.Quantization;
using ResLora.Text;
using ResLora.Training;

namespace ResLora.Cli;

internal static class QuantizeVerb
{
    public static Command Build()
    {
        var model = new Option<string>("--model") { Description = "Hugging Face model folder (for a RoLoRA adapter: the rotated base it was trained on).", Required = true };
        var adapter = new Option<string?>("--adapter") { Description = "Adapter to fold in before quantizing." };
        var rotate = new Option<bool>("--rotate") { Description = "Fuse norms and rotate (R1 + R4) a model that is not rotated yet." };
        var seed = new Option<long>("--seed") { Description = "Seed of R1's random signs with --rotate.", DefaultValueFactory = _ => 0L };
        var wbits = new Option<int>("--wbits") { Description = "Weight bits (16 = keep full precision).", DefaultValueFactory = _ => 4 };
        var abits = new Option<int>("--abits") { Description = "Activation bits, applied per token when the folder is loaded (16 = off).", DefaultValueFactory = _ => 4 };
        var method = new Option<string>("--wquant") { Description = "rtn or gptq.", DefaultValueFactory = _ => "rtn" };
        var calib = new Option<string?>("--calib") { Description = "Calibration data for GPTQ (JSONL/JSON, any shape the data loader reads)." };
        var calibN = new Option<int>("--calib-sequences") { Description = "Calibration sequences for GPTQ.", DefaultValueFactory = _ => 64 };
        var output = new Option<string>("--out") { Description = "New folder for the quantized (or rotated) model.", Required = true };
        var rt = new RuntimeOptionSet();
        var cmd = new Command("quantize", "RoLoRA's evaluation path: optional rotation, optional adapter merge, fake-quantized weights (RTN or GPTQ); writes a model folder that evaluates with per-token activation quantization.");
        foreach (var o in new Option[] { model, adapter, rotate, seed, wbits, abits, method, calib, calibN, output }) cmd.Options.Add(o);
        rt.AddTo(cmd);
        cmd.SetAction(r => CliErrors.Guard(() =>
        {
            string dir = CliPaths.ModelDir(r.GetValue(model));
            var runtime = rt.Read(r);
            var o = new QuantizeOptions { WBits = r.GetValue(wbits), ABits = r.GetValue(abits), Method = r.GetValue(method)! };
            o.Validate();
            List<TorchSharp.torch.Tensor>? cal = null;
            if (r.GetValue(calib) is { } cf)
            {
                var tok = TokenizerLoader.Load(dir);
                cal = QuantizeFolder.CalibrationBatches(tok, DataSet.Load(cf).Select(e => e.Prompt + e.Completion), 256, r.GetValue(calibN));
            }
            else if (o.Method == "gptq" && o.WBits < 16) throw new UserInputException("--wquant gptq needs --calib FILE (text to collect input statistics from).");
            var warnings = QuantizeFolder.Run(dir, r.GetValue(adapter), r.GetValue(rotate), r.GetValue(seed), o, cal, r.GetValue(output)!, runtime);
            foreach (var w in warnings) Console.Error.WriteLine($"warning: {w}");
            Console.Out.WriteLine($"wrote {Path.GetFullPath(r.GetValue(output)!)}: W{o.WBits}A{o.ABits} ({o.Method}){(r.GetValue(rotate) ? ", rotated" : "")}");
            return 0;
        }));
        return cmd;
    }
}
