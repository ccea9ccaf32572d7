using System.Buffers.Binary;

namespace Vmm.Virtio.Spec;

/// <summary>Block device feature bits (virtio 1.2, 5.2.3 "Feature bits").</summary>
public static class VirtioBlkFeatures
{
    /// <summary>VIRTIO_BLK_F_SIZE_MAX (1): size_max is the largest single segment.</summary>
    public const ulong SIZE_MAX = 1UL << 1;

    /// <summary>VIRTIO_BLK_F_SEG_MAX (2): seg_max is the most data segments in a request.</summary>
    public const ulong SEG_MAX = 1UL << 2;

    /// <summary>VIRTIO_BLK_F_GEOMETRY (4): the legacy geometry field is valid.</summary>
    public const ulong GEOMETRY = 1UL << 4;

    /// <summary>VIRTIO_BLK_F_RO (5): the device is read-only.</summary>
    public const ulong RO = 1UL << 5;

    /// <summary>VIRTIO_BLK_F_BLK_SIZE (6): blk_size is valid.</summary>
    public const ulong BLK_SIZE = 1UL << 6;

    /// <summary>VIRTIO_BLK_F_FLUSH (9): the FLUSH command exists.</summary>
    public const ulong FLUSH = 1UL << 9;

    /// <summary>VIRTIO_BLK_F_TOPOLOGY (10): the topology fields are valid.</summary>
    public const ulong TOPOLOGY = 1UL << 10;

    /// <summary>VIRTIO_BLK_F_CONFIG_WCE (11): the driver may switch writeback / writethrough.</summary>
    public const ulong CONFIG_WCE = 1UL << 11;

    /// <summary>VIRTIO_BLK_F_MQ (12): num_queues is valid.</summary>
    public const ulong MQ = 1UL << 12;

    /// <summary>VIRTIO_BLK_F_DISCARD (13): the DISCARD command exists.</summary>
    public const ulong DISCARD = 1UL << 13;

    /// <summary>VIRTIO_BLK_F_WRITE_ZEROES (14): the WRITE_ZEROES command exists.</summary>
    public const ulong WRITE_ZEROES = 1UL << 14;

    /// <summary>VIRTIO_BLK_F_LIFETIME (15): the GET_LIFETIME command exists.</summary>
    public const ulong LIFETIME = 1UL << 15;

    /// <summary>VIRTIO_BLK_F_SECURE_ERASE (16): the SECURE_ERASE command exists.</summary>
    public const ulong SECURE_ERASE = 1UL << 16;
}

/// <summary>Request types (virtio 1.2, 5.2.6 "Device Operation").</summary>
public static class VirtioBlkRequestType
{
    public const uint VIRTIO_BLK_T_IN = 0;
    public const uint VIRTIO_BLK_T_OUT = 1;
    public const uint VIRTIO_BLK_T_FLUSH = 4;
    public const uint VIRTIO_BLK_T_GET_ID = 8;
    public const uint VIRTIO_BLK_T_GET_LIFETIME = 10;
    public const uint VIRTIO_BLK_T_DISCARD = 11;
    public const uint VIRTIO_BLK_T_WRITE_ZEROES = 13;
    public const uint VIRTIO_BLK_T_SECURE_ERASE = 14;
}

/// <summary>The status byte a request ends with (virtio 1.2, 5.2.6).</summary>
public static class VirtioBlkStatus
{
    public const byte VIRTIO_BLK_S_OK = 0;
    public const byte VIRTIO_BLK_S_IOERR = 1;
    public const byte VIRTIO_BLK_S_UNSUPP = 2;
}

/// <summary>Sizes and constants of the block device's wire formats (virtio 1.2, 5.2.6).</summary>
public static class VirtioBlk
{
    /// <summary>Sectors are always 512 bytes, whatever blk_size says (5.2.6: "sector ... in 512-byte units").</summary>
    public const int SectorSize = 512;

    /// <summary>log2 of <see cref="SectorSize"/>.</summary>
    public const int SectorShift = 9;

    /// <summary>VIRTIO_BLK_ID_BYTES: the GET_ID answer is 20 bytes, zero-padded, not necessarily NUL-terminated.</summary>
    public const int VIRTIO_BLK_ID_BYTES = 20;

    /// <summary>VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP: bit 0 of a discard / write-zeroes segment's flags.</summary>
    public const uint VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP = 1;
}

/// <summary>
/// The request header the driver puts first in every request (virtio 1.2, 5.2.6:
/// <c>le32 type; le32 reserved; le64 sector;</c>).
/// </summary>
public readonly record struct VirtioBlkRequestHeader(uint Type, uint Reserved, ulong Sector)
{
    public const int Size = 16;

    public static VirtioBlkRequestHeader Read(ReadOnlySpan<byte> source) => new(
        BinaryPrimitives.ReadUInt32LittleEndian(source),
        BinaryPrimitives.ReadUInt32LittleEndian(source[4..]),
        BinaryPrimitives.ReadUInt64LittleEndian(source[8..]));

    public void Write(Span<byte> destination)
    {
        BinaryPrimitives.WriteUInt32LittleEndian(destination, Type);
        BinaryPrimitives.WriteUInt32LittleEndian(destination[4..], Reserved);
        BinaryPrimitives.WriteUInt64LittleEndian(destination[8..], Sector);
    }
}

/// <summary>
/// One range of a DISCARD, WRITE_ZEROES or SECURE_ERASE request (virtio 1.2, 5.2.6:
/// <c>le64 sector; le32 num_sectors; le32 flags</c>, flags bit 0 = unmap).
/// </summary>
public readonly record struct VirtioBlkDiscardWriteZeroes(ulong Sector, uint NumSectors, uint Flags)
{
    public const int Size = 16;

    public bool Unmap => (Flags & VirtioBlk.VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP) != 0;

    public static VirtioBlkDiscardWriteZeroes Read(ReadOnlySpan<byte> source) => new(
        BinaryPrimitives.ReadUInt64LittleEndian(source),
        BinaryPrimitives.ReadUInt32LittleEndian(source[8..]),
        BinaryPrimitives.ReadUInt32LittleEndian(source[12..]));

    public void Write(Span<byte> destination)
    {
        BinaryPrimitives.WriteUInt64LittleEndian(destination, Sector);
        BinaryPrimitives.WriteUInt32LittleEndian(destination[8..], NumSectors);
        BinaryPrimitives.WriteUInt32LittleEndian(destination[12..], Flags);
    }
}

/// <summary>
/// The block device's configuration layout (virtio 1.2, 5.2.4 "Device configuration layout"),
/// up to and including write_zeroes_may_unmap and its padding: 60 bytes, what QEMU and
/// qemu-storage-daemon expose without SECURE_ERASE. The secure-erase fields (@60) and the
/// zoned characteristics (@72) follow only when those features are offered.
/// </summary>
public struct VirtioBlkConfig
{
    public const int Size = 60;

    public const int CapacityOffset = 0;
    public const int SizeMaxOffset = 8;
    public const int SegMaxOffset = 12;
    public const int GeometryCylindersOffset = 16;
    public const int GeometryHeadsOffset = 18;
    public const int GeometrySectorsOffset = 19;
    public const int BlkSizeOffset = 20;
    public const int PhysicalBlockExpOffset = 24;
    public const int AlignmentOffsetOffset = 25;
    public const int MinIoSizeOffset = 26;
    public const int OptIoSizeOffset = 28;
    public const int WritebackOffset = 32;
    public const int NumQueuesOffset = 34;
    public const int MaxDiscardSectorsOffset = 36;
    public const int MaxDiscardSegOffset = 40;
    public const int DiscardSectorAlignmentOffset = 44;
    public const int MaxWriteZeroesSectorsOffset = 48;
    public const int MaxWriteZeroesSegOffset = 52;
    public const int WriteZeroesMayUnmapOffset = 56;

    public ulong Capacity;
    public uint SizeMax;
    public uint SegMax;
    public ushort GeometryCylinders;
    public byte GeometryHeads;
    public byte GeometrySectors;
    public uint BlkSize;
    public byte PhysicalBlockExp;
    public byte AlignmentOffset;
    public ushort MinIoSize;
    public uint OptIoSize;
    public byte Writeback;
    public ushort NumQueues;
    public uint MaxDiscardSectors;
    public uint MaxDiscardSeg;
    public uint DiscardSectorAlignment;
    public uint MaxWriteZeroesSectors;
    public uint MaxWriteZeroesSeg;
    public byte WriteZeroesMayUnmap;

    /// <summary>Serialises the layout little-endian into <paramref name="destination"/> (at least <see cref="Size"/> bytes).</summary>
    public readonly void Write(Span<byte> destination)
    {
        destination = destination[..Size];
        destination.Clear();
        BinaryPrimitives.WriteUInt64LittleEndian(destination[CapacityOffset..], Capacity);
        BinaryPrimitives.WriteUInt32LittleEndian(destination[SizeMaxOffset..], SizeMax);
        BinaryPrimitives.WriteUInt32LittleEndian(destination[SegMaxOffset..], SegMax);
        BinaryPrimitives.WriteUInt16LittleEndian(destination[GeometryCylindersOffset..], GeometryCylinders);
        destination[GeometryHeadsOffset] = GeometryHeads;
        destination[GeometrySectorsOffset] = GeometrySectors;
        BinaryPrimitives.WriteUInt32LittleEndian(destination[BlkSizeOffset..], BlkSize);
        destination[PhysicalBlockExpOffset] = PhysicalBlockExp;
        destination[AlignmentOffsetOffset] = AlignmentOffset;
        BinaryPrimitives.WriteUInt16LittleEndian(destination[MinIoSizeOffset..], MinIoSize);
        BinaryPrimitives.WriteUInt32LittleEndian(destination[OptIoSizeOffset..], OptIoSize);
        destination[WritebackOffset] = Writeback;
        BinaryPrimitives.WriteUInt16LittleEndian(destination[NumQueuesOffset..], NumQueues);
        BinaryPrimitives.WriteUInt32LittleEndian(destination[MaxDiscardSectorsOffset..], MaxDiscardSectors);
        BinaryPrimitives.WriteUInt32LittleEndian(destination[MaxDiscardSegOffset..], MaxDiscardSeg);
        BinaryPrimitives.WriteUInt32LittleEndian(destination[DiscardSectorAlignmentOffset..], DiscardSectorAlignment);
        BinaryPrimitives.WriteUInt32LittleEndian(destination[MaxWriteZeroesSectorsOffset..], MaxWriteZeroesSectors);
        BinaryPrimitives.WriteUInt32LittleEndian(destination[MaxWriteZeroesSegOffset..], MaxWriteZeroesSeg);
        destination[WriteZeroesMayUnmapOffset] = WriteZeroesMayUnmap;
    }

    /// <summary>Parses the layout from <paramref name="source"/>; bytes missing at the end read as zero.</summary>
    public static VirtioBlkConfig Read(ReadOnlySpan<byte> source)
    {
        Span<byte> buffer = stackalloc byte[Size];
        buffer.Clear();
        source[..Math.Min(source.Length, Size)].CopyTo(buffer);
        return new VirtioBlkConfig
        {
            Capacity = BinaryPrimitives.ReadUInt64LittleEndian(buffer[CapacityOffset..]),
            SizeMax = BinaryPrimitives.ReadUInt32LittleEndian(buffer[SizeMaxOffset..]),
            SegMax = BinaryPrimitives.ReadUInt32LittleEndian(buffer[SegMaxOffset..]),
            GeometryCylinders = BinaryPrimitives.ReadUInt16LittleEndian(buffer[GeometryCylindersOffset..]),
            GeometryHeads = buffer[GeometryHeadsOffset],
            GeometrySectors = buffer[GeometrySectorsOffset],
            BlkSize = BinaryPrimitives.ReadUInt32LittleEndian(buffer[BlkSizeOffset..]),
            PhysicalBlockExp = buffer[PhysicalBlockExpOffset],
            AlignmentOffset = buffer[AlignmentOffsetOffset],
            MinIoSize = BinaryPrimitives.ReadUInt16LittleEndian(buffer[MinIoSizeOffset..]),
            OptIoSize = BinaryPrimitives.ReadUInt32LittleEndian(buffer[OptIoSizeOffset..]),
            Writeback = buffer[WritebackOffset],
            NumQueues = BinaryPrimitives.ReadUInt16LittleEndian(buffer[NumQueuesOffset..]),
            MaxDiscardSectors = BinaryPrimitives.ReadUInt32LittleEndian(buffer[MaxDiscardSectorsOffset..]),
            MaxDiscardSeg = BinaryPrimitives.ReadUInt32LittleEndian(buffer[MaxDiscardSegOffset..]),
            DiscardSectorAlignment = BinaryPrimitives.ReadUInt32LittleEndian(buffer[DiscardSectorAlignmentOffset..]),
            MaxWriteZeroesSectors = BinaryPrimitives.ReadUInt32LittleEndian(buffer[MaxWriteZeroesSectorsOffset..]),
            MaxWriteZeroesSeg = BinaryPrimitives.ReadUInt32LittleEndian(buffer[MaxWriteZeroesSegOffset..]),
            WriteZeroesMayUnmap = buffer[WriteZeroesMayUnmapOffset],
        };
    }
}
