using System.Runtime.InteropServices;

namespace Vmm.VhostUser.Protocol;

/// <summary>
/// "A vring state description" (vhost-user.rst): index u32, num u32. Used by SET_VRING_NUM,
/// SET/GET_VRING_BASE, SET_VRING_ENABLE, SET_VRING_ENDIAN, VRING_KICK and the back-end's
/// VRING_CALL/VRING_ERR.
/// </summary>
[StructLayout(LayoutKind.Sequential, Pack = 1)]
public struct VhostUserVringState
{
    public const int Size = 8;

    /// <summary>SET_VRING_ENDIAN: num 0 is little-endian.</summary>
    public const uint VHOST_VRING_LITTLE_ENDIAN = 0;

    /// <summary>SET_VRING_ENDIAN: num 1 is big-endian; other values are invalid.</summary>
    public const uint VHOST_VRING_BIG_ENDIAN = 1;

    public uint Index;
    public uint Num;

    public VhostUserVringState(uint index, uint num)
    {
        Index = index;
        Num = num;
    }

    public static VhostUserVringState Read(ReadOnlySpan<byte> source) =>
        WireStruct.Read<VhostUserVringState>(source, "vring state");

    public readonly int Write(Span<byte> destination) => WireStruct.Write(destination, in this);

    /// <summary>
    /// SET_VRING_BASE for a split ring: bits 0-15 hold the next avail index, bits 16-31 are reserved
    /// (vhost-user.rst, "A vring descriptor index for split virtqueues").
    /// </summary>
    public readonly bool IsValidSplitBase => (Num & 0xFFFF_0000) == 0;

    /// <summary>SET_VRING_ENABLE takes 0 or 1.</summary>
    public readonly bool IsValidEnable => Num <= 1;

    /// <summary>SET_VRING_ENDIAN takes 0 (little) or 1 (big).</summary>
    public readonly bool IsValidEndian => Num <= VHOST_VRING_BIG_ENDIAN;

    /// <summary>
    /// GET_VRING_BASE requests, VRING_KICK and the back-end's VRING_CALL/VRING_ERR: "The state.num
    /// field is currently reserved and must be set to 0".
    /// </summary>
    public readonly bool IsNumReservedZero => Num == 0;
}
