using System.CommandLine;
using System.Text.Json;
using ResLora.IO.Json;
using ResLora.Text.Templates;
using ResLora.Models;
using ResLora.Pipelines;
using ResLora.Text;
using ResLora.Training;

namespace ResLora.Cli;

internal static class GenerateVerb
{
    public static Command Build()
    {
        var model = new Option<string>("--model") { Description = "Hugging Face model folder.", Required = true };
        var adapter = new Option<string[]>("--adapter") { Description = "Adapter folder (PEFT format) to run unmerged on top of the model (with --prompts: for every record that names no adapter); with --prompts, repeat as NAME=DIR to load several under names that the prompt records pick." };
        var promptsFile = new Option<string?>("--prompts") { Description = "Batch generation: a JSONL file of {\"prompt\"} or {\"messages\"} records, each with an optional \"adapter\": NAME (none: the one --adapter DIR if given, else the base model); writes one JSON line per record ({\"index\", \"adapter\" (NAME, the --adapter DIR, or null for the base), \"output\"}) in file order, several adapters in one batch." };
        var batchSize = new Option<int>("--batch-size") { Description = "--prompts: records per batch.", DefaultValueFactory = _ => 8 };
        var prompt = new Option<string>("--prompt") { Description = "Prompt text (empty: start from BOS alone).", DefaultValueFactory = _ => "" };
        var maxNew = new Option<int>("--max-new-tokens") { Description = "Most tokens to generate.", DefaultValueFactory = _ => 64 };
        var temperature = new Option<double>("--temperature") { Description = "0 = greedy (so is anything below 1e-5); above it samples.", DefaultValueFactory = _ => 0.0 };
        var topK = new Option<int>("--top-k") { Description = "Sample among the k most likely tokens (0 = off).", DefaultValueFactory = _ => 0 };
        var topP = new Option<double>("--top-p") { Description = "Nucleus sampling mass (1 = off).", DefaultValueFactory = _ => 1.0 };
        var repetitionPenalty = new Option<double>("--repetition-penalty") { Description = "Hugging Face's repetition penalty: before each pick, the logit of every token already in the sequence (prompt and generated) is divided by X if positive, multiplied by X if negative. 1 = off; > 1 discourages repeats; must be > 0.", DefaultValueFactory = _ => 1.0 };
        var stopStrings = new Option<string[]>("--stop") { Description = "Stop string (repeatable), as OpenAI's stop: generation ends once the generated text contains it, and the string and what follows are removed from the output. Taken literally (from a shell, a newline is --stop $'\\n')." };
        var seed = new Option<long>("--seed") { Description = "Sampling seed.", DefaultValueFactory = _ => 0L };
        var chat = new Option<bool>("--chat") { Description = "Answer as the assistant: --prompt is a user message, rendered with the model's chat template and the assistant's header; stops at the template's end-of-turn token as well as EOS." };
        var messages = new Option<string?>("--messages") { Description = "--chat from a conversation file: a JSON list of {\"role\", \"content\"} messages (system, user, assistant, tool); implies --chat." };
        var system = new Option<string?>("--system") { Description = "--chat: a system message put first." };
        var chatTemplate = new Option<string?>("--chat-template") { Description = $"--chat: the chat template, when the model has none or another is wanted: a Jinja file, a JSON file with chat_template, or a built-in ({string.Join(", ", BuiltInChatTemplates.Names)})." };
        var rt = new RuntimeOptionSet(baseBits: true);
        var cmd = new Command("generate", "Generate a continuation of a prompt (or, with --chat, the assistant's reply to a conversation); writes only the generated text to stdout.");
        foreach (var o in new Option[] { model, adapter, promptsFile, batchSize, prompt, maxNew, temperature, topK, topP, repetitionPenalty, stopStrings, seed, chat, messages, system, chatTemplate }) cmd.Options.Add(o);
        rt.AddTo(cmd);
        cmd.SetAction(r => CliErrors.Guard(() =>
        {
            string dir = CliPaths.ModelDir(r.GetValue(model));
            var runtime = rt.Read(r);
            // The one set of sampling rules (the server's JSON fields go through the same check).
            var sampling = new GenerationOptions { MaxNewTokens = r.GetValue(maxNew), Temperature = r.GetValue(temperature), TopK = r.GetValue(topK), TopP = r.GetValue(topP),
                RepetitionPenalty = r.GetValue(repetitionPenalty), StopStrings = r.GetValue(stopStrings) ?? Array.Empty<string>(), Seed = r.GetValue(seed) };
            if (sampling.Check(limits: SamplingLimits.User) is { } bad) throw new UserInputException(bad.Message);
            var tokenizer = TokenizerLoader.Load(dir);
            if (r.GetValue(promptsFile) is { } file)
            {
                if (r.GetValue(chat) || r.GetValue(messages) is not null || r.GetValue(system) is not null || (r.GetValue(prompt) ?? "").Length > 0)
                    throw new UserInputException("--prompts reads every prompt (and conversation) from its file; drop --prompt, --chat, --messages and --system.");
                var records = PromptRecords.Load(file);
                var format = records.Any(x => x.Messages is not null) ? ChatFormat.ForModel(dir, r.GetValue(chatTemplate)) : null;
                using var set = AdapterSet.Load(dir, runtime);
                var given = NamedAdapters.Parse(r.GetValue(adapter));
                // One --adapter DIR applies to every record that names no adapter and is reported by its path; it is
                // loaded under its folder's name, so records may also name it.
                string? single = given.Single, singleName = single is null ? null : SingleName(single);
                var named = single is null ? given.Named : new[] { (singleName!, single) };
                foreach (var (name, folder) in named) set.Add(name, folder, w => Console.Error.WriteLine($"warning: {w}"));
                BatchGeneration.Run(set, tokenizer, format, records, sampling, r.GetValue(batchSize), a =>
                    Console.Out.WriteLine(JsonSerializer.Serialize(new { index = a.Index, adapter = single is not null && a.Adapter == singleName ? single : a.Adapter, output = a.Output }, ReportJson.Line)), singleName);
                return 0;
            }
            var adapters = NamedAdapters.Parse(r.GetValue(adapter));
            if (adapters.IsNamed)
                throw new UserInputException("several adapters (or --adapter NAME=DIR) are for --prompts FILE, whose records name their adapter; for one prompt give --adapter DIR.");
            string? adapterDir = adapters.Single;
            string? messagesFile = r.GetValue(messages);
            bool asChat = r.GetValue(chat) || messagesFile is not null;
            if (!asChat && (r.GetValue(system) is not null || r.GetValue(chatTemplate) is not null))
                throw new UserInputException("--system and --chat-template apply to chat generation; add --chat.");
            GenerationPrompt? chatPrompt = null;
            if (asChat)
            {
                // The model's template (or --chat-template), else the one the adapter was trained with (recorded beside it).
                var format = Prompts.ChatFormatFor(dir, adapterDir, r.GetValue(chatTemplate)) ?? throw Prompts.NoChatTemplate("--chat: " + dir);
                chatPrompt = Prompts.Chat(tokenizer, format, Prompts.Conversation(messagesFile, r.GetValue(prompt) ?? "", r.GetValue(system))).ForGeneration(tokenizer);
            }
            var input = chatPrompt ?? GenerationPrompt.Plain(tokenizer, r.GetValue(prompt) ?? "");
            using var m = ModelSessions.Load(dir, adapterDir, runtime, w => Console.Error.WriteLine($"warning: {w}"));
            Console.Out.Write(input.Complete(m, sampling).Text);
            Console.Out.WriteLine();
            return 0;
        }));
        return cmd;
    }

    /// <summary>The name one unnamed --adapter DIR is loaded under for --prompts: its folder's name, or "adapter" when that is no valid name.</summary>
    private static string SingleName(string dir)
    {
        string name = Path.GetFileName(Path.TrimEndingDirectorySeparator(dir));
        try
        {
            Adapters.MultiLoraPlan.CheckName(name);
            return name;
        }
        catch (UserInputException)
        {
            return "adapter";
        }
    }
}
