namespace ResLora.Tests.Infrastructure;

/// <summary>Reads TensorBoard event files: TFRecord framing (length, its CRC, the Event proto, its CRC) around Tensorboard.Event.</summary>
internal static class TensorBoardEvents
{
    public static List<(string Tag, long Step, float Value)> Read(string dir)
    {
        var result = new List<(string, long, float)>();
        foreach (var file in Directory.GetFiles(dir, "events.out.tfevents.*").Order(StringComparer.Ordinal))
        {
            using var r = new BinaryReader(File.OpenRead(file));
            while (r.BaseStream.Position < r.BaseStream.Length)
            {
                long length = r.ReadInt64();
                r.ReadUInt32();
                var ev = Tensorboard.Event.Parser.ParseFrom(r.ReadBytes((int)length));
                r.ReadUInt32();
                if (ev.Summary is null) continue;
                foreach (var v in ev.Summary.Value) result.Add((v.Tag, ev.Step, v.SimpleValue));
            }
        }
        return result;
    }
}
