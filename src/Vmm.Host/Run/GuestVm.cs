using Akka.Actor;
using Akka.Configuration;
using Vmm.Core.Interrupts;
using Vmm.Core.Memory;
using Vmm.Host.Cli;
using Vmm.Virtio;
using Vmm.Virtio.Driver;
using Vmm.Virtio.Machine;
using Vmm.VhostUser.Frontend;
using Vmm.VhostUser.Protocol;

namespace Vmm.Host.Run;

/// <summary>One device as the guest sees it: its driver, initialised, and where it sits.</summary>
public sealed record GuestDevice(IDeviceSource Source, IVirtioDevice Device, VirtioDeviceLocation Location, VirtioGuestDriver Driver);

/// <summary>
/// The VM <c>vmm run</c> builds: guest memory, an actor system with the InterruptControllerActor,
/// a <see cref="VirtioMachine"/> with every device on its bus, and one initialised guest driver
/// per device. Actors carry only interrupt delivery (function-backed lines); the data plane is
/// the drivers' rings, the devices' workers and the workload's own threads.
/// </summary>
public sealed class GuestVm : IDisposable
{
    /// <summary>Guest-physical memory below this is left to rings' neighbours; the allocator hands out the rest.</summary>
    private const ulong AllocatorBase = 1UL << 20;

    // Akka's default logger writes to stdout, which carries workload results, and prints stack
    // traces for expected failures (an unreachable socket): it stays off. Device failures reach the
    // user as exceptions (one sentence) and, for vhost-user connections, through VhostUserConnectionLog on stderr.
    private static readonly Config QuietAkka = ConfigurationFactory.ParseString("""
        akka.loglevel = OFF
        akka.stdout-loglevel = OFF
        akka.log-dead-letters = off
        akka.log-dead-letters-during-shutdown = off
        akka.actor.debug.unhandled = off
        """);

    private readonly List<IVirtioDevice> _devices = [];
    private readonly List<GuestDevice> _guestDevices = [];
    private ActorSystem? _system;
    private VirtioMachine? _machine;
    private bool _disposed;
    private GuestVmHooks? _hooks;

    private GuestVm(RunOptions options, GuestMemory memory)
    {
        Options = options;
        Memory = memory;
        Allocator = new GuestMemoryAllocator(AllocatorBase, memory.TotalSize - AllocatorBase);
    }

    public RunOptions Options { get; }

    public GuestMemory Memory { get; }

    public GuestMemoryAllocator Allocator { get; }

    public VirtioMachine Machine => _machine ?? throw new InvalidOperationException("The VM is not built.");

    public IReadOnlyList<GuestDevice> Devices => _guestDevices;

    /// <summary>Builds the VM and runs the guest driver's initialisation on every device, in order.</summary>
    public static GuestVm Start(RunOptions options) => Start(options, null);

    /// <summary>
    /// As <see cref="Start(RunOptions)"/>, with <paramref name="hooks"/> to fill guest memory
    /// first, wrap each device and place the drivers' rings (save/restore uses them).
    /// </summary>
    public static GuestVm Start(RunOptions options, GuestVmHooks? hooks)
    {
        ArgumentNullException.ThrowIfNull(options);
        if (options.MemorySize < 2 * AllocatorBase)
        {
            throw new UsageException("--memory must be at least 2M.");
        }

        GuestMemory memory;
        try
        {
            memory = GuestMemory.Create(options.MemorySize);
        }
        catch (Exception e) when (e is not UsageException)
        {
            throw new UsageException($"Cannot create {options.MemorySize >> 20} MiB of guest memory: {e.Message}", e);
        }

        var vm = new GuestVm(options, memory) { _hooks = hooks };
        try
        {
            hooks?.PrepareMemory?.Invoke(memory);
            vm.Build();
            return vm;
        }
        catch
        {
            vm.Dispose();
            throw;
        }
    }

    private void Build()
    {
        IActorRef? controller = null;
        List<VhostUserDeviceSource> remote = Options.Devices.OfType<VhostUserDeviceSource>().ToList();
        if (Options.Delivery == GuestInterruptDelivery.FunctionBacked || Options.Devices.Any(d => d is IActorDeviceSource))
        {
            _system = ActorSystem.Create("vmm", QuietAkka);
        }

        if (Options.Delivery == GuestInterruptDelivery.FunctionBacked)
        {
            controller = _system!.ActorOf(InterruptControllerActor.Props(), "interrupts");
        }

        IActorRef? connectionLog = null;
        if (remote.Count > 0)
        {
            connectionLog = VhostUserConnectionLogging.Start(_system!, remote.ToDictionary(r => r.Name, r => r.Spec.SocketPath), Console.Error);
        }

        _machine = new VirtioMachine(Memory, Options.Delivery, controller);
        foreach (IDeviceSource source in Options.Devices)
        {
            IVirtioDevice device = source is IActorDeviceSource actors ? actors.Create(_system!) : source.Create();
            device = _hooks?.WrapDevice?.Invoke(device, _devices.Count) ?? device;
            _devices.Add(device);
            if (source is VhostUserDeviceSource attached)
            {
                connectionLog?.Tell(new VhostUserConnectionLog.DeviceAttached(attached.Name));
            }

            if (Options.Transport == VirtioTransportKind.Mmio)
            {
                _machine.AttachMmio(device);
            }
            else
            {
                _machine.AttachPci(device);
            }
        }

        // The guest finds its devices by reading the bus, in slot order: the order of the options.
        IReadOnlyList<VirtioDeviceLocation> found = _machine.Discover();
        if (found.Count != _devices.Count)
        {
            throw new WorkloadFailedException($"The guest found {found.Count} devices on the bus, not {_devices.Count}.");
        }

        IDriverQueueFactory queues = _hooks?.QueueFactory?.Invoke(Memory, Allocator) ?? new GuestDriverQueueFactory(Memory, Allocator);
        var driverOptions = new VirtioDriverOptions
        {
            PackedRing = Options.PackedRing,
            EventIndex = Options.EventIndex,
            IndirectDescriptors = Options.IndirectDescriptors,
        };

        for (int i = 0; i < found.Count; i++)
        {
            VirtioDeviceLocation location = found[i];
            IDeviceSource source = Options.Devices[i];
            VirtioGuestDriver driver = _machine.CreateDriver(location, queues, DeviceDriverOptions.For(source, _devices[i], Options, driverOptions with
            {
                QueueSize = _devices[i].GetMaxQueueSize(0),
            }));
            _guestDevices.Add(new GuestDevice(source, _devices[i], location, driver));
            try
            {
                driver.Initialize();
            }
            catch (VirtioDriverException e)
            {
                throw new WorkloadFailedException($"The guest driver could not initialise the {source.Kind} device: {e.Message}", e);
            }
        }
    }

    /// <summary>Drivers reset their devices (status 0 stops every queue), then everything is released.</summary>
    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }

        _disposed = true;
        foreach (GuestDevice d in _guestDevices)
        {
            try
            {
                d.Driver.Dispose();
            }
            catch (Exception e) when (d.Device is VhostUserDevice && e is VhostUserConnectionLostException or AskTimeoutException)
            {
                // The back-end is gone and the device gave up (already reported on stderr): nothing left to reset.
            }
        }

        _machine?.Dispose();
        foreach (IVirtioDevice device in _devices)
        {
            device.Dispose();
        }

        if (_system is not null)
        {
            _system.Terminate().Wait(TimeSpan.FromSeconds(5));
            _system.Dispose();
        }

        Memory.Dispose();
    }
}

/// <summary>Where save/restore steps into <see cref="GuestVm.Start(RunOptions, GuestVmHooks?)"/>.</summary>
public sealed record GuestVmHooks
{
    /// <summary>Called on the new guest memory before anything else touches it.</summary>
    public Action<GuestMemory>? PrepareMemory { get; init; }

    /// <summary>Wraps device number <c>n</c> (in option order) before it goes on the bus.</summary>
    public Func<IVirtioDevice, int, IVirtioDevice>? WrapDevice { get; init; }

    /// <summary>Makes the factory the guest drivers place their rings with.</summary>
    public Func<GuestMemory, GuestMemoryAllocator, IDriverQueueFactory>? QueueFactory { get; init; }
}
