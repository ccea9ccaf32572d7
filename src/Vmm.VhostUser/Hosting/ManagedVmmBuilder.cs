using Vmm.Core.Interrupts;
using Vmm.Core.Machine;
using Vmm.Virtio.Spec;
using Vmm.VhostUser.Frontend;

namespace Vmm.VhostUser.Hosting;

/// <summary>
/// What <see cref="ManagedVmmHostingExtensions.WithManagedVmm"/> builds: the VM actor's name, the
/// interrupt sink, the VM's policy for unexpected device failures, and the vhost-user devices
/// attached to the VM at start-up. It starts from <see cref="ManagedVmmOptions"/> (configuration);
/// the <c>WithManagedVmm</c> callback adds to it.
/// </summary>
public sealed class ManagedVmmBuilder
{
    /// <summary>The default name of the top-level VM actor (<c>/user/vm</c>).</summary>
    public const string DefaultActorName = "vm";

    private readonly List<VhostUserDeviceOptions> _devices = [];

    /// <summary>The name of the top-level VM actor.</summary>
    public string ActorName { get; private set; } = DefaultActorName;

    /// <summary>
    /// Where the InterruptControllerActor delivers raised vectors (the host's vCPU interrupt
    /// injection); null: none until something attaches one with <see cref="AttachInterruptSink"/>
    /// (a <c>VirtioMachine</c> with function-backed delivery attaches its guest's).
    /// </summary>
    public IInterruptSink? InterruptSink { get; private set; }

    /// <summary>The devices, in the order they were added; each one's <see cref="VhostUserDeviceOptions.Name"/> is its device name.</summary>
    public IReadOnlyList<VhostUserDeviceOptions> Devices => _devices;

    /// <summary>What the VM decides for a device that fails in a way it cannot judge itself (default: it needs the guest's reset).</summary>
    public DeviceFailurePolicy UnexpectedDeviceFailure { get; private set; } = DeviceFailurePolicy.GiveUp;

    /// <summary>A builder holding what <paramref name="options"/> configure: the actor name, the policy and the devices (in name order).</summary>
    public static ManagedVmmBuilder FromOptions(ManagedVmmOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        var vm = new ManagedVmmBuilder().WithActorName(options.ActorName).WithUnexpectedDeviceFailure(options.UnexpectedDeviceFailure);
        foreach ((string name, VhostUserDeviceSettings settings) in options.Devices.OrderBy(d => d.Key, StringComparer.Ordinal))
        {
            VhostUserDeviceOptions device = settings.ToOptions(name);
            vm.AddVhostUserDevice(name, device.SocketPath, device.DeviceId, _ => device);
        }

        return vm;
    }

    /// <summary>What the VM decides when a device escalates a failure it cannot judge (see <see cref="DeviceEscalated"/>).</summary>
    public ManagedVmmBuilder WithUnexpectedDeviceFailure(DeviceFailurePolicy policy)
    {
        UnexpectedDeviceFailure = policy;
        return this;
    }

    /// <summary>The VM actor's settings.</summary>
    public VmSettings ToVmSettings() => new() { InterruptSink = InterruptSink, UnexpectedDeviceFailure = UnexpectedDeviceFailure };

    /// <summary>Names the top-level VM actor (default <see cref="DefaultActorName"/>).</summary>
    public ManagedVmmBuilder WithActorName(string name)
    {
        ValidateName(name, nameof(name));
        ActorName = name;
        return this;
    }

    /// <summary>Delivers interrupts to <paramref name="sink"/>, called on the interrupt controller's mailbox thread.</summary>
    public ManagedVmmBuilder WithInterruptSink(IInterruptSink sink)
    {
        InterruptSink = sink ?? throw new ArgumentNullException(nameof(sink));
        return this;
    }

    /// <summary>
    /// Attaches a vhost-user device named <paramref name="name"/> whose back-end listens on
    /// <paramref name="socketPath"/>. <paramref name="configure"/> adjusts the options
    /// (<c>o =&gt; o with { Queues = 2 }</c>); the name always wins over one set there.
    /// </summary>
    public ManagedVmmBuilder AddVhostUserDevice(
        string name, string socketPath, VirtioDeviceId deviceId, Func<VhostUserDeviceOptions, VhostUserDeviceOptions>? configure = null)
    {
        ValidateName(name, nameof(name));
        ArgumentException.ThrowIfNullOrWhiteSpace(socketPath);
        if (_devices.Any(d => d.Name == name))
        {
            throw new ArgumentException($"A device named '{name}' is already configured.", nameof(name));
        }

        var options = new VhostUserDeviceOptions(socketPath, deviceId);
        options = (configure?.Invoke(options) ?? options) with { Name = name };
        _devices.Add(options);
        return this;
    }

    /// <summary>As above, with the command line's type names (<c>blk</c>, <c>rng</c>, ..., or <c>device-id=N</c>).</summary>
    public ManagedVmmBuilder AddVhostUserDevice(
        string name, string socketPath, string type, Func<VhostUserDeviceOptions, VhostUserDeviceOptions>? configure = null) =>
        AddVhostUserDevice(name, socketPath, VhostUserDeviceType.Parse(type), configure);

    private static void ValidateName(string name, string parameter)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(name, parameter);
        if (name == VmActor.InterruptsName)
        {
            throw new ArgumentException($"'{name}' is the VM's interrupt controller.", parameter);
        }

        if (name.StartsWith('$') || !Akka.Actor.ActorPath.IsValidPathElement(name))
        {
            throw new ArgumentException($"'{name}' is not a valid actor name.", parameter);
        }
    }
}
