using Vmm.Core.Memory;
using Vmm.Host.Cli;
using Vmm.Virtio;
using Vmm.Virtio.Driver;
using Vmm.Virtio.Queues;
using Vmm.Virtio.Spec;
using Vmm.VhostUser.Frontend;
using static Vmm.Virtio.Spec.VirtqueueLayout;

namespace Vmm.Host.Run;

/// <summary>
/// A device being restored: before its first queue starts it gets its saved internal state
/// (<see cref="IVirtioDevice.RestoreState"/>: in-process bytes, or DEVICE_STATE LOAD into a
/// vhost-user back-end), and each queue starts from its saved state rather than from zero.
/// Everything else passes through.
/// </summary>
internal sealed class RestoredDevice(IVirtioDevice inner, DeviceSnapshotRecord saved, IVhostUserDevice? remote) : IVirtioDevice
{
    private readonly Dictionary<int, VirtqueueState> _pending = saved.Queues.Select((q, i) => (q, i)).ToDictionary(x => x.i, x => x.q.State);

    private bool _stateRestored;

    public VirtioDeviceId DeviceId => inner.DeviceId;

    public ulong DeviceFeatures => inner.DeviceFeatures;

    public int QueueCount => inner.QueueCount;

    public int ConfigSize => inner.ConfigSize;

    public event Action? ConfigChanged
    {
        add => inner.ConfigChanged += value;
        remove => inner.ConfigChanged -= value;
    }

    public event Action<DeviceFault>? Faulted
    {
        add => inner.Faulted += value;
        remove => inner.Faulted -= value;
    }

    public ushort GetMaxQueueSize(int index) => inner.GetMaxQueueSize(index);

    public void ReadConfig(uint offset, Span<byte> data) => inner.ReadConfig(offset, data);

    public void WriteConfig(uint offset, ReadOnlySpan<byte> data) => inner.WriteConfig(offset, data);

    public void StartQueue(int index, VirtqueueResources resources, ulong features, VirtqueueState? initialState = null)
    {
        if (!_stateRestored)
        {
            // After the driver's reset and feature negotiation, before any ring runs: the only
            // moment a vhost-user back-end accepts a DEVICE_STATE load.
            inner.RestoreState(saved.State);

            // The rings resume at their saved positions, so the saved inflight region agrees with them.
            if (saved.Inflight.Length > 0 && remote is not null)
            {
                remote.RestoreInflight(saved.Inflight, saved.InflightShape.NumQueues, saved.InflightShape.QueueSize);
            }

            _stateRestored = true;
        }

        if (initialState is null && _pending.Remove(index, out VirtqueueState state))
        {
            initialState = state;
        }

        inner.StartQueue(index, resources, features, initialState);
    }

    public VirtqueueState? StopQueue(int index) => inner.StopQueue(index);

    public void Reset() => inner.Reset();

    public void DriverStatusChanged(VirtioDeviceStatus status) => inner.DriverStatusChanged(status);

    public byte[] SaveState() => inner.SaveState();

    public void RestoreState(ReadOnlySpan<byte> state) => inner.RestoreState(state);

    public void Dispose() => inner.Dispose();
}

/// <summary>
/// Places a restored driver's rings where the saved ones were (the guest allocator is
/// deterministic, so the same allocations land on the same addresses; a mismatch is an error)
/// over the restored ring memory and, for split rings, starts the driver's indices where the
/// saved queue stopped.
/// </summary>
internal sealed class RestoringQueueFactory(GuestMemory memory, GuestMemoryAllocator allocator, DeviceSnapshotRecord saved) : IDriverQueueFactory
{
    public IDriverQueue Create(int queueIndex, ushort size, ulong negotiatedFeatures)
    {
        if (queueIndex >= saved.Queues.Count)
        {
            throw new UsageException($"The restored driver sets up queue {queueIndex}; the snapshot has {saved.Queues.Count}.");
        }

        QueueRecord record = saved.Queues[queueIndex];
        if ((negotiatedFeatures & VirtioFeatures.RING_PACKED) != 0)
        {
            // The ring's memory is the restored one (not zeroed): its descriptors carry the flags
            // of the wrap counters the queue stopped with, which the driver resumes at.
            var packed = new VirtqueueParams(
                size,
                allocator.Allocate(PackedDescriptorRingSize(size), (ulong)PackedDescriptorAlignment),
                allocator.Allocate(PackedEventSuppressionSize, (ulong)PackedDriverEventAlignment),
                allocator.Allocate(PackedEventSuppressionSize, (ulong)PackedDeviceEventAlignment));
            Check(queueIndex, packed, record.Params);
            if (record.State.AvailableIndex != record.State.UsedIndex || record.State.AvailableWrapCounter != record.State.UsedWrapCounter)
            {
                throw new UsageException($"The snapshot's queue {queueIndex} stopped with requests in flight ({record.State}).");
            }

            return new PackedDriverQueue(memory, packed, negotiatedFeatures, allocator, record.State);
        }

        // The ring's memory is the restored one too, as after a migration: the used ring holds
        // avail_event, which the back-end the snapshot was saved against wrote last and the
        // driver reads to decide whether to kick (virtio 1.2, 2.7.10). Zeroed, it would keep the
        // driver from kicking until its index wraps past 0, and a back-end that writes it only
        // when it takes a buffer (libvhost-user, hence qemu-storage-daemon) would never look.
        var p = new VirtqueueParams(
            size,
            allocator.Allocate(SplitDescriptorTableSize(size), (ulong)SplitDescriptorAlignment),
            allocator.Allocate(SplitAvailRingSize(size), (ulong)SplitAvailAlignment),
            allocator.Allocate(SplitUsedRingSize(size), (ulong)SplitUsedAlignment));
        Check(queueIndex, p, record.Params);
        if (record.State.AvailableIndex != record.State.UsedIndex)
        {
            throw new UsageException($"The snapshot's queue {queueIndex} stopped with requests in flight (avail {record.State.AvailableIndex}, used {record.State.UsedIndex}).");
        }

        return new SplitDriverQueue(memory, p, negotiatedFeatures, allocator, record.State.UsedIndex);
    }

    private static void Check(int index, VirtqueueParams actual, VirtqueueParams saved)
    {
        if (actual != saved)
        {
            throw new UsageException($"The restored queue {index} lies at {actual}, not where the snapshot's was ({saved}): the VM is not built the same way.");
        }
    }
}
