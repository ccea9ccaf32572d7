using Akka.Actor;
using Vmm.Virtio.Queues;
using Vmm.VhostUser.Protocol;

namespace Vmm.VhostUser.Frontend;

// Commands to a vhost-user device (its VhostUserDeviceSupervisor, which forwards them to the
// connection or serves them from its model while no connection is ready). Each is answered to
// the asker with the reply named below or a Status.Failure, in every state of both actors.

/// <summary>
/// A command to a vhost-user device: the supervisor forwards it to a ready connection, keeps it
/// while a connection attempt is under way, and otherwise serves it from the device's model.
/// </summary>
public interface IDeviceCommand;

/// <summary>Start queue <paramref name="Index"/>; answered with <see cref="QueueStarted"/>.</summary>
public sealed record StartQueue(int Index, VirtqueueResources Resources, ulong Features, VirtqueueState? InitialState = null) : IDeviceCommand;

public sealed record QueueStarted(int Index);

/// <summary>Stop queue <paramref name="Index"/>; answered with <see cref="QueueStopped"/> (State null: it was not running).</summary>
public sealed record StopQueue(int Index) : IDeviceCommand;

public sealed record QueueStopped(int Index, VirtqueueState? State);

/// <summary>Reset the device (RESET_DEVICE, or stop every ring); answered with <see cref="DeviceReset"/>.</summary>
public sealed class ResetDevice : IDeviceCommand
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
public sealed record ReadConfig(int Offset, int Length) : IDeviceCommand;

/// <summary>Config bytes; shorter than asked when the back-end has fewer (the rest reads as zero).</summary>
public sealed record ConfigData(int Offset, byte[] Data);

/// <summary>Write config bytes (SET_CONFIG); answered with <see cref="ConfigWritten"/>.</summary>
public sealed record WriteConfig(int Offset, byte[] Data) : IDeviceCommand;

public sealed class ConfigWritten
{
    public static readonly ConfigWritten Instance = new();

    private ConfigWritten()
    {
    }
}

/// <summary>Query: what the handshake found; answered with <see cref="DeviceInfo"/> once the device is ready.</summary>
public sealed class GetDeviceInfo : IDeviceCommand
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

/// <summary>
/// Whether the back-end's call currently goes to the proxy (else to the guest's vector eventfd),
/// how many interrupts the proxy raised, and how many times the route changed after set-up.
/// </summary>
public sealed record QueueStatus(int Index, bool Proxied, long ProxiedInterrupts, long Reroutes);

/// <summary>Query to a device: its current <see cref="DeviceSnapshot"/> (from the model, wherever it is).</summary>
public sealed class GetDeviceSnapshot : IDeviceCommand
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
/// Published on the event stream when a device waiting to reconnect saw its back-end's socket
/// created again and connects at once, without waiting for its backoff (docs/reconnect.md).
/// </summary>
public sealed record DeviceSocketAppeared(string Name, string SocketPath);

/// <summary>
/// Connection actor → supervisor: a command the dying connection did not finish (or had not
/// started), sent with its original asker as Sender; the supervisor serves it from the snapshot.
/// </summary>
public sealed record CommandRequeued(IActorRef From, IDeviceCommand Command);

/// <summary>
/// Save the back-end's internal state over DEVICE_STATE (all rings stopped first); answered with
/// <see cref="DeviceStateSaved"/>, whose bytes are empty when DEVICE_STATE was not negotiated.
/// </summary>
public sealed class SaveDeviceState : IDeviceCommand
{
    public static readonly SaveDeviceState Instance = new();

    private SaveDeviceState()
    {
    }
}

public sealed record DeviceStateSaved(byte[] State);

/// <summary>Load <paramref name="State"/> into the back-end over DEVICE_STATE before its rings start; answered with <see cref="DeviceStateLoaded"/>.</summary>
public sealed record LoadDeviceState(byte[] State) : IDeviceCommand;

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
public sealed record RestoreInflight(byte[] Contents, ushort NumQueues, ushort QueueSize) : IDeviceCommand;

public sealed class InflightRestored
{
    public static readonly InflightRestored Instance = new();

    private InflightRestored()
    {
    }
}

/// <summary>A copy of the device's inflight region; answered with <see cref="InflightContents"/> (empty when it has none).</summary>
public sealed class ReadInflight : IDeviceCommand
{
    public static readonly ReadInflight Instance = new();

    private ReadInflight()
    {
    }
}

/// <summary>An inflight region's bytes and shape (VhostUserInflight's queue count and queue size).</summary>
public sealed record InflightContents(byte[] Contents, ushort NumQueues, ushort QueueSize);

/// <summary>
/// The guest driver wrote the device status <paramref name="Status"/> (virtio 1.2, 2.1): sent with
/// SET_STATUS when STATUS was negotiated, kept for the next back-end otherwise; answered with
/// <see cref="DriverStatusSet"/>.
/// </summary>
public sealed record SetDriverStatus(byte Status) : IDeviceCommand;

public sealed class DriverStatusSet
{
    public static readonly DriverStatusSet Instance = new();

    private DriverStatusSet()
    {
    }
}

/// <summary>
/// To a device's supervisor: try to connect now instead of at the end of the current backoff (for
/// a host that saw the back-end's socket appear). Answered with <see cref="ReconnectScheduled"/>.
/// </summary>
public sealed class ReconnectNow
{
    public static readonly ReconnectNow Instance = new();

    private ReconnectNow()
    {
    }
}

/// <summary>Whether <see cref="ReconnectNow"/> started an attempt (false: one is under way, the device is connected, or it gave up).</summary>
public sealed record ReconnectScheduled(bool Started);

/// <summary>The phases of a device's supervisor (<see cref="VhostUserDeviceSupervisor"/>).</summary>
public enum SupervisorPhase
{
    /// <summary>The first connection attempt is under way (or waiting for a back-end that is not up yet).</summary>
    Starting,

    /// <summary>A reconnect attempt is under way; commands wait for its outcome.</summary>
    Connecting,

    /// <summary>A connection is ready; commands go to it.</summary>
    Ready,

    /// <summary>The connection died with commands in hand; they wait for its end, then are served without it.</summary>
    Losing,

    /// <summary>Waiting before the next attempt; commands are served from the model.</summary>
    BackingOff,

    /// <summary>A failure the device cannot judge went to the VM, which decides; commands are served from the model.</summary>
    AwaitingDecision,

    /// <summary>The device needs a reset (DEVICE_NEEDS_RESET); commands are served from the model; the guest's reset connects again.</summary>
    GaveUp,
}

/// <summary>Query to a device's supervisor; answered with <see cref="SupervisorState"/> in every phase.</summary>
public sealed class GetSupervisorState
{
    public static readonly GetSupervisorState Instance = new();

    private GetSupervisorState()
    {
    }
}

/// <summary>The supervisor's phase, the reconnect attempt counter, and why it last lost or gave up.</summary>
public sealed record SupervisorState(SupervisorPhase Phase, int Attempt, string? Reason);

/// <summary>The phases of a connection actor (<see cref="VhostUserConnectionActor"/>).</summary>
public enum ConnectionPhase
{
    /// <summary>Opening the socket.</summary>
    Connecting,

    /// <summary>The handshake is under way.</summary>
    Negotiating,

    /// <summary>The device's state is being replayed to the new back-end.</summary>
    Replaying,

    /// <summary>Idle: commands are taken.</summary>
    Ready,

    /// <summary>A command's requests are on the wire; later commands wait in order.</summary>
    Busy,
}

/// <summary>Query to a connection actor; answered with <see cref="ConnectionPhaseReply"/> in every phase.</summary>
public sealed class GetConnectionPhase
{
    public static readonly GetConnectionPhase Instance = new();

    private GetConnectionPhase()
    {
    }
}

public sealed record ConnectionPhaseReply(ConnectionPhase Phase);
