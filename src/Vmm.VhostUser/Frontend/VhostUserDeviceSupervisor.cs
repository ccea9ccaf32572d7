using System.Net.Sockets;
using Akka.Actor;
using Akka.Event;
using Vmm.Core.Events;
using Vmm.Core.Machine;
using Vmm.VhostUser.Metrics;
using Vmm.VhostUser.Protocol;

namespace Vmm.VhostUser.Frontend;

/// <summary>
/// One vhost-user device's supervisor: it holds the device's <see cref="VhostUserDeviceModel"/>
/// outside the connection actor that may die, and decides what each end of a connection means.
/// Become states (see <see cref="SupervisorPhase"/>):
/// <code>
/// Starting ──ready──► Ready ──requeued──► Losing
///    │                  │                   │
///    │ (first attempt   └──── terminated ───┴──► transport lost ──► BackingOff ──timer──► Connecting ──ready──► Ready
///    │  fails: stop,                        ├──► protocol violation, incompatible, reconnect off/exhausted ──► GaveUp
///    │  or BackingOff                       └──► anything else ──► AwaitingDecision ──(VM decides)──► BackingOff | GaveUp
///    │  with WaitForBackend)                                                 GaveUp ──guest's reset──► Connecting
/// </code>
/// Decisions by exception type, as cloud-hypervisor's <c>Error::is_transport_lost()</c>: a lost
/// transport reconnects after a jittered exponential backoff (100 ms to 5 s, unlimited unless
/// <see cref="VhostUserDeviceOptions.ReconnectMax"/>); a protocol violation or an incompatible
/// back-end gives up (DEVICE_NEEDS_RESET); anything else goes to the VM (<see cref="DeviceEscalated"/>),
/// which decides. Never an Akka restart: a restart would drop the model (the snapshot and the
/// inflight region).
/// </summary>
/// <remarks>
/// Commands (<see cref="IDeviceCommand"/>) go to a ready connection; wait in the stash while an
/// attempt is under way or a dying connection hands its commands back; and are otherwise served
/// from the model, so the guest driver never waits for a back-end that may be gone for minutes.
/// A command forwarded to a connection that died before reading it comes back as a dead letter
/// and is served the same way. Every state answers every message.
/// </remarks>
public sealed class VhostUserDeviceSupervisor : ReceiveActor, IWithTimers, IWithUnboundedStash
{
    public const string ConnectionName = "connection";
    private const string ReconnectTimerKey = "reconnect";
    private const string DecisionTimerKey = "decision";

    /// <summary>
    /// After an attempt the socket watch started has failed, the next comes this soon (unless the
    /// backoff is shorter): a back-end binds its socket before it listens, and a connect between
    /// the two is refused.
    /// </summary>
    public static readonly TimeSpan SocketSettleDelay = TimeSpan.FromMilliseconds(20);

    /// <summary>How many attempts in a row follow within <see cref="SocketSettleDelay"/> once the socket appeared, before the backoff paces them again.</summary>
    public const int SocketSettleAttempts = 5;

    private readonly ILoggingAdapter _log = Context.GetLogger();
    private readonly VhostUserDeviceOptions _options;
    private readonly TaskCompletionSource<DeviceInfo>? _firstReady;
    private readonly VhostUserDeviceEvents? _events;
    private readonly VhostUserDeviceModel _model;
    private WatchCallNotifier? _watch;
    private SocketPathWatch? _socketWatch;
    private EventNotifierLoop? _ownNotifiers;
    private IActorRef? _connection;
    private Exception? _lastFailure;
    private string? _reason;
    private int _attempt;
    private int _started;
    private int _ready;

    public VhostUserDeviceSupervisor(
        VhostUserDeviceOptions options, TaskCompletionSource<DeviceInfo>? firstReady, VhostUserDeviceEvents? events, WatchCallNotifier? watch)
    {
        _options = options;
        _firstReady = firstReady;
        _events = events;
        _watch = watch;
        _model = new VhostUserDeviceModel(options);
        Become(() => Starting());
    }

    public ITimerScheduler Timers { get; set; } = null!;

    public IStash Stash { get; set; } = null!;

    /// <summary>
    /// Props for one device. <paramref name="firstReady"/>, when given, completes with the device's
    /// info once the first handshake is done, or fails with the cause when the device stops first:
    /// a caller outside the actor system learns the outcome even if the device stopped before its
    /// first message could reach it. <paramref name="events"/>, when given, hears of connection loss,
    /// recovery, configuration changes and give-ups. <paramref name="watch"/> watches the queues'
    /// proxy call notifiers (the VM's notifier loop); without one the device runs a loop of its own.
    /// </summary>
    public static Props Props(
        VhostUserDeviceOptions options, TaskCompletionSource<DeviceInfo>? firstReady = null, VhostUserDeviceEvents? events = null,
        WatchCallNotifier? watch = null) =>
        Akka.Actor.Props.Create(() => new VhostUserDeviceSupervisor(options, firstReady, events, watch));

    protected override void PreStart()
    {
        if (_watch is null)
        {
            // A device outside a VM (VhostUserDevice.ConnectAsync on any actor factory): its own loop.
            _ownNotifiers = new EventNotifierLoop($"{_options.Name} notifiers");
            _watch = _ownNotifiers.Watch;
        }

        Context.System.EventStream.Subscribe(Self, typeof(DeadLetter));
        StartConnection();
    }

    /// <summary>The model (and with it the inflight region's fd) ends with the device.</summary>
    protected override void PostStop()
    {
        Context.System.EventStream.Unsubscribe(Self);
        StopSocketWatch();
        _model.Dispose();

        // After the children stopped: no queue of this device watches a notifier any more.
        _ownNotifiers?.Dispose();
        _firstReady?.TrySetException(new VhostUserConnectionLostException($"vhost-user device {_options.Name} was stopped."));
    }

    /// <summary>
    /// Runs in this actor's context (the parent handles its child's Failed message), so it may
    /// record the cause for the Terminated that follows. Every failure stops the connection: the
    /// decision is made when it has terminated and the model is back (a reconnect is a fresh actor
    /// after a backoff, never an immediate restart). Not logged by Akka (a stack trace per lost
    /// back-end): each decision is logged here in one line.
    /// </summary>
    protected override SupervisorStrategy SupervisorStrategy() =>
        new OneForOneStrategy(-1, -1, Decide, loggingEnabled: false);

    private Directive Decide(Exception cause)
    {
        _lastFailure = cause;
        FrontendMetrics.Fault(_options.Name, cause);
        return Directive.Stop;
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

    /// <summary>min · 2^attempt capped at max, plus up to 20 % jitter (akka.net BackoffSupervisor's randomFactor 0.2).</summary>
    public static TimeSpan Backoff(int attempt, TimeSpan min, TimeSpan max, Random? random = null)
    {
        double exponential = min.TotalMilliseconds * Math.Pow(2, Math.Min(attempt, 30));
        double capped = Math.Min(max.TotalMilliseconds, exponential);
        double jitter = 1 + ((random ?? Random.Shared).NextDouble() * 0.2);
        return TimeSpan.FromMilliseconds(Math.Min(max.TotalMilliseconds * 1.2, capped * jitter));
    }

    #region States

    /// <summary>
    /// The first connection attempt (or, with <see cref="VhostUserDeviceOptions.WaitForBackend"/>,
    /// one attempt of the wait for a back-end; <paramref name="settleLeft"/> as for <see cref="Connecting"/>).
    /// </summary>
    private void Starting(int settleLeft = 0)
    {
        Receive<ConnectionReady>(m => HandleConnectionReady(m, recovering: false));
        Receive<Terminated>(m => HandleFirstAttemptEnded(m, settleLeft));
        Receive<SocketAppeared>(_ =>
        {
            // Only while waiting for a back-end is the socket watched: as in Connecting.
            AnnounceSocketAppeared();
            Become(() => Starting(SocketSettleAttempts));
        });
        Receive<CommandRequeued>(_ => Stash.Stash());
        Receive<IDeviceCommand>(_ => Stash.Stash());
        Receive<ReconnectNow>(_ => Sender.Tell(new ReconnectScheduled(false)));
        Common(SupervisorPhase.Starting);
    }

    /// <summary>
    /// A reconnect attempt (or a fresh start after the guest's reset, when <paramref name="recovering"/>);
    /// <paramref name="settleLeft"/>: attempts left that follow within <see cref="SocketSettleDelay"/>,
    /// since the back-end's socket appeared.
    /// </summary>
    private void Connecting(bool recovering, int settleLeft = 0)
    {
        Receive<ConnectionReady>(m => HandleConnectionReady(m, recovering));
        Receive<Terminated>(m => HandleConnectionEnded(m, wasReady: false, recovering, settleLeft));
        Receive<CommandRequeued>(_ => Stash.Stash());
        Receive<IDeviceCommand>(_ => Stash.Stash());
        Receive<ReconnectNow>(_ => Sender.Tell(new ReconnectScheduled(false)));
        Receive<SocketAppeared>(_ =>
        {
            // The socket came back while this attempt was under way (most likely being refused
            // by the stale file): should the attempt fail, the next follows at once rather than
            // at the backoff's next tick, which could be seconds away.
            AnnounceSocketAppeared();
            Become(() => Connecting(recovering, SocketSettleAttempts));
        });
        Common(SupervisorPhase.Connecting);
    }

    private void Ready()
    {
        Receive<IDeviceCommand>(m => _connection!.Forward(m));
        Receive<CommandRequeued>(HandleRequeuedWhileReady);
        Receive<ConfigRefreshed>(HandleConfigRefreshed);
        Receive<Terminated>(m => HandleConnectionEnded(m, wasReady: true, recovering: false));
        Receive<ReconnectNow>(_ => Sender.Tell(new ReconnectScheduled(false)));
        Common(SupervisorPhase.Ready);
    }

    /// <summary>The connection handed commands back: it is going down; everything waits for its Terminated.</summary>
    private void Losing()
    {
        Receive<Terminated>(m => HandleConnectionEnded(m, wasReady: true, recovering: false));
        Receive<CommandRequeued>(_ => Stash.Stash());
        Receive<IDeviceCommand>(_ => Stash.Stash());
        Receive<ConfigRefreshed>(_ => { });
        Receive<ReconnectNow>(_ => Sender.Tell(new ReconnectScheduled(false)));
        Common(SupervisorPhase.Losing);
    }

    /// <summary>
    /// Between attempts; <paramref name="recovering"/>: the device had given up and the VM was told
    /// so; <paramref name="settleLeft"/>: quick attempts left since the socket appeared.
    /// </summary>
    private void BackingOff(bool recovering, int settleLeft)
    {
        Receive<Reconnect>(_ =>
        {
            StartConnection();
            Become(() => Connecting(recovering, settleLeft));
        });
        Receive<ReconnectNow>(_ =>
        {
            // A host saw the back-end come back: no reason to sit out the rest of the backoff.
            Timers.Cancel(ReconnectTimerKey);
            Sender.Tell(new ReconnectScheduled(true));
            StartReconnect(recovering);
        });
        Receive<SocketAppeared>(_ =>
        {
            // The back-end is back: its socket was just created. No reason to wait for the tick.
            Timers.Cancel(ReconnectTimerKey);
            AnnounceSocketAppeared();
            StartConnection();
            Become(() => Connecting(recovering, SocketSettleAttempts));
        });
        Offline();
        Common(SupervisorPhase.BackingOff);
    }

    private void AwaitingDecision()
    {
        Receive<DeviceDecision>(HandleDecision);
        Receive<DecisionTimeout>(_ =>
        {
            _log.Warning("Device {0}: no decision from the VM; giving up", _options.Name);
            GiveUp(_reason ?? "an unexpected failure");
        });
        Receive<ReconnectNow>(_ => Sender.Tell(new ReconnectScheduled(false)));
        Offline();
        Common(SupervisorPhase.AwaitingDecision);
    }

    private void GaveUp()
    {
        Receive<ResetDevice>(HandleResetAfterGiveUp);
        Receive<ReconnectNow>(_ => Sender.Tell(new ReconnectScheduled(false)));
        Offline();
        Common(SupervisorPhase.GaveUp);
    }

    /// <summary>No connection: commands (and those a dead connection handed back) are served from the model.</summary>
    private void Offline()
    {
        Receive<IDeviceCommand>(m => Sender.Tell(_model.ServeOffline(m)));
        Receive<CommandRequeued>(m => Sender.Tell(_model.ServeOffline(m.Command)));
        Receive<ConfigRefreshed>(_ => { });
        Receive<Terminated>(_ => { });
    }

    /// <summary>What every state answers, and the catch-all that answers the rest.</summary>
    private void Common(SupervisorPhase phase)
    {
        Receive<GetConnectionCount>(_ => Sender.Tell(new ConnectionCount(_started, _ready)));
        Receive<GetSupervisorState>(_ => Sender.Tell(new SupervisorState(phase, _attempt, _reason)));
        Receive<DeadLetter>(HandleDeadLetter);
        Receive<Reconnect>(_ => { });
        Receive<DecisionTimeout>(_ => { });
        Receive<DeviceDecision>(_ => { });
        Receive<SocketAppeared>(_ => { }); // an attempt is under way, or there is no reason to connect
        Receive<Status>(_ => { }); // a stray answer is not answered back
        ReceiveAny(m => Sender.Tell(new Status.Failure(new NotSupportedException(
            $"vhost-user device {_options.Name} does not handle {m.GetType().Name} ({phase}).")), Self));
    }

    #endregion

    #region Transitions

    private void StartConnection()
    {
        _started++;
        _lastFailure = null;
        _connection = Context.ActorOf(VhostUserConnectionActor.Props(_options, _model, _watch!), ConnectionName);
        Context.Watch(_connection);
    }

    private void StartReconnect(bool recovering)
    {
        StartConnection();
        Become(() => Connecting(recovering));
    }

    private void HandleConnectionReady(ConnectionReady message, bool recovering)
    {
        if (!Sender.Equals(_connection))
        {
            return;
        }

        StopSocketWatch();

        // Auto-reset of the backoff: a connection that became ready counts as a success.
        int attempts = Math.Max(1, _attempt);
        bool reconnected = _ready > 0;
        _ready++;
        _attempt = 0;
        _reason = null;
        _firstReady?.TrySetResult(message.Info);
        if (recovering)
        {
            _log.Info("Device {0}: working again after the guest's reset", _options.Name);
            Context.Parent.Tell(new DeviceRecovered(_options.Name));
            Context.System.EventStream.Publish(new DeviceRecovered(_options.Name));
            _events?.RaiseConnectionRestored(attempts);
        }
        else if (reconnected)
        {
            _log.Info("Device {0}: connection restored (attempt {1})", _options.Name, attempts);
            Context.System.EventStream.Publish(new DeviceConnectionRestored(_options.Name, attempts));
            _events?.RaiseConnectionRestored(attempts);
        }

        Become(Ready);
        Stash.UnstashAll();
    }

    /// <summary>
    /// The connection is going down with commands in hand. It was ready, so the loss is a loss of a
    /// ready connection whatever arrives first: the commands wait for Terminated (which restores
    /// the model to this actor) and are then served in their order.
    /// </summary>
    private void HandleRequeuedWhileReady(CommandRequeued message)
    {
        if (message.From.Equals(_connection))
        {
            Stash.Stash();
            Become(Losing);
        }
        else
        {
            // From an older connection (a dead letter that arrived late): a command like any other.
            _connection!.Forward(message.Command);
        }
    }

    private void HandleConfigRefreshed(ConfigRefreshed message)
    {
        if (Sender.Equals(_connection))
        {
            _events?.RaiseConfigChanged();
        }
    }

    private void HandleFirstAttemptEnded(Terminated message, int settleLeft)
    {
        if (!message.ActorRef.Equals(_connection))
        {
            return;
        }

        _connection = null;
        Exception? cause = _lastFailure;
        if (_options.WaitForBackend && cause is not null && IsTransportLost(cause))
        {
            // Asked to wait for a back-end that is not up yet: keep trying, commands wait.
            int quickLeft = Math.Max(0, settleLeft - 1);
            TimeSpan delay = NextAttemptDelay(quickLeft);
            _attempt++;
            _reason = cause.Message;
            _log.Info("Device {0}: waiting for the back-end ({1}); next attempt in {2} ms", _options.Name, cause.Message.TrimEnd('.'), (int)delay.TotalMilliseconds);
            Timers.StartSingleTimer(ReconnectTimerKey, Reconnect.Instance, delay);
            StartSocketWatch();
            Become(() => WaitingForBackend(quickLeft));
            return;
        }

        // Never connected: a configuration error the caller must see, not something to wait for.
        string reason = cause?.Message ?? "the connection actor stopped";
        Stop(reason, cause);
    }

    /// <summary>Before the first connection, with WaitForBackend: as Starting, between attempts (<paramref name="settleLeft"/>: quick attempts left since the socket appeared).</summary>
    private void WaitingForBackend(int settleLeft)
    {
        Receive<Reconnect>(_ =>
        {
            StartConnection();
            Become(() => Starting(settleLeft));
        });
        Receive<ReconnectNow>(_ =>
        {
            Timers.Cancel(ReconnectTimerKey);
            Sender.Tell(new ReconnectScheduled(true));
            StartConnection();
            Become(() => Starting());
        });
        Receive<SocketAppeared>(_ =>
        {
            Timers.Cancel(ReconnectTimerKey);
            AnnounceSocketAppeared();
            StartConnection();
            Become(() => Starting(SocketSettleAttempts));
        });
        Receive<IDeviceCommand>(_ => Stash.Stash());
        Receive<CommandRequeued>(_ => Stash.Stash());
        Receive<Terminated>(_ => { });
        Common(SupervisorPhase.Starting);
    }

    private void HandleConnectionEnded(Terminated message, bool wasReady, bool recovering, int settleLeft = 0)
    {
        if (!message.ActorRef.Equals(_connection))
        {
            return;
        }

        _connection = null;
        Exception? cause = _lastFailure;
        if (cause is null)
        {
            GiveUp("the connection actor stopped");
            return;
        }

        if (IsProtocolViolation(cause))
        {
            GiveUp(cause.Message);
            return;
        }

        if (!IsTransportLost(cause))
        {
            Escalate(cause);
            return;
        }

        if (wasReady)
        {
            _events?.RaiseConnectionLost(cause.Message);
        }

        if (!_options.Reconnect)
        {
            GiveUp($"connection lost and reconnect is off: {cause.Message}");
            return;
        }

        if (wasReady && _model.Snapshot.Queues.Values.Any(q => VhostUserFrontendConnection.IsPacked(q.Features)))
        {
            // A packed ring has no used index in guest memory to resume from, and its position
            // died with the back-end: resuming from the start state could run old descriptors
            // again. Only the guest's reset (fresh rings) is safe.
            GiveUp($"connection lost while a packed ring was running; it cannot resume without a reset: {cause.Message}");
            return;
        }

        if (_options.ReconnectMax is int max && _attempt >= max)
        {
            GiveUp($"connection lost, {max} reconnect attempt(s) failed: {cause.Message}");
            return;
        }

        ScheduleReconnect(cause.Message, recovering, settleLeft - 1);
    }

    /// <param name="reason">Why the last connection or attempt ended.</param>
    /// <param name="recovering">The device had given up and the VM was told so.</param>
    /// <param name="settleLeft">Above 0: the socket appeared a moment ago, so the next attempt follows within <see cref="SocketSettleDelay"/>.</param>
    private void ScheduleReconnect(string reason, bool recovering, int settleLeft = 0)
    {
        TimeSpan delay = NextAttemptDelay(settleLeft);
        _attempt++;
        _reason = reason;
        _log.Warning("Device {0}: {1}; reconnecting in {2} ms (attempt {3})", _options.Name, reason.TrimEnd('.'), (int)delay.TotalMilliseconds, _attempt);
        Context.System.EventStream.Publish(new DeviceConnectionLost(_options.Name, reason, _attempt, delay));
        Timers.StartSingleTimer(ReconnectTimerKey, Reconnect.Instance, delay);
        StartSocketWatch();
        Become(() => BackingOff(recovering, Math.Max(0, settleLeft)));

        // Whatever waited for the failed attempt is served from the model now.
        Stash.UnstashAll();
    }

    /// <summary>
    /// The wait before the next attempt: the backoff's, or at most <see cref="SocketSettleDelay"/>
    /// while quick attempts are left since the socket appeared (<paramref name="settleLeft"/> above 0).
    /// </summary>
    private TimeSpan NextAttemptDelay(int settleLeft)
    {
        TimeSpan delay = Backoff(_attempt, _options.ReconnectMinBackoff, _options.ReconnectMaxBackoff);
        return settleLeft > 0 && delay > SocketSettleDelay ? SocketSettleDelay : delay;
    }

    /// <summary>The device needs a reset: DEVICE_NEEDS_RESET for the guest, DeviceFailed for the VM; it stays attached.</summary>
    private void GiveUp(string reason)
    {
        _reason = reason;
        Timers.CancelAll();
        StopSocketWatch();
        var failed = new DeviceFailed(_options.Name, reason);
        _log.Warning("Device {0} gave up: {1}", _options.Name, reason);
        Context.Parent.Tell(failed);
        Context.System.EventStream.Publish(failed);
        _events?.RaiseFailed(reason);
        Become(GaveUp);
        Stash.UnstashAll();
    }

    /// <summary>A failure of an unknown kind: the VM decides, the model (snapshot, inflight region) is kept meanwhile.</summary>
    private void Escalate(Exception cause)
    {
        string reason = $"{cause.GetType().Name}: {cause.Message}";
        _reason = reason;
        _log.Error(cause, "Device {0}: unexpected failure of its connection; asking the VM", _options.Name);
        Context.Parent.Tell(new DeviceEscalated(_options.Name, reason));
        Timers.StartSingleTimer(DecisionTimerKey, DecisionTimeout.Instance, _options.CommandTimeout);
        Become(AwaitingDecision);
        Stash.UnstashAll();
    }

    private void HandleDecision(DeviceDecision message)
    {
        Timers.Cancel(DecisionTimerKey);
        if (message.Policy == DeviceFailurePolicy.Reconnect)
        {
            ScheduleReconnect(_reason ?? "reconnect decided by the VM", recovering: false);
        }
        else
        {
            GiveUp(_reason ?? "given up by the VM");
        }
    }

    /// <summary>The guest reset a device that had given up: the model is cleared and a fresh attempt starts, as on attach.</summary>
    private void HandleResetAfterGiveUp(ResetDevice message)
    {
        Sender.Tell(_model.ServeOffline(message));
        _log.Info("Device {0}: reset by the guest; connecting again", _options.Name);
        _attempt = 0;
        StartReconnect(recovering: true);
    }

    /// <summary>The device ends here (it never came up): the caller of the first start hears why.</summary>
    private void Stop(string reason, Exception? cause)
    {
        StopSocketWatch();
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

    /// <summary>
    /// While no back-end is connected, the socket's directory is watched (inotify) for the socket
    /// being created again: a device then connects at once instead of at its next backoff tick
    /// (docs/reconnect.md, "Reconnect on return"). Not for a device that opens its connection some
    /// other way (<see cref="VhostUserDeviceOptions.Connect"/>).
    /// </summary>
    private void StartSocketWatch()
    {
        if (_socketWatch is not null || _options.Connect is not null)
        {
            return;
        }

        IActorRef self = Self;
        _socketWatch = SocketPathWatch.TryStart(_options.SocketPath, () => self.Tell(SocketAppeared.Instance, ActorRefs.NoSender));
    }

    private void StopSocketWatch()
    {
        _socketWatch?.Dispose();
        _socketWatch = null;
    }

    private void AnnounceSocketAppeared()
    {
        _log.Info("Device {0}: socket {1} appeared; connecting now", _options.Name, _options.SocketPath);
        Context.System.EventStream.Publish(new DeviceSocketAppeared(_options.Name, _options.SocketPath));
    }

    /// <summary>
    /// A command forwarded to a connection that had already stopped lands in dead letters: it comes
    /// back as a requeued command (with its asker), so it is served rather than left to time out.
    /// </summary>
    private void HandleDeadLetter(DeadLetter message)
    {
        if (message.Message is IDeviceCommand command &&
            message.Recipient.Path.Parent.Equals(Self.Path) && message.Recipient.Path.Name == ConnectionName)
        {
            Self.Tell(new CommandRequeued(message.Recipient, command), message.Sender);
        }
    }

    #endregion

    #region Messages

    private sealed class Reconnect
    {
        public static readonly Reconnect Instance = new();

        private Reconnect()
        {
        }
    }

    internal sealed class SocketAppeared
    {
        public static readonly SocketAppeared Instance = new();

        private SocketAppeared()
        {
        }
    }

    private sealed class DecisionTimeout
    {
        public static readonly DecisionTimeout Instance = new();

        private DecisionTimeout()
        {
        }
    }

    #endregion
}
