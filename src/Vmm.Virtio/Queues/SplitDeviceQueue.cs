using System.Buffers.Binary;
using Vmm.Core.Interrupts;
using Vmm.Core.Memory;
using Vmm.Virtio.Spec;
using static Vmm.Virtio.Spec.VirtqueueLayout;

namespace Vmm.Virtio.Queues;

/// <summary>
/// The device side of a split virtqueue (virtio 1.2, 2.7): reads chains from the available
/// ring, writes used elements, honours NO_INTERRUPT / used_event and sets NO_NOTIFY / avail_event.
/// One thread at a time (the queue's worker); no locks, no allocation beyond the chain.
/// </summary>
public sealed class SplitDeviceQueue : IDeviceQueue
{
    private readonly ulong _descTable;
    private readonly ulong _availRing;
    private readonly ulong _usedRing;
    private readonly ulong _usedEventAddress;
    private readonly ulong _availEventAddress;
    private readonly bool _eventIdx;
    private readonly bool _indirect;
    private readonly InterruptLine _interrupt;
    private readonly IInflightTracker? _tracker;
    private readonly ChainBuilder _builder;
    private readonly Queue<ushort>? _resubmit;

    private ushort _lastAvail;
    private ushort _cachedAvailIdx;
    private ushort _usedIdx;
    private ushort _signalledUsed;

    // Our last write to used.flags; starts unknown so the first call writes, clearing a NO_NOTIFY
    // left in guest memory by an earlier queue object (a restart).
    private int _usedFlagsShadow = -1;

    public SplitDeviceQueue(VirtqueueResources resources, ulong negotiatedFeatures, VirtqueueState? initialState, IInflightTracker? tracker = null)
    {
        ArgumentNullException.ThrowIfNull(resources);
        VirtqueueParams p = resources.Params;
        Memory = resources.Memory;
        Size = p.Size;
        if (!IsValidSplitSize(Size))
        {
            throw new VirtqueueException($"Split queue size {Size} is not a power of two from 1 to {MaxQueueSize} (virtio 1.2, 2.7).");
        }

        DeviceQueue.CheckArea(Memory, "descriptor table", p.DescriptorArea, SplitDescriptorTableSize(Size), SplitDescriptorAlignment);
        DeviceQueue.CheckArea(Memory, "available ring", p.DriverArea, SplitAvailRingSize(Size), SplitAvailAlignment);
        DeviceQueue.CheckArea(Memory, "used ring", p.DeviceArea, SplitUsedRingSize(Size), SplitUsedAlignment);

        _descTable = p.DescriptorArea;
        _availRing = p.DriverArea;
        _usedRing = p.DeviceArea;
        _usedEventAddress = _availRing + (ulong)SplitUsedEventOffset(Size);
        _availEventAddress = _usedRing + (ulong)SplitAvailEventOffset(Size);
        _eventIdx = (negotiatedFeatures & VirtioFeatures.RING_EVENT_IDX) != 0;
        _indirect = (negotiatedFeatures & VirtioFeatures.RING_INDIRECT_DESC) != 0;
        _interrupt = resources.Interrupt;
        _tracker = tracker;
        _builder = new ChainBuilder(Memory, DeviceQueue.MaxChainSegments(Size, _indirect));
        if (resources.Resubmit is { Count: > 0 } resubmit)
        {
            foreach (ushort head in resubmit)
            {
                if (head >= Size)
                {
                    throw new VirtqueueException($"Head {head} to resubmit is outside a queue of {Size}.");
                }
            }

            _resubmit = new Queue<ushort>(resubmit);
        }

        VirtqueueState state = initialState ?? default;
        _lastAvail = state.AvailableIndex;
        _cachedAvailIdx = state.AvailableIndex;
        _usedIdx = state.UsedIndex;
        _signalledUsed = state.UsedIndex;
    }

    public ushort Size { get; }

    public GuestMemory Memory { get; }

    public bool TryPop(out DescriptorChain chain)
    {
        if (_resubmit is { Count: > 0 })
        {
            // A chain the driver made available before a reconnect and never got back: its
            // descriptors are still the driver's request, so it is read again from its head.
            ushort again = _resubmit.Dequeue();
            chain = ReadChain(again);
            _tracker?.OnPopped(again);
            return true;
        }

        if (_lastAvail == _cachedAvailIdx && !RefreshAvailIdx())
        {
            chain = null!;
            return false;
        }

        ushort slot = (ushort)(_lastAvail & (Size - 1));
        ushort head = Memory.ReadUInt16(_availRing + SplitAvailRingOffset + ((ulong)slot * SplitAvailElementSize));
        chain = ReadChain(head);
        _lastAvail++;
        _tracker?.OnPopped(head);
        return true;
    }

    public void Complete(DescriptorChain chain, uint bytesWritten)
    {
        ArgumentNullException.ThrowIfNull(chain);
        ulong element = _usedRing + SplitUsedRingOffset + ((ulong)(_usedIdx & (Size - 1)) * SplitUsedElementSize);
        Span<byte> e = Memory.GetSpan(element, SplitUsedElementSize);
        BinaryPrimitives.WriteUInt32LittleEndian(e, chain.Head);
        BinaryPrimitives.WriteUInt32LittleEndian(e[4..], bytesWritten);
        _usedIdx++;
        _tracker?.OnCompleting(chain.Head);

        // Release: the used element above becomes visible before the driver sees idx cover it (2.7.8.2).
        Memory.WriteUInt16Release(_usedRing + SplitUsedIdxOffset, _usedIdx);
        _tracker?.OnCompleted(chain.Head);
    }

    public bool NotifyIfNeeded()
    {
        if (_usedIdx == _signalledUsed)
        {
            return false;
        }

        // Full fence: the used idx store above must be globally visible before we read the
        // driver's flags / used_event, or both sides can miss the notification (2.7.10).
        GuestMemory.FullFence();
        ushort old = _signalledUsed;
        _signalledUsed = _usedIdx;
        bool notify = _eventIdx
            ? NeedEvent(Memory.ReadUInt16(_usedEventAddress), _usedIdx, old)
            : (Memory.ReadUInt16(_availRing + SplitAvailFlagsOffset) & VRING_AVAIL_F_NO_INTERRUPT) == 0;
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
            // Ask for a kick as soon as the driver makes the entry at our position available (2.7.10).
            Memory.WriteUInt16Release(_availEventAddress, _lastAvail);
        }
        else
        {
            SetUsedFlags(0);
        }

        // Full fence: our avail_event / flags store must be visible before we re-read avail idx,
        // else a driver that just added a buffer and read the old value skips its kick (2.7.10).
        GuestMemory.FullFence();
        return RefreshAvailIdx();
    }

    public void DisableNotifications()
    {
        // With EVENT_IDX the stale avail_event already stops further kicks once passed (2.7.10).
        if (!_eventIdx)
        {
            SetUsedFlags(VRING_USED_F_NO_NOTIFY);
        }
    }

    public VirtqueueState GetState() => new(_lastAvail, _usedIdx);

    private void SetUsedFlags(ushort flags)
    {
        // Only write on change: the driver reads this line on every submission.
        if (_usedFlagsShadow != flags)
        {
            Memory.WriteUInt16Release(_usedRing + SplitUsedFlagsOffset, flags);
            _usedFlagsShadow = flags;
        }
    }

    /// <summary>Re-reads avail idx; true when entries are pending. Throws on a jump beyond the queue size.</summary>
    private bool RefreshAvailIdx()
    {
        // Acquire: ring entries and descriptors the index covers are read after it (2.7.13.3).
        ushort idx = Memory.ReadUInt16Acquire(_availRing + SplitAvailIdxOffset);
        if ((ushort)(idx - _lastAvail) > Size)
        {
            ThrowHelper.ThrowAvailIndexJump(_lastAvail, idx, Size);
        }

        _cachedAvailIdx = idx;
        return idx != _lastAvail;
    }

    private DescriptorChain ReadChain(ushort head)
    {
        if (head >= Size)
        {
            throw new VirtqueueException($"Available ring names descriptor {head}, beyond the queue size {Size}.");
        }

        ChainBuilder b = _builder;
        b.Reset();
        ulong table = _descTable;
        uint tableEntries = Size;
        bool inIndirect = false;
        uint visited = 0;
        ushort index = head;
        while (true)
        {
            // Every table is walked at most once per entry: more steps than entries is a loop (2.7.5.2).
            if (++visited > tableEntries)
            {
                ThrowHelper.ThrowChainLoop(head, tableEntries);
            }

            ReadOnlySpan<byte> d = Memory.GetSpan(table + ((ulong)index * DescriptorSize), DescriptorSize);
            ulong addr = BinaryPrimitives.ReadUInt64LittleEndian(d);
            uint len = BinaryPrimitives.ReadUInt32LittleEndian(d[DescriptorLengthOffset..]);
            ushort flags = BinaryPrimitives.ReadUInt16LittleEndian(d[SplitDescriptorFlagsOffset..]);
            ushort next = BinaryPrimitives.ReadUInt16LittleEndian(d[SplitDescriptorNextOffset..]);

            if ((flags & VIRTQ_DESC_F_INDIRECT) != 0)
            {
                CheckIndirect(addr, len, flags, inIndirect);

                // 2.7.5.3.2: zero or more direct descriptors may precede the indirect one; its
                // table then holds the rest of the chain, starting at entry 0.
                table = addr;
                tableEntries = len / DescriptorSize;
                inIndirect = true;
                visited = 0;
                index = 0;
                continue;
            }

            b.Add(addr, len, (flags & VIRTQ_DESC_F_WRITE) != 0);
            if ((flags & VIRTQ_DESC_F_NEXT) == 0)
            {
                break;
            }

            if (next >= tableEntries)
            {
                ThrowHelper.ThrowNextOutOfTable(index, next, tableEntries);
            }

            index = next;
        }

        return new DescriptorChain(head, b.ToArray(), 1);
    }

    private void CheckIndirect(ulong addr, uint len, ushort flags, bool inIndirect)
    {
        if (!_indirect)
        {
            throw new VirtqueueException("Indirect descriptor used but VIRTIO_F_INDIRECT_DESC was not negotiated (virtio 1.2, 2.7.5.3.1).");
        }

        if (inIndirect)
        {
            throw new VirtqueueException("Nested indirect descriptor (virtio 1.2, 2.7.5.3.1).");
        }

        if ((flags & VIRTQ_DESC_F_NEXT) != 0)
        {
            throw new VirtqueueException("Indirect descriptor also has VIRTQ_DESC_F_NEXT (virtio 1.2, 2.7.5.3.1).");
        }

        if (len == 0 || len % DescriptorSize != 0)
        {
            throw new VirtqueueException($"Indirect table length {len} is not a non-zero multiple of {DescriptorSize}.");
        }

        // Bounded by a fixed limit, not by the queue size: see DeviceQueue.MaxIndirectDescriptors.
        if (len / DescriptorSize > DeviceQueue.MaxIndirectDescriptors)
        {
            throw new VirtqueueException($"Indirect table of {len / DescriptorSize} entries exceeds the limit of {DeviceQueue.MaxIndirectDescriptors}.");
        }

        if (!Memory.IsValidRange(addr, len))
        {
            throw new VirtqueueException($"Indirect table [0x{addr:x}, +0x{len:x}) is not inside guest memory.");
        }
    }
}
