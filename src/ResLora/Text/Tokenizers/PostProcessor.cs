using System.Text.Json.Nodes;

namespace ResLora.Text.Tokenizers;

/// <summary>
/// How one text or a text pair becomes model input: Hugging Face tokenizers' post-processor (tokenizer.json
/// <c>post_processor</c>) reduced to the two templates every kind of it amounts to for ids and type ids.
/// <c>BertProcessing</c> is <c>[CLS]:0 $A:0 [SEP]:0</c> / <c>… $B:1 [SEP]:1</c>; <c>RobertaProcessing</c> is
/// <c>&lt;s&gt; $A &lt;/s&gt;</c> / <c>… &lt;/s&gt; $B &lt;/s&gt;</c> with type id 0 everywhere (processors/roberta.rs sets
/// every type id to 0; its <c>trim_offsets</c>/<c>add_prefix_space</c> touch only offsets); <c>TemplateProcessing</c> is
/// read as written; <c>ByteLevel</c> changes offsets only. Truncation is tokenizers' <c>longest_first</c>
/// (utils/truncation.rs), applied with the specials' count taken off the budget first, as <c>TokenizerImpl::post_process</c> does.
/// </summary>
internal sealed class PostProcessor
{
    /// <summary>One template entry: a special token's ids, or the ids of text A (<see cref="Sequence"/> 0) or B (1).</summary>
    private sealed record Piece(int[] SpecialIds, int Sequence, int TypeId);

    private readonly Piece[] _single;
    private readonly Piece[]? _pair;
    private readonly string _source;

    private PostProcessor(Piece[] single, Piece[]? pair, string source)
    {
        _single = single;
        _pair = pair;
        _source = source;
    }

    /// <summary>The BERT rule, which transformers' converter writes for a vocab.txt BERT tokenizer.</summary>
    public static PostProcessor Bert(int cls, int sep, string source) => new(
        new[] { Special(cls, 0), Seq(0, 0), Special(sep, 0) },
        new[] { Special(cls, 0), Seq(0, 0), Special(sep, 0), Seq(1, 1), Special(sep, 1) },
        source);

    private static PostProcessor Roberta(int cls, int sep, string source) => new(
        new[] { Special(cls, 0), Seq(0, 0), Special(sep, 0) },
        new[] { Special(cls, 0), Seq(0, 0), Special(sep, 0), Special(sep, 0), Seq(1, 0), Special(sep, 0) },
        source);

    private static Piece Special(int id, int typeId) => new(new[] { id }, -1, typeId);

    private static Piece Seq(int sequence, int typeId) => new(Array.Empty<int>(), sequence, typeId);

    /// <summary>
    /// Reads tokenizer.json's <c>post_processor</c>; null when there is none or it adds no tokens (ByteLevel alone).
    /// <paramref name="lookup"/> resolves a template's special token when the file has no <c>special_tokens</c> entry for it.
    /// </summary>
    public static PostProcessor? Parse(JsonObject? node, Func<string, int?> lookup, string source)
    {
        if (node is null) return null;
        string type = (string?)node["type"] ?? "";
        UserInputException Bad(string field, string what) => new($"{source}: 'post_processor{field}' {what}.");
        switch (type)
        {
            case "ByteLevel": return null;
            case "Sequence":
                {
                    var found = new List<PostProcessor>();
                    foreach (var p in node["processors"] as JsonArray ?? throw Bad(".processors", "missing"))
                        if (Parse(p as JsonObject ?? throw Bad(".processors", "must hold objects"), lookup, source) is { } pp) found.Add(pp);
                    if (found.Count > 1) throw Bad(".processors", "has more than one processor that adds special tokens, which is not supported");
                    return found.Count == 1 ? found[0] : null;
                }
            case "BertProcessing":
            case "RobertaProcessing":
                {
                    int Id(string field) => node[field] is JsonArray a && a.Count == 2 && a[1] is JsonValue v && v.TryGetValue<int>(out int id)
                        ? id
                        : throw Bad($".{field}", "must be [token, id]");
                    return type == "BertProcessing" ? Bert(Id("cls"), Id("sep"), source) : Roberta(Id("cls"), Id("sep"), source);
                }
            case "TemplateProcessing":
                {
                    var specials = node["special_tokens"] as JsonObject;
                    Piece[] Template(JsonArray t, string field) => t.Select((x, i) => ReadPiece(x as JsonObject, $".{field}[{i}]", specials, lookup, Bad)).ToArray();
                    var single = node["single"] as JsonArray ?? throw Bad(".single", "missing");
                    return new PostProcessor(Template(single, "single"), node["pair"] is JsonArray pair ? Template(pair, "pair") : null, source);
                }
            default: throw Bad(".type", $"'{type}' is not supported (supported: BertProcessing, RobertaProcessing, TemplateProcessing, ByteLevel, Sequence)");
        }
    }

    private static Piece ReadPiece(JsonObject? o, string field, JsonObject? specials, Func<string, int?> lookup, Func<string, string, UserInputException> bad)
    {
        if (o?["Sequence"] is JsonObject seq)
        {
            string id = (string?)seq["id"] ?? "A";
            int sequence = id switch { "A" => 0, "B" => 1, _ => throw bad(field, $"names sequence '{id}'; only A and B exist") };
            return Seq(sequence, (int?)seq["type_id"] ?? 0);
        }
        if (o?["SpecialToken"] is JsonObject sp)
        {
            string name = (string?)sp["id"] ?? throw bad(field, "SpecialToken has no id");
            int[] ids;
            if (specials?[name] is JsonObject entry)
                ids = (entry["ids"] as JsonArray ?? throw bad($".special_tokens.{name}", "has no ids")).Select(x => (int)x!).ToArray();
            else
                ids = new[] { lookup(name) ?? throw bad(field, $"names special token '{name}', which is neither in special_tokens nor in the vocabulary") };
            return new Piece(ids, -1, (int?)sp["type_id"] ?? 0);
        }
        throw bad(field, "must be {\"SpecialToken\": …} or {\"Sequence\": …}");
    }

    /// <summary>How many ids the template adds around one text or a pair (tokenizers' <c>added_tokens(is_pair)</c>).</summary>
    public int AddedTokens(bool pair) => Template(pair).Where(p => p.Sequence < 0).Sum(p => p.SpecialIds.Length);

    private Piece[] Template(bool pair) =>
        pair ? _pair ?? throw new UserInputException($"{_source}: the post_processor has no pair template, so this tokenizer cannot encode a text pair.") : _single;

    /// <summary>
    /// Truncates <paramref name="a"/> and <paramref name="b"/> to fit <paramref name="maxLength"/> ids together with the
    /// specials, then lays them into the template.
    /// </summary>
    public EncodedInput Encode(List<int> a, List<int>? b, int maxLength)
    {
        var template = Template(b is not null);
        int added = AddedTokens(b is not null);
        if (maxLength < added || maxLength < 1)
            throw new UserInputException($"max length {maxLength} cannot hold the {added} special token(s) this tokenizer adds to a {(b is null ? "text" : "text pair")}; it must be at least {Math.Max(added, 1)}, and above {added} to keep any text.");
        LongestFirst(a, b, maxLength - added);
        var ids = new List<int>(maxLength);
        var types = new List<int>(maxLength);
        foreach (var p in template)
        {
            var part = p.Sequence switch { 0 => a, 1 => b!, _ => (IReadOnlyList<int>)p.SpecialIds };
            ids.AddRange(part);
            for (int i = 0; i < part.Count; i++) types.Add(p.TypeId);
        }
        return new EncodedInput(ids.ToArray(), types.ToArray());
    }

    /// <summary>
    /// tokenizers' <c>longest_first</c> for a budget of <paramref name="budget"/> text ids: a single text is cut at the end;
    /// for a pair, when only the longer text must give way it keeps <c>budget − shorter</c>; when both must, the shorter
    /// keeps <c>budget / 2</c> and the longer the rest (on equal lengths the first counts as the shorter). This equals
    /// removing one token at a time from the longer text, the first on ties, except when the budget is odd, both texts
    /// are cut and the first started longer: then the first keeps the odd token (tokenizers' own test table: 8+4 ids into 7
    /// → 4+3, where one at a time would give 3+4). The closed form is what fast Hugging Face tokenizers run, so it is the
    /// reference here.
    /// </summary>
    internal static void LongestFirst(List<int> a, List<int>? b, int budget)
    {
        int total = a.Count + (b?.Count ?? 0);
        if (total <= budget) return;
        if (b is null) { a.RemoveRange(budget, a.Count - budget); return; }
        int n1 = a.Count, n2 = b.Count;
        bool swap = n1 > n2;
        if (swap) (n1, n2) = (n2, n1);
        n2 = n1 > budget ? n1 : Math.Max(n1, budget - n1);
        if (n1 + n2 > budget)
        {
            n1 = budget / 2;
            n2 = n1 + budget % 2;
        }
        if (swap) (n1, n2) = (n2, n1);
        if (a.Count > n1) a.RemoveRange(n1, a.Count - n1);
        if (b.Count > n2) b.RemoveRange(n2, b.Count - n2);
    }
}
