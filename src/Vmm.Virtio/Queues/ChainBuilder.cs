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
            throw new VirtqueueException($"Descriptor chain is longer than the queue size {_maxSegments} (virtio 1.2, 2.7.5.2).");
        }

        if (!_memory.IsValidRange(address, length))
        {
            throw new VirtqueueException($"Descriptor buffer [0x{address:x}, +0x{length:x}) is not inside guest memory.");
        }

        if (writable)
        {
            _seenWritable = true;
        }
        else if (_seenWritable)
        {
            throw new VirtqueueException("A device-readable descriptor follows a device-writable one (virtio 1.2, 2.7.4.2).");
        }

        if (_count == _scratch.Length)
        {
            Array.Resize(ref _scratch, Math.Min(_scratch.Length * 2, _maxSegments));
        }

        _scratch[_count++] = new DescriptorSegment(address, length, writable);
    }

    public DescriptorSegment[] ToArray() => _scratch.AsSpan(0, _count).ToArray();
}
