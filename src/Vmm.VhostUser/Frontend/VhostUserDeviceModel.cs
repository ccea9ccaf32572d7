using Akka.Actor;
using Vmm.Core.Memory;
using Vmm.Core.Posix;
using Vmm.Virtio.Queues;
using Vmm.VhostUser.Protocol;

namespace Vmm.VhostUser.Frontend;

/// <summary>
/// The one owner of a vhost-user device's state: the <see cref="DeviceSnapshot"/> (what the
/// device was told), what the last handshake found (<see cref="Info"/>), and the rules for
/// every command. A plain object, not an actor: the device's supervisor holds it while no
/// connection is alive and serves commands from it (<see cref="ServeOffline"/>); it lends it to
/// each connection actor it creates (through its Props), which plans its requests with it and
/// applies their results; the supervisor takes it back when that actor has terminated. At any
/// moment exactly one actor uses it, and Akka's Terminated orders the hand-back.
/// </summary>
public sealed partial class VhostUserDeviceModel : IDisposable
{
    /// <summary>Where a ring starts that was given no state: index 0, wrap counters set (virtio 1.2, 2.8.1).</summary>
    private static readonly VirtqueueState FreshRing = new(0, 0);

    private readonly VhostUserDeviceOptions _options;
    private DeviceInfo? _info;
    private byte[]? _backendConfig;

    public VhostUserDeviceModel(VhostUserDeviceOptions options)
    {
        _options = options ?? throw new ArgumentNullException(nameof(options));
        Snapshot = DeviceSnapshot.Empty with { Config = options.InitialConfig(options.EffectiveConfigSize) };
    }

    public VhostUserDeviceOptions Options => _options;

    /// <summary>The current state to replay.</summary>
    public DeviceSnapshot Snapshot { get; private set; }

    /// <summary>What the last handshake found, with the current config image; null before the first one.</summary>
    public DeviceInfo? Info => _info is null ? null : _info with { Config = _backendConfig is null ? null : Snapshot.Config.ToArray() };

    /// <summary>The queue count the guest may use: the back-end's (GET_QUEUE_NUM), capped by the options.</summary>
    public int QueueCount => Info?.QueueCount ?? _options.Queues ?? 1;

    // --- A connection's handshake and replay ---------------------------------------------------

    /// <summary>
    /// Why <paramref name="backend"/> cannot take over this device's state, in one sentence; null
    /// when it can. A new back-end must offer every virtio feature the guest negotiated (the guest
    /// will not renegotiate), the protocol features the state needs (INFLIGHT_SHMFD for an
    /// inflight region, CONFIG for config writes, STATUS never: it is only informative) and the
    /// queues that are running.
    /// </summary>
    public string? CheckCompatibility(VhostUserBackendInfo backend)
    {
        ArgumentNullException.ThrowIfNull(backend);
        DeviceSnapshot s = Snapshot;
        if (s.GuestFeatures is ulong guest)
        {
            ulong missing = guest & ~VhostUserVirtioFeatures.TransportMask & ~Virtio.Spec.VirtioFeatures.VERSION_1 & ~backend.Features;
            if (missing != 0)
            {
                return $"the new back-end no longer offers negotiated feature bit(s) 0x{missing:x} ({DescribeBits(missing)})";
            }
        }

        if (s.Inflight is not null && (backend.ProtocolFeatures & VhostUserProtocolFeatures.INFLIGHT_SHMFD) == 0)
        {
            return "the new back-end does not offer INFLIGHT_SHMFD, so it cannot take over the requests that were in flight";
        }

        if (!s.Config.Written.IsEmpty && (backend.ProtocolFeatures & VhostUserProtocolFeatures.CONFIG) == 0)
        {
            return "the new back-end does not offer CONFIG, so the guest's config writes cannot be given to it";
        }

        if (s.DirtyLog is not null && !VhostUserFrontendConnection.SupportsLogging(backend.Features, backend.ProtocolFeatures))
        {
            return "dirty pages are being logged and the new back-end cannot log them (no VHOST_F_LOG_ALL or no LOG_SHMFD)";
        }

        int queues = backend.QueueCount ?? 1;
        if (!s.Queues.IsEmpty && s.Queues.Keys.Max() >= queues)
        {
            return $"the new back-end has {queues} queue(s) but queue {s.Queues.Keys.Max()} is running";
        }

        return null;
    }

    /// <summary>A handshake completed: its result becomes <see cref="Info"/>, its config the base of the image.</summary>
    public void Connected(VhostUserBackendInfo backend)
    {
        ArgumentNullException.ThrowIfNull(backend);
        int queues = backend.QueueCount is int n ? Math.Min(n, _options.Queues ?? n) : _options.Queues ?? 1;
        _backendConfig = backend.Config?.ToArray();
        if (_backendConfig is not null)
        {
            Snapshot = Snapshot with { Config = Snapshot.Config.Rebase(_backendConfig) };
        }

        _info = new DeviceInfo(backend.Features, backend.ProtocolFeatures, queues, null);
    }

    /// <summary>
    /// The bring-up a new connection replays: the inflight region, features, memory, every running
    /// ring, the guest's config writes and its status. Split rings resume at the used index in
    /// guest memory (what the old back-end completed is published there; what it had taken but not
    /// completed is in the inflight region for the new one to resubmit). Packed rings have no such
    /// index in guest memory: they resume from the state they were started with.
    /// </summary>
    public BringUpPlan PlanReplay(VhostUserFrontendConnection connection)
    {
        ArgumentNullException.ThrowIfNull(connection);
        DeviceSnapshot s = Snapshot;
        var rings = new List<RingPlan>();
        ushort largest = _options.QueueSize;
        foreach (QueueSnapshot queue in s.Queues.Values)
        {
            bool packed = VhostUserFrontendConnection.IsPacked(queue.Features);
            VirtqueueState state = packed ? queue.InitialState ?? FreshRing : UsedIndexInGuestMemory(queue.Resources);
            rings.Add(PlanRing(queue, state));
            largest = Math.Max(largest, queue.Resources.Params.Size);
        }

        InflightPlan? inflight = connection.HasProtocolFeature(VhostUserProtocolFeatures.INFLIGHT_SHMFD) && (s.Inflight is not null || rings.Count > 0)
            ? new InflightPlan(s.Inflight, InflightQueues, largest)
            : null;
        IReadOnlyList<ConfigWrite> config = connection.HasProtocolFeature(VhostUserProtocolFeatures.CONFIG) ? s.Config.Written : [];
        byte? status = connection.HasProtocolFeature(VhostUserProtocolFeatures.STATUS) && s.DriverStatus != 0 ? s.DriverStatus : null;
        return new BringUpPlan(inflight, s.GuestFeatures, s.Memory, rings, config, status, RollBackRefusedRing: false);
    }

    /// <summary>The replay completed: a region it had to create belongs to the snapshot now.</summary>
    public void Replayed(BringUpResult result)
    {
        ArgumentNullException.ThrowIfNull(result);
        if (result.CreatedInflight is not null)
        {
            Snapshot = Snapshot with { Inflight = result.CreatedInflight };
        }
    }

    // --- Commands while connected -------------------------------------------------------------

    /// <summary>Why <paramref name="start"/> cannot run, or null: the index must exist and the queue not be running.</summary>
    public Exception? ValidateStart(StartQueue start)
    {
        ArgumentNullException.ThrowIfNull(start);
        int queues = QueueCount;
        if (start.Index < 0 || start.Index >= queues)
        {
            return new ArgumentOutOfRangeException(nameof(start), start.Index, $"The device has {queues} queue(s).");
        }

        return Snapshot.Queues.ContainsKey(start.Index) ? new InvalidOperationException($"Queue {start.Index} is already running.") : null;
    }

    /// <summary>
    /// The first start of one queue on <paramref name="connection"/>: the inflight region unless
    /// this connection's back-end has it (QEMU's vhost-user-blk sets it up once, before the first
    /// ring), features when they changed, memory when the back-end does not have this memory yet.
    /// Throws <see cref="ArgumentException"/> or <see cref="GuestMemoryException"/> for a ring
    /// outside guest memory, <see cref="InvalidOperationException"/> for features the back-end
    /// does not offer.
    /// </summary>
    public BringUpPlan PlanStart(StartQueue start, VhostUserFrontendConnection connection, bool inflightSent)
    {
        ArgumentNullException.ThrowIfNull(start);
        ArgumentNullException.ThrowIfNull(connection);
        ulong unsupported = start.Features & ~VhostUserVirtioFeatures.TransportMask & ~Virtio.Spec.VirtioFeatures.VERSION_1 & ~connection.BackendFeatures;
        if (unsupported != 0)
        {
            // The guest negotiated against an offer this back-end does not make (a device that
            // reconnected to a different back-end): it must reset and negotiate again.
            throw new InvalidOperationException(
                $"The guest accepted feature bit(s) 0x{unsupported:x} ({DescribeBits(unsupported)}) that the back-end does not offer.");
        }

        DeviceSnapshot s = Snapshot;
        var queue = new QueueSnapshot(start.Index, start.Resources, start.Features, start.InitialState);
        RingPlan ring = PlanRing(queue, start.InitialState ?? FreshRing);
        InflightPlan? inflight = connection.HasProtocolFeature(VhostUserProtocolFeatures.INFLIGHT_SHMFD) && !inflightSent
            ? new InflightPlan(s.Inflight, InflightQueues, Math.Max(_options.QueueSize, start.Resources.Params.Size))
            : null;
        ulong? features = s.GuestFeatures != start.Features || connection.AckedFeatures is null ? start.Features : null;
        GuestMemory? memory = ReferenceEquals(s.Memory, start.Resources.Memory) ? null : start.Resources.Memory;
        return new BringUpPlan(inflight, features, memory, [ring], [], null, RollBackRefusedRing: true);
    }

    /// <summary>A queue's first start completed.</summary>
    public void Started(QueueSnapshot queue, BringUpResult result)
    {
        ArgumentNullException.ThrowIfNull(queue);
        ArgumentNullException.ThrowIfNull(result);
        Snapshot = Snapshot with
        {
            Inflight = result.CreatedInflight ?? Snapshot.Inflight,
            GuestFeatures = queue.Features,
            Memory = queue.Resources.Memory,
            Queues = Snapshot.Queues.SetItem(queue.Index, queue),
        };
    }

    /// <summary>A queue stopped (on a back-end or not): the next connection does not start it.</summary>
    public void Stopped(int index) => Snapshot = Snapshot with { Queues = Snapshot.Queues.Remove(index) };

    /// <summary>
    /// The device was reset: no queues, no features, a fresh inflight region next time, the config
    /// as the back-end has it, status 0. The memory table stays when <paramref name="backendKeepsMemory"/>
    /// (with CONFIGURE_MEM_SLOTS the back-end keeps its regions and re-adding them would duplicate
    /// them); otherwise the next start sends it again, as QEMU's vhost_dev_start does.
    /// </summary>
    public void Reset(bool backendKeepsMemory)
    {
        VhostUserInflightRegion? inflight = Snapshot.Inflight;
        Snapshot = DeviceSnapshot.Empty with
        {
            Memory = backendKeepsMemory ? Snapshot.Memory : null,

            // Logging is the host's, not the guest's: a guest's reset does not end a migration.
            DirtyLog = Snapshot.DirtyLog,
            Config = _backendConfig is not null ? ConfigImage.FromBackend(_backendConfig) : _options.InitialConfig(Snapshot.Config.Length),
        };

        // A reset device starts with a fresh inflight region (QEMU frees it on reset).
        inflight?.Dispose();
    }

    /// <summary>The guest wrote config bytes (sent with SET_CONFIG when connected, replayed otherwise).</summary>
    public void ConfigWritten(int offset, ReadOnlySpan<byte> data) =>
        Snapshot = Snapshot with { Config = Snapshot.Config.Write(offset, data) };

    /// <summary>The back-end announced a config change and was asked again (GET_CONFIG).</summary>
    public void ConfigRefreshed(ReadOnlySpan<byte> config)
    {
        _backendConfig = config.ToArray();
        Snapshot = Snapshot with { Config = Snapshot.Config.Refresh(config) };
    }

    /// <summary>The driver's status changed; true when a connected back-end must hear it (it differs from the last one).</summary>
    public bool StatusChanged(byte status)
    {
        if (Snapshot.DriverStatus == status)
        {
            return false;
        }

        Snapshot = Snapshot with { DriverStatus = status };
        return true;
    }

    /// <summary>Config bytes from the image; null when the image does not cover the range and the back-end has CONFIG (ask it).</summary>
    public ConfigData? TryReadConfig(ReadConfig read)
    {
        ArgumentNullException.ThrowIfNull(read);
        ConfigImage config = Snapshot.Config;
        return read.Offset + read.Length <= config.Length || !HasConfigProtocol
            ? new ConfigData(read.Offset, config.Read(read.Offset, read.Length))
            : null;
    }

    /// <summary>
    /// Installs a saved inflight region (a new memfd holding <paramref name="message"/>'s bytes),
    /// sent with SET_INFLIGHT_FD before the next ring starts in place of a GET_INFLIGHT_FD.
    /// </summary>
    public void RestoreInflight(RestoreInflight message)
    {
        ArgumentNullException.ThrowIfNull(message);
        if (message.Contents.Length == 0)
        {
            return;
        }

        SafeFileDescriptor fd = MemFd.Create("vhost-user-inflight", (ulong)message.Contents.Length);
        try
        {
            using SharedMapping map = SharedMapping.Map(fd, 0, (ulong)message.Contents.Length);
            unsafe
            {
                message.Contents.CopyTo(new Span<byte>(map.Address, message.Contents.Length));
            }
        }
        catch
        {
            fd.Dispose();
            throw;
        }

        VhostUserInflightRegion? old = Snapshot.Inflight;
        Snapshot = Snapshot with { Inflight = new VhostUserInflightRegion(fd, (ulong)message.Contents.Length, 0, message.NumQueues, message.QueueSize) };
        old?.Dispose();
    }

    /// <summary>A copy of the inflight region and its shape; empty when there is none.</summary>
    public InflightContents ReadInflight()
    {
        if (Snapshot.Inflight is not { } region || region.MmapSize == 0)
        {
            return new InflightContents([], 0, 0);
        }

        return new InflightContents(region.ReadAll(), region.NumQueues, region.QueueSize);
    }

    // --- Commands while no connection is alive -------------------------------------------------

    /// <summary>
    /// Answers <paramref name="command"/> without a back-end (reconnecting, or given up), so the
    /// guest driver never waits for a back-end that may be gone for minutes; the next connection
    /// replays what changed. Returns the reply (a <see cref="Status.Failure"/> for a command that
    /// cannot be served without one).
    /// </summary>
    public object ServeOffline(object command)
    {
        switch (command)
        {
            case GetDeviceInfo when Info is not null:
                return Info;

            case GetDeviceSnapshot:
                return Snapshot;

            case ReadConfig read:
                return read.Offset < 0 || read.Length < 0
                    ? new Status.Failure(new ArgumentOutOfRangeException(nameof(command), "Negative config offset or length."))
                    : new ConfigData(read.Offset, Snapshot.Config.Read(read.Offset, read.Length));

            case WriteConfig write:
                if (write.Offset < 0)
                {
                    return new Status.Failure(new ArgumentOutOfRangeException(nameof(command), "Negative config offset."));
                }

                // Kept for the next back-end only when it can take config writes (CONFIG), as when connected.
                if (HasConfigProtocol)
                {
                    ConfigWritten(write.Offset, write.Data);
                }

                return Frontend.ConfigWritten.Instance;

            case StartQueue start:
                if (ValidateStart(start) is { } invalid)
                {
                    return new Status.Failure(invalid);
                }

                Snapshot = Snapshot with
                {
                    GuestFeatures = start.Features,
                    Memory = start.Resources.Memory,
                    Queues = Snapshot.Queues.SetItem(start.Index, new QueueSnapshot(start.Index, start.Resources, start.Features, start.InitialState)),
                };
                return new QueueStarted(start.Index);

            case StopQueue stop:
                if (!Snapshot.Queues.TryGetValue(stop.Index, out QueueSnapshot? queue))
                {
                    return new QueueStopped(stop.Index, null);
                }

                Stopped(stop.Index);
                return new QueueStopped(stop.Index, StateInGuestMemory(queue));

            case ResetDevice:
                Reset(backendKeepsMemory: false);
                return DeviceReset.Instance;

            case SetDriverStatus status:
                StatusChanged(status.Status);
                return DriverStatusSet.Instance;

            case RestoreInflight restore:
                RestoreInflight(restore);
                return InflightRestored.Instance;

            case Frontend.ReadInflight:
                return ReadInflight();

            default:
                return ServeLoggingOffline(command) ?? new Status.Failure(new VhostUserConnectionLostException(
                    $"vhost-user device {_options.Name} is not connected; {command.GetType().Name} needs its back-end."));
        }
    }

    /// <summary>Closes the inflight region and the dirty log (the snapshot's fds).</summary>
    public void Dispose()
    {
        Snapshot.Inflight?.Dispose();
        Snapshot.DirtyLog?.Dispose();
    }

    // --- Helpers -------------------------------------------------------------------------------

    private ushort InflightQueues => (ushort)Math.Max(1, QueueCount);

    private bool HasConfigProtocol => _info is { } info && (info.ProtocolFeatures & VhostUserProtocolFeatures.CONFIG) != 0;

    private static RingPlan PlanRing(QueueSnapshot queue, VirtqueueState state)
    {
        bool packed = VhostUserFrontendConnection.IsPacked(queue.Features);
        var addresses = VhostUserRingAddresses.For(queue.Index, queue.Resources.Memory, queue.Resources.Params, packed, state);
        return new RingPlan(queue, addresses, queue.Resources.Kick);
    }

    /// <summary>The used index the guest sees in a split ring's used ring (offset 2 of the device area).</summary>
    private static VirtqueueState UsedIndexInGuestMemory(VirtqueueResources resources)
    {
        ushort used = resources.Memory.ReadUInt16Acquire(resources.Params.DeviceArea + 2);
        return new VirtqueueState(used, used);
    }

    /// <summary>
    /// Where a queue stopped without a back-end stands: for a split ring the used index the guest
    /// sees (what follows it was not completed and is made available again at the next start); a
    /// packed ring keeps the state it was started with.
    /// </summary>
    private static VirtqueueState? StateInGuestMemory(QueueSnapshot queue)
    {
        if (VhostUserFrontendConnection.IsPacked(queue.Features))
        {
            return queue.InitialState ?? FreshRing;
        }

        try
        {
            return UsedIndexInGuestMemory(queue.Resources);
        }
        catch (GuestMemoryException)
        {
            return null;
        }
    }

    private static string DescribeBits(ulong bits)
    {
        var names = new List<string>();
        for (int bit = 0; bit < 64; bit++)
        {
            if ((bits & (1UL << bit)) != 0)
            {
                names.Add(bit switch
                {
                    28 => "INDIRECT_DESC",
                    29 => "EVENT_IDX",
                    34 => "RING_PACKED",
                    _ => $"bit {bit}",
                });
            }
        }

        return string.Join(", ", names);
    }
}
