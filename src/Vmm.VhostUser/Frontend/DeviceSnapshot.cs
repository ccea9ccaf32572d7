using System.Collections.Immutable;
using Vmm.Core.Memory;
using Vmm.Virtio.Queues;

namespace Vmm.VhostUser.Frontend;

/// <summary>
/// What a vhost-user device was told, kept by its <see cref="VhostUserDeviceSupervisor"/> outside
/// the connection actor that may die: after a reconnect the new connection replays it (features,
/// memory table, rings, config writes), as cloud-hypervisor's <c>reinitialize_vhost_user</c> does.
/// The same record is what save/restore will write and read.
/// </summary>
public sealed record DeviceSnapshot(
    ulong? GuestFeatures,
    GuestMemory? Memory,
    ImmutableSortedDictionary<int, QueueSnapshot> Queues,
    ImmutableList<ConfigWrite> ConfigWrites,
    VhostUserInflightRegion? Inflight = null)
{
    public static DeviceSnapshot Empty { get; } = new(null, null, ImmutableSortedDictionary<int, QueueSnapshot>.Empty, []);

    /// <summary>True when a new connection has something to replay.</summary>
    public bool IsEmpty => GuestFeatures is null && Memory is null && Queues.IsEmpty && ConfigWrites.IsEmpty;
}

/// <summary>A running queue: where it lives and with which features it was started.</summary>
public sealed record QueueSnapshot(int Index, VirtqueueResources Resources, ulong Features, VirtqueueState? InitialState);

/// <summary>A config write the guest made (replayed with SET_CONFIG).</summary>
public sealed record ConfigWrite(int Offset, byte[] Data);
