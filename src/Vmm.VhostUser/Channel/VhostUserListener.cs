using Vmm.Core.Posix.Sockets;

namespace Vmm.VhostUser.Channel;

/// <summary>A vhost-user socket path (mode 0600) accepting connections as <see cref="VhostUserChannel"/>s.</summary>
public sealed class VhostUserListener : IDisposable
{
    private readonly UnixListener _listener;
    private readonly VhostUserChannelOptions? _options;

    private VhostUserListener(UnixListener listener, VhostUserChannelOptions? options)
    {
        _listener = listener;
        _options = options;
    }

    public string Path => _listener.Path;

    /// <summary>Binds and listens on <paramref name="path"/>; see <see cref="UnixListener.Bind"/> for stale files.</summary>
    public static VhostUserListener Bind(string path, VhostUserChannelOptions? options = null) =>
        new(UnixListener.Bind(path), options);

    public async ValueTask<VhostUserChannel> AcceptAsync(CancellationToken cancellationToken = default) =>
        VhostUserChannel.FromSocket(await _listener.AcceptAsync(cancellationToken).ConfigureAwait(false), _options);

    /// <summary>Stops listening and removes the socket file; accepted channels stay open.</summary>
    public void Dispose() => _listener.Dispose();
}
