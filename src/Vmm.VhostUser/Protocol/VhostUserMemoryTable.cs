using System.Runtime.InteropServices;

namespace Vmm.VhostUser.Protocol;

/// <summary>
/// Reads and writes the SET_MEM_TABLE payload:
/// <code>
/// +-------------+---------+---------+-----+---------+
/// | num regions | padding | region0 | ... | regionN |
/// +-------------+---------+---------+-----+---------+
///  u32           u32       32 bytes each, N+1 = num regions ≤ 8
/// </code>
/// The fds in the ancillary data match the regions in number and order (vhost-user.rst,
/// VHOST_USER_SET_MEM_TABLE).
/// </summary>
public static class VhostUserMemoryTable
{
    /// <summary>
    /// QEMU's <c>VHOST_MEMORY_BASELINE_NREGIONS</c>: the most regions one SET_MEM_TABLE carries.
    /// More slots need CONFIGURE_MEM_SLOTS and ADD_MEM_REG. It also bounds the fds per message.
    /// </summary>
    public const int VHOST_MEMORY_BASELINE_NREGIONS = 8;

    public const int RegionsOffset = VhostUserMemoryHeader.Size;

    /// <summary>8 + 8 * 32 = 264.</summary>
    public const int MaxPayloadSize = RegionsOffset + (VHOST_MEMORY_BASELINE_NREGIONS * VhostUserMemoryRegion.Size);

    public static int PayloadSize(int regionCount) => RegionsOffset + (regionCount * VhostUserMemoryRegion.Size);

    /// <summary>
    /// Parses and validates a SET_MEM_TABLE payload: size == 8 + n*32, n in 1..8, padding zero, each
    /// region valid and no two overlapping in guest-physical space. Throws
    /// <see cref="VhostUserProtocolException"/> otherwise.
    /// </summary>
    public static VhostUserMemoryRegion[] ReadRegions(ReadOnlySpan<byte> payload)
    {
        var header = VhostUserMemoryHeader.Read(payload);
        uint n = header.NRegions;
        if (n == 0 || n > VHOST_MEMORY_BASELINE_NREGIONS)
        {
            ProtocolThrowHelper.ThrowProtocol(
                $"SET_MEM_TABLE: {n} regions; expected 1..{VHOST_MEMORY_BASELINE_NREGIONS}");
        }

        if (payload.Length != PayloadSize((int)n))
        {
            ProtocolThrowHelper.ThrowProtocol(
                $"SET_MEM_TABLE: {n} regions need {PayloadSize((int)n)} payload bytes, got {payload.Length}");
        }

        if (header.Padding != 0)
        {
            ProtocolThrowHelper.ThrowProtocol($"SET_MEM_TABLE: padding is 0x{header.Padding:x}, expected 0");
        }

        var regions = MemoryMarshal.Cast<byte, VhostUserMemoryRegion>(payload[RegionsOffset..]).ToArray();
        for (int i = 0; i < regions.Length; i++)
        {
            if (regions[i].Validate() is { } reason)
            {
                ProtocolThrowHelper.ThrowProtocol($"SET_MEM_TABLE region {i}: {reason}");
            }

            for (int j = 0; j < i; j++)
            {
                if (Overlaps(regions[i], regions[j]))
                {
                    ProtocolThrowHelper.ThrowProtocol(
                        $"SET_MEM_TABLE: region {i} {regions[i]} overlaps region {j} {regions[j]}");
                }
            }
        }

        return regions;
    }

    /// <summary>Writes a SET_MEM_TABLE payload; returns the bytes written.</summary>
    public static int Write(Span<byte> destination, ReadOnlySpan<VhostUserMemoryRegion> regions)
    {
        if (regions.Length is 0 or > VHOST_MEMORY_BASELINE_NREGIONS)
        {
            throw new ArgumentOutOfRangeException(
                nameof(regions), regions.Length, $"SET_MEM_TABLE carries 1..{VHOST_MEMORY_BASELINE_NREGIONS} regions");
        }

        int size = PayloadSize(regions.Length);
        if (destination.Length < size)
        {
            ProtocolThrowHelper.ThrowDestinationTooShort(size, destination.Length);
        }

        new VhostUserMemoryHeader((uint)regions.Length).Write(destination);
        MemoryMarshal.AsBytes(regions).CopyTo(destination[RegionsOffset..]);
        return size;
    }

    private static bool Overlaps(in VhostUserMemoryRegion a, in VhostUserMemoryRegion b) =>
        a.GuestPhysAddr < b.GuestPhysAddr + b.MemorySize && b.GuestPhysAddr < a.GuestPhysAddr + a.MemorySize;
}
