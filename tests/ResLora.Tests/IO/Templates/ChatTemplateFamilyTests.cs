using ResLora.Text.Templates;

namespace ResLora.Tests.IO.Templates;

/// <summary>
/// The public chat templates of seven model families (Fixtures/*.jinja), rendered for the same conversations and
/// compared with prompts written out by hand from reading each template.
/// </summary>
public sealed class ChatTemplateFamilyTests
{
    private static readonly Dictionary<string, ChatMessage[]> Conversations = new()
    {
        ["single"] = new[] { new ChatMessage("user", "Hello") },
        ["system"] = new[] { new ChatMessage("system", "You are a bot."), new ChatMessage("user", "Hello") },
        ["multi"] = new[]
        {
            new ChatMessage("user", "Hi"), new ChatMessage("assistant", "Hello! How can I help?"), new ChatMessage("user", "Tell me a joke."),
        },
        ["system-multi"] = new[]
        {
            new ChatMessage("system", "You are a bot."), new ChatMessage("user", "Hi"),
            new ChatMessage("assistant", "Hello! How can I help?"), new ChatMessage("user", "Tell me a joke."),
        },
        ["padded"] = new[] { new ChatMessage("user", "  Hello \n") },
    };

    /// <summary>Each family's special tokens: (template file, BOS, EOS).</summary>
    private static readonly Dictionary<string, (string File, string? Bos, string? Eos)> Families = new()
    {
        ["llama2"] = ("llama2.jinja", "<s>", "</s>"),
        ["llama3"] = ("llama3.jinja", "<|begin_of_text|>", "<|eot_id|>"),
        ["mistral"] = ("mistral.jinja", "<s>", "</s>"),
        ["qwen2"] = ("qwen2.jinja", null, "<|im_end|>"),
        ["gemma"] = ("gemma.jinja", "<bos>", "<eos>"),
        ["phi3"] = ("phi3.jinja", "<s>", "<|endoftext|>"),
        ["zephyr"] = ("zephyr.jinja", "<s>", "</s>"),
    };

    private static string Render(string family, string conversation, bool addGenerationPrompt)
    {
        var (file, bos, eos) = Families[family];
        return ChatTemplate.Parse(ChatTemplateTestKit.Fixture(file), family).RenderConversation(Conversations[conversation], addGenerationPrompt, bos, eos);
    }

    public static TheoryData<string, string, bool, string> Expected() => new()
    {
        // Llama 2: [INST] wraps user turns, the system prompt goes inside the first one, no generation prompt.
        { "llama2", "single", false, "<s>[INST] Hello [/INST]" },
        { "llama2", "single", true, "<s>[INST] Hello [/INST]" },
        { "llama2", "system", false, "<s>[INST] <<SYS>>\nYou are a bot.\n<</SYS>>\n\nHello [/INST]" },
        { "llama2", "multi", false, "<s>[INST] Hi [/INST] Hello! How can I help? </s><s>[INST] Tell me a joke. [/INST]" },
        { "llama2", "system-multi", true, "<s>[INST] <<SYS>>\nYou are a bot.\n<</SYS>>\n\nHi [/INST] Hello! How can I help? </s><s>[INST] Tell me a joke. [/INST]" },
        { "llama2", "padded", false, "<s>[INST] Hello [/INST]" },

        // Llama 3: header per turn, content trimmed, BOS before the first turn only.
        { "llama3", "single", false, "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|>" },
        { "llama3", "single", true, "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n" },
        {
            "llama3", "system", true,
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are a bot.<|eot_id|>"
            + "<|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
        },
        {
            "llama3", "multi", false,
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
            + "<|start_header_id|>assistant<|end_header_id|>\n\nHello! How can I help?<|eot_id|>"
            + "<|start_header_id|>user<|end_header_id|>\n\nTell me a joke.<|eot_id|>"
        },
        {
            "llama3", "system-multi", true,
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are a bot.<|eot_id|>"
            + "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
            + "<|start_header_id|>assistant<|end_header_id|>\n\nHello! How can I help?<|eot_id|>"
            + "<|start_header_id|>user<|end_header_id|>\n\nTell me a joke.<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
        },
        { "llama3", "padded", false, "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|>" },

        // Mistral Instruct v0.1: no system role, EOS and a space after each assistant turn, no generation prompt.
        { "mistral", "single", false, "<s>[INST] Hello [/INST]" },
        { "mistral", "single", true, "<s>[INST] Hello [/INST]" },
        { "mistral", "multi", false, "<s>[INST] Hi [/INST]Hello! How can I help?</s> [INST] Tell me a joke. [/INST]" },
        { "mistral", "multi", true, "<s>[INST] Hi [/INST]Hello! How can I help?</s> [INST] Tell me a joke. [/INST]" },

        // Qwen2 (ChatML): a default system prompt when the conversation has none; content kept verbatim.
        { "qwen2", "single", false, "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n" },
        { "qwen2", "single", true, "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n" },
        { "qwen2", "system", true, "<|im_start|>system\nYou are a bot.<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n" },
        {
            "qwen2", "multi", false,
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
            + "<|im_start|>assistant\nHello! How can I help?<|im_end|>\n<|im_start|>user\nTell me a joke.<|im_end|>\n"
        },
        {
            "qwen2", "system-multi", true,
            "<|im_start|>system\nYou are a bot.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
            + "<|im_start|>assistant\nHello! How can I help?<|im_end|>\n<|im_start|>user\nTell me a joke.<|im_end|>\n<|im_start|>assistant\n"
        },
        { "qwen2", "padded", false, "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n  Hello \n<|im_end|>\n" },

        // Gemma: the assistant is "model", content trimmed; system messages are refused (see the error tests).
        { "gemma", "single", false, "<bos><start_of_turn>user\nHello<end_of_turn>\n" },
        { "gemma", "single", true, "<bos><start_of_turn>user\nHello<end_of_turn>\n<start_of_turn>model\n" },
        {
            "gemma", "multi", true,
            "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\nHello! How can I help?<end_of_turn>\n"
            + "<start_of_turn>user\nTell me a joke.<end_of_turn>\n<start_of_turn>model\n"
        },
        { "gemma", "padded", false, "<bos><start_of_turn>user\nHello<end_of_turn>\n" },

        // Phi-3: <|end|> after each turn; EOS when no generation prompt is asked for.
        { "phi3", "single", false, "<|user|>\nHello<|end|>\n<|endoftext|>" },
        { "phi3", "single", true, "<|user|>\nHello<|end|>\n<|assistant|>\n" },
        { "phi3", "system", true, "<|system|>\nYou are a bot.<|end|>\n<|user|>\nHello<|end|>\n<|assistant|>\n" },
        { "phi3", "multi", false, "<|user|>\nHi<|end|>\n<|assistant|>\nHello! How can I help?<|end|>\n<|user|>\nTell me a joke.<|end|>\n<|endoftext|>" },
        {
            "phi3", "system-multi", true,
            "<|system|>\nYou are a bot.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\nHello! How can I help?<|end|>\n<|user|>\nTell me a joke.<|end|>\n<|assistant|>\n"
        },

        // Zephyr: a multi-line template; trim_blocks eats the newline after each {% %} line, the {{ }} lines keep theirs.
        { "zephyr", "single", false, "<|user|>\nHello</s>\n" },
        { "zephyr", "single", true, "<|user|>\nHello</s>\n<|assistant|>\n" },
        { "zephyr", "system", true, "<|system|>\nYou are a bot.</s>\n<|user|>\nHello</s>\n<|assistant|>\n" },
        { "zephyr", "multi", false, "<|user|>\nHi</s>\n<|assistant|>\nHello! How can I help?</s>\n<|user|>\nTell me a joke.</s>\n" },
        {
            "zephyr", "system-multi", true,
            "<|system|>\nYou are a bot.</s>\n<|user|>\nHi</s>\n<|assistant|>\nHello! How can I help?</s>\n<|user|>\nTell me a joke.</s>\n<|assistant|>\n"
        },
    };

    [Theory, MemberData(nameof(Expected))]
    public void RenderConversation_FamilyTemplate_MatchesHandWrittenPrompt(string family, string conversation, bool addGenerationPrompt, string expected)
    {
        Assert.Equal(expected, Render(family, conversation, addGenerationPrompt));
    }

    [Theory]
    [InlineData("mistral", "system", "Conversation roles must alternate user/assistant/user/assistant/...")]
    [InlineData("gemma", "system", "System role not supported")]
    public void RenderConversation_SystemMessageOnFamilyWithoutSystemRole_RaisesTheTemplatesMessage(string family, string conversation, string message)
    {
        var e = Assert.Throws<ChatTemplateRaisedException>(() => Render(family, conversation, true));
        Assert.Equal(message, e.TemplateMessage);
        Assert.Equal(1, e.Line);
        Assert.Contains(message, e.Message);
        Assert.StartsWith($"chat template '{family}' line 1: ", e.Message);
    }

    [Theory]
    [InlineData("llama2")]
    [InlineData("mistral")]
    [InlineData("gemma")]
    public void RenderConversation_RolesThatDoNotAlternate_RaisesAlternationMessage(string family)
    {
        var (file, bos, eos) = Families[family];
        var template = ChatTemplate.Parse(ChatTemplateTestKit.Fixture(file));
        var messages = new[] { new ChatMessage("user", "a"), new ChatMessage("user", "b") };
        var e = Assert.Throws<ChatTemplateRaisedException>(() => template.RenderConversation(messages, false, bos, eos));
        Assert.Equal("Conversation roles must alternate user/assistant/user/assistant/...", e.TemplateMessage);
    }

    [Fact]
    public void RenderConversation_MistralUnknownRole_RaisesOnlyUserAndAssistant()
    {
        var template = ChatTemplate.Parse(ChatTemplateTestKit.Fixture("mistral.jinja"));
        var messages = new[] { new ChatMessage("user", "a"), new ChatMessage("tool", "b") };
        var e = Assert.Throws<ChatTemplateRaisedException>(() => template.RenderConversation(messages, false, "<s>", "</s>"));
        Assert.Equal("Only user and assistant roles are supported!", e.TemplateMessage);
    }
}
