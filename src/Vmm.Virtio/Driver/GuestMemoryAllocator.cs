namespace Vmm.Virtio.Driver;

/// <summary>
/// Hands out guest-physical ranges inside one window of guest RAM: what the guest driver uses
/// for rings, indirect tables and I/O buffers. First fit over a sorted free list with
/// coalescing on free; thread-safe (a lock: this is the guest's allocator, not the device's data plane).
/// </summary>
public sealed class GuestMemoryAllocator
{
    private readonly object _lock = new();
    private readonly List<Range> _free = [];
    private readonly Dictionary<ulong, ulong> _allocated = [];

    /// <summary>Manages [<paramref name="baseAddress"/>, <paramref name="baseAddress"/> + <paramref name="size"/>).</summary>
    public GuestMemoryAllocator(ulong baseAddress, ulong size)
    {
        ArgumentOutOfRangeException.ThrowIfZero(size);
        if (baseAddress + (size - 1) < baseAddress)
        {
            throw new ArgumentOutOfRangeException(nameof(size), "The window overflows the address space.");
        }

        BaseAddress = baseAddress;
        Size = size;
        _free.Add(new Range(baseAddress, size));
    }

    public ulong BaseAddress { get; }

    public ulong Size { get; }

    /// <summary>Bytes not allocated (possibly fragmented).</summary>
    public ulong FreeBytes
    {
        get
        {
            lock (_lock)
            {
                ulong total = 0;
                foreach (Range r in _free)
                {
                    total += r.Length;
                }

                return total;
            }
        }
    }

    /// <summary>Allocates <paramref name="size"/> bytes aligned to <paramref name="alignment"/> (a power of two).</summary>
    /// <exception cref="InsufficientMemoryException">No free range is large enough.</exception>
    public ulong Allocate(ulong size, ulong alignment = 16) =>
        TryAllocate(size, alignment, out ulong address)
            ? address
            : throw new InsufficientMemoryException($"No 0x{size:x} bytes (alignment {alignment}) free in the guest window at 0x{BaseAddress:x}.");

    public bool TryAllocate(ulong size, ulong alignment, out ulong address)
    {
        ArgumentOutOfRangeException.ThrowIfZero(size);
        if (alignment == 0 || (alignment & (alignment - 1)) != 0)
        {
            throw new ArgumentOutOfRangeException(nameof(alignment), alignment, "Alignment must be a power of two.");
        }

        lock (_lock)
        {
            for (int i = 0; i < _free.Count; i++)
            {
                Range r = _free[i];
                ulong start = (r.Start + (alignment - 1)) & ~(alignment - 1);
                ulong pad = start - r.Start;
                if (start < r.Start || pad > r.Length || r.Length - pad < size)
                {
                    continue;
                }

                ulong tail = r.Length - pad - size;
                _free.RemoveAt(i);
                if (tail > 0)
                {
                    _free.Insert(i, new Range(start + size, tail));
                }

                if (pad > 0)
                {
                    _free.Insert(i, new Range(r.Start, pad));
                }

                _allocated.Add(start, size);
                address = start;
                return true;
            }
        }

        address = 0;
        return false;
    }

    /// <summary>Returns a range that <see cref="Allocate"/> handed out.</summary>
    public void Free(ulong address)
    {
        lock (_lock)
        {
            if (!_allocated.Remove(address, out ulong size))
            {
                throw new ArgumentException($"0x{address:x} was not allocated here.", nameof(address));
            }

            int i = 0;
            while (i < _free.Count && _free[i].Start < address)
            {
                i++;
            }

            var range = new Range(address, size);
            if (i > 0 && _free[i - 1].Start + _free[i - 1].Length == address)
            {
                i--;
                range = new Range(_free[i].Start, _free[i].Length + size);
                _free.RemoveAt(i);
            }

            if (i < _free.Count && range.Start + range.Length == _free[i].Start)
            {
                range = new Range(range.Start, range.Length + _free[i].Length);
                _free.RemoveAt(i);
            }

            _free.Insert(i, range);
        }
    }

    private readonly record struct Range(ulong Start, ulong Length);
}
