using System.Buffers;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using Vmm.Core.Posix;
using Vmm.Core.Posix.Sockets;
using Vmm.VhostUser.Protocol;

namespace Vmm.VhostUser.Channel;

/// <summary>
/// One vhost-user connection: sends and receives whole messages (12-byte header + payload,
/// vhost-user.rst "Message Specification") together with the fds passed as SCM_RIGHTS.
/// Sends may come from several tasks at once (they are serialized); receives from one at a time.
/// Errors: <see cref="VhostUserConnectionLostException"/> when the peer is gone (EOF,
/// ECONNRESET, EPIPE, or this channel disposed), <see cref="VhostUserProtocolException"/> when
/// the peer broke the protocol (after which the byte stream is out of step: drop the channel).
/// </summary>
public sealed class VhostUserChannel : IDisposable
{
    /// <summary>
    /// The most fds one message may carry. SET_MEM_TABLE carries one per region and
    /// VHOST_MEMORY_BASELINE_NREGIONS is 8 (vhost-user.rst); QEMU's VHOST_USER_MAX_RAM_SLOTS
    /// path sends them one per ADD_MEM_REG instead.
    /// </summary>
    public const int MaxFds = 8;

    private readonly Socket _socket;
    private readonly VhostUserChannelOptions _options;
    private readonly SemaphoreSlim _sendLock = new(1, 1);
    private readonly byte[] _headerBuffer = new byte[VhostUserHeader.Size];
    private readonly byte[] _peekBuffer = new byte[1];
    private int _receiving;
    private int _disposed;
    private string? _receiveFault;

    private VhostUserChannel(Socket socket, VhostUserChannelOptions? options)
    {
        ArgumentNullException.ThrowIfNull(socket);
        if (socket.AddressFamily != AddressFamily.Unix || socket.SocketType != SocketType.Stream)
        {
            throw new ArgumentException(
                $"vhost-user runs over AF_UNIX stream sockets, not {socket.AddressFamily}/{socket.SocketType}.", nameof(socket));
        }

        options ??= VhostUserChannelOptions.Default;
        ArgumentOutOfRangeException.ThrowIfNegative(options.MaxPayloadSize, nameof(options.MaxPayloadSize));
        _socket = socket;
        _options = options;
    }

    public VhostUserChannelOptions Options => _options;

    /// <summary>The socket itself, for tests that must put bytes on the wire that no well-formed message has.</summary>
    internal Socket Socket => _socket;

    /// <summary>Wraps a connected AF_UNIX stream socket; the channel owns it from now on.</summary>
    public static VhostUserChannel FromSocket(Socket socket, VhostUserChannelOptions? options = null) => new(socket, options);

    /// <summary>Two channels connected to each other through socketpair(2).</summary>
    public static (VhostUserChannel First, VhostUserChannel Second) CreatePair(VhostUserChannelOptions? options = null)
    {
        (Socket first, Socket second) = UnixSocketPair.Create();
        return (new VhostUserChannel(first, options), new VhostUserChannel(second, options));
    }

    /// <inheritdoc cref="ConnectAsync(string, VhostUserChannelOptions?, CancellationToken)"/>
    public static Task<VhostUserChannel> ConnectAsync(string path, CancellationToken cancellationToken) =>
        ConnectAsync(path, null, cancellationToken);

    /// <summary>
    /// Connects to the vhost-user socket at <paramref name="path"/>. A missing path is a
    /// <see cref="FileNotFoundException"/>; a socket nobody listens on is an
    /// <see cref="IOException"/> saying the connection was refused.
    /// </summary>
    public static async Task<VhostUserChannel> ConnectAsync(
        string path, VhostUserChannelOptions? options = null, CancellationToken cancellationToken = default)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            await socket.ConnectAsync(new UnixDomainSocketEndPoint(path), cancellationToken).ConfigureAwait(false);
            return new VhostUserChannel(socket, options);
        }
        catch (SocketException e)
        {
            socket.Dispose();

            // connect(2) reports ENOENT for a missing path; the BCL maps it to AddressNotAvailable.
            if (!File.Exists(path) && !Directory.Exists(path))
            {
                throw new FileNotFoundException($"vhost-user socket {path} does not exist.", path, e);
            }

            throw e.SocketErrorCode switch
            {
                SocketError.ConnectionRefused => new IOException(
                    $"Connection to vhost-user socket {path} refused: no process is listening on it (or it is not a socket).", e),
                SocketError.AccessDenied => new UnauthorizedAccessException(
                    $"Permission denied connecting to vhost-user socket {path}.", e),
                _ => new IOException($"Cannot connect to vhost-user socket {path}: {e.Message}", e),
            };
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Sends one message. The fds travel with the first sendmsg(2) chunk (openvmm socket.rs:
    /// the kernel attaches them to that chunk's first byte); the rest follows with plain sends.
    /// Concurrent calls are serialized, so messages never interleave on the wire.
    /// </summary>
    public async ValueTask SendAsync(
        VhostUserHeader header, ReadOnlyMemory<byte> payload, IReadOnlyList<SafeHandle>? fds = null,
        CancellationToken cancellationToken = default)
    {
        ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);
        int fdCount = fds?.Count ?? 0;
        if (fdCount > MaxFds)
        {
            throw new ArgumentException($"A vhost-user message carries at most {MaxFds} fds, not {fdCount}.", nameof(fds));
        }

        if (header.PayloadSize != (uint)payload.Length)
        {
            throw new ArgumentException(
                $"Header announces {header.PayloadSize} payload bytes but {payload.Length} were given.", nameof(payload));
        }

        int length = VhostUserHeader.Size + payload.Length;
        byte[] buffer = ArrayPool<byte>.Shared.Rent(length);
        try
        {
            header.Write(buffer);
            payload.Span.CopyTo(buffer.AsSpan(VhostUserHeader.Size));

            await _sendLock.WaitAsync(cancellationToken).ConfigureAwait(false);
            try
            {
                int sent = 0;
                if (fdCount > 0)
                {
                    sent = await SendWithFdsAsync(buffer.AsMemory(0, length), fds!, cancellationToken).ConfigureAwait(false);
                }

                while (sent < length)
                {
                    sent += await _socket.SendAsync(buffer.AsMemory(sent, length - sent), SocketFlags.None, cancellationToken)
                        .ConfigureAwait(false);
                }
            }
            catch (SocketException e) when (IsConnectionLost(e.SocketErrorCode))
            {
                throw new VhostUserConnectionLostException($"Peer closed the connection while a message was sent ({e.SocketErrorCode}).", e);
            }
            catch (ObjectDisposedException e)
            {
                throw new VhostUserConnectionLostException("The channel was disposed while a message was sent.", e);
            }
            finally
            {
                _sendLock.Release();
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    /// <summary>
    /// Receives one whole message. The header is checked (version 1, reserved flag bits zero,
    /// payload size bound, then <see cref="VhostUserChannelOptions.HeaderValidator"/>) before
    /// any payload byte is read or any buffer allocated for it. At most <see cref="MaxFds"/>
    /// fds are accepted per message, arriving with any of its chunks.
    /// </summary>
    public async ValueTask<VhostUserMessage> ReceiveAsync(CancellationToken cancellationToken = default)
    {
        ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);
        if (_receiveFault is not null)
        {
            throw new InvalidOperationException($"The channel can no longer receive: {_receiveFault}");
        }

        if (Interlocked.Exchange(ref _receiving, 1) != 0)
        {
            throw new InvalidOperationException("Another ReceiveAsync is already in progress on this channel.");
        }

        var fds = new List<SafeFileDescriptor>();
        byte[]? payload = null;
        bool messageStarted = false;
        try
        {
            await ReceiveExactlyAsync(_headerBuffer, fds, "header", () => messageStarted = true, cancellationToken)
                .ConfigureAwait(false);
            VhostUserHeader header = VhostUserHeader.Read(_headerBuffer);
            Validate(header);

            int payloadLength = (int)header.PayloadSize;
            if (payloadLength > 0)
            {
                payload = ArrayPool<byte>.Shared.Rent(payloadLength);
                await ReceiveExactlyAsync(payload.AsMemory(0, payloadLength), fds, "payload", null, cancellationToken)
                    .ConfigureAwait(false);
            }

            var message = new VhostUserMessage(header, payload, payloadLength, fds);
            payload = null;
            fds.Clear();
            return message;
        }
        catch (Exception e)
        {
            if (messageStarted && e is OperationCanceledException or VhostUserProtocolException)
            {
                // Part of a message was consumed: the next bytes are not a header.
                _receiveFault = e is OperationCanceledException
                    ? "a receive was cancelled in the middle of a message."
                    : $"the peer broke the protocol ({e.Message}).";
            }

            throw;
        }
        finally
        {
            foreach (SafeFileDescriptor fd in fds)
            {
                fd.Dispose();
            }

            if (payload is not null)
            {
                ArrayPool<byte>.Shared.Return(payload);
            }

            Volatile.Write(ref _receiving, 0);
        }
    }

    /// <summary>
    /// Closes the socket. Pending sends and receives end with
    /// <see cref="VhostUserConnectionLostException"/>; later calls throw <see cref="ObjectDisposedException"/>.
    /// </summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        // Shutdown first: it wakes a pending receive (recv returns 0) even where close alone
        // would leave an epoll registration waiting.
        try
        {
            _socket.Shutdown(SocketShutdown.Both);
        }
        catch (SocketException)
        {
            // Not connected any more: nothing to shut down.
        }

        _socket.Dispose();
    }

    private void Validate(VhostUserHeader header)
    {
        // vhost-user.rst "Header": version bits must be 0x1, the other undefined bits zero.
        if ((header.Flags & VhostUserHeaderFlags.VersionMask) != VhostUserHeaderFlags.Version)
        {
            throw new VhostUserProtocolException(
                $"Request {header.Request}: unsupported header version {header.Flags & VhostUserHeaderFlags.VersionMask} (flags 0x{header.Flags:x}).");
        }

        if ((header.Flags & VhostUserHeaderFlags.ReservedMask) != 0)
        {
            throw new VhostUserProtocolException($"Request {header.Request}: reserved header flag bits set (flags 0x{header.Flags:x}).");
        }

        if (header.PayloadSize > (uint)_options.MaxPayloadSize)
        {
            throw new VhostUserProtocolException(
                $"Request {header.Request}: payload size {header.PayloadSize} exceeds the limit of {_options.MaxPayloadSize} bytes.");
        }

        _options.HeaderValidator?.Invoke(header);
    }

    private async ValueTask ReceiveExactlyAsync(
        Memory<byte> buffer, List<SafeFileDescriptor> fds, string part, Action? onFirstByte, CancellationToken cancellationToken)
    {
        int received = 0;
        while (received < buffer.Length)
        {
            nint n = TryReceive(buffer.Span[received..], fds);
            if (n > 0)
            {
                if (received == 0)
                {
                    onFirstByte?.Invoke();
                }

                received += (int)n;
                continue;
            }

            if (n == 0)
            {
                if (Volatile.Read(ref _disposed) != 0)
                {
                    throw new VhostUserConnectionLostException("The channel was disposed.");
                }

                throw onFirstByte is not null && received == 0
                    ? new VhostUserConnectionLostException("Peer closed the connection between messages.")
                    : new VhostUserConnectionLostException(
                        $"Peer closed the connection in the middle of a message ({received} of {buffer.Length} {part} bytes received).");
            }

            int errno = (int)-n;
            if (errno == PosixErrors.EINTR)
            {
                continue;
            }

            if (!PosixErrors.IsRetry(errno))
            {
                throw PosixErrors.IsConnectionLost(errno)
                    ? new VhostUserConnectionLostException($"Connection lost while receiving a message: {PosixErrors.Describe(errno)}.")
                    : new IOException($"recvmsg failed: {PosixErrors.Describe(errno)}");
            }

            await WaitReadableAsync(cancellationToken).ConfigureAwait(false);
        }
    }

    private nint TryReceive(Span<byte> buffer, List<SafeFileDescriptor> fds)
    {
        nint n;
        bool truncated;
        try
        {
            n = FdPassing.TryReceive(_socket, buffer, fds, MaxFds - fds.Count, out truncated);
        }
        catch (ObjectDisposedException e)
        {
            throw new VhostUserConnectionLostException("The channel was disposed.", e);
        }

        if (truncated)
        {
            throw new VhostUserProtocolException(
                $"Peer sent more than {MaxFds} fds with one message (or the kernel truncated them); all were closed.");
        }

        return n;
    }

    /// <summary>
    /// Completes when the peer has sent something (or hung up), without receiving it: the next
    /// <see cref="ReceiveAsync"/> then has its first byte at hand. A caller that may wait for ever
    /// between messages, but not in the middle of one, waits here first and then receives with
    /// a deadline.
    /// </summary>
    public ValueTask WaitForDataAsync(CancellationToken cancellationToken = default)
    {
        ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);
        return WaitReadableAsync(cancellationToken);
    }

    /// <summary>
    /// Waits until the socket has data (or EOF) through the BCL's epoll machinery: a 1-byte
    /// MSG_PEEK receive consumes nothing, so the fds stay queued for the recvmsg that follows.
    /// </summary>
    private async ValueTask WaitReadableAsync(CancellationToken cancellationToken)
    {
        try
        {
            await _socket.ReceiveAsync(_peekBuffer, SocketFlags.Peek, cancellationToken).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
            throw;
        }
        catch (ObjectDisposedException e)
        {
            throw new VhostUserConnectionLostException("The channel was disposed.", e);
        }
        catch (SocketException e) when (Volatile.Read(ref _disposed) != 0 || IsConnectionLost(e.SocketErrorCode))
        {
            throw new VhostUserConnectionLostException(
                Volatile.Read(ref _disposed) != 0 ? "The channel was disposed." : $"Connection lost while receiving ({e.SocketErrorCode}).", e);
        }
    }

    private async ValueTask<int> SendWithFdsAsync(ReadOnlyMemory<byte> data, IReadOnlyList<SafeHandle> fds, CancellationToken cancellationToken)
    {
        SafeHandle[] handles = [.. fds];
        int delayMs = 1;
        while (true)
        {
            nint n = FdPassing.TrySend(_socket, data.Span, handles);
            if (n >= 0)
            {
                return (int)n;
            }

            int errno = (int)-n;
            if (PosixErrors.IsConnectionLost(errno))
            {
                throw new VhostUserConnectionLostException($"Peer closed the connection while a message was sent: {PosixErrors.Describe(errno)}.");
            }

            if (!PosixErrors.IsRetry(errno))
            {
                throw new IOException($"sendmsg failed: {PosixErrors.Describe(errno)}");
            }

            if (errno == PosixErrors.EINTR)
            {
                continue;
            }

            // The send buffer is full (the peer is not reading). The BCL has no "wait until
            // writable" that leaves the first chunk to us, and the fds must ride on it, so back
            // off briefly; on the control plane this is rare.
            await Task.Delay(delayMs, cancellationToken).ConfigureAwait(false);
            delayMs = Math.Min(delayMs * 2, 50);
        }
    }

    private static bool IsConnectionLost(SocketError error) =>
        error is SocketError.ConnectionReset or SocketError.ConnectionAborted or SocketError.Shutdown
            or SocketError.NotConnected or SocketError.OperationAborted;
}
