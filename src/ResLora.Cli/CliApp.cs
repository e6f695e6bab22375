using System.CommandLine;

namespace ResLora.Cli;

/// <summary>The <c>reslora</c> command: each verb parses options into the library's records and calls one library function.</summary>
public static class CliApp
{
    /// <summary>
    /// The root is a plain command named <c>reslora</c>, not a RootCommand: a RootCommand takes its name from the executable
    /// (ResLora.Cli under <c>dotnet run</c>; the assembly cannot be named reslora beside the library ResLora), and the
    /// usage line must say what users type. It carries the two options a RootCommand would add.
    /// </summary>
    public static Command BuildRoot()
    {
        var root = new Command("reslora", "reslora: parameter-efficient fine-tuning (ResLoRA, RefLoRA, RoLoRA, LoRA, DoRA, AdaLoRA, LoHa, LoKr, (IA)³) of Hugging Face LLaMA-family models on TorchSharp.");
        root.Options.Add(new System.CommandLine.Help.HelpOption());
        root.Options.Add(new VersionOption());
        foreach (var verb in Verbs()) root.Subcommands.Add(verb);
        return root;
    }

    /// <summary>Every verb of the tool; each lives in its own file.</summary>
    private static IEnumerable<Command> Verbs()
    {
        yield return VersionVerb.Build();
        yield return InspectVerb.Build();
        yield return GenerateVerb.Build();
        yield return ServeVerb.Build();
        yield return TokenizeVerb.Build();
        yield return TrainVerb.Build();
        yield return EvalVerb.Build();
        yield return MergeVerb.Build();
        yield return EmbedVerb.Build();
        yield return ExportVerb.Build();
        yield return CombineVerb.Build();
        yield return QuantizeVerb.Build();
        yield return ConvertVerb.Build();
        yield return DemoVerb.Build();
        yield return BenchVerb.Build();
    }

    public static int Run(string[] args)
    {
        try
        {
            var root = BuildRoot();
            // train --config FILE: the recipe's flags join the command line before it is parsed (the command line wins).
            return root.Parse(TrainRecipe.Expand(args, root.Subcommands.First(c => c.Name == "train"))).Invoke();
        }
        catch (Exception e)
        {
            return CliErrors.Report(e);
        }
    }
}
