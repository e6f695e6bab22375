namespace ResLora.IO;

/// <summary>
/// What the rest of the library needs of a tokenizer. Implementations: Hugging Face tokenizer.json (both the
/// SentencePiece-style BPE with byte fallback and byte-level BPE), SentencePiece tokenizer.model, and the
/// demo's built-in tokenizer.
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
