using Vmm.Core.Memory;
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
        // In nuint: a queue's part is up to a few MiB and there may be thousands of queues, so
        // the offset of the last one need not fit an int.
        nuint regionSize = (nuint)QueueRegionSize(queueSize);
        for (int i = 0; i < queueCount; i++)
        {
            byte* queueBase = mapping.Address + ((nuint)i * regionSize);
            _queues[i] = new SplitInflightQueue(queueBase, queueSize);
            _packedQueues[i] = new PackedInflightQueue(queueBase, queueSize);
        }
    }

    /// <summary>The memfd behind the region (owned by it).</summary>
    public SafeFileDescriptor Fd { get; }

    /// <summary>True when the file cannot shrink: ours always (<see cref="MemFd.Create"/> seals it), a front-end's when it was sealable.</summary>
    public bool IsSealed => !_mapping.IsGuarded;

    public ulong MmapSize { get; }

    /// <summary>The bytes mapped here: what the queues use, never more than the front-end's mmap_size.</summary>
    public ulong MappedSize => _mapping.Length;

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
    /// each ring starts, not trusted blindly. The file is sealed against shrinking where it can
    /// be (the memfd GET_INFLIGHT_FD handed out already is); where it cannot,
    /// <paramref name="unsealed"/> decides, and under the SIGBUS guard <paramref name="onTruncated"/>
    /// is called when the front-end truncated it.
    /// </summary>
    public static InflightRegion Open(
        SafeFileDescriptor fd, ulong mmapSize, ulong mmapOffset, ushort queueCount, ushort queueSize,
        UnsealedMemoryPolicy unsealed, Action onTruncated)
    {
        ArgumentNullException.ThrowIfNull(fd);
        ArgumentNullException.ThrowIfNull(onTruncated);
        try
        {
            Validate(queueCount, queueSize);
            ulong needed = QueueRegionSize(queueSize) * queueCount;
            if (mmapSize < needed)
            {
                throw new ArgumentException($"An inflight region of {mmapSize} bytes is too small for {queueCount} queues of {queueSize} ({needed} bytes needed).");
            }

            bool sealedFile = MemFd.TrySealAgainstShrinking(fd);
            ulong fileSize = MemFd.GetFileSize(fd);
            if (mmapOffset > fileSize || mmapSize > fileSize - mmapOffset)
            {
                throw new ArgumentException($"The inflight region [{mmapOffset}, +{mmapSize}) lies beyond the end of its file ({fileSize} bytes).");
            }

            // Only the bytes the queues use are mapped: mmap_size is the front-end's to choose,
            // and a huge one must not cost address space here.
            SharedMapping mapping;
            if (sealedFile)
            {
                mapping = SharedMapping.Map(fd, mmapOffset, needed);
            }
            else if (unsealed == UnsealedMemoryPolicy.Refuse || SigbusGuard.UnavailableReason is not null)
            {
                throw new ArgumentException(
                    $"The inflight region is backed by {FileDescriptors.Describe(fd)}, which is not sealed against shrinking and cannot be sealed now" +
                    (unsealed == UnsealedMemoryPolicy.Refuse ? ", and unsealed memory is refused." : $", and it cannot be guarded: {SigbusGuard.UnavailableReason}."));
            }
            else
            {
                try
                {
                    mapping = SharedMapping.MapGuarded(fd, mmapOffset, needed, onTruncated);
                }
                catch (InvalidOperationException e)
                {
                    // Every guard slot is in use.
                    throw new ArgumentException($"The inflight region cannot be guarded: {e.Message}", e);
                }
            }

            return new InflightRegion(fd, mapping, mmapSize, mmapOffset, queueCount, queueSize);
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
