using Akka.Actor;
using Akka.DependencyInjection;
using Akka.Hosting;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Options;
using Vmm.Core.Machine;
using Vmm.VhostUser.Frontend;

namespace Vmm.VhostUser.Hosting;

/// <summary>Akka.Hosting composition of an embedded VM with vhost-user devices (docs/embedding.md).</summary>
public static class ManagedVmmHostingExtensions
{
    /// <summary>How long the VmActor may take to answer an <see cref="AttachDevice"/> at start-up.</summary>
    private static readonly TimeSpan AttachTimeout = TimeSpan.FromSeconds(10);

    /// <summary>
    /// Starts the top-level VmActor (registered under <see cref="VmKey"/>), which creates its
    /// InterruptControllerActor and one <see cref="VhostUserDeviceSupervisor"/> child per device:
    /// first those of <see cref="ManagedVmmOptions"/> (when <see cref="AddManagedVmm(IServiceCollection, IConfiguration)"/>
    /// or its overloads configured them), then those <paramref name="configure"/> adds. The devices
    /// connect and handshake in the background; <see cref="IManagedVmm.GetDeviceAsync"/> hands each
    /// out when ready, with its connection events wired.
    /// </summary>
    public static AkkaConfigurationBuilder WithManagedVmm(this AkkaConfigurationBuilder builder, Action<ManagedVmmBuilder>? configure = null)
    {
        ArgumentNullException.ThrowIfNull(builder);
        return builder.WithActors((system, registry, resolver) =>
        {
            ManagedVmmDevices devices = ManagedVmmDevices.For(system);
            try
            {
                ManagedVmmOptions options = resolver.GetService<IOptions<ManagedVmmOptions>>()?.Value ?? new ManagedVmmOptions();
                ManagedVmmBuilder vm = ManagedVmmBuilder.FromOptions(options);
                configure?.Invoke(vm);
                StartVm(system, registry, vm, devices);
            }
            catch (Exception e)
            {
                // IManagedVmm reports it rather than waiting for a VM that will never be registered.
                devices.Failed(e);
                throw;
            }
        });
    }

    /// <summary>
    /// Registers <see cref="IManagedVmm"/> (a singleton <see cref="ManagedVmm"/>) and the default
    /// <see cref="ManagedVmmOptions"/>. Call it next to <c>AddAkka</c>: the <c>AddAkka</c> callback
    /// runs when the service provider already exists, too late to register services from
    /// <see cref="WithManagedVmm"/>.
    /// </summary>
    public static IServiceCollection AddManagedVmm(this IServiceCollection services)
    {
        ArgumentNullException.ThrowIfNull(services);
        services.AddOptions<ManagedVmmOptions>();
        services.TryAddSingleton<IManagedVmm, ManagedVmm>();
        return services;
    }

    /// <summary>As <see cref="AddManagedVmm(IServiceCollection)"/>, with the options bound from <paramref name="configuration"/> (e.g. the "ManagedVmm" section).</summary>
    public static IServiceCollection AddManagedVmm(this IServiceCollection services, IConfiguration configuration)
    {
        ArgumentNullException.ThrowIfNull(configuration);
        services.AddManagedVmm().Configure<ManagedVmmOptions>(configuration);
        return services;
    }

    /// <summary>As <see cref="AddManagedVmm(IServiceCollection)"/>, with the options set by <paramref name="configure"/>.</summary>
    public static IServiceCollection AddManagedVmm(this IServiceCollection services, Action<ManagedVmmOptions> configure)
    {
        ArgumentNullException.ThrowIfNull(configure);
        services.AddManagedVmm().Configure(configure);
        return services;
    }

    private static void StartVm(ActorSystem system, IActorRegistry registry, ManagedVmmBuilder vm, ManagedVmmDevices devices)
    {
        // The interrupt controller is registered too (IRequiredActor<InterruptControllerKey>), as the VM creates it.
        VmSettings settings = vm.ToVmSettings() with { Started = r => registry.TryRegister<InterruptControllerKey>(r.InterruptController) };
        IActorRef actor = system.ActorOf(VmActor.Props(settings), vm.ActorName);
        foreach (VhostUserDeviceOptions options in vm.Devices)
        {
            TaskCompletionSource<DeviceInfo> firstReady = VhostUserDevice.CreateFirstReady();
            var events = new VhostUserDeviceEvents();
            Task<DeviceAttached> attached = actor.Ask<DeviceAttached>(
                new AttachDevice(options.Name, resources => VhostUserDeviceSupervisor.Props(options, firstReady, events, resources.Notifiers.Watch)), AttachTimeout);
            devices.Add(new ManagedVmmDevices.Entry(options, attached, firstReady, events));
        }

        // Registered last: whoever sees the VM in the registry also sees its devices.
        registry.Register<VmKey>(actor);
    }
}
