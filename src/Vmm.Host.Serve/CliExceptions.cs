namespace Vmm.Host.Cli;

/// <summary>Bad usage or an unreachable resource: one sentence on stderr, exit code 2 (docs/cli.md, "Exit codes").</summary>
public sealed class UsageException : Exception
{
    public UsageException(string message) : base(message)
    {
    }

    public UsageException(string message, Exception inner) : base(message, inner)
    {
    }
}

/// <summary>The workload ran and failed (verify mismatch, device error): one sentence on stderr, exit code 1.</summary>
public sealed class WorkloadFailedException : Exception
{
    public WorkloadFailedException(string message) : base(message)
    {
    }

    public WorkloadFailedException(string message, Exception inner) : base(message, inner)
    {
    }
}

public static class ExitCodes
{
    public const int Success = 0;
    public const int WorkloadFailed = 1;
    public const int Usage = 2;
}

/// <summary>Every message <c>vmm</c> ends with is one line: a peer's or a parser's text may hold line breaks and tabs.</summary>
public static class OneSentence
{
    public static string Of(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        return string.Join(' ', text.Split((char[])['\n', '\r', '\t'], StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries));
    }
}
