namespace ResLora.Models;

/// <summary>
/// The attention step the decoder families share once q, k and v are projected and rotated: key/value heads repeated to
/// the query heads (transformers' repeat_kv), scaled dot-product attention under the additive mask (or a plain causal
/// one when it is null), and the heads merged back.
/// </summary>
public static class GroupedQueryAttention
{
    /// <summary>q (batch, heads, seq, headDim), k/v (batch, kvHeads, keys, headDim) → (batch, seq, heads·headDim).</summary>
    public static Tensor Attend(Tensor q, Tensor k, Tensor v, Tensor? mask)
    {
        using var scope = torch.NewDisposeScope();
        long b = q.shape[0], heads = q.shape[1], t = q.shape[2], headDim = q.shape[3], kvHeads = k.shape[1];
        long rep = heads / kvHeads;
        if (rep > 1)
        {
            long s = k.shape[2];
            k = k.unsqueeze(2).expand(b, kvHeads, rep, s, headDim).reshape(b, heads, s, headDim);
            v = v.unsqueeze(2).expand(b, kvHeads, rep, s, headDim).reshape(b, heads, s, headDim);
        }
        Tensor attn = mask is null
            ? nn.functional.scaled_dot_product_attention(q, k, v, null, 0.0, is_casual: true)
            : nn.functional.scaled_dot_product_attention(q, k, v, mask, 0.0, is_casual: false);
        return scope.MoveToOuter(attn.transpose(1, 2).reshape(b, t, heads * headDim));
    }
}
