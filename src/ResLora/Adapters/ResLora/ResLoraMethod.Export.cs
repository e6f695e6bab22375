namespace ResLora.Adapters;

/// <summary>How a ResLoRA adapter becomes a plain LoRA: bs exactly (concatenated factors), is/ms by the calibrated least-squares fold.</summary>
public sealed partial class ResLoraMethod
{
    public override bool MergesByCalibratedFold(AdapterConfigBase candidate) => candidate is ResLoraConfig { MergeKind: ResLoraMergeKind.LeastSquares };

    public override bool ExportsByCalibratedFold(AdapterConfigBase config) => config is ResLoraConfig { StructureKind: not ResLoraStructure.BlockShortcut };

    /// <summary>is/ms: <see cref="LeastSquaresFold"/> through the builder's calibration pass; bs has nothing to fit.</summary>
    public override ICalibratedFold CalibratedFold(AdapterPlan plan)
    {
        if (plan.Builder is not ResLoraLayerBuilder builder || plan.Config is not ResLoraConfig config) return base.CalibratedFold(plan);
        if (config.StructureKind == ResLoraStructure.BlockShortcut)
            throw new UserInputException("a ResLoRA bs adapter has nothing to fit: it merges exactly (and exports exactly as concatenated factors). Drop --merge ls.");
        return new ResidualPathFold(builder, config);
    }

    /// <summary>bs, exactly: block n's merged ΔW = s·Σ_k B_{n−k}A_{n−k} is one pair of rank r·(m+1) (spec §4.1).</summary>
    public override IReadOnlyDictionary<string, ILowRankPair>? ExactLoraPairs(AdapterPlan plan)
    {
        if (plan.Config is not ResLoraConfig || plan.Builder is not ResLoraLayerBuilder builder) return null;
        var d = new Dictionary<string, ILowRankPair>(StringComparer.Ordinal);
        using var _ = torch.no_grad();
        foreach (var l in builder.Layers)
        {
            var blocks = l.Predecessors(builder.PreNum).Prepend(l).ToList();
            var a = torch.cat(blocks.Select(b => (Tensor)b.LoraA.detach()).ToArray(), 0); // (r(m+1), in)
            var b = torch.cat(blocks.Select(b => (Tensor)b.LoraB.detach()).ToArray(), 1); // (out, r(m+1))
            d[l.Spec.Name] = new ConcatenatedPair(new Parameter(a, requires_grad: false), new Parameter(b, requires_grad: false), l.Scaling);
        }
        return d;
    }

    /// <summary>Through ΔW the residual paths are folded with the saved merge kind, which is approximate unless exact.</summary>
    public override IEnumerable<string> LoraExportNotes(AdapterConfigBase config, bool viaDeltaWeight)
    {
        if (viaDeltaWeight && config is ResLoraConfig rc && rc.MergeKind != ResLoraMergeKind.Exact)
            yield return $"ResLoRA: the residual paths are folded into ΔW with the '{rc.Merge}' merge, an approximation of the unmerged model (as reslora merge makes).";
    }

    private sealed record ConcatenatedPair(Parameter LoraA, Parameter LoraB, double Scaling) : ILowRankPair;

    /// <summary>The least-squares fold: each block gets a pair (B_n, A*_n) that uses only its own input.</summary>
    private sealed class ResidualPathFold(ResLoraLayerBuilder builder, ResLoraConfig config) : ICalibratedFold
    {
        public string Description => $"ResLoRA {config.Structure}: the residual paths are folded by the calibrated least-squares fit";

        public void CheckCalibration(long tokens)
        {
            if (tokens < config.R)
                throw new UserInputException($"the calibration text has {tokens} tokens, fewer than the rank r = {config.R}; give more text with --calib.");
        }

        public IReadOnlyDictionary<string, (Tensor A, Tensor B)> Fit(Func<Tensor, Tensor, Tensor> forward, IEnumerable<(Tensor Ids, Tensor Mask)> batches)
        {
            builder.FoldedA = null;
            builder.Calibrate(forward, batches);
            return builder.Layers.ToDictionary(l => l.Spec.Name, l => (builder.FoldedA![l], (Tensor)l.LoraB), StringComparer.Ordinal);
        }
    }
}
