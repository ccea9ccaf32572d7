using System.Runtime.InteropServices;

namespace Vmm.VhostUser.Protocol;

/// <summary>
/// "Log description" (vhost-user.rst): mmap size u64, mmap offset u64 = 16 bytes. The payload of
/// SET_LOG_BASE when LOG_SHMFD is negotiated; the log fd travels in the ancillary data.
/// </summary>
[StructLayout(LayoutKind.Sequential, Pack = 1)]
public struct VhostUserLog
{
    public const int Size = 16;

    /// <summary><c>VHOST_LOG_PAGE</c>: one bit of the log covers this many bytes of guest memory.</summary>
    public const ulong VHOST_LOG_PAGE = 0x1000;

    public ulong MmapSize;
    public ulong MmapOffset;

    public VhostUserLog(ulong mmapSize, ulong mmapOffset)
    {
        MmapSize = mmapSize;
        MmapOffset = mmapOffset;
    }

    public static VhostUserLog Read(ReadOnlySpan<byte> source) => WireStruct.Read<VhostUserLog>(source, "log");

    public readonly int Write(Span<byte> destination) => WireStruct.Write(destination, in this);

    /// <summary>Non-empty and the file range does not wrap.</summary>
    public readonly bool IsValid => MmapSize != 0 && MmapOffset + MmapSize >= MmapOffset;
}
