namespace ResLora.Text.Templates;

/// <summary>
/// Chat formats to choose by name (<c>--chat-template chatml</c>) for a model whose tokenizer_config.json has no
/// <c>chat_template</c>: a base model being taught to chat, or a folder converted without one. Each writes the turn
/// layout of its family (ChatML as Qwen2 uses it, Llama 3, Llama 2, Mistral Instruct, Gemma, Phi-3, Zephyr) with
/// <c>bos_token</c>/<c>eos_token</c> from the model; they are written here, short and without the families' extras
/// (default system prompts, tool calls), and render the same text as the families' own templates for
/// system/user/assistant conversations (pinned by tests against the fixtures).
/// </summary>
public static class BuiltInChatTemplates
{
    private static readonly Dictionary<string, string> Sources = new(StringComparer.OrdinalIgnoreCase)
    {
        ["chatml"] =
            "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{% endfor %}"
            + "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}",
        ["llama3"] =
            "{{ bos_token }}{% for message in messages %}"
            + "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
            + "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}",
        ["llama2"] =
            "{% if messages and messages[0]['role'] == 'system' %}{% set system = '<<SYS>>\\n' + messages[0]['content'] + '\\n<</SYS>>\\n\\n' %}"
            + "{% set turns = messages[1:] %}{% else %}{% set system = '' %}{% set turns = messages %}{% endif %}"
            + "{% for message in turns %}{% if message['role'] == 'user' %}"
            + "{{ bos_token + '[INST] ' + (system if loop.first else '') + message['content'] | trim + ' [/INST]' }}"
            + "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] | trim + ' ' + eos_token }}"
            + "{% else %}{{ raise_exception('the llama2 template knows the roles system (first), user and assistant') }}{% endif %}{% endfor %}",
        ["mistral"] =
            "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
            + "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token + ' ' }}"
            + "{% else %}{{ raise_exception('the mistral template knows only the roles user and assistant') }}{% endif %}{% endfor %}",
        ["gemma"] =
            "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'system' %}"
            + "{{ raise_exception('the gemma template has no system role') }}{% endif %}"
            + "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
            + "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}"
            + "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}",
        ["phi3"] =
            "{% for message in messages %}{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}{% endfor %}"
            + "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% else %}{{ eos_token }}{% endif %}",
        ["zephyr"] =
            "{% for message in messages %}{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token + '\\n' }}{% endfor %}"
            + "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}",
    };

    /// <summary>The names, in the order help texts list them.</summary>
    public static IReadOnlyList<string> Names { get; } = new[] { "chatml", "llama3", "llama2", "mistral", "gemma", "phi3", "zephyr" };

    /// <summary>The Jinja source of the built-in template <paramref name="name"/> (any case), or null when there is none.</summary>
    /// <param name="name">A name from <see cref="Names"/>.</param>
    /// <returns>The template source, or null.</returns>
    public static string? Source(string name) => Sources.GetValueOrDefault(name);
}
