using System.Text.Json;
using System.Text.Json.Serialization;

namespace ResLora.IO.Json;

/// <summary>
/// Reads <c>5</c> or <c>[5, 7]</c> as a list of ints (Hugging Face's <c>eos_token_id</c>, PEFT's
/// <c>layers_to_transform</c>); writes a one-element list as a plain int, as both libraries accept.
/// </summary>
public sealed class IntOrIntListConverter : JsonConverter<IReadOnlyList<int>?>
{
    public override bool HandleNull => true;

    public override IReadOnlyList<int>? Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options)
    {
        switch (reader.TokenType)
        {
            case JsonTokenType.Null: return null;
            case JsonTokenType.Number: return new[] { reader.GetInt32() };
            case JsonTokenType.StartArray:
                var list = new List<int>();
                while (reader.Read() && reader.TokenType != JsonTokenType.EndArray)
                {
                    if (reader.TokenType != JsonTokenType.Number) throw new JsonException($"expected a list of integers, found {reader.TokenType}");
                    list.Add(reader.GetInt32());
                }
                return list;
            default: throw new JsonException($"expected an integer or a list of integers, found {reader.TokenType}");
        }
    }

    public override void Write(Utf8JsonWriter writer, IReadOnlyList<int>? value, JsonSerializerOptions options)
    {
        if (value is null) { writer.WriteNullValue(); return; }
        if (value.Count == 1) { writer.WriteNumberValue(value[0]); return; }
        writer.WriteStartArray();
        foreach (int v in value) writer.WriteNumberValue(v);
        writer.WriteEndArray();
    }
}
