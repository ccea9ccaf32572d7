using Akka.Actor;
using Vmm.Core.Machine;
using Vmm.Virtio;

namespace Vmm.VhostUser.Hosting;

/// <summary>
/// The embedded VM as a host sees it: the VM actor, its interrupt controller, and each
/// configured device as an <see cref="IVirtioDevice"/> to place on the host's own transport.
/// Every method waits for Akka to start first.
/// </summary>
public interface IManagedVmm
{
    /// <summary>The top-level VmActor (as <c>IRequiredActor&lt;VmKey&gt;.GetAsync</c>).</summary>
    Task<IActorRef> GetVmAsync(CancellationToken cancellationToken = default);

    /// <summary>The VM's InterruptControllerActor, for a transport with function-backed interrupt lines.</summary>
    Task<IActorRef> GetInterruptControllerAsync(CancellationToken cancellationToken = default);

    /// <summary>
    /// Device <paramref name="name"/> once its first vhost-user handshake completed; the same
    /// instance for every call. Fails with the cause when the device gave up first
    /// (<see cref="Frontend.VhostUserConnectException"/> for a missing or refusing socket,
    /// <see cref="Protocol.VhostUserProtocolException"/>, ...); with <see cref="KeyNotFoundException"/>
    /// for a name that was never configured.
    /// </summary>
    Task<IVirtioDevice> GetDeviceAsync(string name, CancellationToken cancellationToken = default);

    /// <summary>The VM's live devices and the failures of those that stopped.</summary>
    Task<Devices> GetDevicesAsync(CancellationToken cancellationToken = default);
}
