using System.Net.Sockets;
using Akka.Actor;
using Akka.Event;
using Vmm.Core.Machine;
using Vmm.Core.Memory;
using Vmm.Virtio.Queues;
using Vmm.VhostUser.Protocol;

namespace Vmm.VhostUser.Frontend;

/// <summary>
/// One vhost-user device's supervisor: keeps the <see cref="DeviceSnapshot"/> outside the
/// connection actor that may die, and decides by exception type when it does (cloud-hypervisor's
/// <c>Error::is_transport_lost()</c>):
/// <list type="bullet">
/// <item>transport lost (EOF, ECONNRESET, a request past its deadline, a socket that is gone or
/// refusing): a new connection after a jittered exponential backoff (min 100 ms, interval capped
/// at 5 s), unlimited by default and with no deadline (<see cref="VhostUserDeviceOptions.ReconnectMax"/>
/// limits the attempts in a row, <see cref="VhostUserDeviceOptions.Reconnect"/> off gives up at
/// once). The new connection replays the snapshot.</item>
/// <item>protocol violation or an incompatible back-end: no reconnect; the device gives up.</item>
/// <item>anything else: escalated.</item>
/// </list>
/// While no connection is ready the device stays attached: commands are served from the snapshot
/// (config reads from the last known config; StartQueue, StopQueue, WriteConfig and Reset change
/// the snapshot, which the next connection replays); during a connection attempt they wait in the
/// stash. A device that gives up reports <see cref="DeviceFailed"/> and raises
/// <see cref="VhostUserDeviceEvents.Failed"/> (the transport then sets DEVICE_NEEDS_RESET), and
/// lives on: the guest's reset clears the snapshot and makes a fresh connection attempt.
/// Before the first connection was ever ready, any failure stops the device: a socket that is
/// missing at start-up is a configuration error the caller must see, not something to wait for.
/// </summary>
public sealed class VhostUserDeviceSupervisor : ReceiveActor, IWithTimers, IWithUnboundedStash
{
    public const string ConnectionName = "connection";
    private const string ReconnectTimerKey = "reconnect";

    private readonly ILoggingAdapter _log = Context.GetLogger();
    private readonly VhostUserDeviceOptions _options;
    private readonly TaskCompletionSource<DeviceInfo>? _firstReady;
    private readonly VhostUserDeviceEvents? _events;
    private DeviceSnapshot _snapshot = DeviceSnapshot.Empty;
    private IActorRef? _connection;
    private bool _connectionReady;
    private Exception? _lastFailure;
    private DeviceInfo? _info;
    private byte[]? _config;
    private bool _gaveUp;
    private int _attempt;
    private int _started;
    private int _ready;

    public VhostUserDeviceSupervisor(VhostUserDeviceOptions options, TaskCompletionSource<DeviceInfo>? firstReady, VhostUserDeviceEvents? events)
    {
        _options = options;
        _firstReady = firstReady;
        _events = events;
        Receive<SnapshotUpdated>(m => _snapshot = m.Snapshot);
        Receive<ConnectionReady>(HandleConnectionReady);
        Receive<ConfigRefreshed>(HandleConfigRefreshed);
        Receive<CommandRequeued>(HandleRequeued);
        Receive<Terminated>(HandleTerminated);
        Receive<Reconnect>(HandleReconnect);
        Receive<GetConnectionCount>(_ => Sender.Tell(new ConnectionCount(_started, _ready)));
        Receive<GetDeviceSnapshot>(_ => Sender.Tell(_snapshot));
        ReceiveAny(HandleCommand);
    }

    public ITimerScheduler Timers { get; set; } = null!;

    public IStash Stash { get; set; } = null!;

    /// <summary>
    /// Props for one device. <paramref name="firstReady"/>, when given, completes with the device's
    /// info once the first handshake is done, or fails with the cause when the device gives up
    /// first: a caller outside the actor system learns the outcome even if the device stopped
    /// before its first message could reach it (see <see cref="VhostUserDevice.ConnectAsync(IActorRefFactory, VhostUserDeviceOptions, CancellationToken)"/>).
    /// <paramref name="events"/>, when given, hears of connection loss, recovery and failure.
    /// </summary>
    public static Props Props(
        VhostUserDeviceOptions options, TaskCompletionSource<DeviceInfo>? firstReady = null, VhostUserDeviceEvents? events = null) =>
        Akka.Actor.Props.Create(() => new VhostUserDeviceSupervisor(options, firstReady, events));

    protected override void PreStart() => StartConnection();

    /// <summary>The inflight region's fd belongs to the snapshot, and the snapshot to this actor.</summary>
    protected override void PostStop()
    {
        _snapshot.Inflight?.Dispose();
        _firstReady?.TrySetException(new VhostUserConnectionLostException($"vhost-user device {_options.Name} was stopped."));
    }

    /// <summary>Not logged by Akka (a stack trace per lost back-end): this actor logs each decision in one line.</summary>
    protected override SupervisorStrategy SupervisorStrategy() =>
        new OneForOneStrategy(-1, -1, Decide, loggingEnabled: false);

    /// <summary>
    /// Runs in this actor's context (the parent handles its child's Failed message), so it may
    /// record the cause for <see cref="HandleTerminated"/>. Every handled case stops the child:
    /// the reconnect is a fresh actor after a backoff, never an immediate restart.
    /// </summary>
    private Directive Decide(Exception cause)
    {
        if (IsTransportLost(cause) || IsProtocolViolation(cause))
        {
            _lastFailure = cause;
            return Directive.Stop;
        }

        // Akka's own lifecycle exceptions keep their usual handling; anything unknown goes up.
        return cause is ActorInitializationException or ActorKilledException or DeathPactException
            ? Akka.Actor.SupervisorStrategy.DefaultStrategy.Decider.Decide(cause)
            : Directive.Escalate;
    }

    /// <summary>The peer is gone or unreachable: worth a reconnect.</summary>
    public static bool IsTransportLost(Exception cause) => cause is
        VhostUserConnectionLostException or
        FileNotFoundException or
        SocketException or
        IOException { InnerException: SocketException } or
        TimeoutException;

    /// <summary>
    /// The peer broke the protocol or cannot serve us (including a request it refused while the
    /// connection was being set up or replayed): reconnecting would meet the same fault.
    /// </summary>
    public static bool IsProtocolViolation(Exception cause) =>
        cause is VhostUserProtocolException or VhostUserIncompatibleBackendException or VhostUserRequestFailedException;

    private void StartConnection()
    {
        _started++;
        _lastFailure = null;
        _connectionReady = false;
        _connection = Context.ActorOf(VhostUserDeviceActor.Props(_options, _snapshot), ConnectionName);
        Context.Watch(_connection);
    }

    private void HandleCommand(object message)
    {
        if (_connection is not null && _connectionReady)
        {
            _connection.Forward(message);
        }
        else if (_ready == 0 || _connection is not null)
        {
            // The first connection, or a reconnect attempt under way: wait for its outcome.
            Stash.Stash();
        }
        else
        {
            ServeDisconnected(message);
        }
    }

    /// <summary>A command the dying connection did not finish: served as if it had arrived after the loss.</summary>
    private void HandleRequeued(CommandRequeued message)
    {
        if (message.From.Equals(_connection))
        {
            // The connection is going down: no more forwarding to it; its Terminated follows.
            _connectionReady = false;
            ServeDisconnected(message.Command);
        }
        else if (_connection is not null && !_connectionReady)
        {
            // A newer attempt is under way and replays the snapshot as it was when it began:
            // wait for its outcome rather than change the snapshot under it.
            Stash.Stash();
        }
        else if (_connection is not null)
        {
            _connection.Forward(message.Command);
        }
        else
        {
            ServeDisconnected(message.Command);
        }
    }

    private void HandleConnectionReady(ConnectionReady message)
    {
        // Auto-reset of the backoff: a connection that became ready counts as a success.
        int attempts = _attempt;
        bool reconnected = _ready > 0;
        _ready++;
        _attempt = 0;
        _gaveUp = false;
        _connectionReady = true;
        _info = message.Info;
        _config = message.Info.Config?.ToArray();
        foreach (ConfigWrite write in _snapshot.ConfigWrites)
        {
            PatchConfig(write);
        }

        _firstReady?.TrySetResult(message.Info);
        if (reconnected)
        {
            _log.Info("Device {0}: connection restored (attempt {1})", _options.Name, Math.Max(1, attempts));
            Context.System.EventStream.Publish(new DeviceConnectionRestored(_options.Name, Math.Max(1, attempts)));
            _events?.RaiseConnectionRestored(Math.Max(1, attempts));
        }

        Stash.UnstashAll();
    }

    private void HandleConfigRefreshed(ConfigRefreshed message)
    {
        if (!Sender.Equals(_connection))
        {
            return;
        }

        if (message.Config is not null)
        {
            _config = message.Config.ToArray();
            _info = _info is null ? null : _info with { Config = message.Config.ToArray() };
        }

        _events?.RaiseConfigChanged();
    }

    private void HandleTerminated(Terminated message)
    {
        if (!message.ActorRef.Equals(_connection))
        {
            return;
        }

        bool wasReady = _connectionReady;
        _connection = null;
        _connectionReady = false;
        Exception? cause = _lastFailure;
        if (cause is null)
        {
            GiveUp("the connection actor stopped", null);
            return;
        }

        if (IsProtocolViolation(cause) || _ready == 0)
        {
            GiveUp(cause.Message, cause);
            return;
        }

        if (wasReady)
        {
            _events?.RaiseConnectionLost(cause.Message);
        }

        if (!_options.Reconnect)
        {
            GiveUp($"connection lost and reconnect is off: {cause.Message}", cause);
            return;
        }

        if (wasReady && _snapshot.Queues.Values.Any(q => VhostUserFrontendConnection.IsPacked(q.Features)))
        {
            // A packed ring has no used index in guest memory to resume from, and its position
            // died with the back-end: resuming from the start state could run old descriptors
            // again. Only the guest's reset (fresh rings) is safe.
            GiveUp($"connection lost while a packed ring was running; it cannot resume without a reset: {cause.Message}", cause);
            return;
        }

        if (_options.ReconnectMax is int max && _attempt >= max)
        {
            GiveUp($"connection lost, {max} reconnect attempt(s) failed: {cause.Message}", cause);
            return;
        }

        TimeSpan delay = Backoff(_attempt, _options.ReconnectMinBackoff, _options.ReconnectMaxBackoff);
        _attempt++;
        _log.Warning("Device {0}: {1}; reconnecting in {2} ms (attempt {3})", _options.Name, cause.Message.TrimEnd('.'), (int)delay.TotalMilliseconds, _attempt);
        Context.System.EventStream.Publish(new DeviceConnectionLost(_options.Name, cause.Message, _attempt, delay));
        Timers.StartSingleTimer(ReconnectTimerKey, Reconnect.Instance, delay);

        // Whatever waited for the failed attempt is served from the snapshot now.
        Stash.UnstashAll();
    }

    private void HandleReconnect(Reconnect message)
    {
        if (_connection is null && !_gaveUp)
        {
            StartConnection();
        }
    }

    /// <summary>min · 2^attempt capped at max, plus up to 20 % jitter (akka.net BackoffSupervisor's randomFactor 0.2).</summary>
    public static TimeSpan Backoff(int attempt, TimeSpan min, TimeSpan max, Random? random = null)
    {
        double exponential = min.TotalMilliseconds * Math.Pow(2, Math.Min(attempt, 30));
        double capped = Math.Min(max.TotalMilliseconds, exponential);
        double jitter = 1 + ((random ?? Random.Shared).NextDouble() * 0.2);
        return TimeSpan.FromMilliseconds(Math.Min(max.TotalMilliseconds * 1.2, capped * jitter));
    }

    /// <summary>
    /// No connection is ready and none is being attempted (waiting for the backoff, or given up):
    /// the command is answered from the snapshot at once, so the guest driver never waits for a
    /// back-end that may be gone for minutes. The next connection replays what changed.
    /// </summary>
    private void ServeDisconnected(object message)
    {
        DeviceInfo? info = _info;
        switch (message)
        {
            case GetDeviceInfo when info is not null:
                Sender.Tell(info with { Config = _config?.ToArray() });
                break;

            case ReadConfig read:
                if (read.Offset < 0 || read.Length < 0)
                {
                    Sender.Tell(new Status.Failure(new ArgumentOutOfRangeException(nameof(message), "Negative config offset or length.")));
                    break;
                }

                byte[] config = _config ?? [];
                int available = Math.Clamp(config.Length - read.Offset, 0, read.Length);
                Sender.Tell(new ConfigData(read.Offset, config.AsSpan(Math.Min(read.Offset, config.Length), available).ToArray()));
                break;

            case WriteConfig write:
                var recorded = new ConfigWrite(write.Offset, write.Data.ToArray());
                PatchConfig(recorded);
                _snapshot = _snapshot with { ConfigWrites = _snapshot.ConfigWrites.Add(recorded) };
                Sender.Tell(ConfigWritten.Instance);
                break;

            case StartQueue start when info is not null:
                if (start.Index < 0 || start.Index >= info.QueueCount)
                {
                    Sender.Tell(new Status.Failure(new ArgumentOutOfRangeException(
                        nameof(message), start.Index, $"The device has {info.QueueCount} queue(s).")));
                }
                else if (_snapshot.Queues.ContainsKey(start.Index))
                {
                    Sender.Tell(new Status.Failure(new InvalidOperationException($"Queue {start.Index} is already running.")));
                }
                else
                {
                    _snapshot = _snapshot with
                    {
                        GuestFeatures = start.Features,
                        Memory = start.Resources.Memory,
                        Queues = _snapshot.Queues.SetItem(start.Index, new QueueSnapshot(start.Index, start.Resources, start.Features, start.InitialState)),
                    };
                    Sender.Tell(new QueueStarted(start.Index));
                }

                break;

            case StopQueue stop:
                if (_snapshot.Queues.TryGetValue(stop.Index, out QueueSnapshot? queue))
                {
                    _snapshot = _snapshot with { Queues = _snapshot.Queues.Remove(stop.Index) };
                    Sender.Tell(new QueueStopped(stop.Index, StateInGuestMemory(queue)));
                }
                else
                {
                    Sender.Tell(new QueueStopped(stop.Index, null));
                }

                break;

            case ResetDevice:
                _snapshot.Inflight?.Dispose();
                _snapshot = DeviceSnapshot.Empty;
                _config = _info?.Config?.ToArray();
                Sender.Tell(DeviceReset.Instance);
                if (_gaveUp)
                {
                    // The guest reset a device that had given up: a fresh start, as on attach.
                    _log.Info("Device {0}: reset by the guest; connecting again", _options.Name);
                    _gaveUp = false;
                    _attempt = 0;
                    Timers.Cancel(ReconnectTimerKey);
                    StartConnection();
                }

                break;

            default:
                Sender.Tell(new Status.Failure(new VhostUserConnectionLostException(
                    $"vhost-user device {_options.Name} is not connected; {message.GetType().Name} cannot be served.")));
                break;
        }
    }

    /// <summary>
    /// Where a queue stopped while disconnected stands: for a split ring, the used index the guest
    /// sees (what follows it was not completed and is made available again at the next start); a
    /// packed ring keeps the state it was started with.
    /// </summary>
    private static VirtqueueState? StateInGuestMemory(QueueSnapshot queue)
    {
        if (VhostUserFrontendConnection.IsPacked(queue.Features))
        {
            return queue.InitialState ?? default;
        }

        try
        {
            ushort used = queue.Resources.Memory.ReadUInt16Acquire(queue.Resources.Params.DeviceArea + 2);
            return new VirtqueueState(used, used);
        }
        catch (GuestMemoryException)
        {
            return null;
        }
    }

    private void PatchConfig(ConfigWrite write)
    {
        if (_config is null || write.Offset < 0 || write.Offset + write.Data.Length > _config.Length)
        {
            return;
        }

        write.Data.CopyTo(_config, write.Offset);
    }

    private void GiveUp(string reason, Exception? cause)
    {
        var failed = new DeviceFailed(_options.Name, reason);
        _log.Warning("Device {0} gave up: {1}", _options.Name, reason);
        Context.Parent.Tell(failed);
        Context.System.EventStream.Publish(failed);
        Exception error = cause ?? new VhostUserConnectionLostException($"vhost-user device {_options.Name} stopped: {reason}");
        if (_ready == 0 || cause is null)
        {
            // Never connected (a configuration error), or stopped on purpose: the device ends here.
            _firstReady?.TrySetException(error);
            foreach (Envelope envelope in Stash.ClearStash())
            {
                if (!envelope.Sender.IsNobody())
                {
                    envelope.Sender.Tell(new Status.Failure(error));
                }
            }

            Context.Stop(Self);
            return;
        }

        _gaveUp = true;
        _events?.RaiseFailed(reason);
        Stash.UnstashAll();
    }

    #region Messages

    private sealed class Reconnect
    {
        public static readonly Reconnect Instance = new();

        private Reconnect()
        {
        }
    }

    #endregion
}
