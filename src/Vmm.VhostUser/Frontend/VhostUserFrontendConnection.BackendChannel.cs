using System.Net.Sockets;
using Vmm.Core.Posix.Sockets;
using Vmm.VhostUser.Channel;
using Vmm.VhostUser.Protocol;

namespace Vmm.VhostUser.Frontend;

/// <summary>
/// The back-end request channel (vhost-user.rst, "Back-end communication"): with BACKEND_REQ
/// acked, the handshake passes one end of a socketpair with SET_BACKEND_REQ_FD and reads the
/// back-end's requests from the other end until the connection is disposed.
/// CONFIG_CHANGE_MSG raises <see cref="BackendConfigChanged"/>; every other request is refused.
/// </summary>
public sealed partial class VhostUserFrontendConnection
{
    private VhostUserChannel? _backendChannel;
    private Task? _backendLoop;

    // 1 while a config change was announced and not yet taken (ConfigChangeTaken): a flood of
    // CONFIG_CHANGE_MSG then raises one event, not one per message.
    private int _configChangePending;

    /// <summary>
    /// The back-end announced a configuration change (BACKEND_CONFIG_CHANGE_MSG). Raised on the
    /// back-end channel's receive task: handlers must be short and must not block. Coalesced:
    /// after one is raised, further announcements raise nothing until the handler calls
    /// <see cref="ConfigChangeTaken"/> (as it starts reading the config), so a flood costs one
    /// pending change and one GET_CONFIG in progress at most.
    /// </summary>
    public event Action? BackendConfigChanged;

    /// <summary>The announced config change is being handled: the next announcement raises <see cref="BackendConfigChanged"/> again.</summary>
    public void ConfigChangeTaken() => Volatile.Write(ref _configChangePending, 0);

    /// <summary>Something on the back-end channel worth a log line: a refused request, or the channel breaking down.</summary>
    public event Action<string>? BackendChannelNotice;

    /// <summary>True once the back-end request channel is set up.</summary>
    public bool HasBackendChannel => Volatile.Read(ref _backendChannel) is not null;

    /// <summary>Completes when the back-end channel's receive loop ends (null before the channel is set up).</summary>
    public Task? BackendChannelCompletion => _backendLoop;

    /// <summary>
    /// SET_BACKEND_REQ_FD with one end of a new socketpair, then the receive loop on the other
    /// end. Needs BACKEND_REQ.
    /// </summary>
    public async Task OpenBackendChannelAsync(CancellationToken cancellationToken = default)
    {
        RequireProtocolFeature(VhostUserProtocolFeatures.BACKEND_REQ, VhostUserRequest.SET_BACKEND_REQ_FD);
        if (_backendChannel is not null)
        {
            throw new InvalidOperationException("The back-end request channel is already set up.");
        }

        (Socket ours, Socket theirs) = UnixSocketPair.Create();
        VhostUserChannel channel;
        try
        {
            channel = VhostUserChannel.FromSocket(ours, new VhostUserChannelOptions
            {
                HeaderValidator = static header => VhostUserCodec.ValidateBackendRequestHeader(header),
            });
        }
        catch
        {
            ours.Dispose();
            theirs.Dispose();
            throw;
        }

        using (theirs)
        {
            try
            {
                await SendAsync(VhostUserRequest.SET_BACKEND_REQ_FD, fds: [theirs.SafeHandle], cancellationToken: cancellationToken)
                    .ConfigureAwait(false);
            }
            catch
            {
                channel.Dispose();
                throw;
            }
        }

        Volatile.Write(ref _backendChannel, channel);
        if (Volatile.Read(ref _disposed) != 0)
        {
            channel.Dispose();
            return;
        }

        _backendLoop = Task.Run(() => ReceiveBackendRequestsAsync(channel));
    }

    private async Task ReceiveBackendRequestsAsync(VhostUserChannel channel)
    {
        try
        {
            while (true)
            {
                using VhostUserMessage message = await channel.ReceiveAsync().ConfigureAwait(false);
                VhostUserHeader header = message.Header;
                VhostUserCodec.ValidateBackendFdCount(header.Request, message.Payload.Span, message.Fds.Count);
                ulong status;
                if (header.Request == (uint)VhostUserBackendRequest.CONFIG_CHANGE_MSG)
                {
                    status = 0;
                    if (Interlocked.Exchange(ref _configChangePending, 1) == 0)
                    {
                        BackendConfigChanged?.Invoke();
                    }
                }
                else
                {
                    status = 1;
                    BackendChannelNotice?.Invoke($"{VhostUserCodec.DescribeBackend(header.Request)} is not handled by this front-end; refused");
                }

                if (VhostUserCodec.NeedsReply(header))
                {
                    var reply = new byte[VhostUserU64.Size];
                    new VhostUserU64(status).Write(reply);
                    await channel.SendAsync(
                        VhostUserCodec.BackendReplyHeader((VhostUserBackendRequest)header.Request, reply.Length), reply).ConfigureAwait(false);
                }
            }
        }
        catch (VhostUserConnectionLostException) when (Volatile.Read(ref _disposed) != 0 || IsDead)
        {
            // The connection is closed: the channel goes with it.
        }
        catch (Exception e) when (e is VhostUserConnectionLostException or VhostUserProtocolException or ObjectDisposedException or IOException)
        {
            BackendChannelNotice?.Invoke($"back-end request channel closed: {e.Message}");
        }
        finally
        {
            channel.Dispose();
        }
    }

    private void DisposeBackendChannel() => Volatile.Read(ref _backendChannel)?.Dispose();
}
