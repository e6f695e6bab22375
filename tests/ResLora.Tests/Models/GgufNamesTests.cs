using ResLora.Models;
using ResLora.Tests.Infrastructure;

namespace ResLora.Tests.Models;

public sealed class GgufNamesTests
{
    [Fact]
    public void EveryWeightOfEveryFamily_MapsToAGgufNameAndBack()
    {
        foreach (var (type, c) in new[] { ("llama", TinyModels.Config()), ("qwen2", TinyModels.Config(qkvBias: true)), ("qwen3", ModelFamilyTests.Qwen3(tied: false)) })
        {
            var family = ModelFamilies.ForCausalLM(type);
            var names = family.Gguf(c);
            var gguf = family.ExpectedWeights(c).Keys.Select(k => (Hf: k, Gguf: names.ToGguf(k))).ToList();
            Assert.All(gguf, p => Assert.NotNull(p.Gguf));
            Assert.Equal(gguf.Count, gguf.Select(p => p.Gguf).Distinct().Count());
            Assert.All(gguf, p => Assert.Equal(p.Hf, names.ToHf(p.Gguf!)));
        }
        var llama = ModelFamilies.ForCausalLM("llama").Gguf(TinyModels.Config());
        Assert.Equal("blk.1.attn_q.weight", llama.ToGguf("model.layers.1.self_attn.q_proj.weight"));
        Assert.Equal("blk.0.ffn_down.weight", llama.ToGguf("model.layers.0.mlp.down_proj.weight"));
        Assert.Equal("token_embd.weight", llama.ToGguf("model.embed_tokens.weight"));
        Assert.Equal("output.weight", llama.ToGguf("lm_head.weight"));
        Assert.Equal("blk.2.attn_k_norm.weight", ModelFamilies.ForCausalLM("qwen3").Gguf(TinyModels.Config()).ToGguf("model.layers.2.self_attn.k_norm.weight"));
        Assert.Null(llama.ToHf("blk.0.ffn_gate_inp.weight"));
        Assert.Equal("llama", ModelFamilies.ForCausalLM("mistral").Gguf(TinyModels.Config()).Architecture);
        Assert.Equal("qwen2", ModelFamilies.ForCausalLM("qwen2").Gguf(TinyModels.Config(qkvBias: true)).Architecture);
    }

    [Fact]
    public void Permute_InterleavesEachHeadsHalves_AndInverts()
    {
        // 2 heads × head_dim 4, one column: rows [h0: a0 a1 b0 b1 | h1: c0 c1 d0 d1] (rotate-half pairs (a_i, b_i)).
        float[] w = { 0, 1, 2, 3, 10, 11, 12, 13 };
        var p = GgufNames.Permute(w, new long[] { 8, 1 }, heads: 2);
        Assert.Equal(new float[] { 0, 2, 1, 3, 10, 12, 11, 13 }, p); // pairs (a0, b0), (a1, b1) next to each other
        Assert.Equal(w, GgufNames.Permute(p, new long[] { 8, 1 }, heads: 2, inverse: true));
        var c = TinyModels.Config();
        var names = ModelFamilies.ForCausalLM("llama").Gguf(c);
        Assert.Equal(c.NumAttentionHeads, names.PermuteHeads("model.layers.0.self_attn.q_proj.weight", c));
        Assert.Equal(c.NumKeyValueHeads, names.PermuteHeads("model.layers.0.self_attn.k_proj.weight", c));
        Assert.Null(names.PermuteHeads("model.layers.0.self_attn.v_proj.weight", c));
        Assert.Null(ModelFamilies.ForCausalLM("qwen3").Gguf(c).PermuteHeads("model.layers.0.self_attn.q_proj.weight", c));
    }
}
