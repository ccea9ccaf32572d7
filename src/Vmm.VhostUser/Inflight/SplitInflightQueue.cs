using Vmm.Virtio.Queues;

namespace Vmm.VhostUser.Inflight;

/// <summary>
/// Keeps one split queue's part of the inflight region up to date as the queue worker takes
/// and returns chains, and tells after a reconnect which heads were in flight, in the order
/// they were taken (vhost-user.rst, "Inflight I/O tracking", split virtqueue).
/// </summary>
public sealed unsafe class SplitInflightQueue : Vmm.Virtio.Queues.IInflightTracker
{
    private const int FeaturesOffset = 0;
    private const int VersionOffset = 8;
    private const int DescNumOffset = 10;
    private const int LastBatchHeadOffset = 12;
    private const int UsedIdxOffset = 14;
    private const int InflightOffset = 0;
    private const int NextOffset = 6;
    private const int CounterOffset = 8;

    private readonly byte* _base;
    private readonly ushort _size;
    private ulong _nextCounter = 1;

    internal SplitInflightQueue(byte* regionBase, ushort size)
    {
        _base = regionBase;
        _size = size;
    }

    internal void Initialise()
    {
        new Span<byte>(_base, (int)InflightRegion.QueueRegionSize(_size)).Clear();
        *(ulong*)(_base + FeaturesOffset) = 0;
        *(ushort*)(_base + DescNumOffset) = _size;
        *(ushort*)(_base + VersionOffset) = InflightRegion.Version;
    }

    /// <summary>
    /// Brings the region in line with the used ring after a reconnect and returns the heads still
    /// in flight, oldest first. <paramref name="usedRingIndex"/> is the idx field of the used ring
    /// in guest memory. A region never initialised (version 0) is initialised and nothing is resubmitted.
    /// </summary>
    public IReadOnlyList<ushort> Recover(ushort usedRingIndex)
    {
        ushort version = *(ushort*)(_base + VersionOffset);
        ushort descNum = *(ushort*)(_base + DescNumOffset);
        if (version == 0)
        {
            Initialise();
            *(ushort*)(_base + UsedIdxOffset) = usedRingIndex;
            return [];
        }

        if (version != InflightRegion.Version || descNum != _size)
        {
            throw new InvalidDataException($"Inflight queue region has version {version} and {descNum} descriptors; expected version {InflightRegion.Version} and {_size}.");
        }

        ushort usedIdx = *(ushort*)(_base + UsedIdxOffset);
        if (usedIdx != usedRingIndex)
        {
            // The back-end died between publishing a batch in the used ring and clearing its
            // inflight flags: the batch is complete, clear it (spec, "When reconnecting", step 1).
            int batch = (ushort)(usedRingIndex - usedIdx);
            ushort head = *(ushort*)(_base + LastBatchHeadOffset);
            for (int i = 0; i < batch && head < _size; i++)
            {
                Desc(head)[InflightOffset] = 0;
                head = *(ushort*)(Desc(head) + NextOffset);
            }

            *(ushort*)(_base + UsedIdxOffset) = usedRingIndex;
        }

        var inflight = new List<(ulong Counter, ushort Head)>();
        ulong maxCounter = 0;
        for (ushort i = 0; i < _size; i++)
        {
            byte* desc = Desc(i);
            ulong counter = *(ulong*)(desc + CounterOffset);
            maxCounter = Math.Max(maxCounter, counter);
            if (desc[InflightOffset] == 1)
            {
                inflight.Add((counter, i));
            }
        }

        _nextCounter = maxCounter + 1;
        inflight.Sort((a, b) => a.Counter.CompareTo(b.Counter));
        var heads = new ushort[inflight.Count];
        for (int i = 0; i < heads.Length; i++)
        {
            heads[i] = inflight[i].Head;
        }

        return heads;
    }

    /// <summary>How many heads are marked in flight now.</summary>
    public int CountInflight()
    {
        int n = 0;
        for (ushort i = 0; i < _size; i++)
        {
            n += Desc(i)[InflightOffset] == 1 ? 1 : 0;
        }

        return n;
    }

    public void OnPopped(ushort head)
    {
        if (head >= _size)
        {
            return;
        }

        if (*(ushort*)(_base + VersionOffset) == 0)
        {
            // Taken before any Recover laid the region out (a tracker used directly).
            Initialise();
        }

        byte* desc = Desc(head);
        *(ulong*)(desc + CounterOffset) = _nextCounter++;

        // The counter must be in place before the flag says the entry is live.
        Volatile.Write(ref desc[InflightOffset], (byte)1);
    }

    public void OnCompleting(ushort head)
    {
        if (head >= _size)
        {
            return;
        }

        // Recorded before the used ring publishes the entry, so a crash right after publishing
        // can be repaired from the batch list (spec, "When supplying used buffers", steps 1-3).
        *(ushort*)(Desc(head) + NextOffset) = *(ushort*)(_base + LastBatchHeadOffset);
        Volatile.Write(ref *(ushort*)(_base + LastBatchHeadOffset), head);
    }

    public void OnCompleted(ushort head)
    {
        if (head >= _size)
        {
            return;
        }

        Volatile.Write(ref Desc(head)[InflightOffset], (byte)0);
        ushort* usedIdx = (ushort*)(_base + UsedIdxOffset);
        Volatile.Write(ref *usedIdx, (ushort)(*usedIdx + 1));
    }

    private byte* Desc(ushort index) => _base + InflightRegion.QueueHeaderSize + (index * InflightRegion.DescStateSize);
}
