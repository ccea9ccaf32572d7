using Vmm.Virtio.Spec;

namespace Vmm.Virtio.Driver;

/// <summary>
/// What the guest driver asks of a device. It always accepts VERSION_1; the ring features are
/// accepted when enabled here and offered by the device.
/// </summary>
public sealed record VirtioDriverOptions
{
    /// <summary>Device-specific features the driver wants (accepted where offered).</summary>
    public ulong Features { get; init; }

    public bool IndirectDescriptors { get; init; } = true;

    public bool EventIndex { get; init; } = true;

    public bool PackedRing { get; init; }

    /// <summary>Wanted queue size: each queue gets min(device maximum, this), a power of two for split rings.</summary>
    public ushort QueueSize { get; init; } = 256;

    /// <summary>How many queues to set up; null for all the device has.</summary>
    public int? QueueCount { get; init; }

    /// <summary>How long to wait for a reset to complete (status reading back 0).</summary>
    public TimeSpan ResetTimeout { get; init; } = TimeSpan.FromSeconds(1);

    /// <summary>All the feature bits the driver is willing to accept.</summary>
    public ulong WantedFeatures =>
        Features
        | VirtioFeatures.VERSION_1
        | (IndirectDescriptors ? VirtioFeatures.RING_INDIRECT_DESC : 0)
        | (EventIndex ? VirtioFeatures.RING_EVENT_IDX : 0)
        | (PackedRing ? VirtioFeatures.RING_PACKED : 0);
}

/// <summary>The device did not behave as the initialisation sequence requires.</summary>
public sealed class VirtioDriverException : Exception
{
    public VirtioDriverException(string message) : base(message)
    {
    }

    public VirtioDriverException(string message, Exception inner) : base(message, inner)
    {
    }
}
