using System.Net.Sockets;
using Akka.Actor;
using Akka.Event;
using Vmm.Core.Machine;
using Vmm.VhostUser.Protocol;

namespace Vmm.VhostUser.Frontend;

/// <summary>
/// One vhost-user device's supervisor: keeps the <see cref="DeviceSnapshot"/> outside the
/// connection actor that may die, and decides by exception type when it does (cloud-hypervisor's
/// <c>Error::is_transport_lost()</c>):
/// <list type="bullet">
/// <item>transport lost (EOF, ECONNRESET, a request past its deadline, a socket that is gone or
/// refusing): a new connection after a jittered exponential backoff (min 100 ms, cap 5 s),
/// unlimited by default (<see cref="VhostUserDeviceOptions.ReconnectMax"/> limits it,
/// <see cref="VhostUserDeviceOptions.Reconnect"/> off stops instead). The new connection replays the snapshot.</item>
/// <item>protocol violation or an incompatible back-end: the device stops and <see cref="DeviceFailed"/>
/// goes to the parent (the VM, which lives on) and to the event stream.</item>
/// <item>anything else: escalated.</item>
/// </list>
/// Before the first connection was ever ready, any failure stops the device: a socket that is
/// missing at start-up is a configuration error the caller must see, not something to wait for.
/// Commands sent here wait in the stash until a connection is ready (handshake and replay done),
/// then are forwarded to it; if the device gives up instead, they are failed with the cause.
/// </summary>
public sealed class VhostUserDeviceSupervisor : ReceiveActor, IWithTimers, IWithUnboundedStash
{
    public const string ConnectionName = "connection";
    private const string ReconnectTimerKey = "reconnect";

    private readonly ILoggingAdapter _log = Context.GetLogger();
    private readonly VhostUserDeviceOptions _options;
    private readonly TaskCompletionSource<DeviceInfo>? _firstReady;
    private DeviceSnapshot _snapshot = DeviceSnapshot.Empty;
    private IActorRef? _connection;
    private bool _connectionReady;
    private Exception? _lastFailure;
    private int _attempt;
    private int _started;
    private int _ready;

    public VhostUserDeviceSupervisor(VhostUserDeviceOptions options, TaskCompletionSource<DeviceInfo>? firstReady)
    {
        _options = options;
        _firstReady = firstReady;
        Receive<SnapshotUpdated>(m => _snapshot = m.Snapshot);
        Receive<ConnectionReady>(HandleConnectionReady);
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
    /// </summary>
    public static Props Props(VhostUserDeviceOptions options, TaskCompletionSource<DeviceInfo>? firstReady = null) =>
        Akka.Actor.Props.Create(() => new VhostUserDeviceSupervisor(options, firstReady));

    protected override void PreStart() => StartConnection();

    /// <summary>The inflight region's fd belongs to the snapshot, and the snapshot to this actor.</summary>
    protected override void PostStop()
    {
        _snapshot.Inflight?.Dispose();
        _firstReady?.TrySetException(new VhostUserConnectionLostException($"vhost-user device {_options.Name} was stopped."));
    }

    protected override SupervisorStrategy SupervisorStrategy() =>
        new OneForOneStrategy(Decide);

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
        else
        {
            Stash.Stash();
        }
    }

    private void HandleConnectionReady(ConnectionReady message)
    {
        // Auto-reset of the backoff: a connection that became ready counts as a success.
        _ready++;
        if (_ready > 1)
        {
            Context.System.EventStream.Publish(new DeviceConnectionRestored(_options.Name, _attempt));
        }

        _attempt = 0;
        _connectionReady = true;
        _firstReady?.TrySetResult(message.Info);
        Stash.UnstashAll();
    }

    private void HandleTerminated(Terminated message)
    {
        if (!message.ActorRef.Equals(_connection))
        {
            return;
        }

        _connection = null;
        _connectionReady = false;
        Exception? cause = _lastFailure;
        if (cause is null)
        {
            Fail("the connection actor stopped", null);
            return;
        }

        if (IsProtocolViolation(cause) || _ready == 0)
        {
            Fail(cause.Message, cause);
            return;
        }

        if (!_options.Reconnect)
        {
            Fail($"connection lost and reconnect is off: {cause.Message}", cause);
            return;
        }

        if (_options.ReconnectMax is int max && _attempt >= max)
        {
            Fail($"connection lost, {max} reconnect attempt(s) failed: {cause.Message}", cause);
            return;
        }

        TimeSpan delay = Backoff(_attempt, _options.ReconnectMinBackoff, _options.ReconnectMaxBackoff);
        _attempt++;
        _log.Warning("Device {0}: {1}; reconnecting in {2} ms (attempt {3})", _options.Name, cause.Message, (int)delay.TotalMilliseconds, _attempt);
        Context.System.EventStream.Publish(new DeviceConnectionLost(_options.Name, cause.Message, _attempt, delay));
        Timers.StartSingleTimer(ReconnectTimerKey, Reconnect.Instance, delay);
    }

    private void HandleReconnect(Reconnect message)
    {
        if (_connection is null)
        {
            StartConnection();
        }
    }

    /// <summary>min · 2^attempt capped at max, plus up to 20 % jitter (akka.net BackoffSupervisor's randomFactor 0.2).</summary>
    public static TimeSpan Backoff(int attempt, TimeSpan min, TimeSpan max)
    {
        double exponential = min.TotalMilliseconds * Math.Pow(2, Math.Min(attempt, 30));
        double capped = Math.Min(max.TotalMilliseconds, exponential);
        double jitter = 1 + (Random.Shared.NextDouble() * 0.2);
        return TimeSpan.FromMilliseconds(Math.Min(max.TotalMilliseconds * 1.2, capped * jitter));
    }

    private void Fail(string reason, Exception? cause)
    {
        var failed = new DeviceFailed(_options.Name, reason);
        _log.Warning("Device {0} stopped: {1}", _options.Name, reason);
        Context.Parent.Tell(failed);
        Context.System.EventStream.Publish(failed);
        Exception error = cause ?? new VhostUserConnectionLostException($"vhost-user device {_options.Name} stopped: {reason}");
        _firstReady?.TrySetException(error);
        foreach (Envelope envelope in Stash.ClearStash())
        {
            if (!envelope.Sender.IsNobody())
            {
                envelope.Sender.Tell(new Status.Failure(error));
            }
        }

        Context.Stop(Self);
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
