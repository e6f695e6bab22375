using System.Text;
using System.Text.Json.Nodes;
using ResLora.Adapters;
using ResLora.Cli.Serve;
using ResLora.IO;
using ResLora.Text.Templates;
using ResLora.Models;
using ResLora.Pipelines;
using ResLora.Pipelines.Serving;
using ResLora.Tests.Infrastructure;
using TorchSharp;

namespace ResLora.Tests.Serving;

/// <summary>
/// A tiny chat model folder (byte-level tokenizer, ChatML template, so &lt;|im_end|&gt; is one token) and two adapter folders
/// with non-zero B: lora (all-linear, r 4) and dora (q/v, r 8). Built once per test class; tests only read them and start
/// servers on loopback port 0 over them.
/// </summary>
public sealed class ServingFixture : IDisposable
{
    private static readonly string[] Specials = { "<|im_start|>", "<|im_end|>", "<|endoftext|>" };

    public ServingFixture()
    {
        Root = Directory.CreateTempSubdirectory("reslora-serve-").FullName;
        ModelDir = Path.Combine(Root, "tiny-chat");
        var tokenizerConfig = new JsonObject { ["eos_token"] = "<|endoftext|>", ["chat_template"] = BuiltInChatTemplates.Source("chatml") };
        var ids = ChatTokenizerFiles.WriteByteLevel(ModelDir, Specials, Array.Empty<(string, string)>(), tokenizerConfig);
        var c = TinyModels.Config(vocab: ChatTokenizerFiles.ByteLevelVocabSize(Specials, Array.Empty<(string, string)>())) with { BosTokenId = null, EosTokenIds = new[] { ids["<|endoftext|>"] } };
        using (var m = TinyModels.Build(c, seed: 7))
            ModelFolder.Save(ModelDir, c, m.BaseParameters().Select(kv => new KeyValuePair<string, torch.Tensor>(kv.Key, kv.Value)));
        Save("lora", new LoraConfig { R = 4, LoraAlpha = 8, TargetModules = ModuleTargets.AllLinear }, 21);
        Save("dora", new LoraConfig { R = 8, LoraAlpha = 8, UseDora = true, TargetModules = ModuleTargets.List("q_proj", "v_proj") }, 22);
    }

    public string Root { get; }
    public string ModelDir { get; }

    /// <summary>The base's served name (the folder's name).</summary>
    public string Name => "tiny-chat";

    public string Dir(string adapter) => Path.Combine(Root, adapter);

    /// <summary>Loads the model with both adapters and starts a server on 127.0.0.1, port 0.</summary>
    internal async Task<ServeServer> Start(ServingOptions? options = null, ServeSettings? settings = null)
    {
        var o = (options ?? new ServingOptions { ModelDir = ModelDir }) with
        {
            ModelDir = ModelDir,
            Adapters = new[] { new KeyValuePair<string, string>("lora", Dir("lora")), new KeyValuePair<string, string>("dora", Dir("dora")) },
        };
        var served = ServedModel.Load(o, new RuntimeOptions());
        try
        {
            return await ServeServer.StartAsync(served, (settings ?? new ServeSettings()) with { Host = "127.0.0.1", Port = 0 });
        }
        catch
        {
            served.Dispose();
            throw;
        }
    }

    internal static HttpClient Client(ServeServer server) => new() { BaseAddress = server.Address, Timeout = TimeSpan.FromMinutes(2) };

    public static Task<HttpResponseMessage> Post(HttpClient client, string path, string json) =>
        client.PostAsync(path, new StringContent(json, Encoding.UTF8, "application/json"));

    /// <summary>An adapter folder with random non-zero trainable tensors, as after training.</summary>
    private void Save(string name, LoraConfig cfg, long seed) => ResLora.Tests.Pipelines.MultiAdapterFixture.SaveTrainedLooking(ModelDir, Dir(name), cfg, seed, 0.3);

    public void Dispose() => Directory.Delete(Root, recursive: true);
}
