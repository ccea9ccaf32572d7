namespace Vmm.Core.Machine;

/// <summary>
/// Address ranges mapped to device register windows. A guest (our guest driver, or an
/// embedding host's vCPU MMIO exits) reads and writes through it; an access that hits no
/// device reads as all ones and writes are dropped, as on real hardware.
/// </summary>
public sealed class MmioBus
{
    private readonly object _lock = new();
    private volatile MmioMapping[] _mappings = [];

    public IReadOnlyList<MmioMapping> Mappings => _mappings;

    public void Map(ulong baseAddress, ulong size, IMmioDevice device, string name)
    {
        ArgumentNullException.ThrowIfNull(device);
        if (size == 0 || baseAddress + (size - 1) < baseAddress)
        {
            throw new ArgumentOutOfRangeException(nameof(size), "An MMIO window must be non-empty and must not wrap.");
        }

        lock (_lock)
        {
            foreach (MmioMapping m in _mappings)
            {
                if (baseAddress <= m.BaseAddress + (m.Size - 1) && m.BaseAddress <= baseAddress + (size - 1))
                {
                    throw new InvalidOperationException($"MMIO window {name} at 0x{baseAddress:x} overlaps {m.Name}.");
                }
            }

            _mappings = [.. _mappings, new MmioMapping(baseAddress, size, device, name)];
        }
    }

    public void Unmap(IMmioDevice device)
    {
        lock (_lock)
        {
            _mappings = _mappings.Where(m => !ReferenceEquals(m.Device, device)).ToArray();
        }
    }

    /// <summary>True when an access hit a device.</summary>
    public bool Read(ulong address, Span<byte> data)
    {
        MmioMapping? m = Find(address, (ulong)data.Length);
        if (m is null)
        {
            data.Fill(0xff);
            return false;
        }

        m.Device.Read(address - m.BaseAddress, data);
        return true;
    }

    public bool Write(ulong address, ReadOnlySpan<byte> data)
    {
        MmioMapping? m = Find(address, (ulong)data.Length);
        if (m is null)
        {
            return false;
        }

        m.Device.Write(address - m.BaseAddress, data);
        return true;
    }

    public uint ReadUInt32(ulong address)
    {
        Span<byte> b = stackalloc byte[4];
        Read(address, b);
        return System.Buffers.Binary.BinaryPrimitives.ReadUInt32LittleEndian(b);
    }

    public void WriteUInt32(ulong address, uint value)
    {
        Span<byte> b = stackalloc byte[4];
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32LittleEndian(b, value);
        Write(address, b);
    }

    private MmioMapping? Find(ulong address, ulong length)
    {
        foreach (MmioMapping m in _mappings)
        {
            if (address >= m.BaseAddress && length <= m.Size && address - m.BaseAddress <= m.Size - length)
            {
                return m;
            }
        }

        return null;
    }
}

public sealed record MmioMapping(ulong BaseAddress, ulong Size, IMmioDevice Device, string Name);
