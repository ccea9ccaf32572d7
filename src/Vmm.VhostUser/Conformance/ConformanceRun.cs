using Vmm.Core.Memory;
using Vmm.Virtio.Driver;
using Vmm.Virtio.Queues;
using Vmm.Virtio.Spec;
using Vmm.VhostUser.Frontend;
using Vmm.VhostUser.Protocol;

namespace Vmm.VhostUser.Conformance;

/// <summary>A check's outcome and its one line of why, before the catalogue entry is attached.</summary>
internal readonly record struct Verdict(ConformanceOutcome Outcome, string Why)
{
    public static Verdict Pass(string why) => new(ConformanceOutcome.Pass, why);

    public static Verdict Fail(string why) => new(ConformanceOutcome.Fail, why);

    public static Verdict NotApplicable(string why) => new(ConformanceOutcome.NotApplicable, why);
}

/// <summary>
/// One conformance run against one back-end: the checks of <see cref="Catalogue"/> in order, on
/// one connection as far as the back-end allows (one-shot back-ends serve a single front-end),
/// as a guest driver and a front-end would drive it. The checks share what the run set up
/// (features, memory table, rings); each says what it needs and reports N/A when an earlier
/// failure left it nothing to check.
/// </summary>
/// <remarks>
/// Built on <see cref="VhostUserFrontendConnection"/>: every request goes through it, so replies
/// are validated as strictly as our front-end validates them. A reply it rejects closes that
/// connection; the run then opens a new one (the back-end's state starts afresh) and goes on,
/// or, when the back-end accepts none, reports the remaining checks as not run. Checks that may
/// cost the connection on a lenient back-end (an out-of-range GET_CONFIG) run last but one;
/// the second-connection check runs last.
/// </remarks>
internal sealed partial class ConformanceRun : IDisposable
{
    // Guest memory as the checker lays it out: the rings and small buffers in the main region;
    // two more regions are added at run time (a replaced table, then ADD_MEM_REG). A main
    // region far from GPA 0 catches back-ends that confuse guest-physical and user addresses.
    internal const ulong MainRegionGpa = 0x4000_0000;
    internal const ulong AddedRegionGpa = 0x5000_0000;
    internal const ulong SlotRegionGpa = 0x6000_0000;
    internal const ulong ExtraRegionSize = 1 << 20;

    private const VirtioDeviceStatus StatusFeaturesOk = VirtioDeviceStatus.ACKNOWLEDGE | VirtioDeviceStatus.DRIVER | VirtioDeviceStatus.FEATURES_OK;
    private const VirtioDeviceStatus StatusDriverOk = StatusFeaturesOk | VirtioDeviceStatus.DRIVER_OK;

    private readonly Func<VhostUserFrontendConnectionOptions, CancellationToken, Task<VhostUserFrontendConnection>> _connect;
    private readonly VhostUserFrontendConnectionOptions _connectionOptions;
    private readonly List<string> _acked = [];
    private readonly List<string> _unacked = [];
    private readonly Dictionary<int, ProbeRing> _rings = [];

    private VhostUserFrontendConnection? _connection;
    private string? _unreachable;
    private Exception? _reconnectFailure;
    private VhostUserBackendInfo? _firstInfo;
    private string? _lostIn;
    private string _currentCheck = "";
    private string? _reconnectNote;
    private string? _step;
    private ulong? _features;
    private bool _memorySent;
    private GuestMemoryRegion? _addedRegion;
    private bool _addedRegionSent;
    private uint? _stoppedBase;
    private ulong? _statusAfterFeatures;
    private ulong? _statusAfterStart;

    private ConformanceRun(
        string target, ConformanceOptions options,
        Func<VhostUserFrontendConnectionOptions, CancellationToken, Task<VhostUserFrontendConnection>> connect)
    {
        Target = target;
        Options = options;
        _connect = connect;
        _connectionOptions = new VhostUserFrontendConnectionOptions { RequestTimeout = options.Timeout, ConfigSize = 0 };
        Probe = DeviceProbe.For(options.DeviceType);
        ulong mainSize = MainRegionSize(options.QueueSize);
        Memory = GuestMemory.Create([new GuestMemoryRange(MainRegionGpa, mainSize)]);
        Allocator = new GuestMemoryAllocator(MainRegionGpa, mainSize);
        Pool = new GuestBufferPool(Allocator);
    }

    public string Target { get; }

    /// <summary>
    /// 4 MiB for buffers plus room for the rings the run may lay out (each reset, restart or new
    /// connection lays out fresh ones), in whole 2 MiB pages.
    /// </summary>
    internal static ulong MainRegionSize(ushort queueSize)
    {
        ulong ring = (16 + 2 + 8) * (ulong)queueSize + 8192;
        const ulong page = 2 << 20;
        return ((4UL << 20) + (16 * ring) + page - 1) & ~(page - 1);
    }

    public ConformanceOptions Options { get; }

    public DeviceProbe Probe { get; }

    public GuestMemory Memory { get; }

    public GuestMemoryAllocator Allocator { get; }

    /// <summary>Small buffers in the main region (headers, status bytes, request data).</summary>
    public IGuestBufferPool Pool { get; }

    /// <summary>The connection in use; valid inside a check that passed <see cref="EnsureConnectionAsync"/>.</summary>
    public VhostUserFrontendConnection Connection => _connection ?? throw new InvalidOperationException("Not connected.");

    /// <summary>What the last handshake learnt.</summary>
    public VhostUserBackendInfo? Info { get; private set; }

    /// <summary>The device configuration the config check read (null: none read).</summary>
    public byte[]? Config { get; private set; }

    /// <summary>The virtio features acked with SET_FEATURES on this connection, or null.</summary>
    public ulong? Features => _features;

    public TimeSpan Timeout => Options.Timeout;

    /// <summary>The ring <paramref name="index"/> the run set up.</summary>
    public ProbeRing Ring(int index) => _rings[index];

    /// <summary>Runs every check of the catalogue for the device type; the first connection must succeed.</summary>
    public static async Task<ConformanceReport> RunAsync(
        string target, ConformanceOptions options,
        Func<VhostUserFrontendConnectionOptions, CancellationToken, Task<VhostUserFrontendConnection>> connect,
        CancellationToken cancellationToken)
    {
        using var run = new ConformanceRun(target, options, connect);

        // Unreachable is not a check result: the caller gets the connect error as it is.
        run._connection = await connect(run._connectionOptions, cancellationToken).ConfigureAwait(false);
        var results = new List<ConformanceResult>();
        foreach (CheckDefinition definition in Catalogue(options.DeviceType))
        {
            cancellationToken.ThrowIfCancellationRequested();
            Verdict verdict = await run.RunCheckAsync(definition, cancellationToken).ConfigureAwait(false);
            results.Add(new ConformanceResult(definition.Check, verdict.Outcome, verdict.Why));
        }

        VhostUserBackendInfo? info = run._firstInfo;
        return new ConformanceReport(target, options.DeviceType, info?.Features, info?.OfferedProtocolFeatures, info?.QueueCount, results);
    }

    private async Task<Verdict> RunCheckAsync(CheckDefinition definition, CancellationToken cancellationToken)
    {
        _currentCheck = definition.Check.Id;
        _step = null;
        Verdict verdict;
        try
        {
            verdict = await definition.Run(this, cancellationToken).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
            throw;
        }
        catch (NotRunException e)
        {
            verdict = Verdict.NotApplicable(e.Message);
        }
        catch (Exception e)
        {
            // Whatever the back-end did, the run goes on: the check fails with what went wrong.
            verdict = Verdict.Fail(_step is null ? Describe(e) : $"{_step}: {Describe(e)}");
        }

        if (_connection is { IsDead: true })
        {
            _lostIn ??= definition.Check.Id;
        }

        // The first check that ran on a new connection says so.
        if (_reconnectNote is not null && verdict.Outcome != ConformanceOutcome.NotApplicable)
        {
            verdict = verdict with { Why = $"{verdict.Why} ({_reconnectNote})" };
            _reconnectNote = null;
        }

        return verdict;
    }

    /// <summary>Names what the check is doing, for the why of a failure that interrupts it; null once done.</summary>
    public void Step(string? description) => _step = description;

    /// <summary>One line for an exception a check ran into.</summary>
    internal static string Describe(Exception e) => e switch
    {
        VhostUserConnectionLostException { InnerException: OperationCanceledException } => e.Message,
        VhostUserConnectionLostException or VhostUserProtocolException or VhostUserRequestFailedException
            or VhostUserIncompatibleBackendException => e.Message,
        _ => $"{e.GetType().Name}: {e.Message}",
    };

    // --- Connection ---------------------------------------------------------------------------

    /// <summary>
    /// Makes sure a live connection with a completed handshake exists. After a lost connection it
    /// connects again (the back-end starts afresh: features, memory and rings are set up again
    /// when a check needs them); throws <see cref="NotRunException"/> when the back-end accepts
    /// no new connection or fails the new handshake.
    /// </summary>
    public async Task EnsureConnectionAsync(CancellationToken cancellationToken)
    {
        if (_unreachable is not null)
        {
            throw new NotRunException(_unreachable);
        }

        if (_connection is { IsDead: false } && Info is not null)
        {
            return;
        }

        if (_connection is { IsDead: false })
        {
            throw new NotRunException("not run: the handshake did not complete");
        }

        string lostIn = _lostIn ?? _currentCheck;
        try
        {
            await ReconnectAsync(cancellationToken).ConfigureAwait(false);
            await HandshakeAsync(cancellationToken).ConfigureAwait(false);
            _reconnectNote = $"on a new connection: the previous one ended in {lostIn}";
            _lostIn = null;
        }
        catch (Exception e) when (e is not OperationCanceledException || !cancellationToken.IsCancellationRequested)
        {
            _reconnectFailure = e;
            _unreachable = $"not run: the connection ended in {lostIn} and a new one failed ({Describe(e)})";
            throw new NotRunException(_unreachable);
        }
    }

    /// <summary>Closes the connection (if any) and opens a new one; the back-end's state starts afresh.</summary>
    public async Task ReconnectAsync(CancellationToken cancellationToken)
    {
        _connection?.Dispose();
        _connection = null;
        Info = null;
        ForgetDeviceState();
        _connection = await ConnectWithRetryAsync(cancellationToken).ConfigureAwait(false);
    }

    /// <summary>
    /// Connects, retrying for up to the timeout while nothing listens yet: a back-end that serves
    /// one front-end at a time may need a moment to finish the previous one before it listens again.
    /// </summary>
    private async Task<VhostUserFrontendConnection> ConnectWithRetryAsync(CancellationToken cancellationToken)
    {
        long deadline = Environment.TickCount64 + (long)Timeout.TotalMilliseconds;
        while (true)
        {
            try
            {
                return await _connect(_connectionOptions, cancellationToken).ConfigureAwait(false);
            }
            catch (IOException) when (Environment.TickCount64 < deadline)
            {
                await Task.Delay(50, cancellationToken).ConfigureAwait(false);
            }
        }
    }

    /// <summary>The handshake on the current connection (the client's, in the order strict back-ends need).</summary>
    public async Task<VhostUserBackendInfo> HandshakeAsync(CancellationToken cancellationToken)
    {
        VhostUserBackendInfo info = await Connection.HandshakeAsync(cancellationToken).ConfigureAwait(false);
        Info = info;
        _firstInfo ??= info;
        if (Connection.HasProtocolFeature(VhostUserProtocolFeatures.REPLY_ACK))
        {
            _replyAckNegotiated = true;
            Acked(VhostUserRequest.SET_OWNER);
        }

        return info;
    }

    /// <summary>After a reset or a new connection: nothing of the device is set up any more.</summary>
    private void ForgetDeviceState()
    {
        _features = null;
        _statusAfterFeatures = null;
        _statusAfterStart = null;
        _memorySent = false;
        _addedRegionSent = false;
        _stoppedBase = null;
        foreach (ProbeRing ring in _rings.Values)
        {
            ring.Dispose();
        }

        _rings.Clear();
        Probe.Reset();
    }

    // --- REPLY_ACK ledger -----------------------------------------------------------------------

    private void Acked(params VhostUserRequest[] requests)
    {
        foreach (VhostUserRequest request in requests)
        {
            _acked.Add(request.ToString());
        }
    }

    /// <summary>
    /// Runs <paramref name="action"/>, whose requests all carry NEED_REPLY when REPLY_ACK was
    /// negotiated, and books the outcome for the REPLY_ACK check: acked (even a non-zero ack is
    /// an ack) or left unanswered past the deadline.
    /// </summary>
    public async Task TrackAsync(Func<Task> action, params VhostUserRequest[] requests)
    {
        bool replyAck = Connection.HasProtocolFeature(VhostUserProtocolFeatures.REPLY_ACK);
        try
        {
            await action().ConfigureAwait(false);
        }
        catch (VhostUserRequestFailedException)
        {
            if (replyAck)
            {
                Acked(requests);
            }

            throw;
        }
        catch (VhostUserConnectionLostException e) when (replyAck && e.InnerException is OperationCanceledException)
        {
            _unacked.Add(e.Message);
            throw;
        }

        if (replyAck)
        {
            Acked(requests);
        }
    }

    // --- Device bring-up ------------------------------------------------------------------------

    /// <summary>SET_FEATURES with what the device probe accepts of the offer, once per connection.</summary>
    public async Task<ulong> EnsureFeaturesAsync(CancellationToken cancellationToken)
    {
        if (_features is ulong features)
        {
            return features;
        }

        ulong wanted = Probe.AcceptFeatures(Connection.BackendFeatures);
        Step($"SET_FEATURES 0x{wanted:x}");
        ulong sent = 0;
        await TrackAsync(async () => sent = await Connection.SetFeaturesAsync(wanted, cancellationToken).ConfigureAwait(false),
            VhostUserRequest.SET_FEATURES).ConfigureAwait(false);
        _features = sent;
        if (Connection.HasProtocolFeature(VhostUserProtocolFeatures.STATUS))
        {
            _statusAfterFeatures = await SetStatusAsync(StatusFeaturesOk, cancellationToken).ConfigureAwait(false);
        }

        _step = null;
        return sent;
    }

    /// <summary>
    /// SET_STATUS, then GET_STATUS: with STATUS negotiated the front-end tells the device what a
    /// driver writes to the status field, and a device consumes no buffer before DRIVER_OK
    /// (virtio 1.2, 3.1.1). QEMU sends FEATURES_OK after SET_FEATURES and DRIVER_OK once the
    /// rings started; so does the run. Returns what GET_STATUS answered.
    /// </summary>
    private async Task<ulong> SetStatusAsync(VirtioDeviceStatus status, CancellationToken cancellationToken)
    {
        Step($"SET_STATUS 0x{(ulong)status:x}");
        await TrackAsync(() => Connection.SendU64Async(VhostUserRequest.SET_STATUS, (ulong)status, cancellationToken: cancellationToken),
            VhostUserRequest.SET_STATUS).ConfigureAwait(false);
        Step("GET_STATUS");
        return await Connection.GetU64Async(VhostUserRequest.GET_STATUS, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>The memory table (ADD_MEM_REG per region with CONFIGURE_MEM_SLOTS, else SET_MEM_TABLE), once per connection.</summary>
    public async Task EnsureMemoryAsync(CancellationToken cancellationToken)
    {
        if (_memorySent)
        {
            return;
        }

        VhostUserRequest request = Connection.HasProtocolFeature(VhostUserProtocolFeatures.CONFIGURE_MEM_SLOTS)
            ? VhostUserRequest.ADD_MEM_REG
            : VhostUserRequest.SET_MEM_TABLE;
        Step($"sending the memory table ({request})");
        await TrackAsync(() => Connection.SetMemoryAsync(Memory, cancellationToken), request).ConfigureAwait(false);
        _memorySent = true;
        _addedRegionSent = _addedRegion is not null;
        _step = null;
    }

    /// <summary>
    /// Features, memory table and the probe's rings started and enabled; throws
    /// <see cref="NotRunException"/> when that fails here (the ring-start check reports why).
    /// </summary>
    public async Task EnsureRingsRunningAsync(CancellationToken cancellationToken)
    {
        await EnsureConnectionAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            await StartRingsAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (Exception e) when (e is not NotRunException && (e is not OperationCanceledException || !cancellationToken.IsCancellationRequested))
        {
            throw new NotRunException($"not run: the rings could not be started ({Describe(e)})");
        }
    }

    /// <summary>Starts every ring of the probe that is not running, from index 0 for new rings.</summary>
    public async Task<IReadOnlyList<int>> StartRingsAsync(CancellationToken cancellationToken)
    {
        ulong features = await EnsureFeaturesAsync(cancellationToken).ConfigureAwait(false);
        await EnsureMemoryAsync(cancellationToken).ConfigureAwait(false);
        var started = new List<int>();
        foreach (int index in Probe.Rings)
        {
            if (_rings.TryGetValue(index, out ProbeRing? existing))
            {
                if (existing.Running)
                {
                    continue;
                }

                // A ring some check left stopped starts over on new ring memory from index 0,
                // so nothing it held can be mistaken for what the next check submits.
                existing.Dispose();
            }

            var ring = new ProbeRing(index, DriverQueue.Create(Memory, Allocator, Options.QueueSize, features));
            _rings[index] = ring;
            await StartRingAsync(ring, 0, cancellationToken).ConfigureAwait(false);
            started.Add(index);
        }

        if (started.Count > 0 && Connection.HasProtocolFeature(VhostUserProtocolFeatures.STATUS))
        {
            _statusAfterStart = await SetStatusAsync(StatusDriverOk, cancellationToken).ConfigureAwait(false);
            _step = null;
        }

        return started;
    }

    /// <summary>
    /// SET_VRING_CALL first, as QEMU sends it (its guest notifiers are set up before the rings
    /// start), then the client's SET_VRING_NUM, ADDR, BASE, KICK, CALL (the same fd again) and
    /// ENABLE when protocol features were acked. A ring starts on its kick ("Ring states"): with
    /// the call eventfd already in place, a buffer the back-end completes at once is signalled
    /// there, even when no REPLY_ACK orders the messages.
    /// </summary>
    public async Task StartRingAsync(ProbeRing ring, uint baseIndex, CancellationToken cancellationToken)
    {
        Step($"setting up ring {ring.Index} from base {baseIndex} (SET_VRING_CALL, NUM, ADDR, BASE, KICK, CALL{(Connection.RingsNeedEnable ? ", ENABLE" : "")})");
        ulong file = new VhostUserVringFile((byte)ring.Index, NoFd: false).ToU64();
        await TrackAsync(() => Connection.SendU64Async(VhostUserRequest.SET_VRING_CALL, file, [ring.Call.Handle], cancellationToken),
            VhostUserRequest.SET_VRING_CALL).ConfigureAwait(false);
        VhostUserRingSetup setup = ring.Setup(Memory, baseIndex);
        await TrackAsync(() => Connection.StartRingAsync(setup, cancellationToken), RingStartRequests()).ConfigureAwait(false);
        ring.Running = true;
        _step = null;
    }

    /// <summary>
    /// The set-up of <see cref="StartRingAsync"/> up to SET_VRING_KICK, leaving the ring disabled:
    /// the client's start always enables, and the kick-before-enable check needs the back-end to
    /// hold a kicked, disabled ring for a while first.
    /// </summary>
    public async Task SetUpDisabledRingAsync(ProbeRing ring, uint baseIndex, CancellationToken cancellationToken)
    {
        Step($"setting up ring {ring.Index} from base {baseIndex} without enabling it (SET_VRING_CALL, NUM, ADDR, BASE, KICK)");
        VhostUserRingSetup setup = ring.Setup(Memory, baseIndex);
        uint index = (uint)ring.Index;
        ulong file = new VhostUserVringFile((byte)index, NoFd: false).ToU64();
        byte[] size = new byte[VhostUserVringState.Size];
        new VhostUserVringState(index, setup.Size).Write(size);
        byte[] address = new byte[VhostUserVringAddr.Size];
        new VhostUserVringAddr(index, 0, setup.DescriptorUserAddress, setup.DeviceUserAddress, setup.DriverUserAddress, 0).Write(address);
        byte[] start = new byte[VhostUserVringState.Size];
        new VhostUserVringState(index, baseIndex).Write(start);
        await TrackAsync(async () =>
        {
            await Connection.SendU64Async(VhostUserRequest.SET_VRING_CALL, file, [ring.Call.Handle], cancellationToken).ConfigureAwait(false);
            await Connection.SendAsync(VhostUserRequest.SET_VRING_NUM, size, cancellationToken: cancellationToken).ConfigureAwait(false);
            await Connection.SendAsync(VhostUserRequest.SET_VRING_ADDR, address, cancellationToken: cancellationToken).ConfigureAwait(false);
            await Connection.SendAsync(VhostUserRequest.SET_VRING_BASE, start, cancellationToken: cancellationToken).ConfigureAwait(false);
            await Connection.SendU64Async(VhostUserRequest.SET_VRING_KICK, file, [ring.Kick.Handle], cancellationToken).ConfigureAwait(false);
        }, VhostUserRequest.SET_VRING_CALL, VhostUserRequest.SET_VRING_NUM, VhostUserRequest.SET_VRING_ADDR, VhostUserRequest.SET_VRING_BASE,
            VhostUserRequest.SET_VRING_KICK).ConfigureAwait(false);
        _step = null;
    }

    private VhostUserRequest[] RingStartRequests() => Connection.RingsNeedEnable
        ?
        [
            VhostUserRequest.SET_VRING_NUM, VhostUserRequest.SET_VRING_ADDR, VhostUserRequest.SET_VRING_BASE,
            VhostUserRequest.SET_VRING_KICK, VhostUserRequest.SET_VRING_CALL, VhostUserRequest.SET_VRING_ENABLE,
        ]
        :
        [
            VhostUserRequest.SET_VRING_NUM, VhostUserRequest.SET_VRING_ADDR, VhostUserRequest.SET_VRING_BASE,
            VhostUserRequest.SET_VRING_KICK, VhostUserRequest.SET_VRING_CALL,
        ];

    /// <summary>SET_VRING_ENABLE(0) when needed, then GET_VRING_BASE: the split ring's next available index.</summary>
    public async Task<uint> StopRingAsync(ProbeRing ring, CancellationToken cancellationToken, string? step = null)
    {
        Step($"{step ?? $"stopping ring {ring.Index}"} ({(Connection.RingsNeedEnable ? "SET_VRING_ENABLE(0), " : "")}GET_VRING_BASE)");
        VirtqueueState state = default;
        if (Connection.RingsNeedEnable)
        {
            // The client sends SET_VRING_ENABLE(0) first (acked) and then GET_VRING_BASE (a reply of its own).
            await TrackAsync(
                async () => state = await Connection.StopRingAsync(ring.Index, Memory, ring.Queue.Params, packed: false, cancellationToken)
                    .ConfigureAwait(false),
                VhostUserRequest.SET_VRING_ENABLE).ConfigureAwait(false);
        }
        else
        {
            state = await Connection.StopRingAsync(ring.Index, Memory, ring.Queue.Params, packed: false, cancellationToken).ConfigureAwait(false);
        }

        ring.Running = false;
        _step = null;
        return state.AvailableIndex;
    }

    // --- Requests -------------------------------------------------------------------------------

    /// <summary>
    /// Waits for <paramref name="request"/> and validates it. Null on success, else why it failed:
    /// no completion in time, a completion the back-end never signalled, or what the device's
    /// validation found wrong.
    /// </summary>
    public async Task<string?> CompleteAsync(ProbeRequest request, CancellationToken cancellationToken)
    {
        ProbeCompletion? completion = await request.Ring.WaitAsync(request.Token, Timeout, request.Take, cancellationToken).ConfigureAwait(false);
        if (completion is not ProbeCompletion done)
        {
            return $"{request.What} on ring {request.Ring.Index} did not complete within {Timeout.TotalSeconds:0.###} s";
        }

        string? invalid = request.Validate(done);
        if (invalid is not null)
        {
            return $"{request.What}: {invalid}";
        }

        return done.CallSignalled
            ? null
            : $"{request.What} was completed in the used ring but the call eventfd was never signalled (virtio 1.2, 2.7.10)";
    }

    /// <summary>Submits the probe's request with its data in <paramref name="data"/> (default: the main region), kicks and waits.</summary>
    public async Task<string?> ProbeOnceAsync(IGuestBufferPool? data, CancellationToken cancellationToken)
    {
        Step($"waiting for a request on ring {Probe.ProbeRingIndex}");
        ProbeRequest request = Probe.SubmitProbe(this, data ?? Pool);
        request.Ring.Notify();
        string? error = await CompleteAsync(request, cancellationToken).ConfigureAwait(false);
        _step = null;
        return error;
    }

    public void Dispose()
    {
        _connection?.Dispose();
        foreach (ProbeRing ring in _rings.Values)
        {
            ring.Dispose();
        }

        Memory.Dispose();
    }

    /// <summary>A check that cannot run; its message is the why of an N/A result.</summary>
    private sealed class NotRunException(string message) : Exception(message);
}
