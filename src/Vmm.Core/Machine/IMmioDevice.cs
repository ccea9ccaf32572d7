namespace Vmm.Core.Machine;

/// <summary>A register window on the MMIO bus (a virtio transport, for instance).</summary>
public interface IMmioDevice
{
    /// <summary>Reads <paramref name="data"/>.Length bytes at <paramref name="offset"/> into the window.</summary>
    void Read(ulong offset, Span<byte> data);

    /// <summary>Writes <paramref name="data"/> at <paramref name="offset"/> into the window.</summary>
    void Write(ulong offset, ReadOnlySpan<byte> data);
}
