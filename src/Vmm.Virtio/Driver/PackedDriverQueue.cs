using Vmm.Core.Memory;
using Vmm.Virtio.Queues;
using Vmm.Virtio.Spec;
using static Vmm.Virtio.Spec.VirtqueueLayout;

namespace Vmm.Virtio.Driver;

/// <summary>
/// The guest side of a packed virtqueue (virtio 1.2, 2.8): descriptors written in ring order with
/// the available wrap counter in AVAIL/USED, the head's flags last; buffer ids from a free stack;
/// completions read at the used position with the used wrap counter. The driver event suppression
/// area (driver area) is ours to write; the device's (device area) tells us when to kick.
/// </summary>
public sealed class PackedDriverQueue : IDriverQueue
{
    private readonly GuestMemory _memory;
    private readonly ulong _ring;
    private readonly ulong _driverEvent;
    private readonly ulong _deviceEvent;
    private readonly bool _eventIdx;
    private readonly bool _indirect;
    private readonly ushort[] _freeIds;
    private readonly object?[] _tokens;
    private readonly ushort[] _slots;
    private readonly IndirectTables? _indirectTables;

    private int _freeIdCount;
    private int _numFree;
    private ushort _nextAvail;
    private bool _availWrap = true;
    private int _numAdded;
    private ushort _lastUsed;
    private bool _usedWrap = true;
    private bool _interruptsEnabled = true;

    /// <summary>
    /// A driver queue over zeroed rings already placed at <paramref name="parameters"/> (2.8.1: wrap
    /// counters start at 1), or, with <paramref name="resumeAt"/>, over rings that stopped with
    /// nothing in flight at that position (a restore): the next descriptor goes at its available
    /// position and wrap counter, the next used one is expected at its used position.
    /// </summary>
    public PackedDriverQueue(GuestMemory memory, VirtqueueParams parameters, ulong negotiatedFeatures, GuestMemoryAllocator? allocator = null, VirtqueueState? resumeAt = null)
    {
        _memory = memory ?? throw new ArgumentNullException(nameof(memory));
        Params = parameters ?? throw new ArgumentNullException(nameof(parameters));
        Size = parameters.Size;
        if (!IsValidPackedSize(Size))
        {
            throw new ArgumentOutOfRangeException(nameof(parameters), Size, "A packed queue size is from 1 to 32768 (virtio 1.2, 2.8).");
        }

        _ring = parameters.DescriptorArea;
        _driverEvent = parameters.DriverArea;
        _deviceEvent = parameters.DeviceArea;
        _eventIdx = (negotiatedFeatures & VirtioFeatures.RING_EVENT_IDX) != 0;
        _indirect = (negotiatedFeatures & VirtioFeatures.RING_INDIRECT_DESC) != 0 && allocator is not null;
        _freeIds = new ushort[Size];
        _tokens = new object?[Size];
        _slots = new ushort[Size];
        _indirectTables = _indirect ? new IndirectTables(allocator!, Size) : null;
        for (int i = 0; i < Size; i++)
        {
            _freeIds[i] = (ushort)(Size - 1 - i);
        }

        _freeIdCount = Size;
        _numFree = Size;
        if (resumeAt is { } state)
        {
            if (state.AvailableIndex >= Size || state.UsedIndex >= Size)
            {
                throw new ArgumentOutOfRangeException(nameof(resumeAt), state, $"A packed ring position lies below the queue size {Size}.");
            }

            _nextAvail = state.AvailableIndex;
            _availWrap = state.AvailableWrapCounter;
            _lastUsed = state.UsedIndex;
            _usedWrap = state.UsedWrapCounter;
        }

        _memory.WriteUInt32(_driverEvent, 0);
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
        if (_numFree < needed || _freeIdCount == 0)
        {
            return false;
        }

        ushort id = _freeIds[--_freeIdCount];
        ulong headAddress = DescriptorAddress(_nextAvail);
        ushort headFlags;
        if (useIndirect)
        {
            ulong table = _indirectTables!.Ensure(id, buffers.Length);
            for (int i = 0; i < buffers.Length; i++)
            {
                // 2.8.7: table entries are consumed in order; only WRITE matters in them.
                DriverBuffer b = buffers[i];
                DriverQueue.WriteDescriptor(
                    _memory.GetSpan(table + ((ulong)i * DescriptorSize), DescriptorSize),
                    b.Address, b.Length, 0, b.DeviceWritable ? VIRTQ_DESC_F_WRITE : (ushort)0);
            }

            headFlags = (ushort)(VIRTQ_DESC_F_INDIRECT | AvailBits(_availWrap));
            DriverQueue.WritePackedHeadFields(_memory.GetSpan(headAddress, DescriptorSize), table, (uint)(buffers.Length * DescriptorSize), id);
            Advance(ref _nextAvail, ref _availWrap, 1);
        }
        else
        {
            headFlags = 0;
            ushort position = _nextAvail;
            bool wrap = _availWrap;
            for (int i = 0; i < buffers.Length; i++)
            {
                DriverBuffer b = buffers[i];
                ushort flags = (ushort)((b.DeviceWritable ? VIRTQ_DESC_F_WRITE : 0)
                    | (i + 1 < buffers.Length ? VIRTQ_DESC_F_NEXT : 0)
                    | AvailBits(wrap));

                // The head's flags are written last, below; the others may be written now (2.8.21).
                Span<byte> d = _memory.GetSpan(DescriptorAddress(position), DescriptorSize);
                if (i == 0)
                {
                    DriverQueue.WritePackedHeadFields(d, b.Address, b.Length, id);
                    headFlags = flags;
                }
                else
                {
                    DriverQueue.WriteDescriptor(d, b.Address, b.Length, id, flags);
                }

                Advance(ref position, ref wrap, 1);
            }

            _nextAvail = position;
            _availWrap = wrap;
        }

        _tokens[id] = token;
        _slots[id] = (ushort)needed;
        _numFree -= needed;
        _numAdded += needed;

        // Release: every other field of the chain is visible before the head's flags offer it (2.8.21).
        _memory.WriteUInt16Release(headAddress + PackedDescriptorFlagsOffset, headFlags);
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

        // Full fence: the descriptors' flags are visible before we read the device's event
        // suppression, or the device may sleep on buffers we just offered (2.8.10).
        GuestMemory.FullFence();
        uint e = _memory.ReadUInt32(_deviceEvent);
        ushort offWrap = (ushort)e;
        ushort flags = (ushort)(e >> 16);
        if (flags == RING_EVENT_FLAGS_DESC && _eventIdx)
        {
            return added >= Size || PackedDeviceQueue.PassedEvent(offWrap, _nextAvail, _availWrap, added, Size);
        }

        return flags != RING_EVENT_FLAGS_DISABLE;
    }

    public bool TryTakeUsed(out object? token, out uint bytesWritten)
    {
        ulong d = DescriptorAddress(_lastUsed);

        // Acquire: id and len of a used descriptor are read after its flags say it is used.
        ushort flags = _memory.ReadUInt16Acquire(d + PackedDescriptorFlagsOffset);
        if (!IsUsed(flags))
        {
            token = null;
            bytesWritten = 0;
            return false;
        }

        ushort id = _memory.ReadUInt16(d + PackedDescriptorIdOffset);
        bytesWritten = _memory.ReadUInt32(d + DescriptorLengthOffset);
        if (id >= Size || _tokens[id] is null)
        {
            throw new VirtqueueException($"The device returned buffer id {id}, which is not in flight.");
        }

        token = _tokens[id];
        _tokens[id] = null;
        ushort slots = _slots[id];
        _freeIds[_freeIdCount++] = id;
        _numFree += slots;

        // 2.8.9: the next used descriptor follows the slots this buffer occupied.
        Advance(ref _lastUsed, ref _usedWrap, slots);
        if (_eventIdx && _interruptsEnabled)
        {
            // Ask for the next interrupt at the next used position; fence so the device reads it before deciding.
            _memory.WriteUInt16Release(_driverEvent + PackedEventOffWrapOffset, OffWrap(_lastUsed, _usedWrap));
            GuestMemory.FullFence();
        }

        return true;
    }

    public bool EnableInterrupts()
    {
        _interruptsEnabled = true;
        if (_eventIdx)
        {
            _memory.WriteUInt16Release(_driverEvent + PackedEventOffWrapOffset, OffWrap(_lastUsed, _usedWrap));
            _memory.WriteUInt16Release(_driverEvent + PackedEventFlagsOffset, RING_EVENT_FLAGS_DESC);
        }
        else
        {
            _memory.WriteUInt16Release(_driverEvent + PackedEventFlagsOffset, RING_EVENT_FLAGS_ENABLE);
        }

        // Full fence: the store above is visible before we re-check the used position, so a
        // completion racing with it is either seen here or interrupts (2.8.10).
        GuestMemory.FullFence();
        return IsUsed(_memory.ReadUInt16Acquire(DescriptorAddress(_lastUsed) + PackedDescriptorFlagsOffset));
    }

    public void DisableInterrupts()
    {
        _interruptsEnabled = false;
        _memory.WriteUInt16Release(_driverEvent + PackedEventFlagsOffset, RING_EVENT_FLAGS_DISABLE);
    }

    /// <summary>2.8.1: offered descriptors carry AVAIL = wrap counter and USED = its inverse.</summary>
    private static ushort AvailBits(bool wrap) => wrap ? VIRTQ_DESC_F_AVAIL : VIRTQ_DESC_F_USED;

    private static ushort OffWrap(ushort position, bool wrap) => (ushort)(position | (wrap ? 1 << PackedEventWrapShift : 0));

    private bool IsUsed(ushort flags) =>
        ((flags & VIRTQ_DESC_F_AVAIL) != 0) == _usedWrap && ((flags & VIRTQ_DESC_F_USED) != 0) == _usedWrap;

    private void Advance(ref ushort position, ref bool wrap, int count)
    {
        int next = position + count;
        if (next >= Size)
        {
            next -= Size;
            wrap = !wrap;
        }

        position = (ushort)next;
    }

    private ulong DescriptorAddress(int position) => _ring + ((ulong)position * DescriptorSize);
}
