using Vmm.Core.Events;
using Vmm.Core.Interrupts;
using Vmm.Core.Memory;

namespace Vmm.Virtio.Queues;

/// <summary>
/// Where a queue lives in guest memory (virtio 1.2, 2.6 and 2.7): its size and the addresses
/// of its three areas. For split rings: descriptor table, available ring (driver area), used
/// ring (device area). For packed rings: descriptor ring, driver event suppression, device event suppression.
/// </summary>
public sealed record VirtqueueParams(ushort Size, ulong DescriptorArea, ulong DriverArea, ulong DeviceArea);

/// <summary>Everything a device needs to run one queue.</summary>
public sealed record VirtqueueResources(VirtqueueParams Params, GuestMemory Memory, EventFd Kick, InterruptLine Interrupt)
{
    /// <summary>
    /// Poll the ring instead of waiting on <see cref="Kick"/>: a vhost-user front-end may set no
    /// kick fd (VHOST_USER_VRING_NOFD_MASK), and then the back-end must poll (vhost-user.rst,
    /// "SET_VRING_KICK"). <see cref="Kick"/> is then a placeholder nobody signals.
    /// </summary>
    public bool PollWithoutKick { get; init; }

    /// <summary>
    /// Told as chains are taken and returned (a vhost-user back-end keeps the shared inflight
    /// region with it). Takes precedence over a tracker the device supplies itself.
    /// </summary>
    public IInflightTracker? Inflight { get; init; }

    /// <summary>
    /// Heads that were in flight when a previous device instance died, oldest first: the queue
    /// hands them out again before anything new from the available ring (vhost-user.rst,
    /// "Inflight I/O tracking", "When reconnecting"). Split rings only.
    /// </summary>
    public IReadOnlyList<ushort>? Resubmit { get; init; }

    /// <summary>
    /// Packed rings' counterpart of <see cref="Resubmit"/>: the chains in flight, oldest first,
    /// with their ring descriptors as the inflight region kept them (the ring slots themselves
    /// may since hold used descriptors).
    /// </summary>
    public IReadOnlyList<PackedResubmitChain>? ResubmitPacked { get; init; }

    /// <summary>
    /// Where the queue marks the guest pages it writes during live migration (a vhost-user
    /// back-end with VHOST_F_LOG_ALL); null when nobody ever logs.
    /// </summary>
    public VirtqueueDirtyLog? DirtyLog { get; init; }
}

/// <summary>
/// Where a queue stopped: the next available index the device will read and the next used
/// index it will write. For packed rings the two indices are ring positions and the wrap
/// counters complete them (virtio 1.2, 2.8.1); split rings leave the counters true.
/// </summary>
public readonly record struct VirtqueueState(
    ushort AvailableIndex,
    ushort UsedIndex,
    bool AvailableWrapCounter = true,
    bool UsedWrapCounter = true);
