// Chats with a ResLora model in-process through Microsoft.Extensions.AI's IChatClient: one answer, then a streamed one.
//   dotnet run --project samples/ChatClientSample -- --model DIR [--adapter NAME=DIR]... [--chat-template chatml]
using Microsoft.Extensions.AI;
using ResLora;
using ResLora.Extensions.AI;
using ResLora.Pipelines.Serving;

string? model = null, template = null;
var adapters = new List<KeyValuePair<string, string>>();
for (int i = 0; i + 1 < args.Length; i += 2)
{
    switch (args[i])
    {
        case "--model": model = args[i + 1]; break;
        case "--chat-template": template = args[i + 1]; break;
        case "--adapter" when args[i + 1].Split('=', 2) is [var name, var dir]: adapters.Add(new(name, dir)); break;
        default: Console.Error.WriteLine($"cannot read '{args[i]} {args[i + 1]}'; see the usage line above"); return 2;
    }
}
if (model is null)
{
    Console.Error.WriteLine("usage: ChatClientSample --model DIR [--adapter NAME=DIR]... [--chat-template NAME|FILE]");
    return 2;
}

try
{
    using IChatClient chat = ResLoraChatClient.Load(new ServingOptions { ModelDir = model, Adapters = adapters, ChatTemplate = template });
    var meta = chat.GetService<ChatClientMetadata>()!;
    Console.WriteLine($"{meta.ProviderName}: {meta.DefaultModelId}");

    List<ChatMessage> history = [new(ChatRole.System, "Be brief."), new(ChatRole.User, "Tell me a story.")];
    var options = new ChatOptions { Temperature = 0, MaxOutputTokens = 8 };
    ChatResponse answer = await chat.GetResponseAsync(history, options);
    Console.WriteLine($"[{answer.ModelId}] {answer.Text} ({answer.Usage?.OutputTokenCount} tokens, {answer.FinishReason})");
    history.AddMessages(answer);

    // The same conversation goes on with every adapter, streamed; ModelId chooses the adapter per call.
    history.Add(new(ChatRole.User, "And then?"));
    foreach (var (name, _) in adapters.Prepend(new("", "")))
    {
        Console.Write($"[{(name.Length == 0 ? "base" : name)}] ");
        await foreach (var update in chat.GetStreamingResponseAsync(history, new ChatOptions { ModelId = name.Length == 0 ? null : name, Temperature = 0.7f, Seed = 1, MaxOutputTokens = 8 }))
            Console.Write(update.Text);
        Console.WriteLine();
    }
    return 0;
}
catch (Exception e) when (e is UserInputException or ArgumentException or NotSupportedException)
{
    Console.Error.WriteLine($"error: {e.Message}");
    return 2;
}
