using System.Net.Sockets;
using Microsoft.Extensions.Logging;
using Vmm.Core.Posix;
using Vmm.VhostUser.Channel;
using Vmm.VhostUser.Protocol;

namespace Vmm.VhostUser.Backend;

/// <summary>
/// The back-end request channel (vhost-user.rst, "Back-end communication"): SET_BACKEND_REQ_FD
/// hands over a connected socket on which this back-end sends its own requests. The only one sent
/// is CONFIG_CHANGE_MSG, when the device reports a configuration change.
/// </summary>
public sealed partial class VhostUserBackendSession
{
    /// <summary>How long the front-end may take to ack a back-end request before the wait is given up.</summary>
    private static readonly TimeSpan BackendReplyTimeout = TimeSpan.FromSeconds(5);

    private readonly object _backendChannelLock = new();
    private readonly SemaphoreSlim _backendRequestLock = new(1, 1);
    private VhostUserChannel? _backendChannel;

    private void SetBackendRequestFd(VhostUserMessage message)
    {
        RequireProtocolFeature(VhostUserProtocolFeatures.BACKEND_REQ, VhostUserRequest.SET_BACKEND_REQ_FD);
        VhostUserChannel channel;
        using (SafeFileDescriptor fd = message.TakeFd(0))
        {
            var handle = new SafeSocketHandle(fd.DangerousGetHandle(), ownsHandle: true);
            fd.SetHandleAsInvalid();
            Socket? socket = null;
            try
            {
                socket = new Socket(handle);
                channel = VhostUserChannel.FromSocket(socket, new VhostUserChannelOptions
                {
                    HeaderValidator = static header =>
                        VhostUserCodec.ValidateBackendReplyHeader(header, VhostUserBackendRequest.CONFIG_CHANGE_MSG),
                });
            }
            catch (Exception e) when (e is SocketException or ArgumentException)
            {
                if (socket is null)
                {
                    handle.Dispose();
                }
                else
                {
                    socket.Dispose();
                }

                throw new RequestRejectedException($"the back-end request fd is not a connected AF_UNIX stream socket: {e.Message}");
            }
        }

        VhostUserChannel? previous;
        lock (_backendChannelLock)
        {
            previous = _backendChannel;
            _backendChannel = _disposed ? null : channel;
        }

        previous?.Dispose();
        if (_disposed)
        {
            channel.Dispose();
            return;
        }

        Log.BackendChannelSet(_logger);
    }

    /// <summary>Raised on the device's thread: the request goes out on a task of its own.</summary>
    private void OnDeviceConfigChanged()
    {
        VhostUserChannel? channel;
        lock (_backendChannelLock)
        {
            channel = _backendChannel;
        }

        if (channel is null)
        {
            Log.ConfigChangeNotSent(_logger);
            return;
        }

        bool needReply = Has(VhostUserProtocolFeatures.REPLY_ACK);
        _ = Task.Run(() => SendConfigChangeAsync(channel, needReply));
    }

    private async Task SendConfigChangeAsync(VhostUserChannel channel, bool needReply)
    {
        using var timeout = new CancellationTokenSource(BackendReplyTimeout);
        try
        {
            // One request at a time: each waits for its own ack before the next goes out.
            await _backendRequestLock.WaitAsync(timeout.Token).ConfigureAwait(false);
            try
            {
                VhostUserHeader header = VhostUserCodec.BackendRequestHeader(VhostUserBackendRequest.CONFIG_CHANGE_MSG, 0, needReply);
                await channel.SendAsync(header, ReadOnlyMemory<byte>.Empty, null, timeout.Token).ConfigureAwait(false);
                if (!needReply)
                {
                    return;
                }

                using VhostUserMessage reply = await channel.ReceiveAsync(timeout.Token).ConfigureAwait(false);
                ulong status = VhostUserCodec.ReadU64(reply.Payload.Span);
                if (status != 0)
                {
                    Log.BackendRequestFailed(_logger, "CONFIG_CHANGE_MSG", $"the front-end answered {status}");
                }
            }
            finally
            {
                _backendRequestLock.Release();
            }
        }
        catch (OperationCanceledException)
        {
            Log.BackendRequestFailed(_logger, "CONFIG_CHANGE_MSG", $"no answer within {BackendReplyTimeout.TotalSeconds:0} s");
        }
        catch (Exception e) when (e is VhostUserConnectionLostException or VhostUserProtocolException or ObjectDisposedException or IOException)
        {
            Log.BackendRequestFailed(_logger, "CONFIG_CHANGE_MSG", e.Message);
        }
    }

    private void DisposeBackendChannel()
    {
        VhostUserChannel? channel;
        lock (_backendChannelLock)
        {
            channel = _backendChannel;
            _backendChannel = null;
        }

        channel?.Dispose();
    }

    private static partial class Log
    {
        [LoggerMessage(11, LogLevel.Debug, "Back-end request channel set")]
        public static partial void BackendChannelSet(ILogger logger);

        [LoggerMessage(12, LogLevel.Debug, "Device configuration changed, but no back-end request channel is set: the front-end is not told")]
        public static partial void ConfigChangeNotSent(ILogger logger);

        [LoggerMessage(13, LogLevel.Warning, "Back-end request {Request} failed: {Reason}")]
        public static partial void BackendRequestFailed(ILogger logger, string request, string reason);
    }
}
