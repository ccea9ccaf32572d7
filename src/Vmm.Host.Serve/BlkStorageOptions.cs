using Vmm.Core.Posix.Storage;
using Vmm.Virtio.Devices.Blk;

namespace Vmm.Host.Cli;

/// <summary>
/// The storage choices of a blk device, spelt the same by <c>vmm serve blk --cache/--aio</c> and
/// <c>vmm run --device blk,cache=...,aio=...</c>: one parser for both.
/// </summary>
public static class BlkStorageOptions
{
    public const string CacheValues = "none, writeback or unsafe";

    public const string AioValues = "auto, io_uring, threads or inline";

    /// <summary>none | writeback | unsafe; <paramref name="context"/> names the option in the error.</summary>
    public static BlkCacheMode ParseCache(string? value, string context) => value switch
    {
        "none" => BlkCacheMode.None,
        "writeback" => BlkCacheMode.Writeback,
        "unsafe" => BlkCacheMode.Unsafe,
        _ => throw new UsageException($"{context}: cache must be {CacheValues}, not '{value}'."),
    };

    /// <summary>auto | io_uring | threads | inline.</summary>
    public static AioMode ParseAio(string? value, string context) => value switch
    {
        "auto" => AioMode.Auto,
        "io_uring" => AioMode.IoUring,
        "threads" => AioMode.Threads,
        "inline" => AioMode.Inline,
        _ => throw new UsageException($"{context}: aio must be {AioValues}, not '{value}'."),
    };

    /// <summary>The spelling of <paramref name="mode"/> on the command line.</summary>
    public static string Name(BlkCacheMode mode) => mode switch
    {
        BlkCacheMode.None => "none",
        BlkCacheMode.Unsafe => "unsafe",
        _ => "writeback",
    };

    /// <summary>One line for a log: the disk, how it is opened and which engine runs.</summary>
    public static string Describe(VirtioBlkDevice device)
    {
        ArgumentNullException.ThrowIfNull(device);
        DiskFile disk = device.Disk;
        string kind = disk.IsBlockDevice ? "block device" : disk.IsRamBacked ? "image in RAM" : "image";
        return $"{disk.Path} ({kind}, {device.CapacitySectors * 512} bytes, {disk.LogicalBlockSize}-byte logical / {disk.PhysicalBlockSize}-byte physical blocks): " +
            $"cache={Name(device.Cache)}{(disk.Direct ? " (O_DIRECT)" : string.Empty)}, aio={device.Engine.Description}";
    }
}
