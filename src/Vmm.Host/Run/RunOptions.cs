using Vmm.Virtio.Driver;
using Vmm.Virtio.Machine;

namespace Vmm.Host.Run;

public enum RunWorkload
{
    Verify,
    Checksum,
    Bench,
    Probe,
    Idle,
    Fs,
    FsVerify,
    Net,
}

public enum ReadWriteMix
{
    RandRead,
    RandWrite,
    Read,
    Write,
    RandRw,
}

/// <summary>Everything <c>vmm run</c> was asked to do, validated.</summary>
public sealed record RunOptions
{
    public required IReadOnlyList<IDeviceSource> Devices { get; init; }

    public ulong MemorySize { get; init; } = 256UL << 20;

    public VirtioTransportKind Transport { get; init; } = VirtioTransportKind.Pci;

    public GuestInterruptDelivery Delivery { get; init; } = GuestInterruptDelivery.FunctionBacked;

    public RunWorkload Workload { get; init; } = RunWorkload.Verify;

    public int Seconds { get; init; } = 10;

    public int IoDepth { get; init; } = 32;

    public int BlockSize { get; init; } = 4096;

    public ReadWriteMix Mix { get; init; } = ReadWriteMix.RandRead;

    public bool Json { get; init; }

    /// <summary>Per-queue figures on stderr each second (<c>--stats</c>).</summary>
    public bool Stats { get; init; }

    public bool PackedRing { get; init; }

    public bool EventIndex { get; init; } = true;

    public bool IndirectDescriptors { get; init; } = true;

    /// <summary><c>--frames N</c>: frames the net workload sends.</summary>
    public int Frames { get; init; } = 10_000;

    /// <summary>Negotiate VIRTIO_NET_F_MRG_RXBUF when offered (<c>--no-mrg-rxbuf</c> turns it off).</summary>
    public bool MergeableRxBuffers { get; init; } = true;

    /// <summary><c>--save</c>/<c>--restore</c> (docs/save-restore.md); null when neither was given.</summary>
    public SaveRestoreSettings? SaveRestore { get; init; }

    public static string Name(ReadWriteMix mix) => mix.ToString().ToLowerInvariant();

    public static string Name(VirtioTransportKind kind) => kind.ToString().ToLowerInvariant();
}
