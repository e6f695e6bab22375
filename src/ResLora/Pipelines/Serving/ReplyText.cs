using ResLora.Models;

namespace ResLora.Pipelines.Serving;

/// <summary>
/// The text of one reply as its tokens arrive: rendered from all tokens so far (so multi-byte characters and a chat
/// template's stop texts come out as the non-streaming answer has them), cut at the first stop string, and handed out in
/// pieces that never need taking back: a tail that may still become a stop string or an unfinished character is held
/// until the next token decides it. The pieces concatenate to <see cref="Text"/>.
/// </summary>
internal sealed class ReplyText
{
    private readonly Func<IReadOnlyList<int>, string> _render;
    private readonly IReadOnlyList<string> _stops;
    private readonly Action<string>? _onText;
    private readonly List<int> _tokens = new();
    private string _emitted = "";

    /// <param name="render">The reply's text for the tokens so far (stop ids dropped, special tokens skipped).</param>
    /// <param name="stops">Stop strings: the reply ends before the first one found.</param>
    /// <param name="onText">Receives each new piece of text.</param>
    public ReplyText(Func<IReadOnlyList<int>, string> render, IReadOnlyList<string> stops, Action<string>? onText)
    {
        _render = render;
        _stops = stops;
        _onText = onText;
    }

    /// <summary>A stop string was found: generation should end.</summary>
    public bool Stopped { get; private set; }

    /// <summary>The tokens generated so far.</summary>
    public IReadOnlyList<int> Tokens => _tokens;

    /// <summary>The reply so far (final once generation ended and <see cref="Finish"/> ran).</summary>
    public string Text { get; private set; } = "";

    /// <summary>Takes the next token and hands out what text it settles.</summary>
    public void Add(int token)
    {
        _tokens.Add(token);
        Update(final: false);
    }

    /// <summary>Generation ended: hands out the held-back rest.</summary>
    public void Finish() => Update(final: true);

    private void Update(bool final)
    {
        string text = _render(_tokens);
        int cut = GenerationOptions.StopIndex(text, _stops);
        if (cut >= 0)
        {
            text = text[..cut];
            Stopped = true;
        }
        Text = text;
        int safe = text.Length;
        if (!final && !Stopped)
        {
            // An unfinished UTF-8 sequence decodes as U+FFFD until its last byte arrives.
            while (safe > 0 && text[safe - 1] == '\uFFFD') safe--;
            // A tail that a stop string starts with may still become that stop string.
            foreach (var s in _stops)
                for (int k = Math.Min(s.Length - 1, safe); k > 0; k--)
                    if (string.CompareOrdinal(text, safe - k, s, 0, k) == 0)
                    {
                        safe -= k;
                        break;
                    }
        }
        // Decoding a longer token list only extends the text (tokenizers do not rewrite what they already decoded); if
        // one ever did, nothing more is handed out until the text agrees with what was sent again.
        if (safe > _emitted.Length && text.StartsWith(_emitted, StringComparison.Ordinal))
        {
            string piece = text[_emitted.Length..safe];
            _emitted = text[..safe];
            _onText?.Invoke(piece);
        }
    }
}
