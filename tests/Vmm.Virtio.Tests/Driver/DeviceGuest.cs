using Vmm.Core.Memory;
using Vmm.Virtio.Driver;
using Vmm.Virtio.Machine;

namespace Vmm.Virtio.Tests.Driver;

/// <summary>
/// A guest over one in-process device: guest memory, a <see cref="VirtioMachine"/> with the
/// device behind virtio-pci, interrupts as eventfds, and the guest driver initialised.
/// </summary>
internal sealed class DeviceGuest : IDisposable
{
    public const ulong MemorySize = 64 << 20;

    public DeviceGuest(IVirtioDevice device, VirtioDriverOptions options)
    {
        Memory = GuestMemory.Create(MemorySize);
        Allocator = new GuestMemoryAllocator(0x10_0000, MemorySize - 0x10_0000);
        Machine = new VirtioMachine(Memory, GuestInterruptDelivery.EventBacked);
        Machine.AttachPci(device);
        Driver = Machine.CreateDriver(Machine.Discover().Single(), new GuestDriverQueueFactory(Memory, Allocator), options);
        Driver.Initialize();
    }

    public GuestMemory Memory { get; }

    public GuestMemoryAllocator Allocator { get; }

    public VirtioMachine Machine { get; }

    public VirtioGuestDriver Driver { get; }

    public void Dispose()
    {
        Driver.Dispose();
        Machine.Dispose();
        Memory.Dispose();
    }
}
