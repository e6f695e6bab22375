using ResLora.Models.Encoders;
using TorchSharp.Modules;
using TorchSharp.Utils;

namespace ResLora.Models.Deberta;

/// <summary>
/// transformers' DebertaV2Embeddings: word embeddings, absolute positions only when <c>position_biased_input</c> (v3: not),
/// token types only when <c>type_vocab_size</c> &gt; 0, <c>embed_proj</c> when <c>embedding_size</c> ≠ hidden, LayerNorm,
/// padding rows zeroed by the attention mask, dropout.
/// </summary>
public sealed class DebertaEmbeddings : nn.Module<Tensor, Tensor>
{
    [ComponentName(Name = "word_embeddings")] private readonly Embedding _word;
    [ComponentName(Name = "position_embeddings")] private readonly Embedding? _position;
    [ComponentName(Name = "token_type_embeddings")] private readonly Embedding? _tokenType;
    [ComponentName(Name = "embed_proj")] private readonly Linear? _proj;
    [ComponentName(Name = "LayerNorm")] private readonly LayerNorm _norm;
    private readonly double _dropout;

    public DebertaEmbeddings(EncoderConfig c, DebertaSettings s, ScalarType dtype, Device device) : base("embeddings")
    {
        _word = nn.Embedding(c.VocabSize, s.EmbeddingSize, device: device, dtype: dtype);
        if (s.PositionBiasedInput) _position = nn.Embedding(c.MaxPositionEmbeddings, s.EmbeddingSize, device: device, dtype: dtype);
        if (c.TypeVocabSize > 0) _tokenType = nn.Embedding(c.TypeVocabSize, s.EmbeddingSize, device: device, dtype: dtype);
        if (s.EmbeddingSize != c.HiddenSize) _proj = nn.Linear(s.EmbeddingSize, c.HiddenSize, hasBias: false, device: device, dtype: dtype);
        _norm = nn.LayerNorm(c.HiddenSize, c.LayerNormEps, device: device, dtype: dtype);
        _dropout = c.HiddenDropout;
        RegisterComponents();
    }

    public override Tensor forward(Tensor inputIds) => Forward(inputIds, null, null);

    /// <summary>(batch, seq) ids, optional token types and 0/1 mask → (batch, seq, hidden).</summary>
    public Tensor Forward(Tensor inputIds, Tensor? tokenTypeIds, Tensor? mask)
    {
        using var scope = torch.NewDisposeScope();
        long t = inputIds.shape[1];
        var e = _word.call(inputIds);
        if (_position is not null) e = e + _position.call(torch.arange(t, dtype: ScalarType.Int64, device: inputIds.device).unsqueeze(0));
        if (_tokenType is not null) e = e + _tokenType.call(tokenTypeIds ?? torch.zeros_like(inputIds));
        if (_proj is not null) e = _proj.call(e);
        e = _norm.call(e);
        if (mask is not null) e = e * mask.unsqueeze(2).to_type(e.dtype);
        return scope.MoveToOuter(nn.functional.dropout(e, _dropout, training));
    }
}

/// <summary>
/// DeBERTa's relative positions (transformers' build_relative_position / make_log_bucket_position): r = i − j for query i
/// and key j; with <c>position_buckets</c> &gt; 0, |r| beyond half the buckets is mapped to a log-spaced bucket
/// sign(r)·(⌈log(|r|/mid)/log((max−1)/mid)·(mid−1)⌉ + mid), mid = buckets/2, computed in float32 as torch does.
/// </summary>
public static class RelativePositions
{
    /// <summary>(seq, seq) int64 bucketed relative positions.</summary>
    public static Tensor Build(long length, int buckets, int maxPosition, Device device)
    {
        using var scope = torch.NewDisposeScope();
        var ids = torch.arange(length, dtype: ScalarType.Int64, device: device);
        var rel = ids.unsqueeze(1) - ids.unsqueeze(0); // (q, k)
        if (buckets > 0 && maxPosition > 0) rel = LogBucket(rel, buckets, maxPosition);
        return scope.MoveToOuter(rel.to_type(ScalarType.Int64));
    }

    private static Tensor LogBucket(Tensor rel, int buckets, int maxPosition)
    {
        int mid = buckets / 2;
        var sign = rel.sign();
        var inside = rel.lt(mid).logical_and(rel.gt(-mid));
        var absPos = torch.where(inside, torch.tensor((long)(mid - 1), device: rel.device), rel.abs());
        using var denom = torch.tensor((float)((maxPosition - 1) / (double)mid), device: rel.device).log();
        var logPos = (absPos.to_type(ScalarType.Float32) / mid).log().div(denom).mul(mid - 1).ceil() + mid;
        return torch.where(absPos.le(mid), rel.to_type(ScalarType.Float32), logPos * sign.to_type(ScalarType.Float32));
    }
}
