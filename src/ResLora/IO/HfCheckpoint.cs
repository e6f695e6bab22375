using System.Text.Json;
using System.Text.Json.Nodes;

namespace ResLora.IO;

/// <summary>
/// The weights of a Hugging Face model folder: one <c>model.safetensors</c> or shards listed by
/// <c>model.safetensors.index.json</c>. Pickle checkpoints (<c>*.bin</c>, <c>*.pt</c>) are refused, never loaded.
/// Knows file formats only; <c>config.json</c> is read by the model layer (<c>ResLora.Models.ModelFolder</c>).
/// </summary>
public sealed class HfCheckpoint : IDisposable
{
    public const string SingleFile = "model.safetensors";
    public const string IndexFile = "model.safetensors.index.json";

    private readonly Dictionary<string, SafetensorsFile> _files;
    private readonly Dictionary<string, SafetensorsFile> _byTensor;

    public string Directory { get; }

    private HfCheckpoint(string dir, Dictionary<string, SafetensorsFile> files, Dictionary<string, SafetensorsFile> byTensor)
    {
        Directory = dir;
        _files = files;
        _byTensor = byTensor;
    }

    public static HfCheckpoint Open(string modelDir)
    {
        InputPaths.ExistingModelFolder(modelDir, flag: null);
        string single = Path.Combine(modelDir, SingleFile), index = Path.Combine(modelDir, IndexFile);
        var files = new Dictionary<string, SafetensorsFile>(StringComparer.Ordinal);
        var byTensor = new Dictionary<string, SafetensorsFile>(StringComparer.Ordinal);
        try
        {
            if (File.Exists(index))
            {
                var map = ReadIndex(index);
                foreach (var (tensor, shard) in map)
                {
                    if (shard.Contains('/') || shard.Contains('\\') || shard.Contains(".."))
                        throw new UserInputException($"{index}: weight_map entry '{tensor}' points at '{shard}', outside the model folder.");
                    if (!files.TryGetValue(shard, out var f))
                    {
                        string p = Path.Combine(modelDir, shard);
                        if (!File.Exists(p)) throw new FileNotFoundException($"{index}: weight_map sends '{tensor}' to {shard}, which is missing from {modelDir}.", p);
                        files[shard] = f = SafetensorsFile.Open(p);
                    }
                    if (!f.Contains(tensor)) throw new UserInputException($"{index}: weight_map sends '{tensor}' to {shard}, but that file has no such tensor.");
                    byTensor[tensor] = f;
                }
            }
            else if (File.Exists(single))
            {
                var f = SafetensorsFile.Open(single);
                files[SingleFile] = f;
                foreach (var e in f.Entries) byTensor[e.Name] = f;
            }
            else
            {
                var pickles = System.IO.Directory.EnumerateFiles(modelDir).Select(Path.GetFileName)
                    .Where(n => n!.EndsWith(".bin", StringComparison.OrdinalIgnoreCase) || n.EndsWith(".pt", StringComparison.OrdinalIgnoreCase) || n.EndsWith(".pth", StringComparison.OrdinalIgnoreCase) || n.EndsWith(".ckpt", StringComparison.OrdinalIgnoreCase))
                    .ToList();
                if (pickles.Count > 0)
                    throw new UserInputException($"{modelDir}: only pickle checkpoints here ({string.Join(", ", pickles)}); pickle files can run arbitrary code and are never loaded. Convert once in Python: AutoModelForCausalLM.from_pretrained(dir).save_pretrained(dir, safe_serialization=True).");
                throw new FileNotFoundException($"{modelDir}: no {SingleFile} or {IndexFile}; a Hugging Face model folder needs its weights as safetensors.");
            }
        }
        catch
        {
            foreach (var f in files.Values) f.Dispose();
            throw;
        }
        return new HfCheckpoint(modelDir, files, byTensor);
    }

    private static Dictionary<string, string> ReadIndex(string index)
    {
        try
        {
            var root = JsonNode.Parse(BoundedFile.ReadAllText(index, BoundedFile.ConfigLimit, "shard index")) as JsonObject ?? throw new UserInputException($"{index}: expected a JSON object.");
            if (root["weight_map"] is not JsonObject map) throw new UserInputException($"{index}: missing object field 'weight_map'.");
            var d = new Dictionary<string, string>(StringComparer.Ordinal);
            foreach (var (k, v) in map)
            {
                if (v is not JsonValue jv || !jv.TryGetValue<string>(out var s)) throw new UserInputException($"{index}: weight_map['{k}'] must be a file name string.");
                d[k] = s;
            }
            return d;
        }
        catch (JsonException e)
        {
            throw new UserInputException($"{index}: not valid JSON ({e.Message}).", e);
        }
    }

    public bool Contains(string name) => _byTensor.ContainsKey(name);

    /// <summary>How many tensors the checkpoint stores.</summary>
    public int Count => _byTensor.Count;

    public long[] ShapeOf(string name) => FileOf(name).GetEntry(name).Shape;

    /// <summary>Every stored tensor's name.</summary>
    public IEnumerable<string> Names => _byTensor.Keys;

    /// <summary>A stored tensor's header entry (dtype as the file labels it, shape, offsets).</summary>
    public SafetensorsEntry EntryOf(string name) => FileOf(name).GetEntry(name);

    /// <summary>The file that stores a tensor.</summary>
    public string PathOf(string name) => FileOf(name).FilePath;

    private SafetensorsFile FileOf(string name) =>
        _byTensor.TryGetValue(name, out var f) ? f : throw new KeyNotFoundException($"{Directory}: the checkpoint has no tensor '{name}'.");

    public Tensor Load(string name, ScalarType? dtype = null, Device? device = null) => FileOf(name).Load(name, dtype, device);

    /// <summary>Copies a stored tensor into <paramref name="destination"/> (see <see cref="SafetensorsFile.CopyInto"/>).</summary>
    public void CopyInto(string name, Tensor destination) => FileOf(name).CopyInto(name, destination);

    /// <summary>
    /// <paramref name="names"/> grouped by the file that stores them (in file name order) and by offset inside it: the
    /// order that reads each shard once, front to back, so a loader can release a shard when it is done with it.
    /// </summary>
    public IReadOnlyList<string> InFileOrder(IEnumerable<string> names) =>
        names.OrderBy(n => FileOf(n).FilePath, StringComparer.Ordinal).ThenBy(n => FileOf(n).GetEntry(n).Begin).ToList();

    /// <summary>
    /// Closes the file that stores <paramref name="name"/> (its mapping): shard-by-shard loading calls it after the shard's
    /// last tensor. Headers stay readable (shapes, dtypes); loading a tensor from a released file is an error.
    /// </summary>
    public void ReleaseFileOf(string name) => FileOf(name).Dispose();

    /// <summary>
    /// Checks the stored tensors against the model's expected base weights; every missing, unexpected or mis-shaped
    /// tensor is listed by name in one error. Stored tensors for which <paramref name="ignoreExtra"/> is true (a tied
    /// lm_head.weight) and old rotary inv_freq buffers are not reported as unexpected. <paramref name="layout"/> names the
    /// layout the names come from in the message ("qwen3 family layout, model_type qwen3").
    /// </summary>
    public void ValidateAgainst(IReadOnlyDictionary<string, long[]> expected, Func<string, bool>? ignoreExtra = null, string layout = "LLaMA-family layout")
    {
        var missing = expected.Keys.Where(k => !_byTensor.ContainsKey(k)).OrderBy(k => k, StringComparer.Ordinal).ToList();
        var unexpected = _byTensor.Keys.Where(k => !expected.ContainsKey(k)
            && !(ignoreExtra?.Invoke(k) ?? false)
            && !k.EndsWith("rotary_emb.inv_freq", StringComparison.Ordinal)).OrderBy(k => k, StringComparer.Ordinal).ToList();
        var mismatched = expected.Where(kv => _byTensor.ContainsKey(kv.Key) && !ShapeOf(kv.Key).SequenceEqual(kv.Value))
            .Select(kv => $"{kv.Key}: stored [{string.Join(", ", ShapeOf(kv.Key))}], config.json implies [{string.Join(", ", kv.Value)}]").ToList();
        if (missing.Count + unexpected.Count + mismatched.Count == 0) return;
        static string List(string title, List<string> items) => items.Count == 0 ? "" :
            $"\n  {title} ({items.Count}): {string.Join(", ", items.Take(20))}{(items.Count > 20 ? $" ... and {items.Count - 20} more" : "")}";
        throw new UserInputException($"{Directory}: the weights do not match config.json." + List("missing", missing) + List("unexpected", unexpected) + List("shape mismatch", mismatched)
            + $"\n  Check that config.json belongs to these weights ({layout}).");
    }

    /// <summary>
    /// Writes the weights (one file, or shards of at most <paramref name="maxShardBytes"/> with an index) into
    /// <paramref name="modelDir"/>, each file atomically. Returns the weights' dtype as config.json names it
    /// (<c>float32</c>, <c>bfloat16</c>, <c>float16</c>).
    /// </summary>
    public static string SaveWeights(string modelDir, IEnumerable<KeyValuePair<string, Tensor>> weights, long maxShardBytes = 2L << 30) =>
        SaveWeights(modelDir, weights.Select(kv => LazyTensor.Of(kv.Key, kv.Value)).ToList(), maxShardBytes);

    /// <summary>
    /// As above, with tensors made one at a time while they are written (<see cref="LazyTensor"/>): a model that exists only
    /// as shapes (a random-init benchmark model) is written holding one tensor at a time.
    /// </summary>
    public static string SaveWeights(string modelDir, IReadOnlyList<LazyTensor> weights, long maxShardBytes = 2L << 30)
    {
        System.IO.Directory.CreateDirectory(modelDir);
        var items = weights.OrderBy(t => t.Name, StringComparer.Ordinal).ToList();
        var meta = new Dictionary<string, string> { ["format"] = "pt" };
        var shards = new List<List<LazyTensor>> { new() };
        long size = 0;
        foreach (var t in items)
        {
            long bytes = t.ByteLength;
            if (size > 0 && size + bytes > maxShardBytes) { shards.Add(new()); size = 0; }
            shards[^1].Add(t);
            size += bytes;
        }
        string dtype = items.Count > 0 ? items[0].Dtype switch { ScalarType.BFloat16 => "bfloat16", ScalarType.Float16 => "float16", _ => "float32" } : "float32";
        if (shards.Count == 1)
        {
            SafetensorsWriter.Write(Path.Combine(modelDir, SingleFile), shards[0], meta);
            return dtype;
        }
        var map = new JsonObject();
        long total = 0;
        for (int i = 0; i < shards.Count; i++)
        {
            string name = $"model-{i + 1:D5}-of-{shards.Count:D5}.safetensors";
            SafetensorsWriter.Write(Path.Combine(modelDir, name), shards[i], meta);
            foreach (var t in shards[i])
            {
                map[t.Name] = name;
                total += t.ByteLength;
            }
        }
        var index = new JsonObject { ["metadata"] = new JsonObject { ["total_size"] = total }, ["weight_map"] = map };
        AtomicFile.WriteAllText(Path.Combine(modelDir, IndexFile), index.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        return dtype;
    }

    public void Dispose()
    {
        foreach (var f in _files.Values) f.Dispose();
        _files.Clear();
    }
}
