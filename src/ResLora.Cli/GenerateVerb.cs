using System.CommandLine;
using ResLora.IO;
using ResLora.Models;
using ResLora.Pipelines;

namespace ResLora.Cli;

internal static class GenerateVerb
{
    public static Command Build()
    {
        var model = new Option<string>("--model") { Description = "Hugging Face model folder.", Required = true };
        var adapter = new Option<string?>("--adapter") { Description = "Adapter folder (PEFT format) to run unmerged on top of the model." };
        var prompt = new Option<string>("--prompt") { Description = "Prompt text (empty: start from BOS alone).", DefaultValueFactory = _ => "" };
        var maxNew = new Option<int>("--max-new-tokens") { Description = "Most tokens to generate.", DefaultValueFactory = _ => 64 };
        var temperature = new Option<double>("--temperature") { Description = "0 = greedy; > 0 samples.", DefaultValueFactory = _ => 0.0 };
        var topK = new Option<int>("--top-k") { Description = "Sample among the k most likely tokens (0 = off).", DefaultValueFactory = _ => 0 };
        var topP = new Option<double>("--top-p") { Description = "Nucleus sampling mass (1 = off).", DefaultValueFactory = _ => 1.0 };
        var seed = new Option<long>("--seed") { Description = "Sampling seed.", DefaultValueFactory = _ => 0L };
        var rt = new RuntimeOptionSet(baseBits: true);
        var cmd = new Command("generate", "Generate a continuation of a prompt; writes only the generated text to stdout.");
        foreach (var o in new Option[] { model, adapter, prompt, maxNew, temperature, topK, topP, seed }) cmd.Options.Add(o);
        rt.AddTo(cmd);
        cmd.SetAction(r => CliErrors.Guard(() =>
        {
            string dir = CliPaths.ModelDir(r.GetValue(model));
            var runtime = rt.Read(r);
            int n = r.GetValue(maxNew);
            if (n < 1) throw new UserInputException($"--max-new-tokens must be at least 1, got {n}.");
            double temp = r.GetValue(temperature);
            if (temp < 0) throw new UserInputException($"--temperature must be 0 (greedy) or positive, got {temp}.");
            double p = r.GetValue(topP);
            if (p <= 0 || p > 1) throw new UserInputException($"--top-p must be in (0, 1], got {p}.");
            var tokenizer = TokenizerLoader.Load(dir);
            using var m = ModelSessions.Load(dir, r.GetValue(adapter), runtime, w => Console.Error.WriteLine($"warning: {w}"));
            var ids = Prompts.Ids(tokenizer, r.GetValue(prompt) ?? "");
            var stop = tokenizer.EosTokenIds.ToList();
            var options = new GenerationOptions
            {
                MaxNewTokens = n,
                Temperature = temp,
                TopK = r.GetValue(topK),
                TopP = p,
                Seed = r.GetValue(seed),
                EosTokenIds = stop,
            };
            var output = TextGenerator.Generate(m, ids, options);
            Console.Out.Write(tokenizer.Decode(output.Where(t => !stop.Contains(t))));
            Console.Out.WriteLine();
            return 0;
        }));
        return cmd;
    }
}
