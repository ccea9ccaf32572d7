using Akka.Actor;
using Akka.Hosting;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Vmm.Core.Machine;
using Vmm.VhostUser.Frontend;

namespace Vmm.VhostUser.Hosting;

/// <summary>Akka.Hosting composition of an embedded VM with vhost-user devices (docs/embedding.md).</summary>
public static class ManagedVmmHostingExtensions
{
    /// <summary>How long the VmActor may take to answer an <see cref="AttachDevice"/> at start-up.</summary>
    private static readonly TimeSpan AttachTimeout = TimeSpan.FromSeconds(10);

    /// <summary>
    /// Starts the top-level VmActor (registered under <see cref="VmKey"/>; it creates the
    /// InterruptControllerActor under it) and attaches each configured device as a
    /// <see cref="VhostUserDeviceSupervisor"/> child via <see cref="AttachDevice"/>. The devices
    /// connect and handshake in the background; <see cref="IManagedVmm.GetDeviceAsync"/> hands each out when ready.
    /// </summary>
    public static AkkaConfigurationBuilder WithManagedVmm(this AkkaConfigurationBuilder builder, Action<ManagedVmmBuilder> configure)
    {
        ArgumentNullException.ThrowIfNull(builder);
        ArgumentNullException.ThrowIfNull(configure);
        var vm = new ManagedVmmBuilder();
        configure(vm);
        return builder.WithActors((system, registry, _) => StartVm(system, registry, vm));
    }

    /// <summary>
    /// Registers <see cref="IManagedVmm"/> (a singleton <see cref="ManagedVmm"/>). Call it next to
    /// <c>AddAkka</c>: the <c>AddAkka</c> callback runs when the service provider already exists,
    /// too late to register services from <see cref="WithManagedVmm"/>.
    /// </summary>
    public static IServiceCollection AddManagedVmm(this IServiceCollection services)
    {
        ArgumentNullException.ThrowIfNull(services);
        services.TryAddSingleton<IManagedVmm, ManagedVmm>();
        return services;
    }

    private static void StartVm(ActorSystem system, IActorRegistry registry, ManagedVmmBuilder vm)
    {
        IActorRef actor = system.ActorOf(VmActor.Props(vm.InterruptSink), vm.ActorName);
        ManagedVmmDevices devices = ManagedVmmDevices.For(system);
        foreach (VhostUserDeviceOptions options in vm.Devices)
        {
            TaskCompletionSource<DeviceInfo> firstReady = VhostUserDevice.CreateFirstReady();
            Task<DeviceAttached> attached = actor.Ask<DeviceAttached>(
                new AttachDevice(options.Name, VhostUserDeviceSupervisor.Props(options, firstReady)), AttachTimeout);
            devices.Add(options, attached, firstReady);
        }

        // Registered last: whoever sees the VM in the registry also sees its devices.
        registry.Register<VmKey>(actor);
    }
}
