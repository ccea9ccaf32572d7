using Akka.Actor;
using Vmm.Core.Interrupts;
using Vmm.Core.Machine;
using Vmm.Core.Memory;
using Vmm.Virtio.Driver;
using Vmm.Virtio.Transport;

namespace Vmm.Virtio.Machine;

/// <summary>How interrupts reach the guest driver.</summary>
public enum GuestInterruptDelivery
{
    /// <summary>
    /// Lines raise through the InterruptControllerActor, which delivers to the guest's sink: the
    /// machine attaches an <see cref="InterruptPort"/> to it, and since the guest's sink is
    /// concurrent a raise signals the guest's eventfd on the raising thread, with no message.
    /// Without a controller the lines call the sink directly.
    /// </summary>
    FunctionBacked,

    /// <summary>Every line is an eventfd the guest driver waits on: a device or vhost-user back-end signals it without a proxy.</summary>
    EventBacked,
}

/// <summary>
/// Guest memory, an MMIO bus, and the interrupt path, with virtio devices placed on the bus
/// through their transports at the fixed places of <see cref="VirtioMachineLayout"/>. The machine
/// owns the transports and the guest's interrupt eventfds, not the devices or the memory.
/// </summary>
public sealed class VirtioMachine : IDisposable
{
    private readonly object _lock = new();
    private readonly List<IDisposable> _transports = [];
    private readonly Dictionary<int, InterruptLine> _lines = [];
    private readonly InterruptPort? _interruptPort;
    private int _mmioSlots;
    private int _pciSlots;
    private bool _disposed;

    /// <param name="memory">The guest RAM the devices' rings and buffers live in.</param>
    /// <param name="delivery">How device interrupts reach the guest driver: through eventfds or through the sink.</param>
    /// <param name="interruptController">
    /// The VM's InterruptControllerActor for function-backed delivery; the machine attaches
    /// <see cref="GuestInterrupts"/> to it as the sink, and the port its lines raise through.
    /// Null: lines call the sink directly.
    /// </param>
    public VirtioMachine(GuestMemory memory, GuestInterruptDelivery delivery, IActorRef? interruptController = null)
    {
        Memory = memory ?? throw new ArgumentNullException(nameof(memory));
        Delivery = delivery;
        InterruptController = interruptController;
        if (delivery == GuestInterruptDelivery.FunctionBacked && interruptController is not null)
        {
            _interruptPort = new InterruptPort();
            interruptController.Tell(new AttachInterruptSink(GuestInterrupts));
            interruptController.Tell(new AttachInterruptPort(_interruptPort));
        }
    }

    public GuestMemory Memory { get; }

    public MmioBus Bus { get; } = new();

    public GuestInterruptDelivery Delivery { get; }

    public IActorRef? InterruptController { get; }

    /// <summary>The per-vector eventfds the guest driver waits on, and the vectors it allocates for MSI-X.</summary>
    public GuestInterruptEvents GuestInterrupts { get; } = new(VirtioMachineLayout.PciFirstVector, VirtioMachineLayout.MsiVectorLimit);

    /// <summary>Places <paramref name="device"/> behind virtio-mmio in the next free window.</summary>
    public VirtioMmioTransport AttachMmio(IVirtioDevice device)
    {
        lock (_lock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (_mmioSlots >= VirtioMachineLayout.MmioSlots)
            {
                throw new InvalidOperationException($"All {VirtioMachineLayout.MmioSlots} virtio-mmio windows are in use.");
            }

            int slot = _mmioSlots;
            var transport = new VirtioMmioTransport(device, Memory, GetInterruptLine(VirtioMachineLayout.MmioIrq(slot)));
            Bus.Map(VirtioMachineLayout.MmioWindow(slot), VirtioMachineLayout.MmioWindowSize, transport, $"virtio-mmio{slot} ({device.DeviceId})");
            _mmioSlots++;
            _transports.Add(transport);
            return transport;
        }
    }

    /// <summary>
    /// Places <paramref name="device"/> behind virtio-pci in the next free slot, with an MSI-X
    /// table of one entry for configuration changes and one per queue (what Linux asks for
    /// first). The guest programs the entries; <see cref="RouteMsi"/> delivers their messages.
    /// </summary>
    public VirtioPciTransport AttachPci(IVirtioDevice device)
    {
        lock (_lock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (_pciSlots >= VirtioMachineLayout.PciSlots)
            {
                throw new InvalidOperationException($"All {VirtioMachineLayout.PciSlots} PCI slots are in use.");
            }

            int slot = _pciSlots;
            int entries = Math.Min(device.QueueCount + 1, VirtioPciTransport.MaxMsixTableSize);
            ulong bar0 = VirtioMachineLayout.PciBar0Address(slot);
            var transport = new VirtioPciTransport(device, Memory, bar0, entries, RouteMsi);
            Bus.Map(VirtioMachineLayout.PciConfigAddress(slot), VirtioMachineLayout.PciConfigSize, transport.ConfigSpace, $"pci0:{slot} config ({device.DeviceId})");
            Bus.Map(bar0, Spec.VirtioPciLayout.Bar0Size, transport, $"pci0:{slot} BAR0 ({device.DeviceId})");
            _pciSlots++;
            _transports.Add(transport);
            return transport;
        }
    }

    /// <summary>
    /// The machine's MSI routing: an x86-form message (<see cref="MsiMessage.TryGetX86Vector"/>)
    /// reaches the line of its vector when that is in the MSI range
    /// [<see cref="VirtioMachineLayout.PciFirstVector"/>, <see cref="VirtioMachineLayout.MsiVectorLimit"/>);
    /// any other message (the reset message, a half-written one, a guest's error) reaches
    /// nothing. Lines are only made for vectors in range, so a guest cannot make the machine
    /// create eventfds without bound.
    /// </summary>
    public InterruptLine? RouteMsi(MsiMessage message) =>
        message.TryGetX86Vector(out int vector) && vector is >= VirtioMachineLayout.PciFirstVector and < VirtioMachineLayout.MsiVectorLimit
            ? GetInterruptLine(vector)
            : null;

    /// <summary>The line for <paramref name="vector"/>, made once per the machine's delivery mode.</summary>
    public InterruptLine GetInterruptLine(int vector)
    {
        lock (_lock)
        {
            if (!_lines.TryGetValue(vector, out InterruptLine? line))
            {
                line = Delivery switch
                {
                    GuestInterruptDelivery.EventBacked => new EventBackedInterruptLine(vector, GuestInterrupts.Get(vector)),
                    _ when _interruptPort is { } port => port.CreateLine(vector),
                    _ => new FunctionBackedInterruptLine(vector, GuestInterrupts.Deliver),
                };

                // The guest's eventfd exists before the first raise, so no delivery is dropped.
                GuestInterrupts.Get(vector);
                _lines.Add(vector, line);
            }

            return line;
        }
    }

    /// <summary>Every virtio device on the bus, found as a guest would (<see cref="VirtioDeviceLocator"/>).</summary>
    public IReadOnlyList<VirtioDeviceLocation> Discover() => VirtioDeviceLocator.Discover(Bus);

    /// <summary>A guest driver for the device at <paramref name="location"/>, waking on this machine's interrupts.</summary>
    public VirtioGuestDriver CreateDriver(VirtioDeviceLocation location, IDriverQueueFactory queues, VirtioDriverOptions? options = null) =>
        new(Bus, location, queues, GuestInterrupts, options ?? new VirtioDriverOptions());

    public void Dispose()
    {
        lock (_lock)
        {
            if (_disposed)
            {
                return;
            }

            _disposed = true;
        }

        if (_interruptPort is not null)
        {
            InterruptController!.Tell(DetachInterruptSink.Instance);
            InterruptController.Tell(new DetachInterruptPort(_interruptPort));
        }

        foreach (IDisposable t in _transports)
        {
            t.Dispose();
        }

        GuestInterrupts.Dispose();
    }
}
