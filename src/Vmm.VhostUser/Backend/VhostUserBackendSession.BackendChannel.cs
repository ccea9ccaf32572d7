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
/// <remarks>
/// Requests go out one at a time from a sender task the session owns, never from the device's
/// thread. Changes that come while one is being sent are coalesced into one more request (the
/// front-end re-reads the whole config space anyway). An ack that does not come within
/// <see cref="VhostUserBackendOptions.BackendReplyTimeout"/> closes the channel: an answer that
/// arrived later would otherwise be read as the answer to the next request. The session's end
/// cancels the sender and waits for it.
/// </remarks>
public sealed partial class VhostUserBackendSession
{
    /// <summary>How long <see cref="StopBackendRequests"/> waits for the sender once it was cancelled.</summary>
    private static readonly TimeSpan s_senderStopWait = TimeSpan.FromSeconds(5);

    private readonly Lock _backendChannelLock = new();
    private VhostUserChannel? _backendChannel;
    private bool _configChangePending;
    private Task? _configChangeSender;

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

    /// <summary>Raised on the device's thread: the request goes out from the session's sender task.</summary>
    private void OnDeviceConfigChanged()
    {
        lock (_backendChannelLock)
        {
            if (_backendChannel is null || _end.IsCancellationRequested)
            {
                Log.ConfigChangeNotSent(_logger);
                return;
            }

            _configChangePending = true;
            if (_configChangeSender is { IsCompleted: false })
            {
                // The running sender sees the flag before it stops.
                return;
            }

            _configChangeSender = Task.Run(SendConfigChangesAsync);
        }
    }

    private async Task SendConfigChangesAsync()
    {
        while (true)
        {
            VhostUserChannel? channel;
            lock (_backendChannelLock)
            {
                if (!_configChangePending || _end.IsCancellationRequested)
                {
                    return;
                }

                _configChangePending = false;
                channel = _backendChannel;
            }

            if (channel is null)
            {
                Log.ConfigChangeNotSent(_logger);
                continue;
            }

            try
            {
                await SendConfigChangeAsync(channel).ConfigureAwait(false);
            }
            catch (Exception e)
            {
                // Nothing a front-end does on this channel may end the process: the request
                // failed, and that is all.
                Log.BackendRequestFailed(_logger, "CONFIG_CHANGE_MSG", e.Message);
            }
        }
    }

    private async Task SendConfigChangeAsync(VhostUserChannel channel)
    {
        bool needReply = Has(VhostUserProtocolFeatures.REPLY_ACK);
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(_end.Token);
        timeout.CancelAfter(_options.BackendReplyTimeout);
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
        catch (OperationCanceledException) when (!_end.IsCancellationRequested)
        {
            // No answer in time. A late one must not be taken for the next request's: the
            // channel is out of step, so it is closed (the front-end sees its end hang up).
            CloseBackendChannel(channel);
            Log.BackendRequestFailed(
                _logger, "CONFIG_CHANGE_MSG",
                $"no answer within {_options.BackendReplyTimeout.TotalSeconds:0.###} s; the back-end channel is closed so that a late answer cannot be read as the next one's");
        }
        catch (Exception e) when (e is VhostUserConnectionLostException or VhostUserProtocolException)
        {
            CloseBackendChannel(channel);
            Log.BackendRequestFailed(_logger, "CONFIG_CHANGE_MSG", $"{e.Message}; the back-end channel is closed");
        }
    }

    private void CloseBackendChannel(VhostUserChannel channel)
    {
        lock (_backendChannelLock)
        {
            if (ReferenceEquals(_backendChannel, channel))
            {
                _backendChannel = null;
            }
        }

        channel.Dispose();
    }

    /// <summary>Ends the sender (the session's token is cancelled first) and closes the channel.</summary>
    private void StopBackendRequests()
    {
        VhostUserChannel? channel;
        Task? sender;
        lock (_backendChannelLock)
        {
            channel = _backendChannel;
            _backendChannel = null;
            sender = _configChangeSender;
        }

        channel?.Dispose();
        try
        {
            sender?.Wait(s_senderStopWait);
        }
        catch (AggregateException)
        {
            // The sender catches its own failures; nothing is left to report.
        }
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
