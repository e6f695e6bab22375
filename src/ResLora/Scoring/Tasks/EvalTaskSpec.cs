using System.Text.RegularExpressions;

namespace ResLora.Scoring.Tasks;

/// <summary>How a task is scored: by the log-likelihood of each choice, or by generating and extracting an answer.</summary>
public enum TaskOutputType
{
    /// <summary>lm-evaluation-harness's <c>multiple_choice</c>: each choice is a continuation scored by summed log-likelihood.</summary>
    MultipleChoice,

    /// <summary>LLM-Adapters' protocol: greedy generation from a prompt, an extraction rule, and a comparison with the reference.</summary>
    Generate,
}

/// <summary>How the context and continuation of a multiple-choice request are cut.</summary>
public enum ChoiceScoring
{
    /// <summary>Context = the rendered template; continuation = target delimiter + the choice (lm-eval's default).</summary>
    Full,

    /// <summary>
    /// WinoGrande's partial scoring (lm-eval's <c>preprocess_winogrande.py</c>): one context per choice, the rendered text
    /// up to the blank with the choice substituted; one continuation shared by all choices, the text after the blank,
    /// stripped, preceded by the target delimiter.
    /// </summary>
    Partial,
}

/// <summary>How a generated answer is read out of the model's text (LLM-Adapters' <c>extract_answer*</c> rules).</summary>
public enum ExtractionRule
{
    /// <summary>The first match of <see cref="EvalTaskSpec.ExtractPattern"/> (e.g. <c>answer1|answer2</c>), compared with the reference as a string.</summary>
    FirstMatch,

    /// <summary>Commas removed, the last match of <c>-?\d+\.?\d*</c>, correct when within <see cref="EvalTaskSpec.Tolerance"/> of the reference.</summary>
    LastNumber,
}

/// <summary>
/// One evaluation task as data (a task file, <c>docs/evaluation-tasks.md</c>): where its records are, how a record
/// becomes a context and choices (or a prompt and a reference), and how answers are scored. Read by
/// <see cref="TaskLibrary"/>, turned into requests by <see cref="TaskInstances"/>. Field names are the file's snake_case keys.
/// </summary>
public sealed record EvalTaskSpec
{
    /// <summary>Where the task came from (<c>builtin task arc_easy</c>, or the file's path): every error names it.</summary>
    public required string Source { get; init; }

    /// <summary><c>name</c>: the task's name in tables and results.</summary>
    public required string Name { get; init; }

    /// <summary><c>description</c>: one or two sentences for humans.</summary>
    public string Description { get; init; } = "";

    /// <summary><c>output_type</c>: <c>multiple_choice</c> or <c>generate</c>.</summary>
    public required TaskOutputType OutputType { get; init; }

    /// <summary><c>data</c>: the test file, relative to the data root (e.g. <c>ARC-Easy/test.json</c>); a JSON array or JSON Lines of objects.</summary>
    public required string Data { get; init; }

    /// <summary><c>parse_field</c>: the record field that <see cref="ParsePattern"/> reads (default <c>instruction</c>).</summary>
    public string ParseField { get; init; } = "instruction";

    /// <summary>
    /// <c>parse_pattern</c>: a regex (whole-field match, <c>.</c> matches newlines) whose named groups become template
    /// values (<c>{question}</c>); the group <c>choices</c> is split by <see cref="ChoiceSplit"/> into the choices.
    /// Null: templates read record fields directly.
    /// </summary>
    public Regex? ParsePattern { get; init; }

    /// <summary><c>choice_split</c>: a regex that separates the choices inside the <c>choices</c> group (e.g. <c>\s*Answer\d+: </c>); pieces are trimmed, the empty piece before the first separator dropped.</summary>
    public Regex? ChoiceSplit { get; init; }

    /// <summary><c>choices_field</c>: a record field holding the choices as a JSON array of strings (for data that keeps them apart).</summary>
    public string? ChoicesField { get; init; }

    /// <summary><c>choices</c>: the same choices for every record (e.g. BoolQ's <c>["no", "yes"]</c>).</summary>
    public IReadOnlyList<string>? Choices { get; init; }

    /// <summary><c>context_template</c>: the context of a multiple-choice request, e.g. <c>Question: {question}\nAnswer:</c>; <c>{{</c> and <c>}}</c> are literal braces.</summary>
    public string? ContextTemplate { get; init; }

    /// <summary><c>target_delimiter</c>: between the context and a choice (lm-eval's default: one space).</summary>
    public string TargetDelimiter { get; init; } = " ";

    /// <summary><c>fewshot_delimiter</c>: between few-shot examples and before the question (lm-eval's default: a blank line).</summary>
    public string FewshotDelimiter { get; init; } = "\n\n";

    /// <summary><c>gold_field</c>: the record field naming the correct choice (default <c>answer</c>).</summary>
    public string GoldField { get; init; } = "answer";

    /// <summary><c>gold_pattern</c>: a regex whose first group is the choice number in <see cref="GoldField"/> (e.g. <c>^answer(\d+)$</c>).</summary>
    public Regex? GoldPattern { get; init; }

    /// <summary><c>gold_base</c>: what the first choice is numbered in the data (1 for <c>answer1</c>, 0 for lm-eval labels; default 0).</summary>
    public int GoldBase { get; init; }

    /// <summary><c>gold_map</c>: gold values to choice indices (e.g. <c>{"false": 0, "true": 1}</c>); checked before <see cref="GoldPattern"/>.</summary>
    public IReadOnlyDictionary<string, int>? GoldMap { get; init; }

    /// <summary><c>scoring</c>: <c>full</c> (default) or <c>partial</c> (WinoGrande).</summary>
    public ChoiceScoring Scoring { get; init; } = ChoiceScoring.Full;

    /// <summary><c>blank</c>: the placeholder that partial scoring substitutes (default <c>_</c>).</summary>
    public string Blank { get; init; } = "_";

    /// <summary><c>prompt_template</c>: the generation prompt of a record whose <c>input</c> field is empty or absent.</summary>
    public string? PromptTemplate { get; init; }

    /// <summary><c>prompt_template_with_input</c>: the generation prompt when the record's <c>input</c> field is not empty (defaults to <see cref="PromptTemplate"/>).</summary>
    public string? PromptTemplateWithInput { get; init; }

    /// <summary><c>reference_field</c>: the record field holding a generate task's reference answer (default <c>answer</c>).</summary>
    public string ReferenceField { get; init; } = "answer";

    /// <summary><c>extraction</c>: <c>first_match</c> or <c>last_number</c>.</summary>
    public ExtractionRule Extraction { get; init; } = ExtractionRule.FirstMatch;

    /// <summary><c>extract_pattern</c>: the regex of <see cref="ExtractionRule.FirstMatch"/>, matched case-sensitively as LLM-Adapters does.</summary>
    public Regex? ExtractPattern { get; init; }

    /// <summary><c>tolerance</c>: how far a <see cref="ExtractionRule.LastNumber"/> answer may be from the reference (LLM-Adapters: 0.001).</summary>
    public double Tolerance { get; init; } = 0.001;

    /// <summary><c>max_new_tokens</c>: the generation budget (LLM-Adapters: 32 for commonsense, 256 for math).</summary>
    public int MaxNewTokens { get; init; } = 32;

    /// <summary><c>metrics</c>: what to report; multiple choice: <c>acc</c>, <c>acc_norm</c>; generate: <c>acc</c>.</summary>
    public IReadOnlyList<string> Metrics { get; init; } = Array.Empty<string>();
}
