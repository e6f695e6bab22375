using System.Text.Json;
using System.Text.Json.Serialization;
using ResLora.IO;
using ResLora.Text.Templates;
using ResLora.Training;

namespace ResLora.Pipelines;

/// <summary>
/// The data a training run used, recorded beside its adapter (<see cref="FileName"/>) so that later steps can find
/// text of the same kind: merge and export take calibration text from the training split and held-out text from
/// the evaluation split, exactly as training divided them.
/// </summary>
public sealed record TrainingDataRecord
{
    public const string FileName = "reslora_data.json";

    [JsonPropertyName("data")] public required string DataPath { get; init; }
    [JsonPropertyName("eval_data")] public string? EvalDataPath { get; init; }
    [JsonPropertyName("eval_fraction")] public double EvalFraction { get; init; }
    [JsonPropertyName("seed")] public long Seed { get; init; }
    [JsonPropertyName("prompt_template")] public string? PromptTemplate { get; init; }
    [JsonPropertyName("completion_template")] public string? CompletionTemplate { get; init; }
    [JsonPropertyName("seq_len")] public int SeqLen { get; init; }
    /// <summary>The preference objective (dpo, ipo, orpo, simpo) when the data are preference pairs; absent for SFT data.</summary>
    [JsonPropertyName("objective")] public string? Objective { get; init; }
    /// <summary>The chat template conversation records were rendered with (its Jinja source), and its BOS/EOS texts; null without conversations.</summary>
    [JsonPropertyName("chat_template")] public string? ChatTemplate { get; init; }
    [JsonPropertyName("chat_bos_token")] public string? ChatBosToken { get; init; }
    [JsonPropertyName("chat_eos_token")] public string? ChatEosToken { get; init; }

    public DataTemplates Templates => new(PromptTemplate, CompletionTemplate)
    {
        Chat = ChatTemplate is null ? null : new ChatFormat(Text.Templates.ChatTemplate.Parse(ChatTemplate, "default"), ChatBosToken, ChatEosToken, origin: $"{FileName} chat_template"),
    };

    /// <summary>This record with the chat format the data was rendered with (null: none).</summary>
    public TrainingDataRecord WithChat(ChatFormat? chat) =>
        chat is null ? this : this with { ChatTemplate = chat.Template.Source, ChatBosToken = chat.BosToken, ChatEosToken = chat.EosToken };

    /// <summary>The record in an adapter folder, or null when there is none (an adapter trained elsewhere).</summary>
    public static TrainingDataRecord? Read(string adapterDir)
    {
        string path = Path.Combine(adapterDir, FileName);
        if (!File.Exists(path)) return null;
        try { return JsonSerializer.Deserialize<TrainingDataRecord>(BoundedFile.ReadAllText(path, BoundedFile.ConfigLimit, "training-data record")); }
        catch (JsonException e) { throw new UserInputException($"{path}: not a valid training-data record ({e.Message}); delete it and pass --calib/--heldout.", e); }
    }

    public (string FileName, string Json) Note() => (FileName, JsonSerializer.Serialize(this, IO.Json.ReportJson.Indented));

    /// <summary>The train and eval splits as training made them; a data file that is gone is an error naming it and the fix.</summary>
    public (IReadOnlyList<TextExample> Train, IReadOnlyList<TextExample> Eval) Load()
    {
        if (Objective is { } objective)
            throw new UserInputException($"{FileName}: the adapter was trained on preference pairs (--objective {objective}), which are not prompt/completion text; pass --calib FILE (and --heldout FILE) instead.");
        foreach (var p in new[] { DataPath, EvalDataPath })
            if (p is not null && !File.Exists(p))
                throw new UserInputException($"{FileName}: the training data {p} is gone; pass --calib FILE (and --heldout FILE) instead.");
        return TrainingSplits.Make(DataSet.Load(DataPath, Templates), EvalDataPath is null ? null : DataSet.Load(EvalDataPath, Templates), EvalFraction, Seed);
    }
}

/// <summary>How training divides its data (one rule for training, merge and export).</summary>
public static class TrainingSplits
{
    /// <summary>
    /// The train and eval examples. A conversation trained per assistant turn (<see cref="TextExample.TurnExample"/>)
    /// stays on one side, so evaluation never scores a turn whose conversation trained its other turns; the split is
    /// drawn over records (data without such conversations splits exactly as before).
    /// </summary>
    public static (IReadOnlyList<TextExample> Train, IReadOnlyList<TextExample> Eval) Make(IReadOnlyList<TextExample> all, IReadOnlyList<TextExample>? evalSet, double evalFraction, long seed)
    {
        if (evalSet is null && !(evalFraction >= 0 && evalFraction < 1))
            throw new UserInputException($"--eval-fraction must be in [0, 1) (0 = no evaluation), got {evalFraction}.");
        if (evalSet is not null) return (all, evalSet);
        if (!(evalFraction > 0 && all.Count >= 2)) return (all, Array.Empty<TextExample>());
        if (!all.Any(e => e.TurnExample > 0)) return DataSet.Split(all, evalFraction, seed);
        var groups = new List<List<TextExample>>();
        foreach (var e in all)
        {
            if (e.TurnExample > 0) groups[^1].Add(e);
            else groups.Add(new List<TextExample> { e });
        }
        if (groups.Count < 2) return (all, Array.Empty<TextExample>());
        var byFirst = new Dictionary<TextExample, List<TextExample>>(ReferenceEqualityComparer.Instance);
        foreach (var g in groups) byFirst[g[0]] = g;
        var (train, eval) = DataSet.Split(groups.Select(g => g[0]).ToList(), evalFraction, seed);
        return (train.SelectMany(e => byFirst[e]).ToList(), eval.SelectMany(e => byFirst[e]).ToList());
    }

    /// <summary>The note <c>train</c> prints when conversations were trained per assistant turn, or null when none was.</summary>
    public static string? PerTurnNote(IEnumerable<TextExample> examples)
    {
        int conversations = 0, expanded = 0;
        foreach (var e in examples)
        {
            if (e.TurnExample is not { } k) continue;
            expanded++;
            if (k == 0) conversations++;
        }
        return expanded == 0 ? null
            : $"{conversations} conversation(s) became {expanded} examples, one per assistant turn: the chat template writes earlier turns differently once later ones follow (e.g. Qwen3 drops earlier <think> blocks), so each turn is trained on the text the model sees when writing it (docs/chat-templates.md)";
    }
}
