using System.Runtime.InteropServices;

namespace Vmm.VhostUser.Protocol;

/// <summary>
/// "An IOTLB message" (vhost-user.rst), Linux's <c>struct vhost_iotlb_msg</c>:
/// <code>
/// +------+------+--------------+-------------------+------+-----------+
/// | iova | size | user address | permissions flags | type | (padding) |
/// +------+------+--------------+-------------------+------+-----------+
///  u64    u64    u64            u8                  u8     6 bytes      = 32 bytes
/// </code>
/// The C struct is naturally aligned, so <c>sizeof</c> is 32, which is what QEMU sends.
/// Payload of IOTLB_MSG in both directions.
/// </summary>
[StructLayout(LayoutKind.Sequential, Pack = 1)]
public struct VhostUserIotlbMsg
{
    public const int Size = 32;

    public ulong Iova;
    public ulong RangeSize;
    public ulong Uaddr;
    public VhostUserIotlbPerm Perm;
    public VhostUserIotlbType Type;
    public ushort Padding0;
    public uint Padding1;

    public VhostUserIotlbMsg(ulong iova, ulong size, ulong uaddr, VhostUserIotlbPerm perm, VhostUserIotlbType type)
    {
        Iova = iova;
        RangeSize = size;
        Uaddr = uaddr;
        Perm = perm;
        Type = type;
        Padding0 = 0;
        Padding1 = 0;
    }

    public static VhostUserIotlbMsg Read(ReadOnlySpan<byte> source) =>
        WireStruct.Read<VhostUserIotlbMsg>(source, "IOTLB");

    public readonly int Write(Span<byte> destination) => WireStruct.Write(destination, in this);

    /// <summary>
    /// Permission is 0..3 and type is 1..4, the values the spec lists; an UPDATE or INVALIDATE
    /// covers a non-empty, non-wrapping range (vhost-user.rst, "IOMMU support").
    /// </summary>
    public readonly bool IsValid
    {
        get
        {
            if ((byte)Perm > (byte)VhostUserIotlbPerm.READ_WRITE)
            {
                return false;
            }

            return Type switch
            {
                VhostUserIotlbType.MISS or VhostUserIotlbType.ACCESS_FAIL => true,
                VhostUserIotlbType.UPDATE => RangeSize != 0 && Iova + RangeSize >= Iova && Uaddr + RangeSize >= Uaddr,
                VhostUserIotlbType.INVALIDATE => RangeSize != 0 && Iova + RangeSize >= Iova,
                _ => false,
            };
        }
    }
}

/// <summary>IOTLB permission flags (vhost-user.rst, "An IOTLB message").</summary>
public enum VhostUserIotlbPerm : byte
{
    NO_ACCESS = 0,
    READ = 1,
    WRITE = 2,
    READ_WRITE = 3,
}

/// <summary>IOTLB message type (vhost-user.rst, "An IOTLB message").</summary>
public enum VhostUserIotlbType : byte
{
    MISS = 1,
    UPDATE = 2,
    INVALIDATE = 3,
    ACCESS_FAIL = 4,
}
