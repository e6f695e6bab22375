using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json.Nodes;
using ResLora.Adapters;
using ResLora.Pipelines;
using ResLora.Training;
using ResLora.Training.Classification;

namespace ResLora.Demo;

/// <summary>
/// A sentiment task on which pretrained knowledge matters: training sentences use one set of opinion words, the test
/// sentences only words never seen in fine-tuning ("superb", "abysmal"), so a model can only get them right through what
/// the encoder learned in pre-training.
/// </summary>
public static class SentimentTask
{
    public static readonly string[] TrainPositive = { "good", "great", "wonderful", "excellent", "enjoyable", "brilliant", "amazing", "delightful" };
    public static readonly string[] TrainNegative = { "bad", "awful", "terrible", "boring", "dreadful", "poor", "horrible", "dull" };
    public static readonly string[] TestPositive = { "superb", "fantastic", "marvelous", "charming", "outstanding", "lovely", "fabulous", "splendid" };
    public static readonly string[] TestNegative = { "lousy", "abysmal", "dismal", "mediocre", "pathetic", "miserable", "unbearable", "disappointing" };

    private static readonly string[] Subjects = { "the movie", "this film", "the acting", "the story", "the soundtrack", "the ending", "the dialogue", "this show", "the plot", "the cast" };
    private static readonly string[] Patterns = { "{s} was {a}.", "i thought {s} was {adv}{a}.", "honestly, {s} is {adv}{a}.", "{s} turned out {adv}{a}.", "overall {s} felt {a}.", "my friends said {s} was {a}." };
    private static readonly string[] Adverbs = { "", "", "really ", "quite ", "truly ", "rather " };

    /// <summary>Writes <paramref name="n"/> labelled sentences (JSONL: text, label pos|neg) from the given word lists.</summary>
    public static string Write(string path, int n, int seed, string[] positive, string[] negative)
    {
        File.WriteAllLines(path, Sentences(n, seed, positive, negative).Select(x => new JsonObject { ["text"] = x.Text, ["label"] = x.Label }.ToJsonString()));
        return path;
    }

    /// <summary>The sentences and labels (pos|neg) that <see cref="Write"/> writes.</summary>
    public static List<(string Text, string Label)> Sentences(int n, int seed, string[] positive, string[] negative)
    {
        var rng = new Random(seed);
        var lines = new List<(string, string)>(n);
        for (int i = 0; i < n; i++)
        {
            bool pos = rng.Next(2) == 0;
            string word = (pos ? positive : negative)[rng.Next(positive.Length)];
            string text = Patterns[rng.Next(Patterns.Length)].Replace("{s}", Subjects[rng.Next(Subjects.Length)], StringComparison.Ordinal)
                .Replace("{adv}", Adverbs[rng.Next(Adverbs.Length)], StringComparison.Ordinal).Replace("{a}", word, StringComparison.Ordinal);
            lines.Add((text, pos ? "pos" : "neg"));
        }
        return lines;
    }
}

/// <summary>One method's run on the NLU task.</summary>
public sealed record NluRun(string Label, long Seed, IReadOnlyList<(int Step, double Accuracy, double Loss)> Curve, double MergedAccuracy, double MergedLoss, double Seconds, long TrainableParameters);

/// <summary>Settings of the NLU comparison.</summary>
public sealed record NluSettings
{
    public int Steps { get; init; } = 150;
    public int EvalEvery { get; init; } = 25;
    public int BatchSize { get; init; } = 16;
    public int Rank { get; init; } = 8;
    public double Alpha { get; init; } = 16;
    public double LearningRate { get; init; } = 2e-3;
    public int TrainExamples { get; init; } = 1200;
    public int TestExamples { get; init; } = 200;
    public IReadOnlyList<long> Seeds { get; init; } = new long[] { 1, 2 };
    /// <summary>Method labels: lora, dora, reslora-is/bs/ms, reflora, ... (registry names).</summary>
    public IReadOnlyList<string> Methods { get; init; } = new[] { "lora", "reslora-is", "reslora-bs", "reslora-ms", "reflora", "dora" };
}

/// <summary>Fine-tunes the real MiniLM encoder with each method at equal rank and steps, and measures held-out accuracy, unmerged and merged.</summary>
public static class NluBench
{
    /// <summary>
    /// The method spec of a label; ResLoRA's ms runs with the paper's GLUE setting (pre_num 4). A ResLoRA label may end in
    /// <c>+annealK</c> (linear) or <c>+annealKcos</c> (cosine): the shortcuts' weight goes to 0 over the last K steps
    /// (<c>--anneal-shortcuts K</c>), so the adapter ends as a plain LoRA and its merge is exact.
    /// </summary>
    public static MethodSpec SpecFor(string label, NluSettings s)
    {
        string method = label;
        int? anneal = null;
        string? schedule = null;
        int plus = label.IndexOf('+', StringComparison.Ordinal);
        if (plus >= 0)
        {
            method = label[..plus];
            var m = System.Text.RegularExpressions.Regex.Match(label[(plus + 1)..], "^anneal([0-9]+)(cos)?$");
            if (!method.StartsWith("reslora-", StringComparison.Ordinal) || method == "reslora-bs" || !m.Success)
                throw new UserInputException($"--methods: '{label}' is not a method; only reslora-is and reslora-ms take a suffix, +annealK (linear) or +annealKcos (cosine), e.g. reslora-is+anneal40cos.");
            anneal = int.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture);
            schedule = m.Groups[2].Success ? "cosine" : "linear";
        }
        ResLoraOptions? options = method == "reslora-ms" ? new ResLoraOptions("ms", PreNum: 4) : null;
        if (anneal is { } k) options = (options ?? new ResLoraOptions(method["reslora-".Length..])) with { AnnealSteps = k, AnnealSchedule = schedule };
        return new() { Method = method, Rank = s.Rank, Alpha = s.Alpha, Targets = Classification.DefaultTargets, Options = options };
    }

    /// <summary>Runs every method and seed; with <paramref name="keepMerged"/> the merged folders stay in <paramref name="workDir"/> (LABEL-seedN-merged).</summary>
    public static List<NluRun> Run(string modelDir, string workDir, NluSettings s, Action<string>? log = null, bool keepMerged = false)
    {
        Directory.CreateDirectory(workDir);
        string train = SentimentTask.Write(Path.Combine(workDir, "train.jsonl"), s.TrainExamples, 11, SentimentTask.TrainPositive, SentimentTask.TrainNegative);
        string test = SentimentTask.Write(Path.Combine(workDir, "test-unseen-words.jsonl"), s.TestExamples, 12, SentimentTask.TestPositive, SentimentTask.TestNegative);
        var runs = new List<NluRun>();
        foreach (long seed in s.Seeds)
            foreach (var label in s.Methods)
            {
                string outDir = Path.Combine(workDir, $"{label}-seed{seed}");
                if (Directory.Exists(outDir)) Directory.Delete(outDir, recursive: true);
                var clock = Stopwatch.StartNew();
                var summary = FineTuning.Run(new FineTuneRequest
                {
                    ModelDir = modelDir,
                    DataPath = train,
                    EvalDataPath = test,
                    Method = SpecFor(label, s),
                    Train = new TrainOptions { Steps = s.Steps, BatchSize = s.BatchSize, LearningRate = s.LearningRate, WarmupSteps = Math.Max(1, s.Steps / 10), EvalEvery = s.EvalEvery, LogEvery = s.EvalEvery, SaveEvery = 0, Seed = seed },
                    OutDir = outDir,
                    SeqLen = 32,
                });
                double seconds = clock.Elapsed.TotalSeconds;
                string merged = Path.Combine(workDir, $"{label}-seed{seed}-merged");
                if (Directory.Exists(merged)) Directory.Delete(merged, recursive: true);
                Classification.Merge(modelDir, outDir, merged, new RuntimeOptions());
                var (m, task) = Classification.Load(merged, null, new RuntimeOptions());
                ClassificationResult mres;
                using (m) (mres, _) = Classification.Evaluate(m, task, test, merged, 64);
                if (!keepMerged) Directory.Delete(merged, recursive: true);
                var curve = summary.Evals.Select(e => (e.Step, e.Accuracy ?? double.NaN, e.Loss)).ToList();
                runs.Add(new NluRun(label, seed, curve, mres.Metrics["accuracy"], mres.Loss, seconds, summary.TrainableParameters));
                log?.Invoke($"{label} seed {seed}: held-out accuracy {curve[^1].Item2:P1} (merged {mres.Metrics["accuracy"]:P1}) in {seconds:0.0} s");
            }
        return runs;
    }

    /// <summary>Mean over seeds (± half the range) per method and evaluation step, then the end and merged columns.</summary>
    public static string Markdown(IReadOnlyList<NluRun> runs, NluSettings s)
    {
        static string Pm(IEnumerable<double> xs, string fmt)
        {
            var v = xs.ToList();
            double mean = v.Average(), half = (v.Max() - v.Min()) / 2;
            return v.Count > 1 ? $"{mean.ToString(fmt, CultureInfo.InvariantCulture)} ± {half.ToString(fmt, CultureInfo.InvariantCulture)}" : mean.ToString(fmt, CultureInfo.InvariantCulture);
        }
        var steps = runs[0].Curve.Select(c => c.Step).ToList();
        var sb = new StringBuilder();
        sb.Append("| method | ").AppendJoin(" | ", steps.Select(st => $"acc @ {st}")).Append(" | loss @ end | merged acc | merged − unmerged | s/run | trainable |\n");
        sb.Append("|---|").AppendJoin("", steps.Select(_ => "---|")).Append("---|---|---|---|---|\n");
        foreach (var g in runs.GroupBy(x => x.Label))
        {
            sb.Append("| ").Append(g.Key).Append(" | ");
            foreach (var st in steps) sb.Append(Pm(g.Select(x => x.Curve.First(c => c.Step == st).Accuracy * 100), "0.0")).Append(" | ");
            sb.Append(Pm(g.Select(x => x.Curve[^1].Loss), "0.000")).Append(" | ");
            sb.Append(Pm(g.Select(x => x.MergedAccuracy * 100), "0.0")).Append(" | ");
            sb.Append(Pm(g.Select(x => (x.MergedAccuracy - x.Curve[^1].Accuracy) * 100), "0.0")).Append(" | ");
            sb.Append(g.Average(x => x.Seconds).ToString("0", CultureInfo.InvariantCulture)).Append(" | ");
            sb.Append(g.First().TrainableParameters.ToString("N0", CultureInfo.InvariantCulture)).Append(" |\n");
        }
        sb.Append(CultureInfo.InvariantCulture, $"\nAccuracy in % on {s.TestExamples} sentences whose opinion words never occur in the {s.TrainExamples} training sentences; mean ± half-range over seeds {string.Join(", ", runs.Select(x => x.Seed).Distinct())}; rank {s.Rank}, α {s.Alpha}, lr {s.LearningRate}, batch {s.BatchSize}, targets query,value + the classification head.\n");
        return sb.ToString();
    }
}
