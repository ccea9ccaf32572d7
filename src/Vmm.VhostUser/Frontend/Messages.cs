using Akka.Actor;
using Vmm.Virtio.Queues;
using Vmm.VhostUser.Protocol;

namespace Vmm.VhostUser.Frontend;

// Commands to a vhost-user device (its VhostUserDeviceSupervisor, which forwards them to the
// connection). Each is answered to the asker with the reply named below or a Status.Failure.

/// <summary>Start queue <paramref name="Index"/>; answered with <see cref="QueueStarted"/>.</summary>
public sealed record StartQueue(int Index, VirtqueueResources Resources, ulong Features, VirtqueueState? InitialState = null);

public sealed record QueueStarted(int Index);

/// <summary>Stop queue <paramref name="Index"/>; answered with <see cref="QueueStopped"/> (State null: it was not running).</summary>
public sealed record StopQueue(int Index);

public sealed record QueueStopped(int Index, VirtqueueState? State);

/// <summary>Reset the device (RESET_DEVICE, or stop every ring); answered with <see cref="DeviceReset"/>.</summary>
public sealed class ResetDevice
{
    public static readonly ResetDevice Instance = new();

    private ResetDevice()
    {
    }
}

public sealed class DeviceReset
{
    public static readonly DeviceReset Instance = new();

    private DeviceReset()
    {
    }
}

/// <summary>Read <paramref name="Length"/> config bytes at <paramref name="Offset"/>; answered with <see cref="ConfigData"/>.</summary>
public sealed record ReadConfig(int Offset, int Length);

/// <summary>Config bytes; shorter than asked when the back-end has fewer (the rest reads as zero).</summary>
public sealed record ConfigData(int Offset, byte[] Data);

/// <summary>Write config bytes (SET_CONFIG); answered with <see cref="ConfigWritten"/>.</summary>
public sealed record WriteConfig(int Offset, byte[] Data);

public sealed class ConfigWritten
{
    public static readonly ConfigWritten Instance = new();

    private ConfigWritten()
    {
    }
}

/// <summary>Query: what the handshake found; answered with <see cref="DeviceInfo"/> once the device is ready.</summary>
public sealed class GetDeviceInfo
{
    public static readonly GetDeviceInfo Instance = new();

    private GetDeviceInfo()
    {
    }
}

/// <summary>
/// The back-end as negotiated: <paramref name="Features"/> as offered by GET_FEATURES (vhost-only
/// bits included), the acked protocol features, the queue count and the cached config (null without CONFIG).
/// </summary>
public sealed record DeviceInfo(ulong Features, VhostUserProtocolFeatures ProtocolFeatures, int QueueCount, byte[]? Config);

/// <summary>Query to the supervisor: how many times the connection was (re)started; answered with <see cref="ConnectionCount"/>.</summary>
public sealed class GetConnectionCount
{
    public static readonly GetConnectionCount Instance = new();

    private GetConnectionCount()
    {
    }
}

public sealed record ConnectionCount(int Started, int Ready);

/// <summary>Connection actor → supervisor: the device state to keep across a reconnect.</summary>
public sealed record SnapshotUpdated(DeviceSnapshot Snapshot);

/// <summary>Connection actor → supervisor: the handshake (and any replay) completed.</summary>
public sealed record ConnectionReady(DeviceInfo Info);

/// <summary>
/// Connection actor → supervisor: the back-end announced a config change (CONFIG_CHANGE_MSG) and
/// the config was read again; <see cref="Config"/> is null when it could not be.
/// </summary>
public sealed record ConfigRefreshed(byte[]? Config);

/// <summary>Query to a <see cref="VirtqueueActor"/>; answered with <see cref="QueueStatus"/>.</summary>
public sealed class GetQueueStatus
{
    public static readonly GetQueueStatus Instance = new();

    private GetQueueStatus()
    {
    }
}

/// <summary>Whether the queue's call eventfd is proxied by a thread, and how many interrupts it raised so far.</summary>
public sealed record QueueStatus(int Index, bool Proxied, long InterruptsRaised);

/// <summary>Query to a <see cref="VhostUserDeviceSupervisor"/>: its current <see cref="DeviceSnapshot"/>.</summary>
public sealed class GetDeviceSnapshot
{
    public static readonly GetDeviceSnapshot Instance = new();

    private GetDeviceSnapshot()
    {
    }
}

/// <summary>
/// Published on the event stream by a device's supervisor when its connection is lost and a
/// reconnect is scheduled (<paramref name="Attempt"/> counts from 1 since the last ready connection):
/// once per scheduled attempt, with the backoff <paramref name="Delay"/> before it.
/// </summary>
public sealed record DeviceConnectionLost(string Name, string Reason, int Attempt, TimeSpan Delay);

/// <summary>Published on the event stream when a device is ready again after <see cref="DeviceConnectionLost"/> (the snapshot was replayed).</summary>
public sealed record DeviceConnectionRestored(string Name, int Attempts);

/// <summary>
/// Connection actor → supervisor: a command the dying connection did not finish (or had not
/// started), sent with its original asker as Sender; the supervisor serves it from the snapshot.
/// </summary>
public sealed record CommandRequeued(IActorRef From, object Command);

/// <summary>
/// Save the back-end's internal state over DEVICE_STATE (all rings stopped first); answered with
/// <see cref="DeviceStateSaved"/>, whose bytes are empty when DEVICE_STATE was not negotiated.
/// </summary>
public sealed class SaveDeviceState
{
    public static readonly SaveDeviceState Instance = new();

    private SaveDeviceState()
    {
    }
}

public sealed record DeviceStateSaved(byte[] State);

/// <summary>Load <paramref name="State"/> into the back-end over DEVICE_STATE before its rings start; answered with <see cref="DeviceStateLoaded"/>.</summary>
public sealed record LoadDeviceState(byte[] State);

public sealed class DeviceStateLoaded
{
    public static readonly DeviceStateLoaded Instance = new();

    private DeviceStateLoaded()
    {
    }
}

/// <summary>
/// Install an inflight region holding <paramref name="Contents"/> (a region saved from an earlier
/// back-end, for <paramref name="NumQueues"/> queues of <paramref name="QueueSize"/>): the next
/// ring start hands it to the back-end with SET_INFLIGHT_FD, so what was in flight is resubmitted.
/// Answered with <see cref="InflightRestored"/>.
/// </summary>
public sealed record RestoreInflight(byte[] Contents, ushort NumQueues, ushort QueueSize);

public sealed class InflightRestored
{
    public static readonly InflightRestored Instance = new();

    private InflightRestored()
    {
    }
}
