using System.Runtime.InteropServices;

namespace Vmm.VhostUser.Protocol;

/// <summary>
/// "A vring address description" (vhost-user.rst), the payload of SET_VRING_ADDR:
/// <code>
/// +-------+-------+------------+------+-----------+-----+
/// | index | flags | descriptor | used | available | log |
/// +-------+-------+------------+------+-----------+-----+
///  u32     u32     u64          u64    u64         u64     = 40 bytes
/// </code>
/// The spec's table also draws a "size" column that no implementation sends (QEMU's
/// <c>struct vhost_vring_addr</c> has none); the layout here is the one on the wire.
/// Addresses are user (front-end virtual) addresses, or IOVAs with VIRTIO_F_IOMMU_PLATFORM.
/// </summary>
[StructLayout(LayoutKind.Sequential, Pack = 1)]
public struct VhostUserVringAddr
{
    public const int Size = 40;

    /// <summary>Flag bit 0: log writes to the used ring at <see cref="Log"/> (vhost-user.rst, "Migration").</summary>
    public const uint VHOST_VRING_F_LOG = 0x1;

    public const uint ValidFlagsMask = VHOST_VRING_F_LOG;

    public uint Index;
    public uint Flags;
    public ulong Descriptor;
    public ulong Used;
    public ulong Available;
    public ulong Log;

    public VhostUserVringAddr(uint index, uint flags, ulong descriptor, ulong used, ulong available, ulong log)
    {
        Index = index;
        Flags = flags;
        Descriptor = descriptor;
        Used = used;
        Available = available;
        Log = log;
    }

    public static VhostUserVringAddr Read(ReadOnlySpan<byte> source) =>
        WireStruct.Read<VhostUserVringAddr>(source, "vring address");

    public readonly int Write(Span<byte> destination) => WireStruct.Write(destination, in this);

    /// <summary>
    /// Reserved flag bits clear, and the split-ring alignments of VIRTIO 1.x §2.7 (descriptor table 16,
    /// available ring 2, used ring 4), the same checks as rust-vmm's validator.
    /// </summary>
    public readonly bool IsValid => Validate() is null;

    /// <summary>Null when valid, otherwise the reason.</summary>
    public readonly string? Validate()
    {
        if ((Flags & ~ValidFlagsMask) != 0)
        {
            return $"vring {Index}: reserved address flags 0x{Flags & ~ValidFlagsMask:x} set";
        }

        if ((Descriptor & 0xF) != 0)
        {
            return $"vring {Index}: descriptor table 0x{Descriptor:x} is not 16-byte aligned";
        }

        if ((Available & 0x1) != 0)
        {
            return $"vring {Index}: available ring 0x{Available:x} is not 2-byte aligned";
        }

        if ((Used & 0x3) != 0)
        {
            return $"vring {Index}: used ring 0x{Used:x} is not 4-byte aligned";
        }

        return null;
    }
}
