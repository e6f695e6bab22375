using System.Text.Json.Nodes;

namespace ResLora.Text.Tokenizers;

/// <summary>
/// The model step of a tokenizer.json tokenizer, one class per <c>model.type</c> (<see cref="BpeModel"/> for "BPE",
/// <see cref="WordPieceModel"/> for "WordPiece", <see cref="UnigramModel"/> for "Unigram"): one pre-tokenized word in, its ids appended to the output. Everything
/// around it (added tokens, normalizers, pre-tokenizers, decoders, post-processor) is the shared <see cref="HfTokenizer"/>.
/// </summary>
internal interface ITokenModel
{
    /// <summary>The model's vocabulary (<c>model.vocab</c>): token string to id, added tokens not included.</summary>
    IReadOnlyDictionary<string, int> Vocab { get; }

    void Encode(string word, List<int> output);

    /// <summary>As <see cref="Encode(string, List{int})"/>, also adding each token's [start, end) range in <paramref name="word"/> to <paramref name="spans"/>.</summary>
    void Encode(string word, List<int> output, List<(int Start, int End)> spans);
}

/// <summary>What every model section of tokenizer.json is read with: its vocabulary and the fields no model supports.</summary>
internal static class TokenModelJson
{
    /// <summary><c>model.vocab</c> (token → id; a repeated token keeps its last id).</summary>
    public static Dictionary<string, int> Vocab(JsonObject model, string source)
    {
        if (model["end_of_word_suffix"] is JsonValue ews && ((string?)ews)?.Length > 0) throw Bad(source, "model.end_of_word_suffix", "is not supported");
        var vocab = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var (k, v) in model["vocab"] as JsonObject ?? throw Bad(source, "model.vocab", "missing")) vocab[k] = (int)v!;
        return vocab;
    }

    public static UserInputException Bad(string source, string field, string what) => new($"{source}: '{field}' {what}.");
}
