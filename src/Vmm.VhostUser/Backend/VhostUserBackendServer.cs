using System.Net.Sockets;
using Microsoft.Extensions.Logging;
using Vmm.Virtio;
using Vmm.VhostUser.Channel;

namespace Vmm.VhostUser.Backend;

/// <summary>
/// Serves one <see cref="IVirtioDevice"/> over vhost-user on a listening Unix socket. One
/// front-end at a time; when it goes (cleanly or not) the device is stopped and reset and the
/// next front-end is accepted, so a front-end can reconnect.
/// </summary>
public sealed class VhostUserBackendServer : IDisposable
{
    private readonly IVirtioDevice _device;
    private readonly ILogger _logger;
    private readonly VhostUserBackendOptions _options;
    private readonly VhostUserListener _listener;

    private static readonly TimeSpan s_acceptRetryDelay = TimeSpan.FromMilliseconds(100);

    private VhostUserBackendServer(IVirtioDevice device, VhostUserListener listener, ILogger logger, VhostUserBackendOptions options)
    {
        _device = device;
        _listener = listener;
        _logger = logger;
        _options = options;
    }

    public string SocketPath => _listener.Path;

    /// <summary>Binds <paramref name="socketPath"/> (mode 0600; a stale socket file is replaced, a live one is not).</summary>
    public static VhostUserBackendServer Bind(IVirtioDevice device, string socketPath, ILogger logger, VhostUserBackendOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(device);
        ArgumentNullException.ThrowIfNull(logger);
        VhostUserListener listener = VhostUserListener.Bind(socketPath, VhostUserBackendSession.ChannelOptions);
        return new VhostUserBackendServer(device, listener, logger, options ?? VhostUserBackendOptions.Default);
    }

    /// <summary>Accepts and serves front-ends one after another until <paramref name="cancellationToken"/> fires.</summary>
    public async Task RunAsync(CancellationToken cancellationToken)
    {
        while (!cancellationToken.IsCancellationRequested)
        {
            VhostUserChannel channel;
            try
            {
                channel = await _listener.AcceptAsync(cancellationToken).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
            {
                return;
            }
            catch (SocketException e)
            {
                // EMFILE, ENOBUFS, a connection reset before it was accepted: this connection is
                // lost, the next may succeed. The pause keeps a persistent error from spinning.
                _logger.LogWarning("Accepting a front-end failed: {Reason}", e.Message);
                await Task.Delay(s_acceptRetryDelay, CancellationToken.None).ConfigureAwait(false);
                continue;
            }

            _logger.LogInformation("Front-end connected on {Socket}", _listener.Path);
            await ServeAsync(_device, channel, _logger, _options, cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>
    /// Serves one connection (a socketpair end, say) until it ends; the device is reset afterwards.
    /// Never throws but for cancellation: whatever a front-end does, the server process lives on
    /// and takes the next one.
    /// </summary>
    public static async Task ServeAsync(IVirtioDevice device, VhostUserChannel channel, ILogger logger, VhostUserBackendOptions? options = null, CancellationToken cancellationToken = default)
    {
        try
        {
            using var session = new VhostUserBackendSession(device, channel, logger, options);
            await session.RunAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
        }
        catch (Exception e)
        {
            logger.LogError(e, "Front-end session ended by an unexpected error");
        }
    }

    public void Dispose() => _listener.Dispose();
}
