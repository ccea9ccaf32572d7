namespace Vmm.Virtio.Queues;

/// <summary>One descriptor as it stood in a packed ring when the device read it (virtio 1.2, 2.8.13).</summary>
public readonly record struct PackedRingDescriptor(ulong Address, uint Length, ushort Id, ushort Flags);

/// <summary>
/// An inflight tracker for packed rings. A packed ring's slots are overwritten by used
/// descriptors, so the tracker keeps each chain's ring descriptors themselves (vhost-user.rst,
/// "Inflight I/O tracking", packed virtqueue) and is told them instead of
/// <see cref="IInflightTracker.OnPopped"/>.
/// </summary>
public interface IPackedInflightTracker : IInflightTracker
{
    /// <summary>A chain was taken: <paramref name="descriptors"/> are its ring slots in order (an indirect chain has one).</summary>
    void OnPopped(ReadOnlySpan<PackedRingDescriptor> descriptors);
}

/// <summary>A packed chain in flight when a previous device instance stopped: handed out again before new ones.</summary>
public sealed record PackedResubmitChain(IReadOnlyList<PackedRingDescriptor> Descriptors);
