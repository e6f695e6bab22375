using ResLora.Scoring.Tasks;

namespace ResLora.Tests.Scoring.Tasks;

/// <summary>Every shipped task on the real LLM-Adapters test sets (first 20 records), and hand-checked records.</summary>
public sealed class BuiltinTaskDataTests
{
    public static TheoryData<string> Tasks() => new(TaskLibrary.Names);

    [TaskDataTheory]
    [MemberData(nameof(Tasks))]
    public void EveryShippedTask_BuildsTwentyQuestionsFromTheRealData(string name)
    {
        var task = TaskLibrary.Load(name);
        var built = TaskInstances.Build(task, TaskDataFolder.Path, null, numFewshot: 0, seed: 1234, limit: 20);
        Assert.True(built.RecordCount >= 20);
        if (task.OutputType == TaskOutputType.MultipleChoice)
        {
            Assert.Equal(20, built.Choice.Count);
            foreach (var q in built.Choice)
            {
                Assert.InRange(q.Gold, 0, q.Requests.Count - 1);
                Assert.True(q.Requests.Count >= 2);
                Assert.Equal(q.Requests.Count, q.ChoiceTexts.Count);
                Assert.All(q.Requests, r => Assert.False(string.IsNullOrWhiteSpace(r.Continuation)));
                Assert.All(q.Requests, r => Assert.DoesNotContain("Answer format", r.Context + r.Continuation));
            }
            // Few-shot builds too, from the whole file.
            Assert.Equal(3, TaskInstances.Build(task, TaskDataFolder.Path, null, numFewshot: 2, seed: 1234, limit: 3).Choice.Count);
        }
        else
        {
            Assert.Equal(20, built.Generate.Count);
            Assert.All(built.Generate, q => Assert.Contains("### Instruction:\n", q.Prompt));
            Assert.All(built.Generate, q => Assert.EndsWith("### Response:\n                ", q.Prompt));
            Assert.All(built.Generate, q => Assert.False(string.IsNullOrWhiteSpace(q.Reference)));
        }
    }

    [TaskDataTheory]
    [MemberData(nameof(Tasks))]
    public void EveryShippedTask_BuildsEveryRecordOfItsFile(string name)
    {
        // No record of the shipped test sets is unsplittable, out of range or missing a field.
        var built = TaskInstances.Build(TaskLibrary.Load(name), TaskDataFolder.Path, null, numFewshot: 0, seed: 1234, limit: null);
        Assert.Equal(built.RecordCount, built.Choice.Count + built.Generate.Count);
    }

    [TaskDataFact]
    public void ArcEasy_Record0_GoldIsTheSunlightAnswer()
    {
        var q = TaskInstances.Build(TaskLibrary.Load("arc_easy"), TaskDataFolder.Path, null, 0, 1234, 1).Choice[0];
        Assert.Equal(0, q.Gold);
        Assert.Equal("Sunlight is the source of energy for nearly all ecosystems.", q.ChoiceTexts[q.Gold]);
        Assert.Equal(4, q.ChoiceTexts.Count);
        Assert.Equal("The producers in all ecosystems are plants.", q.ChoiceTexts[3]);
        Assert.Equal("Question: Which statement best explains why photosynthesis is the foundation of most food webs?\nAnswer:", q.Requests[0].Context);
        Assert.Equal(" Sunlight is the source of energy for nearly all ecosystems.", q.Requests[0].Continuation);
    }

    [TaskDataFact]
    public void HandCheckedRecords_OfTheOtherTasks()
    {
        string root = TaskDataFolder.Path!;
        var arcC = TaskInstances.Build(TaskLibrary.Load("arc_challenge"), root, null, 0, 1234, 1).Choice[0];
        Assert.Equal("Planetary days will become shorter.", arcC.ChoiceTexts[arcC.Gold]);
        var piqa = TaskInstances.Build(TaskLibrary.Load("piqa"), root, null, 0, 1234, 2).Choice;
        Assert.StartsWith("Provide the guinea pig with a cage full of a few inches of bedding made of ripped paper strips", piqa[0].ChoiceTexts[piqa[0].Gold]);
        Assert.Equal("Question: dresser\nAnswer:", piqa[1].Requests[0].Context);
        Assert.Equal(["replace drawer with bobby pin", "finish, woodgrain with  bobby pin"], piqa[1].ChoiceTexts); // trimmed, inner spaces kept
        Assert.Equal(1, piqa[1].Gold);
        var siqa = TaskInstances.Build(TaskLibrary.Load("siqa"), root, null, 0, 1234, 1).Choice[0];
        Assert.Equal("Find somewhere to go", siqa.ChoiceTexts[siqa.Gold]);
        Assert.StartsWith("Q: Tracy didn't go home that evening", siqa.Requests[0].Context);
        Assert.EndsWith("What does Tracy need to do before this?\nA:", siqa.Requests[0].Context);
        var boolq = TaskInstances.Build(TaskLibrary.Load("boolq"), root, null, 0, 1234, 2).Choice;
        Assert.Equal(("Question: does ethanol take more energy make that produces?\nAnswer:", " no"), boolq[0].Requests[boolq[0].Gold]);
        Assert.Equal(" yes", boolq[1].Requests[boolq[1].Gold].Continuation);
        var wino = TaskInstances.Build(TaskLibrary.Load("winogrande"), root, null, 0, 1234, 1).Choice[0];
        Assert.Equal(1, wino.Gold);
        Assert.Equal(("Sarah was a much better surgeon than Maria so Maria", " always got the easier cases."), wino.Requests[wino.Gold]);
        var gsm = TaskInstances.Build(TaskLibrary.Load("gsm8k"), root, null, 0, 1234, 1).Generate[0];
        Assert.Equal("576.0", gsm.Reference);
        Assert.Contains("Mr Boarden is remodeling his bathroom.", gsm.Prompt);
        var aqua = TaskLibrary.Load("aqua");
        var aq = TaskInstances.Build(aqua, root, null, 0, 1234, 1).Generate[0];
        Assert.Equal("A", aq.Reference);
        // LLM-Adapters' own record output ends "The answer is (D)." against gold A: scored wrong, as their script would.
        Assert.False(AnswerExtraction.IsCorrect(aqua, AnswerExtraction.Extract(aqua, "The answer is (D)."), aq.Reference));
    }
}
