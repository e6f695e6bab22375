using System.Text;
using ResLora.IO;

namespace ResLora.Pipelines;

/// <summary>
/// An Ollama <c>Modelfile</c> next to an exported GGUF: FROM the model (or the base model's name for an adapter), ADAPTER
/// for a gguf-lora, and for a chat format recognised from tokenizer_config.json's chat_template (ChatML as Qwen uses,
/// Llama-3, Llama-2/Mistral [INST]) the TEMPLATE in Ollama's Go-template syntax and PARAMETER stop for its end-of-turn tokens.
/// </summary>
public static class OllamaModelfile
{
    /// <summary>The Modelfile that would go beside <paramref name="gguf"/> must not exist yet: an error naming it otherwise.</summary>
    public static void CheckFree(string gguf)
    {
        string path = Path.Combine(Path.GetDirectoryName(Path.GetFullPath(gguf))!, "Modelfile");
        if (File.Exists(path)) throw new UserInputException($"--ollama: {path} exists; move it away or export into another folder (--out), exporting never overwrites.");
    }

    /// <summary>Writes the Modelfile beside the GGUF (atomically) and returns a line saying what it holds.</summary>
    public static string Write(string modelDir, string? baseGguf, string? adapterGguf)
    {
        string gguf = adapterGguf ?? baseGguf ?? throw new ArgumentException("a GGUF path is needed");
        string dir = Path.GetDirectoryName(Path.GetFullPath(gguf))!;
        string path = Path.Combine(dir, "Modelfile");
        CheckFree(gguf);
        var sb = new StringBuilder();
        if (baseGguf is not null) sb.Append("FROM ./").Append(Path.GetFileName(baseGguf)).Append('\n');
        else sb.Append("# FROM: the base model exported with reslora export --as gguf --model ").Append(Path.GetFileName(Path.TrimEndingDirectorySeparator(Path.GetFullPath(modelDir)))).Append(" (a GGUF path or an Ollama model name)\nFROM ./base.gguf\n");
        if (adapterGguf is not null) sb.Append("ADAPTER ./").Append(Path.GetFileName(adapterGguf)).Append('\n');
        var template = GgufVocabExport.ChatTemplate(GgufVocabExport.ReadObject(Path.Combine(modelDir, "tokenizer_config.json")));
        var (name, tpl, stops) = Recognise(template);
        if (tpl is not null)
        {
            sb.Append("TEMPLATE \"\"\"").Append(tpl).Append("\"\"\"\n");
            foreach (var s in stops) sb.Append("PARAMETER stop \"").Append(s).Append("\"\n");
        }
        AtomicFile.WriteAllText(path, sb.ToString());
        return tpl is null
            ? $"wrote {path}: no TEMPLATE ({(template is null ? "the model has no chat_template" : "its chat_template is none of ChatML, Llama-3, Llama-2/Mistral")}); Ollama then uses the GGUF's own template or raw prompts."
            : $"wrote {path}: {name} chat TEMPLATE, stop on {string.Join(", ", stops)}.";
    }

    /// <summary>The chat format of a Jinja chat_template: (name, Ollama template, stop strings), or nulls.</summary>
    public static (string? Name, string? Template, IReadOnlyList<string> Stops) Recognise(string? jinja)
    {
        if (jinja is null) return (null, null, Array.Empty<string>());
        if (jinja.Contains("<|im_start|>", StringComparison.Ordinal))
            return ("ChatML", ChatMl, new[] { "<|im_end|>", "<|im_start|>" });
        if (jinja.Contains("<|start_header_id|>", StringComparison.Ordinal))
            return ("Llama-3", Llama3, new[] { "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>" });
        if (jinja.Contains("[INST]", StringComparison.Ordinal))
            return ("Llama-2/Mistral", Inst, new[] { "[INST]", "[/INST]", "</s>" });
        return (null, null, Array.Empty<string>());
    }

    private const string ChatMl =
        "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n";

    private const string Llama3 =
        "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n";

    private const string Inst =
        "{{- if .System }}[INST] <<SYS>>\n{{ .System }}\n<</SYS>>\n\n{{ end }}{{- range .Messages }}{{ if eq .Role \"user\" }}[INST] {{ .Content }} [/INST]{{ else if eq .Role \"assistant\" }} {{ .Content }}</s>{{ end }}{{ end }}";
}
