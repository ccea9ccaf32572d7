using System.Runtime.InteropServices;

namespace Vmm.VhostUser.Protocol;

/// <summary>
/// "Single memory region description" (vhost-user.rst), the payload of ADD_MEM_REG and REM_MEM_REG:
/// padding u64, then a <see cref="VhostUserMemoryRegion"/> = 40 bytes.
/// </summary>
[StructLayout(LayoutKind.Sequential, Pack = 1)]
public struct VhostUserSingleMemoryRegion
{
    public const int Size = 40;

    public ulong Padding;
    public VhostUserMemoryRegion Region;

    public VhostUserSingleMemoryRegion(in VhostUserMemoryRegion region)
    {
        Padding = 0;
        Region = region;
    }

    public static VhostUserSingleMemoryRegion Read(ReadOnlySpan<byte> source) =>
        WireStruct.Read<VhostUserSingleMemoryRegion>(source, "single memory region");

    public readonly int Write(Span<byte> destination) => WireStruct.Write(destination, in this);

    /// <summary>
    /// The region must be valid. Padding is not checked: the spec does not say it must be zero and
    /// QEMU leaves it uninitialised in places.
    /// </summary>
    public readonly string? Validate() => Region.Validate();

    public readonly bool IsValid => Validate() is null;
}
