using System.Collections.Immutable;
using Akka.Actor;
using Akka.Event;
using Vmm.Core.Events;
using Vmm.Core.Memory;
using Vmm.Virtio.Queues;
using Vmm.VhostUser.Protocol;

namespace Vmm.VhostUser.Frontend;

/// <summary>
/// One connection to a vhost-user back-end: owns the <see cref="VhostUserFrontendConnection"/>
/// and turns device commands into vhost-user requests. States (Become, modelled on akka.net's
/// ClusterClientDiscovery): Connecting → Negotiating → Ready ⇄ Running, with Busy while a
/// command's requests are on the wire; commands that arrive before Ready, or while Busy, are
/// stashed, so they run one after another in arrival order.
/// </summary>
/// <remarks>
/// Failures are not handled here: a lost connection or a protocol violation fails the asker and
/// every stashed command, then is thrown so that <see cref="VhostUserDeviceSupervisor"/> decides
/// (reconnect, or stop the device). A request the back-end refuses with a non-zero REPLY_ACK only
/// fails its asker. After a reconnect the actor is created with the supervisor's
/// <see cref="DeviceSnapshot"/> and replays it before it accepts commands.
/// </remarks>
public sealed partial class VhostUserDeviceActor : ReceiveActor, IWithUnboundedStash, IWithTimers
{
    private readonly ILoggingAdapter _log = Context.GetLogger();
    private readonly VhostUserDeviceOptions _options;
    private readonly Dictionary<int, IActorRef> _queueActors = [];
    private readonly Dictionary<int, VirtqueueState?> _stoppedStates = [];
    private readonly CancellationTokenSource _shutdown = new();
    private DeviceSnapshot _snapshot;
    private VhostUserFrontendConnection? _connection;
    private VhostUserBackendInfo? _info;
    private byte[]? _config;
    private GuestMemory? _subscribedMemory;
    private Action<GuestMemoryChange>? _memoryHandler;
    private int _queueGeneration;

    // Whether this connection's back-end already has the inflight region (SET_INFLIGHT_FD).
    private bool _inflightSent;

    // The command whose requests are on the wire (Busy), handed back to the supervisor if the
    // connection dies under it.
    private Envelope? _current;

    public VhostUserDeviceActor(VhostUserDeviceOptions options, DeviceSnapshot snapshot)
    {
        _options = options;
        _snapshot = snapshot;
        Become(Connecting);
    }

    private const string HangUpTimerKey = "hang-up-check";

    public IStash Stash { get; set; } = null!;

    public ITimerScheduler Timers { get; set; } = null!;

    public static Props Props(VhostUserDeviceOptions options, DeviceSnapshot? snapshot = null) =>
        Akka.Actor.Props.Create(() => new VhostUserDeviceActor(options, snapshot ?? DeviceSnapshot.Empty));

    private bool IsRunning => _queueActors.Count > 0;

    #region States

    private void Connecting()
    {
        Receive<Connected>(HandleConnected);
        Receive<OperationFailed>(HandleFatal);
        ReceiveAny(_ => Stash.Stash());
    }

    private void Negotiating()
    {
        Receive<Negotiated>(HandleNegotiated);
        Receive<Replayed>(HandleReplayed);
        Receive<OperationFailed>(HandleFatal);
        ReceiveAny(_ => Stash.Stash());
    }

    private void Ready()
    {
        Commands();
    }

    private void Running()
    {
        Commands();
    }

    private void Commands()
    {
        Receive<GetDeviceInfo>(HandleGetDeviceInfo);
        Receive<StartQueue>(HandleStartQueue);
        Receive<StopQueue>(HandleStopQueue);
        Receive<ResetDevice>(HandleReset);
        Receive<ReadConfig>(HandleReadConfig);
        Receive<WriteConfig>(HandleWriteConfig);
        Receive<MemoryChanged>(HandleMemoryChanged);
        Receive<CheckHangUp>(HandleCheckHangUp);
        Receive<BackendConfigChange>(HandleBackendConfigChange);
        Receive<BackendChannelNotice>(HandleBackendChannelNotice);
        DeviceStateCommands();
    }

    private void Busy()
    {
        Receive<CommandCompleted>(HandleCompleted);
        Receive<CommandFailed>(HandleCommandFailed);
        Receive<CheckHangUp>(_ => { });
        Receive<BackendChannelNotice>(HandleBackendChannelNotice);
        ReceiveAny(_ => Stash.Stash());
    }

    private void BecomeIdle()
    {
        if (IsRunning)
        {
            Become(Running);
        }
        else
        {
            Become(Ready);
        }

        Stash.UnstashAll();
    }

    #endregion

    #region Lifecycle

    protected override void PreStart()
    {
        IActorRef self = Self;
        VhostUserDeviceOptions options = _options;
        options.OpenAsync(_shutdown.Token).PipeTo(self, success: c => new Connected(c), failure: e => new OperationFailed(e));
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
        Become(Negotiating);
        VhostUserFrontendConnection connection = _connection;

        // Subscribed before the handshake opens the back-end channel; the loop's thread only Tells.
        IActorRef self = Self;
        connection.BackendConfigChanged += () => self.Tell(BackendConfigChange.Instance, ActorRefs.Nobody);
        connection.BackendChannelNotice += notice => self.Tell(new BackendChannelNotice(notice), ActorRefs.Nobody);
        connection.HandshakeAsync(_shutdown.Token)
            .PipeTo(Self, success: info => new Negotiated(info), failure: e => new OperationFailed(e));
    }

    private void HandleNegotiated(Negotiated message)
    {
        _info = message.Info;
        _config = message.Info.Config;
        if (_snapshot.IsEmpty)
        {
            EnterReady();
            return;
        }

        // Replay (DESIGN.md, "The actor tree"): inflight region, features, memory table, rings,
        // config writes. Split rings resume at the used index the guest sees: what the old back-end
        // completed is published there, and what it had taken but not completed is in the inflight
        // region (when negotiated) for the new one to resubmit. Packed rings have no such index in
        // guest memory; they resume from the state they were started with.
        _log.Info("Replaying device state: {0} queue(s)", _snapshot.Queues.Count);
        var rings = new List<(QueueSnapshot Queue, VhostUserRingSetup Setup)>();
        foreach (QueueSnapshot queue in _snapshot.Queues.Values)
        {
            bool packed = VhostUserFrontendConnection.IsPacked(queue.Features);
            VirtqueueState state = packed
                ? queue.InitialState ?? default
                : ReadUsedIndex(queue.Resources);
            rings.Add((queue, PrepareQueue(queue.Index, queue.Resources, queue.Features, state)));
        }

        VhostUserFrontendConnection connection = _connection!;
        DeviceSnapshot snapshot = _snapshot;
        CancellationToken ct = _shutdown.Token;
        ushort inflightQueues = (ushort)Math.Max(1, CreateDeviceInfo().QueueCount);
        ushort inflightQueueSize = _options.QueueSize;
        foreach (QueueSnapshot queue in _snapshot.Queues.Values)
        {
            inflightQueueSize = Math.Max(inflightQueueSize, queue.Resources.Params.Size);
        }

        ReplayAsync(connection, snapshot, rings, inflightQueues, inflightQueueSize, ct)
            .PipeTo(Self, success: region => new Replayed(region), failure: e => new OperationFailed(e));
    }

    /// <summary>
    /// Replays the snapshot in the order of a first start; returns the inflight region it had to
    /// create (queues started while no back-end was connected), or null.
    /// </summary>
    private static async Task<VhostUserInflightRegion?> ReplayAsync(
        VhostUserFrontendConnection connection, DeviceSnapshot snapshot,
        List<(QueueSnapshot Queue, VhostUserRingSetup Setup)> rings, ushort inflightQueues, ushort inflightQueueSize,
        CancellationToken ct)
    {
        // The same inflight region, before anything else (QEMU's vhost-user-blk order): the new
        // back-end finds there what the old one had taken from the rings but not completed.
        VhostUserInflightRegion? created = null;
        if (connection.HasProtocolFeature(VhostUserProtocolFeatures.INFLIGHT_SHMFD) && (snapshot.Inflight is not null || rings.Count > 0))
        {
            VhostUserInflightRegion region = snapshot.Inflight ??
                (created = await connection.GetInflightFdAsync(inflightQueues, inflightQueueSize, ct).ConfigureAwait(false));
            try
            {
                await connection.SetInflightFdAsync(region, ct).ConfigureAwait(false);
            }
            catch
            {
                created?.Dispose();
                throw;
            }
        }

        try
        {
            await ReplayRestAsync(connection, snapshot, rings, ct).ConfigureAwait(false);
        }
        catch
        {
            created?.Dispose();
            throw;
        }

        return created;
    }

    private static async Task ReplayRestAsync(
        VhostUserFrontendConnection connection, DeviceSnapshot snapshot,
        List<(QueueSnapshot Queue, VhostUserRingSetup Setup)> rings, CancellationToken ct)
    {

        if (snapshot.GuestFeatures is ulong features)
        {
            await connection.SetFeaturesAsync(features, ct).ConfigureAwait(false);
        }

        if (snapshot.Memory is not null)
        {
            await connection.SetMemoryAsync(snapshot.Memory, ct).ConfigureAwait(false);
        }

        foreach ((_, VhostUserRingSetup setup) in rings)
        {
            await connection.StartRingAsync(setup, ct).ConfigureAwait(false);
        }

        if (connection.HasProtocolFeature(VhostUserProtocolFeatures.CONFIG))
        {
            foreach (ConfigWrite write in snapshot.ConfigWrites)
            {
                await connection.SetConfigAsync(write.Offset, write.Data, ct).ConfigureAwait(false);
            }
        }
    }

    private void HandleReplayed(Replayed message)
    {
        if (message.CreatedInflight is not null)
        {
            UpdateSnapshot(_snapshot with { Inflight = message.CreatedInflight });
        }

        _inflightSent = _snapshot.Inflight is not null &&
            _connection!.HasProtocolFeature(VhostUserProtocolFeatures.INFLIGHT_SHMFD);
        if (_snapshot.Memory is not null)
        {
            Subscribe(_snapshot.Memory);
        }

        // A kick the guest made while no back-end was connected is still counted in the kick
        // eventfd, which the new back-end was given; one more makes sure a back-end that only
        // looks at the ring when kicked looks now. A completion the old back-end published
        // without its call is made visible by one interrupt per ring (a spurious one is harmless).
        foreach (QueueSnapshot queue in _snapshot.Queues.Values)
        {
            queue.Resources.Kick.Signal();
            queue.Resources.Interrupt.Raise();
        }

        EnterReady();
    }

    private void EnterReady()
    {
        Timers.StartPeriodicTimer(HangUpTimerKey, CheckHangUp.Instance, _options.HangUpCheckInterval);
        Context.Parent.Tell(new ConnectionReady(CreateDeviceInfo()));
        BecomeIdle();
    }

    /// <summary>A failure the device cannot live with: fail every waiting asker, then let the supervisor decide.</summary>
    private void HandleFatal(OperationFailed message)
    {
        FailStash(message.Cause);
        throw Unwrap(message.Cause);
    }

    #endregion

    #region Commands

    private void HandleGetDeviceInfo(GetDeviceInfo message) => Sender.Tell(CreateDeviceInfo());

    private DeviceInfo CreateDeviceInfo()
    {
        VhostUserBackendInfo info = _info!;
        int queues = info.QueueCount is int n ? Math.Min(n, _options.Queues ?? n) : _options.Queues ?? 1;
        return new DeviceInfo(info.Features, info.ProtocolFeatures, queues, _config?.ToArray());
    }

    private void HandleStartQueue(StartQueue message)
    {
        int queueCount = CreateDeviceInfo().QueueCount;
        if (message.Index < 0 || message.Index >= queueCount)
        {
            Sender.Tell(new Status.Failure(new ArgumentOutOfRangeException(
                nameof(message), message.Index, $"The device has {queueCount} queue(s).")));
            return;
        }

        if (_queueActors.ContainsKey(message.Index))
        {
            Sender.Tell(new Status.Failure(new InvalidOperationException($"Queue {message.Index} is already running.")));
            return;
        }

        VhostUserRingSetup setup;
        try
        {
            setup = PrepareQueue(message.Index, message.Resources, message.Features, message.InitialState ?? new VirtqueueState(0, 0));
        }
        catch (Exception e) when (e is ArgumentException or GuestMemoryException)
        {
            Sender.Tell(new Status.Failure(e));
            return;
        }

        VhostUserFrontendConnection connection = _connection!;
        bool sendInflight = connection.HasProtocolFeature(VhostUserProtocolFeatures.INFLIGHT_SHMFD) && !_inflightSent;
        VhostUserInflightRegion? existingInflight = _snapshot.Inflight;
        ushort inflightQueues = (ushort)Math.Max(1, _info?.QueueCount ?? _options.Queues ?? 1);
        ushort inflightQueueSize = Math.Max(_options.QueueSize, message.Resources.Params.Size);
        bool needFeatures = _snapshot.GuestFeatures != message.Features || connection.AckedFeatures is null;
        GuestMemory memory = message.Resources.Memory;
        bool needMemory = !ReferenceEquals(_snapshot.Memory, memory);
        int index = message.Index;
        var queue = new QueueSnapshot(message.Index, message.Resources, message.Features, message.InitialState);
        RunCommand(message, async ct =>
        {
            // Inflight I/O tracking (vhost-user.rst, "Inflight I/O tracking"): the region is set
            // up once, before the first ring starts, as QEMU's vhost-user-blk does.
            VhostUserInflightRegion? inflight = null;
            try
            {
                if (sendInflight)
                {
                    inflight = existingInflight ??
                        await connection.GetInflightFdAsync(inflightQueues, inflightQueueSize, ct).ConfigureAwait(false);
                    await connection.SetInflightFdAsync(inflight, ct).ConfigureAwait(false);
                }

                if (needFeatures)
                {
                    await connection.SetFeaturesAsync(message.Features, ct).ConfigureAwait(false);
                }

                if (needMemory)
                {
                    await connection.SetMemoryAsync(memory, ct).ConfigureAwait(false);
                }

                try
                {
                    await connection.StartRingAsync(setup, ct).ConfigureAwait(false);
                }
                catch (VhostUserRequestFailedException)
                {
                    // Roll back: GET_VRING_BASE stops whatever part of the ring the back-end set up.
                    await TryStopRingAsync(connection, index, ct).ConfigureAwait(false);
                    throw;
                }
            }
            catch when (inflight is not null && !ReferenceEquals(inflight, existingInflight))
            {
                inflight.Dispose();
                throw;
            }

            return new QueueStartedResult(queue, needMemory ? memory : null, sendInflight ? inflight : null);
        }, new QueueStartFailedCleanup(index));
    }

    private void HandleStopQueue(StopQueue message)
    {
        if (!_snapshot.Queues.TryGetValue(message.Index, out QueueSnapshot? queue))
        {
            Sender.Tell(new QueueStopped(message.Index, _stoppedStates.GetValueOrDefault(message.Index)));
            return;
        }

        VhostUserFrontendConnection connection = _connection!;
        bool packed = VhostUserFrontendConnection.IsPacked(queue.Features);
        RunCommand(message, async ct =>
        {
            VirtqueueState state = await connection.StopRingAsync(queue.Index, queue.Resources.Memory, queue.Resources.Params, packed, ct)
                .ConfigureAwait(false);
            return new QueueStoppedResult(queue.Index, state);
        });
    }

    private void HandleReset(ResetDevice message)
    {
        VhostUserFrontendConnection connection = _connection!;
        QueueSnapshot[] running = [.. _snapshot.Queues.Values];
        RunCommand(message, async ct =>
        {
            if (connection.HasProtocolFeature(VhostUserProtocolFeatures.RESET_DEVICE))
            {
                await connection.ResetDeviceAsync(ct).ConfigureAwait(false);
            }
            else
            {
                foreach (QueueSnapshot queue in running)
                {
                    await connection.StopRingAsync(
                        queue.Index, queue.Resources.Memory, queue.Resources.Params,
                        VhostUserFrontendConnection.IsPacked(queue.Features), ct).ConfigureAwait(false);
                }
            }

            return new ResetResult();
        });
    }

    private void HandleReadConfig(ReadConfig message)
    {
        if (message.Offset < 0 || message.Length < 0)
        {
            Sender.Tell(new Status.Failure(new ArgumentOutOfRangeException(nameof(message), "Negative config offset or length.")));
            return;
        }

        // Served from the config cached by the handshake whenever it covers the range; otherwise
        // one GET_CONFIG for exactly the guest's access.
        if (_config is not null && message.Offset + message.Length <= _config.Length)
        {
            Sender.Tell(new ConfigData(message.Offset, _config.AsSpan(message.Offset, message.Length).ToArray()));
            return;
        }

        VhostUserFrontendConnection connection = _connection!;
        if (!connection.HasProtocolFeature(VhostUserProtocolFeatures.CONFIG))
        {
            Sender.Tell(new ConfigData(message.Offset, []));
            return;
        }

        RunCommand(message, async ct =>
        {
            byte[]? data = await connection.GetConfigAsync(message.Offset, message.Length, ct).ConfigureAwait(false);
            return new ConfigData(message.Offset, data ?? []);
        });
    }

    private void HandleWriteConfig(WriteConfig message)
    {
        VhostUserFrontendConnection connection = _connection!;
        if (!connection.HasProtocolFeature(VhostUserProtocolFeatures.CONFIG))
        {
            // Without CONFIG the back-end has no way to take the write: it is dropped, as writes to
            // read-only fields are (IVirtioDevice.WriteConfig).
            Sender.Tell(ConfigWritten.Instance);
            return;
        }

        var write = new ConfigWrite(message.Offset, message.Data.ToArray());
        RunCommand(message, async ct =>
        {
            await connection.SetConfigAsync(write.Offset, write.Data, ct).ConfigureAwait(false);
            return new ConfigWrittenResult(write);
        });
    }

    private void HandleMemoryChanged(MemoryChanged message)
    {
        if (!ReferenceEquals(message.Memory, _snapshot.Memory))
        {
            return;
        }

        // vhost-user.rst, "Memory regions": with CONFIGURE_MEM_SLOTS one ADD_MEM_REG / REM_MEM_REG per
        // change; otherwise the whole table again with SET_MEM_TABLE.
        VhostUserFrontendConnection connection = _connection!;
        GuestMemoryChange change = message.Change;
        GuestMemory memory = message.Memory;
        RunCommand(message, async ct =>
        {
            if (!connection.HasProtocolFeature(VhostUserProtocolFeatures.CONFIGURE_MEM_SLOTS))
            {
                await connection.SetMemoryTableAsync(memory, ct).ConfigureAwait(false);
            }
            else if (change.Kind == GuestMemoryChangeKind.Added)
            {
                await connection.AddMemoryRegionAsync(change.Region, ct).ConfigureAwait(false);
            }
            else
            {
                await connection.RemoveMemoryRegionAsync(change.Region, ct).ConfigureAwait(false);
            }

            return new MemoryUpdated();
        });
    }

    /// <summary>
    /// CONFIG_CHANGE_MSG from the back-end: read the config again (GET_CONFIG), then the supervisor
    /// raises <see cref="VhostUserDevice.ConfigChanged"/> and the transport interrupts the guest.
    /// </summary>
    private void HandleBackendConfigChange(BackendConfigChange message)
    {
        VhostUserFrontendConnection connection = _connection!;
        int size = _config?.Length ?? _options.EffectiveConfigSize;
        if (!connection.HasProtocolFeature(VhostUserProtocolFeatures.CONFIG) || size <= 0)
        {
            Context.Parent.Tell(new ConfigRefreshed(null));
            return;
        }

        RunCommand(message, async ct =>
        {
            byte[]? data = await connection.GetConfigAsync(0, size, ct).ConfigureAwait(false);
            return new ConfigRefreshedResult(data);
        });
    }

    private void HandleBackendChannelNotice(BackendChannelNotice message) =>
        _log.Warning("vhost-user back-end channel: {0}", message.Text);

    private void HandleCheckHangUp(CheckHangUp message)
    {
        // Nothing else would notice a back-end that dies while the device is idle.
        if (_connection!.PollHangUp())
        {
            var lost = new VhostUserConnectionLostException("The vhost-user back-end closed the connection.");
            FailStash(lost);
            throw lost;
        }
    }

    #endregion

    #region Completion

    /// <summary>Runs a command's requests off the mailbox; the actor is Busy until they end.</summary>
    private void RunCommand(object command, Func<CancellationToken, Task<object>> work, object? cleanupOnFailure = null)
    {
        IActorRef sender = Sender;
        _current = new Envelope(command, sender);
        CancellationToken ct = _shutdown.Token;
        Become(Busy);
        Task.Run(() => work(ct), ct).PipeTo(
            Self,
            success: result => new CommandCompleted(sender, result),
            failure: e => new CommandFailed(sender, e, cleanupOnFailure));
    }

    private void HandleCompleted(CommandCompleted message)
    {
        _current = null;
        object reply = message.Result;
        switch (message.Result)
        {
            case QueueStartedResult started:
                if (started.MemoryExported is not null)
                {
                    Subscribe(started.MemoryExported);
                }

                _stoppedStates.Remove(started.Queue.Index);
                if (started.Inflight is not null)
                {
                    _inflightSent = true;
                }

                UpdateSnapshot(_snapshot with
                {
                    Inflight = started.Inflight ?? _snapshot.Inflight,
                    GuestFeatures = started.Queue.Features,
                    Memory = started.Queue.Resources.Memory,
                    Queues = _snapshot.Queues.SetItem(started.Queue.Index, started.Queue),
                });
                reply = new QueueStarted(started.Queue.Index);
                break;

            case QueueStoppedResult stopped:
                StopQueueActor(stopped.Index);
                _stoppedStates[stopped.Index] = stopped.State;
                UpdateSnapshot(_snapshot with { Queues = _snapshot.Queues.Remove(stopped.Index) });
                reply = new QueueStopped(stopped.Index, stopped.State);
                break;

            case ResetResult:
                foreach (int index in _queueActors.Keys.ToArray())
                {
                    StopQueueActor(index);
                }

                _stoppedStates.Clear();
                _config = _info?.Config;

                // A reset back-end may have dropped its memory table: without CONFIGURE_MEM_SLOTS the
                // next start sends the whole table again, as QEMU's vhost_dev_start does. With it,
                // re-adding would duplicate the regions the back-end kept.
                VhostUserInflightRegion? oldInflight = _snapshot.Inflight;
                bool resendMemory = _connection is not null &&
                    !_connection.HasProtocolFeature(VhostUserProtocolFeatures.CONFIGURE_MEM_SLOTS);
                UpdateSnapshot(_snapshot with
                {
                    Memory = resendMemory ? null : _snapshot.Memory,

                    // A reset device starts with a fresh inflight region (QEMU frees it on reset).
                    Inflight = null,
                    GuestFeatures = null,
                    Queues = ImmutableSortedDictionary<int, QueueSnapshot>.Empty,
                    ConfigWrites = [],
                });
                oldInflight?.Dispose();
                _inflightSent = false;
                reply = DeviceReset.Instance;
                break;

            case ConfigRefreshedResult refreshed:
                if (refreshed.Config is not null)
                {
                    _config = refreshed.Config;
                    _info = _info! with { Config = refreshed.Config.ToArray() };
                }

                Context.Parent.Tell(new ConfigRefreshed(refreshed.Config?.ToArray()));
                break;

            case ConfigWrittenResult written:
                PatchConfig(written.Write);
                UpdateSnapshot(_snapshot with { ConfigWrites = _snapshot.ConfigWrites.Add(written.Write) });
                reply = ConfigWritten.Instance;
                break;

        }

        if (!message.ReplyTo.IsNobody())
        {
            message.ReplyTo.Tell(reply);
        }

        BecomeIdle();
    }

    private void HandleCommandFailed(CommandFailed message)
    {
        Exception cause = Unwrap(message.Cause);
        Envelope? current = _current;
        _current = null;
        if (message.Cleanup is QueueStartFailedCleanup cleanup)
        {
            StopQueueActor(cleanup.Index);
        }

        if (cause is VhostUserRequestFailedException or InvalidOperationException or ArgumentException or GuestMemoryException &&
            _connection is { IsDead: false })
        {
            // The back-end refused one request (or it was invalid): the connection is intact.
            _log.Warning("vhost-user request failed: {0}", cause.Message);
            Reply(message.ReplyTo, new Status.Failure(cause));
            BecomeIdle();
            return;
        }

        if (VhostUserDeviceSupervisor.IsTransportLost(cause) && current is Envelope command &&
            command.Message is not (MemoryChanged or BackendConfigChange))
        {
            // The back-end is gone, not wrong: the command is not failed but handed back, to be
            // served from the snapshot and replayed by the next connection.
            Context.Parent.Tell(new CommandRequeued(Self, command.Message), command.Sender);
        }
        else
        {
            Reply(message.ReplyTo, new Status.Failure(cause));
        }

        FailStash(cause);
        throw cause;
    }

    private static void Reply(IActorRef replyTo, object reply)
    {
        if (!replyTo.IsNobody())
        {
            replyTo.Tell(reply);
        }
    }

    #endregion

    #region Helpers

    /// <summary>Creates the queue's actor (which owns a proxy call eventfd when one is needed) and its ring setup.</summary>
    private VhostUserRingSetup PrepareQueue(int index, VirtqueueResources resources, ulong features, VirtqueueState state)
    {
        bool packed = VhostUserFrontendConnection.IsPacked(features);
        (ulong descriptor, ulong driver, ulong device) =
            VhostUserFrontendConnection.TranslateRing(resources.Memory, resources.Params, packed);
        EventFd call = VirtqueueActor.CallEventFdFor(resources.Interrupt, out EventFd? proxy);
        IActorRef actor;
        try
        {
            // A queue restarted right after a stop may find its old actor still stopping (Stop is
            // asynchronous), so the name then gets a generation suffix.
            string name = $"queue-{index}";
            if (!Context.Child(name).IsNobody())
            {
                name = $"queue-{index}-g{++_queueGeneration}";
            }

            actor = Context.ActorOf(VirtqueueActor.Props(index, resources, proxy), name);
        }
        catch
        {
            proxy?.Dispose();
            throw;
        }

        _queueActors[index] = actor;
        return new VhostUserRingSetup(
            index, resources.Params.Size, descriptor, driver, device,
            VhostUserFrontendConnection.EncodeBase(state, packed), resources.Kick.Handle, call.Handle);
    }

    private static VirtqueueState ReadUsedIndex(VirtqueueResources resources)
    {
        ushort used = resources.Memory.ReadUInt16Acquire(resources.Params.DeviceArea + 2);
        return new VirtqueueState(used, used);
    }

    private static async Task TryStopRingAsync(VhostUserFrontendConnection connection, int index, CancellationToken ct)
    {
        try
        {
            await connection.StopRingAsync(index, cancellationToken: ct).ConfigureAwait(false);
        }
        catch (VhostUserRequestFailedException)
        {
            // Nothing more to undo: the back-end refused the stop as well.
        }
    }

    private void StopQueueActor(int index)
    {
        if (_queueActors.Remove(index, out IActorRef? actor))
        {
            Context.Stop(actor);
        }
    }

    private void PatchConfig(ConfigWrite write)
    {
        if (_config is null || write.Offset + write.Data.Length > _config.Length)
        {
            return;
        }

        byte[] copy = _config.ToArray();
        write.Data.CopyTo(copy, write.Offset);
        _config = copy;
    }

    private void UpdateSnapshot(DeviceSnapshot snapshot)
    {
        _snapshot = snapshot;
        Context.Parent.Tell(new SnapshotUpdated(snapshot));
    }

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
    /// else its asker is failed with the cause.
    /// </summary>
    private void FailStash(Exception cause)
    {
        bool requeue = VhostUserDeviceSupervisor.IsTransportLost(Unwrap(cause));
        foreach (Envelope envelope in Stash.ClearStash())
        {
            if (envelope.Message is MemoryChanged or CheckHangUp or BackendConfigChange or BackendChannelNotice)
            {
                continue;
            }

            if (requeue)
            {
                Context.Parent.Tell(new CommandRequeued(Self, envelope.Message), envelope.Sender);
            }
            else if (!envelope.Sender.IsNobody())
            {
                envelope.Sender.Tell(new Status.Failure(cause));
            }
        }
    }

    private static Exception Unwrap(Exception e) =>
        e is AggregateException { InnerExceptions.Count: 1 } aggregate ? Unwrap(aggregate.InnerExceptions[0]) : e;

    #endregion

    #region Messages

    private sealed record Connected(VhostUserFrontendConnection Connection);

    private sealed record Negotiated(VhostUserBackendInfo Info);

    private sealed record Replayed(VhostUserInflightRegion? CreatedInflight);

    private sealed record OperationFailed(Exception Cause);

    private sealed record CommandCompleted(IActorRef ReplyTo, object Result);

    private sealed record CommandFailed(IActorRef ReplyTo, Exception Cause, object? Cleanup);

    private sealed record MemoryChanged(GuestMemory Memory, GuestMemoryChange Change);

    private sealed record QueueStartedResult(QueueSnapshot Queue, GuestMemory? MemoryExported, VhostUserInflightRegion? Inflight);

    private sealed record QueueStartFailedCleanup(int Index);

    private sealed record QueueStoppedResult(int Index, VirtqueueState State);

    private sealed record ResetResult;

    private sealed record ConfigWrittenResult(ConfigWrite Write);

    private sealed record MemoryUpdated;

    private sealed record ConfigRefreshedResult(byte[]? Config);

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
