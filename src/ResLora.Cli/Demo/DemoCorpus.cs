using System.Globalization;

namespace ResLora.Demo;

/// <summary>A prompt/completion pair of the demo task; the completion starts with a space (" 12").</summary>
public sealed record DemoExample(string Prompt, string Completion);

/// <summary>
/// The embedded demo's data, generated from a seed (nothing is downloaded or shipped):
/// <list type="bullet">
/// <item>pre-training text: plain sentences, addition/subtraction word problems, and the times table (factors 2..9) as
/// bare facts ("What is 3 times 4? Answer: 12");</item>
/// <item>the fine-tuning task, held out from pre-training: multiplication <i>word problems</i> ("Each box holds 3
/// pens. How many pens are in 4 boxes? Answer: 12"). The base model knows the facts but has never seen a word problem
/// that asks for a product (it answers them like its addition problems); fine-tuning must teach it to reach for the
/// table, which an adapter can learn in a few hundred steps and which carries over to held-out problems.</item>
/// </list>
/// </summary>
public static class DemoCorpus
{
    private static readonly string[] Names = ["Tom", "Ana", "Lee", "Mia", "Sam", "Ivy", "Max", "Zoe", "Ben", "Eva"];
    private static readonly string[] Things = ["apples", "pens", "books", "coins", "cards", "eggs", "cups", "shells"];
    private static readonly string[] Boxes = ["box", "bag", "jar", "basket", "crate", "tray"];
    private static readonly string[] Colors = ["red", "blue", "green", "yellow", "white", "black"];
    private static readonly string[] Places = ["park", "school", "market", "garden", "library", "river"];
    private static readonly string[] Verbs = ["walks to", "reads at", "waits near", "sings in", "plays at", "looks at"];

    /// <summary>The characters every demo text is made of (the demo tokenizer's vocabulary).</summary>
    public const string Alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,?:;!'-";

    private static string N(int v) => v.ToString(CultureInfo.InvariantCulture);

    private static T Pick<T>(Random r, T[] items) => items[r.Next(items.Length)];

    /// <summary>One addition or subtraction problem (pre-training family).</summary>
    public static DemoExample AddSub(Random r)
    {
        string who = Pick(r, Names), what = Pick(r, Things);
        int a = r.Next(1, 20), b = r.Next(1, 20);
        switch (r.Next(4))
        {
            case 0: return new($"{who} has {N(a)} {what} and gets {N(b)} more. How many {what} does {who} have? Answer:", $" {N(a + b)}");
            case 1: return new($"There are {N(a)} {what} on a table and {N(b)} on a chair. How many {what} are there? Answer:", $" {N(a + b)}");
            case 2:
                if (a < b) (a, b) = (b, a);
                return new($"{who} had {N(a)} {what} and gave away {N(b)}. How many {what} are left? Answer:", $" {N(a - b)}");
            default:
                if (a < b) (a, b) = (b, a);
                return new($"What is {N(a)} minus {N(b)}? Answer:", $" {N(a - b)}");
        }
    }

    /// <summary>One multiplication word problem (the held-out fine-tuning family), factors 2..9.</summary>
    public static DemoExample Multiply(Random r)
    {
        string who = Pick(r, Names), what = Pick(r, Things), box = Pick(r, Boxes);
        int a = r.Next(2, 10), b = r.Next(2, 10);
        return r.Next(3) switch
        {
            0 => new($"Each {box} holds {N(a)} {what}. How many {what} are in {N(b)} {box}s? Answer:", $" {N(a * b)}"),
            1 => new($"{who} buys {N(b)} {box}s with {N(a)} {what} in each. How many {what} does {who} buy? Answer:", $" {N(a * b)}"),
            _ => new($"{who} fills {N(b)} {box}s and puts {N(a)} {what} in every {box}. How many {what} is that? Answer:", $" {N(a * b)}"),
        };
    }

    /// <summary>One times-table fact, factors 2..9 (pre-training family: the knowledge the fine-tuning task needs).</summary>
    public static DemoExample TimesFact(Random r)
    {
        int a = r.Next(2, 10), b = r.Next(2, 10);
        return new($"What is {N(a)} times {N(b)}? Answer:", $" {N(a * b)}");
    }

    /// <summary>One plain sentence (pre-training family).</summary>
    public static string Sentence(Random r)
    {
        string who = Pick(r, Names);
        return r.Next(3) switch
        {
            0 => $"{who} {Pick(r, Verbs)} the {Pick(r, Places)}.",
            1 => $"The {Pick(r, Colors)} {Pick(r, Boxes)} has {N(r.Next(1, 20))} {Pick(r, Things)}.",
            _ => $"{who} likes {Pick(r, Colors)} {Pick(r, Things)} and the {Pick(r, Places)}.",
        };
    }

    /// <summary>A run of four consecutive times-table facts ("3 times 4 is 12, 3 times 5 is 15, ..."), pre-training family.</summary>
    public static string TimesRow(Random r)
    {
        int a = r.Next(2, 10), b0 = r.Next(2, 7);
        return string.Join(", ", Enumerable.Range(b0, 4).Select(b => $"{N(a)} times {N(b)} is {N(a * b)}")) + ".";
    }

    /// <summary>
    /// Pre-training texts: sentences (1 in 6), solved addition/subtraction problems (1 in 3), times-table questions (1 in
    /// 6) and runs of the table (1 in 3), so the small base model learns the 64 facts well enough to use them.
    /// </summary>
    public static List<string> PretrainTexts(int count, int seed)
    {
        var r = new Random(seed);
        var list = new List<string>(count);
        for (int i = 0; i < count; i++)
        {
            switch (r.Next(6))
            {
                case 0: list.Add(Sentence(r)); break;
                case 1:
                case 2: list.Add(Join(AddSub(r))); break;
                case 3: list.Add(Join(TimesFact(r))); break;
                default: list.Add(TimesRow(r)); break;
            }
        }
        return list;
    }

    private static string Join(DemoExample e) => e.Prompt + e.Completion;

    /// <summary>The fine-tuning task: multiplication problems, split into disjoint train and eval sets by prompt.</summary>
    public static (List<DemoExample> Train, List<DemoExample> Eval) FinetuneTask(int trainCount, int evalCount, int seed)
    {
        var r = new Random(seed);
        var seen = new HashSet<string>(StringComparer.Ordinal);
        var train = new List<DemoExample>(trainCount);
        var eval = new List<DemoExample>(evalCount);
        int guard = 0;
        while ((train.Count < trainCount || eval.Count < evalCount) && guard++ < 100 * (trainCount + evalCount))
        {
            var e = Multiply(r);
            if (!seen.Add(e.Prompt)) continue;
            if (eval.Count < evalCount && (train.Count >= trainCount || r.Next(4) == 0)) eval.Add(e);
            else if (train.Count < trainCount) train.Add(e);
        }
        if (train.Count < trainCount || eval.Count < evalCount)
            throw new UserInputException($"demo corpus: could only make {train.Count} train and {eval.Count} eval examples; ask for fewer.");
        return (train, eval);
    }
}
