using ResLora.Pipelines;

namespace ResLora.Demo;

/// <summary>What the NLU part of the demo produced.</summary>
public sealed record DemoNluResult(IReadOnlyList<NluRun> Runs, string MergedMethod, string MergedDir, IReadOnlyList<(string Text, string Gold, string Predicted, double Probability)> Examples, string Table);

/// <summary>
/// The demo's understanding task on a real pretrained encoder: MiniLM (from the build) fine-tuned on sentiment with LoRA and
/// ResLoRA (the paper's GLUE setting, ms with pre_num 4), judged on sentences whose opinion words it never saw, then the
/// merged ResLoRA classifier labels a few of them.
/// </summary>
public static class DemoNlu
{
    public static DemoNluResult Run(string outDir, string cacheRoot, int steps, Action<string> log)
    {
        string model = MiniLmAssets.EnsureHfFolder(cacheRoot, log);
        var s = new NluSettings { Steps = steps, EvalEvery = Math.Max(1, steps / 6), Seeds = new long[] { 1 }, Methods = new[] { "lora", "reslora-ms" } };
        string work = Path.Combine(outDir, "nlu");
        if (Directory.Exists(work)) Directory.Delete(work, recursive: true);
        var runs = NluBench.Run(model, work, s, log, keepMerged: true);
        string merged = Path.Combine(work, "reslora-ms-seed1-merged");
        var sentences = SentimentTask.Sentences(8, 99, SentimentTask.TestPositive, SentimentTask.TestNegative);
        var (classifier, task) = Classification.Load(merged, null, new RuntimeOptions());
        List<(string Label, double Score)> predicted;
        using (classifier) predicted = Classification.Predict(classifier, task, sentences.Select(x => x.Text).ToList(), merged);
        var examples = sentences.Zip(predicted, (x, p) => (x.Text, x.Label, p.Label, p.Score)).ToList();
        string table = BenchNluTable(runs, s);
        ResLora.IO.AtomicFile.WriteAllText(Path.Combine(work, "nlu.md"), table);
        return new DemoNluResult(runs, "reslora-ms", merged, examples, table);
    }

    private static string BenchNluTable(IReadOnlyList<NluRun> runs, NluSettings s) => NluBench.Markdown(runs, s);
}
