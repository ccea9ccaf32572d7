using Akka.Actor;
using Vmm.Core.Machine;
using Vmm.VhostUser.Frontend;

namespace Vmm.VhostUser.Hosting;

/// <summary>
/// The embedded VM as a host sees it: the VM actor, its interrupt controller, and each
/// configured device as an <see cref="IVhostUserDevice"/> (an <c>IVirtioDevice</c> to place on
/// the host's own transport, with its connection events). Every method waits for Akka to start
/// first, and fails at once when the VM was never configured (<c>WithManagedVmm</c> missing).
/// </summary>
public interface IManagedVmm
{
    /// <summary>The top-level VmActor (as <c>IRequiredActor&lt;VmKey&gt;.GetAsync</c>).</summary>
    Task<IActorRef> GetVmAsync(CancellationToken cancellationToken = default);

    /// <summary>The VM's InterruptControllerActor, for a transport with function-backed interrupt lines.</summary>
    Task<IActorRef> GetInterruptControllerAsync(CancellationToken cancellationToken = default);

    /// <summary>
    /// Device <paramref name="name"/> once its first vhost-user handshake completed; the same
    /// instance for every call. Fails with the cause when the device stopped first
    /// (<see cref="VhostUserConnectException"/> for a missing or refusing socket,
    /// <see cref="Protocol.VhostUserProtocolException"/>, ...); with <see cref="KeyNotFoundException"/>
    /// for a name that was never configured.
    /// </summary>
    Task<IVhostUserDevice> GetDeviceAsync(string name, CancellationToken cancellationToken = default);

    /// <summary>The VM's devices, each once: live (working or reconnecting) or failed (needing the guest's reset, or stopped).</summary>
    Task<Devices> GetDevicesAsync(CancellationToken cancellationToken = default);
}
