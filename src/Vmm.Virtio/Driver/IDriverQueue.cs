using Vmm.Virtio.Queues;

namespace Vmm.Virtio.Driver;

/// <summary>A buffer the guest driver offers: guest-physical address, length, and whether the device may write it.</summary>
public readonly record struct DriverBuffer(ulong Address, uint Length, bool DeviceWritable);

/// <summary>
/// The driver (guest) side of one virtqueue, split or packed: what a Linux virtio_ring does.
/// One submitting thread and one completing thread may use it at once only if the caller
/// serialises them; the guest driver does.
/// </summary>
public interface IDriverQueue
{
    ushort Size { get; }

    /// <summary>The ring addresses to program into the transport.</summary>
    VirtqueueParams Params { get; }

    /// <summary>Descriptors not in use by the device.</summary>
    int FreeDescriptors { get; }

    /// <summary>
    /// Makes a chain of <paramref name="buffers"/> (device-readable ones first) available with
    /// <paramref name="token"/> to recognise its completion. Uses an indirect table when that was
    /// negotiated and the chain has more than one buffer. False when the ring is full.
    /// </summary>
    bool TrySubmit(ReadOnlySpan<DriverBuffer> buffers, object token);

    /// <summary>Whether the device asked to be notified of what was submitted since the last call (flags / avail_event).</summary>
    bool NeedsKick();

    /// <summary>Takes the next completed chain: its token and how many bytes the device wrote.</summary>
    bool TryTakeUsed(out object? token, out uint bytesWritten);

    /// <summary>Asks for used-buffer interrupts; true when completions are already pending (check again).</summary>
    bool EnableInterrupts();

    /// <summary>Tells the device interrupts are not wanted (the driver is polling).</summary>
    void DisableInterrupts();
}
