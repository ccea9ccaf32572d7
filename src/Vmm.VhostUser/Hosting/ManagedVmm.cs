using Akka.Actor;
using Akka.Hosting;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Options;
using Vmm.Core.Machine;
using Vmm.VhostUser.Frontend;

namespace Vmm.VhostUser.Hosting;

/// <summary>
/// <see cref="IManagedVmm"/> over the ActorSystem that <see cref="ManagedVmmHostingExtensions.WithManagedVmm"/>
/// configured. Registered by <see cref="ManagedVmmHostingExtensions.AddManagedVmm(Microsoft.Extensions.DependencyInjection.IServiceCollection)"/>.
/// </summary>
public sealed class ManagedVmm : IManagedVmm
{
    private readonly ActorSystem _system;
    private readonly ActorRegistry _registry;
    private readonly IHostApplicationLifetime _lifetime;
    private readonly ManagedVmmOptions _options;

    public ManagedVmm(ActorSystem system, ActorRegistry registry, IHostApplicationLifetime lifetime, IOptions<ManagedVmmOptions> options)
    {
        _system = system ?? throw new ArgumentNullException(nameof(system));
        _registry = registry ?? throw new ArgumentNullException(nameof(registry));
        _lifetime = lifetime ?? throw new ArgumentNullException(nameof(lifetime));
        _options = options?.Value ?? throw new ArgumentNullException(nameof(options));
    }

    /// <summary>
    /// The VM once Akka registered it. Akka.Hosting runs every <c>WithActors</c> step before the
    /// host reports started; so a host that started without registering a VM never will, and
    /// the call fails at once instead of waiting forever.
    /// </summary>
    public async Task<IActorRef> GetVmAsync(CancellationToken cancellationToken = default)
    {
        if (_registry.TryGet<VmKey>(out IActorRef? vm))
        {
            return vm;
        }

        using var stop = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, _lifetime.ApplicationStarted, _lifetime.ApplicationStopping);
        try
        {
            return await _registry.GetAsync<VmKey>(stop.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
        {
            if (_registry.TryGet<VmKey>(out vm))
            {
                return vm;
            }

            Exception? failure = ManagedVmmDevices.For(_system).StartFailure;
            throw failure is not null
                ? new InvalidOperationException($"The embedded VM could not start: {failure.Message}", failure)
                : new InvalidOperationException(
                    "No embedded VM was started: add WithManagedVmm(...) to the AddAkka builder (docs/embedding.md, \"Composition\").");
        }
    }

    public async Task<IActorRef> GetInterruptControllerAsync(CancellationToken cancellationToken = default)
    {
        IActorRef vm = await GetVmAsync(cancellationToken).ConfigureAwait(false);
        InterruptController reply = await vm.Ask<InterruptController>(GetInterruptController.Instance, _options.AskTimeout, cancellationToken).ConfigureAwait(false);
        return reply.Controller;
    }

    public async Task<IVhostUserDevice> GetDeviceAsync(string name, CancellationToken cancellationToken = default)
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
        return await vm.Ask<Devices>(GetDevices.Instance, _options.AskTimeout, cancellationToken).ConfigureAwait(false);
    }
}
