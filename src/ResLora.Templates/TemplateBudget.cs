using System.Diagnostics;
using System.Runtime.CompilerServices;

namespace ResLora.Templates;

/// <summary>
/// What one chat template may cost. Templates come from downloaded <c>tokenizer_config.json</c> files, so they are
/// untrusted input: a template that nests too deep, runs too long or builds too much text ends with a
/// <see cref="TemplateException"/> naming the limit, instead of a stack overflow, a hang or gigabytes of memory.
/// The defaults are far above what published templates use (they render in well under a millisecond, nest a few
/// levels and emit a few KB); docs/chat-templates.md ("Template budgets") lists them.
/// </summary>
public sealed record TemplateBudget
{
    /// <summary>The limits every template gets unless its caller gives others.</summary>
    public static TemplateBudget Default { get; } = new();

    /// <summary>
    /// How deep the template may nest: blocks and brackets in its source (checked when parsing), expressions and
    /// statements while rendering, and lists, dicts and namespaces inside one another when printed, compared or
    /// turned to JSON.
    /// </summary>
    public int MaxDepth { get; init; } = 256;

    /// <summary>
    /// Evaluation steps per render: one per statement, expression and loop iteration, plus one per 64 characters or
    /// items of every string or list the template builds (so building text counts as work too). A ten-message
    /// conversation takes a few thousand; two million take this engine about a second.
    /// </summary>
    public long MaxSteps { get; init; } = 2_000_000;

    /// <summary>Wall time per render.</summary>
    public TimeSpan MaxRenderTime { get; init; } = TimeSpan.FromSeconds(5);

    /// <summary>The longest string (in UTF-16 characters) or list (in items) one operation may produce.</summary>
    public int MaxValueLength { get; init; } = 16_000_000;

    /// <summary>The rendered text's length in UTF-16 characters (32 M characters = 64 MB).</summary>
    public long MaxOutputLength { get; init; } = 32_000_000;

    /// <summary>Steps charged per character or item a template builds (see <see cref="MaxSteps"/>).</summary>
    internal const int CharsPerStep = 64;

    /// <summary>Rejects limits that are not positive.</summary>
    /// <exception cref="ArgumentOutOfRangeException">A limit is zero or negative.</exception>
    public TemplateBudget Validate()
    {
        if (MaxDepth < 1) throw new ArgumentOutOfRangeException(nameof(MaxDepth), MaxDepth, "TemplateBudget.MaxDepth must be at least 1.");
        if (MaxSteps < 1) throw new ArgumentOutOfRangeException(nameof(MaxSteps), MaxSteps, "TemplateBudget.MaxSteps must be at least 1.");
        if (MaxRenderTime <= TimeSpan.Zero) throw new ArgumentOutOfRangeException(nameof(MaxRenderTime), MaxRenderTime, "TemplateBudget.MaxRenderTime must be positive.");
        if (MaxValueLength < 1) throw new ArgumentOutOfRangeException(nameof(MaxValueLength), MaxValueLength, "TemplateBudget.MaxValueLength must be at least 1.");
        if (MaxOutputLength < 1) throw new ArgumentOutOfRangeException(nameof(MaxOutputLength), MaxOutputLength, "TemplateBudget.MaxOutputLength must be at least 1.");
        return this;
    }
}

/// <summary>
/// Counts one render's cost against its <see cref="TemplateBudget"/>. The renderer installs it for the current thread
/// while it runs, because the value operations it calls (printing, comparing, JSON, string methods) are static
/// functions many calls deep; threading a meter through each of them would change every signature for one check. A
/// limit hit here throws <see cref="TemplateRuntimeException"/>, which the renderer turns into a
/// <see cref="TemplateException"/> with the template's name and line.
/// </summary>
internal sealed class TemplateMeter
{
    [ThreadStatic] private static TemplateMeter? t_current;

    private readonly long _startTicks = Stopwatch.GetTimestamp();
    private readonly long _maxTicks;
    private long _steps;
    private long _nextClockCheck;
    private int _depth;

    public TemplateMeter(TemplateBudget budget)
    {
        Budget = budget;
        _maxTicks = (long)Math.Min(budget.MaxRenderTime.TotalSeconds * Stopwatch.Frequency, long.MaxValue / 2);
    }

    public TemplateBudget Budget { get; }

    /// <summary>
    /// The meter of the render running on this thread; outside a render (a value helper called on its own) a fresh
    /// default one, so only the size limits and the stack check apply there.
    /// </summary>
    public static TemplateMeter Current => t_current ?? new TemplateMeter(TemplateBudget.Default);

    /// <summary>Makes this meter the thread's current one until the returned scope is disposed.</summary>
    public Scope Install()
    {
        var previous = t_current;
        t_current = this;
        return new Scope(previous);
    }

    public readonly struct Scope : IDisposable
    {
        private readonly TemplateMeter? _previous;

        public Scope(TemplateMeter? previous) => _previous = previous;

        public void Dispose() => t_current = _previous;
    }

    /// <summary>Counts <paramref name="steps"/> evaluation steps, and looks at the clock every thousand or so.</summary>
    public void Step(long steps = 1)
    {
        _steps += steps;
        if (_steps > Budget.MaxSteps)
            throw new TemplateRuntimeException($"the template exceeded its budget of {Budget.MaxSteps:N0} evaluation steps (TemplateBudget.MaxSteps); it loops or builds text far more than a chat template needs");
        if (_steps < _nextClockCheck) return;
        _nextClockCheck = _steps + 1024;
        if (Stopwatch.GetTimestamp() - _startTicks > _maxTicks)
            throw new TemplateRuntimeException($"the template ran longer than its budget of {Budget.MaxRenderTime.TotalSeconds:0.###} s (TemplateBudget.MaxRenderTime)");
    }

    /// <summary>Enters one nesting level (an expression, a statement, a value inside a value); pair with <see cref="Exit"/>.</summary>
    public void Enter()
    {
        if (++_depth > Budget.MaxDepth || !RuntimeHelpers.TryEnsureSufficientExecutionStack())
        {
            _depth--;
            throw new TemplateRuntimeException($"the template nests deeper than its budget of {Budget.MaxDepth} levels (TemplateBudget.MaxDepth)");
        }
    }

    public void Exit() => _depth--;

    /// <summary>
    /// Refuses a string or list of <paramref name="length"/> (computed by the caller without overflow, e.g. in
    /// <see cref="long"/> or checked) before it is built, and counts building it as work.
    /// </summary>
    public void Produce(long length, string what)
    {
        Limit(length, what);
        if (length >= TemplateBudget.CharsPerStep) Step(length / TemplateBudget.CharsPerStep);
    }

    /// <summary>
    /// <see cref="Produce"/> without counting the work: for a value checked as it grows, which calls
    /// <see cref="Produce"/> once with its final length.
    /// </summary>
    public void Limit(long length, string what)
    {
        if (length > Budget.MaxValueLength)
            throw new TemplateRuntimeException($"{what} would be {length:N0} long, over the budget of {Budget.MaxValueLength:N0} characters or items per value (TemplateBudget.MaxValueLength)");
    }

    /// <summary>Multiplies two non-negative lengths without wrapping: the product, or <see cref="long.MaxValue"/>.</summary>
    public static long SafeMultiply(long a, long b) => a == 0 || b <= long.MaxValue / a ? a * b : long.MaxValue;
}
