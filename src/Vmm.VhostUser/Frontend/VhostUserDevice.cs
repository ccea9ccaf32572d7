using System.Net.Sockets;
using Akka.Actor;
using Vmm.Virtio;
using Vmm.Virtio.Queues;
using Vmm.Virtio.Spec;
using Vmm.VhostUser.Protocol;

namespace Vmm.VhostUser.Frontend;

/// <summary>
/// A vhost-user device as a host sees it: an <see cref="IVirtioDevice"/> for its transport, plus
/// what only a device with a back-end in another process has (its connection's events and state,
/// the inflight region). What <c>IManagedVmm.GetDeviceAsync</c> hands out.
/// </summary>
/// <remarks>
/// As an <see cref="Core.Memory.IDirtyPageTracking"/> it logs the guest pages its back-end writes
/// (vhost-user.rst, "Migration"; docs/migration.md): <see cref="Core.Memory.IDirtyPageTracking.StartLogging"/>
/// throws <see cref="NotSupportedException"/> when the back-end offers no VHOST_F_LOG_ALL or
/// LOG_SHMFD, and <see cref="InvalidOperationException"/> before a queue has started.
/// </remarks>
public interface IVhostUserDevice : IVirtioDevice, Core.Memory.IDirtyPageTracking
{
    /// <summary>The device's name in its VM (the supervisor's actor name).</summary>
    string Name { get; }

    /// <summary>What the handshake found (the latest one the device was asked about: its features after a reset may differ).</summary>
    DeviceInfo Info { get; }

    /// <summary>The device's supervisor (the commands of Frontend/Messages.cs may be sent to it directly).</summary>
    IActorRef Supervisor { get; }

    /// <summary>False from a connection loss until the next connection is ready, and while the device has given up.</summary>
    bool IsConnected { get; }

    /// <summary>Completes when the device has stopped (disposed, or its VM stopped); calls fail at once from then on.</summary>
    Task Stopped { get; }

    /// <summary>
    /// The back-end went away; the device stays attached and reconnects (kicks are kept, config
    /// reads and queue commands are served from its snapshot meanwhile). Raised on an actor thread.
    /// </summary>
    event Action<string>? ConnectionLost;

    /// <summary>A back-end is connected again and the device state replayed (also after a give-up and the guest's reset); the argument is the attempt that succeeded.</summary>
    event Action<int>? ConnectionRestored;

    /// <summary>A copy of the inflight region (what a save keeps); empty when the device has none.</summary>
    InflightContents ReadInflight();

    /// <summary>
    /// Installs a saved inflight region before the queues start: the back-end receives it with
    /// SET_INFLIGHT_FD and resubmits what it records as in flight.
    /// </summary>
    void RestoreInflight(ReadOnlySpan<byte> contents, ushort numQueues, ushort queueSize);
}

/// <summary>
/// A vhost-user device as the VMM and its transport see it: an <see cref="IVirtioDevice"/> whose
/// every call is a message to the device's <see cref="VhostUserDeviceSupervisor"/>, which owns
/// the socket through its connection actor.
/// </summary>
/// <remarks>
/// The IVirtioDevice calls come from the transport on a vCPU or guest-driver thread, never from
/// an actor, and the interface is synchronous; so each one blocks on its Ask with
/// <see cref="VhostUserDeviceOptions.CommandTimeout"/> as the bound. The data plane never comes
/// this way: kicks and calls are eventfds shared with the back-end.
/// </remarks>
public sealed class VhostUserDevice : IVhostUserDevice
{
    private readonly VhostUserDeviceOptions _options;
    private DeviceInfo _info;
    private readonly Task _stopped;
    private int _disposed;
    private int _connected = 1;

    // The log being harvested, while logging is on (the supervisor's model owns and closes it).
    private VhostUserDirtyLog? _dirtyLog;

    private VhostUserDevice(IActorRef supervisor, VhostUserDeviceOptions options, DeviceInfo info, VhostUserDeviceEvents? events)
    {
        Supervisor = supervisor;
        _options = options;
        _info = info;
        _stopped = supervisor.WatchAsync();
        if (events is not null)
        {
            events.ConnectionLost += OnConnectionLost;
            events.ConnectionRestored += OnConnectionRestored;
            events.Failed += OnFailed;
            events.ConfigChanged += OnConfigChanged;
        }
    }

    /// <summary>
    /// Completes when the supervisor has stopped (the device gave up: reconnect off or exhausted,
    /// a protocol violation, or disposal). Calls made after that fail at once instead of waiting
    /// for <see cref="VhostUserDeviceOptions.CommandTimeout"/>.
    /// </summary>
    public Task Stopped => _stopped;

    public IActorRef Supervisor { get; }

    public string Name => _options.Name;

    public DeviceInfo Info => Volatile.Read(ref _info);

    public VirtioDeviceId DeviceId => _options.DeviceId;

    /// <summary>
    /// The back-end's features without the vhost-user-only bits (PROTOCOL_FEATURES, 30, and
    /// LOG_ALL, 26): those belong to the vhost-user session and mean other things to a guest.
    /// </summary>
    /// <remarks>
    /// Asked of the device each time (the transport reads it while the guest negotiates): after a
    /// give-up and the guest's reset the next back-end may offer less, and the guest must negotiate
    /// against what it offers, so the answer waits for that connection's handshake.
    /// </remarks>
    public ulong DeviceFeatures => CurrentInfo().Features & ~VhostUserVirtioFeatures.TransportMask;

    /// <summary>The queue count of the first handshake: a transport's queues are fixed for its life.</summary>
    public int QueueCount => Volatile.Read(ref _info).QueueCount;

    public int ConfigSize => Volatile.Read(ref _info).Config?.Length ?? _options.EffectiveConfigSize;

    /// <summary>
    /// The back-end announced a config change on the back-end channel (BACKEND_CONFIG_CHANGE_MSG,
    /// with BACKEND_REQ negotiated); the config was read again (GET_CONFIG) before this is raised,
    /// so <see cref="ReadConfig"/> returns the new bytes. Raised on an actor thread.
    /// </summary>
    public event Action? ConfigChanged;

    /// <summary>
    /// The device cannot go on without a reset: a protocol violation, or a lost back-end with
    /// reconnect off or reconnect-max exhausted. The transport answers with DEVICE_NEEDS_RESET
    /// and a config interrupt; the guest's reset makes a fresh connection attempt.
    /// </summary>
    public event Action<DeviceFault>? Faulted;

    public event Action<string>? ConnectionLost;

    public event Action<int>? ConnectionRestored;

    public bool IsConnected => Volatile.Read(ref _connected) != 0;

    /// <summary>
    /// Creates the device's supervisor under <paramref name="factory"/> (an ActorSystem, or an
    /// actor's Context) and completes when the handshake is done. Failures are typed with
    /// one-sentence messages: <see cref="VhostUserConnectException"/> (socket missing, connection
    /// refused, back-end hung up during the handshake), <see cref="VhostUserIncompatibleBackendException"/>
    /// (no VERSION_1), <see cref="VhostUserProtocolException"/>.
    /// </summary>
    public static Task<VhostUserDevice> ConnectAsync(
        IActorRefFactory factory, VhostUserDeviceOptions options, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(factory);
        ArgumentNullException.ThrowIfNull(options);
        TaskCompletionSource<DeviceInfo> firstReady = CreateFirstReady();
        var events = new VhostUserDeviceEvents();
        IActorRef supervisor = factory.ActorOf(VhostUserDeviceSupervisor.Props(options, firstReady, events), options.Name);
        return FromSupervisorAsync(supervisor, options, firstReady.Task, cancellationToken, events);
    }

    /// <summary>The completion to pass to <see cref="VhostUserDeviceSupervisor.Props"/> and then to <see cref="FromSupervisorAsync"/>.</summary>
    public static TaskCompletionSource<DeviceInfo> CreateFirstReady() => new(TaskCreationOptions.RunContinuationsAsynchronously);

    /// <summary>
    /// Wraps a supervisor created elsewhere, for example by the VmActor from
    /// <c>AttachDevice(name, VhostUserDeviceSupervisor.Props(options, firstReady, events, ...))</c>,
    /// once its handshake is done. Without <paramref name="firstReady"/> it asks the supervisor,
    /// which must still be alive to answer. <paramref name="events"/> is the one given to the
    /// supervisor's Props: the device raises its connection events and <see cref="Faulted"/> from it.
    /// The wait is bounded by <see cref="VhostUserDeviceOptions.CommandTimeout"/>, except with
    /// <see cref="VhostUserDeviceOptions.WaitForBackend"/>, where only <paramref name="cancellationToken"/> ends it.
    /// </summary>
    public static async Task<VhostUserDevice> FromSupervisorAsync(
        IActorRef supervisor, VhostUserDeviceOptions options, Task<DeviceInfo>? firstReady = null,
        CancellationToken cancellationToken = default, VhostUserDeviceEvents? events = null)
    {
        try
        {
            TimeSpan timeout = options.WaitForBackend ? Timeout.InfiniteTimeSpan : options.CommandTimeout;
            DeviceInfo info = firstReady is not null
                ? await firstReady.WaitAsync(timeout, cancellationToken).ConfigureAwait(false)
                : await supervisor.Ask<DeviceInfo>(GetDeviceInfo.Instance, timeout, cancellationToken).ConfigureAwait(false);
            return new VhostUserDevice(supervisor, options, info, events);
        }
        catch (Exception e)
        {
            supervisor.Tell(PoisonPill.Instance);
            throw Describe(e, options);
        }
    }

    public ushort GetMaxQueueSize(int index)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(index);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(index, QueueCount);
        return _options.QueueSize;
    }

    public void ReadConfig(uint offset, Span<byte> data)
    {
        data.Clear();
        if (data.IsEmpty)
        {
            return;
        }

        // One request per guest access; the actor serves it from the cached config when it can.
        ConfigData reply = Call<ConfigData>(new ReadConfig((int)offset, data.Length));
        reply.Data.AsSpan(0, Math.Min(reply.Data.Length, data.Length)).CopyTo(data);
    }

    public void WriteConfig(uint offset, ReadOnlySpan<byte> data)
    {
        if (data.IsEmpty)
        {
            return;
        }

        Call<ConfigWritten>(new WriteConfig((int)offset, data.ToArray()));
    }

    public void StartQueue(int index, VirtqueueResources resources, ulong features, VirtqueueState? initialState = null) =>
        Call<QueueStarted>(new StartQueue(index, resources, features, initialState));

    public VirtqueueState? StopQueue(int index) => Call<QueueStopped>(new StopQueue(index)).State;

    public void Reset() => Call<DeviceReset>(ResetDevice.Instance);

    /// <summary>
    /// The back-end's internal state through vhost-user DEVICE_STATE (SET_DEVICE_STATE_FD, SAVE),
    /// opaque bytes; empty when the back-end does not offer DEVICE_STATE. Every queue must be
    /// stopped first: the back-end refuses while a ring runs.
    /// </summary>
    public byte[] SaveState() => Call<DeviceStateSaved>(SaveDeviceState.Instance).State;

    /// <summary>Loads what <see cref="SaveState"/> returned into the back-end (LOAD), before queues start; empty loads nothing.</summary>
    public void RestoreState(ReadOnlySpan<byte> state) => Call<DeviceStateLoaded>(new LoadDeviceState(state.ToArray()));

    public void RestoreInflight(ReadOnlySpan<byte> contents, ushort numQueues, ushort queueSize) =>
        Call<InflightRestored>(new RestoreInflight(contents.ToArray(), numQueues, queueSize));

    public InflightContents ReadInflight() => Call<InflightContents>(Frontend.ReadInflight.Instance);

    /// <summary>
    /// Starts logging the pages the back-end writes (<see cref="StartDirtyLogging"/>); the log is
    /// then harvested here without a message, straight from its shared mapping.
    /// </summary>
    public void StartLogging() => Volatile.Write(ref _dirtyLog, Call<DirtyLoggingStarted>(StartDirtyLogging.Instance).Log);

    /// <inheritdoc/>
    public long HarvestDirtyPages(Span<ulong> bitmap) => Volatile.Read(ref _dirtyLog)?.Harvest(bitmap) ?? 0;

    /// <summary>Stops logging (<see cref="StopDirtyLogging"/>).</summary>
    public void StopLogging()
    {
        Call<DirtyLoggingStopped>(StopDirtyLogging.Instance);
        Volatile.Write(ref _dirtyLog, null);
    }

    /// <summary>
    /// The guest's status goes to the back-end (SET_STATUS, when STATUS was negotiated). It is
    /// informative only: a failure to pass it on is not the guest's problem and is not thrown
    /// into its status write (a lost back-end hears the status with the replay).
    /// </summary>
    public void DriverStatusChanged(Virtio.Spec.VirtioDeviceStatus status)
    {
        if (Volatile.Read(ref _disposed) != 0 || _stopped.IsCompleted)
        {
            return;
        }

        try
        {
            Call<DriverStatusSet>(new SetDriverStatus((byte)status), faultOnFailure: false);
        }
        catch (Exception e) when (e is VhostUserConnectionLostException or VhostUserRequestFailedException or VhostUserProtocolException or
            AskTimeoutException or InvalidOperationException or NotSupportedException)
        {
            // Nothing to do: see above.
        }
    }

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) == 0)
        {
            Supervisor.Tell(PoisonPill.Instance);
        }
    }

    private void OnConnectionLost(string reason)
    {
        Volatile.Write(ref _connected, 0);
        ConnectionLost?.Invoke(reason);
    }

    private void OnConnectionRestored(int attempt)
    {
        Volatile.Write(ref _connected, 1);
        ConnectionRestored?.Invoke(attempt);
    }

    private void OnConfigChanged() => ConfigChanged?.Invoke();

    private void OnFailed(string reason)
    {
        Volatile.Write(ref _connected, 0);
        Faulted?.Invoke(new DeviceFault(-1, reason));
    }

    /// <summary>The device's info as it is now; the last one known once the device has stopped or cannot answer.</summary>
    private DeviceInfo CurrentInfo()
    {
        if (_stopped.IsCompleted || Volatile.Read(ref _disposed) != 0)
        {
            return Volatile.Read(ref _info);
        }

        try
        {
            DeviceInfo info = Call<DeviceInfo>(GetDeviceInfo.Instance);
            Volatile.Write(ref _info, info);
            return info;
        }
        catch (Exception e) when (e is VhostUserConnectionLostException or AskTimeoutException)
        {
            return Volatile.Read(ref _info);
        }
    }

    /// <summary>Asks the supervisor <paramref name="message"/> and waits for its answer on the caller's (vCPU) thread.</summary>
    /// <param name="message">The command.</param>
    /// <param name="faultOnFailure">A protocol violation or a timeout raises <see cref="Faulted"/> (DEVICE_NEEDS_RESET).</param>
    private T Call<T>(object message, bool faultOnFailure = true)
    {
        ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);
        try
        {
            // Blocking is allowed here and only here: the caller is the transport's thread (a vCPU
            // or the guest driver), never an actor, and the Ask is bounded by CommandTimeout.
            // A stopped supervisor would never answer: fail at once rather than at the timeout.
            if (_stopped.IsCompleted)
            {
                throw new VhostUserConnectionLostException($"vhost-user device {_options.Name} has stopped.");
            }

            Task<T> ask = Supervisor.Ask<T>(message, _options.CommandTimeout);
            if (Task.WaitAny(ask, _stopped) == 1 && !ask.IsCompleted)
            {
                throw new VhostUserConnectionLostException($"vhost-user device {_options.Name} has stopped.");
            }

            return ask.GetAwaiter().GetResult();
        }
        catch (Exception e) when (faultOnFailure && (VhostUserDeviceSupervisor.IsProtocolViolation(e) || e is AskTimeoutException))
        {
            Faulted?.Invoke(new DeviceFault(message is StartQueue s ? s.Index : message is StopQueue t ? t.Index : -1, e.Message, e));
            throw;
        }
    }

    private static Exception Describe(Exception e, VhostUserDeviceOptions options)
    {
        string path = options.SocketPath;
        return e switch
        {
            FileNotFoundException => new VhostUserConnectException(
                VhostUserConnectFailure.SocketMissing, $"vhost-user socket {path} does not exist.", e),
            IOException { InnerException: SocketException { SocketErrorCode: SocketError.ConnectionRefused } } => new VhostUserConnectException(
                VhostUserConnectFailure.ConnectionRefused, $"Connection to vhost-user socket {path} refused: nothing is listening on it.", e),
            VhostUserConnectionLostException { InnerException: OperationCanceledException } => new VhostUserConnectException(
                VhostUserConnectFailure.HandshakeTimeout, $"The vhost-user back-end at {path} stopped answering during the handshake ({e.Message}).", e),
            VhostUserConnectionLostException => new VhostUserConnectException(
                VhostUserConnectFailure.HungUpDuringHandshake, $"The vhost-user back-end at {path} hung up during the handshake ({e.Message}).", e),
            AskTimeoutException or TimeoutException => new VhostUserConnectException(
                VhostUserConnectFailure.HandshakeTimeout, $"The vhost-user back-end at {path} did not complete the handshake within {options.CommandTimeout.TotalSeconds:0.#} s.", e),
            VhostUserIncompatibleBackendException or VhostUserProtocolException or OperationCanceledException => e,
            IOException => new VhostUserConnectException(VhostUserConnectFailure.Other, e.Message, e),
            _ => e,
        };
    }
}
