using System.Diagnostics;
using Akka.Actor;
using Akka.Event;
using Vmm.Core.Memory;
using Vmm.Virtio.Metrics;
using Vmm.VhostUser.Metrics;
using Vmm.VhostUser.Protocol;

namespace Vmm.VhostUser.Frontend;

/// <summary>
/// One connection to a vhost-user back-end, child of the device's <see cref="VhostUserDeviceSupervisor"/>:
/// it owns the <see cref="VhostUserFrontendConnection"/> (the socket) and turns device commands
/// into vhost-user requests. Become states, modelled on akka.net's ClusterClientDiscovery:
/// Connecting → Negotiating → Replaying (when there is state to replay) → Ready ⇄ Busy (a
/// command's requests are on the wire). Commands that arrive before Ready or while Busy are
/// stashed and run one after another in arrival order; every state answers every message.
/// </summary>
/// <remarks>
/// <para>
/// The device's state is the <see cref="VhostUserDeviceModel"/> the supervisor lent it: this actor
/// plans its requests with it (one bring-up plan for a queue's first start and for the replay,
/// <see cref="VhostUserBringUp"/>) and applies each result to it, on its own thread. Requests run
/// off the mailbox; each result comes back as its own typed message.
/// </para>
/// <para>
/// Failures are decided by the supervisor: a lost connection hands every unfinished command back
/// to it (<see cref="CommandRequeued"/>, with its asker) and then is thrown; a protocol violation or
/// an incompatible back-end fails the askers and is thrown. A request the back-end refuses with a
/// non-zero REPLY_ACK only fails its asker.
/// </para>
/// </remarks>
public sealed partial class VhostUserConnectionActor : ReceiveActor, IWithUnboundedStash, IWithTimers
{
    private const string HangUpTimerKey = "hang-up-check";

    private readonly ILoggingAdapter _log = Context.GetLogger();
    private readonly VhostUserDeviceOptions _options;
    private readonly VhostUserDeviceModel _model;
    private readonly WatchCallNotifier _watch;
    private readonly Dictionary<int, IActorRef> _queueActors = [];
    private readonly CancellationTokenSource _shutdown = new();
    private VhostUserFrontendConnection? _connection;
    private GuestMemory? _subscribedMemory;
    private Action<GuestMemoryChange>? _memoryHandler;
    private int _queueGeneration;

    // Metrics: when the socket connected, and whether the device had a connection before this one.
    private long _connectedAt;
    private bool _reconnect;

    // Whether this connection's back-end already has the inflight region (SET_INFLIGHT_FD).
    private bool _inflightSent;

    // The command whose requests are on the wire (Busy), handed back to the supervisor if the
    // connection dies under it.
    private Envelope? _current;

    public VhostUserConnectionActor(VhostUserDeviceOptions options, VhostUserDeviceModel model, WatchCallNotifier watch)
    {
        _options = options;
        _model = model;
        _watch = watch;
        Become(Connecting);
    }

    public IStash Stash { get; set; } = null!;

    public ITimerScheduler Timers { get; set; } = null!;

    /// <summary>
    /// Props for one connection of a device. <paramref name="model"/> is lent by the supervisor
    /// until this actor terminates; <paramref name="watch"/> watches the proxy call notifiers.
    /// </summary>
    public static Props Props(VhostUserDeviceOptions options, VhostUserDeviceModel model, WatchCallNotifier watch) =>
        Akka.Actor.Props.Create(() => new VhostUserConnectionActor(options, model, watch));

    private VhostUserFrontendConnection Connection => _connection ?? throw new InvalidOperationException("Not connected yet.");

    #region States

    private void Connecting()
    {
        Receive<Connected>(HandleConnected);
        Receive<OperationFailed>(HandleFatal);
        NotReady(ConnectionPhase.Connecting);
    }

    private void Negotiating()
    {
        Receive<Negotiated>(HandleNegotiated);
        Receive<OperationFailed>(HandleFatal);
        NotReady(ConnectionPhase.Negotiating);
    }

    private void Replaying()
    {
        Receive<Replayed>(HandleReplayed);
        Receive<OperationFailed>(HandleFatal);
        NotReady(ConnectionPhase.Replaying);
    }

    private void Ready()
    {
        Commands();
        Receive<MemoryChanged>(HandleMemoryChanged);
        Receive<CheckHangUp>(HandleCheckHangUp);
        Receive<BackendConfigChange>(HandleBackendConfigChange);
        Receive<BackendChannelNotice>(HandleBackendChannelNotice);
        Receive<GetConnectionPhase>(_ => Sender.Tell(new ConnectionPhaseReply(ConnectionPhase.Ready)));
        ReceiveAny(Unsupported);
    }

    private void Busy()
    {
        Results();
        Receive<CommandFailed>(HandleCommandFailed);
        Receive<CheckHangUp>(_ => { });
        Receive<BackendChannelNotice>(HandleBackendChannelNotice);
        Receive<GetConnectionPhase>(_ => Sender.Tell(new ConnectionPhaseReply(ConnectionPhase.Busy)));
        Receive<IDeviceCommand>(_ => Stash.Stash());
        Receive<MemoryChanged>(_ => Stash.Stash());
        Receive<BackendConfigChange>(_ => Stash.Stash());
        ReceiveAny(Unsupported);
    }

    /// <summary>Before Ready: commands wait in the stash; queries are answered.</summary>
    private void NotReady(ConnectionPhase phase)
    {
        Receive<GetConnectionPhase>(_ => Sender.Tell(new ConnectionPhaseReply(phase)));
        Receive<IDeviceCommand>(_ => Stash.Stash());
        Receive<CheckHangUp>(_ => { });
        Receive<BackendChannelNotice>(HandleBackendChannelNotice);
        Receive<BackendConfigChange>(_ => Stash.Stash());
        ReceiveAny(Unsupported);
    }

    private void BecomeIdle()
    {
        Become(Ready);
        Stash.UnstashAll();
    }

    /// <summary>
    /// A message no state of this actor handles: answered, so no asker waits for a timeout.
    /// A stray answer (a Status) is not answered back, or two such actors would answer each other forever.
    /// </summary>
    private void Unsupported(object message)
    {
        if (message is not Status)
        {
            Sender.Tell(new Status.Failure(new NotSupportedException($"The vhost-user connection of {_options.Name} does not handle {message.GetType().Name}.")));
        }
    }

    #endregion

    #region Lifecycle

    protected override void PreStart()
    {
        IActorRef self = Self;
        _options.OpenAsync(_shutdown.Token).PipeTo(self, success: c => new Connected(c), failure: e => new OperationFailed(e));
    }

    protected override void PostStop()
    {
        _shutdown.Cancel();
        Unsubscribe();
        _connection?.Dispose();
        _shutdown.Dispose();
    }

    private void HandleConnected(Connected message)
    {
        _connection = message.Connection;
        _connectedAt = Stopwatch.GetTimestamp();
        Become(Negotiating);
        VhostUserFrontendConnection connection = _connection;

        // Subscribed before the handshake opens the back-end channel; the channel's task only Tells.
        IActorRef self = Self;
        connection.BackendConfigChanged += () => self.Tell(BackendConfigChange.Instance, ActorRefs.Nobody);
        connection.BackendChannelNotice += notice => self.Tell(new BackendChannelNotice(notice), ActorRefs.Nobody);
        connection.HandshakeAsync(_shutdown.Token)
            .PipeTo(self, success: info => new Negotiated(info), failure: e => new OperationFailed(e));
    }

    private void HandleNegotiated(Negotiated message)
    {
        // A back-end that cannot take over what the guest was promised would break it in ways
        // it cannot see: the device gives up instead (the guest's reset starts afresh).
        if (!_model.Snapshot.IsEmpty && _model.CheckCompatibility(message.Info) is { } reason)
        {
            var incompatible = new VhostUserIncompatibleBackendException($"Cannot resume {_options.Name}: {reason}.");
            FailStash(incompatible);
            throw incompatible;
        }

        _reconnect = _model.Info is not null;
        _model.Connected(message.Info);
        if (_model.Snapshot.IsEmpty)
        {
            EnterReady();
            return;
        }

        _log.Info("Replaying device state: {0} queue(s)", _model.Snapshot.Queues.Count);
        Become(Replaying);
        VhostUserFrontendConnection connection = Connection;
        BringUpPlan plan = _model.PlanReplay(connection);
        IReadOnlyList<VirtqueueCallRouter> routers = CreateQueues(plan);
        VhostUserBringUp.ExecuteAsync(connection, plan, routers, _shutdown.Token)
            .PipeTo(Self, success: result => new Replayed(result), failure: e => new OperationFailed(e));
    }

    private void HandleReplayed(Replayed message)
    {
        _model.Replayed(message.Result);
        _inflightSent = _model.Snapshot.Inflight is not null && Connection.HasProtocolFeature(VhostUserProtocolFeatures.INFLIGHT_SHMFD);
        if (_model.Snapshot.Memory is not null)
        {
            Subscribe(_model.Snapshot.Memory);
        }

        // A kick the guest made while no back-end was connected is still counted in the kick
        // eventfd, which the new back-end was given; one more makes sure a back-end that only
        // looks at the ring when kicked looks now. A completion the old back-end published
        // without its call is made visible by one interrupt per ring (a spurious one is harmless).
        foreach (QueueSnapshot queue in _model.Snapshot.Queues.Values)
        {
            queue.Resources.Kick.Signal();
            queue.Resources.Interrupt.Raise();
        }

        EnterReady();
    }

    private void EnterReady()
    {
        FrontendMetrics.Ready(_options.Name, _connectedAt, _reconnect);
        Timers.StartPeriodicTimer(HangUpTimerKey, CheckHangUp.Instance, _options.HangUpCheckInterval);
        Context.Parent.Tell(new ConnectionReady(_model.Info!));
        BecomeIdle();
    }

    /// <summary>A failure the connection cannot live with: every waiting command goes back or fails, then the supervisor decides.</summary>
    private void HandleFatal(OperationFailed message)
    {
        Exception cause = Unwrap(message.Cause);
        FailStash(cause);
        throw cause;
    }

    private void HandleCheckHangUp(CheckHangUp message)
    {
        // Nothing else would notice a back-end that dies while the device is idle.
        if (Connection.PollHangUp())
        {
            var lost = new VhostUserConnectionLostException("The vhost-user back-end closed the connection.");
            FailStash(lost);
            throw lost;
        }
    }

    #endregion

    #region Queues

    /// <summary>
    /// One <see cref="VirtqueueActor"/> per planned ring, each with the router that will send the
    /// ring's SET_VRING_CALL and follow its line from then on.
    /// </summary>
    private List<VirtqueueCallRouter> CreateQueues(BringUpPlan plan)
    {
        var routers = new List<VirtqueueCallRouter>(plan.Rings.Count);
        foreach (RingPlan ring in plan.Rings)
        {
            int index = ring.Queue.Index;
            string queueName = $"{_options.Name}/{index}";
            ILoggingAdapter log = _log;
            var router = new VirtqueueCallRouter(
                index, ring.Queue.Resources.Interrupt, _watch, _options.RequestTimeout, text => log.Warning("{0}: {1}", queueName, text), VmmMeters.FrontendQueues.Get(_options.Name, index));
            try
            {
                // A queue restarted right after a stop may find its old actor still stopping (Stop is
                // asynchronous), so the name then gets a generation suffix.
                string name = $"queue-{index}";
                if (!Context.Child(name).IsNobody())
                {
                    name = $"queue-{index}-g{++_queueGeneration}";
                }

                _queueActors[index] = Context.ActorOf(VirtqueueActor.Props(router), name);
            }
            catch
            {
                router.Dispose();
                throw;
            }

            routers.Add(router);
        }

        return routers;
    }

    private void StopQueueActor(int index)
    {
        if (_queueActors.Remove(index, out IActorRef? actor))
        {
            Context.Stop(actor);
        }
    }

    private void StopQueueActors()
    {
        foreach (int index in _queueActors.Keys.ToArray())
        {
            StopQueueActor(index);
        }
    }

    #endregion

    #region Helpers

    private void Subscribe(GuestMemory memory)
    {
        if (ReferenceEquals(_subscribedMemory, memory))
        {
            return;
        }

        Unsubscribe();
        IActorRef self = Self;
        _memoryHandler = change => self.Tell(new MemoryChanged(memory, change));
        memory.Changed += _memoryHandler;
        _subscribedMemory = memory;
    }

    private void Unsubscribe()
    {
        if (_subscribedMemory is not null && _memoryHandler is not null)
        {
            _subscribedMemory.Changed -= _memoryHandler;
        }

        _subscribedMemory = null;
        _memoryHandler = null;
    }

    /// <summary>
    /// Empties the stash on the way down: after a transport loss every command goes back to the
    /// supervisor (in order, with its asker) to be served without this connection; after anything
    /// else its asker is failed with the cause. Notices of this connection are dropped.
    /// </summary>
    private void FailStash(Exception cause)
    {
        bool requeue = VhostUserDeviceSupervisor.IsTransportLost(cause);
        foreach (Envelope envelope in Stash.ClearStash())
        {
            if (envelope.Message is not IDeviceCommand command)
            {
                continue;
            }

            if (requeue)
            {
                Context.Parent.Tell(new CommandRequeued(Self, command), envelope.Sender);
            }
            else if (!envelope.Sender.IsNobody())
            {
                envelope.Sender.Tell(new Status.Failure(cause));
            }
        }
    }

    private static void Reply(IActorRef replyTo, object reply)
    {
        if (!replyTo.IsNobody())
        {
            replyTo.Tell(reply);
        }
    }

    private static Exception Unwrap(Exception e) =>
        e is AggregateException { InnerExceptions.Count: 1 } aggregate ? Unwrap(aggregate.InnerExceptions[0]) : e;

    #endregion

    #region Messages

    private sealed record Connected(VhostUserFrontendConnection Connection);

    private sealed record Negotiated(VhostUserBackendInfo Info);

    private sealed record Replayed(BringUpResult Result);

    private sealed record OperationFailed(Exception Cause);

    private sealed record MemoryChanged(GuestMemory Memory, GuestMemoryChange Change);

    private sealed record BackendChannelNotice(string Text);

    private sealed class BackendConfigChange
    {
        public static readonly BackendConfigChange Instance = new();

        private BackendConfigChange()
        {
        }
    }

    private sealed class CheckHangUp
    {
        public static readonly CheckHangUp Instance = new();

        private CheckHangUp()
        {
        }
    }

    #endregion
}
