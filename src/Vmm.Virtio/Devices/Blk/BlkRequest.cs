using System.Runtime.InteropServices;
using Vmm.Core.Posix.Storage;
using Vmm.Virtio.Metrics;
using Vmm.Virtio.Queues;
using Vmm.Virtio.Spec;

namespace Vmm.Virtio.Devices.Blk;

/// <summary>What a request in flight is doing, and so what its next operation is.</summary>
internal enum BlkRequestKind : byte
{
    /// <summary>IN or OUT: moves [Done, Total) between guest memory and the disk, one operation per chunk.</summary>
    Transfer,

    /// <summary>FLUSH: one fdatasync, after the writes it must cover.</summary>
    Flush,

    /// <summary>DISCARD or WRITE_ZEROES: the ranges in turn, each by the first method the disk supports.</summary>
    Ranges,
}

/// <summary>How one DISCARD / WRITE_ZEROES range is carried out; a plan tries them in order.</summary>
internal enum ZeroMethod : byte
{
    PunchHole,
    ZeroRange,
    Discard,
    ZeroOut,

    /// <summary>Writes zeroes from a shared buffer: always possible, the last resort of WRITE_ZEROES.</summary>
    WriteZeroes,

    /// <summary>Nothing: a DISCARD the disk cannot do is still a success (deallocation is optional, 5.2.6.2).</summary>
    Nothing,
}

/// <summary>
/// One virtio-blk request between its pop and its completion: the chain, where its status goes,
/// its scatter/gather list as host iovecs, and how far it got. Pooled per queue; the native
/// arrays it owns grow to the largest request seen and are freed with the queue.
/// </summary>
internal sealed unsafe class BlkRequest : IDisposable
{
    public const int MaxRanges = 8;

    private int _vectorCapacity;
    private int _windowCapacity;

    public DescriptorChain Chain { get; set; } = null!;

    public ulong StatusAddress { get; set; }

    /// <summary>When it was popped, for the latency histogram (0: not timed).</summary>
    public long StartedAt { get; set; }

    /// <summary>Its direction for the metrics (IN, OUT, anything else).</summary>
    public RequestDirection Direction { get; set; }

    public BlkRequestKind Kind { get; set; }

    public byte Status { get; set; }

    /// <summary>Bytes placed in the driver's buffers (IN), reported in the used element with the status byte.</summary>
    public uint DataWritten { get; set; }

    /// <summary>Counts towards the writes a later FLUSH must wait for (OUT, DISCARD, WRITE_ZEROES).</summary>
    public bool IsWrite { get; set; }

    /// <summary>The write epoch this request belongs to (a FLUSH: the last epoch it covers).</summary>
    public long Epoch { get; set; }

    /// <summary>A FLUSH: earlier writes of its queue still in flight.</summary>
    public int WaitingFor { get; set; }

    /// <summary>The final fdatasync was issued (FLUSH; writethrough DISCARD / WRITE_ZEROES).</summary>
    public bool Synced { get; set; }

    /// <summary>DISCARD / WRITE_ZEROES in writethrough mode: fdatasync after the last range.</summary>
    public bool SyncAfter { get; set; }

    // Transfer state.
    public bool Read { get; set; }

    public bool Dsync { get; set; }

    public long Offset { get; set; }

    public ulong Total { get; set; }

    public ulong Done { get; set; }

    /// <summary>Bytes the operation in flight moves (a bounced or zero-filled chunk).</summary>
    public uint Chunk { get; set; }

    /// <summary>The guest buffers, in stream order.</summary>
    public IoVector* Vectors { get; private set; }

    public int VectorCount { get; set; }

    /// <summary>The vectors of the operation in flight when they are not <see cref="Vectors"/> itself.</summary>
    public IoVector* Window { get; private set; }

    /// <summary>An aligned buffer the transfer goes through because the guest's buffers are not aligned for O_DIRECT.</summary>
    public byte* Bounce { get; set; }

    // Ranges state.
    public VirtioBlkDiscardWriteZeroes[] Ranges { get; } = new VirtioBlkDiscardWriteZeroes[MaxRanges];

    public int RangeCount { get; set; }

    public int RangeIndex { get; set; }

    /// <summary>The methods to try for every range, in order; <see cref="Step"/> is the one in use.</summary>
    public ZeroMethod[] Plan { get; set; } = [];

    public int Step { get; set; }

    /// <summary>Bytes of the current range already zeroed by <see cref="ZeroMethod.WriteZeroes"/>.</summary>
    public ulong RangeDone { get; set; }

    /// <summary>Makes room for <paramref name="count"/> vectors (keeps the array if it is large enough).</summary>
    public void EnsureVectors(int count)
    {
        if (count > _vectorCapacity)
        {
            int capacity = Math.Max(count, Math.Max(4, _vectorCapacity * 2));
            Vectors = (IoVector*)NativeMemory.Realloc(Vectors, (nuint)(capacity * sizeof(IoVector)));
            _vectorCapacity = capacity;
        }
    }

    /// <summary>Makes room for <paramref name="count"/> window vectors.</summary>
    public void EnsureWindow(int count)
    {
        if (count > _windowCapacity)
        {
            int capacity = Math.Max(count, 1);
            Window = (IoVector*)NativeMemory.Realloc(Window, (nuint)(capacity * sizeof(IoVector)));
            _windowCapacity = capacity;
        }
    }

    /// <summary>Ready for the next chain (the native arrays are kept; the bounce buffer was returned).</summary>
    public void Reset(DescriptorChain chain, ulong statusAddress)
    {
        Chain = chain;
        StatusAddress = statusAddress;
        Status = VirtioBlkStatus.VIRTIO_BLK_S_OK;
        DataWritten = 0;
        IsWrite = false;
        Epoch = 0;
        WaitingFor = 0;
        Synced = false;
        SyncAfter = false;
        Read = false;
        Dsync = false;
        Offset = 0;
        Total = 0;
        Done = 0;
        Chunk = 0;
        VectorCount = 0;
        Bounce = null;
        RangeCount = 0;
        RangeIndex = 0;
        Plan = [];
        Step = 0;
        RangeDone = 0;
    }

    public void Dispose()
    {
        NativeMemory.Free(Vectors);
        NativeMemory.Free(Window);
        Vectors = null;
        Window = null;
        _vectorCapacity = 0;
        _windowCapacity = 0;
    }
}
