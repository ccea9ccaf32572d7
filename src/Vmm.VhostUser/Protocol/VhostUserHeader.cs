using System.Runtime.InteropServices;

namespace Vmm.VhostUser.Protocol;

/// <summary>
/// The 12-byte message header of vhost-user.rst, "Message Specification":
/// <code>
/// +---------+-------+------+---------+
/// | request | flags | size | payload |
/// +---------+-------+------+---------+
///  u32       u32     u32    size bytes
/// </code>
/// Numbers are in host byte order (little-endian on every platform we run on).
/// </summary>
[StructLayout(LayoutKind.Sequential, Pack = 1)]
public struct VhostUserHeader
{
    public const int Size = 12;
    public const int RequestOffset = 0;
    public const int FlagsOffset = 4;
    public const int SizeOffset = 8;

    /// <summary>The request code; front-end or back-end numbering depending on the channel.</summary>
    public uint Request;

    /// <summary>Bits 0-1 version (always 1), bit 2 reply, bit 3 need_reply; the rest reserved (zero).</summary>
    public uint Flags;

    /// <summary>Payload size in bytes, not counting the header.</summary>
    public uint PayloadSize;

    public VhostUserHeader(uint request, uint flags, uint payloadSize)
    {
        Request = request;
        Flags = flags;
        PayloadSize = payloadSize;
    }

    public static VhostUserHeader Read(ReadOnlySpan<byte> source) => MemoryMarshal.Read<VhostUserHeader>(source);

    public readonly void Write(Span<byte> destination) => MemoryMarshal.Write(destination, in this);
}

/// <summary>Header flag bits (vhost-user.rst, "Header").</summary>
public static class VhostUserHeaderFlags
{
    public const uint VersionMask = 0x3;
    public const uint Version = 0x1;
    public const uint Reply = 0x4;
    public const uint NeedReply = 0x8;
    public const uint ReservedMask = ~(VersionMask | Reply | NeedReply);
}
