using Vmm.Virtio.Queues;
using Vmm.Virtio.Spec;

namespace Vmm.Virtio;

/// <summary>
/// A virtio device as a transport sees it (docs/architecture.md, "Vmm.Virtio"). In-process devices and
/// the vhost-user front-end's proxy implement it alike. Calls come from the transport on the
/// guest's (vCPU's) thread; queue processing runs on each queue's own worker.
/// </summary>
public interface IVirtioDevice : IDisposable
{
    VirtioDeviceId DeviceId { get; }

    /// <summary>
    /// The device's feature bits, including the ring features it implements (INDIRECT_DESC,
    /// EVENT_IDX, RING_PACKED). The transport adds VERSION_1 and nothing else.
    /// </summary>
    ulong DeviceFeatures { get; }

    /// <summary>How many virtqueues the device has.</summary>
    int QueueCount { get; }

    /// <summary>The largest size queue <paramref name="index"/> accepts (a power of two for split rings).</summary>
    ushort GetMaxQueueSize(int index);

    /// <summary>Size in bytes of the device-specific configuration space.</summary>
    int ConfigSize { get; }

    /// <summary>Reads device configuration; bytes beyond <see cref="ConfigSize"/> read as zero.</summary>
    void ReadConfig(uint offset, Span<byte> data);

    /// <summary>Writes device configuration; writes to read-only fields are ignored.</summary>
    void WriteConfig(uint offset, ReadOnlySpan<byte> data);

    /// <summary>
    /// Starts queue <paramref name="index"/> on <paramref name="resources"/> with the negotiated
    /// <paramref name="features"/>, resuming from <paramref name="initialState"/> when given.
    /// </summary>
    void StartQueue(int index, VirtqueueResources resources, ulong features, VirtqueueState? initialState = null);

    /// <summary>
    /// Stops queue <paramref name="index"/> and returns where it stopped. Requests already taken
    /// from the ring complete first. Safe to call twice (the second call returns the same state)
    /// and on a queue never started (returns null).
    /// </summary>
    VirtqueueState? StopQueue(int index);

    /// <summary>Stops every queue and returns the device to its initial state (virtio 1.2, 2.4 "Device Reset").</summary>
    void Reset();

    /// <summary>Device-internal state beyond the queues (empty for stateless devices).</summary>
    byte[] SaveState();

    /// <summary>Restores what <see cref="SaveState"/> returned, before queues are started.</summary>
    void RestoreState(ReadOnlySpan<byte> state);

    /// <summary>
    /// The driver's device status after each status write (virtio 1.2, 2.1; 0 after a reset),
    /// called by the transport on the writing thread. Most devices need nothing here; a vhost-user
    /// device passes it on with SET_STATUS. Must not throw.
    /// </summary>
    void DriverStatusChanged(VirtioDeviceStatus status)
    {
    }

    /// <summary>Raised when the configuration space changed on the device's initiative.</summary>
    event Action? ConfigChanged;

    /// <summary>
    /// Raised when the device met an error it cannot recover from without a reset (a malformed
    /// ring, say); the transport sets DEVICE_NEEDS_RESET and raises a config interrupt
    /// (virtio 1.2, 2.1.2).
    /// </summary>
    event Action<DeviceFault>? Faulted;
}

/// <summary>Why a device needs a reset.</summary>
public sealed record DeviceFault(int QueueIndex, string Reason, Exception? Cause = null);
