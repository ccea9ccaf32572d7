using System.CommandLine;
using Vmm.Host.Cli;

namespace Vmm.Host.Run;

/// <summary>
/// <c>vmm run --save FILE [--save-after N]</c> and <c>--restore FILE</c> (docs/save-restore.md).
/// Kept apart from the rest of <c>run</c>'s options so the two evolve without touching each other.
/// </summary>
public sealed record SaveRestoreSettings(string? SavePath, long? SaveAfter, string? RestorePath)
{
    private static readonly Option<string> s_save = new("--save")
    {
        Description = "verify: on SIGUSR1 (or after --save-after requests) drain and stop the queues, write a snapshot to FILE and exit 0.",
    };

    private static readonly Option<long?> s_saveAfter = new("--save-after")
    {
        Description = "With --save: save once this many verify requests (the writes, then the reads) have completed in total.",
    };

    private static readonly Option<string> s_restore = new("--restore")
    {
        Description = "Rebuild the VM from a snapshot FILE written by --save and resume its workload where it stopped.",
    };

    public static void AddOptions(Command command)
    {
        ArgumentNullException.ThrowIfNull(command);
        command.Options.Add(s_save);
        command.Options.Add(s_saveAfter);
        command.Options.Add(s_restore);
    }

    /// <summary>Adds the settings to <paramref name="options"/> when any of the options was given, and checks they fit.</summary>
    public static RunOptions Apply(ParseResult result, RunOptions options)
    {
        ArgumentNullException.ThrowIfNull(result);
        ArgumentNullException.ThrowIfNull(options);
        string? save = result.GetValue(s_save);
        long? after = result.GetValue(s_saveAfter);
        string? restore = result.GetValue(s_restore);
        if (save is null && after is null && restore is null)
        {
            return options;
        }

        var settings = new SaveRestoreSettings(save, after, restore);
        settings.Validate(options);
        return options with { SaveRestore = settings };
    }

    internal void Validate(RunOptions options)
    {
        if (SaveAfter is not null && SavePath is null)
        {
            throw new UsageException("--save-after needs --save FILE.");
        }

        if (SaveAfter is < 0)
        {
            throw new UsageException("--save-after must not be negative.");
        }

        if (SavePath is not null && SavePath.Length == 0)
        {
            throw new UsageException("--save needs a file name.");
        }

        if (options.Workload != RunWorkload.Verify)
        {
            throw new UsageException("--save and --restore work with --workload verify.");
        }

        if (options.Devices.Count != 1 || options.Devices[0].Kind != "blk")
        {
            throw new UsageException("--save and --restore work with exactly one blk device.");
        }
    }
}
