using System.Buffers.Binary;
namespace Vmm.VhostUser.Protocol;

/// <summary>
/// Header validation and fd-count rules for vhost-user messages. Everything here decides from
/// the 12-byte header (and, for fd counts, the already size-checked payload): a receiver calls
/// <see cref="ValidateRequestHeader"/> before it allocates or waits for the payload, so a hostile
/// <c>size</c> of 0xFFFFFFFF costs nothing (the pattern of Kestrel's frame reader and rust-vmm's
/// <c>MAX_MSG_SIZE</c>).
/// </summary>
public static class VhostUserCodec
{
    /// <summary>
    /// The largest payload accepted in either direction: 0x1000, as rust-vmm's <c>MAX_MSG_SIZE</c>.
    /// The spec's <c>size</c> is a u32 but no defined message needs more: the largest are
    /// GET_SHMEM_CONFIG's reply (2056 bytes), SET_CONFIG (268) and SET_MEM_TABLE (264).
    /// </summary>
    public const int MaxPayloadSize = 0x1000;

    /// <summary>
    /// The most fds one message carries: SET_MEM_TABLE's <c>VHOST_MEMORY_BASELINE_NREGIONS</c>, and the
    /// "at most 8 descriptors in each message" of BACKEND_SEND_FD. Receivers size their control
    /// buffers for this and treat truncation as an error.
    /// </summary>
    public const int MaxFdsPerMessage = 8;

    /// <summary>Flags of every reply: version 1 with the reply bit, nothing else.</summary>
    public const uint ReplyFlags = VhostUserHeaderFlags.Version | VhostUserHeaderFlags.Reply;

    /// <summary>True for the request codes the spec defines (1..44). Not Enum.IsDefined: a plain range.</summary>
    public static bool IsKnownRequest(uint request) =>
        request is >= (uint)VhostUserRequest.GET_FEATURES and <= (uint)VhostUserRequest.GET_SHMEM_CONFIG;

    /// <summary>True for the back-end request codes the spec defines (1..10).</summary>
    public static bool IsKnownBackendRequest(uint request) =>
        request is >= (uint)VhostUserBackendRequest.IOTLB_MSG and <= (uint)VhostUserBackendRequest.SHMEM_UNMAP;

    // --- Requests -------------------------------------------------------------------------------

    /// <summary>
    /// Validates a front-end request arriving at a back-end, from the header alone: version 1,
    /// reply bit clear, reserved bits zero, size ≤ <see cref="MaxPayloadSize"/>, and the size the
    /// request code takes (<see cref="VhostUserPayloadRules.ForRequest"/>). Unknown codes get only the
    /// generic checks, so the server can NACK them. Throws <see cref="VhostUserProtocolException"/>.
    /// </summary>
    public static void ValidateRequestHeader(in VhostUserHeader header)
    {
        string name = Describe(header.Request);
        ValidateRequestFlags(header.Flags, name);
        ValidateSizeBound(header.PayloadSize, name);
        if (IsKnownRequest(header.Request))
        {
            var request = (VhostUserRequest)header.Request;
            CheckRule(VhostUserPayloadRules.ForRequest(request), header.PayloadSize, name);
        }
    }

    /// <summary>
    /// Validates a back-end request arriving at the front-end on the back-end channel; the same
    /// checks as <see cref="ValidateRequestHeader"/> with the back-end table.
    /// </summary>
    public static void ValidateBackendRequestHeader(in VhostUserHeader header)
    {
        string name = DescribeBackend(header.Request);
        ValidateRequestFlags(header.Flags, name);
        ValidateSizeBound(header.PayloadSize, name);
        if (IsKnownBackendRequest(header.Request))
        {
            var request = (VhostUserBackendRequest)header.Request;
            CheckRule(VhostUserPayloadRules.ForBackendRequest(request), header.PayloadSize, name);
        }
    }

    // --- Replies --------------------------------------------------------------------------------

    /// <summary>
    /// Validates the back-end's reply to <paramref name="expectedRequest"/>: flags exactly 0x5
    /// (version 1 | reply), the same request code, and the size <see cref="VhostUserPayloadRules.ForReply"/>
    /// allows. Throws <see cref="VhostUserProtocolException"/>.
    /// </summary>
    public static void ValidateReplyHeader(in VhostUserHeader header, VhostUserRequest expectedRequest) =>
        ValidateReplyHeader(header, expectedRequest, VhostUserPayloadRules.ForReply(expectedRequest));

    /// <summary>As <see cref="ValidateReplyHeader(in VhostUserHeader, VhostUserRequest)"/> with an explicit size rule (e.g. <see cref="GetConfigReplyRule"/>).</summary>
    public static void ValidateReplyHeader(in VhostUserHeader header, VhostUserRequest expectedRequest, VhostUserPayloadRule expectedPayload)
    {
        string name = "reply to " + Describe((uint)expectedRequest);
        ValidateReplyFlags(header.Flags, name);
        if (header.Request != (uint)expectedRequest)
        {
            ProtocolThrowHelper.ThrowProtocol(
                $"reply carries request code {Describe(header.Request)}, expected {expectedRequest} ({(uint)expectedRequest})");
        }

        ValidateSizeBound(header.PayloadSize, name);
        CheckRule(expectedPayload, header.PayloadSize, name);
    }

    /// <summary>
    /// Validates the front-end's reply to a back-end request on the back-end channel: flags 0x5,
    /// the same code, a u64 payload.
    /// </summary>
    public static void ValidateBackendReplyHeader(in VhostUserHeader header, VhostUserBackendRequest expectedRequest)
    {
        string name = "reply to " + DescribeBackend((uint)expectedRequest);
        ValidateReplyFlags(header.Flags, name);
        if (header.Request != (uint)expectedRequest)
        {
            ProtocolThrowHelper.ThrowProtocol(
                $"back-end reply carries request code {header.Request}, expected BACKEND_{expectedRequest} ({(uint)expectedRequest})");
        }

        ValidateSizeBound(header.PayloadSize, name);
        CheckRule(VhostUserPayloadRules.ForBackendReply(expectedRequest), header.PayloadSize, name);
    }

    /// <summary>
    /// GET_CONFIG's reply "MUST match the front-end's request" in size, or be empty to signal an
    /// error (vhost-user.rst, VHOST_USER_GET_CONFIG).
    /// </summary>
    public static VhostUserPayloadRule GetConfigReplyRule(int requestPayloadSize) =>
        requestPayloadSize == 0
            ? VhostUserPayloadRule.Empty
            : VhostUserPayloadRule.Range(0, requestPayloadSize, requestPayloadSize);

    /// <summary>Reads a REPLY_ACK (or any u64) reply payload: 0 is success, anything else failure.</summary>
    public static ulong ReadU64(ReadOnlySpan<byte> payload)
    {
        if (payload.Length != VhostUserU64.Size)
        {
            ProtocolThrowHelper.ThrowProtocol($"u64 payload must be 8 bytes, got {payload.Length}");
        }

        return VhostUserU64.Read(payload).Value;
    }

    // --- Headers to send ------------------------------------------------------------------------

    /// <summary>A request header: version 1, NEED_REPLY when asked.</summary>
    public static VhostUserHeader RequestHeader(VhostUserRequest request, int payloadSize, bool needReply = false) =>
        new((uint)request, RequestFlags(needReply), CheckedSize(payloadSize));

    /// <summary>A reply header: flags 0x5.</summary>
    public static VhostUserHeader ReplyHeader(VhostUserRequest request, int payloadSize) =>
        new((uint)request, ReplyFlags, CheckedSize(payloadSize));

    /// <summary>A back-end request header for the back-end channel.</summary>
    public static VhostUserHeader BackendRequestHeader(VhostUserBackendRequest request, int payloadSize, bool needReply = false) =>
        new((uint)request, RequestFlags(needReply), CheckedSize(payloadSize));

    /// <summary>A front-end reply header on the back-end channel.</summary>
    public static VhostUserHeader BackendReplyHeader(VhostUserBackendRequest request, int payloadSize) =>
        new((uint)request, ReplyFlags, CheckedSize(payloadSize));

    /// <summary>True when the header asks for a REPLY_ACK (need_reply, bit 3).</summary>
    public static bool NeedsReply(in VhostUserHeader header) => (header.Flags & VhostUserHeaderFlags.NeedReply) != 0;

    // --- File descriptors -----------------------------------------------------------------------

    /// <summary>
    /// The fds a front-end request may carry, from its code and its (already size-checked) payload
    /// (vhost-user.rst, "Communication", and each message's text):
    /// SET_MEM_TABLE one per region; SET_VRING_KICK/CALL/ERR one unless the NOFD bit is set;
    /// SET_LOG_BASE (log description), SET_LOG_FD, SET_BACKEND_REQ_FD, SET_INFLIGHT_FD, GPU_SET_SOCKET,
    /// ADD_MEM_REG and SET_DEVICE_STATE_FD exactly one; REM_MEM_REG none, though the spec lets a
    /// back-end accept (and close) one from "existing incorrect implementations"; everything else none.
    /// Unknown codes: any number up to <see cref="MaxFdsPerMessage"/>; the receiver closes them with its NACK.
    /// </summary>
    public static VhostUserFdRange ExpectedFds(uint request, ReadOnlySpan<byte> payload)
    {
        if (!IsKnownRequest(request))
        {
            return new VhostUserFdRange(0, MaxFdsPerMessage);
        }

        switch ((VhostUserRequest)request)
        {
            case VhostUserRequest.SET_MEM_TABLE:
                uint n = VhostUserMemoryHeader.Read(payload).NRegions;
                return n <= MaxFdsPerMessage
                    ? VhostUserFdRange.Exactly((int)n)
                    : ProtocolThrowHelper.ThrowProtocol<VhostUserFdRange>($"SET_MEM_TABLE: {n} regions exceed {MaxFdsPerMessage}");

            case VhostUserRequest.SET_VRING_KICK:
            case VhostUserRequest.SET_VRING_CALL:
            case VhostUserRequest.SET_VRING_ERR:
                return VhostUserFdRange.Exactly(VhostUserVringFile.Parse(ReadU64(payload)).ExpectedFdCount);

            case VhostUserRequest.SET_LOG_BASE:
                // The 16-byte log description comes with the log fd (LOG_SHMFD); the spec's bare u64
                // form predates fd passing, so it may or may not carry one.
                return payload.Length == VhostUserLog.Size ? VhostUserFdRange.One : new VhostUserFdRange(0, 1);

            case VhostUserRequest.SET_LOG_FD:
            case VhostUserRequest.SET_BACKEND_REQ_FD:
            case VhostUserRequest.SET_INFLIGHT_FD:
            case VhostUserRequest.GPU_SET_SOCKET:
            case VhostUserRequest.ADD_MEM_REG:
            case VhostUserRequest.SET_DEVICE_STATE_FD:
                return VhostUserFdRange.One;

            case VhostUserRequest.REM_MEM_REG:
                return new VhostUserFdRange(0, 1);

            default:
                return VhostUserFdRange.None;
        }
    }

    /// <summary>
    /// The fds the back-end's reply to <paramref name="request"/> may carry: GET_INFLIGHT_FD one,
    /// or none when it refuses with mmap_size 0; POSTCOPY_ADVISE one; SET_DEVICE_STATE_FD one unless the reply's bit 8 says none;
    /// GET_SHARED_OBJECT one on success or none; everything else none.
    /// </summary>
    public static VhostUserFdRange ExpectedReplyFds(VhostUserRequest request, ReadOnlySpan<byte> replyPayload) => request switch
    {
        VhostUserRequest.GET_INFLIGHT_FD => replyPayload.Length >= sizeof(ulong) && BinaryPrimitives.ReadUInt64LittleEndian(replyPayload) == 0
            ? VhostUserFdRange.None
            : VhostUserFdRange.One,
        VhostUserRequest.POSTCOPY_ADVISE => VhostUserFdRange.One,
        VhostUserRequest.SET_DEVICE_STATE_FD =>
            VhostUserDeviceStateTransfer.ParseReply(ReadU64(replyPayload)).HasFd ? VhostUserFdRange.One : VhostUserFdRange.None,
        VhostUserRequest.GET_SHARED_OBJECT => new VhostUserFdRange(0, 1),
        _ => VhostUserFdRange.None,
    };

    /// <summary>
    /// The fds a back-end request may carry: VRING_HOST_NOTIFIER_MSG one unless its area's NOFD bit
    /// is set; SHMEM_MAP one; others none; unknown codes up to <see cref="MaxFdsPerMessage"/>.
    /// </summary>
    public static VhostUserFdRange ExpectedBackendFds(uint request, ReadOnlySpan<byte> payload)
    {
        if (!IsKnownBackendRequest(request))
        {
            return new VhostUserFdRange(0, MaxFdsPerMessage);
        }

        return (VhostUserBackendRequest)request switch
        {
            VhostUserBackendRequest.VRING_HOST_NOTIFIER_MSG =>
                VhostUserFdRange.Exactly(VhostUserVringArea.Read(payload).IndexAndFlags.ExpectedFdCount),
            VhostUserBackendRequest.SHMEM_MAP => VhostUserFdRange.One,
            _ => VhostUserFdRange.None,
        };
    }

    /// <summary>
    /// The fds the front-end's reply to a back-end request may carry: SHARED_OBJECT_LOOKUP one
    /// with a zero status, none otherwise; everything else none.
    /// </summary>
    public static VhostUserFdRange ExpectedBackendReplyFds(VhostUserBackendRequest request, ReadOnlySpan<byte> replyPayload) =>
        request == VhostUserBackendRequest.SHARED_OBJECT_LOOKUP && ReadU64(replyPayload) == 0
            ? VhostUserFdRange.One
            : VhostUserFdRange.None;

    /// <summary>Throws <see cref="VhostUserProtocolException"/> unless <paramref name="fdCount"/> fits <see cref="ExpectedFds"/>.</summary>
    public static void ValidateFdCount(uint request, ReadOnlySpan<byte> payload, int fdCount)
    {
        var expected = ExpectedFds(request, payload);
        if (!expected.Allows(fdCount))
        {
            ProtocolThrowHelper.ThrowProtocol($"{Describe(request)} carries {fdCount} fds, expected {expected}");
        }
    }

    /// <summary>Throws unless <paramref name="fdCount"/> fits <see cref="ExpectedBackendFds"/>.</summary>
    public static void ValidateBackendFdCount(uint request, ReadOnlySpan<byte> payload, int fdCount)
    {
        var expected = ExpectedBackendFds(request, payload);
        if (!expected.Allows(fdCount))
        {
            ProtocolThrowHelper.ThrowProtocol($"{DescribeBackend(request)} carries {fdCount} fds, expected {expected}");
        }
    }

    /// <summary>Throws unless <paramref name="fdCount"/> fits <see cref="ExpectedReplyFds"/>.</summary>
    public static void ValidateReplyFdCount(VhostUserRequest request, ReadOnlySpan<byte> replyPayload, int fdCount)
    {
        var expected = ExpectedReplyFds(request, replyPayload);
        if (!expected.Allows(fdCount))
        {
            ProtocolThrowHelper.ThrowProtocol($"reply to {request} carries {fdCount} fds, expected {expected}");
        }
    }

    /// <summary>"GET_FEATURES (1)" for known codes, "unknown request 99" otherwise.</summary>
    public static string Describe(uint request) =>
        IsKnownRequest(request) ? $"{(VhostUserRequest)request} ({request})" : $"unknown request {request}";

    /// <summary>"BACKEND_CONFIG_CHANGE_MSG (2)" for known codes, "unknown back-end request 99" otherwise.</summary>
    public static string DescribeBackend(uint request) =>
        IsKnownBackendRequest(request) ? $"BACKEND_{(VhostUserBackendRequest)request} ({request})" : $"unknown back-end request {request}";

    // --- Checks ---------------------------------------------------------------------------------

    private static uint RequestFlags(bool needReply) =>
        VhostUserHeaderFlags.Version | (needReply ? VhostUserHeaderFlags.NeedReply : 0);

    private static uint CheckedSize(int payloadSize)
    {
        if ((uint)payloadSize > MaxPayloadSize)
        {
            throw new ArgumentOutOfRangeException(nameof(payloadSize), payloadSize, $"payload is at most {MaxPayloadSize} bytes");
        }

        return (uint)payloadSize;
    }

    private static void ValidateRequestFlags(uint flags, string name)
    {
        // vhost-user.rst, "Header": lower 2 bits version (currently 1), bit 2 reply, bit 3 need_reply.
        uint version = flags & VhostUserHeaderFlags.VersionMask;
        if (version != VhostUserHeaderFlags.Version)
        {
            ProtocolThrowHelper.ThrowProtocol($"{name}: version {version} in flags 0x{flags:x}, expected 1");
        }

        if ((flags & VhostUserHeaderFlags.Reply) != 0)
        {
            ProtocolThrowHelper.ThrowProtocol($"{name}: reply bit set in flags 0x{flags:x} on a request");
        }

        if ((flags & VhostUserHeaderFlags.ReservedMask) != 0)
        {
            ProtocolThrowHelper.ThrowProtocol(
                $"{name}: reserved flag bits 0x{flags & VhostUserHeaderFlags.ReservedMask:x} set");
        }
    }

    private static void ValidateReplyFlags(uint flags, string name)
    {
        if (flags == ReplyFlags)
        {
            return;
        }

        uint version = flags & VhostUserHeaderFlags.VersionMask;
        string reason =
            version != VhostUserHeaderFlags.Version ? $"version {version}, expected 1"
            : (flags & VhostUserHeaderFlags.Reply) == 0 ? "reply bit clear"
            : (flags & VhostUserHeaderFlags.NeedReply) != 0 ? "need_reply set on a reply"
            : $"reserved bits 0x{flags & VhostUserHeaderFlags.ReservedMask:x} set";
        ProtocolThrowHelper.ThrowProtocol($"{name}: flags 0x{flags:x} must be 0x{ReplyFlags:x} ({reason})");
    }

    private static void ValidateSizeBound(uint size, string name)
    {
        if (size > MaxPayloadSize)
        {
            ProtocolThrowHelper.ThrowProtocol(
                $"{name}: payload size {size} (0x{size:x}) exceeds the maximum {MaxPayloadSize}");
        }
    }

    private static void CheckRule(VhostUserPayloadRule rule, uint size, string name)
    {
        if (!rule.Allows(size))
        {
            ProtocolThrowHelper.ThrowProtocol($"{name}: payload size {size} does not fit {rule}");
        }
    }
}
