using System.Numerics;
using System.Text;
using Vmm.Core.Memory;
using Vmm.Core.Posix;
using Vmm.Core.Posix.IoUring;
using Vmm.Core.Posix.Storage;
using Vmm.Virtio.Queues;
using Vmm.Virtio.Spec;

namespace Vmm.Virtio.Devices.Blk;

/// <summary>How a virtio-blk device is set up.</summary>
/// <param name="Path">
/// The disk: a raw image file (its length, rounded down to whole logical blocks, is the
/// capacity) or a block device (<c>/dev/...</c>, sized by BLKGETSIZE64 and claimed exclusively).
/// </param>
/// <param name="ReadOnly">Offer VIRTIO_BLK_F_RO and open the disk read-only.</param>
/// <param name="Queues">Request queues (VIRTIO_BLK_F_MQ when more than one), each served by its own worker.</param>
/// <param name="QueueSize">Largest size of each queue (a power of two).</param>
/// <param name="Serial">The GET_ID answer: at most 20 ASCII bytes; none answers 20 zero bytes.</param>
public sealed record VirtioBlkOptions(string Path, bool ReadOnly = false, int Queues = 1, ushort QueueSize = 256, string? Serial = null)
{
    /// <summary>The host page cache or O_DIRECT, and whether flushes are honoured (<c>--cache</c>).</summary>
    public BlkCacheMode Cache { get; init; } = BlkCacheMode.Writeback;

    /// <summary>How requests are carried out (<c>--aio</c>).</summary>
    public AioMode Aio { get; init; } = AioMode.Auto;
}

/// <summary>
/// A virtio block device on a disk image or a block device (virtio 1.2, 5.2 "Block Device"):
/// IN, OUT, FLUSH, GET_ID, DISCARD and WRITE_ZEROES; read-only disks; several request queues;
/// the disk's logical and physical block size in blk_size and the topology fields.
/// </summary>
/// <remarks>
/// <para>Each queue's requests run through a <see cref="BlkQueue"/> on that queue's worker and an
/// I/O engine of the kind chosen when the disk is opened (<see cref="Engine"/>): io_uring, a
/// thread pool, or inline on the worker. Requests are submitted as they are popped and completed
/// as they finish, out of order. The same device serves <c>vmm run --device blk</c> in process
/// and <c>vmm serve blk</c> over vhost-user.</para>
/// <para>Requests must be whole logical blocks (blk_size): a disk with 4096-byte blocks answers a
/// 512-byte aligned request with IOERR, as a real disk (and QEMU) does. DISCARD punches holes
/// (BLKDISCARD on a block device) where the disk supports it and is otherwise a successful no-op;
/// WRITE_ZEROES uses fallocate ZERO_RANGE (BLKZEROOUT), PUNCH_HOLE with the unmap flag, and writes
/// zeroes where neither exists.</para>
/// </remarks>
public sealed class VirtioBlkDevice : VirtioDeviceBase
{
    /// <summary>Largest range of one DISCARD segment, in sectors (16 MiB, as QEMU advertises).</summary>
    public const uint MaxDiscardSectors = 32768;

    /// <summary>Largest range of one WRITE_ZEROES segment, in sectors (16 MiB, as QEMU advertises).</summary>
    public const uint MaxWriteZeroesSectors = 32768;

    /// <summary>
    /// Most segments in one DISCARD or WRITE_ZEROES request. Bounds the work one request may ask
    /// for (8 x 16 MiB).
    /// </summary>
    public const uint MaxDiscardSegments = BlkRequest.MaxRanges;

    /// <summary>Most segments in one WRITE_ZEROES request.</summary>
    public const uint MaxWriteZeroesSegments = BlkRequest.MaxRanges;

    private const ulong BaseFeatures =
        VirtioBlkFeatures.SEG_MAX | VirtioBlkFeatures.BLK_SIZE | VirtioBlkFeatures.TOPOLOGY | VirtioBlkFeatures.FLUSH |
        VirtioBlkFeatures.CONFIG_WCE | VirtioBlkFeatures.DISCARD | VirtioBlkFeatures.WRITE_ZEROES | SupportedRingFeatures;

    private readonly DiskFile _disk;
    private readonly IoEngineChoice _engine;
    private readonly BlkCacheMode _cache;
    private readonly int _queues;
    private readonly ushort _queueSize;
    private readonly byte[] _id = new byte[VirtioBlk.VIRTIO_BLK_ID_BYTES];

    /// <summary>Zeroing methods the disk answered EOPNOTSUPP to, one bit per <see cref="ZeroMethod"/>.</summary>
    private int _unsupportedMethods;

    private long _bouncedRequests;

    /// <summary>1 = writeback (the default), 0 = writethrough: every write is durable before it completes (5.2.5, CONFIG_WCE).</summary>
    private volatile byte _writeback = 1;

    public VirtioBlkDevice(VirtioBlkOptions options)
        : this(options, null)
    {
    }

    /// <summary>As the public constructor, with the io_uring probe's answer given (tests force "unavailable").</summary>
    internal VirtioBlkDevice(VirtioBlkOptions options, IoUringAvailability? ioUring)
        : base(VirtioDeviceId.Block, Features(options), ValidateQueues(options), ValidateQueueSize(options))
    {
        ReadOnly = options.ReadOnly;
        _cache = options.Cache;
        _queues = options.Queues;
        _queueSize = options.QueueSize;
        if (options.Serial is not null)
        {
            if (!Ascii.IsValid(options.Serial) || options.Serial.Length > VirtioBlk.VIRTIO_BLK_ID_BYTES)
            {
                throw new ArgumentException(
                    $"The serial must be at most {VirtioBlk.VIRTIO_BLK_ID_BYTES} ASCII characters: '{options.Serial}'.", nameof(options));
            }

            Encoding.ASCII.GetBytes(options.Serial, _id);
        }

        _disk = DiskFile.Open(options.Path, options.ReadOnly, direct: options.Cache == BlkCacheMode.None);
        try
        {
            // Whole logical blocks only: a partial last block is not part of the disk.
            ulong blocks = (ulong)_disk.Length / _disk.LogicalBlockSize;
            CapacitySectors = blocks * (_disk.LogicalBlockSize >> VirtioBlk.SectorShift);
            if (CapacitySectors == 0)
            {
                throw new ArgumentException(
                    $"The disk '{options.Path}' is {_disk.Length} bytes long; a disk needs at least one {_disk.LogicalBlockSize}-byte block.",
                    nameof(options));
            }

            _engine = IoEngineChoice.Select(options.Aio, _disk, ioUring ?? IoUringSupport.Availability);
        }
        catch
        {
            _disk.Dispose();
            throw;
        }
    }

    /// <summary>Disk size in 512-byte sectors: whole logical blocks of the file or device.</summary>
    public ulong CapacitySectors { get; }

    public bool ReadOnly { get; }

    public BlkCacheMode Cache => _cache;

    /// <summary>The engine the queues use, and why (for the one log line a server writes about it).</summary>
    public IoEngineChoice Engine => _engine;

    /// <summary>The disk behind the device.</summary>
    public DiskFile Disk => _disk;

    /// <summary>
    /// The queue size every QEMU front-end satisfies: vhost-user-blk-pci's default queue-size
    /// (and virtio-blk's smallest common one) is 128.
    /// </summary>
    public const ushort SegMaxQueueSize = 128;

    /// <summary>
    /// Largest number of data segments in an IN / OUT request (seg_max): a chain is header, data
    /// and status, and a driver without indirect descriptors must fit it in the ring (virtio 1.2,
    /// 2.7.5.3.1), so seg_max is the queue size less two. The device cannot know the size the
    /// driver will choose, so it assumes the smallest that QEMU front-ends use,
    /// <see cref="SegMaxQueueSize"/> (seg_max 126, as qemu-storage-daemon): Linux's virtio_blk
    /// builds indirect tables of seg_max + 2 entries, which the queue size then also bounds.
    /// </summary>
    public uint SegMax => (uint)(Math.Min(_queueSize, SegMaxQueueSize) - 2);

    public override int ConfigSize => VirtioBlkConfig.Size;

    /// <summary>The configuration space as the driver sees it now.</summary>
    public VirtioBlkConfig Config
    {
        get
        {
            uint logical = _disk.LogicalBlockSize;
            return new VirtioBlkConfig
            {
                Capacity = CapacitySectors,
                SegMax = SegMax,
                BlkSize = logical,

                // 5.2.4: physical_block_exp is log2 of logical blocks per physical block; the I/O
                // sizes are in logical blocks.
                PhysicalBlockExp = (byte)BitOperations.Log2(_disk.PhysicalBlockSize / logical),
                AlignmentOffset = 0,
                MinIoSize = (ushort)Math.Min(_disk.PhysicalBlockSize / logical, ushort.MaxValue),
                OptIoSize = _disk.OptimalIoSize / logical,
                Writeback = Writeback,
                NumQueues = (ushort)_queues,
                MaxDiscardSectors = MaxDiscardSectors,
                MaxDiscardSeg = MaxDiscardSegments,
                DiscardSectorAlignment = logical >> VirtioBlk.SectorShift,
                MaxWriteZeroesSectors = MaxWriteZeroesSectors,
                MaxWriteZeroesSeg = MaxWriteZeroesSegments,
                WriteZeroesMayUnmap = 1,
            };
        }
    }

    /// <summary>FLUSH and writethrough reach stable storage (every mode but unsafe).</summary>
    internal bool FlushesReachDisk => _cache != BlkCacheMode.Unsafe;

    /// <summary>Writes must be durable before they complete: the driver chose writethrough (WCE = 0) and the mode honours it.</summary>
    internal bool WritethroughActive => Writeback == 0 && FlushesReachDisk;

    internal ReadOnlySpan<byte> Id => _id;

    /// <summary>Requests that went through a bounce buffer (guest buffers misaligned for O_DIRECT) since the device was made.</summary>
    internal long BouncedRequests => Interlocked.Read(ref _bouncedRequests);

    internal void CountBounce() => Interlocked.Increment(ref _bouncedRequests);

    public override void ReadConfig(uint offset, Span<byte> data)
    {
        data.Clear();
        if (offset >= VirtioBlkConfig.Size)
        {
            return;
        }

        Span<byte> config = stackalloc byte[VirtioBlkConfig.Size];
        Config.Write(config);
        ReadOnlySpan<byte> available = config[(int)offset..];
        available[..Math.Min(available.Length, data.Length)].CopyTo(data);
    }

    /// <summary>Only writeback is writable, and only with CONFIG_WCE (5.2.5); other writes are ignored.</summary>
    public override void WriteConfig(uint offset, ReadOnlySpan<byte> data)
    {
        const uint at = VirtioBlkConfig.WritebackOffset;
        if (offset <= at && at - offset < (uint)data.Length)
        {
            _writeback = data[(int)(at - offset)] == 0 ? (byte)0 : (byte)1;
        }
    }

    public override byte[] SaveState() => [_writeback];

    public override void RestoreState(ReadOnlySpan<byte> state)
    {
        if (state.Length != 1 || state[0] > 1)
        {
            throw new ArgumentException("Not a virtio-blk device state.", nameof(state));
        }

        _writeback = state[0];
    }

    /// <summary>
    /// Runs one request to its end on the calling thread, through a fresh queue processor with
    /// this device's engine; returns the used length. For tests of the request semantics.
    /// </summary>
    internal uint ProcessRequestForTest(int queueIndex, DescriptorChain chain, GuestMemory memory)
    {
        using var queue = new BlkQueue(this, memory, CreateEngine(queueIndex, _queueSize), _queueSize);
        if (queue.Start(chain, out uint written))
        {
            return written;
        }

        var recorder = new CompletionRecorder();
        queue.Submit();
        while (recorder.Written is null)
        {
            queue.WaitForCompletion();
            queue.Reap(recorder);
        }

        return recorder.Written.Value;
    }

    /// <summary>IN / OUT data is whole logical blocks at a block boundary, inside the disk, in at most seg_max data segments, and short enough that the used length (data + status) fits its le32.</summary>
    internal bool CheckDataRequest(DescriptorChain chain, ulong sector, ulong length)
    {
        ulong blockMask = _disk.LogicalBlockSize - 1UL;
        return (length & blockMask) == 0 &&
            ((sector << VirtioBlk.SectorShift) & blockMask) == 0 &&
            length < uint.MaxValue &&
            InCapacity(sector, length >> VirtioBlk.SectorShift) &&
            chain.Segments.Count <= SegMax + 2;
    }

    /// <summary>[sector, sector + count) inside the disk, without overflow whatever the guest sent.</summary>
    internal bool InCapacity(ulong sector, ulong count) => sector <= CapacitySectors && count <= CapacitySectors - sector;

    internal bool IsUnsupported(ZeroMethod method) => (Volatile.Read(ref _unsupportedMethods) & (1 << (int)method)) != 0;

    internal void MarkUnsupported(ZeroMethod method) => Interlocked.Or(ref _unsupportedMethods, 1 << (int)method);

    protected override void OnReset() => _writeback = 1;

    protected override IQueueRequestProcessor CreateRequestProcessor(int queueIndex, GuestMemory memory, ushort queueSize) =>
        new BlkQueue(this, memory, CreateEngine(queueIndex, queueSize), queueSize, GetQueueMetrics(queueIndex));

    protected override void Dispose(bool disposing)
    {
        // The queues stop first: their engines wait for I/O in flight on the disk.
        base.Dispose(disposing);
        if (disposing)
        {
            _disk.Dispose();
        }
    }

    /// <summary>Makes each queue's engine instead of <see cref="Engine"/> (tests of a particular engine variant).</summary>
    internal Func<DiskFile, ushort, IIoEngine>? EngineFactoryOverride { get; set; }

    private IIoEngine CreateEngine(int queueIndex, ushort queueSize)
    {
        try
        {
            return EngineFactoryOverride?.Invoke(_disk, queueSize) ?? _engine.Create(_disk, queueSize, $"{QueueThreadName(queueIndex)}-io");
        }
        catch (PosixException e)
        {
            throw new VirtqueueException($"Queue {queueIndex} cannot set up its {_engine.Kind} engine: {e.Message}", e);
        }
    }

    /// <summary>
    /// The cache mode in force: the driver's choice (CONFIG_WCE), but always writethrough for a
    /// driver that accepted no FLUSH, which has no other way to make writes durable
    /// (5.2.5.1: with CONFIG_WCE and without FLUSH, writeback starts at 0).
    /// </summary>
    private byte Writeback
    {
        get
        {
            ulong negotiated = NegotiatedFeatures;
            return negotiated != 0 && (negotiated & VirtioBlkFeatures.FLUSH) == 0 ? (byte)0 : _writeback;
        }
    }

    private static ulong Features(VirtioBlkOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        ulong features = BaseFeatures;
        if (options.ReadOnly)
        {
            features |= VirtioBlkFeatures.RO;
        }

        if (options.Queues > 1)
        {
            features |= VirtioBlkFeatures.MQ;
        }

        return features;
    }

    private static int ValidateQueues(VirtioBlkOptions options)
    {
        if (options.Queues is < 1 or > ushort.MaxValue)
        {
            throw new ArgumentException($"A virtio-blk device has 1 to {ushort.MaxValue} queues, not {options.Queues}.", nameof(options));
        }

        return options.Queues;
    }

    private static ushort ValidateQueueSize(VirtioBlkOptions options)
    {
        // Header and status take two descriptors (seg_max = size - 2); split rings need a power of two (2.7).
        if (options.QueueSize < 4 || !ushort.IsPow2(options.QueueSize))
        {
            throw new ArgumentException($"The queue size must be a power of two from 4 to 32768, not {options.QueueSize}.", nameof(options));
        }

        return options.QueueSize;
    }

    /// <summary>Keeps the used length of the one request <see cref="ProcessRequestForTest"/> runs.</summary>
    private sealed class CompletionRecorder : IBlkCompletionSink
    {
        public uint? Written { get; private set; }

        public void Complete(DescriptorChain chain, uint bytesWritten) => Written = bytesWritten;
    }
}
