using System.Text;
using ResLora.Cli;
using ResLora.Demo;
using ResLora.IO;
using TorchSharp;

namespace ResLora.Tests.Infrastructure;

/// <summary>
/// What the reliability tests share: a tiny model written as a Hugging Face folder (with the demo's tokenizer), a small
/// data file, the CLI run in-process with its output captured, and byte-level edits of safetensors files.
/// </summary>
internal static class CliHarness
{
    public static readonly string[] Templates = { "--prompt-template", "{Body}", "--completion-template", " {Answer}" };

    /// <summary>A tiny model folder in <paramref name="dir"/>; <paramref name="edit"/> may change the weights before they are saved.</summary>
    public static string ModelFolder(string dir, Action<IReadOnlyDictionary<string, TorchSharp.Modules.Parameter>>? edit = null)
    {
        var c = TinyModels.Config(vocab: DemoTokenizerFiles.VocabSize);
        using var m = TinyModels.Build(c, seed: 2);
        if (edit is not null)
            using (torch.no_grad()) edit(m.BaseParameters());
        ResLora.Models.ModelFolder.Save(dir, c, m.BaseParameters().Select(kv => new KeyValuePair<string, torch.Tensor>(kv.Key, kv.Value)));
        DemoTokenizerFiles.Write(dir);
        return dir;
    }

    /// <summary>JSONL of the demo's arithmetic task: {"Body", "Answer"} records (use with <see cref="Templates"/>).</summary>
    public static string Data(string path, int n, int seed)
    {
        var (train, _) = DemoCorpus.FinetuneTask(n, 1, seed);
        File.WriteAllLines(path, train.Select(e => System.Text.Json.JsonSerializer.Serialize(new { Body = e.Prompt, Answer = int.Parse(e.Completion) })));
        return path;
    }

    /// <summary>Runs the CLI in-process; stdout and stderr captured (callers are in the "console" collection).</summary>
    public static (int Rc, string Out, string Err) Run(params string[] args)
    {
        var o = new StringWriter();
        var e = new StringWriter();
        var (so, se) = (Console.Out, Console.Error);
        Console.SetOut(o);
        Console.SetError(e);
        try
        {
            return (CliApp.Run(args), o.ToString(), e.ToString());
        }
        finally
        {
            Console.SetOut(so);
            Console.SetError(se);
        }
    }

    /// <summary>Changes a tensor's dtype label in a safetensors header in place (same length, so offsets stay valid).</summary>
    public static void Relabel(string file, string tensor, string from, string to)
    {
        Assert.Equal(from.Length, to.Length);
        byte[] b = File.ReadAllBytes(file);
        int n = (int)BitConverter.ToUInt64(b, 0);
        string header = Encoding.UTF8.GetString(b, 8, n);
        string old = $"\"{tensor}\":{{\"dtype\":\"{from}\"";
        Assert.Contains(old, header);
        byte[] h = Encoding.UTF8.GetBytes(header.Replace(old, $"\"{tensor}\":{{\"dtype\":\"{to}\"", StringComparison.Ordinal));
        Array.Copy(h, 0, b, 8, n);
        File.WriteAllBytes(file, b);
    }

    /// <summary>Rewrites a safetensors file with <paramref name="count"/> values of one tensor set to NaN.</summary>
    public static void PoisonWithNaN(string file, string tensor, int count)
    {
        var tensors = new Dictionary<string, torch.Tensor>();
        using (var f = SafetensorsFile.Open(file))
            foreach (var e in f.Entries) tensors[e.Name] = f.Load(e.Name);
        tensors[tensor].view(-1).narrow(0, 0, count).fill_(double.NaN);
        SafetensorsWriter.Write(file, tensors, new Dictionary<string, string> { ["format"] = "pt" });
        foreach (var t in tensors.Values) t.Dispose();
    }
}
