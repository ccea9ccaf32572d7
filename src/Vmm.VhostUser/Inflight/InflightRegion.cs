using Vmm.Core.Posix;

namespace Vmm.VhostUser.Inflight;

/// <summary>
/// The shared inflight-tracking buffer of vhost-user.rst, "Inflight I/O tracking": one region
/// per queue, laid out back to back. The back-end creates it (GET_INFLIGHT_FD), the front-end
/// keeps its fd and hands it back after a reconnect (SET_INFLIGHT_FD), so the back-end can
/// resubmit what was in flight when it died.
/// </summary>
/// <remarks>
/// Split queue region layout:
/// <code>
/// 0   u64 features      (0)
/// 8   u16 version       (1; 0 = never initialised)
/// 10  u16 desc_num      (queue size)
/// 12  u16 last_batch_head
/// 14  u16 used_idx
/// 16  DescStateSplit desc[desc_num], 16 bytes each:
///       +0 u8 inflight, +1 u8 padding[5], +6 u16 next, +8 u64 counter
/// </code>
/// Packed queues use the QueueRegionPacked layout instead (see <see cref="PackedInflightQueue"/>).
/// GET_INFLIGHT_FD can come before SET_FEATURES (QEMU sends it so), when the ring layout is not
/// known yet; so every queue region is sized for the larger of the two layouts, and which one
/// it holds is decided when the ring starts. Each queue region is rounded up to 64 bytes so
/// regions never share a cache line.
/// </remarks>
public sealed unsafe class InflightRegion : IDisposable
{
    public const int QueueHeaderSize = 16;
    public const int DescStateSize = 16;
    public const int Alignment = 64;
    public const ushort Version = 1;

    private readonly SharedMapping _mapping;
    private readonly SplitInflightQueue[] _queues;
    private readonly PackedInflightQueue[] _packedQueues;

    private InflightRegion(SafeFileDescriptor fd, SharedMapping mapping, ulong size, ulong offset, ushort queueCount, ushort queueSize)
    {
        Fd = fd;
        _mapping = mapping;
        MmapSize = size;
        MmapOffset = offset;
        QueueCount = queueCount;
        QueueSize = queueSize;
        _queues = new SplitInflightQueue[queueCount];
        _packedQueues = new PackedInflightQueue[queueCount];
        int regionSize = (int)QueueRegionSize(queueSize);
        for (int i = 0; i < queueCount; i++)
        {
            _queues[i] = new SplitInflightQueue(mapping.Address + (i * regionSize), queueSize);
            _packedQueues[i] = new PackedInflightQueue(mapping.Address + (i * regionSize), queueSize);
        }
    }

    /// <summary>The memfd behind the region (owned by it).</summary>
    public SafeFileDescriptor Fd { get; }

    public ulong MmapSize { get; }

    public ulong MmapOffset { get; }

    public ushort QueueCount { get; }

    public ushort QueueSize { get; }

    /// <summary>Bytes one queue needs in either layout (the packed one is larger), rounded up to <see cref="Alignment"/>.</summary>
    public static ulong QueueRegionSize(ushort queueSize) =>
        (Math.Max((ulong)QueueHeaderSize + ((ulong)DescStateSize * queueSize), PackedInflightQueue.RegionBytes(queueSize)) + (Alignment - 1)) & ~(ulong)(Alignment - 1);

    /// <summary>A new, zeroed region for <paramref name="queueCount"/> queues of <paramref name="queueSize"/> (GET_INFLIGHT_FD).</summary>
    public static InflightRegion Create(ushort queueCount, ushort queueSize)
    {
        Validate(queueCount, queueSize);
        ulong size = QueueRegionSize(queueSize) * queueCount;
        SafeFileDescriptor fd = MemFd.Create("vhost-user-inflight", size);
        try
        {
            // Left zeroed (version 0, "uninitialised"): each queue's tracker lays its region out in
            // the split or packed layout when its ring first starts (as libvhost-user does).
            return new InflightRegion(fd, SharedMapping.Map(fd, 0, size), size, 0, queueCount, queueSize);
        }
        catch
        {
            fd.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Maps a region a front-end handed back (SET_INFLIGHT_FD). Takes ownership of
    /// <paramref name="fd"/>, also when it throws. The content is checked queue by queue when
    /// each ring starts, not trusted blindly.
    /// </summary>
    public static InflightRegion Open(SafeFileDescriptor fd, ulong mmapSize, ulong mmapOffset, ushort queueCount, ushort queueSize)
    {
        try
        {
            Validate(queueCount, queueSize);
            ulong needed = QueueRegionSize(queueSize) * queueCount;
            if (mmapSize < needed)
            {
                throw new ArgumentException($"An inflight region of {mmapSize} bytes is too small for {queueCount} queues of {queueSize} ({needed} bytes needed).");
            }

            ulong fileSize = MemFd.GetFileSize(fd);
            if (mmapOffset > fileSize || mmapSize > fileSize - mmapOffset)
            {
                throw new ArgumentException($"The inflight region [{mmapOffset}, +{mmapSize}) lies beyond the end of its file ({fileSize} bytes).");
            }

            return new InflightRegion(fd, SharedMapping.Map(fd, mmapOffset, mmapSize), mmapSize, mmapOffset, queueCount, queueSize);
        }
        catch
        {
            fd.Dispose();
            throw;
        }
    }

    /// <summary>The tracker of queue <paramref name="index"/>.</summary>
    public SplitInflightQueue Queue(int index) => _queues[index];

    /// <summary>The tracker of queue <paramref name="index"/> when its ring is packed (same bytes, packed layout).</summary>
    public PackedInflightQueue PackedQueue(int index) => _packedQueues[index];

    public void Dispose()
    {
        _mapping.Dispose();
        Fd.Dispose();
    }

    private static void Validate(ushort queueCount, ushort queueSize)
    {
        if (queueCount == 0 || queueSize == 0)
        {
            throw new ArgumentException("An inflight region needs at least one queue of at least one descriptor.");
        }
    }
}
