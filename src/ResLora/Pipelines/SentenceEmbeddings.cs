using System.Text.Json;
using ResLora.IO;
using ResLora.Models.Encoders;
using ResLora.Text;

namespace ResLora.Pipelines;

/// <summary>How token states become one sentence vector.</summary>
public enum EmbeddingPooling
{
    /// <summary>The mean over real tokens (sentence-transformers' default for all-MiniLM-L6-v2), padding excluded.</summary>
    Mean,

    /// <summary>The first token's state ([CLS] / &lt;s&gt;).</summary>
    Cls,
}

/// <summary>Sentence embeddings from an encoder (BERT family, DeBERTa-v2) (<c>reslora embed</c>).</summary>
public static class SentenceEmbeddings
{
    /// <summary>
    /// One vector per text: the encoder's last hidden states pooled over real tokens (or the first token), L2-normalised
    /// when <paramref name="normalize"/>; texts longer than <paramref name="seqLen"/> tokens are cut.
    /// </summary>
    public static List<float[]> Embed(SequenceEncoder model, ISentencePairTokenizer tok, IReadOnlyList<string> texts, EmbeddingPooling pooling, bool normalize, int seqLen = 256, int batchSize = 16)
    {
        if (batchSize < 1) throw new UserInputException($"--batch-size must be ≥ 1, got {batchSize}.");
        seqLen = Math.Min(seqLen, model.Config.MaxInputLength);
        bool wasTraining = model.training;
        model.eval();
        using var noGrad = torch.no_grad();
        var result = new List<float[]>(texts.Count);
        try
        {
            for (int i = 0; i < texts.Count; i += batchSize)
            {
                using var scope = torch.NewDisposeScope();
                var enc = texts.Skip(i).Take(batchSize).Select(t => tok.EncodeForModel(t, null, seqLen)).ToList();
                int t = enc.Max(e => e.Ids.Length), b = enc.Count;
                var ids = new long[b * t];
                var mask = new long[b * t];
                var types = new long[b * t];
                Array.Fill(ids, tok.PadId);
                for (int r = 0; r < b; r++)
                    for (int j = 0; j < enc[r].Ids.Length; j++)
                    {
                        ids[r * t + j] = enc[r].Ids[j];
                        mask[r * t + j] = 1;
                        types[r * t + j] = enc[r].TypeIds[j];
                    }
                var idsT = torch.tensor(ids, new long[] { b, t }, device: model.Device);
                var maskT = torch.tensor(mask, new long[] { b, t }, device: model.Device);
                var h = model.HiddenStates(idsT, maskT, torch.tensor(types, new long[] { b, t }, device: model.Device)).to_type(ScalarType.Float32);
                Tensor v;
                if (pooling == EmbeddingPooling.Cls) v = h[.., 0, ..];
                else
                {
                    var m = maskT.to_type(ScalarType.Float32).unsqueeze(-1);
                    v = (h * m).sum(1) / m.sum(1).clamp_min(1e-9);
                }
                if (normalize) v = nn.functional.normalize(v, p: 2, dim: 1);
                var flat = v.cpu().data<float>().ToArray();
                int d = (int)v.shape[1];
                for (int r = 0; r < b; r++) result.Add(flat.AsSpan(r * d, d).ToArray());
            }
        }
        finally
        {
            if (wasTraining) model.train();
        }
        return result;
    }

    /// <summary>
    /// Texts from a file: one per line for .txt (empty lines skipped); for .jsonl, field <paramref name="textField"/> of
    /// each object. Errors name the file and line.
    /// </summary>
    public static List<string> ReadTexts(string path, string textField = "text")
    {
        InputPaths.DataFile(path, "text file", $"a .txt file (one text per line) or a .jsonl file with a '{textField}' field");
        var lines = File.ReadAllLines(path);
        var texts = new List<string>();
        bool jsonl = path.EndsWith(".jsonl", StringComparison.OrdinalIgnoreCase);
        for (int i = 0; i < lines.Length; i++)
        {
            string line = lines[i];
            if (line.Trim().Length == 0) continue;
            if (!jsonl)
            {
                texts.Add(line);
                continue;
            }
            try
            {
                using var doc = JsonDocument.Parse(line);
                if (doc.RootElement.ValueKind != JsonValueKind.Object || !doc.RootElement.TryGetProperty(textField, out var v) || v.ValueKind != JsonValueKind.String)
                    throw new UserInputException($"{path}: line {i + 1} has no string field '{textField}'; use --text-field NAME.");
                texts.Add(v.GetString()!);
            }
            catch (JsonException e)
            {
                throw new UserInputException($"{path}: line {i + 1} is not valid JSON ({e.Message}).", e);
            }
        }
        if (texts.Count == 0) throw new UserInputException($"{path}: no text to embed.");
        return texts;
    }
}
