namespace ResLora.Adapters;

/// <summary>How a ResLoRA adapter becomes a plain LoRA: bs exactly (concatenated factors), is/ms by the calibrated least-squares fold.</summary>
public sealed partial class ResLoraMethod
{
    public override bool MergesByCalibratedFold(AdapterConfigBase candidate) => candidate is ResLoraConfig { MergeKind: ResLoraMergeKind.LeastSquares };

    public override bool ExportsByCalibratedFold(AdapterConfigBase config) => config is ResLoraConfig { StructureKind: not ResLoraStructure.BlockShortcut, AnnealedToZero: false };

    /// <summary>What merge and export report for an adapter whose shortcuts were annealed to weight 0.</summary>
    public const string AnnealedLabel = "exact (shortcuts annealed to 0)";

    public override string ExactLoraPairsRoute(AdapterConfigBase config) => config is ResLoraConfig { AnnealedToZero: true } ? "annealed" : base.ExactLoraPairsRoute(config);

    /// <summary>is/ms: <see cref="LeastSquaresFold"/> through the builder's calibration pass; bs has nothing to fit.</summary>
    public override ICalibratedFold CalibratedFold(AdapterPlan plan)
    {
        if (plan.Builder is not ResLoraLayerBuilder builder || plan.Config is not ResLoraConfig config) return base.CalibratedFold(plan);
        if (config.AnnealedToZero)
            throw new UserInputException("this ResLoRA adapter's shortcuts were annealed to weight 0 (reslora_anneal): it is a plain LoRA with nothing to fit, and merges and exports exactly. Drop --merge ls.");
        if (config.StructureKind == ResLoraStructure.BlockShortcut)
            throw new UserInputException("a ResLoRA bs adapter has nothing to fit: it merges exactly (and exports exactly as concatenated factors). Drop --merge ls.");
        return new ResidualPathFold(builder, config);
    }

    /// <summary>
    /// bs, exactly: block n's merged ΔW = s·(B_nA_n + w·Σ_k B_{n−k}A_{n−k}) is one pair of rank r·(m+1) (spec §4.1; the
    /// predecessors' B times the shortcut weight w, 1 unless annealed). Shortcuts annealed to w = 0 (any structure):
    /// each block's own pair (B_n, A_n), rank r.
    /// </summary>
    public override IReadOnlyDictionary<string, ILowRankPair>? ExactLoraPairs(AdapterPlan plan)
    {
        if (plan.Config is not ResLoraConfig rc || plan.Builder is not ResLoraLayerBuilder builder) return null;
        double w = builder.ShortcutWeight;
        if (rc.StructureKind != ResLoraStructure.BlockShortcut && w != 0) return null;
        var d = new Dictionary<string, ILowRankPair>(StringComparer.Ordinal);
        using var _ = torch.no_grad();
        foreach (var l in builder.Layers)
        {
            var blocks = w == 0 ? new List<ResLoraLinear> { l } : l.Predecessors(builder.PreNum).Prepend(l).ToList();
            var a = torch.cat(blocks.Select(b => (Tensor)b.LoraA.detach()).ToArray(), 0); // (r(m+1), in)
            var b = torch.cat(blocks.Select(b => b == l || w == 1 ? (Tensor)b.LoraB.detach() : b.LoraB.detach().mul(w)).ToArray(), 1); // (out, r(m+1))
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
