using Microsoft.Extensions.Logging;
using Vmm.Core.Memory;
using Vmm.Virtio;
using Vmm.Virtio.Spec;
using Vmm.VhostUser.Channel;
using Vmm.VhostUser.Protocol;

namespace Vmm.VhostUser.Backend;

/// <summary>
/// One front-end connection to a back-end: reads requests in order, applies them to the wrapped
/// device and answers. Ends when the front-end hangs up or breaks the protocol; the device is then
/// stopped and reset so the next front-end finds it as new.
/// </summary>
public sealed partial class VhostUserBackendSession : IDisposable
{
    private readonly IVirtioDevice _device;
    private readonly VhostUserChannel _channel;
    private readonly ILogger _logger;
    private readonly VhostUserBackendOptions _options;
    private readonly BackendVring[] _vrings;
    private readonly byte[] _replyBuffer = new byte[VhostUserMessageWriter.MaxMessageSize];

    private GuestMemory _memory = new();
    private ulong _ackedFeatures;
    private VhostUserProtocolFeatures _ackedProtocolFeatures;
    private byte _status;
    private bool _disposed;

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
    /// Serves requests until the front-end disconnects (returns normally), breaks the protocol
    /// (logs and returns) or <paramref name="cancellationToken"/> fires.
    /// </summary>
    public async Task RunAsync(CancellationToken cancellationToken = default)
    {
        try
        {
            while (true)
            {
                using VhostUserMessage message = await _channel.ReceiveAsync(cancellationToken).ConfigureAwait(false);
                await HandleAsync(message, cancellationToken).ConfigureAwait(false);
            }
        }
        catch (VhostUserConnectionLostException e)
        {
            Log.FrontendDisconnected(_logger, e.Message);
        }
        catch (VhostUserProtocolException e)
        {
            Log.ProtocolViolation(_logger, e.Message);
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
        }
        finally
        {
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
        DisposeBackendChannel();
        StopAllRings();
        foreach (BackendVring vring in _vrings)
        {
            vring.Dispose();
        }

        DisposeInflight();
        _memory.Dispose();
        _channel.Dispose();
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
        _device.Reset();
        foreach (BackendVring vring in _vrings)
        {
            vring.Clear();
        }

        _ackedFeatures = 0;
        _status = 0;
    }

    private void OnDeviceFaulted(DeviceFault fault)
    {
        Log.DeviceFaulted(_logger, fault.QueueIndex, fault.Reason);
        if ((uint)fault.QueueIndex < (uint)_vrings.Length)
        {
            // SET_VRING_ERR's eventfd tells the front-end the ring is broken (vhost-user.rst).
            _vrings[fault.QueueIndex].Error?.Signal();
        }
    }

    private Reply ReplyU64(ulong value)
    {
        BitConverter.TryWriteBytes(_replyBuffer.AsSpan(0, 8), value);
        return Reply.Payload(8);
    }

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
