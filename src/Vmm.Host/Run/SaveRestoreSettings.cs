using System.CommandLine;
using Vmm.Host.Cli;

namespace Vmm.Host.Run;

/// <summary>
/// <c>vmm run --save FILE [--save-after N] [--live]</c> and <c>--restore FILE</c> (docs/save-restore.md, docs/migration.md).
/// Kept apart from the rest of <c>run</c>'s options so the two evolve without touching each other.
/// </summary>
public sealed record SaveRestoreSettings(string? SavePath, long? SaveAfter, string? RestorePath)
{
    /// <summary>Pre-copy rounds end once a round copied at most this many pages (--live-threshold).</summary>
    public const int DefaultLiveThreshold = 64;

    /// <summary>At most this many pre-copy rounds after the full copy (--live-rounds).</summary>
    public const int DefaultLiveMaxRounds = 8;

    private static readonly Option<bool> s_live = new("--live")
    {
        Description = "With --save: pre-copy guest memory while verify runs (rounds of dirty pages), then stop and copy the rest.",
    };

    private static readonly Option<int?> s_liveThreshold = new("--live-threshold")
    {
        Description = $"With --live: stop once a round copied at most this many 4 KiB pages (default {DefaultLiveThreshold}).",
    };

    private static readonly Option<int?> s_liveRounds = new("--live-rounds")
    {
        Description = $"With --live: at most this many rounds after the full copy (default {DefaultLiveMaxRounds}).",
    };

    /// <summary>--live: the save pre-copies memory while the workload runs (docs/migration.md).</summary>
    public bool Live { get; init; }

    public int LiveThreshold { get; init; } = DefaultLiveThreshold;

    public int LiveMaxRounds { get; init; } = DefaultLiveMaxRounds;

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
        command.Options.Add(s_live);
        command.Options.Add(s_liveThreshold);
        command.Options.Add(s_liveRounds);
    }

    /// <summary>Adds the settings to <paramref name="options"/> when any of the options was given, and checks they fit.</summary>
    public static RunOptions Apply(ParseResult result, RunOptions options)
    {
        ArgumentNullException.ThrowIfNull(result);
        ArgumentNullException.ThrowIfNull(options);
        string? save = result.GetValue(s_save);
        long? after = result.GetValue(s_saveAfter);
        string? restore = result.GetValue(s_restore);
        bool live = result.GetValue(s_live);
        int? threshold = result.GetValue(s_liveThreshold);
        int? rounds = result.GetValue(s_liveRounds);
        if (save is null && after is null && restore is null && !live && threshold is null && rounds is null)
        {
            return options;
        }

        var settings = new SaveRestoreSettings(save, after, restore)
        {
            Live = live,
            LiveThreshold = threshold ?? DefaultLiveThreshold,
            LiveMaxRounds = rounds ?? DefaultLiveMaxRounds,
        };
        if (!live && (threshold is not null || rounds is not null))
        {
            throw new UsageException("--live-threshold and --live-rounds need --live.");
        }

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

        if (Live && SavePath is null)
        {
            throw new UsageException("--live needs --save FILE.");
        }

        if (LiveThreshold < 0)
        {
            throw new UsageException("--live-threshold must not be negative.");
        }

        if (LiveMaxRounds is < 1 or > 1000)
        {
            throw new UsageException("--live-rounds must be from 1 to 1000.");
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
