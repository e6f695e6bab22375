using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace ResLora.Training.Classification;

/// <summary>
/// The classes of a classification task: id i (the head's output i) ↔ its name. Saved in a model's config.json the
/// way Hugging Face Transformers saves it (<c>"id2label": {"0": "neg"}</c>, <c>"label2id": {"neg": 0}</c>), so a
/// model trained here and one from the Hub read the same way.
/// </summary>
public sealed class LabelMap
{
    private readonly string[] _names;
    private readonly Dictionary<string, int> _ids;

    /// <summary>A map whose id i is <paramref name="names"/>[i]; names must be non-empty and distinct.</summary>
    /// <param name="names">The class names in id order.</param>
    public LabelMap(IEnumerable<string> names)
    {
        _names = names.ToArray();
        if (_names.Length == 0) throw new UserInputException("a label map needs at least one class.");
        _ids = new Dictionary<string, int>(StringComparer.Ordinal);
        for (int i = 0; i < _names.Length; i++)
        {
            if (string.IsNullOrEmpty(_names[i])) throw new UserInputException($"label id {i} has an empty name; every class needs a name.");
            if (!_ids.TryAdd(_names[i], i)) throw new UserInputException($"label '{_names[i]}' names both id {_ids[_names[i]]} and id {i}; class names must be distinct.");
        }
        // Integer-looking names ("0", "1") would make an integer label ambiguous between a name and an id.
        NamesAreIntegers = _names.Any(IsCanonicalInteger);
    }

    /// <summary>The number of classes (the classifier head's outputs).</summary>
    public int Count => _names.Length;

    /// <summary>The class names in id order (Hugging Face's <c>id2label</c>).</summary>
    public IReadOnlyList<string> Names => _names;

    /// <summary>True when some class name reads as an integer, so integer labels are looked up only by name.</summary>
    internal bool NamesAreIntegers { get; }

    /// <summary>The name of class <paramref name="id"/>.</summary>
    /// <param name="id">A label id in [0, <see cref="Count"/>).</param>
    public string NameOf(int id) =>
        (uint)id < (uint)_names.Length ? _names[id] : throw new ArgumentOutOfRangeException(nameof(id), id, $"not a label id in [0, {_names.Length}).");

    /// <summary>The id of the class named <paramref name="name"/> (exact, case-sensitive match).</summary>
    /// <param name="name">A class name.</param>
    /// <param name="id">Its id, when found.</param>
    public bool TryGetId(string name, out int id) => _ids.TryGetValue(name, out id);

    /// <summary>
    /// The map a training set implies, from its labels' texts (repeats allowed). When every label is an integer and
    /// together they are exactly 0..n−1, each keeps its value as its id (GLUE's and Hugging Face datasets' integer
    /// labels). Other integer labels (e.g. star ratings 1..5) are sorted by value; any other labels are sorted
    /// ordinally (culture-free); either way ids are then 0..n−1 in that order.
    /// </summary>
    /// <param name="labels">The label texts of the training records.</param>
    public static LabelMap FromLabels(IEnumerable<string> labels)
    {
        var distinct = labels.Distinct(StringComparer.Ordinal).ToList();
        if (distinct.All(IsCanonicalInteger))
            return new LabelMap(distinct.OrderBy(s => long.Parse(s, CultureInfo.InvariantCulture)));
        distinct.Sort(StringComparer.Ordinal);
        return new LabelMap(distinct);
    }

    /// <summary>The <c>id2label</c> and <c>label2id</c> objects of a Hugging Face config.json.</summary>
    public (JsonObject Id2Label, JsonObject Label2Id) ToConfigJson()
    {
        var id2label = new JsonObject();
        var label2id = new JsonObject();
        for (int i = 0; i < _names.Length; i++)
        {
            id2label[i.ToString(CultureInfo.InvariantCulture)] = _names[i];
            label2id[_names[i]] = i;
        }
        return (id2label, label2id);
    }

    /// <summary>
    /// Reads the map from a Hugging Face config: <c>id2label</c> when present (keys must be "0".."n−1"), otherwise
    /// <c>label2id</c> (values must be 0..n−1). When both are present they must agree.
    /// </summary>
    /// <param name="config">The parsed config.json.</param>
    /// <param name="source">What to name in error messages, e.g. the config file's path.</param>
    public static LabelMap FromConfig(JsonObject config, string source = "config.json")
    {
        var id2label = Object(config, "id2label", source);
        var label2id = Object(config, "label2id", source);
        if (id2label is null && label2id is null)
            throw new UserInputException($"{source}: has no id2label or label2id, so the classes are unknown; add \"id2label\": {{\"0\": \"NAME\", ...}}.");
        LabelMap map = id2label is not null ? FromId2Label(id2label, source) : FromLabel2Id(label2id!, source);
        if (id2label is not null && label2id is not null)
        {
            var other = FromLabel2Id(label2id, source);
            if (!other._names.SequenceEqual(map._names, StringComparer.Ordinal))
                throw new UserInputException($"{source}: id2label ({Describe(map)}) and label2id ({Describe(other)}) disagree; fix one to match the other.");
        }
        return map;
    }

    /// <summary>The classes as "0=neg, 1=pos" for messages.</summary>
    internal static string Describe(LabelMap map) => string.Join(", ", map._names.Select((n, i) => $"{i}={n}"));

    /// <summary>"0", "17", "-3": what <see cref="long"/> prints, so the text and the number are one-to-one.</summary>
    internal static bool IsCanonicalInteger(string s) =>
        long.TryParse(s, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out long v) && v.ToString(CultureInfo.InvariantCulture) == s;

    private static JsonObject? Object(JsonObject config, string field, string source) => config[field] switch
    {
        null => null,
        JsonObject o => o,
        var other => throw new UserInputException($"{source}: {field} is {other.GetValueKind().ToString().ToLowerInvariant()}; it must be an object like {{\"0\": \"neg\"}} (id2label) or {{\"neg\": 0}} (label2id)."),
    };

    private static LabelMap FromId2Label(JsonObject id2label, string source)
    {
        var names = new string?[id2label.Count];
        foreach (var (key, value) in id2label)
        {
            if (!IsCanonicalInteger(key) || !int.TryParse(key, CultureInfo.InvariantCulture, out int id) || (uint)id >= (uint)names.Length)
                throw new UserInputException($"{source}: id2label key '{key}' is not an id in 0..{names.Length - 1}; the keys must be the ids \"0\"..\"{names.Length - 1}\".");
            if (value is not JsonValue v || v.GetValueKind() != JsonValueKind.String)
                throw new UserInputException($"{source}: id2label[\"{key}\"] must be a string (the class name).");
            names[id] = v.GetValue<string>();
        }
        // n distinct in-range keys cover 0..n-1 exactly, so every slot is filled.
        return new LabelMap(names!);
    }

    private static LabelMap FromLabel2Id(JsonObject label2id, string source)
    {
        var names = new string?[label2id.Count];
        foreach (var (name, value) in label2id)
        {
            if (value is not JsonValue v || v.GetValueKind() != JsonValueKind.Number || !v.TryGetValue(out int id) || (uint)id >= (uint)names.Length)
                throw new UserInputException($"{source}: label2id[\"{name}\"] is not an id in 0..{names.Length - 1}; the values must be the ids 0..{names.Length - 1}.");
            if (names[id] is not null)
                throw new UserInputException($"{source}: label2id gives id {id} to both '{names[id]}' and '{name}'; each id names one class.");
            names[id] = name;
        }
        return new LabelMap(names!);
    }
}
