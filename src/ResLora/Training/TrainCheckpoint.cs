using System.Text.Json;
using System.Text.Json.Serialization;
using ResLora.IO;

namespace ResLora.Training;

/// <summary>The small JSON part of a checkpoint: where training stood.</summary>
public sealed record TrainCheckpointState
{
    [JsonPropertyName("step")] public int Step { get; init; }
    [JsonPropertyName("total_steps")] public int TotalSteps { get; init; }
    [JsonPropertyName("data_position")] public string DataPosition { get; init; } = "";
    [JsonPropertyName("seed")] public long Seed { get; init; }
    [JsonPropertyName("method")] public string Method { get; init; } = "";
    [JsonPropertyName("elapsed_seconds")] public double ElapsedSeconds { get; init; }
    /// <summary>The last step's training loss: what a resumed finished run reports as its final train loss.</summary>
    [JsonPropertyName("last_train_loss")] public double? LastTrainLoss { get; init; }
    /// <summary>
    /// The settings that shape every step, by flag name (<c>--lr</c> → <c>0.0002</c>): a resume must give the same
    /// values, or its losses silently differ from the run it continues. Absent in checkpoints of earlier versions.
    /// </summary>
    [JsonPropertyName("settings")] public Dictionary<string, string>? Settings { get; init; }
    /// <summary>The open logging window at the checkpoint (steps since the last metrics line and their loss sum), so a resume logs the same means.</summary>
    [JsonPropertyName("window_loss_sum")] public double? WindowLossSum { get; init; }
    [JsonPropertyName("window_steps")] public int? WindowSteps { get; init; }
    /// <summary>Set when early stopping ended the run at <see cref="Step"/>: a resume finds the run complete.</summary>
    [JsonPropertyName("stopped_early")] public bool? StoppedEarly { get; init; }
}

/// <summary>
/// Checkpoints that survive crashes: <c>OUT/checkpoint/</c> holds the adapter (PEFT folder), the optimizer state,
/// the torch RNG state and <c>state.json</c>. A new checkpoint is written completely into a temp folder (files
/// flushed to disk) and only then swapped in by renames, so the last good checkpoint exists at every instant:
/// <c>checkpoint/</c>, or <c>checkpoint.prev/</c> during the swap (which <see cref="Find"/> also accepts).
/// </summary>
public static class TrainCheckpoint
{
    public const string FolderName = "checkpoint";
    private const string PrevName = "checkpoint.prev";
    private static readonly JsonSerializerOptions Json = new() { WriteIndented = true, NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals };

    public static void Save(string outDir, TrainCheckpointState state, Action<string> writeAdapter, optim.Optimizer optimizer)
    {
        Directory.CreateDirectory(outDir);
        string tmp = AtomicFile.TempName(Path.Combine(outDir, FolderName));
        try
        {
            Directory.CreateDirectory(tmp);
            writeAdapter(Path.Combine(tmp, "adapter"));
            using (var fs = new FileStream(Path.Combine(tmp, "optimizer.bin"), FileMode.CreateNew))
            {
                using (var bw = new BinaryWriter(fs, System.Text.Encoding.UTF8, leaveOpen: true))
                {
                    if (optimizer is TorchSharp.Modules.OptimizerHelper h) h.save_state_dict(bw);
                    else throw new InvalidOperationException($"optimizer {optimizer.GetType().Name} cannot save its state.");
                }
                Durable.Flush(fs);
            }
            using (var rng = torch.get_rng_state())
                WriteFlushed(Path.Combine(tmp, "rng.bin"), rng.bytes.ToArray());
            WriteFlushed(Path.Combine(tmp, "state.json"), System.Text.Encoding.UTF8.GetBytes(JsonSerializer.Serialize(state, Json)));
            Durable.FlushFolder(tmp);

            // The swap: at every instant checkpoint/ or checkpoint.prev/ is complete (Find takes either).
            string cur = Path.Combine(outDir, FolderName), prev = Path.Combine(outDir, PrevName);
            if (Directory.Exists(prev)) Durable.DeleteFolder(prev);
            if (Directory.Exists(cur)) Durable.MoveFolder(cur, prev);
            Durable.MoveFolder(tmp, cur);
            Durable.FlushFolder(outDir);
            if (Directory.Exists(prev)) Durable.DeleteFolder(prev);
        }
        catch (Exception e) when (!Durable.IsCrash(e))
        {
            if (Directory.Exists(tmp)) Directory.Delete(tmp, recursive: true);
            throw;
        }
    }

    /// <summary>
    /// Removes <c>checkpoint.prev/</c> when <c>checkpoint/</c> is complete beside it (a kill between the swap's last rename
    /// and the removal leaves both); call while holding the run folder.
    /// </summary>
    public static void RemoveStalePrevious(string outDir)
    {
        string prev = Path.Combine(outDir, PrevName);
        if (Directory.Exists(prev) && Find(outDir) is { } found && Path.GetFileName(found) == FolderName) Directory.Delete(prev, recursive: true);
    }

    /// <summary>Removes every checkpoint and snapshot under <paramref name="outDir"/> (a new run replacing an old one).</summary>
    public static void Delete(string outDir)
    {
        foreach (var name in new[] { FolderName, PrevName })
        {
            string d = Path.Combine(outDir, name);
            if (Directory.Exists(d)) Directory.Delete(d, recursive: true);
        }
        RemoveSnapshotsAfter(outDir, -1);
    }

    /// <summary>The prefix of an adapter snapshot folder: <c>checkpoint-N</c> after step N, as Hugging Face's Trainer names its checkpoints.</summary>
    public const string SnapshotPrefix = "checkpoint-";

    /// <summary>The snapshot folders under <paramref name="outDir"/> by step, oldest first.</summary>
    public static IReadOnlyList<(int Step, string Dir)> Snapshots(string outDir) =>
        !Directory.Exists(outDir) ? Array.Empty<(int, string)>() :
        Directory.GetDirectories(outDir, SnapshotPrefix + "*")
            .Select(d => (Ok: int.TryParse(Path.GetFileName(d)[SnapshotPrefix.Length..], System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int n), Step: n, Dir: d))
            .Where(x => x.Ok).OrderBy(x => x.Step).Select(x => (x.Step, x.Dir)).ToList();

    /// <summary>
    /// Writes the adapter as it is after <paramref name="step"/> into <c>OUT/checkpoint-N/</c> (a loadable adapter folder,
    /// written whole into a temp folder and renamed), then removes the oldest snapshots beyond <paramref name="keep"/> (0 = keep all).
    /// </summary>
    public static string SaveSnapshot(string outDir, int step, Action<string> writeAdapter, int keep)
    {
        string dir = Path.Combine(outDir, SnapshotPrefix + step.ToString(System.Globalization.CultureInfo.InvariantCulture));
        string tmp = AtomicFile.TempName(dir);
        try
        {
            Directory.CreateDirectory(tmp);
            writeAdapter(tmp);
            Durable.FlushFolder(tmp);
            if (Directory.Exists(dir)) Durable.DeleteFolder(dir);
            Durable.MoveFolder(tmp, dir);
            Durable.FlushFolder(outDir);
        }
        catch (Exception e) when (!Durable.IsCrash(e))
        {
            if (Directory.Exists(tmp)) Directory.Delete(tmp, recursive: true);
            throw;
        }
        var all = Snapshots(outDir);
        if (keep > 0)
            foreach (var (_, old) in all.Take(Math.Max(0, all.Count - keep))) Durable.DeleteFolder(old);
        return dir;
    }

    /// <summary>Removes the snapshots of steps after <paramref name="step"/> (a resume continues from <paramref name="step"/>).</summary>
    public static void RemoveSnapshotsAfter(string outDir, int step)
    {
        foreach (var (n, d) in Snapshots(outDir))
            if (n > step) Directory.Delete(d, recursive: true);
    }

    /// <summary>The folder of the last complete checkpoint under <paramref name="outDir"/>, or null.</summary>
    public static string? Find(string outDir)
    {
        foreach (var name in new[] { FolderName, PrevName })
        {
            string d = Path.Combine(outDir, name);
            if (File.Exists(Path.Combine(d, "state.json")) && File.Exists(Path.Combine(d, "optimizer.bin"))) return d;
        }
        return null;
    }

    public static TrainCheckpointState ReadState(string checkpointDir)
    {
        string p = Path.Combine(checkpointDir, "state.json");
        try
        {
            return JsonSerializer.Deserialize<TrainCheckpointState>(File.ReadAllText(p), Json)
                ?? throw new UserInputException($"{p}: empty checkpoint state.");
        }
        catch (JsonException e)
        {
            throw new UserInputException($"{p}: checkpoint state is not valid JSON ({e.Message}); delete the checkpoint folder to start over.", e);
        }
    }

    /// <summary>Restores optimizer state and the torch RNG (call after the adapter weights were loaded).</summary>
    public static void RestoreOptimizerAndRng(string checkpointDir, optim.Optimizer optimizer)
    {
        string opt = Path.Combine(checkpointDir, "optimizer.bin");
        using (var fs = File.OpenRead(opt))
        using (var br = new BinaryReader(fs))
        {
            if (optimizer is TorchSharp.Modules.OptimizerHelper h) h.load_state_dict(br);
            else throw new InvalidOperationException($"optimizer {optimizer.GetType().Name} cannot load its state.");
        }
        byte[] rng = File.ReadAllBytes(Path.Combine(checkpointDir, "rng.bin"));
        using var cur = torch.get_rng_state();
        if (cur.NumberOfElements != rng.Length)
            throw new UserInputException($"{checkpointDir}/rng.bin: {rng.Length} bytes, expected {cur.NumberOfElements}; the checkpoint was written by another libtorch.");
        using var t = torch.empty(rng.Length, ScalarType.Byte);
        t.bytes = rng;
        torch.set_rng_state(t);
    }

    private static void WriteFlushed(string path, byte[] bytes)
    {
        using var fs = new FileStream(path, FileMode.CreateNew);
        fs.Write(bytes);
        Durable.Flush(fs);
    }
}
