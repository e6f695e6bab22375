using System.Text.Json.Nodes;
using System.Text.RegularExpressions;

namespace ResLora.Text.Tokenizers;

/// <summary>The pre-tokenizers of tokenizer.json (Metaspace, ByteLevel, Split, BERT, Whitespace, ...): how text is cut into pieces before the model encodes each.</summary>
internal sealed partial class HfTokenizer
{
    // GPT-2's pre-tokenization pattern (tokenizers' ByteLevel with use_regex).
    private const string Gpt2Pattern = @"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

    private void AddPreTokenizer(JsonObject p)
    {
        string t = (string?)p["type"] ?? "";
        switch (t)
        {
            case "Sequence": foreach (var x in (JsonArray)p["pretokenizers"]!) AddPreTokenizer((JsonObject)x!); break;
            case "ByteLevel":
                {
                    bool prefix = (bool?)p["add_prefix_space"] ?? false, useRegex = (bool?)p["use_regex"] ?? true;
                    var re = new Regex(Gpt2Pattern, RegexOptions.CultureInvariant);
                    _preTokenizers.Add((pieces, first) =>
                    {
                        var outp = new List<string>();
                        for (int i = 0; i < pieces.Count; i++)
                        {
                            string s = pieces[i];
                            if (prefix && i == 0 && !s.StartsWith(' ')) s = " " + s;
                            if (useRegex) foreach (Match m in re.Matches(s)) outp.Add(ByteLevelAlphabet.Encode(m.Value));
                            else outp.Add(ByteLevelAlphabet.Encode(s));
                        }
                        return outp;
                    });
                    _alignedPreTokenizers.Add((pieces, first) =>
                    {
                        var outp = new List<AlignedText>();
                        for (int i = 0; i < pieces.Count; i++)
                        {
                            var s = pieces[i];
                            if (prefix && i == 0 && !s.Text.StartsWith(' ')) s = s.Prepend(" ");
                            if (useRegex) foreach (Match m in re.Matches(s.Text)) outp.Add(s.Slice(m.Index, m.Length).ToByteLevel());
                            else outp.Add(s.ToByteLevel());
                        }
                        return outp;
                    });
                    break;
                }
            case "Split":
                {
                    var (re, _) = ReplacePattern(new JsonObject { ["pattern"] = p["pattern"]!.DeepClone(), ["content"] = "" }, "pre_tokenizer");
                    string behavior = (string?)p["behavior"] ?? "Isolated";
                    // invert: the pattern matches what lies between the pieces (tokenizers flips each part's match flag), as
                    // the o200k tokenizer.json of GPT-4o and Phi-4-mini writes it.
                    bool invert = (bool?)p["invert"] ?? false;
                    _preTokenizers.Add((pieces, _) => pieces.SelectMany(s => Split(s, re, behavior, invert)).ToList());
                    _alignedPreTokenizers.Add((pieces, _) => pieces.SelectMany(a => SplitRanges(a.Text, re, behavior, invert).Select(r => a.Slice(r.Start, r.Length))).ToList());
                    break;
                }
            case "Digits":
                {
                    bool individual = (bool?)p["individual_digits"] ?? false;
                    var re = new Regex(individual ? @"\p{Nd}" : @"\p{Nd}+", RegexOptions.CultureInvariant);
                    _preTokenizers.Add((pieces, _) => pieces.SelectMany(s => Split(s, re, "Isolated")).ToList());
                    _alignedPreTokenizers.Add((pieces, _) => pieces.SelectMany(a => SplitRanges(a.Text, re, "Isolated").Select(r => a.Slice(r.Start, r.Length))).ToList());
                    break;
                }
            case "Metaspace":
                {
                    string rep = (string?)p["replacement"] ?? "\u2581";
                    string scheme = (string?)p["prepend_scheme"] ?? (((bool?)p["add_prefix_space"] ?? true) ? "always" : "never");
                    bool split = (bool?)p["split"] ?? true;
                    _preTokenizers.Add((pieces, first) =>
                    {
                        var outp = new List<string>();
                        for (int i = 0; i < pieces.Count; i++)
                        {
                            string s = pieces[i].Replace(" ", rep, StringComparison.Ordinal);
                            bool prepend = scheme == "always" || (scheme == "first" && first && i == 0);
                            if (prepend && s.Length > 0 && !s.StartsWith(rep, StringComparison.Ordinal)) s = rep + s;
                            if (!split) { outp.Add(s); continue; }
                            int start = 0;
                            for (int k = 1; k <= s.Length; k++)
                                if (k == s.Length || string.CompareOrdinal(s, k, rep, 0, rep.Length) == 0)
                                {
                                    if (k > start) outp.Add(s[start..k]);
                                    start = k;
                                }
                        }
                        return outp;
                    });
                    var space = new Regex(" ", RegexOptions.CultureInvariant);
                    _alignedPreTokenizers.Add((pieces, first) =>
                    {
                        var outp = new List<AlignedText>();
                        for (int i = 0; i < pieces.Count; i++)
                        {
                            var s = pieces[i].Replace(space, rep, pieces[i].Text.Replace(" ", rep, StringComparison.Ordinal));
                            bool prepend = scheme == "always" || (scheme == "first" && first && i == 0);
                            if (prepend && s.Length > 0 && !s.Text.StartsWith(rep, StringComparison.Ordinal)) s = s.Prepend(rep);
                            if (!split) { outp.Add(s); continue; }
                            int start = 0;
                            for (int k = 1; k <= s.Length; k++)
                                if (k == s.Length || string.CompareOrdinal(s.Text, k, rep, 0, rep.Length) == 0)
                                {
                                    if (k > start) outp.Add(s.Slice(start, k - start));
                                    start = k;
                                }
                        }
                        return outp;
                    });
                    break;
                }
            case "BertPreTokenizer": AddSplitter(BertText.BertPreTokenize); break;
            case "WhitespaceSplit": AddSplitter(BertText.WhitespaceSplit); break;
            case "Whitespace": AddSplitter(BertText.WhitespaceWords); break;
            default: throw Bad("pre_tokenizer.type", $"'{t}' is not supported (supported: Sequence, ByteLevel, Split, Digits, Metaspace, BertPreTokenizer, WhitespaceSplit, Whitespace)");
        }
    }

    private static List<string> Each(List<string> pieces, Action<string, List<string>> split)
    {
        var outp = new List<string>();
        foreach (var s in pieces) split(s, outp);
        return outp;
    }

    /// <summary>
    /// A pre-tokenizer that splits on whitespace (dropped) and punctuation: its pieces are substrings of the input in
    /// order, separated by whitespace only, so each is found by searching forward from the end of the previous one.
    /// </summary>
    private void AddSplitter(Action<string, List<string>> split)
    {
        _preTokenizers.Add((pieces, _) => Each(pieces, split));
        _alignedPreTokenizers.Add((pieces, _) =>
        {
            var outp = new List<AlignedText>();
            var words = new List<string>();
            foreach (var a in pieces)
            {
                words.Clear();
                split(a.Text, words);
                int cursor = 0;
                foreach (var w in words)
                {
                    int at = a.Text.IndexOf(w, cursor, StringComparison.Ordinal);
                    if (at < 0) { outp.Add(a.Coarse(w)); continue; }
                    outp.Add(a.Slice(at, w.Length));
                    cursor = at + w.Length;
                }
            }
            return outp;
        });
    }

    private static IEnumerable<string> Split(string s, Regex re, string behavior, bool invert = false) =>
        SplitRanges(s, re, behavior, invert).Select(r => s.Substring(r.Start, r.Length));

    /// <summary>tokenizers' Split pre-tokenizer as (start, length) ranges of <paramref name="s"/>; every behaviour keeps pieces contiguous.</summary>
    private static List<(int Start, int Length)> SplitRanges(string s, Regex re, string behavior, bool invert = false)
    {
        int last = 0;
        var parts = new List<(int Start, int End, bool Match)>();
        foreach (Match m in re.Matches(s))
        {
            if (m.Length == 0) continue;
            if (m.Index > last) parts.Add((last, m.Index, false));
            parts.Add((m.Index, m.Index + m.Length, true));
            last = m.Index + m.Length;
        }
        if (last < s.Length) parts.Add((last, s.Length, false));
        if (invert) parts = parts.Select(p => (p.Start, p.End, !p.Match)).ToList();
        var o = new List<(int Start, int End, bool Match)>();
        switch (behavior)
        {
            case "Isolated": o = parts; break;
            case "Removed": o = parts.Where(p => !p.Match).ToList(); break;
            case "MergedWithPrevious":
                foreach (var p in parts) { if (p.Match && o.Count > 0) o[^1] = (o[^1].Start, p.End, false); else o.Add(p); }
                break;
            case "MergedWithNext":
                {
                    int carry = -1; // start of the matches waiting for the next piece
                    foreach (var p in parts)
                    {
                        if (p.Match) { if (carry < 0) carry = p.Start; }
                        else { o.Add((carry >= 0 ? carry : p.Start, p.End, false)); carry = -1; }
                    }
                    if (carry >= 0) o.Add((carry, parts[^1].End, true));
                    break;
                }
            case "Contiguous":
                foreach (var p in parts) { if (o.Count > 0 && o[^1].Match == p.Match) o[^1] = (o[^1].Start, p.End, p.Match); else o.Add(p); }
                break;
            default: throw new UserInputException($"tokenizer.json: pre_tokenizer Split behavior '{behavior}' is not supported.");
        }
        return o.Select(p => (p.Start, p.End - p.Start)).ToList();
    }
}
