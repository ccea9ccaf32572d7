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

            _logger.LogInformation("Front-end connected on {Socket}", _listener.Path);
            await ServeAsync(_device, channel, _logger, _options, cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>Serves one connection (a socketpair end, say) until it ends; the device is reset afterwards.</summary>
    public static async Task ServeAsync(IVirtioDevice device, VhostUserChannel channel, ILogger logger, VhostUserBackendOptions? options = null, CancellationToken cancellationToken = default)
    {
        using var session = new VhostUserBackendSession(device, channel, logger, options);
        try
        {
            await session.RunAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            // Whatever a front-end does, the server process lives on and takes the next one.
            logger.LogError(e, "Front-end session ended by an unexpected error");
        }
    }

    public void Dispose() => _listener.Dispose();
}
