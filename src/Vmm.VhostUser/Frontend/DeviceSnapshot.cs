using System.Collections.Immutable;
using Vmm.Core.Memory;
using Vmm.Virtio.Queues;

namespace Vmm.VhostUser.Frontend;

/// <summary>
/// What a vhost-user device was told, as an immutable value: negotiated features, memory table,
/// running queues, the inflight region, the config image, the driver's status and, while
/// dirty pages are logged, the log. The
/// <see cref="VhostUserDeviceModel"/> holds the current one; a new connection replays it, as
/// cloud-hypervisor's <c>reinitialize_vhost_user</c> does.
/// </summary>
public sealed record DeviceSnapshot(
    ulong? GuestFeatures,
    GuestMemory? Memory,
    ImmutableSortedDictionary<int, QueueSnapshot> Queues,
    ConfigImage Config,
    VhostUserInflightRegion? Inflight = null,
    byte DriverStatus = 0,
    VhostUserDirtyLog? DirtyLog = null)
{
    public static DeviceSnapshot Empty { get; } = new(null, null, ImmutableSortedDictionary<int, QueueSnapshot>.Empty, ConfigImage.Empty(0));

    /// <summary>True when a new connection has nothing to replay.</summary>
    public bool IsEmpty => GuestFeatures is null && Memory is null && Queues.IsEmpty && Config.Written.IsEmpty && Inflight is null && DriverStatus == 0 && DirtyLog is null;
}

/// <summary>A running queue: where it lives and with which features it was started.</summary>
public sealed record QueueSnapshot(int Index, VirtqueueResources Resources, ulong Features, VirtqueueState? InitialState);

/// <summary>Config bytes the guest wrote at <paramref name="Offset"/> (replayed with SET_CONFIG).</summary>
public sealed record ConfigWrite(int Offset, byte[] Data);
