using System.Security.Cryptography;
using System.Text.Json;
using System.Text.Json.Serialization;
using ResLora.IO;
using ResLora.Text.Templates;
using ResLora.Training;
using ResLora.Training.Preference;

namespace ResLora.Pipelines;

/// <summary>
/// Preference tuning of a causal LM (<c>reslora train --objective dpo|ipo|orpo|simpo</c>): the model, method and run are
/// supervised fine-tuning's (<see cref="CausalLmFineTune"/>); the data are preference pairs (TRL's formats,
/// <see cref="PreferenceRecords"/>) and the task is <see cref="PreferenceTask"/>. DPO and IPO compare with the base model
/// (adapters switched off), or, when the run starts from <c>--init-adapter</c>, with that adapter as it was loaded;
/// <c>--precompute-reference</c> scores every pair under the reference once before training and keeps the values in
/// <see cref="ReferenceFile"/>, which a resume reuses only for the same data.
/// </summary>
internal sealed class PreferenceFineTune(FineTuneRequest req) : CausalLmFineTune(req)
{
    /// <summary>The precomputed reference log-probabilities in --out.</summary>
    public const string ReferenceFile = "reference_logps.json";

    private IReadOnlyList<PreferenceExample> _trainPairs = null!, _evalPairs = null!;
    private PreferenceOptions _o = null!;
    private string _fingerprint = "";
    private PreferenceReference? _reference;
    private ChatFormat? _chat;
    private bool _mutatedBase;

    public override Adapters.AdapterConfigBase PlanConfig(Adapters.AdapterConfigBase config, string modelDir)
    {
        _mutatedBase = config is Adapters.LowRankConfigBase { InitLoraWeights.MutatesBase: true };
        return base.PlanConfig(config, modelDir);
    }

    public override int ReadData()
    {
        var req = Request;
        _o = req.Preference!;
        _o.Validate();
        if (req.Task is not null) throw new UserInputException($"--task is for encoders; --objective {_o.ObjectiveName} tunes a causal LM.");
        if (req.Pack) throw new UserInputException($"--pack joins SFT examples into full sequences; preference pairs are scored one pair at a time. Drop --pack for --objective {_o.ObjectiveName}.");
        if (req.TrainOnPrompt) throw new UserInputException($"--train-on-prompt scores prompt tokens in SFT; a preference loss compares the responses only. Drop it for --objective {_o.ObjectiveName}.");
        if (req.SeqLen is < 2) throw new UserInputException($"--seq-len must be at least 2, got {req.SeqLen}.");
        if (req.Templates.PromptTemplate is not null || req.Templates.CompletionTemplate is not null)
            throw new UserInputException($"--prompt-template and --completion-template build SFT examples; preference pairs are read from their prompt/chosen/rejected fields (docs/preference-data.md). Drop them for --objective {_o.ObjectiveName}.");
        var chat = _chat = req.Templates.ForModel(req.ModelDir).Chat;
        var all = PreferenceRecords.Load(req.DataPath, chat);
        if (req.EvalDataPath is { } evalPath) (_trainPairs, _evalPairs) = (all, PreferenceRecords.Load(evalPath, chat));
        else if (!(req.EvalFraction >= 0 && req.EvalFraction < 1)) throw new UserInputException($"--eval-fraction must be in [0, 1) (0 = no evaluation), got {req.EvalFraction}.");
        else (_trainPairs, _evalPairs) = req.EvalFraction > 0 && all.Count >= 2 ? DataSet.Split(all, req.EvalFraction, req.Train.Seed) : (all, Array.Empty<PreferenceExample>());
        if (_trainPairs.Count == 0) throw new UserInputException($"{req.DataPath}: no preference pairs to train on.");
        return _trainPairs.Count;
    }

    public override string Describe(Adapters.AdapterConfigBase config, int adaptedModules, long trainable, long total) =>
        base.Describe(config, adaptedModules, trainable, total) + $"; objective {_o.ObjectiveName}";

    public override ITrainTask CreateTask(ITrainObserver observer)
    {
        var req = Request;
        int pad = Tokenizer.PadTokenId ?? (Tokenizer.EosTokenIds.Count > 0 ? Tokenizer.EosTokenIds[0] : 0);
        var train = PreferenceData.Tokenize(Tokenizer, _trainPairs, SeqLen, _o.MaxPromptLength);
        var eval = PreferenceData.Tokenize(Tokenizer, _evalPairs, SeqLen, _o.MaxPromptLength);
        int cut = train.Truncated + eval.Truncated, split = train.SplitAtBoundary + eval.SplitAtBoundary;
        if (cut > 0) observer.OnMessage($"{cut} preference pairs were longer than --seq-len {SeqLen} and were cut (prompt to --max-prompt-length {_o.MaxPromptLength ?? SeqLen / 2}, then the responses)");
        if (split > 0) observer.OnMessage($"{split} pairs had a prompt whose tokens merge with the response's; their prompt and responses were encoded apart, as TRL does (docs/preference-data.md)");
        _fingerprint = Fingerprint(train.Pairs, eval.Pairs);
        DataRecord = new TrainingDataRecord
        {
            DataPath = Path.GetFullPath(req.DataPath),
            EvalDataPath = req.EvalDataPath is null ? null : Path.GetFullPath(req.EvalDataPath),
            EvalFraction = req.EvalDataPath is null ? req.EvalFraction : 0,
            Seed = req.Train.Seed,
            SeqLen = SeqLen,
            Objective = _o.ObjectiveName,
        }.WithChat(_trainPairs.Concat(_evalPairs).Any(e => e.IsConversation) ? _chat : null);
        if (!_o.NeedsReference) return new PreferenceTask(LoadedModel, train.Pairs, eval.Pairs, pad, _o, null);

        _reference = req.InitAdapter is { } init
            ? PreferenceReference.InitialWeights(LoadedModel, $"the adapter of --init-adapter {init} as loaded (its weights kept aside for the reference forward)")
            : _mutatedBase
                // PiSSA, OLoRA, LoftQ moved part of W into the adapter: switched off, the layers would compute the residual.
                ? PreferenceReference.InitialWeights(LoadedModel, "the model as initialised (--init moved part of the base into the adapter, so the adapter stays on with its initial weights)")
                : Adapters.AdapterModel.FindAdapters(LoadedModel).Count == 0
                    // Full fine-tuning (--precompute-reference only): the model as loaded, scored before any step.
                    ? PreferenceReference.AdapterOff(LoadedModel, "the model as loaded, scored once before training")
                    : PreferenceReference.AdapterOff(LoadedModel);
        observer.OnMessage($"{_o.ObjectiveName} reference: {_reference.Description}");
        if (!_o.PrecomputeReference) return new PreferenceTask(LoadedModel, train.Pairs, eval.Pairs, pad, _o, _reference);

        var (trainRef, evalRef) = PrecomputedReference(train.Pairs, eval.Pairs, pad, observer);
        return new PreferenceTask(LoadedModel, train.Pairs, eval.Pairs, pad, _o, null, trainRef, evalRef);
    }

    /// <summary>
    /// The reference values of every pair: read back from <see cref="ReferenceFile"/> when a resumed run's file matches
    /// the data, else computed now (the adapters are as the run started: a resume restores its checkpoint only later).
    /// </summary>
    private (float[] Train, float[] Eval) PrecomputedReference(IReadOnlyList<PreferencePair> train, IReadOnlyList<PreferencePair> eval, int pad, ITrainObserver observer)
    {
        string path = Path.Combine(Request.OutDir, ReferenceFile);
        if (Request.Resume && File.Exists(path))
        {
            ReferenceValues? saved;
            try { saved = JsonSerializer.Deserialize<ReferenceValues>(File.ReadAllText(path)); }
            catch (JsonException e) { throw new UserInputException($"{path}: not a valid reference file ({e.Message}); start a new run (another --out, or --overwrite).", e); }
            if (saved is null || saved.Fingerprint != _fingerprint || saved.Train.Length != train.Count * 2 || saved.Eval.Length != eval.Count * 2)
                throw new UserInputException($"{path}: the reference log-probabilities were computed for other preference data ({(saved?.Train.Length ?? 0) / 2} training pairs then, {train.Count} now; fingerprint {saved?.Fingerprint ?? "none"} then, {_fingerprint} now): the data, --seq-len or --max-prompt-length changed since the run started. Resume with the run's data and settings, or start a new run (another --out, or --overwrite).");
            observer.OnMessage($"reference log-probabilities of {train.Count + eval.Count} pairs read from {path}");
            return (saved.Train, saved.Eval);
        }
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var values = new ReferenceValues(_fingerprint, _reference!.Table(train, Request.Train.BatchSize, pad), _reference.Table(eval, Request.Train.BatchSize, pad));
        if (Request.Communicator is null || Request.Communicator.Rank == 0) AtomicFile.WriteAllText(path, JsonSerializer.Serialize(values));
        observer.OnMessage($"reference log-probabilities of {train.Count + eval.Count} pairs computed in {clock.Elapsed.TotalSeconds:0.0} s (--precompute-reference); training holds no reference forward");
        return (values.Train, values.Eval);
    }

    /// <summary>SHA-256 (first 16 hex digits) of every pair's ids and labels, train then eval: what the reference values belong to.</summary>
    internal static string Fingerprint(IReadOnlyList<PreferencePair> train, IReadOnlyList<PreferencePair> eval)
    {
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        foreach (var set in new[] { train, eval })
        {
            sha.AppendData(BitConverter.GetBytes(set.Count));
            foreach (var p in set)
                foreach (var a in new[] { p.ChosenIds, p.ChosenLabels, p.RejectedIds, p.RejectedLabels })
                {
                    sha.AppendData(BitConverter.GetBytes(a.Length));
                    sha.AppendData(System.Runtime.InteropServices.MemoryMarshal.AsBytes(a.AsSpan()));
                }
        }
        return Convert.ToHexString(sha.GetHashAndReset())[..16].ToLowerInvariant();
    }

    public override Dictionary<string, string> ResumeSettings()
    {
        var d = new Dictionary<string, string>(StringComparer.Ordinal)
        {
            ["--seq-len"] = SeqLen.ToString(System.Globalization.CultureInfo.InvariantCulture),
            ["preference-data"] = _fingerprint,
            ["--init-adapter"] = Request.InitAdapter is { } i ? Path.GetFullPath(i) : "",
        };
        foreach (var (k, v) in _o.ResumeSettings()) d[k] = v;
        return d;
    }

    /// <summary>What <see cref="ReferenceFile"/> holds: (chosen, rejected) reference sums per pair, and the data's fingerprint.</summary>
    private sealed record ReferenceValues(
        [property: JsonPropertyName("fingerprint")] string Fingerprint,
        [property: JsonPropertyName("train")] float[] Train,
        [property: JsonPropertyName("eval")] float[] Eval);
}
