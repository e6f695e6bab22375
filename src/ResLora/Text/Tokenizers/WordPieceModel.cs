using System.Text;
using System.Text.Json.Nodes;

namespace ResLora.Text.Tokenizers;

/// <summary>
/// WordPiece as Hugging Face tokenizers' <c>WordPiece</c> model (models/wordpiece/mod.rs) and Google BERT's
/// <c>WordpieceTokenizer</c>: greedy longest-match-first. From the start of the word take the longest prefix in the
/// vocabulary, then from where it ended the longest <c>##</c>-prefixed piece, and so on. A word with any position that
/// no piece matches, or one longer than <c>max_input_chars_per_word</c> characters, becomes one unknown token: never a
/// partial match. Lengths count Unicode scalar values (Rust <c>chars()</c>), not UTF-16 units, so an emoji is one char.
/// </summary>
/// <remarks>
/// Written by hand rather than taken from Microsoft.ML.Tokenizers' <c>WordPieceTokenizer</c>/<c>BertTokenizer</c>: those are
/// whole tokenizers built from a vocab file or stream with the package's own normalizer and pre-tokenizer types, while
/// tokenizer.json needs WordPiece as the model step behind whatever normalizer, pre-tokenizer, added tokens and decoder
/// the file names (the components <see cref="HfTokenizer"/> already runs for BPE). vocab.txt folders go through the same
/// pipeline, so a BERT folder tokenizes identically whichever of the two files it ships.
/// </remarks>
internal sealed class WordPieceModel : ITokenModel
{
    private readonly Dictionary<string, int> _vocab;
    private readonly int _unkId;
    private readonly string _prefix;
    private readonly int _maxChars;

    /// <summary>The <c>WordPiece</c> model section of tokenizer.json.</summary>
    public static WordPieceModel FromJson(JsonObject model, string source) =>
        new(TokenModelJson.Vocab(model, source), (string?)model["unk_token"] ?? "[UNK]", (string?)model["continuing_subword_prefix"] ?? "##", (int?)model["max_input_chars_per_word"] ?? 100, source);

    public IReadOnlyDictionary<string, int> Vocab => _vocab;

    public WordPieceModel(Dictionary<string, int> vocab, string unkToken, string continuingSubwordPrefix, int maxInputCharsPerWord, string source)
    {
        _vocab = vocab;
        if (!vocab.TryGetValue(unkToken, out _unkId)) throw new UserInputException($"{source}: model.unk_token '{unkToken}' is not in the vocabulary; a WordPiece model needs it for words it cannot split.");
        if (maxInputCharsPerWord < 1) throw new UserInputException($"{source}: model.max_input_chars_per_word {maxInputCharsPerWord} must be positive (BERT uses 100).");
        _prefix = continuingSubwordPrefix;
        _maxChars = maxInputCharsPerWord;
    }

    public void Encode(string word, List<int> output) => Encode(word, output, null);

    public void Encode(string word, List<int> output, List<(int Start, int End)>? spans)
    {
        if (word.Length == 0) return;
        // A surrogate pair is one char here; a lone surrogate counts as one too.
        int chars = 0;
        foreach (var _ in word.EnumerateRunes()) chars++;
        if (chars > _maxChars) { output.Add(_unkId); spans?.Add((0, word.Length)); return; }
        int first = output.Count, firstSpan = spans?.Count ?? 0, start = 0;
        var piece = new StringBuilder();
        while (start < word.Length)
        {
            int end = word.Length, id = -1;
            while (start < end)
            {
                piece.Clear();
                if (start > 0) piece.Append(_prefix);
                piece.Append(word, start, end - start);
                if (_vocab.TryGetValue(piece.ToString(), out id)) break;
                id = -1;
                // Step back one whole code point, never into the middle of a surrogate pair.
                end -= end - start >= 2 && char.IsLowSurrogate(word[end - 1]) && char.IsHighSurrogate(word[end - 2]) ? 2 : 1;
            }
            if (id < 0)
            {
                output.RemoveRange(first, output.Count - first);
                output.Add(_unkId);
                spans?.RemoveRange(firstSpan, spans.Count - firstSpan);
                spans?.Add((0, word.Length));
                return;
            }
            output.Add(id);
            spans?.Add((start, end));
            start = end;
        }
    }
}
