using System.Collections.Concurrent;
using Akka.Actor;
using Vmm.Core.Machine;
using Vmm.VhostUser.Frontend;

namespace Vmm.VhostUser.Hosting;

/// <summary>
/// The devices <see cref="ManagedVmmHostingExtensions.WithManagedVmm"/> attached in one
/// ActorSystem: for each, its options, the supervisor the VmActor created, the completion of its
/// first handshake and the events its supervisor raises. An ActorSystem extension, so that the
/// service handing the devices out (<see cref="ManagedVmm"/>) needs nothing from DI but the ActorSystem.
/// </summary>
public sealed class ManagedVmmDevices : IExtension
{
    private readonly ConcurrentDictionary<string, Entry> _entries = new(StringComparer.Ordinal);
    private Exception? _startFailure;

    /// <summary>The devices of <paramref name="system"/> (none until the VM was started there).</summary>
    public static ManagedVmmDevices For(ActorSystem system)
    {
        ArgumentNullException.ThrowIfNull(system);
        return system.WithExtension<ManagedVmmDevices, ManagedVmmDevicesProvider>();
    }

    /// <summary>The configured device names, in no particular order.</summary>
    public IReadOnlyCollection<string> Names => [.. _entries.Keys];

    /// <summary>Why the VM could not be started (its configuration was refused), if that happened.</summary>
    public Exception? StartFailure => Volatile.Read(ref _startFailure);

    internal void Failed(Exception cause) => Volatile.Write(ref _startFailure, cause);

    internal void Add(Entry entry)
    {
        if (!_entries.TryAdd(entry.Options.Name, entry))
        {
            throw new InvalidOperationException($"A device named '{entry.Options.Name}' is already attached.");
        }
    }

    internal bool TryGet(string name, out Entry entry) => _entries.TryGetValue(name, out entry!);

    /// <summary>One device; <see cref="Device"/> is made once and shared by every caller.</summary>
    internal sealed class Entry
    {
        private readonly Lazy<Task<VhostUserDevice>> _device;

        public Entry(VhostUserDeviceOptions options, Task<DeviceAttached> attached, TaskCompletionSource<DeviceInfo> firstReady, VhostUserDeviceEvents events)
        {
            Options = options;
            _device = new Lazy<Task<VhostUserDevice>>(() => CreateAsync(options, attached, firstReady.Task, events));
        }

        public VhostUserDeviceOptions Options { get; }

        public Task<VhostUserDevice> Device => _device.Value;

        private static async Task<VhostUserDevice> CreateAsync(
            VhostUserDeviceOptions options, Task<DeviceAttached> attached, Task<DeviceInfo> firstReady, VhostUserDeviceEvents events)
        {
            DeviceAttached a = await attached.ConfigureAwait(false);
            return await VhostUserDevice.FromSupervisorAsync(a.Device, options, firstReady, events: events).ConfigureAwait(false);
        }
    }
}

/// <summary>Creates the per-system <see cref="ManagedVmmDevices"/>.</summary>
public sealed class ManagedVmmDevicesProvider : ExtensionIdProvider<ManagedVmmDevices>
{
    public override ManagedVmmDevices CreateExtension(ExtendedActorSystem system) => new();
}
