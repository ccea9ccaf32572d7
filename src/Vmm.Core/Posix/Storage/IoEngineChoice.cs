using Vmm.Core.Posix.IoUring;

namespace Vmm.Core.Posix.Storage;

/// <summary>How a disk's requests are carried out (<c>--aio</c>).</summary>
public enum AioMode
{
    /// <summary>inline for an image in RAM; io_uring for direct I/O where the kernel allows it; threads otherwise.</summary>
    Auto,

    /// <summary>io_uring, or an error where it is unavailable.</summary>
    IoUring,

    /// <summary>A pool of threads blocking in preadv / pwritev.</summary>
    Threads,

    /// <summary>On the queue's worker, one request at a time.</summary>
    Inline,
}

/// <summary>
/// The engine a disk's queues use: chosen once when the disk is opened, one engine created per
/// queue as it starts. <see cref="Description"/> is the one line a server logs about it.
/// </summary>
public sealed class IoEngineChoice
{
    private IoEngineChoice(IoEngineKind kind, string description)
    {
        Kind = kind;
        Description = description;
    }

    public IoEngineKind Kind { get; }

    /// <summary>What runs and why, e.g. "io_uring" or "threads (io_uring unavailable: ...)".</summary>
    public string Description { get; }

    /// <summary>
    /// Picks the engine for <paramref name="disk"/>. <paramref name="ioUring"/> is the probe
    /// result (<see cref="IoUringSupport.Availability"/>; tests pass their own). Throws
    /// <see cref="IOException"/> when io_uring is asked for and unavailable.
    /// </summary>
    public static IoEngineChoice Select(AioMode mode, DiskFile disk, IoUringAvailability ioUring)
    {
        ArgumentNullException.ThrowIfNull(disk);
        ArgumentNullException.ThrowIfNull(ioUring);
        switch (mode)
        {
            case AioMode.Inline:
                return new IoEngineChoice(IoEngineKind.Inline, "inline");
            case AioMode.Threads:
                return new IoEngineChoice(IoEngineKind.Threads, "threads");
            case AioMode.IoUring:
                return ioUring.Available
                    ? new IoEngineChoice(IoEngineKind.IoUring, "io_uring")
                    : throw new IOException($"io_uring is not available: {ioUring.Reason}.");
            case AioMode.Auto:
                if (disk.IsRamBacked)
                {
                    // A transfer from tmpfs is a memory copy: fastest on the worker itself (docs/performance.md).
                    return new IoEngineChoice(IoEngineKind.Inline, "inline (the image is in RAM)");
                }

                if (!disk.Direct)
                {
                    // Through the page cache io_uring first tries each read without blocking; large
                    // reads in flight together then miss the cache, defeat readahead and retry over
                    // and over (sequential 128 KiB reads at depth 8: a tenth of the threads' rate at
                    // ten times the CPU, docs/performance.md). Threads block in preadv, as
                    // qemu-storage-daemon's default engine does, and hold up in every pattern.
                    return new IoEngineChoice(IoEngineKind.Threads, "threads (through the page cache)");
                }

                return ioUring.Available
                    ? new IoEngineChoice(IoEngineKind.IoUring, "io_uring")
                    : new IoEngineChoice(IoEngineKind.Threads, $"threads (io_uring unavailable: {ioUring.Reason})");
            default:
                throw new ArgumentOutOfRangeException(nameof(mode), mode, "Unknown aio mode.");
        }
    }

    /// <summary>A new engine of this kind for one queue of at most <paramref name="depth"/> requests.</summary>
    public IIoEngine Create(DiskFile disk, int depth, string name) => Kind switch
    {
        IoEngineKind.Inline => new InlineIoEngine(disk),
        IoEngineKind.Threads => new ThreadPoolIoEngine(disk, Math.Min(depth, ThreadPoolIoEngine.DefaultMaxThreads), name),
        IoEngineKind.IoUring => new IoUringIoEngine(disk, depth),
        _ => throw new InvalidOperationException($"Unknown engine {Kind}."),
    };
}
