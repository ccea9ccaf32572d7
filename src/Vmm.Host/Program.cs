using System.CommandLine;
using Vmm.Host.Cli;
using Vmm.Host.Demo;
using Vmm.Host.Run;
using Vmm.Host.Serve;

namespace Vmm.Host;

public static class Program
{
    public static async Task<int> Main(string[] args)
    {
        RootCommand root = CreateRootCommand();
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

    public static RootCommand CreateRootCommand()
    {
        var root = new RootCommand("ManagedVmm: a VMM device layer built around vhost-user.")
        {
            RunCommand.Create(),
            ServeCommand.Create(),
            DemoCommand.Create(),
            Check.CheckBackendCommand.Create(),
        };
        return root;
    }
}
