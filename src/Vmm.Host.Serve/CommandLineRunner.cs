using System.CommandLine;
using Vmm.Host.Cli;

namespace Vmm.Host.Serve;

/// <summary>
/// Parses and runs a command line the way every <c>vmm</c> program does (docs/cli.md, exit
/// codes): a parse error or a <see cref="UsageException"/> is one sentence on stderr and exit 2,
/// a <see cref="WorkloadFailedException"/> exit 1. <c>vmm</c> and <c>vmm-serve</c> both end here.
/// </summary>
public static class CommandLineRunner
{
    public static async Task<int> RunAsync(RootCommand root, string[] args)
    {
        ArgumentNullException.ThrowIfNull(root);
        ParseResult parsed = root.Parse(args);
        if (parsed.Errors.Count > 0)
        {
            // One sentence, exit 2 (docs/cli.md, exit codes); the full usage is one --help away.
            // Some parser messages span lines (a list of allowed values): keep them to one.
            string message = OneSentence.Of(parsed.Errors[0].Message);
            await Console.Error.WriteLineAsync($"vmm: {message} (see vmm --help)").ConfigureAwait(false);
            return ExitCodes.Usage;
        }

        try
        {
            // SIGINT/SIGTERM cancel the command's token; its clean end (a workload stopped, devices
            // reset over vhost-user, the actor system stopped) may take a few seconds on a loaded
            // machine, and a command still running after this long is ended with exit code 143.
            var invocation = new InvocationConfiguration { EnableDefaultExceptionHandler = false, ProcessTerminationTimeout = TimeSpan.FromSeconds(15) };
            return await parsed.InvokeAsync(invocation).ConfigureAwait(false);
        }
        catch (UsageException e)
        {
            await Console.Error.WriteLineAsync($"vmm: {OneSentence.Of(e.Message)}").ConfigureAwait(false);
            return ExitCodes.Usage;
        }
        catch (WorkloadFailedException e)
        {
            await Console.Error.WriteLineAsync($"vmm: {OneSentence.Of(e.Message)}").ConfigureAwait(false);
            return ExitCodes.WorkloadFailed;
        }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            // The last guard: whatever a peer made some layer throw ends the command with one
            // sentence and exit code 1, never an abort with a stack trace (docs/cli.md, "Exit codes").
            await Console.Error.WriteLineAsync($"vmm: failed: {OneSentence.Of(e.Message)} ({e.GetType().Name})").ConfigureAwait(false);
            return ExitCodes.WorkloadFailed;
        }
    }
}
