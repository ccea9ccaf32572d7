using Vmm.Core.Memory;
using Vmm.Virtio.Queues;
using Vmm.Virtio.Spec;

namespace Vmm.VhostUser.Inflight;

/// <summary>
/// One packed queue's part of the inflight region (vhost-user.rst, "Inflight I/O tracking",
/// packed virtqueue): a free list of DescStatePacked entries that hold the ring descriptors of
/// every chain taken and not yet returned, so they can be resubmitted after a reconnect even
/// though the ring slots were overwritten by used descriptors since.
/// </summary>
/// <remarks>
/// QueueRegionPacked layout (C alignment, 32-byte header):
/// <code>
/// 0  u64 features              16 u16 used_idx
/// 8  u16 version               18 u16 old_used_idx
/// 10 u16 desc_num              20 u8  used_wrap_counter
/// 12 u16 free_head             21 u8  old_used_wrap_counter
/// 14 u16 old_free_head         22 u8  padding[7], then 3 bytes to align desc[] to 8
/// 32 DescStatePacked desc[desc_num], 32 bytes each:
///    +0 u8 inflight  +1 u8 padding  +2 u16 next  +4 u16 last  +6 u16 num
///    +8 u64 counter  +16 u16 id  +18 u16 flags  +20 u32 len  +24 u64 addr
/// </code>
/// A chain is recorded whole when it is taken (its entries first, the head's inflight flag, then
/// free_head and old_free_head), which is the spec's per-descriptor sequence with the same
/// crash points: a chain half recorded sits in the free list and is dropped by "When reconnecting".
/// </remarks>
public sealed unsafe class PackedInflightQueue : IPackedInflightTracker
{
    public const int HeaderSize = 32;
    public const int DescStateSize = 32;

    private const int VersionOffset = 8;
    private const int DescNumOffset = 10;
    private const int FreeHeadOffset = 12;
    private const int OldFreeHeadOffset = 14;
    private const int UsedIdxOffset = 16;
    private const int OldUsedIdxOffset = 18;
    private const int UsedWrapOffset = 20;
    private const int OldUsedWrapOffset = 21;

    private const int InflightOffset = 0;
    private const int NextOffset = 2;
    private const int LastOffset = 4;
    private const int NumOffset = 6;
    private const int CounterOffset = 8;
    private const int IdOffset = 16;
    private const int FlagsOffset = 18;
    private const int LenOffset = 20;
    private const int AddrOffset = 24;

    private const ushort NoEntry = ushort.MaxValue;

    private readonly byte* _base;
    private readonly ushort _size;
    private readonly ushort[] _entryById;
    private ulong _nextCounter = 1;

    internal PackedInflightQueue(byte* regionBase, ushort size)
    {
        _base = regionBase;
        _size = size;
        _entryById = new ushort[size];
        Array.Fill(_entryById, NoEntry);
    }

    /// <summary>Bytes one packed queue region needs (before the region's 64-byte rounding).</summary>
    public static ulong RegionBytes(ushort queueSize) => HeaderSize + ((ulong)DescStateSize * queueSize);

    /// <summary>
    /// Sets the region up for a ring that starts at <paramref name="state"/>: version 1, every
    /// entry in the free list, the used position and wrap counter, and their "old" copies.
    /// </summary>
    public void Initialise(VirtqueueState state)
    {
        new Span<byte>(_base, (int)RegionBytes(_size)).Clear();
        *(ushort*)(_base + DescNumOffset) = _size;
        for (ushort i = 0; i < _size; i++)
        {
            *(ushort*)(Desc(i) + NextOffset) = (ushort)(i + 1);
        }

        SetCurrent(0, state.UsedIndex, state.UsedWrapCounter);
        SetOld(0, state.UsedIndex, state.UsedWrapCounter);
        Array.Fill(_entryById, NoEntry);
        _nextCounter = 1;
        Volatile.Write(ref *(ushort*)(_base + VersionOffset), InflightRegion.Version);
    }

    /// <summary>
    /// "When reconnecting" for a packed ring whose descriptor ring is at <paramref name="descriptorRing"/>
    /// in <paramref name="memory"/>: commits or rolls back a batch that was being returned, clears
    /// the free entries, and returns the chains still in flight (oldest first) and the ring state
    /// to start from: the used side from the region, the available side just past everything in
    /// flight. A region never initialised (version 0) is initialised at <paramref name="requested"/>
    /// (the SET_VRING_BASE state), with nothing to resubmit.
    /// </summary>
    public (IReadOnlyList<PackedResubmitChain> Resubmit, VirtqueueState State) Recover(
        GuestMemory memory, ulong descriptorRing, VirtqueueState requested)
    {
        ArgumentNullException.ThrowIfNull(memory);
        ushort version = *(ushort*)(_base + VersionOffset);
        ushort descNum = *(ushort*)(_base + DescNumOffset);
        if (version == 0)
        {
            Initialise(requested);
            return ([], requested);
        }

        if (version != InflightRegion.Version || descNum != _size)
        {
            throw new InvalidDataException($"Inflight packed queue region has version {version} and {descNum} descriptors; expected version {InflightRegion.Version} and {_size}.");
        }

        ushort usedIdx = Read16(UsedIdxOffset);
        ushort oldUsedIdx = Read16(OldUsedIdxOffset);
        bool oldWrap = _base[OldUsedWrapOffset] != 0;
        if (usedIdx >= _size || oldUsedIdx >= _size || Read16(FreeHeadOffset) > _size || Read16(OldFreeHeadOffset) > _size)
        {
            throw new InvalidDataException($"Inflight packed queue region holds positions outside a ring of {_size}.");
        }

        if (usedIdx != oldUsedIdx)
        {
            // A batch was being returned. If its first used descriptor no longer looks available
            // (AVAIL = old wrap, USED = !old wrap), the driver got it: commit the update.
            ushort availableFlags = oldWrap ? VirtqueueLayout.VIRTQ_DESC_F_AVAIL : VirtqueueLayout.VIRTQ_DESC_F_USED;
            ushort mask = VirtqueueLayout.VIRTQ_DESC_F_AVAIL | VirtqueueLayout.VIRTQ_DESC_F_USED;
            ulong at = descriptorRing + ((ulong)oldUsedIdx * VirtqueueLayout.DescriptorSize) + VirtqueueLayout.PackedDescriptorFlagsOffset;
            ushort flags = memory.ReadUInt16Acquire(at);
            if ((flags & mask) != availableFlags)
            {
                SetOld(Read16(FreeHeadOffset), usedIdx, _base[UsedWrapOffset] != 0);
            }
        }

        // Roll back whatever was in progress.
        ushort freeHead = Read16(OldFreeHeadOffset);
        ushort used = Read16(OldUsedIdxOffset);
        bool usedWrap = _base[OldUsedWrapOffset] != 0;
        SetCurrent(freeHead, used, usedWrap);

        // Nothing in the free list is in flight.
        var free = new bool[_size];
        ushort e = freeHead;
        for (int n = 0; e < _size && n < _size; n++)
        {
            free[e] = true;
            Desc(e)[InflightOffset] = 0;
            e = *(ushort*)(Desc(e) + NextOffset);
        }

        var inflight = new List<(ulong Counter, ushort Entry)>();
        ulong maxCounter = 0;
        for (ushort i = 0; i < _size; i++)
        {
            byte* d = Desc(i);
            ulong counter = *(ulong*)(d + CounterOffset);
            maxCounter = Math.Max(maxCounter, counter);
            if (!free[i] && d[InflightOffset] == 1)
            {
                inflight.Add((counter, i));
            }
        }

        _nextCounter = maxCounter + 1;
        inflight.Sort((a, b) => a.Counter.CompareTo(b.Counter));
        Array.Fill(_entryById, NoEntry);
        var chains = new List<PackedResubmitChain>(inflight.Count);
        int slots = 0;
        foreach ((_, ushort head) in inflight)
        {
            PackedRingDescriptor[] descriptors = ReadChain(head);
            chains.Add(new PackedResubmitChain(descriptors));
            _entryById[descriptors[^1].Id] = head;
            slots += descriptors.Length;
        }

        if (slots > _size)
        {
            throw new InvalidDataException($"Inflight packed queue region holds {slots} descriptors in flight, more than the ring's {_size}.");
        }

        // Everything taken and not returned lies between the used and the available position.
        int available = used + slots;
        bool availableWrap = usedWrap;
        if (available >= _size)
        {
            available -= _size;
            availableWrap = !availableWrap;
        }

        return (chains, new VirtqueueState((ushort)available, used, availableWrap, usedWrap));
    }

    /// <summary>How many chains are marked in flight now.</summary>
    public int CountInflight()
    {
        int n = 0;
        for (ushort i = 0; i < _size; i++)
        {
            n += Desc(i)[InflightOffset] == 1 ? 1 : 0;
        }

        return n;
    }

    void IInflightTracker.OnPopped(ushort head)
    {
        // Packed queues call OnPopped(descriptors); a head alone cannot be resubmitted.
    }

    public void OnPopped(ReadOnlySpan<PackedRingDescriptor> descriptors)
    {
        if (descriptors.IsEmpty || descriptors.Length > _size)
        {
            return;
        }

        ushort head = Read16(OldFreeHeadOffset);
        ushort entry = head;
        ushort last = head;
        for (int i = 0; i < descriptors.Length; i++)
        {
            if (entry >= _size)
            {
                // The free list ran out: the region is inconsistent; stop tracking this chain.
                return;
            }

            PackedRingDescriptor d = descriptors[i];
            byte* e = Desc(entry);
            *(ushort*)(e + IdOffset) = d.Id;
            *(ushort*)(e + FlagsOffset) = d.Flags;
            *(uint*)(e + LenOffset) = d.Length;
            *(ulong*)(e + AddrOffset) = d.Address;
            last = entry;
            entry = *(ushort*)(e + NextOffset);
        }

        byte* h = Desc(head);
        *(ushort*)(h + NumOffset) = (ushort)descriptors.Length;
        *(ushort*)(h + LastOffset) = last;
        *(ulong*)(h + CounterOffset) = _nextCounter++;

        // The entries are in place before the flag says the chain is live, and the flag before
        // the free list moves past it (a crash in between leaves it in the free list: dropped).
        Volatile.Write(ref h[InflightOffset], (byte)1);
        Volatile.Write(ref *(ushort*)(_base + FreeHeadOffset), entry);
        Volatile.Write(ref *(ushort*)(_base + OldFreeHeadOffset), entry);
        ushort id = descriptors[^1].Id;
        if (id < _size)
        {
            _entryById[id] = head;
        }
    }

    public void OnCompleting(ushort head)
    {
        ushort entry = FindEntry(head);
        if (entry == NoEntry)
        {
            return;
        }

        // Steps 3-5 of "When supplying used buffers": the chain's entries go back to the free
        // list and the used position advances by its ring slots, before the flags publish it.
        byte* e = Desc(entry);
        ushort last = *(ushort*)(e + LastOffset);
        ushort num = *(ushort*)(e + NumOffset);
        if (last >= _size)
        {
            return;
        }

        *(ushort*)(Desc(last) + NextOffset) = Read16(FreeHeadOffset);
        int used = Read16(UsedIdxOffset) + num;
        bool wrap = _base[UsedWrapOffset] != 0;
        if (used >= _size)
        {
            used -= _size;
            wrap = !wrap;
        }

        SetCurrent(entry, (ushort)used, wrap);
    }

    public void OnCompleted(ushort head)
    {
        ushort entry = FindEntry(head);
        if (entry == NoEntry)
        {
            return;
        }

        // Steps 7-8: the head is no longer in flight and the update is committed.
        Volatile.Write(ref Desc(entry)[InflightOffset], (byte)0);
        _entryById[head] = NoEntry;
        SetOld(Read16(FreeHeadOffset), Read16(UsedIdxOffset), _base[UsedWrapOffset] != 0);
    }

    private PackedRingDescriptor[] ReadChain(ushort head)
    {
        byte* h = Desc(head);
        ushort num = *(ushort*)(h + NumOffset);
        if (num == 0 || num > _size)
        {
            throw new InvalidDataException($"Inflight packed entry {head} claims {num} descriptors in a ring of {_size}.");
        }

        var descriptors = new PackedRingDescriptor[num];
        ushort entry = head;
        for (int i = 0; i < num; i++)
        {
            if (entry >= _size)
            {
                throw new InvalidDataException($"Inflight packed entry {head} links outside the region.");
            }

            byte* e = Desc(entry);
            descriptors[i] = new PackedRingDescriptor(*(ulong*)(e + AddrOffset), *(uint*)(e + LenOffset), *(ushort*)(e + IdOffset), *(ushort*)(e + FlagsOffset));
            entry = *(ushort*)(e + NextOffset);
        }

        if (descriptors[^1].Id >= _size)
        {
            throw new InvalidDataException($"Inflight packed entry {head} holds buffer id {descriptors[^1].Id}, outside a ring of {_size}.");
        }

        return descriptors;
    }

    private ushort FindEntry(ushort id)
    {
        if (id >= _size)
        {
            return NoEntry;
        }

        ushort entry = _entryById[id];
        if (entry != NoEntry)
        {
            return entry;
        }

        // Not cached (a tracker that did not see the chain taken): look for the live head whose
        // last descriptor carries the buffer id.
        for (ushort i = 0; i < _size; i++)
        {
            byte* d = Desc(i);
            ushort last = *(ushort*)(d + LastOffset);
            if (d[InflightOffset] == 1 && last < _size && *(ushort*)(Desc(last) + IdOffset) == id)
            {
                _entryById[id] = i;
                return i;
            }
        }

        return NoEntry;
    }

    private void SetCurrent(ushort freeHead, ushort usedIdx, bool usedWrap)
    {
        *(ushort*)(_base + FreeHeadOffset) = freeHead;
        *(ushort*)(_base + UsedIdxOffset) = usedIdx;
        Volatile.Write(ref _base[UsedWrapOffset], usedWrap ? (byte)1 : (byte)0);
    }

    private void SetOld(ushort freeHead, ushort usedIdx, bool usedWrap)
    {
        *(ushort*)(_base + OldFreeHeadOffset) = freeHead;
        *(ushort*)(_base + OldUsedIdxOffset) = usedIdx;
        Volatile.Write(ref _base[OldUsedWrapOffset], usedWrap ? (byte)1 : (byte)0);
    }

    private ushort Read16(int offset) => Volatile.Read(ref *(ushort*)(_base + offset));

    private byte* Desc(ushort index) => _base + HeaderSize + (index * DescStateSize);
}
