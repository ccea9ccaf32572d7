using System.Text;
using Microsoft.Win32.SafeHandles;
using Vmm.Core.Memory;
using Vmm.Virtio.Queues;
using Vmm.Virtio.Spec;

namespace Vmm.Virtio.Devices.Blk;

/// <summary>How a file-backed virtio-blk device is set up.</summary>
/// <param name="Path">The disk image (raw). Its length, rounded down to whole 512-byte sectors, is the capacity.</param>
/// <param name="ReadOnly">Offer VIRTIO_BLK_F_RO and open the file read-only.</param>
/// <param name="Queues">Request queues (VIRTIO_BLK_F_MQ when more than one), each served by its own worker.</param>
/// <param name="QueueSize">Largest size of each queue (a power of two).</param>
/// <param name="Serial">The GET_ID answer: at most 20 ASCII bytes; none answers 20 zero bytes.</param>
public sealed record VirtioBlkOptions(string Path, bool ReadOnly = false, int Queues = 1, ushort QueueSize = 256, string? Serial = null);

/// <summary>
/// A virtio block device backed by a file (virtio 1.2, 5.2 "Block Device"): IN, OUT, FLUSH,
/// GET_ID, DISCARD and WRITE_ZEROES; read-only disks; several request queues.
/// </summary>
/// <remarks>
/// Data moves between guest RAM and the file with positional scatter/gather I/O (preadv /
/// pwritev through <see cref="RandomAccess"/>), which carries no file position, so every queue's
/// worker uses the one handle concurrently. Errors reach the driver as status bytes; only a
/// chain with nowhere to put the status byte is a broken ring (<see cref="VirtqueueException"/>).
/// DISCARD and WRITE_ZEROES both write zeroes: a discarded range reads back as zeroes, which the
/// spec allows (5.2.6.2, "the device MAY deallocate"), and the file keeps its allocation.
/// </remarks>
public sealed class VirtioBlkDevice : VirtioDeviceBase
{
    /// <summary>Largest range of one DISCARD segment, in sectors (16 MiB, as QEMU advertises).</summary>
    public const uint MaxDiscardSectors = 32768;

    /// <summary>Largest range of one WRITE_ZEROES segment, in sectors (16 MiB, as QEMU advertises).</summary>
    public const uint MaxWriteZeroesSectors = 32768;

    /// <summary>
    /// Most segments in one DISCARD or WRITE_ZEROES request. Bounds the zeroes one request may
    /// write (8 x 16 MiB) and so the time a queue's worker is busy with it.
    /// </summary>
    public const uint MaxDiscardSegments = 8;

    /// <summary>Most segments in one WRITE_ZEROES request.</summary>
    public const uint MaxWriteZeroesSegments = 8;

    private const ulong BaseFeatures =
        VirtioBlkFeatures.SEG_MAX | VirtioBlkFeatures.BLK_SIZE | VirtioBlkFeatures.FLUSH | VirtioBlkFeatures.CONFIG_WCE |
        VirtioBlkFeatures.DISCARD | VirtioBlkFeatures.WRITE_ZEROES | SupportedRingFeatures;

    /// <summary>Zeroes for WRITE_ZEROES / DISCARD, gathered up to <see cref="ZeroBatch"/> times per pwritev.</summary>
    private static readonly ReadOnlyMemory<byte> s_zeroes = new byte[64 * 1024];

    private const int ZeroBatch = 16;

    private static readonly ReadOnlyMemory<byte>[] s_zeroBatch = Enumerable.Repeat(s_zeroes, ZeroBatch).ToArray();

    private readonly SafeFileHandle _file;
    private readonly bool _readOnly;
    private readonly int _queues;
    private readonly ushort _queueSize;
    private readonly byte[] _id = new byte[VirtioBlk.VIRTIO_BLK_ID_BYTES];

    /// <summary>1 = writeback (the default), 0 = writethrough: every write is flushed before it completes (5.2.5, CONFIG_WCE).</summary>
    private volatile byte _writeback = 1;

    public VirtioBlkDevice(VirtioBlkOptions options)
        : base(VirtioDeviceId.Block, Features(options), ValidateQueues(options), ValidateQueueSize(options))
    {
        _readOnly = options.ReadOnly;
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

        // FileShare.ReadWrite: no advisory lock, so tools may inspect an image while it is served.
        _file = File.OpenHandle(options.Path, FileMode.Open, options.ReadOnly ? FileAccess.Read : FileAccess.ReadWrite, FileShare.ReadWrite);
        try
        {
            long length = RandomAccess.GetLength(_file);
            CapacitySectors = (ulong)length >> VirtioBlk.SectorShift;
            if (CapacitySectors == 0)
            {
                throw new ArgumentException(
                    $"The disk image '{options.Path}' is {length} bytes long; a disk needs at least one {VirtioBlk.SectorSize}-byte sector.",
                    nameof(options));
            }
        }
        catch
        {
            _file.Dispose();
            throw;
        }
    }

    /// <summary>Disk size in 512-byte sectors: the file's length rounded down (a partial last sector is not exposed).</summary>
    public ulong CapacitySectors { get; }

    public bool ReadOnly => _readOnly;

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
    public VirtioBlkConfig Config => new()
    {
        Capacity = CapacitySectors,
        SegMax = SegMax,
        BlkSize = VirtioBlk.SectorSize,
        Writeback = Writeback,
        NumQueues = (ushort)_queues,
        MaxDiscardSectors = MaxDiscardSectors,
        MaxDiscardSeg = MaxDiscardSegments,
        DiscardSectorAlignment = 1,
        MaxWriteZeroesSectors = MaxWriteZeroesSectors,
        MaxWriteZeroesSeg = MaxWriteZeroesSegments,
        WriteZeroesMayUnmap = 0,
    };

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

    internal uint ProcessRequestForTest(int queueIndex, DescriptorChain chain, GuestMemory memory) => ProcessRequest(queueIndex, chain, memory);

    protected override void OnReset() => _writeback = 1;

    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            _file.Dispose();
        }

        base.Dispose(disposing);
    }

    /// <summary>
    /// Executes one request: header first in the readable bytes, status byte last in the writable
    /// ones (5.2.6), whatever the descriptor boundaries. Returns the bytes written for the driver
    /// (data placed in its buffers plus the status byte).
    /// </summary>
    protected override uint ProcessRequest(int queueIndex, DescriptorChain chain, GuestMemory memory)
    {
        if (!TryFindStatusByte(chain, out ulong statusAddress))
        {
            throw new VirtqueueException(
                $"virtio-blk request (head {chain.Head}) has no device-writable byte for its status (virtio 1.2, 5.2.6).");
        }

        uint dataWritten = 0;
        byte status;
        try
        {
            status = Execute(chain, memory, out dataWritten);
        }
        catch (Exception ex) when (ex is not VirtqueueException)
        {
            // I/O errors, a vanished file, a data buffer outside guest memory: the request fails, the device lives.
            status = VirtioBlkStatus.VIRTIO_BLK_S_IOERR;
            dataWritten = 0;
        }

        if (status != VirtioBlkStatus.VIRTIO_BLK_S_OK)
        {
            dataWritten = 0;
        }

        try
        {
            memory.WriteByte(statusAddress, status);
        }
        catch (GuestMemoryException ex)
        {
            throw new VirtqueueException($"virtio-blk request (head {chain.Head}) has its status byte outside guest memory.", ex);
        }

        return dataWritten + 1;
    }

    private static bool TryFindStatusByte(DescriptorChain chain, out ulong address)
    {
        IReadOnlyList<DescriptorSegment> segments = chain.Segments;
        for (int i = segments.Count - 1; i >= 0; i--)
        {
            if (segments[i].IsDeviceWritable && segments[i].Length > 0)
            {
                address = segments[i].Address + segments[i].Length - 1;
                return true;
            }
        }

        address = 0;
        return false;
    }

    private byte Execute(DescriptorChain chain, GuestMemory memory, out uint dataWritten)
    {
        dataWritten = 0;
        if (chain.ReadableLength < VirtioBlkRequestHeader.Size)
        {
            return VirtioBlkStatus.VIRTIO_BLK_S_IOERR;
        }

        Span<byte> headerBytes = stackalloc byte[VirtioBlkRequestHeader.Size];
        GuestIoVector.Copy(memory, chain.Segments, deviceWritable: false, 0, headerBytes);
        VirtioBlkRequestHeader header = VirtioBlkRequestHeader.Read(headerBytes);

        // The writable stream is the data the device returns followed by the status byte.
        ulong inLength = chain.WritableLength - 1;
        ulong outLength = chain.ReadableLength - VirtioBlkRequestHeader.Size;

        switch (header.Type)
        {
            case VirtioBlkRequestType.VIRTIO_BLK_T_IN:
                return Read(chain, memory, header.Sector, inLength, out dataWritten);
            case VirtioBlkRequestType.VIRTIO_BLK_T_OUT:
                return Write(chain, memory, header.Sector, outLength);
            case VirtioBlkRequestType.VIRTIO_BLK_T_FLUSH:
                if (!_readOnly)
                {
                    RandomAccess.FlushToDisk(_file);
                }

                return VirtioBlkStatus.VIRTIO_BLK_S_OK;
            case VirtioBlkRequestType.VIRTIO_BLK_T_GET_ID:
                return GetId(chain, memory, inLength, out dataWritten);
            case VirtioBlkRequestType.VIRTIO_BLK_T_DISCARD:
                return DiscardOrWriteZeroes(chain, memory, outLength, discard: true);
            case VirtioBlkRequestType.VIRTIO_BLK_T_WRITE_ZEROES:
                return DiscardOrWriteZeroes(chain, memory, outLength, discard: false);
            default:
                // GET_LIFETIME and SECURE_ERASE are not offered; unknown types likewise (5.2.6.2).
                return VirtioBlkStatus.VIRTIO_BLK_S_UNSUPP;
        }
    }

    private byte Read(DescriptorChain chain, GuestMemory memory, ulong sector, ulong length, out uint dataWritten)
    {
        dataWritten = 0;
        if (!CheckDataRequest(chain, sector, length))
        {
            return VirtioBlkStatus.VIRTIO_BLK_S_IOERR;
        }

        if (length == 0)
        {
            return VirtioBlkStatus.VIRTIO_BLK_S_OK;
        }

        GuestIoVector vector = GuestIoVector.Rent();
        vector.Add(memory, chain.Segments, deviceWritable: true, 0, length);
        long offset = (long)(sector << VirtioBlk.SectorShift);
        long read = vector.Count == 1
            ? RandomAccess.Read(_file, vector.Memories[0].Span, offset)
            : RandomAccess.Read(_file, vector.Memories, offset);
        if ((ulong)read != length)
        {
            // Only a file shrunk under the device reads short: the request fails rather than return stale bytes.
            return VirtioBlkStatus.VIRTIO_BLK_S_IOERR;
        }

        dataWritten = (uint)length;
        return VirtioBlkStatus.VIRTIO_BLK_S_OK;
    }

    private byte Write(DescriptorChain chain, GuestMemory memory, ulong sector, ulong length)
    {
        // A read-only device fails writes and writes nothing (5.2.6.2).
        if (_readOnly || !CheckDataRequest(chain, sector, length))
        {
            return VirtioBlkStatus.VIRTIO_BLK_S_IOERR;
        }

        if (length == 0)
        {
            return VirtioBlkStatus.VIRTIO_BLK_S_OK;
        }

        GuestIoVector vector = GuestIoVector.Rent();
        vector.Add(memory, chain.Segments, deviceWritable: false, VirtioBlkRequestHeader.Size, length);
        long offset = (long)(sector << VirtioBlk.SectorShift);
        if (vector.Count == 1)
        {
            RandomAccess.Write(_file, vector.ReadOnlyMemories[0].Span, offset);
        }
        else
        {
            RandomAccess.Write(_file, vector.ReadOnlyMemories, offset);
        }

        FlushIfWritethrough();
        return VirtioBlkStatus.VIRTIO_BLK_S_OK;
    }

    /// <summary>
    /// IN / OUT data is whole sectors, inside the disk, in at most seg_max data segments, and
    /// short enough that the used length (data + status) fits its le32.
    /// </summary>
    private bool CheckDataRequest(DescriptorChain chain, ulong sector, ulong length) =>
        (length & (VirtioBlk.SectorSize - 1)) == 0 &&
        length < uint.MaxValue &&
        InCapacity(sector, length >> VirtioBlk.SectorShift) &&
        chain.Segments.Count <= SegMax + 2;

    /// <summary>[sector, sector + count) inside the disk, without overflow whatever the guest sent.</summary>
    private bool InCapacity(ulong sector, ulong count) => sector <= CapacitySectors && count <= CapacitySectors - sector;

    private byte GetId(DescriptorChain chain, GuestMemory memory, ulong length, out uint dataWritten)
    {
        // The driver's buffer is 20 bytes; a shorter one gets what fits (as QEMU does).
        int count = (int)Math.Min(length, (ulong)VirtioBlk.VIRTIO_BLK_ID_BYTES);
        GuestIoVector vector = GuestIoVector.Rent();
        vector.Add(memory, chain.Segments, deviceWritable: true, 0, (ulong)count);
        ReadOnlySpan<byte> id = _id.AsSpan(0, count);
        for (int i = 0; i < vector.Count; i++)
        {
            Span<byte> piece = vector.Memories[i].Span;
            id[..piece.Length].CopyTo(piece);
            id = id[piece.Length..];
        }

        dataWritten = (uint)count;
        return VirtioBlkStatus.VIRTIO_BLK_S_OK;
    }

    private byte DiscardOrWriteZeroes(DescriptorChain chain, GuestMemory memory, ulong length, bool discard)
    {
        if (_readOnly)
        {
            return VirtioBlkStatus.VIRTIO_BLK_S_IOERR;
        }

        if (length == 0 || length % VirtioBlkDiscardWriteZeroes.Size != 0)
        {
            return VirtioBlkStatus.VIRTIO_BLK_S_IOERR;
        }

        ulong count = length / VirtioBlkDiscardWriteZeroes.Size;
        uint maxSegments = discard ? MaxDiscardSegments : MaxWriteZeroesSegments;
        uint maxSectors = discard ? MaxDiscardSectors : MaxWriteZeroesSectors;
        if (count > maxSegments)
        {
            // More ranges than advertised: not a request this device supports (QEMU answers the same).
            return VirtioBlkStatus.VIRTIO_BLK_S_UNSUPP;
        }

        Span<byte> raw = stackalloc byte[(int)length];
        GuestIoVector.Copy(memory, chain.Segments, deviceWritable: false, VirtioBlkRequestHeader.Size, raw);
        Span<VirtioBlkDiscardWriteZeroes> ranges = stackalloc VirtioBlkDiscardWriteZeroes[(int)count];
        for (int i = 0; i < ranges.Length; i++)
        {
            VirtioBlkDiscardWriteZeroes range = VirtioBlkDiscardWriteZeroes.Read(raw[(i * VirtioBlkDiscardWriteZeroes.Size)..]);

            // Unknown flags, and unmap on a DISCARD, must be answered UNSUPP (5.2.6.2).
            if ((range.Flags & ~VirtioBlk.VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP) != 0 || (discard && range.Unmap))
            {
                return VirtioBlkStatus.VIRTIO_BLK_S_UNSUPP;
            }

            if (range.NumSectors > maxSectors || !InCapacity(range.Sector, range.NumSectors))
            {
                return VirtioBlkStatus.VIRTIO_BLK_S_IOERR;
            }

            ranges[i] = range;
        }

        // Every range checked before any is written: a rejected request changes nothing.
        foreach (VirtioBlkDiscardWriteZeroes range in ranges)
        {
            WriteZeroes(range.Sector << VirtioBlk.SectorShift, (ulong)range.NumSectors << VirtioBlk.SectorShift);
        }

        FlushIfWritethrough();
        return VirtioBlkStatus.VIRTIO_BLK_S_OK;
    }

    private void WriteZeroes(ulong offset, ulong length)
    {
        ulong chunk = (ulong)s_zeroes.Length;
        ulong batchBytes = chunk * ZeroBatch;
        while (length > 0)
        {
            if (length >= batchBytes)
            {
                RandomAccess.Write(_file, s_zeroBatch, (long)offset);
                offset += batchBytes;
                length -= batchBytes;
            }
            else
            {
                int take = (int)Math.Min(length, chunk);
                RandomAccess.Write(_file, s_zeroes.Span[..take], (long)offset);
                offset += (ulong)take;
                length -= (ulong)take;
            }
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

    private void FlushIfWritethrough()
    {
        if (Writeback == 0)
        {
            RandomAccess.FlushToDisk(_file);
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
}
