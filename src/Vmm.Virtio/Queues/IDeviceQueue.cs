using Vmm.Core.Memory;

namespace Vmm.Virtio.Queues;

/// <summary>
/// The device side of one virtqueue, split or packed (virtio 1.2, 2.7 and 2.8). Used by one
/// thread at a time: the queue's worker.
/// </summary>
public interface IDeviceQueue
{
    ushort Size { get; }

    GuestMemory Memory { get; }

    /// <summary>
    /// Takes the next available descriptor chain. False when the ring is empty. Throws
    /// <see cref="VirtqueueException"/> when the ring is malformed (loop, chain longer than the
    /// queue, address outside guest memory, bad indirect table, index jump beyond the queue size).
    /// </summary>
    bool TryPop(out DescriptorChain chain);

    /// <summary>Returns <paramref name="chain"/> to the driver with <paramref name="bytesWritten"/> bytes written. Does not notify.</summary>
    void Complete(DescriptorChain chain, uint bytesWritten);

    /// <summary>Raises the queue's interrupt unless the driver suppressed it (flags or used_event, 2.7.10 / 2.8.10); true when it raised it.</summary>
    bool NotifyIfNeeded();

    /// <summary>
    /// Asks the driver for kicks again (clears NO_NOTIFY, or writes avail_event). Returns true when
    /// buffers became available meanwhile: the caller must process again before sleeping.
    /// </summary>
    bool EnableNotifications();

    /// <summary>Tells the driver kicks are not needed while the device is busy (an optimisation only).</summary>
    void DisableNotifications();

    /// <summary>Where the queue stands now.</summary>
    VirtqueueState GetState();
}
