using Vmm.Virtio.Spec;

namespace Vmm.VhostUser.Frontend;

/// <summary>
/// One vhost-user device: where its back-end listens, what it is, and how to reconnect.
/// Matches the command line's <c>--vhost-user SOCKET,type=blk[,queues=N][,queue-size=N][,reconnect=off][,reconnect-max=N]</c>.
/// </summary>
public sealed record VhostUserDeviceOptions(string SocketPath, VirtioDeviceId DeviceId)
{
    /// <summary>The actor name of the device's supervisor (unique within its parent).</summary>
    public string Name { get; init; } = VhostUserDeviceType.NameOf(DeviceId).Replace('=', '-') + "0";

    /// <summary>Queues to use; null: GET_QUEUE_NUM when the back-end has MQ, else 1. Never more than the back-end has.</summary>
    public int? Queues { get; init; }

    /// <summary>The largest queue size offered to the guest (vhost-user has no query for it).</summary>
    public ushort QueueSize { get; init; } = 256;

    /// <summary>Config bytes fetched by GET_CONFIG; null: the size for <see cref="DeviceId"/>.</summary>
    public int? ConfigSize { get; init; }

    /// <summary>
    /// The device config the VMM itself gives the guest while the back-end does not offer the
    /// CONFIG protocol feature (as QEMU's vhost-user-fs-pci serves the virtio-fs tag from its own
    /// <c>tag=</c> option); null: zeros. A back-end with CONFIG answers GET_CONFIG instead.
    /// </summary>
    public ReadOnlyMemory<byte>? LocalConfig { get; init; }

    /// <summary>Reconnect when the back-end goes away (<c>reconnect=off</c> turns it off).</summary>
    public bool Reconnect { get; init; } = true;

    /// <summary>
    /// Wait for a back-end that is not up yet at start-up (its socket missing or refusing): keep
    /// trying with the reconnect backoff instead of failing the device (<c>wait=on</c>). Commands
    /// and <c>GetDeviceAsync</c> wait meanwhile. Off by default: a missing socket is then a
    /// configuration error reported at once.
    /// </summary>
    public bool WaitForBackend { get; init; }

    /// <summary>Reconnect attempts in a row before giving up; null: unlimited (<c>reconnect-max=N</c>).</summary>
    public int? ReconnectMax { get; init; }

    public TimeSpan ReconnectMinBackoff { get; init; } = TimeSpan.FromMilliseconds(100);

    public TimeSpan ReconnectMaxBackoff { get; init; } = TimeSpan.FromSeconds(5);

    /// <summary>Deadline of each vhost-user request.</summary>
    public TimeSpan RequestTimeout { get; init; } = VhostUserFrontendConnectionOptions.DefaultRequestTimeout;

    /// <summary>How long an <see cref="Virtio.IVirtioDevice"/> call waits for the device actor.</summary>
    public TimeSpan CommandTimeout { get; init; } = TimeSpan.FromSeconds(30);

    /// <summary>
    /// Opens the connection instead of connecting to <see cref="SocketPath"/>: for a back-end in
    /// this process over socketpair(2). Called once per (re)connect.
    /// </summary>
    public Func<CancellationToken, Task<VhostUserFrontendConnection>>? Connect { get; init; }

    internal int EffectiveConfigSize => ConfigSize ?? LocalConfig?.Length ?? VhostUserDeviceType.DefaultConfigSize(DeviceId);

    /// <summary>The config image before (or without) a back-end's GET_CONFIG: <see cref="LocalConfig"/>, else zeros.</summary>
    internal ConfigImage InitialConfig(int size)
    {
        if (LocalConfig is not { } local)
        {
            return ConfigImage.Empty(size);
        }

        var bytes = new byte[Math.Max(size, 0)];
        local.Span[..Math.Min(local.Length, bytes.Length)].CopyTo(bytes);
        return ConfigImage.FromBackend(bytes);
    }

    internal VhostUserFrontendConnectionOptions ConnectionOptions => new()
    {
        RequestTimeout = RequestTimeout,
        ConfigSize = EffectiveConfigSize,
    };

    internal Task<VhostUserFrontendConnection> OpenAsync(CancellationToken cancellationToken) =>
        Connect is not null
            ? Connect(cancellationToken)
            : VhostUserFrontendConnection.ConnectAsync(SocketPath, ConnectionOptions, cancellationToken);
}
