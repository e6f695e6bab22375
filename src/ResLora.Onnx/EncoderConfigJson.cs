using System.Text.Json.Serialization;

namespace ResLora.Onnx;

/// <summary>
/// The <c>config.json</c> of a BERT-family encoder folder, as Hugging Face's BertConfig writes it (field names and
/// meanings from transformers' configuration_bert.py), inferred from an ONNX graph by <see cref="BertGraphReader"/>.
/// </summary>
public sealed record EncoderConfigJson
{
    /// <summary>The model classes the weights fit; <c>BertModel</c> (no task head).</summary>
    [JsonPropertyName("architectures")] public IReadOnlyList<string> Architectures { get; init; } = new[] { "BertModel" };

    /// <summary>The family: <c>bert</c>.</summary>
    [JsonPropertyName("model_type")] public string ModelType { get; init; } = "bert";

    /// <summary>Width of the hidden states (the word-embedding table's columns).</summary>
    [JsonPropertyName("hidden_size")] public int HiddenSize { get; init; }

    /// <summary>Encoder layers found in the graph.</summary>
    [JsonPropertyName("num_hidden_layers")] public int NumHiddenLayers { get; init; }

    /// <summary>Attention heads (from the graph's head reshape, an Attention op's num_heads, or --heads).</summary>
    [JsonPropertyName("num_attention_heads")] public int NumAttentionHeads { get; init; }

    /// <summary>Width of the feed-forward layer (intermediate.dense's outputs).</summary>
    [JsonPropertyName("intermediate_size")] public int IntermediateSize { get; init; }

    /// <summary>Rows of the word-embedding table.</summary>
    [JsonPropertyName("vocab_size")] public int VocabSize { get; init; }

    /// <summary>Rows of the position-embedding table.</summary>
    [JsonPropertyName("max_position_embeddings")] public int MaxPositionEmbeddings { get; init; }

    /// <summary>Rows of the token-type (segment) embedding table.</summary>
    [JsonPropertyName("type_vocab_size")] public int TypeVocabSize { get; init; }

    /// <summary>The layer norms' epsilon (from the LayerNormalization attribute or the decomposed form's Add constant).</summary>
    [JsonPropertyName("layer_norm_eps")] public double LayerNormEps { get; init; } = 1e-12;

    /// <summary>The feed-forward activation: <c>gelu</c> (erf form), <c>gelu_new</c> (tanh form) or <c>relu</c>.</summary>
    [JsonPropertyName("hidden_act")] public string HiddenAct { get; init; } = "gelu";

    /// <summary>The padding token's id (the vocabulary's <c>[PAD]</c>).</summary>
    [JsonPropertyName("pad_token_id")] public int PadTokenId { get; init; }

    /// <summary>Learned absolute positions, the only kind an ONNX BERT export has.</summary>
    [JsonPropertyName("position_embedding_type")] public string PositionEmbeddingType { get; init; } = "absolute";

    /// <summary>The stored weights' dtype: <c>float32</c>, <c>float16</c> or <c>bfloat16</c>.</summary>
    [JsonPropertyName("torch_dtype")] public string TorchDtype { get; init; } = "float32";
}
