using System.Buffers.Binary;
using Vmm.Core.Interrupts;
using Vmm.Core.Memory;
using Vmm.Virtio.Spec;
using static Vmm.Virtio.Spec.VirtqueueLayout;

namespace Vmm.Virtio.Queues;

/// <summary>
/// The device side of a packed virtqueue (virtio 1.2, 2.8): descriptors are available when
/// their AVAIL flag equals the device's available wrap counter and USED does not; the device
/// writes one used descriptor per chain at its used position. The driver event suppression
/// area (driver area) gates interrupts; the device event suppression area (device area) gates kicks.
/// One thread at a time (the queue's worker); no locks, no allocation beyond the chain.
/// </summary>
public sealed class PackedDeviceQueue : IDeviceQueue
{
    private readonly ulong _ring;
    private readonly ulong _driverEvent;
    private readonly ulong _deviceEvent;
    private readonly bool _eventIdx;
    private readonly bool _indirect;
    private readonly InterruptLine _interrupt;
    private readonly IInflightTracker? _tracker;
    private readonly ChainBuilder _builder;
    private readonly IPackedInflightTracker? _packedTracker;
    private readonly PackedRingDescriptor[]? _raw;
    private readonly Queue<PackedResubmitChain>? _resubmit;

    private ushort _nextAvail;
    private bool _availWrap;
    private ushort _nextUsed;
    private bool _usedWrap;

    /// <summary>Ring slots returned since the last interrupt decision (the old..new window of 2.8.10).</summary>
    private int _usedSinceSignal;
    private ushort _deviceEventFlags = ushort.MaxValue;

    public PackedDeviceQueue(VirtqueueResources resources, ulong negotiatedFeatures, VirtqueueState? initialState, IInflightTracker? tracker = null)
    {
        ArgumentNullException.ThrowIfNull(resources);
        VirtqueueParams p = resources.Params;
        Memory = resources.Memory;
        Size = p.Size;
        if (!IsValidPackedSize(Size))
        {
            throw new VirtqueueException($"Packed queue size {Size} is not from 1 to {MaxQueueSize} (virtio 1.2, 2.8).");
        }

        DeviceQueue.CheckArea(Memory, "descriptor ring", p.DescriptorArea, PackedDescriptorRingSize(Size), PackedDescriptorAlignment);
        DeviceQueue.CheckArea(Memory, "driver event suppression area", p.DriverArea, PackedEventSuppressionSize, PackedDriverEventAlignment);
        DeviceQueue.CheckArea(Memory, "device event suppression area", p.DeviceArea, PackedEventSuppressionSize, PackedDeviceEventAlignment);

        _ring = p.DescriptorArea;
        _driverEvent = p.DriverArea;
        _deviceEvent = p.DeviceArea;
        _eventIdx = (negotiatedFeatures & VirtioFeatures.RING_EVENT_IDX) != 0;
        _indirect = (negotiatedFeatures & VirtioFeatures.RING_INDIRECT_DESC) != 0;
        _interrupt = resources.Interrupt;
        _tracker = tracker;
        _builder = new ChainBuilder(Memory, DeviceQueue.MaxChainSegments(Size, _indirect));
        _packedTracker = tracker as IPackedInflightTracker;
        _raw = _packedTracker is null ? null : new PackedRingDescriptor[Size];
        if (resources.ResubmitPacked is { Count: > 0 } resubmit)
        {
            foreach (PackedResubmitChain again in resubmit)
            {
                if (again.Descriptors.Count == 0 || again.Descriptors.Count > Size || again.Descriptors[^1].Id >= Size)
                {
                    throw new VirtqueueException($"A chain to resubmit has {again.Descriptors.Count} descriptors or a buffer id outside a queue of {Size}.");
                }
            }

            _resubmit = new Queue<PackedResubmitChain>(resubmit);
        }

        // 2.8.1: both wrap counters start at 1 and positions at 0 for a fresh ring.
        VirtqueueState state = initialState ?? new VirtqueueState(0, 0, true, true);
        if (state.AvailableIndex >= Size || state.UsedIndex >= Size)
        {
            throw new VirtqueueException($"Packed queue state {state} lies outside a ring of {Size} descriptors.");
        }

        _nextAvail = state.AvailableIndex;
        _availWrap = state.AvailableWrapCounter;
        _nextUsed = state.UsedIndex;
        _usedWrap = state.UsedWrapCounter;
    }

    public ushort Size { get; }

    public GuestMemory Memory { get; }

    public bool TryPop(out DescriptorChain chain)
    {
        if (_resubmit is { Count: > 0 })
        {
            // In flight before a reconnect: rebuilt from the descriptors the inflight region kept.
            // The tracker still holds its entry, so it is not told again.
            chain = ReadResubmitted(_resubmit.Dequeue());
            return true;
        }

        // Acquire: the head's flags say it is available; its other fields and the chain's later
        // descriptors (written before the head's flags, 2.8.21) are read after this load.
        ushort headFlags = Memory.ReadUInt16Acquire(DescriptorAddress(_nextAvail) + PackedDescriptorFlagsOffset);
        if (!IsAvailable(headFlags, _availWrap))
        {
            chain = null!;
            return false;
        }

        chain = ReadChain();
        if (_packedTracker is not null)
        {
            _packedTracker.OnPopped(_raw.AsSpan(0, chain.RingSlots));
        }
        else
        {
            _tracker?.OnPopped(chain.Head);
        }

        return true;
    }

    public void Complete(DescriptorChain chain, uint bytesWritten)
    {
        ArgumentNullException.ThrowIfNull(chain);
        ulong d = DescriptorAddress(_nextUsed);
        Span<byte> s = Memory.GetSpan(d, DescriptorSize);
        BinaryPrimitives.WriteUInt32LittleEndian(s[DescriptorLengthOffset..], bytesWritten);
        BinaryPrimitives.WriteUInt16LittleEndian(s[PackedDescriptorIdOffset..], chain.Head);

        // The tracker records the completion before the flags publish it (vhost-user.rst,
        // "When supplying used buffers": free list and used_idx first, then d.flags).
        _tracker?.OnCompleting(chain.Head);

        // 2.8.1: a used descriptor has AVAIL and USED both equal to the used wrap counter.
        ushort flags = _usedWrap ? (ushort)(VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED) : (ushort)0;

        // Release: id and len above are visible before the flags hand the descriptor back (2.8.21).
        Memory.WriteUInt16Release(d + PackedDescriptorFlagsOffset, flags);

        // 2.8.9: the next used descriptor goes after as many slots as the chain occupied.
        int next = _nextUsed + chain.RingSlots;
        if (next >= Size)
        {
            next -= Size;
            _usedWrap = !_usedWrap;
        }

        _nextUsed = (ushort)next;
        _usedSinceSignal += chain.RingSlots;
        _tracker?.OnCompleted(chain.Head);
    }

    public bool NotifyIfNeeded()
    {
        if (_usedSinceSignal == 0)
        {
            return false;
        }

        int count = _usedSinceSignal;
        _usedSinceSignal = 0;

        // Full fence: the used flags stored by Complete must be visible before we read the
        // driver's event suppression, or both sides can miss the notification (2.8.10).
        GuestMemory.FullFence();
        uint e = Memory.ReadUInt32(_driverEvent);
        ushort offWrap = (ushort)e;
        ushort flags = (ushort)(e >> 16);
        bool notify;
        if (flags == RING_EVENT_FLAGS_DISABLE)
        {
            notify = false;
        }
        else if (flags == RING_EVENT_FLAGS_DESC && _eventIdx)
        {
            notify = count >= Size || PassedEvent(offWrap, _nextUsed, _usedWrap, count);
        }
        else
        {
            notify = true;
        }

        if (notify)
        {
            _interrupt.Raise();
        }

        return notify;
    }

    public bool EnableNotifications()
    {
        if (_eventIdx)
        {
            // Kick wanted once the driver makes the descriptor at our position available (2.8.10).
            ushort offWrap = (ushort)(_nextAvail | (_availWrap ? 1 << PackedEventWrapShift : 0));
            Memory.WriteUInt16Release(_deviceEvent + PackedEventOffWrapOffset, offWrap);
            SetDeviceEventFlags(RING_EVENT_FLAGS_DESC);
        }
        else
        {
            SetDeviceEventFlags(RING_EVENT_FLAGS_ENABLE);
        }

        // Full fence: the suppression store must be visible before we re-read the next
        // descriptor's flags, else a driver that just read "disabled" skips its kick (2.8.10).
        GuestMemory.FullFence();
        ushort headFlags = Memory.ReadUInt16Acquire(DescriptorAddress(_nextAvail) + PackedDescriptorFlagsOffset);
        return IsAvailable(headFlags, _availWrap);
    }

    public void DisableNotifications() => SetDeviceEventFlags(RING_EVENT_FLAGS_DISABLE);

    public VirtqueueState GetState() => new(_nextAvail, _nextUsed, _availWrap, _usedWrap);

    internal static bool IsAvailable(ushort flags, bool wrap) =>
        ((flags & VIRTQ_DESC_F_AVAIL) != 0) == wrap && ((flags & VIRTQ_DESC_F_USED) != 0) != wrap;

    /// <summary>
    /// vring_need_event for packed rings (2.8.10): the event position, taken back one lap when its
    /// wrap bit differs from the current counter, lies in the window of the last <paramref name="count"/> slots.
    /// </summary>
    internal static bool PassedEvent(ushort offWrap, ushort position, bool wrap, int count, int size)
    {
        int eventOffset = offWrap & 0x7fff;
        bool eventWrap = (offWrap >> PackedEventWrapShift) != 0;
        if (eventWrap != wrap)
        {
            eventOffset -= size;
        }

        return NeedEvent((ushort)eventOffset, position, (ushort)(position - count));
    }

    private bool PassedEvent(ushort offWrap, ushort position, bool wrap, int count) => PassedEvent(offWrap, position, wrap, count, Size);

    private void SetDeviceEventFlags(ushort flags)
    {
        // Only write on change: the driver polls this line on every submission.
        if (_deviceEventFlags != flags)
        {
            Memory.WriteUInt16Release(_deviceEvent + PackedEventFlagsOffset, flags);
            _deviceEventFlags = flags;
        }
    }

    private ulong DescriptorAddress(int position) => _ring + ((ulong)position * DescriptorSize);

    private DescriptorChain ReadChain()
    {
        ChainBuilder b = _builder;
        b.Reset();
        int position = _nextAvail;
        bool wrap = _availWrap;
        int slots = 0;
        ushort id;
        while (true)
        {
            // A chain can use at most every slot of the ring once (2.8.6).
            if (++slots > Size)
            {
                throw new VirtqueueException($"Packed descriptor chain is longer than the queue size {Size} (virtio 1.2, 2.8.6).");
            }

            ReadOnlySpan<byte> d = Memory.GetSpan(DescriptorAddress(position), DescriptorSize);
            ulong addr = BinaryPrimitives.ReadUInt64LittleEndian(d);
            uint len = BinaryPrimitives.ReadUInt32LittleEndian(d[DescriptorLengthOffset..]);
            id = BinaryPrimitives.ReadUInt16LittleEndian(d[PackedDescriptorIdOffset..]);
            ushort flags = BinaryPrimitives.ReadUInt16LittleEndian(d[PackedDescriptorFlagsOffset..]);
            if (slots > 1 && !IsAvailable(flags, wrap))
            {
                throw new VirtqueueException($"Packed descriptor chain continues into descriptor {position}, which is not available.");
            }

            if (_raw is not null)
            {
                _raw[slots - 1] = new PackedRingDescriptor(addr, len, id, flags);
            }

            if (++position == Size)
            {
                position = 0;
                wrap = !wrap;
            }

            if ((flags & VIRTQ_DESC_F_INDIRECT) != 0)
            {
                ReadIndirect(addr, len, flags);
                break;
            }

            b.Add(addr, len, (flags & VIRTQ_DESC_F_WRITE) != 0);
            if ((flags & VIRTQ_DESC_F_NEXT) == 0)
            {
                break;
            }
        }

        // 2.8.6: the buffer id is that of the chain's last descriptor.
        if (id >= Size)
        {
            throw new VirtqueueException($"Packed buffer id {id} is not below the queue size {Size}.");
        }

        _nextAvail = (ushort)position;
        _availWrap = wrap;
        return new DescriptorChain(id, b.ToArray(), (ushort)slots);
    }

    private DescriptorChain ReadResubmitted(PackedResubmitChain again)
    {
        ChainBuilder b = _builder;
        b.Reset();
        IReadOnlyList<PackedRingDescriptor> descriptors = again.Descriptors;
        for (int i = 0; i < descriptors.Count; i++)
        {
            PackedRingDescriptor d = descriptors[i];
            if ((d.Flags & VIRTQ_DESC_F_INDIRECT) != 0)
            {
                ReadIndirect(d.Address, d.Length, d.Flags);
                break;
            }

            b.Add(d.Address, d.Length, (d.Flags & VIRTQ_DESC_F_WRITE) != 0);
        }

        return new DescriptorChain(descriptors[^1].Id, b.ToArray(), (ushort)descriptors.Count);
    }

    private void ReadIndirect(ulong addr, uint len, ushort flags)
    {
        if (!_indirect)
        {
            throw new VirtqueueException("Indirect descriptor used but VIRTIO_F_INDIRECT_DESC was not negotiated (virtio 1.2, 2.8.7).");
        }

        if ((flags & VIRTQ_DESC_F_NEXT) != 0)
        {
            throw new VirtqueueException("Indirect descriptor also has VIRTQ_DESC_F_NEXT (virtio 1.2, 2.8.7).");
        }

        if (len == 0 || len % DescriptorSize != 0)
        {
            throw new VirtqueueException($"Indirect table length {len} is not a non-zero multiple of {DescriptorSize}.");
        }

        uint entries = len / DescriptorSize;
        // Bounded by a fixed limit, not by the queue size: see DeviceQueue.MaxIndirectDescriptors.
        if (entries > DeviceQueue.MaxIndirectDescriptors)
        {
            throw new VirtqueueException($"Indirect table of {entries} entries exceeds the limit of {DeviceQueue.MaxIndirectDescriptors}.");
        }

        if (!Memory.IsValidRange(addr, len))
        {
            throw new VirtqueueException($"Indirect table [0x{addr:x}, +0x{len:x}) is not inside guest memory.");
        }

        // 2.8.7: the table's descriptors are used in order; their NEXT flag carries no meaning.
        for (uint i = 0; i < entries; i++)
        {
            ReadOnlySpan<byte> d = Memory.GetSpan(addr + ((ulong)i * DescriptorSize), DescriptorSize);
            ushort f = BinaryPrimitives.ReadUInt16LittleEndian(d[PackedDescriptorFlagsOffset..]);
            if ((f & VIRTQ_DESC_F_INDIRECT) != 0)
            {
                throw new VirtqueueException("Nested indirect descriptor (virtio 1.2, 2.8.7).");
            }

            AddTableEntry(d, f);
        }
    }

    private void AddTableEntry(ReadOnlySpan<byte> d, ushort flags) =>
        _builder.Add(
            BinaryPrimitives.ReadUInt64LittleEndian(d),
            BinaryPrimitives.ReadUInt32LittleEndian(d[DescriptorLengthOffset..]),
            (flags & VIRTQ_DESC_F_WRITE) != 0);
}
