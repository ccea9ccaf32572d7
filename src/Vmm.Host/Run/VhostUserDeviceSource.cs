using Akka.Actor;
using Vmm.Host.Cli;
using Vmm.Virtio;
using Vmm.Virtio.Spec;
using Vmm.VhostUser.Frontend;
using Vmm.VhostUser.Protocol;

namespace Vmm.Host.Run;

/// <summary>A device source whose device lives in the VM's actor system (its actors are created there).</summary>
public interface IActorDeviceSource : IDeviceSource
{
    /// <summary>Makes the device with its actors under <paramref name="system"/>; errors as <see cref="IDeviceSource.Create()"/>.</summary>
    IVirtioDevice Create(ActorSystem system);
}

/// <summary>
/// A vhost-user device from a <c>--vhost-user</c> option: a <see cref="VhostUserDevice"/> whose
/// supervisor runs in the VM's actor system, attached to the machine like any in-process device.
/// Connection failures become one-sentence usage errors (exit code 2).
/// </summary>
public sealed class VhostUserDeviceSource(VhostUserSpec spec, string name) : IActorDeviceSource
{
    public VhostUserSpec Spec { get; } = spec ?? throw new ArgumentNullException(nameof(spec));

    /// <summary>The supervisor's actor name, unique in the VM (blk0, rng1, ...), as connection messages name it.</summary>
    public string Name { get; } = name ?? throw new ArgumentNullException(nameof(name));

    public string Kind => Spec.Kind;

    public VirtioDeviceId DeviceId => Spec.DeviceId;

    public IVirtioDevice Create() =>
        throw new InvalidOperationException("A vhost-user device needs the VM's actor system: call Create(ActorSystem).");

    public IVirtioDevice Create(ActorSystem system)
    {
        ArgumentNullException.ThrowIfNull(system);
        string path = Spec.SocketPath;
        VhostUserDevice device;
        try
        {
            // Called on the command's thread, not in an actor: blocking on the handshake is fine here.
            device = VhostUserDevice.ConnectAsync(system, Spec.ToOptions(Name)).GetAwaiter().GetResult();
        }
        catch (VhostUserConnectException e)
        {
            throw new UsageException(OneLine(e.Message), e);
        }
        catch (VhostUserIncompatibleBackendException e)
        {
            throw new UsageException(OneLine($"The vhost-user back-end at {path} cannot drive this device: {e.Message}"), e);
        }
        catch (Exception e) when (e is VhostUserProtocolException or VhostUserRequestFailedException)
        {
            throw new UsageException(OneLine($"The vhost-user back-end at {path} broke off the handshake: {e.Message}"), e);
        }

        if (Spec.Queues is int wanted && device.QueueCount < wanted)
        {
            int has = device.QueueCount;
            device.Dispose();
            throw new UsageException($"--vhost-user {path}: queues={wanted} asked, but the back-end has {has} queue(s).");
        }

        return device;
    }

    private static string OneLine(string text) =>
        string.Join(' ', text.Split((char[])['\n', '\r'], StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries));
}
