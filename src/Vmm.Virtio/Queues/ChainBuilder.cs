using Vmm.Core.Memory;

namespace Vmm.Virtio.Queues;

/// <summary>
/// Collects the segments of one chain into a reused scratch buffer, checking each buffer
/// against guest memory and the readable-before-writable order (2.7.4.2, 2.8.4.2), then
/// copies them into an exactly sized array for the chain: one array per request.
/// </summary>
internal sealed class ChainBuilder
{
    private readonly GuestMemory _memory;
    private readonly int _maxSegments;
    private DescriptorSegment[] _scratch;
    private int _count;
    private bool _seenWritable;

    public ChainBuilder(GuestMemory memory, int maxSegments)
    {
        _memory = memory;
        _maxSegments = maxSegments;
        _scratch = new DescriptorSegment[Math.Min(maxSegments, 16)];
    }

    public int Count => _count;

    public void Reset()
    {
        _count = 0;
        _seenWritable = false;
    }

    public void Add(ulong address, uint length, bool writable)
    {
        if (_count >= _maxSegments)
        {
            ThrowHelper.ThrowChainTooLong(_maxSegments);
        }

        // A buffer may straddle adjacent memory regions (GuestMemory.IsMappedRange); devices
        // copy or scatter/gather it region by region.
        if (!_memory.IsMappedRange(address, length))
        {
            ThrowHelper.ThrowBufferOutsideMemory(address, length);
        }

        if (writable)
        {
            _seenWritable = true;
        }
        else if (_seenWritable)
        {
            ThrowHelper.ThrowReadableAfterWritable();
        }

        if (_count == _scratch.Length)
        {
            Array.Resize(ref _scratch, Math.Min(_scratch.Length * 2, _maxSegments));
        }

        _scratch[_count++] = new DescriptorSegment(address, length, writable);
    }

    public DescriptorSegment[] ToArray() => _scratch.AsSpan(0, _count).ToArray();
}
