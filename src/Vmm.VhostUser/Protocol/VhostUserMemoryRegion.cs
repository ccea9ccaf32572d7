using System.Runtime.InteropServices;

namespace Vmm.VhostUser.Protocol;

/// <summary>
/// "Memory region description" (vhost-user.rst): guest address, size, user address, mmap offset,
/// all u64 = 32 bytes. With XEN_MMAP the spec appends two u32 fields; we never offer XEN_MMAP, so
/// regions are always 32 bytes here.
/// </summary>
[StructLayout(LayoutKind.Sequential, Pack = 1)]
public struct VhostUserMemoryRegion
{
    public const int Size = 32;

    public ulong GuestPhysAddr;
    public ulong MemorySize;
    public ulong UserspaceAddr;
    public ulong MmapOffset;

    public VhostUserMemoryRegion(ulong guestPhysAddr, ulong memorySize, ulong userspaceAddr, ulong mmapOffset)
    {
        GuestPhysAddr = guestPhysAddr;
        MemorySize = memorySize;
        UserspaceAddr = userspaceAddr;
        MmapOffset = mmapOffset;
    }

    public static VhostUserMemoryRegion Read(ReadOnlySpan<byte> source) =>
        WireStruct.Read<VhostUserMemoryRegion>(source, "memory region");

    public readonly int Write(Span<byte> destination) => WireStruct.Write(destination, in this);

    public readonly bool IsValid => Validate() is null;

    /// <summary>
    /// Non-empty, and no range wraps the 64-bit space (guest, user and file ranges alike).
    /// Null when valid, otherwise the reason.
    /// </summary>
    public readonly string? Validate()
    {
        if (MemorySize == 0)
        {
            return $"memory region at guest 0x{GuestPhysAddr:x} has size 0";
        }

        if (GuestPhysAddr + MemorySize < GuestPhysAddr ||
            UserspaceAddr + MemorySize < UserspaceAddr ||
            MmapOffset + MemorySize < MmapOffset)
        {
            return $"memory region at guest 0x{GuestPhysAddr:x} size 0x{MemorySize:x} wraps the address space";
        }

        return null;
    }

    public override readonly string ToString() =>
        $"[guest 0x{GuestPhysAddr:x} size 0x{MemorySize:x} user 0x{UserspaceAddr:x} offset 0x{MmapOffset:x}]";
}
