using Vmm.Core.Memory;
using Vmm.Virtio.Queues;
using Vmm.Virtio.Spec;
using static Vmm.Virtio.Spec.VirtqueueLayout;

namespace Vmm.Virtio.Driver;

/// <summary>
/// The guest side of a split virtqueue (virtio 1.2, 2.7), as Linux's virtio_ring does it: a free
/// list of descriptors, indirect tables for multi-buffer chains when negotiated, EVENT_IDX both
/// ways. The free list and per-chain bookkeeping live in managed arrays, never trusted from the ring.
/// </summary>
public sealed class SplitDriverQueue : IDriverQueue
{
    private const ushort NoDescriptor = ushort.MaxValue;

    private readonly GuestMemory _memory;
    private readonly ulong _desc;
    private readonly ulong _avail;
    private readonly ulong _used;
    private readonly ulong _usedEvent;
    private readonly ulong _availEvent;
    private readonly bool _eventIdx;
    private readonly bool _indirect;
    private readonly ushort _mask;
    private readonly ushort[] _next;
    private readonly object?[] _tokens;
    private readonly ushort[] _chainDescriptors;
    private readonly IndirectTables? _indirectTables;

    private ushort _freeHead;
    private int _numFree;
    private ushort _availIdx;
    private int _numAdded;
    private ushort _lastUsed;
    private ushort _cachedUsedIdx;
    private bool _interruptsEnabled = true;

    /// <summary>
    /// A driver queue over rings already placed at <paramref name="parameters"/>; both ring indices
    /// start at <paramref name="initialIndex"/> (written into the rings). Without an allocator no
    /// indirect tables are used.
    /// </summary>
    public SplitDriverQueue(GuestMemory memory, VirtqueueParams parameters, ulong negotiatedFeatures, GuestMemoryAllocator? allocator = null, ushort initialIndex = 0)
    {
        _memory = memory ?? throw new ArgumentNullException(nameof(memory));
        Params = parameters ?? throw new ArgumentNullException(nameof(parameters));
        Size = parameters.Size;
        if (!IsValidSplitSize(Size))
        {
            throw new ArgumentOutOfRangeException(nameof(parameters), Size, "A split queue size is a power of two from 1 to 32768 (virtio 1.2, 2.7).");
        }

        _desc = parameters.DescriptorArea;
        _avail = parameters.DriverArea;
        _used = parameters.DeviceArea;
        _usedEvent = _avail + (ulong)SplitUsedEventOffset(Size);
        _availEvent = _used + (ulong)SplitAvailEventOffset(Size);
        _eventIdx = (negotiatedFeatures & VirtioFeatures.RING_EVENT_IDX) != 0;
        _indirect = (negotiatedFeatures & VirtioFeatures.RING_INDIRECT_DESC) != 0 && allocator is not null;
        _mask = (ushort)(Size - 1);
        _next = new ushort[Size];
        _tokens = new object?[Size];
        _chainDescriptors = new ushort[Size];
        _indirectTables = _indirect ? new IndirectTables(allocator!, Size) : null;
        for (int i = 0; i < Size; i++)
        {
            _next[i] = i + 1 < Size ? (ushort)(i + 1) : NoDescriptor;
        }

        _freeHead = 0;
        _numFree = Size;
        _availIdx = initialIndex;
        _lastUsed = initialIndex;
        _cachedUsedIdx = initialIndex;
        _memory.WriteUInt16(_avail + SplitAvailFlagsOffset, 0);
        _memory.WriteUInt16(_avail + SplitAvailIdxOffset, initialIndex);
        _memory.WriteUInt16(_usedEvent, initialIndex);
        _memory.WriteUInt16(_used + SplitUsedIdxOffset, initialIndex);
    }

    public ushort Size { get; }

    public VirtqueueParams Params { get; }

    public int FreeDescriptors => _numFree;

    public bool TrySubmit(ReadOnlySpan<DriverBuffer> buffers, object token)
    {
        ArgumentNullException.ThrowIfNull(token);
        DriverQueue.CheckBuffers(buffers, Size);
        bool useIndirect = _indirect && buffers.Length > 1;
        int needed = useIndirect ? 1 : buffers.Length;
        if (_numFree < needed)
        {
            return false;
        }

        ushort head = _freeHead;
        if (useIndirect)
        {
            ulong table = _indirectTables!.Ensure(head, buffers.Length);
            for (int i = 0; i < buffers.Length; i++)
            {
                DriverBuffer b = buffers[i];
                ushort flags = (ushort)((b.DeviceWritable ? VIRTQ_DESC_F_WRITE : 0) | (i + 1 < buffers.Length ? VIRTQ_DESC_F_NEXT : 0));
                DriverQueue.WriteDescriptor(_memory.GetSpan(table + ((ulong)i * DescriptorSize), DescriptorSize), b.Address, b.Length, flags, (ushort)(i + 1));
            }

            DriverQueue.WriteDescriptor(Descriptor(head), table, (uint)(buffers.Length * DescriptorSize), VIRTQ_DESC_F_INDIRECT, 0);
            _freeHead = _next[head];
        }
        else
        {
            ushort index = head;
            for (int i = 0; i < buffers.Length; i++)
            {
                DriverBuffer b = buffers[i];
                bool last = i + 1 == buffers.Length;
                ushort flags = (ushort)((b.DeviceWritable ? VIRTQ_DESC_F_WRITE : 0) | (last ? 0 : VIRTQ_DESC_F_NEXT));
                DriverQueue.WriteDescriptor(Descriptor(index), b.Address, b.Length, flags, last ? (ushort)0 : _next[index]);
                index = _next[index];
            }

            _freeHead = index;
        }

        _numFree -= needed;
        _chainDescriptors[head] = (ushort)needed;
        _tokens[head] = token;
        _memory.WriteUInt16(_avail + SplitAvailRingOffset + ((ulong)(_availIdx & _mask) * SplitAvailElementSize), head);
        _availIdx++;

        // Release: descriptors and the ring entry are visible before idx offers them (2.7.13).
        _memory.WriteUInt16Release(_avail + SplitAvailIdxOffset, _availIdx);
        _numAdded++;
        return true;
    }

    public bool NeedsKick()
    {
        int added = _numAdded;
        _numAdded = 0;
        if (added == 0)
        {
            return false;
        }

        // Full fence: the avail idx store must be visible before we read the device's
        // flags / avail_event, or the device may sleep on a ring we just filled (2.7.13.4).
        GuestMemory.FullFence();
        if (_eventIdx)
        {
            return added >= ushort.MaxValue || NeedEvent(_memory.ReadUInt16(_availEvent), _availIdx, (ushort)(_availIdx - added));
        }

        return (_memory.ReadUInt16(_used + SplitUsedFlagsOffset) & VRING_USED_F_NO_NOTIFY) == 0;
    }

    public bool TryTakeUsed(out object? token, out uint bytesWritten)
    {
        if (_lastUsed == _cachedUsedIdx)
        {
            // Acquire: the used elements covered by idx are read after it (2.7.8).
            ushort idx = _memory.ReadUInt16Acquire(_used + SplitUsedIdxOffset);
            if ((ushort)(idx - _lastUsed) > Size)
            {
                throw new VirtqueueException($"Used index moved from {_lastUsed} to {idx}, more than the queue size {Size}.");
            }

            _cachedUsedIdx = idx;
            if (idx == _lastUsed)
            {
                token = null;
                bytesWritten = 0;
                return false;
            }
        }

        ulong element = _used + SplitUsedRingOffset + ((ulong)(_lastUsed & _mask) * SplitUsedElementSize);
        uint id = _memory.ReadUInt32(element);
        bytesWritten = _memory.ReadUInt32(element + 4);
        if (id >= Size || _tokens[id] is null)
        {
            throw new VirtqueueException($"The device returned descriptor {id}, which is not in flight.");
        }

        token = _tokens[id];
        _tokens[id] = null;
        FreeChain((ushort)id);
        _lastUsed++;
        if (_eventIdx && _interruptsEnabled)
        {
            // Ask for the next interrupt at the next entry; fence so the device reads it before deciding (2.7.10).
            _memory.WriteUInt16Release(_usedEvent, _lastUsed);
            GuestMemory.FullFence();
        }

        return true;
    }

    public bool EnableInterrupts()
    {
        _interruptsEnabled = true;
        if (_eventIdx)
        {
            _memory.WriteUInt16Release(_usedEvent, _lastUsed);
        }
        else
        {
            _memory.WriteUInt16Release(_avail + SplitAvailFlagsOffset, 0);
        }

        // Full fence: the store above is visible before we re-read used idx, so a completion
        // racing with it is either seen here or interrupts (2.7.10).
        GuestMemory.FullFence();
        ushort idx = _memory.ReadUInt16Acquire(_used + SplitUsedIdxOffset);
        return idx != _lastUsed;
    }

    public void DisableInterrupts()
    {
        _interruptsEnabled = false;
        if (_eventIdx)
        {
            // Half the index space away: no completion window the device can reach contains it.
            _memory.WriteUInt16Release(_usedEvent, (ushort)(_lastUsed + 0x8000));
        }
        else
        {
            _memory.WriteUInt16Release(_avail + SplitAvailFlagsOffset, VRING_AVAIL_F_NO_INTERRUPT);
        }
    }

    private Span<byte> Descriptor(ushort index) => _memory.GetSpan(_desc + ((ulong)index * DescriptorSize), DescriptorSize);

    private void FreeChain(ushort head)
    {
        ushort last = head;
        for (int i = 1; i < _chainDescriptors[head]; i++)
        {
            last = _next[last];
        }

        _numFree += _chainDescriptors[head];
        _next[last] = _freeHead;
        _freeHead = head;
    }
}
