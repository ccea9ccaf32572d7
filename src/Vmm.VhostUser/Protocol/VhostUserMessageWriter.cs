namespace Vmm.VhostUser.Protocol;

/// <summary>
/// Fills a header and its payload into a caller-provided span. Every method returns the total
/// bytes written (12 + payload). Fds are not part of the bytes; the channel attaches them to the
/// first <c>sendmsg</c> of the message.
/// </summary>
public static class VhostUserMessageWriter
{
    /// <summary>The largest message: header plus <see cref="VhostUserCodec.MaxPayloadSize"/>.</summary>
    public const int MaxMessageSize = VhostUserHeader.Size + VhostUserCodec.MaxPayloadSize;

    public static int WriteRequest(Span<byte> destination, VhostUserRequest request, ReadOnlySpan<byte> payload, bool needReply = false) =>
        Write(destination, VhostUserCodec.RequestHeader(request, payload.Length, needReply), payload);

    public static int WriteRequest<T>(Span<byte> destination, VhostUserRequest request, in T payload, bool needReply = false)
        where T : unmanaged =>
        WriteRequest(destination, request, WireStruct.AsBytes(in payload), needReply);

    /// <summary>A request without a payload (GET_FEATURES, SET_OWNER, ...).</summary>
    public static int WriteRequest(Span<byte> destination, VhostUserRequest request, bool needReply = false) =>
        WriteRequest(destination, request, ReadOnlySpan<byte>.Empty, needReply);

    /// <summary>A request whose payload is one u64 (SET_FEATURES, SET_VRING_KICK, ...).</summary>
    public static int WriteRequestU64(Span<byte> destination, VhostUserRequest request, ulong value, bool needReply = false) =>
        WriteRequest(destination, request, new VhostUserU64(value), needReply);

    public static int WriteReply(Span<byte> destination, VhostUserRequest request, ReadOnlySpan<byte> payload) =>
        Write(destination, VhostUserCodec.ReplyHeader(request, payload.Length), payload);

    public static int WriteReply<T>(Span<byte> destination, VhostUserRequest request, in T payload) where T : unmanaged =>
        WriteReply(destination, request, WireStruct.AsBytes(in payload));

    public static int WriteReplyU64(Span<byte> destination, VhostUserRequest request, ulong value) =>
        WriteReply(destination, request, new VhostUserU64(value));

    /// <summary>
    /// The REPLY_ACK answer (vhost-user.rst, "VHOST_USER_PROTOCOL_F_REPLY_ACK"): a u64, zero on
    /// success and non-zero on failure.
    /// </summary>
    public static int WriteReplyAck(Span<byte> destination, VhostUserRequest request, ulong status) =>
        WriteReplyU64(destination, request, status);

    /// <summary>The REPLY_ACK answer from a bool: 0 for success, 1 for failure.</summary>
    public static int WriteReplyAck(Span<byte> destination, VhostUserRequest request, bool success) =>
        WriteReplyU64(destination, request, success ? 0UL : 1UL);

    public static int WriteBackendRequest(Span<byte> destination, VhostUserBackendRequest request, ReadOnlySpan<byte> payload, bool needReply = false) =>
        Write(destination, VhostUserCodec.BackendRequestHeader(request, payload.Length, needReply), payload);

    public static int WriteBackendRequest<T>(Span<byte> destination, VhostUserBackendRequest request, in T payload, bool needReply = false)
        where T : unmanaged =>
        WriteBackendRequest(destination, request, WireStruct.AsBytes(in payload), needReply);

    public static int WriteBackendReplyAck(Span<byte> destination, VhostUserBackendRequest request, ulong status) =>
        Write(destination, VhostUserCodec.BackendReplyHeader(request, VhostUserU64.Size), WireStruct.AsBytes(new VhostUserU64(status)));

    /// <summary>Convenience for tests and cold paths: a new array holding one request.</summary>
    public static byte[] EncodeRequest(VhostUserRequest request, ReadOnlySpan<byte> payload, bool needReply = false)
    {
        var buffer = new byte[VhostUserHeader.Size + payload.Length];
        WriteRequest(buffer, request, payload, needReply);
        return buffer;
    }

    public static byte[] EncodeRequest<T>(VhostUserRequest request, in T payload, bool needReply = false) where T : unmanaged =>
        EncodeRequest(request, WireStruct.AsBytes(in payload), needReply);

    public static byte[] EncodeReply(VhostUserRequest request, ReadOnlySpan<byte> payload)
    {
        var buffer = new byte[VhostUserHeader.Size + payload.Length];
        WriteReply(buffer, request, payload);
        return buffer;
    }

    public static byte[] EncodeReply<T>(VhostUserRequest request, in T payload) where T : unmanaged =>
        EncodeReply(request, WireStruct.AsBytes(in payload));

    private static int Write(Span<byte> destination, in VhostUserHeader header, ReadOnlySpan<byte> payload)
    {
        int total = VhostUserHeader.Size + payload.Length;
        if (destination.Length < total)
        {
            ProtocolThrowHelper.ThrowDestinationTooShort(total, destination.Length);
        }

        header.Write(destination);
        payload.CopyTo(destination[VhostUserHeader.Size..]);
        return total;
    }
}
