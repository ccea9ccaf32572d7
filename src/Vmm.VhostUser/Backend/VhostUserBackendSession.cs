using Microsoft.Extensions.Logging;
using Vmm.Core.Memory;
using Vmm.Virtio;
using Vmm.Virtio.Spec;
using Vmm.VhostUser.Channel;
using Vmm.VhostUser.Metrics;
using Vmm.VhostUser.Protocol;

namespace Vmm.VhostUser.Backend;

/// <summary>
/// One front-end connection to a back-end: reads requests in order, applies them to the wrapped
/// device and answers. Ends when the front-end hangs up, breaks the protocol, stays silent past
/// its limits or truncates the memory it shared; the device is then stopped and reset so the next
/// front-end finds it as new. Nothing the session started outlives it: transfers and back-end
/// requests are cancelled and waited for, every fd it received is closed.
/// </summary>
public sealed partial class VhostUserBackendSession : IDisposable
{
    private readonly IVirtioDevice _device;
    private readonly VhostUserChannel _channel;
    private readonly ILogger _logger;
    private readonly VhostUserBackendOptions _options;
    private readonly BackendVring[] _vrings;
    private readonly byte[] _replyBuffer = new byte[VhostUserMessageWriter.MaxMessageSize];

    /// <summary>Cancelled when the session must end from outside the request loop (truncated memory, a stuck ring) or is disposed.</summary>
    private readonly CancellationTokenSource _end = new();
    private string? _endReason;

    /// <summary>
    /// True once a ring's worker did not stop in time: it may still touch guest memory and the
    /// inflight region, so neither is unmapped for the rest of the process (a deliberate leak,
    /// logged, instead of a use after unmap).
    /// </summary>
    private bool _wedged;

    private GuestMemory _memory;
    private ulong _ackedFeatures;
    private VhostUserProtocolFeatures _ackedProtocolFeatures;
    private byte _status;
    private bool _disposed;

    // Metrics: the device's tag, when the session started, whether its first ring started yet.
    private readonly string _metricsName;
    private long _startedAt;
    private bool _handshakeCounted;

    public VhostUserBackendSession(IVirtioDevice device, VhostUserChannel channel, ILogger logger, VhostUserBackendOptions? options = null)
    {
        _device = device ?? throw new ArgumentNullException(nameof(device));
        _channel = channel ?? throw new ArgumentNullException(nameof(channel));
        _logger = logger ?? throw new ArgumentNullException(nameof(logger));
        _options = options ?? VhostUserBackendOptions.Default;
        _vrings = new BackendVring[device.QueueCount];
        for (int i = 0; i < _vrings.Length; i++)
        {
            _vrings[i] = new BackendVring(i);
        }

        _memory = NewMemoryTable();
        _metricsName = BackendMetrics.DeviceName(device);
        _device.Faulted += OnDeviceFaulted;
        _device.ConfigChanged += OnDeviceConfigChanged;
    }

    /// <summary>The channel options a back-end uses: requests are checked by the codec before their payload is read.</summary>
    public static VhostUserChannelOptions ChannelOptions { get; } = new()
    {
        HeaderValidator = static header => VhostUserCodec.ValidateRequestHeader(header),
    };

    /// <summary>Virtio features offered: the device's, VERSION_1, and PROTOCOL_FEATURES (vhost-user.rst, "Feature bits").</summary>
    public ulong OfferedFeatures => _device.DeviceFeatures | VirtioFeatures.VERSION_1 | VhostUserVirtioFeatures.PROTOCOL_FEATURES;

    private bool ProtocolFeaturesNegotiated => (_ackedFeatures & VhostUserVirtioFeatures.PROTOCOL_FEATURES) != 0;

    private bool Has(VhostUserProtocolFeatures feature) => (_ackedProtocolFeatures & feature) == feature;

    /// <summary>
    /// Serves requests until the front-end disconnects (returns normally), breaks the protocol or
    /// a limit (logs and returns), or <paramref name="cancellationToken"/> fires.
    /// </summary>
    public async Task RunAsync(CancellationToken cancellationToken = default)
    {
        using var session = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, _end.Token);
        _startedAt = BackendMetrics.SessionStarted(_metricsName);
        try
        {
            bool first = true;
            while (true)
            {
                using VhostUserMessage message = await ReceiveAsync(first, session.Token).ConfigureAwait(false);
                first = false;
                await HandleAsync(message, session.Token).ConfigureAwait(false);
            }
        }
        catch (VhostUserConnectionLostException e)
        {
            Log.FrontendDisconnected(_logger, e.Message);
        }
        catch (VhostUserProtocolException e)
        {
            Log.ProtocolViolation(_logger, e.Message);
            BackendMetrics.Fault(_metricsName, e);
        }
        catch (FrontendTooSlowException e)
        {
            Log.FrontendTooSlow(_logger, e.Message);
            BackendMetrics.Fault(_metricsName, e);
        }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            BackendMetrics.Fault(_metricsName, e);
            throw;
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
        }
        catch (OperationCanceledException) when (_end.IsCancellationRequested)
        {
            Log.SessionEnded(_logger, _endReason ?? "the session was closed");
        }
        finally
        {
            BackendMetrics.SessionEnded(_metricsName);
            StopAllRings();
            ResetDevice();
        }
    }

    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }

        _disposed = true;
        _device.Faulted -= OnDeviceFaulted;
        _device.ConfigChanged -= OnDeviceConfigChanged;
        _end.Cancel();

        // Work the session started off its own thread ends with it.
        StopBackendRequests();
        EndDeviceStateTransfer();
        StopAllRings();
        foreach (BackendVring vring in _vrings)
        {
            vring.Dispose();
        }

        if (_wedged)
        {
            Log.MemoryKeptForStuckRing(_logger);
        }
        else
        {
            DisposeInflight();
            _memory.Dispose();
        }

        _channel.Dispose();
        _end.Dispose();
    }

    /// <summary>
    /// Ends the session from any thread: the request loop stops at once, stops the rings and
    /// resets the device. Safe to call after the session ended.
    /// </summary>
    private void EndSession(string reason)
    {
        if (Interlocked.CompareExchange(ref _endReason, reason, null) is not null)
        {
            return;
        }

        try
        {
            _end.Cancel();
        }
        catch (ObjectDisposedException)
        {
            // Ended already.
        }
        catch (AggregateException e)
        {
            // A cancellation callback failed; the session ends all the same.
            Log.SessionEnded(_logger, $"{reason} (while ending: {e.InnerException?.Message})");
        }
    }

    /// <summary>
    /// The next message, within the session's limits: the first must arrive whole within
    /// <see cref="VhostUserBackendOptions.FirstMessageTimeout"/> of the connection; later ones
    /// may be awaited for ever, but once a message has started it must arrive whole within
    /// <see cref="VhostUserBackendOptions.MessageTimeout"/>. A client that misses either is
    /// dropped: connections are served one at a time, and it would block the next front-end.
    /// </summary>
    private async ValueTask<VhostUserMessage> ReceiveAsync(bool first, CancellationToken cancellationToken)
    {
        TimeSpan limit = first ? _options.FirstMessageTimeout : _options.MessageTimeout;
        if (!first)
        {
            await _channel.WaitForDataAsync(cancellationToken).ConfigureAwait(false);
        }

        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        deadline.CancelAfter(limit);
        try
        {
            return await _channel.ReceiveAsync(deadline.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
        {
            throw new FrontendTooSlowException(first
                ? $"the front-end sent no whole message within {limit.TotalSeconds:0.###} s of connecting"
                : $"a message from the front-end did not arrive whole within {limit.TotalSeconds:0.###} s of its first byte");
        }
    }

    private async ValueTask HandleAsync(VhostUserMessage message, CancellationToken cancellationToken)
    {
        VhostUserHeader header = message.Header;
        bool needReply = VhostUserCodec.NeedsReply(header);
        string name = VhostUserCodec.Describe(header.Request);
        Reply reply;
        try
        {
            if (!VhostUserCodec.IsKnownRequest(header.Request))
            {
                throw new RequestRejectedException($"unknown request code {header.Request}");
            }

            VhostUserCodec.ValidateFdCount(header.Request, message.Payload.Span, message.Fds.Count);
            reply = Dispatch((VhostUserRequest)header.Request, message);
        }
        catch (RequestRejectedException e)
        {
            Log.RequestRejected(_logger, name, e.Message);
            if (HasNaturalReply((VhostUserRequest)header.Request) && VhostUserCodec.IsKnownRequest(header.Request))
            {
                // Requests whose reply carries data have no failure code: the only honest answer is
                // to end the connection, which the front-end sees at once rather than at a timeout.
                throw new VhostUserProtocolException($"{name} failed and its reply cannot say so: {e.Message}", e);
            }

            reply = Reply.Failure;
        }
        catch (GuestMemoryException e)
        {
            Log.RequestRejected(_logger, name, e.Message);
            reply = Reply.Failure;
        }

        if (_end.IsCancellationRequested)
        {
            // The request ended the session (a ring that would not stop): no answer is sent on a
            // connection about to close.
            throw new OperationCanceledException(_end.Token);
        }

        switch (reply.Kind)
        {
            case ReplyKind.Payload:
                await _channel.SendAsync(VhostUserCodec.ReplyHeader((VhostUserRequest)header.Request, reply.Length), _replyBuffer.AsMemory(0, reply.Length), reply.Fds, cancellationToken).ConfigureAwait(false);
                break;
            case ReplyKind.Ack:
            case ReplyKind.Fail:
                // REPLY_ACK (vhost-user.rst, "REPLY_ACK"): every NEED_REPLY is answered, success or not.
                if (needReply)
                {
                    BitConverter.TryWriteBytes(_replyBuffer.AsSpan(0, 8), reply.Kind == ReplyKind.Ack ? 0UL : 1UL);
                    await _channel.SendAsync(VhostUserCodec.ReplyHeader((VhostUserRequest)header.Request, 8), _replyBuffer.AsMemory(0, 8), null, cancellationToken).ConfigureAwait(false);
                }

                break;
        }
    }

    private Reply Dispatch(VhostUserRequest request, VhostUserMessage message)
    {
        ReadOnlySpan<byte> payload = message.Payload.Span;
        switch (request)
        {
            case VhostUserRequest.GET_FEATURES:
                return ReplyU64(OfferedFeatures);
            case VhostUserRequest.SET_FEATURES:
                SetFeatures(VhostUserCodec.ReadU64(payload));
                return Reply.Ack;
            case VhostUserRequest.GET_PROTOCOL_FEATURES:
                return ReplyU64((ulong)_options.ProtocolFeatures);
            case VhostUserRequest.SET_PROTOCOL_FEATURES:
                SetProtocolFeatures((VhostUserProtocolFeatures)VhostUserCodec.ReadU64(payload));
                return Reply.Ack;
            case VhostUserRequest.SET_OWNER:
                // Marks the start of a session. Some front-ends send it before GET_FEATURES and some
                // twice; both are harmless, so it changes nothing here.
                return Reply.Ack;
            case VhostUserRequest.RESET_OWNER:
                // Deprecated; the spec recommends ignoring it or disabling the rings. Disable them.
                StopAllRings();
                return Reply.Ack;
            case VhostUserRequest.GET_QUEUE_NUM:
                return ReplyU64((ulong)_device.QueueCount);
            case VhostUserRequest.GET_MAX_MEM_SLOTS:
                RequireProtocolFeature(VhostUserProtocolFeatures.CONFIGURE_MEM_SLOTS, request);
                return ReplyU64((ulong)_options.MaxMemorySlots);
            case VhostUserRequest.SET_MEM_TABLE:
                SetMemoryTable(message);
                return Reply.Ack;
            case VhostUserRequest.ADD_MEM_REG:
                RequireProtocolFeature(VhostUserProtocolFeatures.CONFIGURE_MEM_SLOTS, request);
                AddMemoryRegion(message);
                return Reply.Ack;
            case VhostUserRequest.REM_MEM_REG:
                RequireProtocolFeature(VhostUserProtocolFeatures.CONFIGURE_MEM_SLOTS, request);
                RemoveMemoryRegion(payload);
                return Reply.Ack;
            case VhostUserRequest.SET_VRING_NUM:
                SetVringNum(VhostUserVringState.Read(payload));
                return Reply.Ack;
            case VhostUserRequest.SET_VRING_ADDR:
                SetVringAddress(VhostUserVringAddr.Read(payload));
                return Reply.Ack;
            case VhostUserRequest.SET_VRING_BASE:
                SetVringBase(VhostUserVringState.Read(payload));
                return Reply.Ack;
            case VhostUserRequest.GET_VRING_BASE:
                return GetVringBase(VhostUserVringState.Read(payload));
            case VhostUserRequest.SET_VRING_KICK:
                SetVringKick(message);
                return Reply.Ack;
            case VhostUserRequest.SET_VRING_CALL:
                SetVringCall(message);
                return Reply.Ack;
            case VhostUserRequest.SET_VRING_ERR:
                SetVringError(message);
                return Reply.Ack;
            case VhostUserRequest.SET_VRING_ENABLE:
                SetVringEnable(VhostUserVringState.Read(payload));
                return Reply.Ack;
            case VhostUserRequest.GET_CONFIG:
                return GetConfig(payload);
            case VhostUserRequest.SET_CONFIG:
                SetConfig(payload);
                return Reply.Ack;
            case VhostUserRequest.RESET_DEVICE:
                RequireProtocolFeature(VhostUserProtocolFeatures.RESET_DEVICE, request);
                StopAllRings();
                ResetDevice();
                return Reply.Ack;
            case VhostUserRequest.SET_STATUS:
                RequireProtocolFeature(VhostUserProtocolFeatures.STATUS, request);
                SetStatus(VhostUserCodec.ReadU64(payload));
                return Reply.Ack;
            case VhostUserRequest.GET_STATUS:
                RequireProtocolFeature(VhostUserProtocolFeatures.STATUS, request);
                return ReplyU64(_status);
            case VhostUserRequest.GET_INFLIGHT_FD:
                return GetInflightFd(payload);
            case VhostUserRequest.SET_INFLIGHT_FD:
                SetInflightFd(message);
                return Reply.Ack;
            case VhostUserRequest.SET_DEVICE_STATE_FD:
                return SetDeviceStateFd(message);
            case VhostUserRequest.CHECK_DEVICE_STATE:
                return CheckDeviceState();
            case VhostUserRequest.SET_BACKEND_REQ_FD:
                SetBackendRequestFd(message);
                return Reply.Ack;
            default:
                throw new RequestRejectedException($"{request} is not implemented by this back-end");
        }
    }

    /// <summary>Requests whose reply carries data (vhost-user.rst, "Communication": the list of requests that need replies).</summary>
    private static bool HasNaturalReply(VhostUserRequest request) => request is
        VhostUserRequest.GET_FEATURES or VhostUserRequest.GET_PROTOCOL_FEATURES or VhostUserRequest.GET_VRING_BASE or
        VhostUserRequest.GET_QUEUE_NUM or VhostUserRequest.GET_MAX_MEM_SLOTS or VhostUserRequest.GET_STATUS or
        VhostUserRequest.GET_CONFIG or VhostUserRequest.GET_INFLIGHT_FD or
        VhostUserRequest.SET_DEVICE_STATE_FD or VhostUserRequest.CHECK_DEVICE_STATE;

    private void RequireProtocolFeature(VhostUserProtocolFeatures feature, VhostUserRequest request)
    {
        if (!Has(feature))
        {
            throw new RequestRejectedException($"{request} needs protocol feature {feature}, which was not negotiated");
        }
    }

    private void SetFeatures(ulong features)
    {
        ulong unknown = features & ~OfferedFeatures;
        if (unknown != 0)
        {
            throw new RequestRejectedException($"features 0x{features:x} include bits not offered (0x{unknown:x})");
        }

        // QEMU sends SET_FEATURES again when it restarts the rings; a change of ring
        // layout only takes effect at the next ring start.
        _ackedFeatures = features;
        Log.FeaturesSet(_logger, features);
        if (!ProtocolFeaturesNegotiated)
        {
            // Without PROTOCOL_FEATURES a ring starts directly in the enabled state (vhost-user.rst, "Ring states").
            foreach (BackendVring vring in _vrings)
            {
                vring.Enabled = true;
            }
        }
    }

    private void SetProtocolFeatures(VhostUserProtocolFeatures features)
    {
        VhostUserProtocolFeatures notOffered = features & ~_options.ProtocolFeatures;
        if (notOffered != 0)
        {
            throw new VhostUserProtocolException($"SET_PROTOCOL_FEATURES acks 0x{(ulong)features:x}, which includes bits never offered (0x{(ulong)notOffered:x})");
        }

        _ackedProtocolFeatures = features;
        Log.ProtocolFeaturesSet(_logger, (ulong)features);
    }

    private void SetStatus(ulong status)
    {
        if (status > byte.MaxValue)
        {
            throw new RequestRejectedException($"status 0x{status:x} does not fit the virtio status byte");
        }

        _status = (byte)status;
    }

    private void ResetDevice()
    {
        try
        {
            // With a worker stuck in the device a reset would wait on it once more and fail.
            if (!_wedged)
            {
                _device.Reset();
            }
        }
        catch (TimeoutException e)
        {
            // A ring's worker is stuck in the device: the reset cannot complete, the device is
            // left as it is, and memory stays mapped (see _wedged).
            _wedged = true;
            Log.RingStuck(_logger, -1, e.Message);
        }

        foreach (BackendVring vring in _vrings)
        {
            vring.Clear();
        }

        _ackedFeatures = 0;
        _status = 0;
    }

    /// <summary>
    /// Raised on a pool thread when a ring's worker stopped on an error (a malformed ring, a call
    /// fd whose write failed): tells the front-end through the ring's error eventfd
    /// (SET_VRING_ERR). Nothing escapes: an error fd that cannot be written is logged, once per
    /// fd.
    /// </summary>
    private void OnDeviceFaulted(DeviceFault fault)
    {
        try
        {
            Log.DeviceFaulted(_logger, fault.QueueIndex, fault.Reason);
            if ((uint)fault.QueueIndex < (uint)_vrings.Length && _vrings[fault.QueueIndex].SignalError() is int errno and not 0)
            {
                Log.ErrorFdFailed(_logger, fault.QueueIndex, new Vmm.Core.Posix.PosixException("write(eventfd)", errno).Message);
            }
        }
        catch (Exception e)
        {
            Log.FaultReportFailed(_logger, fault.QueueIndex, e.Message);
        }
    }

    private Reply ReplyU64(ulong value)
    {
        BitConverter.TryWriteBytes(_replyBuffer.AsSpan(0, 8), value);
        return Reply.Payload(8);
    }

    /// <summary>A new, empty memory table under this back-end's policy for unsealed regions.</summary>
    private GuestMemory NewMemoryTable()
    {
        var memory = new GuestMemory { UnsealedRegions = _options.UnsealedMemory };
        memory.Truncated += OnMemoryTruncated;
        return memory;
    }

    /// <summary>Raised on the SIGBUS guard's thread: the front-end truncated memory it shared.</summary>
    private void OnMemoryTruncated(GuestMemoryRegion region) =>
        EndSession($"the front-end truncated the file behind guest memory region {region} under a running ring; its pages read as zeroes here now");

    private enum ReplyKind
    {
        Ack,
        Fail,
        Payload,
    }

    private readonly record struct Reply(ReplyKind Kind, int Length, IReadOnlyList<System.Runtime.InteropServices.SafeHandle>? Fds)
    {
        public static Reply Ack => new(ReplyKind.Ack, 0, null);

        public static Reply Failure => new(ReplyKind.Fail, 0, null);

        public static Reply Payload(int length, IReadOnlyList<System.Runtime.InteropServices.SafeHandle>? fds = null) => new(ReplyKind.Payload, length, fds);
    }
}
