using Vmm.Core.Posix.Storage;
using Vmm.Virtio.Devices.Blk;

namespace Vmm.Host.Cli;

/// <summary>
/// An in-process device: <c>--device blk,disk=FILE[,read-only][,queues=N][,queue-size=N][,cache=MODE][,aio=MODE]</c>
/// or <c>--device rng</c>.
/// </summary>
public sealed record DeviceSpec(string Kind, string? Disk, bool ReadOnly, int Queues, ushort QueueSize)
{
    /// <summary>blk: <c>cache=none|writeback|unsafe</c> (as <c>vmm serve blk --cache</c>).</summary>
    public BlkCacheMode Cache { get; init; } = BlkCacheMode.Writeback;

    /// <summary>blk: <c>aio=auto|io_uring|threads|inline</c> (as <c>vmm serve blk --aio</c>).</summary>
    public AioMode Aio { get; init; } = AioMode.Auto;

    public static DeviceSpec Parse(string text)
    {
        string[] parts = text.Split(',', StringSplitOptions.TrimEntries);
        string kind = parts[0];
        if (kind is not ("blk" or "rng"))
        {
            throw new UsageException($"--device '{text}': the device kind must be blk or rng.");
        }

        string? disk = null;
        bool readOnly = false;
        int queues = 1;
        ushort queueSize = 256;
        BlkCacheMode cache = BlkCacheMode.Writeback;
        AioMode aio = AioMode.Auto;
        foreach (string part in parts.Skip(1))
        {
            (string key, string? value) = SplitOption(part);
            switch (key)
            {
                case "disk" when kind == "blk" && !string.IsNullOrEmpty(value):
                    disk = value;
                    break;
                case "read-only" or "readonly" when kind == "blk":
                    readOnly = value is null || ParseBool(value, text, key);
                    break;
                case "queues" when kind == "blk":
                    queues = ParseInt(value, text, key, 1, 64);
                    break;
                case "cache" when kind == "blk":
                    cache = BlkStorageOptions.ParseCache(value, $"--device '{text}'");
                    break;
                case "aio" when kind == "blk":
                    aio = BlkStorageOptions.ParseAio(value, $"--device '{text}'");
                    break;
                case "queue-size":
                    queueSize = (ushort)ParseInt(value, text, key, 2, 32768);
                    break;
                default:
                    throw new UsageException($"--device '{text}': unknown or incomplete option '{part}'.");
            }
        }

        if (kind == "blk" && disk is null)
        {
            throw new UsageException($"--device '{text}': a blk device needs disk=FILE.");
        }

        return new DeviceSpec(kind, disk, readOnly, queues, queueSize) { Cache = cache, Aio = aio };
    }

    internal static (string Key, string? Value) SplitOption(string part)
    {
        int eq = part.IndexOf('=', StringComparison.Ordinal);
        return eq < 0 ? (part, null) : (part[..eq], part[(eq + 1)..]);
    }

    internal static int ParseInt(string? value, string text, string key, int min, int max)
    {
        if (value is null || !int.TryParse(value, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int n) || n < min || n > max)
        {
            throw new UsageException($"'{text}': {key} must be a whole number from {min} to {max}.");
        }

        return n;
    }

    internal static bool ParseBool(string value, string text, string key) => value switch
    {
        "on" or "true" or "yes" or "1" => true,
        "off" or "false" or "no" or "0" => false,
        _ => throw new UsageException($"'{text}': {key} must be on or off."),
    };
}
