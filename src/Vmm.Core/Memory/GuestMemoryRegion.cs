using Vmm.Core.Posix;

namespace Vmm.Core.Memory;

/// <summary>
/// One contiguous piece of guest RAM: GPA range, the memfd behind it and where in that file
/// it starts, and the host mapping. <see cref="UserAddress"/> is the address the front-end
/// knows this region by (vhost-user's userspace_addr); for memory the VMM created it is the
/// host address of the mapping.
/// </summary>
public sealed unsafe class GuestMemoryRegion : IDisposable
{
    private readonly SharedMapping _mapping;

    internal GuestMemoryRegion(ulong guestPhysicalAddress, ulong size, ulong userAddress, SafeFileDescriptor fd, ulong fileOffset, SharedMapping mapping, bool isSealed)
    {
        IsSealed = isSealed;
        GuestPhysicalAddress = guestPhysicalAddress;
        Size = size;
        UserAddress = userAddress;
        Fd = fd;
        FileOffset = fileOffset;
        _mapping = mapping;
        HostAddress = mapping.Address;
    }

    public ulong GuestPhysicalAddress { get; }

    public ulong Size { get; }

    /// <summary>Last GPA inside the region (inclusive), so a region ending at 2^64 is representable.</summary>
    public ulong LastAddress => GuestPhysicalAddress + (Size - 1);

    public ulong UserAddress { get; }

    /// <summary>The memfd (owned by the region) to hand to a peer.</summary>
    public SafeFileDescriptor Fd { get; }

    public ulong FileOffset { get; }

    /// <summary>True when the file cannot shrink (F_SEAL_SHRINK): no page of the region can vanish.</summary>
    public bool IsSealed { get; }

    /// <summary>True when the file can shrink and the mapping is under the SIGBUS guard instead.</summary>
    public bool IsGuarded => _mapping.IsGuarded;

    internal byte* HostAddress { get; }

    public bool ContainsGpa(ulong address, ulong length) =>
        address >= GuestPhysicalAddress && length <= Size && address - GuestPhysicalAddress <= Size - length;

    public bool OverlapsGpa(ulong address, ulong size) =>
        size != 0 && address <= LastAddress && GuestPhysicalAddress <= address + (size - 1);

    public bool ContainsUserAddress(ulong address, ulong length) =>
        address >= UserAddress && length <= Size && address - UserAddress <= Size - length;

    public void Dispose()
    {
        _mapping.Dispose();
        Fd.Dispose();
    }

    public override string ToString() =>
        $"[0x{GuestPhysicalAddress:x}..0x{LastAddress:x}] user 0x{UserAddress:x} offset 0x{FileOffset:x}";
}
