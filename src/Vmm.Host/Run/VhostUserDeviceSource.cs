using Vmm.Host.Cli;
using Vmm.Virtio;
using Vmm.Virtio.Spec;
using Vmm.VhostUser.Frontend;
using Vmm.VhostUser.Hosting;
using Vmm.VhostUser.Protocol;

namespace Vmm.Host.Run;

/// <summary>
/// A device source whose device the VM actor creates (a vhost-user device under <c>/user/vm</c>):
/// it adds its device to the VM's composition, then gets it from the running VM.
/// </summary>
public interface IHostedDeviceSource : IDeviceSource
{
    /// <summary>The device's name in the VM (its supervisor's actor name: blk0, rng1, ...).</summary>
    string Name { get; }

    /// <summary>Where its back-end is, for messages.</summary>
    string Where { get; }

    /// <summary>Adds the device to the VM being composed.</summary>
    void Configure(ManagedVmmBuilder vm);

    /// <summary>
    /// The device, once its first handshake is done. Throws <see cref="UsageException"/> (exit code
    /// 2) when it cannot be reached or used, with one sentence.
    /// </summary>
    IVhostUserDevice Connect(IManagedVmm vmm, CancellationToken cancellationToken = default);
}

/// <summary>
/// A vhost-user device from a <c>--vhost-user</c> option: its supervisor is a child of the VM
/// actor, and the device is attached to the machine like any in-process device. Connection
/// failures become one-sentence usage errors (exit code 2).
/// </summary>
public sealed class VhostUserDeviceSource(VhostUserSpec spec, string name) : IHostedDeviceSource
{
    public VhostUserSpec Spec { get; } = spec ?? throw new ArgumentNullException(nameof(spec));

    public string Name { get; } = name ?? throw new ArgumentNullException(nameof(name));

    public string Where => Spec.SocketPath;

    public string Kind => Spec.Kind;

    public VirtioDeviceId DeviceId => Spec.DeviceId;

    public IVirtioDevice Create() =>
        throw new InvalidOperationException("A vhost-user device is created by the VM actor: call Configure, then Connect.");

    public void Configure(ManagedVmmBuilder vm)
    {
        ArgumentNullException.ThrowIfNull(vm);
        vm.AddVhostUserDevice(Name, Spec.SocketPath, Spec.DeviceId, _ => Spec.ToOptions(Name));
    }

    public IVhostUserDevice Connect(IManagedVmm vmm, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(vmm);
        string path = Spec.SocketPath;
        IVhostUserDevice device;
        try
        {
            // Called on the command's thread, not in an actor: blocking on the handshake is fine here.
            device = vmm.GetDeviceAsync(Name, cancellationToken).GetAwaiter().GetResult();
        }
        catch (VhostUserConnectException e)
        {
            throw new UsageException(OneSentence.Of(e.Message), e);
        }
        catch (VhostUserIncompatibleBackendException e)
        {
            throw new UsageException(OneSentence.Of($"The vhost-user back-end at {path} cannot drive this device: {e.Message}"), e);
        }
        catch (Exception e) when (e is VhostUserProtocolException or VhostUserRequestFailedException)
        {
            throw new UsageException(OneSentence.Of($"The vhost-user back-end at {path} broke off the handshake: {e.Message}"), e);
        }

        if (Spec.Queues is int wanted && device.QueueCount < wanted)
        {
            throw new UsageException($"--vhost-user {path}: queues={wanted} asked, but the back-end has {device.QueueCount} queue(s).");
        }

        return device;
    }

}
