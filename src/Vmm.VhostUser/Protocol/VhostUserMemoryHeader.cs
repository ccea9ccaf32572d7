using System.Runtime.InteropServices;

namespace Vmm.VhostUser.Protocol;

/// <summary>
/// The fixed head of "Multiple Memory regions description" (SET_MEM_TABLE): num regions u32,
/// padding u32, followed by that many <see cref="VhostUserMemoryRegion"/>s.
/// </summary>
[StructLayout(LayoutKind.Sequential, Pack = 1)]
public struct VhostUserMemoryHeader
{
    public const int Size = 8;

    public uint NRegions;
    public uint Padding;

    public VhostUserMemoryHeader(uint nregions)
    {
        NRegions = nregions;
        Padding = 0;
    }

    public static VhostUserMemoryHeader Read(ReadOnlySpan<byte> source) =>
        WireStruct.Read<VhostUserMemoryHeader>(source, "memory table header");

    public readonly int Write(Span<byte> destination) => WireStruct.Write(destination, in this);
}
