using System.Runtime.InteropServices;

namespace Vmm.VhostUser.Protocol;

/// <summary>
/// <c>VhostUserMMap</c>, the payload of the back-end's SHMEM_MAP and SHMEM_UNMAP (added with
/// <see cref="VhostUserProtocolFeatures.SHMEM"/>): shmid u8, 7 bytes padding, fd offset u64,
/// shm offset u64, len u64, flags u64 = 40 bytes.
/// </summary>
[StructLayout(LayoutKind.Sequential, Pack = 1)]
public struct VhostUserMMap
{
    public const int Size = 40;

    /// <summary>Flag bit 0: map read-write; clear means read-only.</summary>
    public const ulong VHOST_USER_FLAG_MAP_RW = 0x1;

    public byte ShmId;
    public byte Padding0;
    public ushort Padding1;
    public uint Padding2;
    public ulong FdOffset;
    public ulong ShmOffset;
    public ulong Len;
    public ulong Flags;

    public VhostUserMMap(byte shmId, ulong fdOffset, ulong shmOffset, ulong len, ulong flags)
    {
        ShmId = shmId;
        Padding0 = 0;
        Padding1 = 0;
        Padding2 = 0;
        FdOffset = fdOffset;
        ShmOffset = shmOffset;
        Len = len;
        Flags = flags;
    }

    public static VhostUserMMap Read(ReadOnlySpan<byte> source) => WireStruct.Read<VhostUserMMap>(source, "mmap");

    public readonly int Write(Span<byte> destination) => WireStruct.Write(destination, in this);

    /// <summary>Non-empty, non-wrapping ranges and no unknown flag bits.</summary>
    public readonly bool IsValid =>
        Len != 0 &&
        FdOffset + Len >= FdOffset &&
        ShmOffset + Len >= ShmOffset &&
        (Flags & ~VHOST_USER_FLAG_MAP_RW) == 0;
}
