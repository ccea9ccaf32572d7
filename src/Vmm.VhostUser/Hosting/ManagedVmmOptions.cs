using Vmm.Core.Machine;
using Vmm.VhostUser.Frontend;

namespace Vmm.VhostUser.Hosting;

/// <summary>
/// The embedded VM's settings in the options pattern: bind them from configuration with
/// <c>services.AddManagedVmm(configuration.GetSection(ManagedVmmOptions.SectionName))</c>, or set
/// them with <c>services.AddManagedVmm(o =&gt; ...)</c>. Devices configured here are attached by
/// <see cref="ManagedVmmHostingExtensions.WithManagedVmm"/> before the ones its callback adds.
/// </summary>
/// <example>
/// <code>
/// "ManagedVmm": {
///   "AskTimeout": "00:00:10",
///   "Devices": {
///     "blk0": { "SocketPath": "/run/blk.sock", "Type": "blk", "Queues": 1, "WaitForBackend": true }
///   }
/// }
/// </code>
/// </example>
public sealed class ManagedVmmOptions
{
    /// <summary>The configuration section the samples and docs use.</summary>
    public const string SectionName = "ManagedVmm";

    /// <summary>The name of the top-level VM actor (<c>/user/vm</c> by default).</summary>
    public string ActorName { get; set; } = ManagedVmmBuilder.DefaultActorName;

    /// <summary>How long an <see cref="IManagedVmm"/> call waits for the VM actor's answer (device lookups wait for the device's handshake, see <see cref="VhostUserDeviceSettings.CommandTimeout"/>).</summary>
    public TimeSpan AskTimeout { get; set; } = TimeSpan.FromSeconds(10);

    /// <summary>What the VM decides for a device that fails in a way it cannot judge itself.</summary>
    public DeviceFailurePolicy UnexpectedDeviceFailure { get; set; } = DeviceFailurePolicy.GiveUp;

    /// <summary>The vhost-user devices, by name (the name is the actor name and the key for <see cref="IManagedVmm.GetDeviceAsync"/>).</summary>
    public Dictionary<string, VhostUserDeviceSettings> Devices { get; set; } = new(StringComparer.Ordinal);
}

/// <summary>
/// One vhost-user device in configuration; each unset value keeps the default of
/// <see cref="VhostUserDeviceOptions"/>.
/// </summary>
public sealed class VhostUserDeviceSettings
{
    /// <summary>Where the back-end listens.</summary>
    public string SocketPath { get; set; } = string.Empty;

    /// <summary>The device type as the command line names it (<c>blk</c>, <c>rng</c>, ..., or <c>device-id=N</c>).</summary>
    public string Type { get; set; } = "blk";

    public int? Queues { get; set; }

    public ushort? QueueSize { get; set; }

    public int? ConfigSize { get; set; }

    public bool? Reconnect { get; set; }

    public int? ReconnectMax { get; set; }

    public TimeSpan? ReconnectMinBackoff { get; set; }

    public TimeSpan? ReconnectMaxBackoff { get; set; }

    public TimeSpan? RequestTimeout { get; set; }

    public TimeSpan? CommandTimeout { get; set; }

    public bool? WaitForBackend { get; set; }

    /// <summary>The device's options; throws <see cref="ArgumentException"/> for a missing socket path or an unknown type.</summary>
    public VhostUserDeviceOptions ToOptions(string name)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(name);
        if (string.IsNullOrWhiteSpace(SocketPath))
        {
            throw new ArgumentException($"Device '{name}' has no SocketPath.", nameof(SocketPath));
        }

        var o = new VhostUserDeviceOptions(SocketPath, VhostUserDeviceType.Parse(Type)) { Name = name };
        return o with
        {
            Queues = Queues ?? o.Queues,
            QueueSize = QueueSize ?? o.QueueSize,
            ConfigSize = ConfigSize ?? o.ConfigSize,
            Reconnect = Reconnect ?? o.Reconnect,
            ReconnectMax = ReconnectMax ?? o.ReconnectMax,
            ReconnectMinBackoff = ReconnectMinBackoff ?? o.ReconnectMinBackoff,
            ReconnectMaxBackoff = ReconnectMaxBackoff ?? o.ReconnectMaxBackoff,
            RequestTimeout = RequestTimeout ?? o.RequestTimeout,
            CommandTimeout = CommandTimeout ?? o.CommandTimeout,
            WaitForBackend = WaitForBackend ?? o.WaitForBackend,
        };
    }
}
