using System.Net.Sockets;
using System.Runtime.InteropServices;
using Vmm.Core.Memory;
using Vmm.Core.Posix;
using Vmm.Core.Posix.Sockets;
using Vmm.VhostUser.Channel;
using Vmm.Virtio.Queues;
using Vmm.VhostUser.Protocol;

namespace Vmm.VhostUser.Frontend;

/// <summary>Settings of a <see cref="VhostUserFrontendConnection"/>.</summary>
public sealed record VhostUserFrontendConnectionOptions
{
    public static readonly TimeSpan DefaultRequestTimeout = TimeSpan.FromSeconds(5);

    public static VhostUserFrontendConnectionOptions Default { get; } = new();

    /// <summary>
    /// How long one request (send plus its reply) may take. A back-end that stays silent longer
    /// is treated as gone: the channel is closed and <see cref="VhostUserConnectionLostException"/> thrown.
    /// </summary>
    public TimeSpan RequestTimeout { get; init; } = DefaultRequestTimeout;

    /// <summary>
    /// Protocol features we are willing to ack; intersected with
    /// <see cref="VhostUserFrontendConnection.SupportedProtocolFeatures"/> and the back-end's offer.
    /// </summary>
    public VhostUserProtocolFeatures ProtocolFeatures { get; init; } = VhostUserFrontendConnection.SupportedProtocolFeatures;

    /// <summary>Bytes of device configuration fetched by the handshake's GET_CONFIG (0: none).</summary>
    public int ConfigSize { get; init; }
}

/// <summary>What the handshake learnt about the back-end.</summary>
public sealed record VhostUserBackendInfo(
    ulong Features,
    VhostUserProtocolFeatures OfferedProtocolFeatures,
    VhostUserProtocolFeatures ProtocolFeatures,
    int? QueueCount,
    ulong? MaxMemSlots,
    byte[]? Config);

/// <summary>A reply from the back-end: header, payload copy and the fds it carried (owned by the reply).</summary>
public sealed class VhostUserReply : IDisposable
{
    public VhostUserReply(VhostUserHeader header, byte[] payload, SafeFileDescriptor[] fds)
    {
        Header = header;
        Payload = payload;
        Fds = fds;
    }

    public VhostUserHeader Header { get; }

    public byte[] Payload { get; }

    public SafeFileDescriptor[] Fds { get; }

    /// <summary>Transfers ownership of fd <paramref name="index"/> to the caller.</summary>
    public SafeFileDescriptor TakeFd(int index)
    {
        SafeFileDescriptor fd = Fds[index] ?? throw new InvalidOperationException($"Fd {index} was already taken.");
        Fds[index] = null!;
        return fd;
    }

    public void Dispose()
    {
        foreach (SafeFileDescriptor? fd in Fds)
        {
            fd?.Dispose();
        }
    }
}

/// <summary>
/// The inflight region the back-end handed out with GET_INFLIGHT_FD (vhost-user.rst, "Inflight
/// I/O tracking"): kept by the front-end across reconnects so the next back-end can resubmit
/// what was in flight. Owns <paramref name="Fd"/>.
/// </summary>
public sealed record VhostUserInflightRegion(SafeFileDescriptor Fd, ulong MmapSize, ulong MmapOffset, ushort NumQueues, ushort QueueSize)
    : IDisposable
{
    /// <summary>
    /// The largest region a back-end may describe: 64 queues of 32768 descriptors in the packed
    /// layout (vhost-user.rst, "Inflight I/O tracking": 16-byte descriptors plus a 32-byte header
    /// per queue) fit many times over; anything larger is refused before it sizes a copy.
    /// </summary>
    public const ulong MaxSize = 256UL << 20;

    /// <summary>
    /// Checks what a back-end's GET_INFLIGHT_FD reply says against the file it sent: a size up to
    /// <see cref="MaxSize"/>, and the described range inside the file (fstat), so that nothing
    /// sized by the reply can read or map beyond it. Null when it holds; else why not.
    /// </summary>
    public static string? Validate(ulong mmapSize, ulong mmapOffset, ulong fileSize)
    {
        if (mmapSize > MaxSize)
        {
            return $"an inflight region of {mmapSize} bytes, more than the {MaxSize} allowed";
        }

        return mmapOffset > fileSize || mmapSize > fileSize - mmapOffset
            ? $"an inflight region of {mmapSize} bytes at offset {mmapOffset} of a file of {fileSize} bytes"
            : null;
    }

    /// <summary>
    /// A copy of the region's bytes through pread(2), never a mapping: the back-end's file may
    /// shrink at any time, and a read past its end is a short read, not a SIGBUS. The range is
    /// checked against the file's size again first.
    /// </summary>
    public byte[] ReadAll()
    {
        ulong fileSize = MemFd.GetFileSize(Fd);
        if (Validate(MmapSize, MmapOffset, fileSize) is { } problem)
        {
            throw new VhostUserProtocolException($"The back-end's inflight file no longer holds {problem}.");
        }

        byte[] bytes = new byte[MmapSize];
        using var file = new Microsoft.Win32.SafeHandles.SafeFileHandle(Fd.DangerousGetHandle(), ownsHandle: false);
        bool added = false;
        Fd.DangerousAddRef(ref added);
        try
        {
            int total = 0;
            while (total < bytes.Length)
            {
                int n = RandomAccess.Read(file, bytes.AsSpan(total), (long)MmapOffset + total);
                if (n == 0)
                {
                    throw new VhostUserProtocolException($"The back-end's inflight file ended {bytes.Length - total} bytes early.");
                }

                total += n;
            }
        }
        finally
        {
            if (added)
            {
                Fd.DangerousRelease();
            }
        }

        return bytes;
    }

    public void Dispose() => Fd.Dispose();
}

/// <summary>
/// Where one ring lives in the back-end's address space and where it resumes (vhost-user.rst,
/// SET_VRING_NUM, SET_VRING_ADDR, SET_VRING_BASE): size, ring addresses already translated to
/// our user addresses, and the encoded base.
/// </summary>
public sealed record VhostUserRingAddresses(
    int Index,
    ushort Size,
    ulong DescriptorUserAddress,
    ulong DriverUserAddress,
    ulong DeviceUserAddress,
    uint Base)
{
    /// <summary>
    /// The guest-physical address of the used ring when its writes are logged (SET_VRING_ADDR with
    /// VHOST_VRING_F_LOG, vhost-user.rst "Migration"); null while not logging.
    /// </summary>
    public ulong? LogGuestAddress { get; init; }

    /// <summary>The addresses of ring <paramref name="index"/> at <paramref name="queue"/>, resuming at <paramref name="state"/>.</summary>
    public static VhostUserRingAddresses For(int index, GuestMemory memory, VirtqueueParams queue, bool packed, VirtqueueState state)
    {
        ArgumentNullException.ThrowIfNull(memory);
        ArgumentNullException.ThrowIfNull(queue);
        (ulong descriptor, ulong driver, ulong device) = VhostUserFrontendConnection.TranslateRing(memory, queue, packed);
        return new VhostUserRingAddresses(index, queue.Size, descriptor, driver, device, VhostUserFrontendConnection.EncodeBase(state, packed));
    }
}

/// <summary>
/// Everything one ring needs to run in the back-end (vhost-user.rst, "Starting and stopping
/// rings"): size, ring addresses already translated to our user addresses, where to resume,
/// and the kick and call eventfds.
/// </summary>
public sealed record VhostUserRingSetup(
    int Index,
    ushort Size,
    ulong DescriptorUserAddress,
    ulong DriverUserAddress,
    ulong DeviceUserAddress,
    uint Base,
    SafeFileDescriptor Kick,
    SafeFileDescriptor Call)
{
    public VhostUserRingAddresses Addresses => new(Index, Size, DescriptorUserAddress, DriverUserAddress, DeviceUserAddress, Base);
}

/// <summary>
/// The front-end's side of one vhost-user connection, without actors: request helpers in the
/// shape of openvmm's frontend (<c>send_and_recv</c>, <c>validate_reply</c>, <c>send_get_u64</c>),
/// the handshake in the order strict back-ends need, memory table export and the ring lifecycle.
/// </summary>
/// <remarks>
/// One request is in flight at a time (a <see cref="SemaphoreSlim"/>), so replies match requests
/// in order. Every request has a deadline (<see cref="VhostUserFrontendConnectionOptions.RequestTimeout"/>);
/// missing it, a cancellation in the middle of a request, a lost peer or a protocol violation
/// closes the channel: after any of them the byte stream is out of step and the connection is dead.
/// </remarks>
public sealed partial class VhostUserFrontendConnection : IDisposable
{
    /// <summary>Protocol features this front-end implements; never bits ≥ 20.</summary>
    public const VhostUserProtocolFeatures SupportedProtocolFeatures =
        VhostUserProtocolFeatures.MQ |
        VhostUserProtocolFeatures.REPLY_ACK |
        VhostUserProtocolFeatures.BACKEND_REQ |
        VhostUserProtocolFeatures.CONFIG |
        VhostUserProtocolFeatures.RESET_DEVICE |
        VhostUserProtocolFeatures.CONFIGURE_MEM_SLOTS |
        VhostUserProtocolFeatures.STATUS |
        VhostUserProtocolFeatures.INFLIGHT_SHMFD |
        VhostUserProtocolFeatures.DEVICE_STATE |
        VhostUserProtocolFeatures.LOG_SHMFD;

    private readonly VhostUserFrontendConnectionOptions _options;
    private readonly SemaphoreSlim _requestLock = new(1, 1);
    private readonly object _expectationLock = new();

    // The reply the channel may deliver next; read by the channel's header validator so a
    // wrong code or size is rejected before any payload byte is read.
    private VhostUserRequest? _expectedReply;
    private VhostUserPayloadRule _expectedRule;
    private readonly CancellationTokenSource _lifetime = new();
    private string? _deadReason;
    private int _disposed;

    private VhostUserFrontendConnection(VhostUserFrontendConnectionOptions? options)
    {
        _options = options ?? VhostUserFrontendConnectionOptions.Default;
    }

    // Assigned right after construction; the channel needs this object's header validator.
    private VhostUserChannel _channel = null!;
    private Socket? _socket;

    private VhostUserChannelOptions ChannelOptions => new() { HeaderValidator = ValidateIncomingHeader };

    /// <summary>The options this connection runs with.</summary>
    public VhostUserFrontendConnectionOptions Options => _options;

    /// <summary>Features the back-end offered (GET_FEATURES); 0 before the handshake.</summary>
    public ulong BackendFeatures { get; private set; }

    /// <summary>Protocol features the back-end offered (GET_PROTOCOL_FEATURES).</summary>
    public VhostUserProtocolFeatures OfferedProtocolFeatures { get; private set; }

    /// <summary>Protocol features acked by SET_PROTOCOL_FEATURES.</summary>
    public VhostUserProtocolFeatures ProtocolFeatures { get; private set; }

    /// <summary>The virtio features last sent with SET_FEATURES, or null.</summary>
    public ulong? AckedFeatures { get; private set; }

    /// <summary>The handshake's result, once it completed.</summary>
    public VhostUserBackendInfo? Info { get; private set; }

    /// <summary>True once the connection was lost, timed out or broke the protocol.</summary>
    public bool IsDead => Volatile.Read(ref _deadReason) is not null;

    public bool HasProtocolFeature(VhostUserProtocolFeatures feature) => (ProtocolFeatures & feature) == feature;

    /// <summary>True when VHOST_USER_F_PROTOCOL_FEATURES (bit 30) was acked in SET_FEATURES: rings then start disabled.</summary>
    public bool RingsNeedEnable => ((AckedFeatures ?? 0) & VhostUserVirtioFeatures.PROTOCOL_FEATURES) != 0;

    /// <summary>Connects to the back-end's socket at <paramref name="socketPath"/> (no handshake yet).</summary>
    public static async Task<VhostUserFrontendConnection> ConnectAsync(
        string socketPath, VhostUserFrontendConnectionOptions? options = null, CancellationToken cancellationToken = default)
    {
        ArgumentException.ThrowIfNullOrEmpty(socketPath);
        var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            await socket.ConnectAsync(new UnixDomainSocketEndPoint(socketPath), cancellationToken).ConfigureAwait(false);
        }
        catch (SocketException e)
        {
            socket.Dispose();

            // connect(2) reports ENOENT for a missing path; the BCL maps it to AddressNotAvailable.
            if (!File.Exists(socketPath) && !Directory.Exists(socketPath))
            {
                throw new FileNotFoundException($"vhost-user socket {socketPath} does not exist.", socketPath, e);
            }

            throw e.SocketErrorCode == SocketError.ConnectionRefused
                ? new IOException($"Connection to vhost-user socket {socketPath} refused: nothing is listening on it.", e)
                : new IOException($"Cannot connect to vhost-user socket {socketPath}: {e.Message}", e);
        }
        catch
        {
            socket.Dispose();
            throw;
        }

        return FromSocket(socket, options);
    }

    /// <summary>Wraps a connected AF_UNIX stream socket (a socketpair end, an accepted socket); takes ownership.</summary>
    public static VhostUserFrontendConnection FromSocket(Socket socket, VhostUserFrontendConnectionOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(socket);
        var connection = new VhostUserFrontendConnection(options);
        connection._socket = socket;
        connection._channel = VhostUserChannel.FromSocket(socket, connection.ChannelOptions);
        return connection;
    }

    /// <summary>
    /// A connection over socketpair(2) and the raw channel of the other end, for a back-end in
    /// this process (dogfood tests, embedded back-ends).
    /// </summary>
    public static (VhostUserFrontendConnection Frontend, VhostUserChannel Backend) CreatePair(
        VhostUserFrontendConnectionOptions? options = null, VhostUserChannelOptions? backendOptions = null)
    {
        (Socket first, Socket second) = UnixSocketPair.Create();
        return (FromSocket(first, options), VhostUserChannel.FromSocket(second, backendOptions));
    }

    // --- Request helpers ----------------------------------------------------------------------

    /// <summary>
    /// Sends a request that has no reply of its own. With <paramref name="needReply"/> (default:
    /// whenever REPLY_ACK is negotiated) it sets NEED_REPLY and waits for the u64 ack; a non-zero
    /// ack throws <see cref="VhostUserRequestFailedException"/>.
    /// </summary>
    public Task SendAsync(
        VhostUserRequest request, ReadOnlyMemory<byte> payload = default, IReadOnlyList<SafeHandle>? fds = null,
        bool? needReply = null, CancellationToken cancellationToken = default)
    {
        bool ack = needReply ?? HasProtocolFeature(VhostUserProtocolFeatures.REPLY_ACK);
        if (ack && !HasProtocolFeature(VhostUserProtocolFeatures.REPLY_ACK))
        {
            throw new InvalidOperationException($"{request}: NEED_REPLY without a negotiated REPLY_ACK.");
        }

        return RunAsync(request, async ct =>
        {
            var header = VhostUserCodec.RequestHeader(request, payload.Length, ack);
            if (!ack)
            {
                await _channel.SendAsync(header, payload, fds, ct).ConfigureAwait(false);
                return 0;
            }

            using VhostUserReply reply = await ExchangeAsync(header, payload, fds, request, VhostUserPayloadRule.U64, ct)
                .ConfigureAwait(false);
            ulong status = VhostUserCodec.ReadU64(reply.Payload);
            return status == 0 ? 0 : throw new VhostUserRequestFailedException(request, status);
        }, cancellationToken);
    }

    /// <summary>
    /// Sends a request that the back-end answers (GET_*), and returns the validated reply: flags
    /// exactly 0x5, the same request code, a size the request allows, the fds it may carry.
    /// </summary>
    public Task<VhostUserReply> SendAndReceiveAsync(
        VhostUserRequest request, ReadOnlyMemory<byte> payload = default, IReadOnlyList<SafeHandle>? fds = null,
        CancellationToken cancellationToken = default)
    {
        VhostUserPayloadRule rule = request == VhostUserRequest.GET_CONFIG
            ? VhostUserCodec.GetConfigReplyRule(payload.Length)
            : VhostUserPayloadRules.ForReply(request);
        return RunAsync(
            request,
            ct => ExchangeAsync(VhostUserCodec.RequestHeader(request, payload.Length), payload, fds, request, rule, ct),
            cancellationToken);
    }

    /// <summary>Sends a u64-valued SET request (acked when REPLY_ACK is negotiated).</summary>
    public Task SendU64Async(VhostUserRequest request, ulong value, IReadOnlyList<SafeHandle>? fds = null, CancellationToken cancellationToken = default) =>
        SendAsync(request, U64(value), fds, cancellationToken: cancellationToken);

    /// <summary>Sends a GET request without payload and returns its u64 answer.</summary>
    public async Task<ulong> GetU64Async(VhostUserRequest request, CancellationToken cancellationToken = default)
    {
        using VhostUserReply reply = await SendAndReceiveAsync(request, cancellationToken: cancellationToken).ConfigureAwait(false);
        return VhostUserCodec.ReadU64(reply.Payload);
    }

    /// <summary>
    /// Watches the connection while no request is in flight, the way QEMU keeps a G_IO_HUP/G_IO_IN
    /// watch on its vhost-user chardev: a pending readiness read (a 1-byte MSG_PEEK through the
    /// BCL's epoll), not a poll on a timer. Whenever the socket becomes readable it takes the
    /// request lock, so a reply being read by its request is never mistaken: with the lock held and
    /// no request in flight, anything readable is either EOF (the back-end hung up) or bytes the
    /// back-end sent unasked. Both end the connection: the stream is out of step and nothing on it
    /// can be trusted (vhost-user.rst: the back-end only answers; its own requests travel on the
    /// back-end channel). Completes with the reason the connection died; runs until then, or until
    /// <paramref name="cancellationToken"/> is cancelled.
    /// </summary>
    public async Task<string> WatchIdleAsync(CancellationToken cancellationToken)
    {
        while (true)
        {
            try
            {
                await _channel.WaitForDataAsync(cancellationToken).ConfigureAwait(false);
            }
            catch (Exception e) when (e is VhostUserConnectionLostException or ObjectDisposedException or SocketException)
            {
                string lost = Volatile.Read(ref _deadReason) ?? "the back-end closed the connection";
                MarkDead(lost);
                return lost;
            }

            await _requestLock.WaitAsync(cancellationToken).ConfigureAwait(false);
            try
            {
                if (Volatile.Read(ref _deadReason) is { } dead)
                {
                    return dead;
                }

                if (IdleViolation() is { } reason)
                {
                    MarkDead(reason);
                    return reason;
                }
            }
            finally
            {
                _requestLock.Release();
            }
        }
    }

    /// <summary>With the request lock held: why the idle socket is broken, or null when the readable data was a reply its request has since read.</summary>
    private string? IdleViolation()
    {
        try
        {
            if (_socket!.Poll(0, SelectMode.SelectError))
            {
                return "the back-end's socket reported an error";
            }

            if (!_socket.Poll(0, SelectMode.SelectRead))
            {
                return null;
            }

            int available = _socket.Available;
            return available == 0
                ? "the back-end closed the connection"
                : $"the back-end sent {available} byte(s) while no request was outstanding (a protocol violation)";
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
            return "the back-end closed the connection";
        }
    }

    // --- Plumbing -----------------------------------------------------------------------------

    private async Task<T> RunAsync<T>(VhostUserRequest request, Func<CancellationToken, Task<T>> operation, CancellationToken cancellationToken)
    {
        ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);
        await _requestLock.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            ThrowIfDead();
            using var deadline = new CancellationTokenSource(_options.RequestTimeout);
            using var linked = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, deadline.Token);
            try
            {
                return await operation(linked.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException e) when (deadline.IsCancellationRequested && !cancellationToken.IsCancellationRequested)
            {
                string reason = $"the back-end did not complete {request} within {_options.RequestTimeout.TotalSeconds:0.###} s";
                MarkDead(reason);
                throw new VhostUserConnectionLostException($"Connection lost: {reason}.", e);
            }
            catch (OperationCanceledException)
            {
                // A request abandoned half way leaves the stream out of step.
                MarkDead($"{request} was cancelled in the middle of the exchange");
                throw;
            }
            catch (VhostUserConnectionLostException e)
            {
                MarkDead(e.Message);
                throw;
            }
            catch (VhostUserProtocolException e)
            {
                MarkDead(e.Message);
                throw;
            }
        }
        finally
        {
            lock (_expectationLock)
            {
                _expectedReply = null;
            }

            _requestLock.Release();
        }
    }

    private async Task<VhostUserReply> ExchangeAsync(
        VhostUserHeader header, ReadOnlyMemory<byte> payload, IReadOnlyList<SafeHandle>? fds,
        VhostUserRequest request, VhostUserPayloadRule rule, CancellationToken cancellationToken)
    {
        lock (_expectationLock)
        {
            _expectedReply = request;
            _expectedRule = rule;
        }

        await _channel.SendAsync(header, payload, fds, cancellationToken).ConfigureAwait(false);
        using VhostUserMessage message = await _channel.ReceiveAsync(cancellationToken).ConfigureAwait(false);

        // The header was validated by ValidateIncomingHeader; the fds depend on the payload.
        VhostUserCodec.ValidateReplyFdCount(request, message.Payload.Span, message.Fds.Count);
        var taken = new SafeFileDescriptor[message.Fds.Count];
        for (int i = 0; i < taken.Length; i++)
        {
            taken[i] = message.TakeFd(i);
        }

        return new VhostUserReply(message.Header, message.Payload.ToArray(), taken);
    }

    private void ValidateIncomingHeader(VhostUserHeader header)
    {
        VhostUserRequest expected;
        VhostUserPayloadRule rule;
        lock (_expectationLock)
        {
            if (_expectedReply is null)
            {
                // Back-end requests travel on their own channel (SET_BACKEND_REQ_FD), never here.
                throw new VhostUserProtocolException(
                    $"The back-end sent {VhostUserCodec.Describe(header.Request)} (flags 0x{header.Flags:x}) when no reply was expected.");
            }

            expected = _expectedReply.Value;
            rule = _expectedRule;
        }

        VhostUserCodec.ValidateReplyHeader(header, expected, rule);
    }

    private void ThrowIfDead()
    {
        string? reason = Volatile.Read(ref _deadReason);
        if (reason is not null)
        {
            throw new VhostUserConnectionLostException($"The vhost-user connection is no longer usable: {reason}.");
        }
    }

    private void MarkDead(string reason)
    {
        Interlocked.CompareExchange(ref _deadReason, reason, null);
        _channel.Dispose();
        DisposeBackendChannel();
        EndLifetime();
    }

    /// <summary>A source that ends with <paramref name="cancellationToken"/> or with this connection (dead or disposed): work outside the socket, a device-state pipe, stops with it.</summary>
    private CancellationTokenSource LinkLifetime(CancellationToken cancellationToken) =>
        CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, _lifetime.Token);

    private void EndLifetime()
    {
        try
        {
            _lifetime.Cancel();
        }
        catch (ObjectDisposedException)
        {
        }
    }

    private static byte[] U64(ulong value)
    {
        var buffer = new byte[VhostUserU64.Size];
        new VhostUserU64(value).Write(buffer);
        return buffer;
    }

    private static byte[] Encode<T>(in T value, int size)
        where T : unmanaged
    {
        var buffer = new byte[size];
        MemoryMarshal.Write(buffer, in value);
        return buffer;
    }

    /// <summary>Closes the socket; a request in flight ends with <see cref="VhostUserConnectionLostException"/>.</summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        Interlocked.CompareExchange(ref _deadReason, "the connection was closed", null);
        _channel.Dispose();
        DisposeBackendChannel();
        EndLifetime();
        _lifetime.Dispose();
    }
}
