using Akka.Actor;
using Akka.Hosting;
using Vmm.Core.Machine;
using Vmm.Virtio;

namespace Vmm.VhostUser.Hosting;

/// <summary>
/// <see cref="IManagedVmm"/> over the ActorSystem that <see cref="ManagedVmmHostingExtensions.WithManagedVmm"/>
/// configured. Registered by <see cref="ManagedVmmHostingExtensions.AddManagedVmm"/>.
/// </summary>
public sealed class ManagedVmm : IManagedVmm
{
    private static readonly TimeSpan AskTimeout = TimeSpan.FromSeconds(10);

    private readonly ActorSystem _system;
    private readonly IRequiredActor<VmKey> _vm;

    public ManagedVmm(ActorSystem system, IRequiredActor<VmKey> vm)
    {
        _system = system ?? throw new ArgumentNullException(nameof(system));
        _vm = vm ?? throw new ArgumentNullException(nameof(vm));
    }

    public Task<IActorRef> GetVmAsync(CancellationToken cancellationToken = default) => _vm.GetAsync(cancellationToken);

    public async Task<IActorRef> GetInterruptControllerAsync(CancellationToken cancellationToken = default)
    {
        IActorRef vm = await GetVmAsync(cancellationToken).ConfigureAwait(false);
        InterruptController reply = await vm.Ask<InterruptController>(GetInterruptController.Instance, AskTimeout, cancellationToken).ConfigureAwait(false);
        return reply.Controller;
    }

    public async Task<IVirtioDevice> GetDeviceAsync(string name, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(name);

        // The VM is registered after its devices were recorded: once it is there, so are they.
        await GetVmAsync(cancellationToken).ConfigureAwait(false);
        if (!ManagedVmmDevices.For(_system).TryGet(name, out ManagedVmmDevices.Entry entry))
        {
            throw new KeyNotFoundException($"No vhost-user device named '{name}' was configured.");
        }

        return await entry.Device.WaitAsync(cancellationToken).ConfigureAwait(false);
    }

    public async Task<Devices> GetDevicesAsync(CancellationToken cancellationToken = default)
    {
        IActorRef vm = await GetVmAsync(cancellationToken).ConfigureAwait(false);
        return await vm.Ask<Devices>(GetDevices.Instance, AskTimeout, cancellationToken).ConfigureAwait(false);
    }
}
