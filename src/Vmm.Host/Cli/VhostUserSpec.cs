using Vmm.Virtio.Spec;
using Vmm.VhostUser.Frontend;

namespace Vmm.Host.Cli;

/// <summary>
/// A vhost-user device: <c>--vhost-user SOCKET,type=NAME|device-id=N[,queues=N][,queue-size=N][,reconnect=on|off][,reconnect-max=N][,reconnect-max-delay=SECONDS][,wait=on|off][,tag=NAME]</c>.
/// Type names are those of <see cref="VhostUserDeviceType"/> (blk, rng, net, fs, console, gpio, vsock, ...).
/// </summary>
public sealed record VhostUserSpec(string SocketPath, VirtioDeviceId DeviceId, int? Queues, ushort QueueSize, bool Reconnect, int? ReconnectMax)
{
    /// <summary>The longest backoff between reconnect attempts; null: the front-end's default (5 s).</summary>
    public TimeSpan? ReconnectMaxDelay { get; init; }

    /// <summary>
    /// <c>wait=on</c>: at start-up, a back-end that is not listening yet is waited for (its
    /// socket watched, attempts paced by the reconnect backoff) instead of failing the device.
    /// </summary>
    public bool WaitForBackend { get; init; }

    /// <summary>
    /// virtio-fs: the tag the VMM puts in the device config while the back-end does not serve a
    /// config (the CONFIG protocol feature), as QEMU's <c>-device vhost-user-fs-pci,tag=</c>
    /// does; a back-end that serves one (virtiofsd --tag) is answered from instead.
    /// </summary>
    public string? Tag { get; init; }

    /// <summary>The name of the device kind (blk, rng, or device-id=N).</summary>
    public string Kind => VhostUserDeviceType.NameOf(DeviceId);

    public static VhostUserSpec Parse(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        string[] parts = text.Split(',', StringSplitOptions.TrimEntries);
        string socket = parts[0];
        if (socket.Length == 0 || socket.Contains('=', StringComparison.Ordinal))
        {
            throw new UsageException($"--vhost-user '{text}': start with the socket path, as in --vhost-user /run/blk.sock,type=blk.");
        }

        VirtioDeviceId? id = null;
        int? queues = null;
        ushort queueSize = 256;
        bool reconnect = true;
        int? reconnectMax = null;
        TimeSpan? reconnectMaxDelay = null;
        string? tag = null;
        bool wait = false;
        foreach (string part in parts.Skip(1))
        {
            (string key, string? value) = DeviceSpec.SplitOption(part);
            switch (key)
            {
                case "type" or "device-id" when id is null && !string.IsNullOrEmpty(value):
                    string name = key == "type" ? value : $"device-id={value}";
                    if (!VhostUserDeviceType.TryParse(name, out VirtioDeviceId parsed))
                    {
                        throw new UsageException(key == "type"
                            ? $"--vhost-user '{text}': unknown type '{value}' (use one of {string.Join(", ", VhostUserDeviceType.Names)}, or device-id=N)."
                            : $"--vhost-user '{text}': device-id must be a virtio device id from 1 to 65535.");
                    }

                    id = parsed;
                    break;
                case "type" or "device-id" when id is not null:
                    throw new UsageException($"--vhost-user '{text}': give the device type once, as type=NAME or device-id=N.");
                case "queues":
                    queues = DeviceSpec.ParseInt(value, text, key, 1, 64);
                    break;
                case "queue-size":
                    int size = DeviceSpec.ParseInt(value, text, key, 2, 32768);
                    if ((size & (size - 1)) != 0)
                    {
                        throw new UsageException($"--vhost-user '{text}': queue-size must be a power of 2.");
                    }

                    queueSize = (ushort)size;
                    break;
                case "reconnect":
                    reconnect = value is null || DeviceSpec.ParseBool(value, text, key);
                    break;
                case "reconnect-max":
                    reconnectMax = DeviceSpec.ParseInt(value, text, key, 0, int.MaxValue);
                    break;
                case "reconnect-max-delay":
                    reconnectMaxDelay = TimeSpan.FromSeconds(DeviceSpec.ParseInt(value, text, key, 1, 3600));
                    break;
                case "wait":
                    wait = value is null || DeviceSpec.ParseBool(value, text, key);
                    break;
                case "tag" when !string.IsNullOrEmpty(value):
                    // virtio 1.2, 5.11.4: up to 36 bytes of UTF-8, NUL-padded.
                    if (System.Text.Encoding.UTF8.GetByteCount(value) > VirtioFsConfig.TagSize || value.Contains('\0', StringComparison.Ordinal))
                    {
                        throw new UsageException($"--vhost-user '{text}': tag must be at most {VirtioFsConfig.TagSize} bytes of UTF-8.");
                    }

                    tag = value;
                    break;
                default:
                    throw new UsageException($"--vhost-user '{text}': unknown or incomplete option '{part}'.");
            }
        }

        if (id is null)
        {
            throw new UsageException($"--vhost-user '{text}': say what the device is with type=NAME (blk, rng, net, ...) or device-id=N.");
        }

        if (tag is not null && id != VirtioDeviceId.FileSystem)
        {
            throw new UsageException($"--vhost-user '{text}': tag= is for type=fs only.");
        }

        return new VhostUserSpec(socket, id.Value, queues, queueSize, reconnect, reconnectMax) { ReconnectMaxDelay = reconnectMaxDelay, Tag = tag, WaitForBackend = wait };
    }

    /// <summary>The front-end's options for this device; <paramref name="name"/> is its supervisor's actor name.</summary>
    public VhostUserDeviceOptions ToOptions(string name)
    {
        var options = new VhostUserDeviceOptions(SocketPath, DeviceId)
        {
            Name = name,
            Queues = Queues,
            QueueSize = QueueSize,
            Reconnect = Reconnect,
            ReconnectMax = ReconnectMax,
            WaitForBackend = WaitForBackend,
            LocalConfig = Tag is null ? default(ReadOnlyMemory<byte>?) : LocalFsConfig(Tag, Queues),
        };
        return ReconnectMaxDelay is { } delay ? options with { ReconnectMaxBackoff = delay } : options;
    }

    /// <summary>virtio_fs_config for <paramref name="tag"/>: one request queue per queue after hiprio (at least one).</summary>
    private static byte[] LocalFsConfig(string tag, int? queues)
    {
        var config = new byte[VirtioFsConfig.Size];
        uint requestQueues = (uint)Math.Max(1, (queues ?? 2) - VirtioFs.FirstRequestQueue);
        new VirtioFsConfig(tag, requestQueues, TagIsValidUtf8: true).Write(config);
        return config;
    }
}
