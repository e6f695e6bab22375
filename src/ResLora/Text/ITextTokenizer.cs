namespace ResLora.Text;

/// <summary>
/// What the rest of the library needs of a tokenizer. Implementations: Hugging Face tokenizer.json (the
/// SentencePiece-style BPE with byte fallback, byte-level BPE, and BERT's WordPiece), SentencePiece tokenizer.model,
/// a classic BERT vocab.txt, and the demo's built-in tokenizer.
/// </summary>
public interface ITextTokenizer
{
    int VocabSize { get; }

    int? BosTokenId { get; }

    /// <summary>All ids that end generation (config/generation_config may list several).</summary>
    IReadOnlyList<int> EosTokenIds { get; }

    int? PadTokenId { get; }

    /// <summary>Whether the model's tokenizer config asks for BOS at the start of every sequence.</summary>
    bool AddBosToken { get; }

    /// <summary>Encodes text without adding BOS/EOS; special tokens written in the text are recognised.</summary>
    IReadOnlyList<int> Encode(string text);

    /// <summary>Decodes ids to text; special tokens are dropped when <paramref name="skipSpecialTokens"/>.</summary>
    string Decode(IEnumerable<int> ids, bool skipSpecialTokens = true);
}

/// <summary>
/// An encoder's input for one example: token ids with the model's special tokens in place, and the segment (token
/// type) of each id: 0 for the first text and its specials, 1 for the second text where the model uses segments.
/// </summary>
public sealed record EncodedInput(int[] Ids, int[] TypeIds);

/// <summary>
/// Optional capability of a tokenizer whose folder says how one text or a text pair becomes model input (Hugging Face's
/// post-processor: BERT's <c>[CLS] a [SEP] b [SEP]</c> with segments 0/1, RoBERTa's <c>&lt;s&gt; a &lt;/s&gt;&lt;/s&gt; b &lt;/s&gt;</c>
/// with segment 0 throughout, or a template).
/// </summary>
public interface ISentencePairTokenizer
{
    /// <summary>
    /// Encodes <paramref name="text"/> (and <paramref name="pair"/> when given) with the special tokens added, truncated to at
    /// most <paramref name="maxLength"/> ids in total by Hugging Face's <c>longest_first</c> rule (one token at a time from
    /// the longer of the two texts; specials are never cut).
    /// </summary>
    EncodedInput EncodeForModel(string text, string? pair, int maxLength);

    /// <summary>The id padded positions carry (BERT's <c>[PAD]</c>, RoBERTa's <c>&lt;pad&gt;</c>).</summary>
    int PadId { get; }
}

/// <summary>A token and the [<see cref="Start"/>, <see cref="End"/>) range of the encoded text (UTF-16 units) it was made from.</summary>
/// <param name="Id">The token id.</param>
/// <param name="Start">The first character of the text the token covers.</param>
/// <param name="End">One past the last character the token covers.</param>
public readonly record struct TokenOffset(int Id, int Start, int End);

/// <summary>
/// Optional capability of a tokenizer that knows where each token came from in its input (Hugging Face tokenizer.json
/// tokenizers): what a loss mask over rendered chat text needs, and what <c>reslora tokenize</c> shows.
/// </summary>
public interface ITokenOffsets
{
    /// <summary>
    /// Encodes exactly as <see cref="ITextTokenizer.Encode"/> does, with each token's character range in
    /// <paramref name="text"/>: a token covers the characters it was made from, as Hugging Face tokenizers' offsets
    /// (a SentencePiece <c>▁</c> covers the word it starts; each byte piece of a character covers the whole character).
    /// </summary>
    IReadOnlyList<TokenOffset> EncodeWithOffsets(string text);

    /// <summary>The vocabulary entry of <paramref name="id"/> (<c>Ġworld</c>, <c>▁the</c>, <c>&lt;0x0A&gt;</c>, <c>&lt;|im_end|&gt;</c>).</summary>
    string TokenString(int id);

    /// <summary>Whether <paramref name="id"/> is an added token marked special (dropped when decoding with special tokens skipped).</summary>
    bool IsSpecial(int id);
}
