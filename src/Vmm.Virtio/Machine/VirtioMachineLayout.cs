using Vmm.Virtio.Spec;

namespace Vmm.Virtio.Machine;

/// <summary>
/// Where a <see cref="VirtioMachine"/> places transports on its bus. The virtio-mmio windows
/// follow QEMU's microvm (0x200-byte windows from 0xfeb00000, interrupt 5 + n); the PCI side is a
/// single bus-0 ECAM window at 0xe0000000 (4 KiB per function, device n at n &lt;&lt; 15) with
/// each BAR0 at a fixed address below it. A guest driver that knows this layout finds every
/// device by reading the bus, as a guest kernel does from its device tree or ACPI tables.
/// </summary>
public static class VirtioMachineLayout
{
    public const ulong MmioBase = 0xfeb0_0000;
    public const ulong MmioWindowSize = 0x200;
    public const int MmioSlots = 32;
    public const int MmioFirstIrq = 5;

    public const ulong PciEcamBase = 0xe000_0000;
    public const int PciEcamDeviceShift = 15;
    public const ulong PciConfigSize = 0x1000;
    public const int PciSlots = 32;
    public const ulong PciBarBase = 0xc000_0000;

    /// <summary>The guest allocates MSI-X vectors from here, above every virtio-mmio interrupt.</summary>
    public const int PciFirstVector = 64;

    /// <summary>MSI messages reach vectors below this; the guest's vector space ends here.</summary>
    public const int MsiVectorLimit = 2048;

    public static ulong MmioWindow(int slot) => MmioBase + ((ulong)slot * MmioWindowSize);

    public static int MmioIrq(int slot) => MmioFirstIrq + slot;

    public static ulong PciConfigAddress(int slot) => PciEcamBase + ((ulong)slot << PciEcamDeviceShift);

    public static ulong PciBar0Address(int slot) => PciBarBase + ((ulong)slot * VirtioPciLayout.Bar0Size);
}
