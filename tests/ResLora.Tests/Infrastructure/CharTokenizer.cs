using ResLora.Text;

namespace ResLora.Tests.Infrastructure;

/// <summary>A test tokenizer: id = 3 + (char - 32) for printable ASCII, 0 pad, 1 BOS, 2 EOS. Vocab 99.</summary>
internal sealed class CharTokenizer : ITextTokenizer
{
    public int VocabSize => 3 + 95 + 1;
    public int? BosTokenId => 1;
    public IReadOnlyList<int> EosTokenIds { get; } = new[] { 2 };
    public int? PadTokenId => 0;
    public bool AddBosToken { get; init; } = true;

    public IReadOnlyList<int> Encode(string text) => text.Select(c => c == '\n' ? 98 : 3 + Math.Clamp(c - 32, 0, 94)).ToList();

    public string Decode(IEnumerable<int> ids, bool skipSpecialTokens = true) =>
        new(ids.Where(i => i >= 3).Select(i => i == 98 ? '\n' : (char)(i - 3 + 32)).ToArray());
}
