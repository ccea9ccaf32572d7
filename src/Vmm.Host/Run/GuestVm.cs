using Akka.Actor;
using Vmm.Core.Memory;
using Vmm.Host.Cli;
using Vmm.Virtio;
using Vmm.Virtio.Driver;
using Vmm.Virtio.Machine;
using Vmm.VhostUser.Frontend;
using Vmm.VhostUser.Protocol;

namespace Vmm.Host.Run;

/// <summary>
/// One device as the guest sees it: its driver, initialised, and where it sits. <see cref="Remote"/>
/// is the same device as a vhost-user device (its connection and inflight region), null for an
/// in-process one; <see cref="Health"/> says whether it asked for a reset.
/// </summary>
public sealed record GuestDevice(
    IDeviceSource Source, IVirtioDevice Device, VirtioDeviceLocation Location, VirtioGuestDriver Driver, IVhostUserDevice? Remote, DeviceHealth Health)
{
    /// <summary>The <c>device</c> tag of its metrics: a vhost-user device's name (<c>blk0</c>), <c>local-blk0</c> for an in-process one.</summary>
    public string Name { get; init; } = Source.Kind;
}

/// <summary>
/// The VM <c>vmm run</c> builds: guest memory; the actor tree of an embedding host
/// (<see cref="VmHost"/>: <c>/user/vm</c> with its interrupt controller and one supervisor per
/// vhost-user device); a <see cref="VirtioMachine"/> with every device on its bus; and one
/// initialised guest driver per device. Actors carry lifecycle and, with function-backed lines,
/// interrupt delivery; the data plane is the drivers' rings, the devices' workers and the
/// workload's own threads.
/// </summary>
public sealed class GuestVm : IDisposable
{
    /// <summary>Guest-physical memory below this is left to rings' neighbours; the allocator hands out the rest.</summary>
    private const ulong AllocatorBase = 1UL << 20;

    /// <summary>How many times in a row a workload starts again after its device needed a reset.</summary>
    private const int MaxResets = 1;

    private readonly List<IVirtioDevice> _devices = [];
    private readonly List<GuestDevice> _guestDevices = [];
    private VmHost? _host;
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

    /// <summary>The actor side (the VM actor and its devices).</summary>
    public VmHost Host => _host ?? throw new InvalidOperationException("The VM is not built.");

    public IReadOnlyList<GuestDevice> Devices => _guestDevices;

    /// <summary>Where the VM's one-line messages go (a device reset during a workload); stderr by default.</summary>
    public TextWriter Messages { get; set; } = Console.Error;

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

    /// <summary>
    /// Runs <paramref name="workload"/> on <paramref name="device"/>; when the device asks for a
    /// reset meanwhile (DEVICE_NEEDS_RESET: a back-end that gave up), the guest resets and
    /// re-initialises it, as a driver does, and the workload starts again, once. A second request
    /// for a reset ends it with one sentence.
    /// </summary>
    public string RunWithResets(GuestDevice device, string what, Func<GuestDevice, string> workload)
    {
        ArgumentNullException.ThrowIfNull(device);
        ArgumentNullException.ThrowIfNull(workload);
        for (int resets = 0; ; resets++)
        {
            try
            {
                return workload(device);
            }
            catch (DeviceNeedsResetException e) when (resets < MaxResets)
            {
                Messages.WriteLine($"vmm: {Name(device)}: {e.Message.TrimEnd('.')}; resetting and re-initialising it, then starting {what} again.");
                Reinitialize(device);
            }
            catch (DeviceNeedsResetException e)
            {
                throw new WorkloadFailedException($"{what} on {Name(device)} failed: after a reset, {e.Message.TrimEnd('.')} again.", e);
            }
        }
    }

    private void Build()
    {
        List<IHostedDeviceSource> hosted = [.. Options.Devices.OfType<IHostedDeviceSource>()];
        _host = VmHost.Start(hosted, Console.Error);
        IActorRef? controller = Options.Delivery == GuestInterruptDelivery.FunctionBacked
            ? _host.Vmm.GetInterruptControllerAsync().GetAwaiter().GetResult()
            : null;

        _machine = new VirtioMachine(Memory, Options.Delivery, controller);
        var remotes = new List<IVhostUserDevice?>();
        var healths = new List<DeviceHealth>();
        foreach (IDeviceSource source in Options.Devices)
        {
            IVhostUserDevice? remote = source is IHostedDeviceSource h ? h.Connect(_host.Vmm) : null;
            IVirtioDevice device = remote ?? source.Create();
            if (device is VirtioDeviceBase local)
            {
                local.MetricsName = MetricsName(_devices.Count);
            }

            device = _hooks?.WrapDevice?.Invoke(device, _devices.Count, remote) ?? device;
            _devices.Add(device);
            remotes.Add(remote);

            // Subscribed before the transport, so the reason is known when the driver sees the status bit.
            var health = new DeviceHealth();
            device.Faulted += fault => health.Faulted(fault.Reason);
            healths.Add(health);
            if (source is IHostedDeviceSource attached)
            {
                _host.ConnectionLog?.Tell(new VhostUserConnectionLog.DeviceAttached(attached.Name));
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
            driver.DeviceNeedsReset += healths[i].SetNeedsReset;
            var guestDevice = new GuestDevice(source, _devices[i], location, driver, remotes[i], healths[i]) { Name = MetricsName(i) };
            _guestDevices.Add(guestDevice);
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

    /// <summary>What a guest driver does for DEVICE_NEEDS_RESET: status 0, then the whole initialisation again.</summary>
    public void Reinitialize(GuestDevice device)
    {
        ArgumentNullException.ThrowIfNull(device);
        device.Health.Clear();
        try
        {
            device.Driver.ResetAndReinitialize();
        }
        catch (VirtioDriverException e)
        {
            throw new WorkloadFailedException($"The guest driver could not re-initialise {Name(device)} after its reset: {e.Message}", e);
        }
    }

    /// <summary>Device <paramref name="index"/>'s metrics name: a vhost-user device's own, <c>local-KIND</c> and its rank among the in-process ones otherwise.</summary>
    private string MetricsName(int index)
    {
        IDeviceSource source = Options.Devices[index];
        return source is IHostedDeviceSource hosted
            ? hosted.Name
            : $"local-{source.Kind}{Options.Devices.Take(index).Count(d => d is not IHostedDeviceSource)}";
    }

    private static string Name(GuestDevice device) =>
        device.Source is IHostedDeviceSource hosted ? $"{hosted.Name} ({hosted.Where})" : $"the {device.Source.Kind} device";

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
            catch (Exception e) when (d.Remote is not null && e is VhostUserConnectionLostException or AskTimeoutException)
            {
                // The back-end is gone and the device gave up (already reported on stderr): nothing left to reset.
            }
        }

        _machine?.Dispose();
        foreach (IVirtioDevice device in _devices)
        {
            device.Dispose();
        }

        _host?.Dispose();
        Memory.Dispose();
    }
}

/// <summary>Where save/restore steps into <see cref="GuestVm.Start(RunOptions, GuestVmHooks?)"/>.</summary>
public sealed record GuestVmHooks
{
    /// <summary>Called on the new guest memory before anything else touches it.</summary>
    public Action<GuestMemory>? PrepareMemory { get; init; }

    /// <summary>Wraps device number <c>n</c> (in option order; with its vhost-user side, if it has one) before it goes on the bus.</summary>
    public Func<IVirtioDevice, int, IVhostUserDevice?, IVirtioDevice>? WrapDevice { get; init; }

    /// <summary>Makes the factory the guest drivers place their rings with.</summary>
    public Func<GuestMemory, GuestMemoryAllocator, IDriverQueueFactory>? QueueFactory { get; init; }
}
